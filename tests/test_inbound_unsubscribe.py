"""Unsubscribe by mail: the List-Unsubscribe mailto of an email a real run sent (through aiosmtpd) is answered the
way a mail client answers it, and the inbound webhook of a provider (Mailgun, Postmark, SendGrid payloads as
django-anymail parses them) or of compose's mail catcher (Mailpit's summary) posts it to us. The contact is
unsubscribed as by the one-click link, attributed to the message and audited as an unsubscribe by mail; anything else
is a 200 that changes nothing; without INBOUND_MAIL_DOMAIN no mailto is advertised and the endpoints are 404."""

from __future__ import annotations

import base64
import email
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import time
from email import policy
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from django.test import Client

from analytics.models import EngagementEvent
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.content import links
from campaigns.models import Variant
from compliance.models import AuditLogEntry, ContactPreference, Unsubscribe
from delivery import runs, sending
from delivery.backends import reset_backends
from delivery.models import Message, Run
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "mail.acme.example"
SECRET = "inbound:s3cret-webhook"
MAILGUN_KEY = "mailgun-signing-key"


@pytest.fixture(autouse=True)
def _inbound_configured(settings):
    reset_backends()
    settings.INBOUND_MAIL_DOMAIN = DOMAIN
    settings.ANYMAIL = {"WEBHOOK_SECRET": SECRET, "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY}
    settings.DELIVERY_BACKENDS = {
        "default": "delivery.sandbox.SandboxBackend",
        "email": "delivery.channels.EmailBackend",
    }
    yield
    reset_backends()


def _provider() -> Client:
    """A provider's webhook call: basic auth with the configured secret, no cookies or CSRF token."""
    return Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION="Basic " + base64.b64encode(SECRET.encode()).decode())


def _sent(teammate, smtp, django_capture_on_commit_callbacks) -> dict[str, email.message.EmailMessage]:
    """A real run of a five-contact email campaign, sent over SMTP: the emails as they arrived, by recipient."""
    organisation = teammate.organisation
    organisation.sender_email, organisation.sender_name = "news@acme.example", "Acme"
    organisation.save()
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"k{i}", "email": f"k{i}@example.com", "first_name": f"N{i}"} for i in range(5)],
    )
    campaign = CampaignFactory(organisation=organisation, channels=["email"], variants=False)
    content = {"email": {"subject": "Hi {{ contact.first_name }}", "html": "<p>Hello {{ contact.first_name }}</p>"}}
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        sending.run_send_for(run.pk, seconds=30)
    assert len(smtp.messages) == 5
    return {rcpt[0]: email.message_from_bytes(raw, policy=policy.default) for _f, rcpt, raw in smtp.messages}


def _mailto(mime: email.message.EmailMessage) -> tuple[str, str]:
    """The address and subject a mail client writes to when the reader presses "unsubscribe" (RFC 2369 mailto)."""
    https, mailto = [part.strip().strip("<>") for part in str(mime["List-Unsubscribe"]).split(",")]
    assert https.startswith("http") and "/u/" in https
    parts = urlsplit(mailto)
    assert parts.scheme == "mailto"
    return unquote(parts.path), parse_qs(parts.query)["subject"][0]


def _mailgun_post(client: Client, *, to: str, subject: str, key: str = MAILGUN_KEY):
    """Mailgun's route forward(): multipart form with the parsed message and a signature over timestamp + token."""
    timestamp, token = str(int(time.time())), "f4b1c0de" * 6
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    headers = [["From", "Reader <k3@example.com>"], ["To", to], ["Subject", subject], ["Message-Id", "<r1@x.example>"]]
    return client.post(
        "/hooks/inbound/mailgun/",
        {
            "recipient": to,
            "sender": "k3@example.com",
            "from": "Reader <k3@example.com>",
            "subject": subject,
            "body-plain": "",
            "stripped-text": "",
            "message-headers": json.dumps(headers),
            "timestamp": timestamp,
            "token": token,
            "signature": signature,
        },
    )


def _postmark_post(client: Client, *, to: str, subject: str):
    """Postmark's inbound webhook JSON (parsed message, no RawEmail)."""
    local = to.partition("@")[0]
    payload = {
        "FromName": "Reader",
        "From": "k3@example.com",
        "FromFull": {"Email": "k3@example.com", "Name": "Reader", "MailboxHash": ""},
        "To": to,
        "ToFull": [{"Email": to, "Name": "", "MailboxHash": local.partition("+")[2]}],
        "CcFull": [],
        "BccFull": [],
        "OriginalRecipient": to,
        "Subject": subject,
        "MessageID": "22c74902-a0c1-4511-804f-341342852c90",
        "Date": "Mon, 7 Dec 2026 14:00:00 +0000",
        "TextBody": "",
        "HtmlBody": "",
        "StrippedTextReply": "",
        "Headers": [{"Name": "Return-Path", "Value": "<k3@example.com>"}],
        "Attachments": [],
    }
    return client.post("/hooks/inbound/postmark/", json.dumps(payload), content_type="application/json")


def _assert_unsubscribed_by_mail(contact: Contact, message: Message) -> None:
    assert ContactPreference.objects.get(contact=contact).unsubscribed_at is not None
    record = Unsubscribe.objects.get(contact=contact)
    assert (record.message_id, record.run_id, record.channel, record.source) == (
        message.pk,
        message.run_id,
        "email",
        Unsubscribe.Source.MAIL,
    )
    entry = AuditLogEntry.objects.get(action="contact.unsubscribe", target_id=str(contact.pk))
    assert entry.actor_label == "recipient (unsubscribe by mail (List-Unsubscribe mailto))"
    assert entry.details["message_id"] == str(message.pk)
    assert EngagementEvent.objects.filter(kind="unsubscribe", message_id=message.pk).count() == 1


def test_it_unsubscribes_by_the_mailto_of_a_sent_email_through_mailgun(
    teammate, smtp, django_capture_on_commit_callbacks
):
    sent = _sent(teammate, smtp, django_capture_on_commit_callbacks)
    address, subject = _mailto(sent["k3@example.com"])
    assert address == f"unsubscribe@{DOMAIN}"
    assert subject.startswith("unsubscribe ")

    response = _mailgun_post(_provider(), to=address, subject=subject)

    assert response.status_code == 200
    contact = Contact.objects.get(external_id="k3")
    _assert_unsubscribed_by_mail(contact, Message.objects.get(contact=contact))
    # Only the reader who wrote: the other four stay subscribed.
    assert Unsubscribe.objects.count() == 1
    assert ContactPreference.objects.filter(unsubscribed_at__isnull=False).count() == 1
    # The provider retries a delivery it doubts: the same mail again records nothing more.
    assert _mailgun_post(_provider(), to=address, subject=subject).status_code == 200
    assert Unsubscribe.objects.count() == 1
    assert AuditLogEntry.objects.filter(action="contact.unsubscribe").count() == 1


def test_postmark_inbound_with_the_token_in_the_address(teammate, smtp, django_capture_on_commit_callbacks):
    sent = _sent(teammate, smtp, django_capture_on_commit_callbacks)
    _address, subject = _mailto(sent["k1@example.com"])
    token = subject.split(" ", 1)[1]

    response = _postmark_post(_provider(), to=f"unsubscribe+{token}@{DOMAIN}", subject="Please stop")

    assert response.status_code == 200
    contact = Contact.objects.get(external_id="k1")
    _assert_unsubscribed_by_mail(contact, Message.objects.get(contact=contact))
    assert Unsubscribe.objects.count() == 1


def test_sendgrid_inbound_parse(teammate, smtp, django_capture_on_commit_callbacks):
    sent = _sent(teammate, smtp, django_capture_on_commit_callbacks)
    address, subject = _mailto(sent["k2@example.com"])
    raw_headers = f"From: k2@example.com\r\nTo: {address}\r\nSubject: {subject}\r\nMessage-ID: <r2@example.com>\r\n"

    response = _provider().post(
        "/hooks/inbound/sendgrid/",
        {
            "headers": raw_headers,
            "from": "k2@example.com",
            "to": address,
            "subject": subject,
            "text": "",
            "envelope": json.dumps({"to": [address], "from": "k2@example.com"}),
            "charsets": json.dumps({"to": "UTF-8", "subject": "UTF-8", "from": "UTF-8", "text": "UTF-8"}),
            "spam_score": "0.1",
        },
    )

    assert response.status_code == 200
    contact = Contact.objects.get(external_id="k2")
    _assert_unsubscribed_by_mail(contact, Message.objects.get(contact=contact))


def test_the_compose_mail_catcher_webhook_unsubscribes_and_ignores_what_we_sent(
    teammate, smtp, django_capture_on_commit_callbacks
):
    sent = _sent(teammate, smtp, django_capture_on_commit_callbacks)
    address, subject = _mailto(sent["k4@example.com"])

    def summary(to: str, subject: str) -> str:
        # Mailpit's MessageSummary as its webhook posts it (server/webhook: the summary of each caught message).
        return json.dumps(
            {
                "ID": "8PqBE9YcwJVMXwMW2hAiKy",
                "MessageID": "r4@example.com",
                "Read": False,
                "From": {"Name": "Reader", "Address": "k4@example.com"},
                "To": [{"Name": "", "Address": to}],
                "Cc": [],
                "Bcc": [],
                "ReplyTo": [],
                "Subject": subject,
                "Created": "2026-12-07T14:00:00.123Z",
                "Username": "",
                "Tags": [],
                "Size": 412,
                "Attachments": 0,
                "Snippet": "",
            }
        )

    # The catcher also catches every email we send, and posts those too.
    ours = _provider().post(
        "/hooks/inbound/mailpit/", summary("k0@example.com", "Hi N0"), content_type="application/json"
    )
    assert ours.status_code == 200
    assert Unsubscribe.objects.count() == 0

    response = _provider().post("/hooks/inbound/mailpit/", summary(address, subject), content_type="application/json")

    assert response.status_code == 200
    contact = Contact.objects.get(external_id="k4")
    _assert_unsubscribed_by_mail(contact, Message.objects.get(contact=contact))


def _signed(contact: Contact, *, issued: float) -> str:
    return links.sign("unsubscribe", str(contact.organisation_id), str(contact.pk), "", str(int(issued)))


def test_invalid_tokens_and_other_mail_are_a_200_that_changes_nothing(
    teammate, outsider, smtp, django_capture_on_commit_callbacks, caplog
):
    sent = _sent(teammate, smtp, django_capture_on_commit_callbacks)
    address, subject = _mailto(sent["k3@example.com"])
    token = subject.split(" ", 1)[1]
    payload, signature = token.split(".")
    contact = Contact.objects.get(external_id="k3")
    contacts_upsert_rows(organisation=outsider.organisation, rows=[{"external_id": "x1", "email": "x1@example.com"}])
    stranger = Contact.objects.get(external_id="x1")
    bad_tokens = {
        "tampered": f"{payload}.{signature[:-2]}AA",
        "expired": _signed(contact, issued=time.time() - (links.TOKEN_DAYS + 1) * 86400),
        "another key's": links.sign("preferences", str(contact.organisation_id), str(contact.pk), "1", "2"),
        "of a contact since erased": _signed(Contact(pk=10**9, organisation_id=contact.organisation_id), issued=1e10),
    }
    caplog.set_level(logging.INFO, logger="delivery.inbound_mail")
    for label, bad in bad_tokens.items():
        caplog.clear()
        assert _mailgun_post(_provider(), to=address, subject=f"unsubscribe {bad}").status_code == 200, label
        assert [r.getMessage() for r in caplog.records] == [
            "inbound unsubscribe from Mailgun: tampered, expired or unknown token; ignored"
        ], label
    for label, to, text in [
        ("another mailbox", f"support@{DOMAIN}", subject),
        ("another domain", "unsubscribe@elsewhere.example", subject),
        ("no token", address, "please unsubscribe me"),
    ]:
        caplog.clear()
        assert _mailgun_post(_provider(), to=to, subject=text).status_code == 200, label
        assert [r.getMessage() for r in caplog.records] == [
            "inbound mail from Mailgun: not to the unsubscribe mailbox or no token in it; ignored"
        ], label
    assert Unsubscribe.objects.count() == 0
    assert ContactPreference.objects.filter(unsubscribed_at__isnull=False).count() == 0
    assert not ContactPreference.objects.filter(contact=stranger).exists()


def test_a_webhook_call_without_the_secret_or_signature_is_refused(teammate, smtp, django_capture_on_commit_callbacks):
    sent = _sent(teammate, smtp, django_capture_on_commit_callbacks)
    address, subject = _mailto(sent["k3@example.com"])
    wrong = Client(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"inbound:guess").decode())

    assert _mailgun_post(Client(), to=address, subject=subject).status_code == 400
    assert _mailgun_post(wrong, to=address, subject=subject).status_code == 400
    assert _mailgun_post(_provider(), to=address, subject=subject, key="not-the-key").status_code == 400
    assert _postmark_post(wrong, to=address, subject=subject).status_code == 400
    assert Unsubscribe.objects.count() == 0


def test_without_inbound_mail_only_the_https_uri_is_advertised_and_the_endpoints_are_404(
    settings, teammate, smtp, django_capture_on_commit_callbacks
):
    settings.INBOUND_MAIL_DOMAIN = ""
    sent = _sent(teammate, smtp, django_capture_on_commit_callbacks)
    mime = sent["k3@example.com"]
    header = str(mime["List-Unsubscribe"]).strip()
    assert "," not in header and "mailto" not in header
    assert header.startswith("<http") and "/u/" in header and header.endswith(">")
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = header.strip("<>").rsplit("/", 1)[1]

    response = _mailgun_post(_provider(), to=f"unsubscribe@{DOMAIN}", subject=f"unsubscribe {token}")

    assert response.status_code == 404
    assert Unsubscribe.objects.count() == 0


def test_inbound_mail_without_a_webhook_secret_refuses_to_start():
    env = {**os.environ, "SECRET_KEY": "x", "INBOUND_MAIL_DOMAIN": DOMAIN, "ANYMAIL_WEBHOOK_SECRET": ""}
    code = "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'; django.setup()"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: "
        'INBOUND_MAIL_DOMAIN needs ANYMAIL_WEBHOOK_SECRET ("user:password")'
    )
