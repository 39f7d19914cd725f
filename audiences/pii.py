"""Personal data at rest: contacts' emails and phone numbers are encrypted, with keyed hashes for look-ups.

Encryption: AES-256-GCM (the `cryptography` package) with a random 96-bit nonce per value. The stored form is
"$<key id>$<base64(nonce | ciphertext | tag)>", so a value names the key that encrypted it and keys can rotate:
settings.PII_ENCRYPTION_KEYS maps key ids to 32-byte keys (base64), settings.PII_ENCRYPTION_KEY_ID says which one
encrypts; any listed key decrypts. Rotation (docs/security.md): add a new key, make it the active one, run
`manage.py pii_rotate` (re-encrypts every value under an older key, in batches, with a progress bar), then drop the
old key. Empty values stay empty, so "has an email" is still `email <> ''` in SQL.

Look-ups: a value's keyed hash, "h:" + HMAC-SHA256 over the normalised value (emails lower-cased, phones E.164),
is stored beside it (`email_hash`, `phone_hash`) and on suppressions (`address_hash`). Equality in segment rules,
suppression checks at fan-out and send time, STOP keywords and API look-ups compare hashes, in SQL over sets, and
never need the plaintext. The hash key is PII_HASH_KEY (by default derived from SECRET_KEY, with its own purpose)
and outlives encryption keys: erased contacts' addresses are kept only as these hashes, so changing it would let
erased addresses back in.

The email's domain is kept in clear (`email_domain`, a segment field): it says which mailbox provider, not who.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.db import models
from django.db.models.expressions import Col

MARK = "$"
NONCE_SIZE = 12  # bytes: the 96-bit nonce AES-GCM is specified for
HASH_PREFIX = "h:"


class PIIError(ValueError):
    """A stored value that no configured key decrypts (a key was removed before rotation finished)."""


def _derived(purpose: bytes) -> bytes:
    return hmac.new(settings.SECRET_KEY.encode(), purpose, hashlib.sha256).digest()


@lru_cache(maxsize=8)
def _keys(configured: tuple[tuple[str, str], ...], secret: str) -> dict[str, AESGCM]:
    if not configured:
        # Development default: a key derived from SECRET_KEY. Production sets PII_ENCRYPTION_KEYS.
        return {"k0": AESGCM(_derived(b"campaign-service.pii.encryption"))}
    keys: dict[str, AESGCM] = {}
    for key_id, encoded in configured:
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImproperlyConfigured(f"PII_ENCRYPTION_KEYS[{key_id!r}] is not base64.") from exc
        if len(raw) != 32:
            raise ImproperlyConfigured(f"PII_ENCRYPTION_KEYS[{key_id!r}] must be 32 bytes (AES-256).")
        if not key_id or MARK in key_id:
            raise ImproperlyConfigured(f"PII key id {key_id!r} must be non-empty and without '$'.")
        keys[key_id] = AESGCM(raw)
    return keys


def keys() -> dict[str, AESGCM]:
    configured = tuple(sorted((getattr(settings, "PII_ENCRYPTION_KEYS", None) or {}).items()))
    return _keys(configured, settings.SECRET_KEY)


def active_key_id() -> str:
    available = keys()
    key_id = getattr(settings, "PII_ENCRYPTION_KEY_ID", "") or next(iter(available))
    if key_id not in available:
        raise ImproperlyConfigured(f"PII_ENCRYPTION_KEY_ID {key_id!r} is not in PII_ENCRYPTION_KEYS.")
    return key_id


def encrypt(value: str) -> str:
    return sealer().encrypt(value)


def key_id_of(stored: str) -> str | None:
    if not stored or not stored.startswith(MARK):
        return None
    return stored[1:].split(MARK, 1)[0]


def decrypt(stored: str, available: dict[str, AESGCM] | None = None) -> str:
    """The plaintext of a stored value. Values without the mark are returned as they are (rows written before
    encryption, until the migration or `pii_rotate` has passed over them). Bulk readers pass `available`
    (`keys()`, looked up once per batch)."""
    if not stored or not stored.startswith(MARK):
        return stored
    key_id, _, body = stored[1:].partition(MARK)
    key = (keys() if available is None else available).get(key_id)
    if key is None:
        raise PIIError(f"No PII key {key_id!r} is configured; add it back to PII_ENCRYPTION_KEYS.")
    try:
        raw = binascii.a2b_base64(body)
    except binascii.Error as exc:
        raise PIIError(f"A value under PII key {key_id!r} is not valid base64 (tampered).") from exc
    try:
        return key.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], key_id.encode()).decode()
    except Exception as exc:  # cryptography raises InvalidTag for a wrong key or tampered value
        raise PIIError(f"A value under PII key {key_id!r} does not decrypt (wrong key or tampered).") from exc


@lru_cache(maxsize=4)
def _hash_key(configured: str, secret: str) -> bytes:
    if configured:
        return configured.encode()
    # The derivation erased addresses were hashed with before PII_HASH_KEY existed, so they still match.
    return hmac.new(secret.encode(), b"campaign-service.compliance.erased-address", hashlib.sha256).digest()


def hash_key() -> bytes:
    return _hash_key(getattr(settings, "PII_HASH_KEY", "") or "", settings.SECRET_KEY)


def normalise(address: str) -> str:
    """Emails lower-cased, phones as given (E.164 by validation), both stripped."""
    address = address.strip()
    return address.lower() if "@" in address else address


def pii_hash(address: str, key: bytes | None = None) -> str:
    """The keyed look-up hash of an email or phone ('' for no address); bulk callers pass the key."""
    if not address:
        return ""
    return HASH_PREFIX + hmac.digest(key or hash_key(), normalise(address).encode(), "sha256").hex()


class Sealer:
    """`encrypt` and `pii_hash` with the keys looked up once: bulk writes seal thousands of values per batch, and
    reading settings per value cost more than the cipher. The batch forms draw every nonce from one os.urandom
    call and run HMAC-SHA256 from precomputed inner and outer states (RFC 2104): a third of the per-value cost of
    os.urandom(12) and hmac.digest each time, with the same output."""

    __slots__ = ("_aad", "_inner", "_outer", "_prefix", "cipher", "hash_key", "key_id")

    def __init__(self, key_id: str, cipher: AESGCM, hash_key: bytes) -> None:
        self.key_id = key_id
        self.cipher = cipher
        self.hash_key = hash_key
        self._prefix = f"{MARK}{key_id}{MARK}"
        self._aad = key_id.encode()
        block = hash_key if len(hash_key) <= 64 else hashlib.sha256(hash_key).digest()
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))

    def encrypt(self, value: str) -> str:
        return self.encrypt_many([value])[0]

    def encrypt_many(self, values: list[str | None]) -> list[str | None]:
        """Each value encrypted under its own random nonce; None and "" are kept as they are."""
        nonces = os.urandom(NONCE_SIZE * len(values))
        encrypt, aad, prefix, b64 = self.cipher.encrypt, self._aad, self._prefix, binascii.b2a_base64
        sealed: list[str | None] = []
        append = sealed.append
        for offset, value in zip(range(0, len(nonces), NONCE_SIZE), values, strict=True):
            if not value:
                append(value)
                continue
            nonce = nonces[offset : offset + NONCE_SIZE]
            append(prefix + b64(nonce + encrypt(nonce, value.encode(), aad), newline=False).decode())
        return sealed

    def hash(self, address: str) -> str:
        return pii_hash(address, self.hash_key)

    def hash_many(self, normalised: list[str | None]) -> list[str | None]:
        """pii_hash of values that are already normalised (validated emails and phones); None stays None."""
        inner, outer = self._inner.copy, self._outer.copy
        hashes: list[str | None] = []
        append = hashes.append
        for value in normalised:
            if value is None:
                append(None)
            elif not value:
                append("")
            else:
                state = inner()
                state.update(value.encode())
                final = outer()
                final.update(state.digest())
                append(HASH_PREFIX + final.hexdigest())
        return hashes


def sealer() -> Sealer:
    key_id = active_key_id()
    return _sealer(key_id, keys()[key_id], hash_key())


@lru_cache(maxsize=8)
def _sealer(key_id: str, cipher: AESGCM, hash_key: bytes) -> Sealer:
    # keys() hands out the same cipher objects while the settings stay the same, so this holds one Sealer per
    # configuration: encrypt() of single values does not rebuild the HMAC states each time.
    return Sealer(key_id, cipher, hash_key)


def contact_search(term: str) -> Any:
    """A Q for a search box: a prefix of the external id, or a whole email or phone (matched by hash)."""
    term = term.strip()
    query = models.Q(external_id__startswith=term)
    if term:
        query |= models.Q(email_hash=pii_hash(term)) | models.Q(phone_hash=pii_hash(term))
    return query


def email_domain(email: str) -> str:
    return email.rpartition("@")[2].lower() if "@" in email else ""


class EncryptedTextField(models.TextField):
    """A text column holding `encrypt`ed values: Python code sees plaintext, the database only ciphertext.

    `hash_field` names the sibling column with the value's keyed hash: `filter(email=…)`, `get(address=…)` and
    `__in` look-ups compare hashes there, so they work as they read. Substring and other look-ups cannot work on
    ciphertext and raise a FieldError instead of silently matching nothing."""

    def __init__(self, *args: Any, hash_field: str = "", **kwargs: Any) -> None:
        self.hash_field = hash_field
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        if self.hash_field:
            kwargs["hash_field"] = self.hash_field
        return name, path, args, kwargs

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return decrypt(value) if isinstance(value, str) else value

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if isinstance(value, str) and value and not value.startswith(MARK):
            return encrypt(value)
        return value

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name in ("exact", "in"):
            return HashedExact if lookup_name == "exact" else HashedIn
        if lookup_name == "isnull":
            return super().get_lookup(lookup_name)
        raise FieldError(
            f"{self.name} is encrypted at rest: only exact and in look-ups work on it (through {self.hash_field})."
        )


class _Hashed(models.Lookup):
    """Compare the keyed hash column of an EncryptedTextField instead of its ciphertext."""

    prepare_rhs = False
    can_use_none_as_rhs = False

    def _hash_column(self, compiler: Any) -> tuple[str, list[Any]]:
        field = self.lhs.target
        if not getattr(field, "hash_field", ""):
            raise FieldError(f"{field.name} has no hash column to look it up by.")
        column = Col(self.lhs.alias, field.model._meta.get_field(field.hash_field))
        sql, params = compiler.compile(column)
        return sql, list(params)

    def get_db_prep_lookup(self, value: Any, connection: Any) -> Any:
        return ("%s", [value])

    def process_rhs(self, compiler: Any, connection: Any) -> Any:
        return "%s", [self.rhs]


class HashedExact(_Hashed):
    lookup_name = "exact"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        if not isinstance(self.rhs, str):
            raise FieldError(f"{self.lhs.target.name} can only be compared with a string.")
        sql, params = self._hash_column(compiler)
        return f"{sql} = %s", [*params, pii_hash(self.rhs)]


class HashedIn(_Hashed):
    lookup_name = "in"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        values = list(self.rhs)
        if not all(isinstance(v, str) for v in values):
            raise FieldError(f"{self.lhs.target.name} can only be compared with strings.")
        sql, params = self._hash_column(compiler)
        return f"{sql} = ANY(%s)", [*params, [pii_hash(v) for v in values]]


ROTATE_SELECT = """
SELECT id, organisation_id, email, phone FROM audiences_contact
WHERE id > %(after)s AND ((email <> '' AND left(email, %(width)s) <> %(mark)s)
                       OR (phone <> '' AND left(phone, %(width)s) <> %(mark)s))
ORDER BY id LIMIT %(limit)s
"""
ROTATE_UPDATE = """
UPDATE audiences_contact c SET email = u.e, phone = u.p, email_hash = u.eh, phone_hash = u.ph, email_domain = u.d
FROM json_to_recordset(%s::json) AS u(i bigint, e text, p text, eh text, ph text, d text) WHERE c.id = u.i
"""


def pii_rotate(*, batch_size: int = 5000, progress: Any = None) -> dict[str, int]:
    """Re-encrypt every contact's email and phone that is not under the active key (older keys, or plaintext
    from before encryption), batch by batch, each batch one UPDATE … FROM in its own transaction, so it can be
    stopped and run again. Hashes are recomputed from the plaintext too (they follow PII_HASH_KEY). Returns
    {organisation id: contacts re-encrypted}; `progress(done, remaining)` is called after each batch."""
    import json

    from django.db import connection, transaction

    key_id = active_key_id()
    mark = f"{MARK}{key_id}{MARK}"
    params = {"after": 0, "width": len(mark), "mark": mark, "limit": batch_size}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM audiences_contact WHERE (email <> '' AND left(email, %(width)s) <> %(mark)s)"
            " OR (phone <> '' AND left(phone, %(width)s) <> %(mark)s)",
            params,
        )
        remaining = cursor.fetchone()[0]
    done = 0
    per_organisation: dict[str, int] = {}
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(ROTATE_SELECT, params)
            rows = cursor.fetchall()
            if not rows:
                break
            payload = []
            for contact_id, organisation_id, email, phone in rows:
                email, phone = decrypt(email), decrypt(phone)
                payload.append(
                    {"i": contact_id, "e": encrypt(email), "p": encrypt(phone), "eh": pii_hash(email),
                     "ph": pii_hash(phone), "d": email_domain(email)}
                )  # fmt: skip
                per_organisation[str(organisation_id)] = per_organisation.get(str(organisation_id), 0) + 1
            cursor.execute(ROTATE_UPDATE, [json.dumps(payload)])
        params["after"] = rows[-1][0]
        done += len(rows)
        if progress is not None:
            progress(done, max(remaining - done, 0))
    return per_organisation


# Encrypted columns outside the contact store, as (table, id column, column): pii_reencrypt_column takes only these.
OTHER_ENCRYPTED_COLUMNS = frozenset(
    {("compliance_suppression", "id", "address"), ("compliance_historicalsuppression", "history_id", "address")}
)


def pii_reencrypt_column(table: str, id_column: str, column: str, *, batch_size: int = 5000) -> int:
    """Re-encrypt one encrypted column of another table (suppression addresses and their history) under the
    active key, batch by batch; values that are not ciphertext (erased rows' hashes, '') are left alone."""
    import json

    from django.db import connection, transaction

    if (table, id_column, column) not in OTHER_ENCRYPTED_COLUMNS:
        raise ValueError(f"{table}.{column} is not a known encrypted column.")

    mark = f"{MARK}{active_key_id()}{MARK}"
    after, done = 0, 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(  # the names come from OTHER_ENCRYPTED_COLUMNS
                f"SELECT {id_column}, {column} FROM {table} WHERE {id_column} > %s AND left({column}, 1) = %s"  # noqa: S608
                f" AND left({column}, %s) <> %s ORDER BY {id_column} LIMIT %s",
                [after, MARK, len(mark), mark, batch_size],
            )
            rows = cursor.fetchall()
            if not rows:
                return done
            payload = [{"i": row_id, "v": encrypt(decrypt(value))} for row_id, value in rows]
            cursor.execute(
                f"UPDATE {table} t SET {column} = u.v FROM json_to_recordset(%s::json) AS u(i bigint, v text)"  # noqa: S608
                f" WHERE t.{id_column} = u.i",
                [json.dumps(payload)],
            )
        after = rows[-1][0]
        done += len(rows)
