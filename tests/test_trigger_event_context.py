"""A triggered campaign's content uses its event: `event.id`, `event.type`, `event.properties` and
`event.occurred_at` are in every channel's template context — in the message a real Celery worker sends (SMTP
server, notification_service and webhook receivers, the in-app inbox), in the preview (with a sample event of the
trigger type, labelled) and in a test send. Names no message provides warn at save, in the API and the console;
messages that fail show their reason on the campaign page and in the runs API, grouped, with counts."""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from django.utils.html import escape

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Event
from campaigns.models import Campaign, Variant
from delivery import sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory, console_client

ROOT = Path(__file__).resolve().parent.parent
EVENTS = "/api/v1/events/"
# PRD "Trigger latency: event to message sent < 60 seconds": how long a test waits for the message.
TRIGGER_LATENCY_SECONDS = 60.0

CART = {"cart": {"total": 42.5, "currency": "GBP"}, "items": [{"sku": "MUG-1", "qty": 2}, {"sku": "TEE-7", "qty": 1}]}


def _occurred() -> tuple[str, str]:
    """A recent event time as posted, and as templates see it (ISO 8601 in UTC)."""
    moment = (timezone.now() - timedelta(minutes=1)).replace(microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ"), moment.isoformat()


def _contacts(organisation) -> None:
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "ana", "email": "ana@example.com", "phone": "+447700900101", "first_name": "Ana"},
            {"external_id": "ben", "email": "ben@example.com", "phone": "+447700900102", "first_name": "Ben"},
        ],
    )


def _triggered(persona, content: dict, *, channels: list[str], event: str = "cart_abandoned") -> Campaign:
    organisation = persona.organisation
    organisation.sender_email, organisation.sender_name = "shop@acme.example", "Acme"
    organisation.save()
    campaign = CampaignFactory(
        organisation=organisation,
        type="triggered",
        trigger_event=event,
        channels=channels,
        variants=False,
        audience_rules={"field": "email", "op": "exists"},
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    response = persona.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/")
    assert response.status_code == 200, response.data
    return campaign


def _post_events(persona, *events: dict) -> None:
    response = persona.api.post(EVENTS, {"events": list(events)}, format="json")
    assert response.status_code == 202, response.data
    assert response.data["accepted"] == len(events), response.data


def _wait_for(predicate: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    return predicate()


EMAIL = {
    "email": {
        "subject": "Your cart: {{ event.properties.cart.total }} {{ event.properties.cart.currency }}",
        "html": "<p>Hi {{ contact.first_name }}, {{ event.type }} {{ event.id }} at {{ event.occurred_at }}:</p>"
        "<ul>{% for item in event.properties.items %}<li>{{ item.sku }} x {{ item.qty }}</li>{% endfor %}</ul>",
        "text": "Total {{ event.properties.cart.total }}\n"
        "{% for item in event.properties.items %}- {{ item.sku }} x {{ item.qty }}\n{% endfor %}",
    }
}


# --- a real Celery worker sends ---------------------------------------------------------------------------------


def _test_database_url() -> str:
    db = connection.settings_dict
    credentials = quote(db["USER"] or "postgres", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{credentials}@{quote(db['HOST'] or 'localhost', safe='')}{port}/{db['NAME']}"


@pytest.fixture
def worker() -> Iterator[Callable[..., None]]:
    """Starts a Celery worker process on this test session's task queue (where the API's after-commit kicks go),
    over the real Redis and this test's database, with the given environment on top."""
    from config.celery import app

    processes: list[subprocess.Popen] = []

    def start(**environment: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": _test_database_url(),
            "REDIS_URL": django_settings.REDIS_URL,
            "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
            "SECRET_KEY": django_settings.SECRET_KEY,
            "DB_CONN_MAX_AGE": "0",
            # As tests/conftest.py does for this process: the suite runs at any hour.
            "MARKETING_SMS_WINDOW": "",
            "WHATSAPP_SESSION_RULE": "false",
            **environment,
        }
        queue = app.conf.task_default_queue
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue, "--pool", "solo"]
        command += ["-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))

    yield start
    for process in processes:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        if process.returncode not in (0, -15):
            print(output.decode(errors="replace"))


class Receiver(BaseHTTPRequestHandler):
    """A local notification_service and webhook receiver: records every request, accepts it."""

    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Receiver.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body or b"{}")})
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"id": f"ns-{len(Receiver.requests)}"}).encode())


@pytest.fixture
def receiver(settings) -> Iterator[str]:
    Receiver.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    settings.SSRF_ALLOWED_TARGETS = [f"127.0.0.1:{port}"]  # the campaign's webhook URL is saved in this process
    yield f"127.0.0.1:{port}"
    server.shutdown()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_mails_the_event_values_a_triggered_email_uses(teammate, smtp, worker):
    _contacts(teammate.organisation)
    _triggered(teammate, EMAIL, channels=["email"])
    worker(
        DELIVERY_BACKEND_EMAIL="delivery.channels.EmailBackend",
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(django_settings.EMAIL_PORT),  # the smtp fixture's server
    )
    posted, seen = _occurred()
    _post_events(
        teammate,
        {"id": "cart-1", "type": "cart_abandoned", "contact": "ana", "occurred_at": posted, "properties": CART},
    )
    assert _wait_for(lambda: smtp.messages, TRIGGER_LATENCY_SECONDS), "no mail within the PRD's trigger latency"
    [(_sender, recipients, raw)] = smtp.messages
    mime = email.message_from_bytes(raw, policy=policy.default)
    text = mime.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")  # as on the wire
    html = mime.get_body(preferencelist=("html",)).get_content()
    assert (recipients, mime["Subject"]) == (["ana@example.com"], "Your cart: 42.5 GBP")
    assert text.startswith("Total 42.5\n- MUG-1 x 2\n- TEE-7 x 1\n")
    assert f"<p>Hi Ana, cart_abandoned cart-1 at {seen}:</p><ul><li>MUG-1 x 2</li><li>TEE-7 x 1</li></ul>" in html


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_sends_the_event_values_by_sms_whatsapp_webhook_and_in_app(teammate, receiver, worker):
    _contacts(teammate.organisation)
    loop = "{% for item in event.properties.items %}{{ item.sku }}{% if not loop.last %}, {% endif %}{% endfor %}"
    content = {
        "sms": {"body": "Cart {{ event.properties.cart.total }}: " + loop},
        "whatsapp": {"body": "{{ event.type }} {{ event.id }}: " + loop},
        "in_app": {
            "title": "{{ event.properties.items|length }} items waiting",
            "body": "{{ event.properties.cart.total }} {{ event.properties.cart.currency }} at {{ event.occurred_at }}",
        },
        "webhook": {
            "url": f"http://{receiver}/hooks/cart",
            "payload_template": '{"event": {{ event.id|tojson }}, "total": {{ event.properties.cart.total }},'
            ' "skus": {{ event.properties.items|map(attribute="sku")|list|tojson }}}',
        },
    }
    campaign = _triggered(teammate, content, channels=["sms", "whatsapp", "in_app", "webhook"])
    worker(
        DELIVERY_BACKEND_SMS="delivery.channels.NotificationServiceBackend",
        DELIVERY_BACKEND_WHATSAPP="delivery.channels.NotificationServiceBackend",
        DELIVERY_BACKEND_WEBHOOK="delivery.channels.WebhookBackend",
        DELIVERY_BACKEND_IN_APP="delivery.channels.InAppBackend",
        NOTIFICATION_SERVICE_URL=f"http://{receiver}",
        SSRF_ALLOWED_TARGETS=receiver,
    )
    posted, seen = _occurred()
    _post_events(
        teammate,
        {"id": "cart-9", "type": "cart_abandoned", "contact": "ben", "occurred_at": posted, "properties": CART},
    )
    run = Run.objects.get(campaign=campaign)
    sent = _wait_for(
        lambda: Message.objects.filter(run=run, status__in=["sent", "delivered"]).count() == 4,
        TRIGGER_LATENCY_SECONDS,
    )
    assert sent, list(Message.objects.filter(run=run).values_list("channel", "status", "error"))
    notifications = {r["json"]["channel"]: r["json"] for r in Receiver.requests if r["path"] == "/v1/notifications"}
    assert (notifications["sms"]["to"], notifications["sms"]["body"]) == ("+447700900102", "Cart 42.5: MUG-1, TEE-7")
    assert notifications["whatsapp"]["body"] == "cart_abandoned cart-9: MUG-1, TEE-7"
    [hook] = [r for r in Receiver.requests if r["path"] == "/hooks/cart"]
    assert hook["json"] == {"event": "cart-9", "total": 42.5, "skus": ["MUG-1", "TEE-7"]}
    [item] = teammate.api.get("/api/v1/inbox/?contact=ben").data["results"]
    assert (item["title"], item["body"]) == ("2 items waiting", f"42.5 GBP at {seen}")


# --- preview and test send ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_preview_shows_the_contacts_latest_event_and_the_send_matches_it(teammate, smtp, settings):
    settings.DELIVERY_BACKENDS = {
        "default": "delivery.sandbox.SandboxBackend",
        "email": "delivery.channels.EmailBackend",
    }
    _contacts(teammate.organisation)
    campaign = _triggered(teammate, EMAIL, channels=["email"])
    posted, seen = _occurred()
    _post_events(
        teammate,
        {"id": "cart-2", "type": "cart_abandoned", "contact": "ana", "occurred_at": posted, "properties": CART},
        {"id": "cart-3", "type": "cart_abandoned", "contact": "ben", "properties": {"cart": {"total": 7}}},
    )
    ana = Contact.objects.get(external_id="ana")
    preview = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/preview/", {"channel": "email", "contact_id": ana.pk}, format="json"
    )
    assert preview.status_code == 200, preview.data
    assert preview.data["event"] == {"id": "cart-2", "type": "cart_abandoned", "properties": CART, "occurred_at": seen}
    assert preview.data["event_source"] == {
        "source": "contact",
        "label": f"Event: this contact's latest 'cart_abandoned' event (cart-2, {seen}).",
    }
    assert preview.data["warnings"] == []
    rendered = preview.data["rendered"]
    assert rendered["subject"] == "Your cart: 42.5 GBP"
    # The real send of that event renders the same content (the links and ids are the message's own).
    sending.run_send_for(Run.objects.get(campaign=campaign).pk, seconds=30)
    mails = {rcpt[0]: email.message_from_bytes(raw, policy=policy.default) for _f, rcpt, raw in smtp.messages}
    mime = mails["ana@example.com"]
    html = mime.get_body(preferencelist=("html",)).get_content()
    section = f"<p>Hi Ana, cart_abandoned cart-2 at {seen}:</p><ul><li>MUG-1 x 2</li><li>TEE-7 x 1</li></ul>"
    assert (mime["Subject"], section in html, section in rendered["html"]) == (rendered["subject"], True, True)


@pytest.mark.django_db
def test_the_console_preview_names_the_sample_event(teammate):
    _contacts(teammate.organisation)
    campaign = _triggered(teammate, EMAIL, channels=["email"])
    _post_events(teammate, {"id": "cart-4", "type": "cart_abandoned", "contact": "ben", "properties": CART})
    form = {
        "v-0-name": "A",
        "v-0-allocation": "100",
        "v-0-email-subject": EMAIL["email"]["subject"],
        "v-0-email-html": EMAIL["email"]["html"],
        "preview_channel": "email",
        "preview_contact": "ana",  # ana has no event of her own: the organisation's latest is shown
    }
    page = console_client(teammate).post(f"/campaigns/{campaign.pk}/content/preview/", form).content.decode()
    occurred = Event.objects.get(event_id="cart-4").occurred_at.astimezone(UTC).isoformat()
    label = escape(f"Event: the latest 'cart_abandoned' event (cart-4, {occurred}).")
    assert f'data-testid="preview-event" data-source="organisation">{label}</p>' in page
    assert "<strong>Your cart: 42.5 GBP</strong>" in page
    # An event id that is not there is a problem listed beside the form, not an error page.
    form["preview_event"] = "nope"
    missing = console_client(teammate).post(f"/campaigns/{campaign.pk}/content/preview/", form)
    assert missing.status_code == 200
    assert escape("No event 'nope' in this organisation.") in missing.content.decode()


@pytest.mark.django_db
def test_without_a_stored_event_the_preview_uses_a_labelled_example(teammate):
    _contacts(teammate.organisation)
    content = {"email": {"subject": "{{ event.type }}: {{ event.properties.cart }}", "html": "<p>x</p>"}}
    campaign = _triggered(teammate, content, channels=["email"])
    url = f"/api/v1/campaigns/{campaign.pk}/preview/"
    example = teammate.api.post(url, {"channel": "email"}, format="json").data
    assert (example["rendered"]["subject"], example["event"]["properties"], example["event_source"]) == (
        "cart_abandoned:",
        {},
        {
            "source": "example",
            "label": "Example event with no properties: no 'cart_abandoned' event has been received yet.",
        },
    )
    # Content that needs more than the example has is a 400 that says the event was an example.
    Variant.objects.filter(campaign=campaign).update(
        content={"email": {"subject": "{{ event.properties.cart.total }}"}}
    )
    refused = teammate.api.post(url, {"channel": "email"}, format="json")
    assert (refused.status_code, refused.data["content"]) == (
        400,
        [
            "The template failed to render: 'dict object' has no attribute 'cart' (Example event with no properties:"
            " no 'cart_abandoned' event has been received yet.)"
        ],
    )
    Variant.objects.filter(campaign=campaign).update(content=content)
    # Events seen once (the catalogue remembers their properties) but no longer stored: the catalogue's examples.
    _post_events(teammate, {"id": "cart-5", "type": "cart_abandoned", "contact": "ben", "properties": {"cart": "c-77"}})
    Event.objects.filter(event_id="cart-5").delete()
    catalogue = teammate.api.post(url, {"channel": "email"}, format="json").data
    assert (catalogue["rendered"]["subject"], catalogue["event_source"]["source"]) == (
        "cart_abandoned: c-77",
        "catalogue",
    )


@pytest.mark.django_db
def test_the_preview_renders_a_chosen_stored_event(teammate):
    _contacts(teammate.organisation)
    campaign = _triggered(teammate, EMAIL, channels=["email"])
    posted, seen = _occurred()
    _post_events(
        teammate,
        {"id": "cart-8", "type": "cart_abandoned", "contact": "ben", "occurred_at": posted, "properties": CART},
        {"id": "cart-9", "type": "cart_abandoned", "contact": "ben", "properties": {"cart": {"total": 3}}},
        {"id": "login-1", "type": "login", "contact": "ben"},
    )
    url = f"/api/v1/campaigns/{campaign.pk}/preview/"
    chosen = teammate.api.post(url, {"channel": "email", "event_id": "cart-8"}, format="json")
    assert (chosen.status_code, chosen.data["rendered"]["subject"], chosen.data["event_source"]) == (
        200,
        "Your cart: 42.5 GBP",
        {"source": "chosen", "label": f"Event: cart-8 ('cart_abandoned', {seen})."},
    )
    other_type = teammate.api.post(url, {"channel": "email", "event_id": "login-1"}, format="json")
    assert (other_type.status_code, other_type.data["event_id"]) == (
        400,
        ["Event 'login-1' is 'login'; this campaign is triggered by 'cart_abandoned'."],
    )
    missing = teammate.api.post(url, {"channel": "email", "event_id": "nope"}, format="json")
    assert (missing.status_code, missing.data["event_id"]) == (400, ["No event 'nope' in this organisation."])


@pytest.mark.django_db
def test_a_test_send_renders_the_sample_event(teammate, smtp):
    _contacts(teammate.organisation)
    campaign = _triggered(teammate, EMAIL, channels=["email"])
    _post_events(teammate, {"id": "cart-6", "type": "cart_abandoned", "contact": "ana", "properties": CART})
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/test-send/", {"recipients": ["seed@acme.example"]}, format="json"
    )
    assert response.status_code == 200, response.data
    [(_sender, recipients, raw)] = smtp.messages
    mime = email.message_from_bytes(raw, policy=policy.default)
    assert (recipients, mime["Subject"]) == (["seed@acme.example"], "[Test] Your cart: 42.5 GBP")


# --- warnings at save -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_unknown_names_warn_when_saved_through_the_api(teammate):
    _contacts(teammate.organisation)
    _post_events(teammate, {"id": "cart-7", "type": "cart_abandoned", "contact": "ana", "properties": CART})
    triggered = CampaignFactory(
        organisation=teammate.organisation, type="triggered", trigger_event="cart_abandoned", variants=False
    )
    html = "<p>{{ event.properties.cart.total }} {{ event.name }} {{ evnt.x }} {{ event.properties.coupon }}</p>"
    variants = [{"name": "A", "allocation_percent": 100, "content": {"email": {"subject": "Hi", "html": html}}}]
    saved = teammate.api.patch(f"/api/v1/campaigns/{triggered.pk}/", {"variants": variants}, format="json")
    assert saved.status_code == 200, saved.data
    assert saved.data["variants"][0]["content"]["email"]["html"] == html  # saved all the same
    assert saved.data["content_warnings"] == [
        "Variant A: email.html: No 'cart_abandoned' event has had the property 'coupon' yet.",
        "Variant A: email.html: Unknown event field 'event.name'; an event has id, type, properties, occurred_at.",
        "Variant A: email.html: Unknown variable 'evnt'.",
    ]
    scheduled = CampaignFactory(organisation=teammate.organisation, variants=False)
    variants[0]["content"]["email"]["html"] = "<p>{{ event.properties.cart.total }}</p>"
    saved = teammate.api.patch(f"/api/v1/campaigns/{scheduled.pk}/", {"variants": variants}, format="json")
    assert (saved.status_code, saved.data["content_warnings"]) == (
        200,
        ["Variant A: email.html: Unknown variable 'event': only triggered campaigns have an event."],
    )


@pytest.mark.django_db
def test_unknown_names_warn_when_saved_in_the_console(teammate):
    campaign = CampaignFactory(
        organisation=teammate.organisation, type="triggered", trigger_event="cart_abandoned", variants=False
    )
    form = {
        "v-0-name": "A",
        "v-0-allocation": "100",
        "v-0-email-subject": "{{ event.properties.cart.total }}",
        "v-0-email-html": "<p>{{ coupon }}</p>",
        "save": "1",
    }
    response = console_client(teammate).post(f"/campaigns/{campaign.pk}/content/", form, follow=True)
    assert response.status_code == 200
    shown = [(message.level_tag, message.message) for message in response.context["messages"]]
    assert shown == [
        ("success", "Content saved."),
        ("warning", "Warning: Variant A: email.html: Unknown variable 'coupon'."),
    ]
    page = response.content.decode()
    assert escape("Warning: Variant A: email.html: Unknown variable 'coupon'.") in page
    assert "and the cart_abandoned event that triggered the message: <code>{{ event.properties.total }}</code>" in page
    assert campaign.variants.get().content["email"]["html"] == "<p>{{ coupon }}</p>"


# --- failure reasons ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_campaign_page_and_the_runs_api_group_failures_by_reason(teammate):
    _contacts(teammate.organisation)
    content = {"email": {"subject": "Total {{ event.properties.cart.total }}", "html": "<p>x</p>"}}
    campaign = _triggered(teammate, content, channels=["email"])
    Campaign.objects.filter(pk=campaign.pk).update(sandbox_profile={"failed": 1, "bounced": 0})
    _post_events(
        teammate,
        {"id": "e-1", "type": "cart_abandoned", "contact": "ana", "properties": {"items": []}},
        {"id": "e-2", "type": "cart_abandoned", "contact": "ana", "properties": {}},
        {"id": "e-3", "type": "cart_abandoned", "contact": "ben", "properties": {}},
        {"id": "e-4", "type": "cart_abandoned", "contact": "ben", "properties": CART},
    )
    run = Run.objects.get(campaign=campaign)
    sending.run_send_for(run.pk, seconds=30)
    template = "template: The template failed to render: 'dict object' has no attribute 'cart'"
    provider = "sandbox: provider rejected the message"
    panel = console_client(teammate).get(f"/delivery/campaigns/{campaign.pk}/runs/").content.decode()
    assert "<summary>4 not delivered, by reason</summary>" in panel
    assert (
        f'<li data-testid="failure-reason" data-status="failed" data-count="3"><strong>3</strong> failed: '
        f"{escape(template)}</li>"
        f'<li data-testid="failure-reason" data-status="failed" data-count="1"><strong>1</strong> failed: '
        f"{escape(provider)}</li>"
    ) in panel
    listed = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/runs/").data["results"]
    assert listed[0]["failures"] == {
        "total": 4,
        "reasons": [
            {"status": "failed", "reason": template, "count": 3},
            {"status": "failed", "reason": provider, "count": 1},
        ],
        "more": 0,
    }
    assert teammate.api.get(f"/api/v1/runs/{run.pk}/").data["failures"] == listed[0]["failures"]
