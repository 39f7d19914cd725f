"""Channel backends against real local peers: aiosmtpd for email, local HTTP servers for the notification_service
and webhooks; the in-app inbox API; provider receipts; SSRF refusals after DNS resolution."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import re
import socket
import threading
from collections.abc import Iterator
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Variant
from compliance.models import Suppression
from delivery import runs, sending
from delivery.backends import reset_backends
from delivery.models import InboxMessage, Message, Run
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_backends():
    reset_backends()
    yield
    reset_backends()


def _campaign(organisation, channels, content, rows=None):
    contacts_upsert_rows(
        organisation=organisation,
        rows=rows
        or [
            {"external_id": f"k{i}", "email": f"k{i}@example.com", "phone": f"+4477009{i:05d}", "first_name": f"N{i}"}
            for i in range(5)
        ],
    )
    campaign = CampaignFactory(organisation=organisation, channels=channels, variants=False)
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    return campaign


def _run(persona, campaign, django_capture_on_commit_callbacks, before_sending=None) -> Run:
    with django_capture_on_commit_callbacks(execute=False):
        response = persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        assert response.status_code == 200, response.data
        run = Run.objects.get(campaign=campaign)
        if before_sending:
            before_sending()
        runs.run_prepare(run.pk)
        sending.run_send_for(run.pk, seconds=30)
        runs.run_finish_if_done(run.pk)
    run.refresh_from_db()
    return run


# --- email over SMTP ------------------------------------------------------------------------------------------------


def test_email_goes_out_as_real_mime_with_compliance_headers(
    settings, smtp, teammate, django_capture_on_commit_callbacks
):
    settings.DELIVERY_BACKENDS = {
        "default": "delivery.sandbox.SandboxBackend",
        "email": "delivery.channels.EmailBackend",
    }
    organisation = teammate.organisation
    organisation.sender_email, organisation.sender_name = "news@acme.example", "Acme"
    organisation.postal_address = "1 Main Street, London"
    organisation.save()
    campaign = _campaign(
        organisation,
        ["email"],
        {
            "email": {
                "subject": "Hi {{ contact.first_name }}",
                "html": '<p>Hello</p><a href="https://acme.example">Go</a>',
            }
        },
    )
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    assert run.status == "completed" and run.sent_count == 5
    assert len(smtp.messages) == 5
    by_recipient = {rcpt[0]: email.message_from_bytes(raw, policy=policy.default) for _f, rcpt, raw in smtp.messages}
    mime = by_recipient["k3@example.com"]
    assert mime["Subject"] == "Hi N3"
    assert mime["From"] == "Acme <news@acme.example>"
    assert mime.get_content_type() == "multipart/alternative"
    assert {part.get_content_type() for part in mime.iter_parts()} == {"text/plain", "text/html"}
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert str(mime["List-Unsubscribe"]).strip().startswith("<http")
    message = Message.objects.get(run=run, contact__external_id="k3")
    assert mime["Message-ID"] == message.provider_message_id
    assert re.fullmatch(rf"<{message.pk}\.[0-9a-f]{{16}}@acme\.example>", mime["Message-ID"])
    assert mime["X-Campaign-Message-Id"] == str(message.pk)


class RefusingInbox:
    """An SMTP peer that refuses one mailbox for good and defers another."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("k1@"):
            return "550 5.1.1 No such user"
        if address.startswith("k2@"):
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.extend(envelope.rcpt_tos)
        return "250 OK"


def test_smtp_refusals_bounce_and_deferrals_retry(settings, teammate, django_capture_on_commit_callbacks):
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    peer = RefusingInbox()
    controller = Controller(peer, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        settings.DELIVERY_BACKENDS = {"default": "delivery.channels.EmailBackend"}
        campaign = _campaign(teammate.organisation, ["email"], {"email": {"subject": "s", "html": "<p>h</p>"}})
        run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    finally:
        controller.stop()
    statuses = {m.contact.external_id: (m.status, m.error) for m in Message.objects.filter(run=run)}
    assert statuses["k1"][0] == "bounced" and "550" in statuses["k1"][1]
    assert statuses["k2"][0] == "queued" and "451" in statuses["k2"][1]  # retried later, not lost
    assert statuses["k0"][0] == "sent" and len(peer.messages) == 3
    assert run.status == "sending"  # one message is still waiting for its retry


# --- HTTP peers -------------------------------------------------------------------------------------------------------


class Peer(BaseHTTPRequestHandler):
    """A local notification_service / webhook receiver. Behaviour per recipient is set by the test."""

    requests: list[dict] = []
    seen_keys: dict[str, str] = {}
    answers: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = json.loads(body or b"{}")
        key = self.headers.get("Idempotency-Key", "")
        Peer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body, "json": data})
        code = Peer.answers.get(str(data.get("to") or data.get("id") or ""), 202)
        if code == 202 and key in Peer.seen_keys:
            code = 409
        if code in (200, 202):
            Peer.seen_keys[key] = f"ns-{len(Peer.seen_keys)}"
        self.send_response(code)
        if code == 429:
            self.send_header("Retry-After", "120")
        if code == 302:
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"id": Peer.seen_keys.get(key, "")}).encode())

    do_POST = _answer
    do_PUT = _answer


@pytest.fixture
def peer(settings) -> Iterator[str]:
    Peer.requests, Peer.seen_keys, Peer.answers = [], {}, {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Peer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    settings.SSRF_ALLOWED_TARGETS = [f"127.0.0.1:{port}"]
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def test_sms_and_whatsapp_through_the_notification_service(
    settings, peer, teammate, django_capture_on_commit_callbacks
):
    settings.NOTIFICATION_SERVICE_URL, settings.NOTIFICATION_SERVICE_TOKEN = peer, "ns-token"
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.NotificationServiceBackend"}
    Peer.answers = {"+447700900001": 400, "+447700900002": 503}
    teammate.organisation.sms_sender_id = "ACME"
    teammate.organisation.save()
    campaign = _campaign(
        teammate.organisation,
        ["sms", "whatsapp"],
        {
            "sms": {"body": "Hi {{ contact.first_name }}"},
            "whatsapp": {"body": "Hola", "template_name": "promo", "template_language": "es"},
        },
    )
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    sms = [r for r in Peer.requests if r["json"]["channel"] == "sms"]
    first = next(r for r in sms if r["json"]["to"] == "+447700900000")
    assert first["path"] == "/v1/notifications"
    assert first["headers"]["Authorization"] == "Bearer ns-token"
    assert first["json"]["body"] == "Hi N0" and first["json"]["sender_id"] == "ACME"
    message = Message.objects.get(run=run, contact__external_id="k0", channel="sms")
    assert first["headers"]["Idempotency-Key"] == f"{run.pk}:{message.contact_id}:sms"
    assert message.status == "sent" and message.provider_message_id.startswith("ns-")
    whatsapp = next(r for r in Peer.requests if r["json"]["channel"] == "whatsapp")
    assert whatsapp["json"]["template"] == {"name": "promo", "language": "es"}
    refused = Message.objects.get(run=run, contact__external_id="k1", channel="sms")
    assert refused.status == "failed" and "400" in refused.error
    deferred = Message.objects.get(run=run, contact__external_id="k2", channel="sms")
    assert deferred.status == "queued" and deferred.attempts == 1 and "503" in deferred.error
    # The service's delivery receipt names the message by the id it gave.
    receipt = {"receipts": [{"provider_message_id": message.provider_message_id, "status": "delivered"}]}
    assert teammate.api.post("/api/v1/receipts/", receipt, format="json").data["applied"] == 1
    assert Message.objects.get(pk=message.pk).status == "delivered"


def test_a_repeated_hand_off_is_not_sent_twice_by_the_service(
    settings, peer, teammate, django_capture_on_commit_callbacks
):
    settings.NOTIFICATION_SERVICE_URL = peer
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.NotificationServiceBackend"}
    campaign = _campaign(teammate.organisation, ["sms"], {"sms": {"body": "x"}})
    with django_capture_on_commit_callbacks(execute=False):
        teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
    original = sending._record

    def crash(*args, **kwargs):
        raise SystemExit("killed after the hand-off")

    sending._record = crash
    try:
        with pytest.raises(SystemExit):
            sending.run_send_batch(run.pk)
    finally:
        sending._record = original
    sending.run_send_for(run.pk, seconds=30)
    assert len(Peer.requests) == 10  # every message was handed over twice…
    assert len(Peer.seen_keys) == 5  # …and accepted once (the repeat answered 409)
    assert set(Message.objects.filter(run=run).values_list("status", flat=True)) == {"sent"}


def test_webhooks_are_signed_and_record_the_response_code(settings, peer, teammate, django_capture_on_commit_callbacks):
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.WebhookBackend"}
    Peer.answers = {"k1": 302, "k2": 500, "k3": 404}
    campaign = _campaign(
        teammate.organisation,
        ["webhook"],
        {"webhook": {"url": f"{peer}/hooks/campaign", "payload_template": '{"id": "{{ contact.external_id }}"}'}},
    )
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    request = next(r for r in Peer.requests if r["json"]["id"] == "k0")
    secret = teammate.organisation.webhook_secret.encode()
    expected = "sha256=" + hmac.new(secret, request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Campaign-Signature"] == expected
    assert request["headers"]["Host"] == peer.removeprefix("http://")
    statuses = {m.contact.external_id: m for m in Message.objects.filter(run=run)}
    assert (statuses["k0"].status, statuses["k0"].provider_message_id) == ("delivered", "HTTP 202")
    assert statuses["k1"].status == "failed" and "redirects are not followed" in statuses["k1"].error
    assert not any(r["path"].startswith("/latest") for r in Peer.requests)
    assert statuses["k2"].status == "queued" and "HTTP 500" in statuses["k2"].error
    assert statuses["k3"].status == "failed" and statuses["k3"].provider_message_id == "HTTP 404"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://10.0.0.8/x",
        "http://rebind.example/x",  # resolves to 127.0.0.1 (see the fixture below)
        "http://mapped.example/x",  # resolves to ::ffff:192.168.1.1
    ],
)
def test_webhook_targets_inside_the_network_are_refused_after_resolution(
    settings, monkeypatch, url, teammate, django_capture_on_commit_callbacks
):
    real = socket.getaddrinfo
    fake = {"rebind.example": "127.0.0.1", "mapped.example": "::ffff:192.168.1.1"}

    def resolver(host, *args, **kwargs):
        if host in fake:
            family = socket.AF_INET6 if ":" in fake[host] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (fake[host], 80))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.WebhookBackend"}
    campaign = _campaign(
        teammate.organisation,
        ["webhook"],
        {"webhook": {"url": "https://hooks.example.com/x", "payload_template": "{}"}},
        rows=[{"external_id": "w1", "email": "w1@example.com"}],
    )
    # Literal internal addresses are refused when the campaign is saved; what the backend must catch is a URL that
    # changed or a name that resolves inside, so the content changes after launch here.
    run = _run(
        teammate,
        campaign,
        django_capture_on_commit_callbacks,
        before_sending=lambda: Variant.objects.filter(campaign=campaign).update(
            content={"webhook": {"url": url, "payload_template": "{}"}}
        ),
    )
    message = Message.objects.get(run=run)
    assert message.status == "failed" and message.error.startswith("webhook refused")


# --- in-app inbox -----------------------------------------------------------------------------------------------------


def test_in_app_messages_land_in_the_inbox_and_reading_counts_as_an_open(
    settings, teammate, outsider, django_capture_on_commit_callbacks
):
    from analytics.models import EngagementEvent

    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.InAppBackend"}
    campaign = _campaign(
        teammate.organisation,
        ["in_app"],
        {"in_app": {"title": "Hi {{ contact.first_name }}", "body": "News", "action_url": "https://app.example/x"}},
    )
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    assert run.delivered_count == 5 and InboxMessage.objects.count() == 5
    listed = teammate.api.get("/api/v1/inbox/?contact=k2")
    assert listed.status_code == 200
    [item] = listed.data["results"]
    assert (item["title"], item["body"], item["read"]) == ("Hi N2", "News", False)
    assert teammate.api.get("/api/v1/inbox/unread-count/?contact=k2").data == {"unread": 1}
    read = teammate.api.post(f"/api/v1/inbox/{item['id']}/read/?contact=k2")
    assert read.status_code == 200 and read.data["read"] is True
    teammate.api.post(f"/api/v1/inbox/{item['id']}/read/?contact=k2")  # twice: still one open
    assert teammate.api.get("/api/v1/inbox/unread-count/?contact=k2").data == {"unread": 0}
    assert EngagementEvent.objects.filter(message_id=item["id"], kind="open").count() == 1
    assert teammate.api.get("/api/v1/inbox/?contact=k2&unread=true").data["results"] == []
    # Another contact's message, another organisation, a missing contact.
    assert teammate.api.post(f"/api/v1/inbox/{item['id']}/read/?contact=k3").status_code == 404
    assert outsider.api.get("/api/v1/inbox/?contact=k2").status_code == 404
    assert teammate.api.get("/api/v1/inbox/").status_code == 400


# --- receipts ---------------------------------------------------------------------------------------------------------


def test_receipts_move_messages_forward_suppress_and_stay_scoped(
    teammate, outsider, django_capture_on_commit_callbacks
):
    campaign = _campaign(teammate.organisation, ["email"], {"email": {"subject": "s", "html": "h"}})
    campaign.sandbox_profile = {"failed": 0, "bounced": 0}
    campaign.save()
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    Message.objects.filter(run=run).update(status="sent")  # as if the provider had not confirmed yet
    from delivery.models import Run as RunModel

    RunModel.objects.filter(pk=run.pk).update(delivered_count=0)
    messages = {m.contact.external_id: m for m in Message.objects.filter(run=run).select_related("contact")}
    body = {
        "receipts": [
            {"message_id": messages["k0"].pk, "status": "delivered"},
            # An email receipt quotes our Message-ID.
            {"provider_message_id": f"<{messages['k1'].pk}@example.com>", "status": "bounced", "reason": "550 no user"},
            {"message_id": messages["k2"].pk, "status": "complained"},
            {"message_id": messages["k0"].pk, "status": "delivered"},  # a repeat
            {"message_id": 999999999, "status": "delivered"},  # not ours
        ]
    }
    assert outsider.api.post("/api/v1/receipts/", body, format="json").data["applied"] == 0
    response = teammate.api.post("/api/v1/receipts/", body, format="json")
    assert response.status_code == 200, response.data
    assert response.data["applied"] == 3 and response.data["ignored"] == [3, 4]
    assert response.data["suppressed"] == 2
    statuses = {k: Message.objects.get(pk=m.pk).status for k, m in messages.items()}
    assert statuses["k0"] == "delivered" and statuses["k1"] == "bounced"
    assert set(Suppression.objects.values_list("address", "reason")) == {
        ("k1@example.com", "hard_bounce"),
        ("k2@example.com", "complaint"),
    }
    run.refresh_from_db()
    assert (run.delivered_count, run.bounced_count) == (1, 1)
    again = teammate.api.post("/api/v1/receipts/", body, format="json")
    assert again.data["applied"] == 0


def test_bad_receipts_are_field_errors(teammate):
    response = teammate.api.post("/api/v1/receipts/", {"receipts": [{"status": "opened"}, {}]}, format="json")
    assert response.status_code == 400
    assert "status" in response.data["receipts"][0] and "status" in response.data["receipts"][1]
    unnamed = teammate.api.post("/api/v1/receipts/", {"receipts": [{"status": "delivered"}]}, format="json")
    assert unnamed.status_code == 400 and "non_field_errors" in unnamed.data["receipts"][0]
    assert teammate.api.post("/api/v1/receipts/", {"receipts": []}, format="json").status_code == 400
