"""Contact validation and the set-based bulk upsert (the user_360 store inside the monolith)."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction

from audiences.models import Organisation
from audiences.rules import ATTRIBUTE_NAME

MAX_BATCH = 10_000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_TEXT = 2000
STANDARD = ("email", "phone", "first_name", "last_name", "timezone", "locale")
ALLOWED_KEYS = {"external_id", "attributes", *STANDARD}
E164 = re.compile(r"^\+([1-9]\d{0,2})\d{4,14}$")
LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")
# The WHATWG "valid email address" grammar: one fast regex that accepts almost every real address. Anything it
# rejects gets a second opinion from Django's validator (internationalised domains, IP literals).
WHATWG_EMAIL = re.compile(
    r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+$"
)


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def normalise_phone(raw: str) -> str:
    """E.164 (`+` country code, subscriber number, 8-15 digits in all) with a country code that exists.

    Spaces, dashes, dots and brackets are dropped first, so "+44 7700 900123" is accepted as +447700900123."""
    compact = re.sub(r"[\s\-().]", "", raw)
    if not E164.match(compact) or len(compact) > 16 or len(compact) < 9:
        raise ValidationError("A phone number in E.164 form, like +447700900123.")
    digits = compact[1:]
    if not any(int(digits[:size]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE for size in (1, 2, 3)):
        raise ValidationError("Unknown country calling code.")
    return compact


def _check_attributes(raw: Any, errors: dict[str, list[str]]) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        errors["attributes"] = ["An object of name: value pairs."]
        return None
    if len(raw) > MAX_ATTRIBUTES:
        errors["attributes"] = [f"At most {MAX_ATTRIBUTES} attributes."]
        return None
    problems = []
    for name, value in raw.items():
        kind = type(value)
        if kind is str:
            if len(value) > MAX_ATTRIBUTE_TEXT:
                problems.append(f"{name}: text is at most {MAX_ATTRIBUTE_TEXT} characters.")
            elif "\x00" in value:
                problems.append(f"{name}: text cannot contain NUL characters.")
        elif kind is dict:
            problems.append(f"{name}: nested objects are not supported.")
        elif kind is list:
            if len(value) > 100 or any(type(item) in (dict, list) for item in value):
                problems.append(f"{name}: lists hold up to 100 strings, numbers or booleans.")
            elif any(type(item) is str and "\x00" in item for item in value):
                problems.append(f"{name}: text cannot contain NUL characters.")
        elif kind is float and not math.isfinite(value):
            problems.append(f"{name}: not a finite number.")
        if not (type(name) is str and ATTRIBUTE_NAME.match(name)):
            problems.append(f"{name!r}: names are 1-64 letters, digits, _ or -.")
    if problems:
        errors["attributes"] = problems
        return None
    return dict(raw)


def validate_contact(raw: Any, *, partial: bool = False) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Clean one incoming contact. Keys left out stay as stored (None here); null or "" clears a field."""
    errors: dict[str, list[str]] = {}
    if not isinstance(raw, Mapping):
        return {}, {"non_field_errors": ["Each contact is an object."]}
    unknown = sorted(set(raw) - ALLOWED_KEYS)
    if unknown:
        errors["non_field_errors"] = [f"Unknown field(s): {', '.join(map(str, unknown))}."]
    clean: dict[str, Any] = {}
    external_id = raw.get("external_id")
    if isinstance(external_id, int) and not isinstance(external_id, bool):
        external_id = str(external_id)
    if not partial or "external_id" in raw:
        if (
            not isinstance(external_id, str)
            or not external_id.strip()
            or len(external_id) > 255
            or "\x00" in external_id
        ):
            errors["external_id"] = ["Required: the contact's user id in your systems (1-255 characters)."]
        else:
            clean["external_id"] = external_id.strip()
    for key in STANDARD:
        if key not in raw:
            continue
        value = raw[key]
        if value is None or value == "":
            clean[key] = ""
            continue
        if not isinstance(value, str):
            errors[key] = ["Must be a string."]
            continue
        value = value.strip()
        if "\x00" in value:
            errors[key] = ["Text cannot contain NUL characters."]
            continue
        try:
            if key == "email":
                value = value.lower()
                if len(value) > 254 or not WHATWG_EMAIL.match(value):
                    validate_email(value)
            elif key == "phone":
                value = normalise_phone(value)
            elif key == "timezone" and value not in _timezones():
                raise ValidationError(f"Unknown timezone {value!r}; use an IANA name like Europe/Paris.")
            elif key == "locale":
                value = value.replace("_", "-")
                if not LOCALE.match(value):
                    raise ValidationError("A language tag like en, en-GB or pt-BR.")
            elif len(value) > 150:
                raise ValidationError("At most 150 characters.")
        except ValidationError as exc:
            errors[key] = list(exc.messages)
            continue
        clean[key] = value
    if "attributes" in raw:
        attributes = _check_attributes(raw["attributes"], errors)
        if attributes is not None:
            clean["attributes"] = attributes
    return clean, errors


@dataclass
class UpsertResult:
    created: int = 0
    updated: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.created + self.updated


# Incoming rows travel by COPY into a session-local staging table (no 3 MB SQL literal to lex and parse), then one
# MERGE (PostgreSQL 15+) applies them: one index probe per row, and it reads the incoming row in both branches, so
# a field left out (NULL here) keeps its stored value while a new contact gets the empty default.
STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS contacts_incoming (
    external_id text, email text, phone text, first_name text, last_name text, timezone text, locale text,
    attributes jsonb
) ON COMMIT DELETE ROWS;
TRUNCATE contacts_incoming;
"""
STAGING_COLUMNS = ("external_id", "email", "phone", "first_name", "last_name", "timezone", "locale")

UPSERT_SQL = """
MERGE INTO audiences_contact AS c
USING contacts_incoming AS i
ON c.organisation_id = %(org)s AND c.external_id = i.external_id
WHEN MATCHED THEN UPDATE SET
    email = COALESCE(i.email, c.email),
    phone = COALESCE(i.phone, c.phone),
    first_name = COALESCE(i.first_name, c.first_name),
    last_name = COALESCE(i.last_name, c.last_name),
    timezone = COALESCE(i.timezone, c.timezone),
    locale = COALESCE(i.locale, c.locale),
    -- merge: new keys added, given keys replaced, keys given as null removed
    attributes = CASE WHEN i.attributes IS NULL THEN c.attributes
                      ELSE jsonb_strip_nulls(c.attributes || i.attributes) END,
    updated_at = now()
WHEN NOT MATCHED THEN INSERT (organisation_id, external_id, email, phone, first_name, last_name, timezone, locale,
                              attributes, created_at, updated_at)
VALUES (%(org)s, i.external_id, COALESCE(i.email, ''), COALESCE(i.phone, ''), COALESCE(i.first_name, ''),
        COALESCE(i.last_name, ''), COALESCE(i.timezone, ''), COALESCE(i.locale, ''),
        jsonb_strip_nulls(COALESCE(i.attributes, '{}'::jsonb)), now(), now())
"""

# Staged rows that already exist (run before the MERGE): one index probe each. (`external_id = ANY(<10k ids>)`
# looked simpler and cost three times as much.)
EXISTING_SQL = """
SELECT count(*) FROM contacts_incoming AS i
WHERE EXISTS (SELECT 1 FROM audiences_contact AS c WHERE c.organisation_id = %(org)s AND c.external_id = i.external_id)
"""

CATALOGUE_SQL = """
INSERT INTO audiences_contactattribute (organisation_id, name, type, examples, first_seen_at, last_seen_at)
SELECT %(org)s, c.name, c.type, c.examples, now(), now()
FROM jsonb_to_recordset(%(seen)s::jsonb) AS c(name text, type text, examples jsonb)
ON CONFLICT (organisation_id, name) DO UPDATE SET
    last_seen_at = now(),
    examples = CASE WHEN jsonb_array_length(audiences_contactattribute.examples) >= 5
                    THEN audiences_contactattribute.examples
                    ELSE (SELECT COALESCE(jsonb_agg(e), '[]'::jsonb) FROM (
                              SELECT DISTINCT e FROM jsonb_array_elements(
                                  audiences_contactattribute.examples || EXCLUDED.examples) AS e LIMIT 5) AS d)
               END
"""


@dataclass
class PreparedBatch:
    """A validated batch, ready for the database."""

    copy_data: bytes  # the rows in COPY text format, built here so the writer thread only ships bytes
    external_ids: list[str]
    catalogue: list[dict[str, Any]]
    result: UpsertResult


def prepare_batch(rows: Sequence[Any]) -> PreparedBatch:
    """Validate up to MAX_BATCH contacts (pure Python, no queries). Within a batch the last row for an external_id
    wins; earlier ones are reported."""
    if len(rows) > MAX_BATCH:
        raise ValidationError({"contacts": [f"At most {MAX_BATCH} contacts per call."]})
    result = UpsertResult()
    cleaned: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, raw in enumerate(rows):
        clean, errors = validate_contact(raw)
        if errors:
            result.rejected.append({"index": index, "external_id": _raw_id(raw), "errors": errors})
            continue
        previous = cleaned.get(clean["external_id"])
        if previous is not None:
            result.rejected.append(
                {
                    "index": previous[0],
                    "external_id": clean["external_id"],
                    "errors": {"external_id": [f"Repeated later in this batch (row {index}), which was used instead."]},
                }
            )
        cleaned[clean["external_id"]] = (index, clean)
    result.rejected.sort(key=lambda item: item["index"])
    contacts = [clean for _, clean in cleaned.values()]
    return PreparedBatch(
        copy_data=_copy_text(contacts),
        external_ids=list(cleaned),
        catalogue=attribute_catalogue(contacts),
        result=result,
    )


# COPY text format: tab-separated, \N for NULL, and backslash, tab, newline and carriage return escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _copy_text(contacts: Sequence[Mapping[str, Any]]) -> bytes:
    lines = []
    for contact in contacts:
        fields = [
            "\\N" if (value := contact.get(column)) is None else value.translate(_COPY_ESCAPES)
            for column in STAGING_COLUMNS
        ]
        attributes = contact.get("attributes")
        fields.append("\\N" if attributes is None else _json_encode(attributes).translate(_COPY_ESCAPES))
        lines.append("\t".join(fields))
    lines.append("")
    return "\n".join(lines).encode()


def write_batch(organisation: Organisation, batch: PreparedBatch) -> UpsertResult:
    """Write a prepared batch in one transaction: the upsert, then the attribute catalogue."""
    result = batch.result
    if not batch.external_ids:
        return result
    with transaction.atomic(), connection.cursor() as cursor:
        # One writer per organisation at a time, so the created/updated split below is exact and two batches
        # creating the same new contact cannot race.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext('contacts-upsert'), hashtext(%s))", [str(organisation.pk)]
        )
        cursor.execute(STAGING_SQL)
        with cursor.cursor.copy("COPY contacts_incoming FROM STDIN") as copy:
            copy.write(batch.copy_data)
        cursor.execute(EXISTING_SQL, {"org": organisation.pk})
        existing = cursor.fetchone()[0]
        cursor.execute(UPSERT_SQL, {"org": organisation.pk})
        if batch.catalogue:
            cursor.execute(CATALOGUE_SQL, {"seen": json.dumps(batch.catalogue), "org": organisation.pk})
    result.updated = existing
    result.created = len(batch.external_ids) - existing
    return result


def contacts_upsert_rows(*, organisation: Organisation, rows: Sequence[Any]) -> UpsertResult:
    """Validate and upsert up to MAX_BATCH contacts in one SQL statement. Bad rows are reported by index and
    skipped; the good ones are written."""
    return write_batch(organisation, prepare_batch(rows))


def contacts_upsert_stream(
    *,
    organisation: Organisation,
    batches: Iterable[tuple[Any, Sequence[Any]]],
    on_batch: Callable[[Any, UpsertResult], None] | None = None,
) -> UpsertResult:
    """Upsert many (tag, rows) batches, calling on_batch(tag, result) as each is written.

    With more than one batch, the next batch is validated in this thread while a second thread writes the
    previous one (psycopg releases the GIL while PostgreSQL works), so an import uses both Python and the
    database at once. A single batch is written here, in the caller's connection and transaction."""
    total = UpsertResult()

    def account(tag: Any, result: UpsertResult) -> None:
        total.created += result.created
        total.updated += result.updated
        total.rejected.extend(result.rejected)
        if on_batch is not None:
            on_batch(tag, result)

    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return total
    first_tag, first_rows = first
    prepared = prepare_batch(first_rows)
    second = next(iterator, None)
    if second is None:
        account(first_tag, write_batch(organisation, prepared))
        return total

    def write_in_thread(batch: PreparedBatch) -> UpsertResult:
        return write_batch(organisation, batch)

    def close_thread_connection() -> None:
        connection.close()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="contacts-writer") as writer:
        pending = (first_tag, writer.submit(write_in_thread, prepared))
        try:
            for tag, rows in itertools.chain([second], iterator):
                prepared = prepare_batch(rows)  # overlaps with the write in progress
                done_tag, future = pending
                account(done_tag, future.result())
                pending = (tag, writer.submit(write_in_thread, prepared))
            done_tag, future = pending
            account(done_tag, future.result())
        finally:
            writer.submit(close_thread_connection).result()
    return total


ISO_DATE_START = re.compile(r"^\d{4}-\d{2}-\d{2}")


def attribute_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "date" if ISO_DATE_START.match(value) else "string"
    return None  # null: a removal, says nothing about the type


CATALOGUE_SAMPLE = 1000


def attribute_catalogue(rows: Sequence[Mapping[str, Any]], max_examples: int = 5) -> list[dict[str, Any]]:
    """Each attribute name in the batch with its most common type and a few distinct example values.

    Types and examples come from the first CATALOGUE_SAMPLE rows; later rows only add names not seen yet, so a
    10,000-row batch costs little more than a 1,000-row one."""
    kinds: dict[str, Counter[str]] = {}
    examples: dict[str, list[str]] = {}

    def observe(name: str, value: Any) -> None:
        kind = attribute_type(value)
        if kind is None:
            return
        kinds.setdefault(name, Counter())[kind] += 1
        seen = examples.setdefault(name, [])
        if len(seen) < max_examples:
            text = json.dumps(value) if kind == "list" else str(value).lower() if kind == "boolean" else str(value)
            if text[:80] not in seen:
                seen.append(text[:80])

    for row in rows[:CATALOGUE_SAMPLE]:
        for name, value in (row.get("attributes") or {}).items():
            observe(name, value)
    known = set(kinds)
    for row in rows[CATALOGUE_SAMPLE:]:
        attributes = row.get("attributes")
        if attributes and not known.issuperset(attributes):
            for name in set(attributes) - known:
                observe(name, attributes[name])
            known |= set(kinds)
    return [
        {"name": name, "type": counter.most_common(1)[0][0], "examples": examples[name]}
        for name, counter in kinds.items()
    ]


def _raw_id(raw: Any) -> str | None:
    if isinstance(raw, Mapping) and isinstance(raw.get("external_id"), (str, int)):
        return str(raw["external_id"])[:255]
    return None
