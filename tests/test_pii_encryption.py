"""Personal data at rest: emails and phones are encrypted in the database (AES-256-GCM, key from settings), found
by keyed hash, rotated to a new key by `pii_rotate`, and a wrong key or a tampered value fails loudly."""

from __future__ import annotations

import base64
import importlib
import io

import pytest
from django.core.exceptions import FieldError
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from audiences.pii import PIIError, decrypt, encrypt, key_id_of, pii_hash
from compliance import services as compliance_services
from compliance.models import AuditLogEntry, Suppression
from delivery.fanout import run_create, run_fan_out
from delivery.models import Message
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()


def _stored(contact_id: int) -> tuple[str, str, str, str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT email, phone, email_hash, phone_hash, email_domain FROM audiences_contact WHERE id = %s",
            [contact_id],
        )
        return cursor.fetchone()


@pytest.fixture
def ada(organisation):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": "ada", "email": "Ada@Example.com", "phone": "+447700900123", "first_name": "Ada"}],
    )
    return Contact.objects.get(organisation=organisation, external_id="ada")


def test_the_database_holds_only_ciphertext_and_hashes(ada):
    email, phone, email_hash, phone_hash, domain = _stored(ada.pk)
    assert email.startswith("$") and phone.startswith("$")
    assert "ada" not in email.lower() and "example" not in email.lower() and "900123" not in phone
    assert (ada.email, ada.phone) == ("ada@example.com", "+447700900123")  # the ORM decrypts
    assert email_hash == pii_hash("ADA@example.com") == pii_hash("ada@example.com")
    assert phone_hash == pii_hash("+447700900123")
    assert domain == "example.com"
    # Random nonces: the same address encrypts differently every time; the hash is what matches.
    assert encrypt("ada@example.com") != encrypt("ada@example.com")


def test_partial_updates_keep_clear_and_change_the_address(organisation, ada):
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "ada", "first_name": "Adah"}])
    ada.refresh_from_db()
    assert (ada.first_name, ada.email, ada.phone) == ("Adah", "ada@example.com", "+447700900123")
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": "ada", "email": "new@example.org", "phone": ""}]
    )
    ada.refresh_from_db()
    assert (ada.email, ada.phone) == ("new@example.org", "")
    assert _stored(ada.pk)[1:] == ("", pii_hash("new@example.org"), "", "example.org")
    # ORM saves keep the hashes in step too.
    ada.email = "Third@Example.net"
    ada.save()
    assert _stored(ada.pk)[2::2] == (pii_hash("third@example.net"), "example.net")


def test_look_ups_go_through_the_hash(owner, ada):
    found = owner.api.get("/api/v1/contacts/", {"email": "ADA@example.com"})
    assert [c["external_id"] for c in found.data["results"]] == ["ada"]
    found = owner.api.get("/api/v1/contacts/", {"search": "+447700900123"})
    assert [c["external_id"] for c in found.data["results"]] == ["ada"]
    assert owner.api.get("/api/v1/contacts/", {"email": "ada@example"}).data["results"] == []
    # STOP from the phone finds the contact without reading any plaintext in SQL.
    counts = compliance_services.inbound_record(
        actor=owner.actor,
        items=[{"channel": "sms", "from": "+447700900123", "body": "STOP", "received_at": timezone.now()}],
    )
    assert counts["matched"] == 1 and counts["stopped"] == 1


def test_suppressed_addresses_match_encrypted_contacts_at_fan_out(owner, organisation, ada):
    compliance_services.suppression_add(actor=owner.actor, address="ADA@example.com")
    campaign = CampaignFactory(
        organisation=organisation, channels=["email"], audience_rules={"field": "email", "op": "exists"}
    )
    run = run_fan_out(run_create(campaign=campaign).pk)
    assert run.excluded == {"suppressed": 1}
    assert not Message.objects.filter(run=run).exists()


def test_rotation_re_encrypts_under_the_new_key(settings, organisation, owner):
    settings.PII_ENCRYPTION_KEYS = {"a": KEY_A}
    settings.PII_ENCRYPTION_KEY_ID = "a"
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"r{i}", "email": f"r{i}@example.com", "phone": f"+4477009{i:05d}"} for i in range(120)],
    )
    contact_ids = list(Contact.objects.filter(organisation=organisation).values_list("pk", flat=True))
    assert {key_id_of(_stored(i)[0]) for i in contact_ids} == {"a"}
    compliance_services.suppression_add(actor=owner.actor, address="gone@example.com")

    settings.PII_ENCRYPTION_KEYS = {"a": KEY_A, "b": KEY_B}
    settings.PII_ENCRYPTION_KEY_ID = "b"
    # Both keys decrypt while the rotation runs; new writes use the new key.
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "late", "email": "late@example.com"}])
    assert key_id_of(_stored(Contact.objects.get(external_id="late").pk)[0]) == "b"
    out, err = io.StringIO(), io.StringIO()
    call_command("pii_rotate", "--batch-size", "50", stdout=out, stderr=err)
    assert "120 contacts and 2 suppression entries re-encrypted under key 'b'" in out.getvalue()
    assert "120/120" in err.getvalue()  # the progress bar's last state
    assert {key_id_of(_stored(i)[0]) for i in contact_ids} == {"b"}
    assert {key_id_of(_stored(i)[1]) for i in contact_ids} == {"b"}
    assert AuditLogEntry.objects.get(action="contact.pii_reencrypt").details["contacts"] == 120

    settings.PII_ENCRYPTION_KEYS = {"b": KEY_B}  # the old key can go
    assert Contact.objects.get(external_id="r7").email == "r7@example.com"
    assert Suppression.objects.get(address_hash=pii_hash("gone@example.com")).address == "gone@example.com"
    assert Suppression.history.get().address == "gone@example.com"
    call_command("pii_rotate", stdout=io.StringIO(), stderr=io.StringIO())  # nothing left: a no-op


def test_a_missing_key_or_a_tampered_value_fails_loudly(settings):
    settings.PII_ENCRYPTION_KEYS = {"a": KEY_A}
    settings.PII_ENCRYPTION_KEY_ID = "a"
    sealed = encrypt("ada@example.com")
    assert decrypt(sealed) == "ada@example.com"
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(PIIError, match="does not decrypt"):
        decrypt(tampered)
    settings.PII_ENCRYPTION_KEYS = {"b": KEY_B}
    settings.PII_ENCRYPTION_KEY_ID = "b"
    with pytest.raises(PIIError, match="No PII key 'a'"):
        decrypt(sealed)


def test_the_migration_encrypts_rows_written_before_encryption(organisation, ada):
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audiences_contact SET email = 'old@example.com', phone = '+447700900999', email_hash = '',"
            " phone_hash = '' WHERE id = %s",
            [ada.pk],
        )
    ada.refresh_from_db()
    assert ada.email == "old@example.com"  # legacy plaintext still reads
    migration = importlib.import_module("audiences.migrations.0008_pii_encryption")

    class Editor:
        pass

    editor = Editor()
    editor.connection = connection
    migration.encrypt_existing(None, editor)
    email, phone, email_hash, phone_hash, domain = _stored(ada.pk)
    assert email.startswith("$") and phone.startswith("$")
    assert (decrypt(email), decrypt(phone)) == ("old@example.com", "+447700900999")
    assert (email_hash, phone_hash, domain) == (pii_hash("old@example.com"), pii_hash("+447700900999"), "example.com")


def test_suppression_addresses_are_encrypted_too(owner):
    compliance_services.suppression_add(actor=owner.actor, address="Sup@Example.com")
    compliance_services.suppressions_import(actor=owner.actor, addresses=["imp@example.com", "+447700900555"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT address, address_hash FROM compliance_suppression ORDER BY id")
        stored = cursor.fetchall()
        cursor.execute("SELECT address FROM compliance_historicalsuppression")
        history = [row[0] for row in cursor.fetchall()]
    assert {h for _, h in stored} == {
        pii_hash("sup@example.com"),
        pii_hash("imp@example.com"),
        pii_hash("+447700900555"),
    }
    assert all(a.startswith("$") and "example" not in a and "900555" not in a for a, _ in stored)
    assert history and all(a.startswith("$") for a in history)
    listed = owner.api.get("/api/v1/suppressions/").data["results"]
    assert {r["address"] for r in listed} == {"sup@example.com", "imp@example.com", "+447700900555"}


def test_orm_look_ups_on_encrypted_fields_go_through_the_hash(owner, organisation, ada):
    assert Contact.objects.get(email="ADA@example.com") == ada
    assert list(Contact.objects.filter(phone__in=["+447700900123", "+15555550100"])) == [ada]
    assert not Contact.objects.filter(email="ada@example").exists()
    assert Contact.objects.exclude(email="ada@example.com").filter(organisation=organisation).count() == 0
    compliance_services.suppression_add(actor=owner.actor, address="Sup@Example.com")
    assert Suppression.objects.filter(address="sup@example.com").exists()
    assert Suppression.objects.filter(address__in=["x@example.com", "sup@example.com"]).count() == 1
    # Substrings cannot work on ciphertext: an error, not an empty result that looks like "nobody".
    with pytest.raises(FieldError, match="encrypted at rest"):
        list(Contact.objects.filter(email__startswith="ada"))
    with pytest.raises(FieldError, match="encrypted at rest"):
        list(Suppression.objects.filter(address__icontains="sup"))


def test_the_batch_sealer_matches_the_one_value_functions(settings):
    import hashlib
    import hmac

    from audiences.pii import Sealer, sealer

    seal = sealer()
    values = ["ada@example.com", "", None, "+447700900123", "ada@example.com"]
    sealed = seal.encrypt_many(values)
    assert sealed[1] == "" and sealed[2] is None
    assert [decrypt(value) for value in sealed[:1] + sealed[3:]] == [
        "ada@example.com",
        "+447700900123",
        "ada@example.com",
    ]
    assert sealed[0] != sealed[4]  # a fresh nonce per value
    assert len({value[4:20] for value in (sealed[0], sealed[3], sealed[4])}) == 3
    assert seal.hash_many(values) == [pii_hash("ada@example.com"), "", None, pii_hash("+447700900123"),
                                      pii_hash("ada@example.com")]  # fmt: skip
    assert seal.hash(" Ada@Example.COM ") == pii_hash("ada@example.com")
    # RFC 2104 for keys longer than SHA-256's 64-byte block: the key is hashed first.
    long_key = b"k" * 100
    expected = "h:" + hmac.new(long_key, b"ada@example.com", hashlib.sha256).hexdigest()
    assert Sealer(seal.key_id, seal.cipher, long_key).hash_many(["ada@example.com"]) == [expected]
    # A published HMAC-SHA256 vector (RFC 4231, test case 2).
    vector = Sealer(seal.key_id, seal.cipher, b"Jefe").hash_many(["what do ya want for nothing?"])[0]
    assert vector == "h:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
