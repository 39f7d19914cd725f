"""Contact validation and the set-based bulk upsert (the user_360 store inside the monolith)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
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
        if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name):
            problems.append(f"{name!r}: names are 1-64 letters, digits, _ or -.")
        elif isinstance(value, dict):
            problems.append(f"{name}: nested objects are not supported.")
        elif isinstance(value, list):
            if any(isinstance(item, (dict, list)) for item in value) or len(value) > 100:
                problems.append(f"{name}: lists hold up to 100 strings, numbers or booleans.")
        elif isinstance(value, str) and len(value) > MAX_ATTRIBUTE_TEXT:
            problems.append(f"{name}: text is at most {MAX_ATTRIBUTE_TEXT} characters.")
        elif isinstance(value, float) and value != value:
            problems.append(f"{name}: not a number.")
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
        if not isinstance(external_id, str) or not external_id.strip() or len(external_id) > 255:
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
        try:
            if key == "email":
                value = value.lower()
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


UPSERT_SQL = """
WITH incoming AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
        external_id text, email text, phone text, first_name text, last_name text, timezone text, locale text,
        attributes jsonb)
),
updated AS (
    UPDATE audiences_contact AS c SET
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
    FROM incoming AS i
    WHERE c.organisation_id = %(org)s AND c.external_id = i.external_id
    RETURNING c.external_id
),
inserted AS (
    INSERT INTO audiences_contact (organisation_id, external_id, email, phone, first_name, last_name, timezone,
                                   locale, attributes, created_at, updated_at)
    SELECT %(org)s, i.external_id, COALESCE(i.email, ''), COALESCE(i.phone, ''), COALESCE(i.first_name, ''),
           COALESCE(i.last_name, ''), COALESCE(i.timezone, ''), COALESCE(i.locale, ''),
           jsonb_strip_nulls(COALESCE(i.attributes, '{}'::jsonb)), now(), now()
    FROM incoming AS i
    WHERE NOT EXISTS (SELECT 1 FROM updated AS u WHERE u.external_id = i.external_id)
    RETURNING 1
),
catalogue AS (
    INSERT INTO audiences_contactattribute (organisation_id, name, type, examples, first_seen_at, last_seen_at)
    SELECT %(org)s, key, mode() WITHIN GROUP (ORDER BY kind),
           COALESCE((SELECT jsonb_agg(e) FROM (SELECT DISTINCT e FROM unnest(array_agg(example)) AS e
                                                 WHERE e IS NOT NULL LIMIT 5) AS d), '[]'::jsonb),
           now(), now()
    FROM (
        SELECT a.key,
               CASE jsonb_typeof(a.value)
                   WHEN 'number' THEN 'number' WHEN 'boolean' THEN 'boolean' WHEN 'array' THEN 'list'
                   ELSE CASE WHEN a.value #>> '{}' ~ '^\\d{4}-\\d{2}-\\d{2}' THEN 'date' ELSE 'string' END
               END AS kind,
               left(CASE jsonb_typeof(a.value) WHEN 'array' THEN a.value::text ELSE a.value #>> '{}' END, 80)
                   AS example
        FROM incoming AS i, jsonb_each(i.attributes) AS a
        WHERE jsonb_typeof(a.value) IN ('string', 'number', 'boolean', 'array')
    ) AS seen
    GROUP BY key
    ON CONFLICT (organisation_id, name) DO UPDATE SET
        last_seen_at = now(),
        examples = (SELECT COALESCE(jsonb_agg(e), '[]'::jsonb) FROM (
                        SELECT DISTINCT e FROM jsonb_array_elements(
                            audiences_contactattribute.examples || EXCLUDED.examples) AS e LIMIT 5) AS d)
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated), (SELECT count(*) FROM inserted), (SELECT count(*) FROM catalogue)
"""


def contacts_upsert_rows(*, organisation: Organisation, rows: Sequence[Any]) -> UpsertResult:
    """Validate and upsert up to MAX_BATCH contacts in one SQL statement. Bad rows are reported by index and
    skipped; the good ones are written. Within a batch the last row for an external_id wins."""
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
    if not cleaned:
        return result
    payload = json.dumps([clean for _, clean in cleaned.values()], separators=(",", ":"))
    with transaction.atomic(), connection.cursor() as cursor:
        # One writer per organisation at a time: two batches creating the same new contact cannot race.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext('contacts-upsert'), hashtext(%s))", [str(organisation.pk)]
        )
        cursor.execute(UPSERT_SQL, {"rows": payload, "org": organisation.pk})
        updated, created, _ = cursor.fetchone()
    result.created, result.updated = created, updated
    result.rejected.sort(key=lambda item: item["index"])
    return result


def _raw_id(raw: Any) -> str | None:
    if isinstance(raw, Mapping) and isinstance(raw.get("external_id"), (str, int)):
        return str(raw["external_id"])[:255]
    return None
