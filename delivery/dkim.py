"""DKIM signing per organisation and sending domain (RFC 6376): relaxed/relaxed, rsa-sha256.

An organisation adds a sending domain in the console; we generate an RSA 2048 key pair for it, show the DNS TXT
record to publish at `{selector}._domainkey.{domain}`, and sign every email whose From address is in that domain
(or a subdomain of it: DMARC's relaxed alignment accepts a signature of the parent) from then on. A check on demand
looks the record up and says whether receivers will find our key there.

`signer_for(organisation_id, domain)` is what the wire path (delivery.mime) calls per message. Signers are cached
per process for DKIM_SIGNER_CACHE_SECONDS, so a send batch does not query the database per message, and a key
change reaches the other worker processes within that time.

Signing uses dkimpy's parsing and canonicalisation (the same code its verifier runs) with the RSA signature made
by `cryptography` (OpenSSL): dkimpy's own pure-Python RSA costs several milliseconds a message. The tests verify
what we sign with dkimpy's verifier.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dkim
import dns.exception
import dns.resolver
import idna
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.hashes import SHA256
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from dkim.util import InvalidTagValueList, parse_tag_value

from audiences.access import Actor, require_organisation_admin
from audiences.pii import MARK, PIIError, active_key_id, decrypt, encrypt
from compliance.audit import audit_record
from delivery.models import SendingDomain

Signer = Callable[[bytes], bytes]
logger = logging.getLogger(__name__)

KEY_BITS = 2048
# What Gmail's sender guidelines ask to be signed, when present. From is listed twice ("over-signed"): a second,
# forged From added on the way then breaks the signature instead of being displayed above a valid one.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"list-id",
    b"feedback-id",
)
OVER_SIGNED_HEADERS = (b"from",)
DNS_STRING_MAX = 255  # bytes in one character-string of a TXT record (RFC 1035 3.3)
SIGNATURE_HEADER = b"DKIM-Signature"
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


# --- Domain names and the DNS record ---------------------------------------------------------------------------


def normalise_domain(value: str) -> str:
    """The domain as DKIM's d= tag and DNS want it: lower-case ASCII, internationalised labels as IDNA A-labels
    (UTS #46 mapping, so 'Bücher.Example' and 'xn--bcher-kva.example' are the same domain)."""
    text = value.strip().rstrip(".")
    if "@" in text:
        raise ValidationError({"domain": "Enter a domain (example.com), not an email address."})
    try:
        ascii_name = idna.encode(text, uts46=True).decode("ascii") if text else ""
    except idna.IDNAError as exc:
        raise ValidationError({"domain": f"{value!r} is not a valid domain name ({exc})."}) from exc
    ascii_name = ascii_name.lower()
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValidationError({"domain": f"{value!r} is not a valid domain name, e.g. news.example.com."})
    return ascii_name


def display_domain(domain: str) -> str:
    """The domain as people write it (U-labels), for the console."""
    try:
        return idna.decode(domain)
    except idna.IDNAError:
        return domain


def dns_record_value(public_key: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_key}"


def dns_record_strings(public_key: str) -> list[str]:
    """The record's value cut into character-strings of at most 255 bytes, as a TXT record holds them (a 2048-bit
    key does not fit in one). Resolvers hand them back concatenated, so the cut may fall anywhere."""
    value = dns_record_value(public_key)
    return [value[start : start + DNS_STRING_MAX] for start in range(0, len(value), DNS_STRING_MAX)]


def dns_record_zone_form(public_key: str) -> str:
    """The value as a zone file (BIND, most DNS providers' 'raw' input) takes it: quoted strings side by side."""
    return " ".join(f'"{part}"' for part in dns_record_strings(public_key))


# --- Keys --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_key: str  # base64 DER SubjectPublicKeyInfo


def key_pair_generate() -> KeyPair:
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(private_pem=private_pem, public_key=base64.b64encode(public_der).decode("ascii"))


def _new_selector(now: datetime, previous: str = "") -> str:
    """cs + year and month; a second key in the same month must not reuse the selector, or receivers (and DNS
    caches) would check mail signed with either key against one record."""
    for candidate in (f"cs{now:%Y%m}", f"cs{now:%Y%m%d}"):
        if candidate != previous:
            return candidate
    return f"cs{now:%Y%m%d}{secrets.token_hex(2)}"


# --- Services (console, API and admin call these) ----------------------------------------------------------------


def sending_domain_get_for_actor(*, actor: Actor, sending_domain_id: Any) -> SendingDomain:
    """The organisation's sending domain; another organisation's (or none) raises SendingDomain.DoesNotExist."""
    return SendingDomain.objects.get(organisation=actor.organisation, pk=sending_domain_id)


@transaction.atomic
def sending_domain_create(*, actor: Actor, domain: str) -> SendingDomain:
    require_organisation_admin(actor)
    name = normalise_domain(domain)
    if SendingDomain.objects.filter(organisation=actor.organisation, domain=name).exists():
        raise ValidationError({"domain": f"{name} is already a sending domain of this organisation."})
    now = timezone.now()
    keys = key_pair_generate()
    sending_domain = SendingDomain(
        organisation=actor.organisation,
        domain=name,
        selector=_new_selector(now),
        private_key=keys.private_pem,
        public_key=keys.public_key,
        key_created_at=now,
    )
    try:
        with transaction.atomic():
            sending_domain.save()
    except IntegrityError as exc:  # two admins adding the same domain at once
        raise ValidationError({"domain": f"{name} is already a sending domain of this organisation."}) from exc
    audit_record(
        actor=actor,
        action="sending_domain.create",
        target=sending_domain,
        details={"domain": name, "selector": sending_domain.selector},
    )
    _signers_forget()
    return sending_domain


@transaction.atomic
def sending_domain_rotate_key(*, actor: Actor, sending_domain: SendingDomain) -> SendingDomain:
    """A new key pair under a new selector. Mail is signed with it at once, so receivers verify it only once the
    new record is published; mail already signed with the old key verifies while the old record stays."""
    require_organisation_admin(actor)
    _require_own(actor, sending_domain)
    sending_domain = SendingDomain.objects.select_for_update().get(pk=sending_domain.pk)
    previous_selector = sending_domain.selector
    now = timezone.now()
    keys = key_pair_generate()
    sending_domain.selector = _new_selector(now, previous_selector)
    sending_domain.private_key = keys.private_pem
    sending_domain.public_key = keys.public_key
    sending_domain.key_created_at = now
    sending_domain.check_status = SendingDomain.CheckStatus.UNCHECKED
    sending_domain.check_message = ""
    sending_domain.checked_at = None
    sending_domain.save(
        update_fields=[
            "selector",
            "private_key",
            "public_key",
            "key_created_at",
            "check_status",
            "check_message",
            "checked_at",
        ]
    )
    audit_record(
        actor=actor,
        action="sending_domain.rotate_key",
        target=sending_domain,
        details={
            "domain": sending_domain.domain,
            "old_selector": previous_selector,
            "selector": sending_domain.selector,
        },
    )
    _signers_forget()
    return sending_domain


@transaction.atomic
def sending_domain_delete(*, actor: Actor, sending_domain: SendingDomain) -> None:
    require_organisation_admin(actor)
    _require_own(actor, sending_domain)
    audit_record(
        actor=actor,
        action="sending_domain.delete",
        target=sending_domain,
        details={"domain": sending_domain.domain, "selector": sending_domain.selector},
    )
    sending_domain.delete()
    _signers_forget()


def sending_domain_keys_reencrypt() -> int:
    """Re-encrypt the private keys not under the active PII key (step 2 of a PII key rotation, docs/security.md);
    returns how many. Sending domains are few: one UPDATE each."""
    mark = f"{MARK}{active_key_id()}{MARK}"
    done = 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, private_key FROM delivery_sendingdomain")
        for pk, value in cursor.fetchall():
            if value.startswith(mark):
                continue
            # Conditional on the ciphertext read: a key rotated meanwhile is not overwritten with the old one.
            cursor.execute(
                "UPDATE delivery_sendingdomain SET private_key = %s WHERE id = %s AND private_key = %s",
                [encrypt(decrypt(value)), pk, value],
            )
            done += cursor.rowcount
    if done:
        _signers_forget()
    return done


def _require_own(actor: Actor, sending_domain: SendingDomain) -> None:
    if sending_domain.organisation_id != actor.organisation.pk:
        raise PermissionDenied("This sending domain belongs to another organisation.")


# --- The published record check ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    status: str  # a SendingDomain.CheckStatus value
    message: str


def configured_resolver() -> dns.resolver.Resolver:
    """The system's resolver, or DKIM_DNS_NAMESERVERS ("ip" or "ip:port"; "[v6]:port") when set."""
    nameservers = list(getattr(settings, "DKIM_DNS_NAMESERVERS", None) or [])
    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = [_nameserver(entry) for entry in nameservers]
    resolver.lifetime = float(getattr(settings, "DKIM_DNS_TIMEOUT", 5.0))
    return resolver


def _nameserver(entry: str) -> Any:
    import dns.nameserver

    host, port = entry, 53
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = int(port_text)
    return dns.nameserver.Do53Nameserver(host, port)


def published_records(name: str, resolver: dns.resolver.Resolver) -> list[str]:
    """The TXT records at `name`, each with its strings joined; [] when the name or the record does not exist."""
    try:
        answer = resolver.resolve(name, "TXT", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    if answer.rrset is None:
        return []
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.rrset]


def record_check(sending_domain: SendingDomain, records: Iterable[str]) -> CheckResult:
    """What the published TXT records at the selector's name say about our key."""
    name = sending_domain.record_name
    keys: list[dict[bytes, bytes]] = []
    for record in records:
        try:
            tags = parse_tag_value(record.encode("utf-8"))
        except InvalidTagValueList:
            continue
        if b"p" in tags and tags.get(b"v", b"DKIM1") == b"DKIM1":
            keys.append(tags)
    if not keys:
        return CheckResult(SendingDomain.CheckStatus.MISSING, f"No DKIM record (TXT) is published at {name}.")
    if len(keys) > 1:
        return CheckResult(
            SendingDomain.CheckStatus.MISMATCH,
            f"{len(keys)} DKIM records are published at {name}; receivers need exactly one. Keep only ours.",
        )
    tags = keys[0]
    published = re.sub(rb"\s+", b"", tags[b"p"])
    if not published:
        return CheckResult(SendingDomain.CheckStatus.MISMATCH, f"The record at {name} revokes the key (empty p=).")
    if tags.get(b"k", b"rsa") != b"rsa":
        return CheckResult(SendingDomain.CheckStatus.MISMATCH, f"The record at {name} is not for an RSA key (k=).")
    try:
        same = base64.b64decode(published, validate=True) == base64.b64decode(sending_domain.public_key)
    except ValueError:
        same = False
    if not same:
        return CheckResult(
            SendingDomain.CheckStatus.MISMATCH,
            f"The key published at {name} is not this domain's key (an old key, or another sender's).",
        )
    return CheckResult(SendingDomain.CheckStatus.VERIFIED, f"The record at {name} matches: receivers can verify.")


def sending_domain_check(
    *, sending_domain: SendingDomain, resolver: dns.resolver.Resolver | None = None
) -> SendingDomain:
    """Look the record up now and keep the result on the domain (for anyone in the organisation to read)."""
    try:
        records = published_records(sending_domain.record_name, resolver or configured_resolver())
    except dns.exception.DNSException as exc:
        result = CheckResult(
            SendingDomain.CheckStatus.ERROR,
            f"The DNS look-up of {sending_domain.record_name} failed: {exc.__class__.__name__}: {exc}"[:500],
        )
    else:
        result = record_check(sending_domain, records)
    sending_domain.check_status = result.status
    sending_domain.check_message = result.message[:500]
    sending_domain.checked_at = timezone.now()
    sending_domain.save(update_fields=["check_status", "check_message", "checked_at"])
    return sending_domain


# --- Signing -----------------------------------------------------------------------------------------------------


class DomainSigner:
    """Signs messages for one domain and selector. Holds the parsed private key, which costs more to load than a
    signature."""

    __slots__ = ("domain", "private_key", "selector")

    def __init__(self, *, domain: str, selector: str, private_pem: str) -> None:
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")
        key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("A DKIM key of a sending domain must be RSA.")
        self.private_key = key

    def __call__(self, message: bytes) -> bytes:
        return self.signature_header(message) + message

    def signature_header(self, message: bytes, now: float | None = None) -> bytes:
        headers, body = _split_message(message)
        body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest())
        present = {name.lower() for name, _ in headers}
        signed = [name for name in SIGNED_HEADERS if name in present] + list(OVER_SIGNED_HEADERS)
        tags = b"; ".join(
            [
                b"v=1",
                b"a=rsa-sha256",
                b"c=relaxed/relaxed",
                b"d=" + self.domain,
                b"s=" + self.selector,
                b"t=%d" % int(time.time() if now is None else now),
                b"h=" + b" : ".join(signed),
                b"bh=" + body_hash,
            ]
        )
        # b= on its own line: its value is left out of the hash, everything before it is hashed as folded here.
        unsigned = dkim.fold(tags + b";", namelen=len(SIGNATURE_HEADER)) + b"\r\n b="
        hasher = hashlib.sha256()
        # RFC 6376 3.7: the signed fields in h= order (a name listed twice takes the next instance up, none if
        # there is none left), then the signature's own field with b= empty and no line end.
        for name, value in dkim.select_headers(headers, signed):
            hasher.update(_relaxed_header(name, value))
        hasher.update(_relaxed_header(SIGNATURE_HEADER, b" " + unsigned)[:-2])
        signature = self.private_key.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(SHA256()))
        encoded = base64.b64encode(signature)
        folded = b"\r\n ".join(encoded[start : start + 72] for start in range(0, len(encoded), 72))
        return SIGNATURE_HEADER + b": " + unsigned + folded + b"\r\n"


# Relaxed canonicalisation (RFC 6376 3.4.2, 3.4.4), the same result as dkimpy's (its verifier checks ours in the
# tests) at a fraction of the cost: dkimpy rewrites every single space of the body as a space, these only the
# runs, and skip the scans when there is nothing to change.
_UNFOLD = re.compile(rb"\r?\n")
_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")
_TRAILING_WSP = re.compile(rb"[\t ]+(?=\r\n)")


def _split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(name, value) header pairs (value as after the colon, with its folding and line end) and the body."""
    end = message.find(b"\r\n\r\n")
    if end < 0 or message.count(b"\n") != message.count(b"\r\n"):
        # Not our CRLF wire form (bare LF line ends, or no body): dkimpy's general parser.
        parsed, body = dkim.rfc822_parse(message)
        return [(name, value) for name, value in parsed], body
    headers: list[tuple[bytes, bytes]] = []
    for line in message[:end].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + line + b"\r\n")
        else:
            name, _, value = line.partition(b":")
            headers.append((name, value + b"\r\n"))
    return headers, message[end + 4 :]


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    return name.lower().rstrip() + b":" + _WSP_RUN.sub(b" ", _UNFOLD.sub(b"", value)).strip() + b"\r\n"


def _relaxed_body(body: bytes) -> bytes:
    # A regex scan of a body costs ~50 µs per KB; the substring tests ~1 µs, and a quoted-printable or base64
    # body (what we send) rarely has anything to change.
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _TRAILING_WSP.sub(b"", body)
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    while body.endswith(b"\r\n"):
        body = body[:-2]
    return body + b"\r\n" if body else b""


_cache: dict[tuple[str, str], tuple[float, DomainSigner | None]] = {}
_keys: dict[tuple[str, str, str], DomainSigner] = {}  # (sending domain id, selector, key date) -> loaded key
_cache_lock = threading.Lock()


def _signers_forget() -> None:
    # Now, so this process signs with the new key within its own transaction, and again after commit, in case a
    # send in between loaded the old key back into the cache.
    signer_cache_clear()
    transaction.on_commit(signer_cache_clear)


def signer_cache_clear() -> None:
    """Forget the signers of this process (after a key change here; other processes follow within the TTL)."""
    with _cache_lock:
        _cache.clear()
        _keys.clear()


def _candidate_domains(domain: str) -> list[str]:
    labels = domain.split(".")
    return [".".join(labels[index:]) for index in range(len(labels) - 1)]


def signer_for(organisation_id: str, domain: str) -> Signer | None:
    """The signer for mail From `domain`: takes the whole RFC 5322 message (CRLF line ends) and returns it with a
    `DKIM-Signature:` header in front. The organisation's key for the domain itself, else for its closest parent
    (d=example.com aligns with From news.example.com under DMARC's relaxed alignment); None when it has neither."""
    cache_key = (str(organisation_id), domain.lower())
    cached = _cache.get(cache_key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    signer = _signer_load(*cache_key)
    ttl = float(getattr(settings, "DKIM_SIGNER_CACHE_SECONDS", 60))
    with _cache_lock:
        _cache[cache_key] = (time.monotonic() + ttl, signer)
    return signer


def _signer_load(organisation_id: str, domain: str) -> DomainSigner | None:
    try:
        name = normalise_domain(domain)
        uuid.UUID(organisation_id)  # senders without an organisation row (benches, previews) have no keys
    except (ValidationError, ValueError):
        return None
    candidates = _candidate_domains(name)
    try:
        rows = list(
            SendingDomain.objects.filter(organisation_id=organisation_id, domain__in=candidates).values_list(
                "pk", "domain", "selector", "private_key", "key_created_at"
            )
        )
    except PIIError:
        # A PII key was removed before `dkim_keys_reencrypt` ran (docs/security.md). Mail goes out unsigned rather
        # than not at all; the log says why, once per cache period.
        logger.exception("The DKIM key of %s (organisation %s) does not decrypt", name, organisation_id)
        return None
    best = max(rows, key=lambda row: len(row[1]), default=None)
    if best is None:
        return None
    pk, signing_domain, selector, private_pem, key_created_at = best
    key_id = (str(pk), selector, key_created_at.isoformat())
    signer = _keys.get(key_id)
    if signer is None:
        signer = DomainSigner(domain=signing_domain, selector=selector, private_pem=private_pem)
        with _cache_lock:
            _keys[key_id] = signer
    return signer
