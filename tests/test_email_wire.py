"""Email on the wire (delivery.mime): the bytes a real SMTP server (aiosmtpd) receives, parsed back with the email
package as a mail client would. Address headers with specials and non-ASCII names, RFC 2047 subjects folded at 78,
bodies that come back exactly as rendered whatever their lines, and the headers mailbox providers look for (Date,
Message-ID, List-Id, Feedback-ID, Precedence) on a real run's mail."""

from __future__ import annotations

import email.utils
import re
import smtplib
from dataclasses import replace
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from django.conf import settings
from django.core import mail

from audiences.contacts import contacts_upsert_rows
from campaigns.content.render import Renderer, Sender
from campaigns.models import Variant
from delivery import mime, runs, sending
from delivery.backends import Outgoing, reset_backends
from delivery.models import Message, Run
from tests.factories import CampaignFactory

ORGANISATION_ID = "00000000-0000-4000-8000-000000000001"
CAMPAIGN_ID = "00000000-0000-4000-8000-0000000000c1"

# The wire path looks up the organisation's DKIM key (delivery.dkim) when it builds a sender's skeleton.
pytestmark = pytest.mark.django_db


def _sender(**overrides) -> Sender:
    values = {
        "organisation_id": ORGANISATION_ID,
        "organisation_name": "Acme",
        "postal_address": "1 Main Street, London",
        "sender_name": "Acme",
        "sender_email": "news@acme.example",
        "campaign_name": "Spring sale",
        "campaign_id": CAMPAIGN_ID,
        "tracking": False,
        **overrides,
    }
    return Sender(**values)


def _rendered(content: dict, message_id: int = 7, **sender) -> Outgoing:
    payload = Renderer("email", content, _sender(**sender)).render(str(message_id), {"first_name": "Ada"}, "42")
    return _outgoing(payload, message_id)


def _outgoing(payload: dict, message_id: int = 7, address: str = "ada@example.com") -> Outgoing:
    return Outgoing(
        message_id=message_id,
        idempotency_key=f"key-{message_id}",
        channel="email",
        run_id="run",
        campaign_id=CAMPAIGN_ID,
        organisation_id=ORGANISATION_ID,
        variant_id="variant",
        variant_name="A",
        contact_id=42,
        address=address,
        payload=payload,
    )


def _received(smtp, message: Outgoing) -> tuple[bytes, EmailMessage]:
    """Send the message's bytes as the SMTP path does and return what the server got, raw and parsed."""
    with smtplib.SMTP(settings.EMAIL_HOST, settings.EMAIL_PORT, timeout=10) as client:
        client.sendmail(mime.envelope_sender(message), [message.address], mime.message_bytes(message))
    _mail_from, _recipients, raw = smtp.messages[-1]
    return raw, BytesParser(policy=policy.default).parsebytes(raw)


def _header_lines(raw: bytes, name: bytes) -> list[bytes]:
    """The physical lines of one header (its first line and its folded continuations)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(i for i, line in enumerate(head) if line.lower().startswith(name.lower() + b":"))
    end = start + 1
    while end < len(head) and head[end][:1] in (b" ", b"\t"):
        end += 1
    return head[start:end]


# --- address headers and the subject --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "display_name",
    ["Smith, Jones & Co", "Zoë Müller", 'Ann "The Boss" O\'Neil', "Acme <support>", "佐藤商店 (Tokyo)"],
)
def test_it_sends_from_and_reply_to_names_as_written(smtp, display_name):
    message = _rendered(
        {"subject": "Hi", "html": "<p>Hello</p>", "reply_to": "help@acme.example"},
        sender_name=display_name,
    )
    raw, parsed = _received(smtp, message)
    sender = parsed["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (display_name, "news@acme.example")
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@acme.example"
    assert raw.isascii()  # headers in 7 bits: a non-ASCII name travels RFC 2047 encoded


def test_it_sends_a_reply_to_with_a_non_ascii_name(smtp):
    message = _rendered({"subject": "Hi", "html": "<p>Hello</p>"}, reply_to="Zoë Müller <zoe@acme.example>")
    _raw, parsed = _received(smtp, message)
    reply_to = parsed["Reply-To"].addresses[0]
    assert (reply_to.display_name, reply_to.addr_spec) == ("Zoë Müller", "zoe@acme.example")


def test_it_never_lets_a_cr_or_lf_start_a_header(smtp):
    message = _rendered(
        {"subject": "Hi {{ contact.first_name }}\r\nBcc: victim@example.net", "html": "<p>Hello</p>"},
        sender_name="Acme\r\nX-Injected: yes",
        reply_to="help@acme.example\nCc: victim@example.net",
    )
    raw, parsed = _received(smtp, message)
    names = {name.lower() for name in parsed}
    assert {"bcc", "cc", "x-injected"} & names == set()
    assert parsed["Subject"] == "Hi Ada Bcc: victim@example.net"
    assert parsed["From"].addresses[0].display_name == "Acme X-Injected: yes"
    assert re.search(rb"\r\n(Bcc|Cc|X-Injected):", raw) is None


def test_it_encodes_a_non_ascii_subject_and_folds_it_at_78():
    subject = "Zoë, " + "your personalised offers from Müller & Söhne are waiting " * 3
    message = _rendered({"subject": subject, "html": "<p>Hello</p>"})
    raw = mime.message_bytes(message)
    lines = _header_lines(raw, b"Subject")
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert parsed["Subject"] == subject.strip()
    assert len(lines) > 1 and max(len(line) for line in lines) <= 78
    assert all(b"=?utf-8?b?" in line for line in lines)


def test_it_folds_a_long_ascii_subject_at_its_own_spaces(smtp):
    subject = "A  long subject with  double spaces " + "and many more words to fold " * 5
    _raw, parsed = _received(smtp, _rendered({"subject": subject, "html": "<p>Hello</p>"}))
    raw = smtp.messages[-1][2]
    assert parsed["Subject"] == subject.strip()
    assert max(len(line) for line in _header_lines(raw, b"Subject")) <= 78


def test_two_senders_in_one_process_each_keep_their_own_headers(smtp):
    first = _rendered({"subject": "One", "html": "<p>1</p>"}, sender_name="First, Ltd", message_id=1)
    second = _rendered({"subject": "Two", "html": "<p>2</p>"}, sender_name="Second", message_id=2)
    again = _rendered({"subject": "Three", "html": "<p>3</p>"}, sender_name="First, Ltd", message_id=3)
    received = [_received(smtp, message)[1] for message in (first, second, again)]
    assert [(m["From"].addresses[0].display_name, m["Subject"]) for m in received] == [
        ("First, Ltd", "One"),
        ("Second", "Two"),
        ("First, Ltd", "Three"),
    ]


# --- bodies ---------------------------------------------------------------------------------------------------------

LONG_LINE = "x" * 2500
BODIES = {
    # name: (text, html, text's Content-Transfer-Encoding, html's)
    "ascii": ("Hello Ada\nSee you", "<p>Hello Ada</p>\n<p>See you</p>", "7bit", "7bit"),
    "non-ascii": ("Grüße, Zoë — 10 €", "<p>Grüße, Zoë — 10 €</p>", "quoted-printable", "quoted-printable"),
    "long lines": (LONG_LINE, f"<p>{LONG_LINE}</p>", "quoted-printable", "quoted-printable"),
    "crlf, cr and lf": ("one\r\ntwo\rthree\nfour\r\n", "<p>a</p>\r<p>b</p>\n<p>c</p>", "7bit", "7bit"),
    "empty text": ("", "<p>only html</p>", "7bit", "7bit"),
    "dot-leading lines": (".\n..\n.hidden\n. \nend", ".<p>\n.</p>\n..", "7bit", "7bit"),
    "trailing whitespace": ("line with space \nand tab\t\n", "<p>x</p>  ", "7bit", "7bit"),
    "boundary look-alike": ("--=_cs_\n--=_cs_--", "<p>--=_cs_</p>", "7bit", "7bit"),
    "nul": ("a\0b", "<p>a\0b</p>", "quoted-printable", "quoted-printable"),
}


def _normalised(body: str) -> str:
    return body.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("case", sorted(BODIES))
def test_bodies_come_back_exactly_as_rendered(smtp, case):
    text, html, text_encoding, html_encoding = BODIES[case]
    payload = {
        "subject": "Bodies",
        "from": "Acme <news@acme.example>",
        "from_email": "news@acme.example",
        "reply_to": "",
        "text": text,
        "html": html,
        "headers": {"Message-ID": "<7.00ff@acme.example>", "X-Campaign-Message-Id": "7"},
    }
    raw, parsed = _received(smtp, _outgoing(payload))
    text_part, html_part = parsed.get_body(("plain",)), parsed.get_body(("html",))
    # On the wire every line ends in CRLF; the parser hands the lines back with the line ends it read.
    assert _normalised(text_part.get_content()) == _normalised(text)
    assert _normalised(html_part.get_content()) == _normalised(html)
    assert (text_part["Content-Transfer-Encoding"], html_part["Content-Transfer-Encoding"]) == (
        text_encoding,
        html_encoding,
    )
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert parsed["Subject"] == "Bodies" and parsed["To"] == "ada@example.com"


def test_the_boundary_never_occurs_inside_a_part():
    message = _rendered({"subject": "s", "html": "<p>x</p>"})
    skeleton_boundary = re.search(rb'boundary="([^"]+)"', mime.message_bytes(message)).group(1).decode()
    # A body that carries the run's own boundary goes out quoted-printable, where "=_" cannot occur.
    payload = {**message.payload, "text": f"--{skeleton_boundary}\n--{skeleton_boundary}--"}
    raw = mime.message_bytes(_outgoing(payload))
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert [part.get_content_type() for part in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed.get_body(("plain",))["Content-Transfer-Encoding"] == "quoted-printable"
    assert _normalised(parsed.get_body(("plain",)).get_content()) == payload["text"]


# --- the headers mailbox providers look for, on a real run ----------------------------------------------------------


@pytest.fixture
def _email_over_smtp(settings):
    settings.DELIVERY_BACKENDS = {
        "default": "delivery.sandbox.SandboxBackend",
        "email": "delivery.channels.EmailBackend",
    }
    reset_backends()
    yield
    reset_backends()


def _send_campaign(persona, django_capture_on_commit_callbacks, **campaign) -> Run:
    organisation = persona.organisation
    organisation.sender_email, organisation.sender_name = "news@acme.example", "Smith, Jones & Co"
    organisation.postal_address = "1 Main Street, London"
    organisation.save()
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"k{i}", "email": f"k{i}@example.com", "first_name": f"Zoë {i}"} for i in range(3)],
    )
    campaign = CampaignFactory(organisation=organisation, channels=["email"], variants=False, **campaign)
    content = {"email": {"subject": "Für {{ contact.first_name }}", "html": "<p>Hallo {{ contact.first_name }}</p>"}}
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    with django_capture_on_commit_callbacks(execute=False):
        response = persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        assert response.status_code == 200, response.data
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        sending.run_send_for(run.pk, seconds=30)
        runs.run_finish_if_done(run.pk)
    run.refresh_from_db()
    return run


def test_a_marketing_run_carries_date_message_id_list_id_feedback_id_and_precedence(
    smtp, teammate, django_capture_on_commit_callbacks, _email_over_smtp
):
    before = datetime.now(UTC).replace(microsecond=0)
    run = _send_campaign(teammate, django_capture_on_commit_callbacks, name="Spring sale")
    campaign, organisation = run.campaign, teammate.organisation
    assert (run.status, run.sent_count, len(smtp.messages)) == ("completed", 3, 3)
    received = {rcpt[0]: BytesParser(policy=policy.default).parsebytes(raw) for _f, rcpt, raw in smtp.messages}
    mail_k1 = received["k1@example.com"]
    message = Message.objects.get(run=run, contact__external_id="k1")

    assert str(mail_k1["Date"]).endswith(" +0000")
    assert before <= email.utils.parsedate_to_datetime(str(mail_k1["Date"])) <= datetime.now(UTC)
    assert re.fullmatch(rf"<{message.pk}\.[0-9a-f]{{16}}@acme\.example>", mail_k1["Message-ID"])
    assert mail_k1["Message-ID"] == message.provider_message_id
    assert len({m["Message-ID"] for m in received.values()}) == 3
    assert mail_k1["List-Id"] == f'"Spring sale" <{campaign.pk}.acme.example>'
    assert mail_k1["Feedback-ID"] == f"{campaign.pk}:{organisation.pk}:marketing:acme.example"
    assert mail_k1["Precedence"] == "bulk"
    assert mail_k1["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert str(mail_k1["List-Unsubscribe"]).startswith("<http")
    assert mail_k1["X-Campaign-Message-Id"] == str(message.pk)
    assert mail_k1["Subject"] == "Für Zoë 1"
    assert mail_k1["From"].addresses[0].display_name == "Smith, Jones & Co"

    # A provider's receipt quoting the new Message-ID still finds the message.
    receipt = {"receipts": [{"provider_message_id": mail_k1["Message-ID"], "status": "bounced", "reason": "550"}]}
    response = teammate.api.post("/api/v1/receipts/", receipt, format="json")
    assert (response.status_code, response.data["applied"]) == (200, 1)
    message.refresh_from_db()
    assert message.status == "bounced"


def test_a_receipt_quoting_an_old_style_message_id_still_finds_its_message(
    smtp, teammate, django_capture_on_commit_callbacks, _email_over_smtp
):
    run = _send_campaign(teammate, django_capture_on_commit_callbacks)
    message = Message.objects.get(run=run, contact__external_id="k0")
    receipt = {"receipts": [{"provider_message_id": f"<{message.pk}@acme.example>", "status": "bounced"}]}
    response = teammate.api.post("/api/v1/receipts/", receipt, format="json")
    assert (response.status_code, response.data["applied"]) == (200, 1)


def test_a_transactional_triggered_email_is_not_bulk_and_says_its_category():
    transactional = BytesParser(policy=policy.default).parsebytes(
        mime.message_bytes(_rendered({"subject": "Receipt", "html": "<p>Paid</p>"}, category="transactional"))
    )
    triggered = BytesParser(policy=policy.default).parsebytes(
        mime.message_bytes(_rendered({"subject": "Your cart", "html": "<p>Cart</p>"}, triggered=True))
    )
    assert transactional["Precedence"] is None
    assert transactional["Feedback-ID"] == f"{CAMPAIGN_ID}:{ORGANISATION_ID}:transactional:acme.example"
    assert (triggered["Precedence"], triggered["Feedback-ID"]) == (
        "bulk",
        f"{CAMPAIGN_ID}:{ORGANISATION_ID}:triggered:acme.example",
    )


def test_a_campaign_name_with_quotes_or_accents_makes_a_valid_list_id():
    quoted = _rendered({"subject": "s", "html": "h"}, campaign_name='Spring "big" sale')
    accented = _rendered({"subject": "s", "html": "h"}, campaign_name="Soldes d'été")
    parse = BytesParser(policy=policy.default).parsebytes
    assert parse(mime.message_bytes(quoted))["List-Id"] == f'"Spring \\"big\\" sale" <{CAMPAIGN_ID}.acme.example>'
    assert parse(mime.message_bytes(accented))["List-Id"] == f"Soldes d'été <{CAMPAIGN_ID}.acme.example>"


def test_the_django_mail_path_says_the_same_date_offset(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    message = _rendered({"subject": "Hi", "html": "<p>Hello</p>"}, sender_name="Smith, Jones & Co")
    mail.outbox = []
    mime.email_message(message).send()
    sent = BytesParser(policy=policy.default).parsebytes(mail.outbox[0].message().as_bytes())
    assert str(sent["Date"]).endswith(" +0000")
    assert sent["From"].addresses[0].display_name == "Smith, Jones & Co"
    assert sent["Message-ID"] == message.payload["headers"]["Message-ID"]


# --- DKIM -----------------------------------------------------------------------------------------------------------


def test_a_sending_domain_added_while_a_worker_runs_signs_its_next_mail(smtp, owner, settings):
    """The skeleton keeps its signer lookup only for a while (mime.SIGNER_REFRESH_SECONDS, set to 0 here so the next
    message looks again): a key made in the console signs the mail without a worker restart."""
    import dkim

    from delivery import dkim as signing

    settings.DKIM_SIGNER_CACHE_SECONDS = 0
    organisation = owner.organisation
    content = {"subject": "Hi", "html": "<p>Hello</p>"}
    sender = {"organisation_id": str(organisation.pk), "sender_email": "news@acme.example"}

    def message(message_id: int) -> Outgoing:
        payload = Renderer("email", content, _sender(**sender)).render(str(message_id), {"first_name": "Ada"}, "42")
        return replace(_outgoing(payload, message_id), organisation_id=str(organisation.pk))

    mime.SIGNER_REFRESH_SECONDS, previous = 0.0, mime.SIGNER_REFRESH_SECONDS
    try:
        unsigned, _ = _received(smtp, message(1))
        domain = signing.sending_domain_create(actor=owner.actor, domain="acme.example")
        signed, parsed = _received(smtp, message(2))
    finally:
        mime.SIGNER_REFRESH_SECONDS = previous
    record = f"v=DKIM1; k=rsa; p={domain.public_key}".encode()
    assert (b"DKIM-Signature" in unsigned, signed.startswith(b"DKIM-Signature: "), parsed["Subject"]) == (
        False,
        True,
        "Hi",
    )
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record) is True
