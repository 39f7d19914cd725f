"""DKIM per sending domain (issue 18): keys made in the console, the record to publish, the record check against a
real (local) DNS server, and signatures that dkimpy's verifier accepts on mail an SMTP server received."""

from __future__ import annotations

import base64
import email
import email.utils
import io
import socket
import threading
import uuid
from collections.abc import Iterator
from email import policy

import dkim
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from cryptography.hazmat.primitives import serialization
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from compliance.models import AuditLogEntry
from delivery import dkim as delivery_dkim
from delivery.backends import Outgoing
from delivery.channels import EmailBackend
from delivery.mime import message_bytes
from delivery.models import Message, SendingDomain
from tests.factories import console_client
from tests.support import wait_for


class DnsStub:
    """A DNS server on 127.0.0.1 (UDP) answering TXT queries from `records`; other names are NXDOMAIN. Records are
    served as a provider publishes them: cut into strings of at most 255 bytes."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def publish(self, name: str, value: str) -> None:
        self.records.setdefault(name.lower(), []).append(value)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            values = self.records.get(question.name.to_text(omit_final_dot=True).lower())
            if values is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                texts = [" ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255)) for value in values]
                response.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", "TXT", texts))
            self.sock.sendto(response.to_wire(), peer)

    def resolver(self) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 2.0
        return resolver

    def dkim_dnsfunc(self, name: bytes, timeout: int = 5) -> bytes:
        """dkimpy's look-up of a key record, answered by this server through dnspython as a receiver's would be."""
        answer = self.resolver().resolve(name.decode().rstrip("."), "TXT")
        return b"".join(answer[0].strings)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def dns_stub(settings) -> Iterator[DnsStub]:
    stub = DnsStub()
    settings.DKIM_DNS_NAMESERVERS = [f"127.0.0.1:{stub.port}"]
    settings.DKIM_DNS_TIMEOUT = 2.0
    yield stub
    stub.stop()


@pytest.fixture(autouse=True)
def _fresh_signers() -> Iterator[None]:
    # Organisation ids differ per test, but a test's own cached "no key yet" must not outlive it either.
    delivery_dkim.signer_cache_clear()
    yield
    delivery_dkim.signer_cache_clear()


def _publish(stub: DnsStub, sending_domain: SendingDomain) -> None:
    stub.publish(sending_domain.record_name, delivery_dkim.dns_record_value(sending_domain.public_key))


def _outgoing(organisation_id: str, address: str = "zoe@inbox.test", body: str = "Hello Zoë") -> Outgoing:
    token = uuid.uuid4().hex
    return Outgoing(
        message_id=1,
        idempotency_key=f"key-{token}",
        channel="email",
        run_id=str(uuid.uuid4()),
        campaign_id=str(uuid.uuid4()),
        organisation_id=organisation_id,
        variant_id=str(uuid.uuid4()),
        variant_name="A",
        contact_id=1,
        address=address,
        payload={
            "subject": "Spring sale, for you",
            "html": f"<p>{body}</p>",
            "text": body,
            "from": email.utils.formataddr(("Smith, Jones & Co", "news@example.test")),
            "from_email": "news@example.test",
            "reply_to": "help@example.test",
            "headers": {
                "List-Unsubscribe": f"<https://cs.example.test/u/{token}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "Message-ID": f"<{token}@cs.example.test>",
                "X-Campaign-Message-Id": token,
            },
        },
    )


def _signature_tags(raw: bytes) -> dict[bytes, bytes]:
    message = email.message_from_bytes(raw, policy=policy.compat32)
    value = "".join(message["DKIM-Signature"].split()).encode()
    return dkim.util.parse_tag_value(value)


# --- keys and the record ---------------------------------------------------------------------------------------


def test_it_creates_an_rsa_2048_key_stored_encrypted_with_the_record_to_publish(owner):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain=" Example.TEST. ")

    assert sending_domain.domain == "example.test"
    assert sending_domain.selector == f"cs{timezone.now():%Y%m}"
    assert sending_domain.record_name == f"cs{timezone.now():%Y%m}._domainkey.example.test"
    private = serialization.load_pem_private_key(sending_domain.private_key.encode(), password=None)
    assert private.key_size == 2048
    public_der = base64.b64decode(sending_domain.public_key)
    assert public_der == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT private_key FROM delivery_sendingdomain WHERE id = %s", [sending_domain.pk])
        (stored,) = cursor.fetchone()
    assert stored.startswith("$k0$") and "PRIVATE KEY" not in stored

    value = delivery_dkim.dns_record_value(sending_domain.public_key)
    assert value == f"v=DKIM1; k=rsa; p={sending_domain.public_key}"
    strings = delivery_dkim.dns_record_strings(sending_domain.public_key)
    assert [len(part.encode()) for part in strings] == [255, len(value) - 255]
    assert "".join(strings) == value
    assert delivery_dkim.dns_record_zone_form(sending_domain.public_key) == f'"{strings[0]}" "{strings[1]}"'


def test_it_stores_an_internationalised_domain_as_its_a_labels(owner):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="Bücher.Example")

    assert sending_domain.domain == "xn--bcher-kva.example"
    assert delivery_dkim.display_domain(sending_domain.domain) == "bücher.example"


def test_it_refuses_a_second_key_for_the_same_domain_and_names_that_are_not_domains(owner):
    delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")

    for value, message in [
        ("EXAMPLE.test", "example.test is already a sending domain of this organisation."),
        ("news@example.test", "Enter a domain (example.com), not an email address."),
        ("localhost", "'localhost' is not a valid domain name, e.g. news.example.com."),
        ("-bad.example", "'-bad.example' is not a valid domain name (Label must not start or end with a hyphen)."),
    ]:
        with pytest.raises(delivery_dkim.ValidationError) as caught:
            delivery_dkim.sending_domain_create(actor=owner.actor, domain=value)
        assert caught.value.message_dict == {"domain": [message]}
    assert list(SendingDomain.objects.values_list("domain", flat=True)) == ["example.test"]


# --- signing ---------------------------------------------------------------------------------------------------


def test_the_signer_signs_the_wire_bytes_so_dkimpy_verifies_them_against_the_published_record(owner, dns_stub):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    _publish(dns_stub, sending_domain)
    # The bytes delivery.mime puts on the wire, for an organisation without keys (so unsigned whatever mime does).
    unsigned = message_bytes(_outgoing(str(uuid.uuid4())))
    assert b"DKIM-Signature" not in unsigned

    signer = delivery_dkim.signer_for(str(owner.organisation.pk), "example.test")
    signed = signer(unsigned)

    assert signed.endswith(unsigned)
    assert dkim.verify(signed, dnsfunc=dns_stub.dkim_dnsfunc) is True
    tags = _signature_tags(signed)
    assert (tags[b"v"], tags[b"a"], tags[b"c"], tags[b"d"], tags[b"s"]) == (
        b"1",
        b"rsa-sha256",
        b"relaxed/relaxed",
        b"example.test",
        sending_domain.selector.encode(),
    )
    assert tags[b"h"].split(b":") == [
        *(b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"mime-version", b"content-type"),
        *(b"list-unsubscribe", b"list-unsubscribe-post", b"from"),
    ]
    # Every line of the signature header within RFC 5322's 78 characters.
    header = signed[: len(signed) - len(unsigned)]
    assert max(len(line) for line in header.split(b"\r\n")) <= 78


def test_a_tampered_body_or_a_second_from_fails_verification(owner, dns_stub):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    _publish(dns_stub, sending_domain)
    signed = delivery_dkim.signer_for(str(owner.organisation.pk), "example.test")(
        message_bytes(_outgoing(str(uuid.uuid4()), body="Your code is 1234"))
    )
    assert dkim.verify(signed, dnsfunc=dns_stub.dkim_dnsfunc) is True

    tampered = signed.replace(b"Your code is 1234", b"Your code is 9999")
    assert tampered != signed
    assert dkim.verify(tampered, dnsfunc=dns_stub.dkim_dnsfunc) is False
    # A forged From added in front of ours (displayed by some clients) breaks the over-signed From.
    forged = signed.replace(b"\r\nFrom: ", b"\r\nFrom: Bank <alerts@bank.test>\r\nFrom: ", 1)
    assert dkim.verify(forged, dnsfunc=dns_stub.dkim_dnsfunc) is False


def test_whitespace_and_folding_the_relaxed_canonicalisation_forgives_still_verify(owner, dns_stub):
    """Our canonicalisation is our own code (faster than dkimpy's); dkimpy's verifier runs its own over the same
    bytes, so any difference between the two fails here. Then what relaxed/relaxed allows a relay to change."""
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    _publish(dns_stub, sending_domain)
    message = (
        b'From: "Smith,  Jones"\t<news@example.test>\r\n'
        b"To: a@inbox.test,\r\n\t b@inbox.test  \r\n"
        b"Subject:   Spring\t \t sale  \r\n"
        b"X-Not-Signed: whatever\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Hello  there,\t\tfriend \r\n"
        b" indented line\t\r\n"
        b"\r\n"
        b"last line  \r\n"
        b"\r\n"
        b"\r\n"
    )
    signed = delivery_dkim.signer_for(str(owner.organisation.pk), "example.test")(message)
    assert dkim.verify(signed, dnsfunc=dns_stub.dkim_dnsfunc) is True

    relayed = (
        signed.replace(b"Subject:   Spring\t \t sale  ", b"subject: Spring sale")
        .replace(b"Hello  there,\t\tfriend \r\n", b"Hello there, friend\r\n")
        .replace(b"X-Not-Signed: whatever", b"X-Not-Signed: changed")
        + b"\r\n"
    )
    assert dkim.verify(relayed, dnsfunc=dns_stub.dkim_dnsfunc) is True
    reworded = signed.replace(b"indented line", b"indented  line!")
    assert dkim.verify(reworded, dnsfunc=dns_stub.dkim_dnsfunc) is False
    # An empty body, and a message with bare LF line ends (not ours, but the signer must not sign it wrongly).
    empty = b"From: news@example.test\r\nSubject: x\r\n\r\n"
    assert (
        dkim.verify(
            delivery_dkim.signer_for(str(owner.organisation.pk), "example.test")(empty), dnsfunc=dns_stub.dkim_dnsfunc
        )
        is True
    )
    bare = b"From: news@example.test\nSubject: x\n\nHello\n"
    assert (
        dkim.verify(
            delivery_dkim.signer_for(str(owner.organisation.pk), "example.test")(bare), dnsfunc=dns_stub.dkim_dnsfunc
        )
        is True
    )


def test_a_subdomain_is_signed_with_the_parent_key_and_other_domains_not_at_all(owner, outsider):
    delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    news = delivery_dkim.sending_domain_create(actor=owner.actor, domain="news.example.test")
    organisation_id = str(owner.organisation.pk)

    assert delivery_dkim.signer_for(organisation_id, "News.Example.Test").domain == b"news.example.test"
    assert delivery_dkim.signer_for(organisation_id, "mail.news.example.test").selector == news.selector.encode()
    assert delivery_dkim.signer_for(organisation_id, "shop.example.test").domain == b"example.test"
    assert delivery_dkim.signer_for(organisation_id, "example.org") is None
    assert delivery_dkim.signer_for(organisation_id, "") is None
    assert delivery_dkim.signer_for("not-an-organisation-id", "example.test") is None
    # Another organisation's From in our domain is not signed with our key.
    assert delivery_dkim.signer_for(str(outsider.organisation.pk), "example.test") is None


def test_a_rotated_key_signs_under_its_new_selector_at_once(owner, dns_stub):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    organisation_id = str(owner.organisation.pk)
    old = delivery_dkim.signer_for(organisation_id, "example.test")

    rotated = delivery_dkim.sending_domain_rotate_key(actor=owner.actor, sending_domain=sending_domain)

    assert rotated.selector == f"cs{timezone.now():%Y%m%d}"
    assert rotated.public_key != sending_domain.public_key
    assert old.selector == sending_domain.selector.encode()
    _publish(dns_stub, rotated)
    signed = delivery_dkim.signer_for(organisation_id, "example.test")(message_bytes(_outgoing(str(uuid.uuid4()))))
    assert _signature_tags(signed)[b"s"] == rotated.selector.encode()
    assert dkim.verify(signed, dnsfunc=dns_stub.dkim_dnsfunc) is True


def test_an_email_the_smtp_server_receives_carries_a_signature_dkimpy_verifies(owner, dns_stub, smtp):
    """The SMTP channel (delivery.channels.EmailBackend, what a run's send task calls) -> aiosmtpd. Waits on
    delivery.mime.message_bytes calling delivery.dkim.signer_for for the From domain (issue 18, the wire path)."""
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    _publish(dns_stub, sending_domain)

    outcomes = EmailBackend().send_batch([_outgoing(str(owner.organisation.pk))], profile={})

    assert [outcome.status for outcome in outcomes] == ["sent"]
    ((_sender, recipients, raw),) = smtp.messages
    assert recipients == ["zoe@inbox.test"]
    assert raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
    assert dkim.verify(raw, dnsfunc=dns_stub.dkim_dnsfunc) is True


def test_dkim_keys_follow_a_pii_key_rotation_and_a_lost_key_sends_unsigned(owner, settings, dns_stub):
    key_a, key_b = base64.b64encode(b"a" * 32).decode(), base64.b64encode(b"b" * 32).decode()
    settings.PII_ENCRYPTION_KEYS, settings.PII_ENCRYPTION_KEY_ID = {"a": key_a}, "a"
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    _publish(dns_stub, sending_domain)

    def stored() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT private_key FROM delivery_sendingdomain WHERE id = %s", [sending_domain.pk])
            return cursor.fetchone()[0]

    assert stored().startswith("$a$")
    settings.PII_ENCRYPTION_KEYS, settings.PII_ENCRYPTION_KEY_ID = {"a": key_a, "b": key_b}, "b"
    out = io.StringIO()
    call_command("dkim_keys_reencrypt", stdout=out)
    assert out.getvalue() == "1 DKIM private keys re-encrypted under key 'b'.\n"
    assert stored().startswith("$b$")
    settings.PII_ENCRYPTION_KEYS = {"b": key_b}  # the old key can go
    delivery_dkim.signer_cache_clear()
    signed = delivery_dkim.signer_for(str(owner.organisation.pk), "example.test")(
        message_bytes(_outgoing(str(uuid.uuid4())))
    )
    assert dkim.verify(signed, dnsfunc=dns_stub.dkim_dnsfunc) is True

    # Had the key been dropped first: no signer (mail goes out unsigned, an error is logged), not a failed send.
    settings.PII_ENCRYPTION_KEYS, settings.PII_ENCRYPTION_KEY_ID = {"c": base64.b64encode(b"c" * 32).decode()}, "c"
    delivery_dkim.signer_cache_clear()
    assert delivery_dkim.signer_for(str(owner.organisation.pk), "example.test") is None


# --- the record check ------------------------------------------------------------------------------------------


def test_the_check_says_verified_mismatch_or_missing_from_what_dns_answers(owner, dns_stub):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    name = sending_domain.record_name

    checked = delivery_dkim.sending_domain_check(sending_domain=sending_domain)
    assert (checked.check_status, checked.check_message) == (
        "missing",
        f"No DKIM record (TXT) is published at {name}.",
    )
    assert checked.checked_at is not None

    other_key = delivery_dkim.key_pair_generate().public_key
    dns_stub.publish(name, delivery_dkim.dns_record_value(other_key))
    checked = delivery_dkim.sending_domain_check(sending_domain=sending_domain)
    assert (checked.check_status, checked.check_message) == (
        "mismatch",
        f"The key published at {name} is not this domain's key (an old key, or another sender's).",
    )

    dns_stub.records[name] = [delivery_dkim.dns_record_value(sending_domain.public_key)]
    checked = delivery_dkim.sending_domain_check(sending_domain=sending_domain)
    assert (checked.check_status, checked.check_message) == (
        "verified",
        f"The record at {name} matches: receivers can verify.",
    )
    assert SendingDomain.objects.get(pk=sending_domain.pk).check_status == "verified"


def test_the_check_reads_records_passed_in_and_reports_a_dead_resolver_as_an_error(owner, settings):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    ours = delivery_dkim.dns_record_value(sending_domain.public_key)

    assert delivery_dkim.record_check(sending_domain, ["v=spf1 -all", ours]).status == "verified"
    assert delivery_dkim.record_check(sending_domain, ["v=DKIM1; k=rsa; p="]).message == (
        f"The record at {sending_domain.record_name} revokes the key (empty p=)."
    )
    assert delivery_dkim.record_check(sending_domain, [ours, ours]).status == "mismatch"

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        settings.DKIM_DNS_NAMESERVERS = [f"127.0.0.1:{silent.getsockname()[1]}"]
        settings.DKIM_DNS_TIMEOUT = 0.5
        checked = delivery_dkim.sending_domain_check(sending_domain=sending_domain)
    assert checked.check_status == "error"
    assert checked.check_message.startswith(f"The DNS look-up of {sending_domain.record_name} failed: LifetimeTimeout")


# --- console ---------------------------------------------------------------------------------------------------


def test_an_admin_adds_a_domain_in_the_console_and_sees_the_record_to_copy(owner, dns_stub):
    response = console_client(owner).post("/settings/sending-domains/", {"domain": "Example.TEST"})

    assert response.status_code == 302 and response["Location"] == "/settings/sending-domains/"
    sending_domain = SendingDomain.objects.get(organisation=owner.organisation)
    assert sending_domain.domain == "example.test"
    page = console_client(owner).get("/settings/sending-domains/").content.decode()
    assert f'data-testid="record-name">{sending_domain.record_name}</code>' in page
    assert f'data-testid="record-value">v=DKIM1; k=rsa; p={sending_domain.public_key}</code>' in page
    zone_form = delivery_dkim.dns_record_zone_form(sending_domain.public_key).replace('"', "&quot;")
    assert f'data-testid="record-zone-form">{zone_form}</code>' in page
    assert 'data-copy="value-' in page and 'data-testid="rotate"' in page and 'data-testid="delete"' in page
    assert "Not checked yet" in page
    assert "PRIVATE KEY" not in page and sending_domain.private_key.splitlines()[1] not in page

    _publish(dns_stub, sending_domain)
    response = console_client(owner).post(f"/settings/sending-domains/{sending_domain.pk}/check/")
    assert response.status_code == 302
    page = console_client(owner).get("/settings/sending-domains/").content.decode()
    assert '<span class="badge badge-active" data-testid="check-status">Verified</span>' in page
    assert f"The record at {sending_domain.record_name} matches: receivers can verify." in page


def test_a_marketer_sees_the_records_but_cannot_add_rotate_or_remove_keys(owner, teammate):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")

    page = console_client(teammate).get("/settings/sending-domains/")
    assert page.status_code == 200
    content = page.content.decode()
    assert sending_domain.record_name in content
    assert 'data-testid="sending-domain-form"' not in content
    assert 'data-testid="rotate"' not in content and 'data-testid="delete"' not in content
    assert console_client(teammate).post("/settings/sending-domains/", {"domain": "other.test"}).status_code == 403
    assert console_client(teammate).post(f"/settings/sending-domains/{sending_domain.pk}/rotate/").status_code == 403
    assert console_client(teammate).post(f"/settings/sending-domains/{sending_domain.pk}/delete/").status_code == 403
    unchanged = SendingDomain.objects.get()
    assert (unchanged.domain, unchanged.selector, unchanged.public_key) == (
        "example.test",
        sending_domain.selector,
        sending_domain.public_key,
    )


def test_another_organisations_domain_is_not_found_in_the_console(owner, outsider):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")

    for action in ("check", "rotate", "delete"):
        assert (
            console_client(outsider).post(f"/settings/sending-domains/{sending_domain.pk}/{action}/").status_code == 404
        )
    assert "example.test" not in console_client(outsider).get("/settings/sending-domains/").content.decode()
    assert SendingDomain.objects.get().public_key == sending_domain.public_key


def test_create_rotate_and_delete_in_the_console_are_audited(owner):
    console_client(owner).post("/settings/sending-domains/", {"domain": "example.test"})
    sending_domain = SendingDomain.objects.get()
    first_selector = sending_domain.selector
    console_client(owner).post(f"/settings/sending-domains/{sending_domain.pk}/rotate/")
    second_selector = SendingDomain.objects.get().selector
    console_client(owner).post(f"/settings/sending-domains/{sending_domain.pk}/delete/")

    assert not SendingDomain.objects.exists()
    entries = AuditLogEntry.objects.filter(target_type="delivery.sendingdomain").order_by("occurred_at", "id")
    username = owner.membership.user.get_username()
    assert [(e.action, e.target_id, e.actor_label, e.details) for e in entries] == [
        (
            "sending_domain.create",
            str(sending_domain.pk),
            username,
            {"domain": "example.test", "selector": first_selector},
        ),
        (
            "sending_domain.rotate_key",
            str(sending_domain.pk),
            username,
            {"domain": "example.test", "old_selector": first_selector, "selector": second_selector},
        ),
        (
            "sending_domain.delete",
            str(sending_domain.pk),
            username,
            {"domain": "example.test", "selector": second_selector},
        ),
    ]
    assert second_selector != first_selector


def test_the_admin_shows_a_sending_domain_without_its_private_key_and_checks_records(owner, dns_stub):
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    _publish(dns_stub, sending_domain)
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("root@example.com", "root@example.com", "pw"))

    change = staff.get(f"/admin/delivery/sendingdomain/{sending_domain.pk}/change/")
    assert change.status_code == 200
    content = change.content.decode()
    assert sending_domain.public_key in content
    assert "PRIVATE KEY" not in content and sending_domain.private_key.splitlines()[1] not in content
    assert "$k0$" not in content
    listing = staff.post(
        "/admin/delivery/sendingdomain/", {"action": "check_records", "_selected_action": [str(sending_domain.pk)]}
    )
    assert listing.status_code == 302
    assert SendingDomain.objects.get().check_status == "verified"


# --- API -------------------------------------------------------------------------------------------------------


def test_the_api_lets_admins_manage_domains_and_members_read_and_check_them(owner, teammate, outsider, dns_stub):
    assert teammate.api.post("/api/v1/sending-domains/", {"domain": "example.test"}, format="json").status_code == 403

    created = owner.api.post("/api/v1/sending-domains/", {"domain": "Example.test"}, format="json")
    assert created.status_code == 201, created.data
    sending_domain = SendingDomain.objects.get()
    assert created.data == {
        "id": str(sending_domain.pk),
        "domain": "example.test",
        "selector": sending_domain.selector,
        "record_type": "TXT",
        "record_name": sending_domain.record_name,
        "record_value": delivery_dkim.dns_record_value(sending_domain.public_key),
        "record_strings": delivery_dkim.dns_record_strings(sending_domain.public_key),
        "check_status": "unchecked",
        "check_message": "",
        "checked_at": None,
        "key_created_at": created.data["key_created_at"],
        "created_at": created.data["created_at"],
    }
    again = owner.api.post("/api/v1/sending-domains/", {"domain": "EXAMPLE.TEST"}, format="json")
    assert (again.status_code, again.data) == (
        400,
        {"domain": ["example.test is already a sending domain of this organisation."]},
    )

    url = f"/api/v1/sending-domains/{sending_domain.pk}/"
    assert [row["domain"] for row in teammate.api.get("/api/v1/sending-domains/").data["results"]] == ["example.test"]
    _publish(dns_stub, sending_domain)
    checked = teammate.api.post(f"{url}check/")
    assert (checked.status_code, checked.data["check_status"]) == (200, "verified")
    assert teammate.api.post(f"{url}rotate-key/").status_code == 403
    assert teammate.api.delete(url).status_code == 403

    assert outsider.api.get(url).status_code == 404
    assert outsider.api.post(f"{url}check/").status_code == 404
    assert outsider.api.delete(url).status_code == 404
    assert outsider.api.get("/api/v1/sending-domains/").data["results"] == []

    rotated = owner.api.post(f"{url}rotate-key/")
    assert rotated.status_code == 200
    assert (rotated.data["check_status"], rotated.data["selector"]) == (
        "unchecked",
        SendingDomain.objects.get().selector,
    )
    assert rotated.data["selector"] != sending_domain.selector
    assert owner.api.delete(url).status_code == 204
    assert not SendingDomain.objects.exists()
    assert list(
        AuditLogEntry.objects.filter(target_id=str(sending_domain.pk))
        .order_by("occurred_at", "id")
        .values_list("action", flat=True)
    ) == ["sending_domain.create", "sending_domain.rotate_key", "sending_domain.delete"]


# --- a real campaign send ----------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_campaign_sent_by_a_worker_arrives_signed_for_its_from_domain(owner, teammate, dns_stub, smtp):
    """Send now -> Celery worker process -> SMTP channel -> aiosmtpd; every received email verifies with dkimpy."""
    from tests.test_personalisation_end_to_end import _worker

    organisation = owner.organisation
    organisation.sender_email, organisation.sender_name = "news@mail.example.test", "Smith, Jones & Co"
    organisation.save()
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    _publish(dns_stub, sending_domain)
    contacts = [{"external_id": f"c{n}", "email": f"c{n}@inbox.test", "first_name": "Zoë"} for n in range(3)]
    response = teammate.api.post("/api/v1/contacts/bulk/", {"contacts": contacts}, format="json")
    assert response.status_code == 200, response.data
    body = {
        "name": "Signed",
        "channels": ["email"],
        "audience": {"rules": {"field": "email", "op": "exists"}},
        "variants": [
            {
                "name": "A",
                "allocation_percent": 100,
                "content": {
                    "email": {"subject": "Hi {{ contact.first_name }}", "html": "<p>Hi {{ contact.first_name }}</p>"}
                },
            }
        ],
    }
    campaign = teammate.api.post("/api/v1/campaigns/", body, format="json")
    assert campaign.status_code == 201, campaign.data

    with _worker("http://127.0.0.1:9"):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.data['id']}/send-now/").status_code == 200
        assert wait_for(lambda: len(smtp.messages) == 3, 60), list(Message.objects.values_list("status", "error"))

    for _sender, (recipient,), raw in smtp.messages:
        assert recipient in {"c0@inbox.test", "c1@inbox.test", "c2@inbox.test"}
        assert _signature_tags(raw)[b"d"] == b"example.test"
        assert dkim.verify(raw, dnsfunc=dns_stub.dkim_dnsfunc) is True


def test_a_test_send_arrives_signed_like_the_campaigns_own_sends(owner, teammate, dns_stub, smtp):
    """A seed checking a test email sees what recipients get: the same wire path, DKIM-signed, one message each."""
    organisation = owner.organisation
    organisation.sender_email = "news@example.test"
    organisation.save()
    sending_domain = delivery_dkim.sending_domain_create(actor=owner.actor, domain="example.test")
    _publish(dns_stub, sending_domain)
    body = {
        "name": "Signed test",
        "channels": ["email"],
        "variants": [
            {"name": "A", "allocation_percent": 100, "content": {"email": {"subject": "Hi", "html": "<p>Hi</p>"}}}
        ],
    }
    campaign = teammate.api.post("/api/v1/campaigns/", body, format="json")
    assert campaign.status_code == 201, campaign.data

    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.data['id']}/test-send/",
        {"recipients": ["seed@inbox.test", "qa@inbox.test"]},
        format="json",
    )

    assert response.status_code == 200, response.data
    assert [r["status"] for r in response.data["results"]] == ["sent", "sent"]
    assert [recipients for _sender, recipients, _raw in smtp.messages] == [["seed@inbox.test"], ["qa@inbox.test"]]
    for _sender, _recipients, raw in smtp.messages:
        assert _signature_tags(raw)[b"d"] == b"example.test"
        assert dkim.verify(raw, dnsfunc=dns_stub.dkim_dnsfunc) is True
        assert email.message_from_bytes(raw, policy=policy.default)["Subject"] == "[Test] Hi"
