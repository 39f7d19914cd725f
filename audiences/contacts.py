"""Contact validation and the set-based bulk upsert (the user_360 store inside the monolith)."""

from __future__ import annotations

import gc
import itertools
import json
import math
import operator
import re
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

import orjson
import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction

from audiences.models import Organisation
from audiences.pii import email_domain, sealer
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


PHONE_SEPARATORS = re.compile(r"[\s\-().]")
COMPACT_PHONE = re.compile(r"\+\d+")
ASCII_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
# Country calling codes as text: E164 guarantees the first digit is not 0, so a 1-3 digit ASCII prefix of the
# number reads the same as the integer phonenumbers keys on.
COUNTRY_CODES = frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def normalise_phone(raw: str) -> str:
    """E.164 (`+` country code, subscriber number, 8-15 digits in all) with a country code that exists.

    Spaces, dashes, dots and brackets are dropped first, so "+44 7700 900123" is accepted as +447700900123."""
    if ASCII_E164.fullmatch(raw):  # the usual case, in one match: already compact, ASCII digits, 8-15 of them
        if raw[1:2] in COUNTRY_CODES or raw[1:3] in COUNTRY_CODES or raw[1:4] in COUNTRY_CODES:
            return raw
        raise ValidationError("Unknown country calling code.")
    compact = raw if COMPACT_PHONE.fullmatch(raw) else PHONE_SEPARATORS.sub("", raw)
    if not E164.match(compact) or len(compact) > 16 or len(compact) < 9:
        raise ValidationError("A phone number in E.164 form, like +447700900123.")
    if compact.isascii():
        known = compact[1:2] in COUNTRY_CODES or compact[1:3] in COUNTRY_CODES or compact[1:4] in COUNTRY_CODES
    else:  # other scripts' digits, which int() reads
        known = any(int(compact[1 : 1 + size]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE for size in (1, 2, 3))
    if not known:
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
    if not partial:
        clean = _clean_plain(raw)
        if clean is not None:
            return clean, {}
    return _validate_contact_fully(raw, partial=partial)


# Text that the COPY below would have to quote (its delimiter, quote and line breaks), and NUL, which is refused.
# Values free of these are sent as they are.
CSV_UNSAFE = re.compile(r"[\x00\n\r\x1e\x1f]")
_unsafe = CSV_UNSAFE.search
_whatwg_email = WHATWG_EMAIL.match
_attribute_name = ATTRIBUTE_NAME.match
_known_names: set[str] = set()  # attribute names that passed ATTRIBUTE_NAME, so each is checked once
_known_locales: dict[str, str] = {}  # raw locale -> normalised, for locales that passed LOCALE


def _clean_plain(raw: Any) -> dict[str, Any] | None:
    """The happy path of validate_contact: a well-formed row whose every value is plain (no text COPY would
    need to quote). Returns exactly what the full validation would, or None when the row needs it: anything
    unusual, including every error, goes through the full path, so messages and their order are its own."""
    if type(raw) is not dict or not ALLOWED_KEYS.issuperset(raw):
        return None
    external_id = raw.get("external_id")
    if type(external_id) is not str or len(external_id) > 255 or _unsafe(external_id):
        return None
    external_id = external_id.strip()
    if not external_id:
        return None
    clean: dict[str, Any] = {"external_id": external_id}
    if "email" in raw:
        value = raw["email"]
        if value is None or value == "":
            clean["email"] = ""
        elif type(value) is str:
            value = value.strip().lower()
            if len(value) > 254 or not _whatwg_email(value):  # the charset excludes everything COPY quotes
                return None
            clean["email"] = value
        else:
            return None
    if "phone" in raw:
        value = raw["phone"]
        if value is None or value == "":
            clean["phone"] = ""
        elif type(value) is str:
            try:
                clean["phone"] = normalise_phone(value.strip())  # digits and a + only
            except ValidationError:
                return None
        else:
            return None
    for key in ("first_name", "last_name"):
        if key in raw:
            value = raw[key]
            if value is None or value == "":
                clean[key] = ""
            elif type(value) is str and not _unsafe(value):
                value = value.strip()
                if len(value) > 150:
                    return None
                clean[key] = value
            else:
                return None
    if "timezone" in raw:
        value = raw["timezone"]
        if value is None or value == "":
            clean["timezone"] = ""
        elif type(value) is str and (value := value.strip()) in _timezones():
            clean["timezone"] = value
        else:
            return None
    if "locale" in raw:
        value = raw["locale"]
        if value is None or value == "":
            clean["locale"] = ""
        elif type(value) is str:
            known = _known_locales.get(value)
            if known is None:
                known = value.strip().replace("_", "-")
                if _unsafe(known) or not LOCALE.match(known):
                    return None
                if len(_known_locales) < 10_000:
                    _known_locales[value] = known
            clean["locale"] = known
        else:
            return None
    if "attributes" in raw:
        attributes = raw["attributes"]
        if attributes is not None:
            if type(attributes) is not dict or len(attributes) > MAX_ATTRIBUTES:
                return None
            for name, value in attributes.items():
                if name not in _known_names:
                    if type(name) is not str or not _attribute_name(name):
                        return None
                    if len(_known_names) < 10_000:
                        _known_names.add(name)
                kind = type(value)
                if kind is str:
                    if len(value) > MAX_ATTRIBUTE_TEXT or "\x00" in value:
                        return None
                elif kind is float:
                    if value - value != 0.0:  # inf or nan
                        return None
                elif kind is list:
                    if len(value) > 100:
                        return None
                    for item in value:
                        item_kind = type(item)
                        if item_kind is dict or item_kind is list or (item_kind is str and "\x00" in item):
                            return None
                elif not (kind is int or kind is bool or value is None):
                    return None
            clean["attributes"] = dict(attributes)
    return clean


class _Missing:
    """A key the row leaves out (the stored value stays), told apart from one given as null (cleared)."""


_MISSING = _Missing()
_JOIN = "\x01"  # joins a column's values for one scan: not whitespace and not a character COPY quotes
# normalise_phone's fast path as one match: compact ASCII E.164 starting with a known country calling code.
KNOWN_E164 = re.compile(
    r"\+(?=[1-9][0-9]{7,14}\Z)(?:" + "|".join(sorted(COUNTRY_CODES, key=lambda code: (-len(code), code))) + ")"
)
_known_e164 = KNOWN_E164.match
Column = Sequence[Any]  # per row: None left out, "" cleared, else the clean value (attributes: a dict or None)


def _clean_columns(rows: Sequence[Any]) -> tuple[list[str], dict[str, Column]] | None:
    """_clean_plain for a whole batch at once, column by column: each check is one scan over a column (map,
    set, str.join and a regex in C) instead of a dozen bytecodes per value. Returns the external ids and the
    clean columns (with "attributes_json", the documents encoded), exactly what _clean_plain would give row by
    row, or None when any row needs more than that (an error, an unusual value, a repeated id): the batch then
    takes the row-by-row path."""
    keys = set().union(*rows) if rows and set(map(type, rows)) == {dict} else None
    if not keys or not ALLOWED_KEYS.issuperset(keys):
        return None
    given = _given_columns(rows, keys)
    external_ids = given.get("external_id")
    if external_ids is None:
        return None
    if set(map(type, external_ids)) != {str} or max(map(len, external_ids)) > 255:
        return None
    if _unsafe(_JOIN.join(external_ids)):
        return None
    external_ids = list(map(str.strip, external_ids))
    if not min(map(len, external_ids)) or len(set(external_ids)) != len(external_ids):
        return None
    columns: dict[str, Column] = {}
    left_out: Column = [None] * len(rows)  # a field no row gives
    for key, clean in _TEXT_CLEANERS.items():
        raw = given.get(key)
        column = left_out if raw is None else _texts(raw)
        cleaned = None if column is None else clean(column)
        if cleaned is None:
            return None
        columns[key] = cleaned
    documents = given.get("attributes", left_out)
    kinds = set(map(type, documents))
    if _Missing in kinds:
        documents = [None if document is _MISSING else document for document in documents]
    if not kinds <= {dict, type(None), _Missing}:
        return None
    encoded = _clean_attribute_column(documents)
    if encoded is None:
        return None
    columns["attributes"], columns["attributes_json"] = documents, encoded
    return external_ids, columns


def _given_columns(rows: Sequence[dict[str, Any]], keys: set[str]) -> dict[str, Sequence[Any]]:
    """Each key's values, `_MISSING` where a row leaves it out. Rows that all have the same keys (the usual
    batch) are read in one pass and transposed, in C; reading every row once per column cost twice as much."""
    ordered = sorted(keys)
    if len(ordered) == 1:
        return {ordered[0]: [row.get(ordered[0], _MISSING) for row in rows]}
    try:
        return dict(zip(ordered, zip(*map(operator.itemgetter(*ordered), rows), strict=True), strict=True))
    except KeyError:
        return {key: [row.get(key, _MISSING) for row in rows] for key in ordered}


def _texts(values: Sequence[Any]) -> Column | None:
    """The values: None where left out, "" where null or empty, the string otherwise; None (take the
    row-by-row path) if any value is something else."""
    kinds = set(map(type, values))
    if kinds == {str}:
        return values
    if not kinds <= {str, type(None), _Missing}:
        return None
    return [None if value is _MISSING else "" if value is None else value for value in values]


def _stripped(column: Column) -> Column:
    if None in column:
        return [value.strip() if value else value for value in column]
    return list(map(str.strip, column))


def _given(column: Column) -> list[str]:
    """The non-empty values (filter in C)."""
    return list(filter(None, column))


def _strips_to_empty(raw: Column, stripped: Column) -> bool:
    """Whether a value that was not empty is empty once stripped (which _clean_plain refuses for this field)."""
    return stripped.count("") != raw.count("")


def _clean_email_column(raw: Column) -> Column | None:
    emails = _stripped(raw)
    if _strips_to_empty(raw, emails):
        return None
    emails = [value.lower() if value else value for value in emails] if None in emails else list(map(str.lower, emails))
    given = _given(emails)
    if given and (max(map(len, given)) > 254 or not all(map(_whatwg_email, given))):
        return None
    return emails


def _clean_phone_column(raw: Column) -> Column | None:
    phones = _stripped(raw)
    if _strips_to_empty(raw, phones):
        return None
    if all(map(_known_e164, _given(phones))):
        return phones
    try:  # some numbers are written with spaces or dashes: normalise those one by one
        return [value if not value or _known_e164(value) else normalise_phone(value) for value in phones]
    except ValidationError:
        return None


def _clean_name_column(raw: Column) -> Column | None:
    given = _given(raw)
    if given and _unsafe(_JOIN.join(given)):
        return None
    names = _stripped(raw)
    if given and max(map(len, _given(names)), default=0) > 150:
        return None
    return names


def _clean_timezone_column(raw: Column) -> Column | None:
    zones = _stripped(raw)
    if _strips_to_empty(raw, zones) or not _timezones().issuperset(_given(zones)):
        return None
    return zones


def _clean_locale_column(raw: Column) -> Column | None:
    normalised: dict[Any, Any] = {None: None, "": ""}
    for value in set(raw) - normalised.keys():  # a batch holds a handful of distinct locales
        known = _known_locales.get(value)
        if known is None:
            known = value.strip().replace("_", "-")
            if _unsafe(known) or not LOCALE.match(known):
                return None
        normalised[value] = known
    return list(map(normalised.__getitem__, raw))


ATTRIBUTE_VALUE_KINDS = frozenset({str, int, bool, float, list, type(None)})


def _clean_attribute_column(column: Column) -> list[str | None] | None:
    """The documents encoded (None where left out), if every one passes _clean_plain's checks; else None.

    Texts and floats are screened on the encoded JSON, one scan for the batch: orjson writes NUL as \\u0000 and
    NaN and infinities as null, and a document no longer than MAX_ATTRIBUTE_TEXT holds no longer text. Only a
    batch the screen cannot clear (a null, a long document, a backslash sequence) checks the values one by one."""
    documents = _given(column)  # the dicts (an empty one is kept as it is)
    if not documents:
        return [None if document is None else "{}" for document in column]
    if max(map(len, documents)) > MAX_ATTRIBUTES:
        return None
    for name in set().union(*documents) - _known_names:
        if type(name) is not str or not _attribute_name(name):
            return None
        if len(_known_names) < 10_000:
            _known_names.add(name)
    values = list(itertools.chain.from_iterable(map(dict.values, documents)))
    kinds = set(map(type, values))
    if not kinds <= ATTRIBUTE_VALUE_KINDS:
        return None
    if list in kinds:
        lists = list(filter(list.__instancecheck__, values))
        if max(map(len, lists)) > 100:
            return None
        item_kinds = set(map(type, itertools.chain.from_iterable(lists)))
        if dict in item_kinds or list in item_kinds:
            return None
    try:
        encoded = [None if document is None else encode_attributes(document) for document in column]
    except TypeError:  # an object JSON cannot hold, inside a list: the row path reports it
        return None
    texts = _JOIN.join(filter(None, encoded))
    if "\\u0000" in texts or (str in kinds and max(map(len, filter(None, encoded))) > MAX_ATTRIBUTE_TEXT):
        strings = list(filter(str.__instancecheck__, values))  # limited in length, list items are not
        if strings and (max(map(len, strings)) > MAX_ATTRIBUTE_TEXT or "\x00" in _JOIN.join(strings)):
            return None
        items = itertools.chain.from_iterable(filter(list.__instancecheck__, values))
        if "\x00" in _JOIN.join(filter(str.__instancecheck__, items)):
            return None
    if float in kinds and "null" in texts and not all(map(math.isfinite, filter(float.__instancecheck__, values))):
        return None
    return encoded


_TEXT_CLEANERS: dict[str, Callable[[Column], Column | None]] = {
    "email": _clean_email_column,
    "phone": _clean_phone_column,
    "first_name": _clean_name_column,
    "last_name": _clean_name_column,
    "timezone": _clean_timezone_column,
    "locale": _clean_locale_column,
}
COLUMNS = (*_TEXT_CLEANERS, "attributes")


def _validate_contact_fully(raw: Any, *, partial: bool) -> tuple[dict[str, Any], dict[str, list[str]]]:
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


# Incoming rows travel by COPY into a session-local staging table (no 3 MB SQL literal to lex and parse). A batch
# of contacts that are all new is then one plain INSERT ... SELECT (INSERT_SQL); otherwise one MERGE (PostgreSQL
# 15+) applies them: it reads the incoming row in both branches, so a field left out (NULL here) keeps its stored
# value while a new contact gets the empty default.
STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS contacts_incoming (
    external_id text, email text, phone text, first_name text, last_name text, timezone text, locale text,
    email_hash text, phone_hash text, email_domain text, attributes jsonb
) ON COMMIT DELETE ROWS;
TRUNCATE contacts_incoming;
"""
STAGING_COLUMNS = (
    "external_id", "email", "phone", "first_name", "last_name", "timezone", "locale", "email_hash", "phone_hash",
    "email_domain",
)  # fmt: skip

# The COPY is CSV with control characters as delimiter (unit separator) and quote (record separator): JSON never
# holds them raw, nor do validated emails, phones, timezones and locales, so almost every value is sent as it is,
# with no per-field escaping; the rest are quoted (see _copy_csv).
DELIMITER = "\x1f"
QUOTE = "\x1e"
COPY_SQL = (
    f"COPY contacts_incoming ({', '.join(STAGING_COLUMNS)}, attributes)"
    " FROM STDIN (FORMAT csv, DELIMITER E'\\x1f', QUOTE E'\\x1e')"
)  # the columns in the order _copy_csv writes them

# New contacts only: no join with the contacts table at all, so no plan to get wrong (during a first load the
# organisation's statistics say it has next to no contacts, and a join reads all of them for every batch). A
# contact that exists already makes it fail on the unique constraint, and the batch takes the MERGE instead.
INSERT_SQL = """
INSERT INTO audiences_contact (organisation_id, external_id, email, phone, first_name, last_name, timezone, locale,
                               email_hash, phone_hash, email_domain, attributes, created_at, updated_at)
SELECT %(org)s, i.external_id, COALESCE(i.email, ''), COALESCE(i.phone, ''), COALESCE(i.first_name, ''),
       COALESCE(i.last_name, ''), COALESCE(i.timezone, ''), COALESCE(i.locale, ''),
       COALESCE(i.email_hash, ''), COALESCE(i.phone_hash, ''), COALESCE(i.email_domain, ''),
       {attributes}, now(), now()
FROM contacts_incoming AS i
"""
# Rebuilding every document to strip nulls costs a tenth of the INSERT; a batch without any null attribute (JSON
# `":null` appears nowhere in its COPY data) skips it.
INSERT_ATTRIBUTES = "COALESCE(i.attributes, '{}'::jsonb)"
INSERT_SQL_STRIP_NULLS = INSERT_SQL.format(attributes=f"jsonb_strip_nulls({INSERT_ATTRIBUTES})")
INSERT_SQL = INSERT_SQL.format(attributes=INSERT_ATTRIBUTES)

UPSERT_SQL = """
MERGE INTO audiences_contact AS c
USING contacts_incoming AS i
ON c.organisation_id = %(org)s AND c.external_id = i.external_id
WHEN MATCHED THEN UPDATE SET
    email = COALESCE(i.email, c.email),
    phone = COALESCE(i.phone, c.phone),
    email_hash = COALESCE(i.email_hash, c.email_hash),
    phone_hash = COALESCE(i.phone_hash, c.phone_hash),
    email_domain = COALESCE(i.email_domain, c.email_domain),
    first_name = COALESCE(i.first_name, c.first_name),
    last_name = COALESCE(i.last_name, c.last_name),
    timezone = COALESCE(i.timezone, c.timezone),
    locale = COALESCE(i.locale, c.locale),
    -- merge: new keys added, given keys replaced, keys given as null removed
    attributes = CASE WHEN i.attributes IS NULL THEN c.attributes
                      ELSE jsonb_strip_nulls(c.attributes || i.attributes) END,
    updated_at = now()
WHEN NOT MATCHED THEN INSERT (organisation_id, external_id, email, phone, first_name, last_name, timezone, locale,
                              email_hash, phone_hash, email_domain, attributes, created_at, updated_at)
VALUES (%(org)s, i.external_id, COALESCE(i.email, ''), COALESCE(i.phone, ''), COALESCE(i.first_name, ''),
        COALESCE(i.last_name, ''), COALESCE(i.timezone, ''), COALESCE(i.locale, ''),
        COALESCE(i.email_hash, ''), COALESCE(i.phone_hash, ''), COALESCE(i.email_domain, ''),
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

    copy_data: bytes  # the rows in COPY format, built here so the writer thread only ships bytes
    external_ids: list[str]
    catalogue: list[dict[str, Any]]
    result: UpsertResult


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Validation makes tens of thousands of small dicts and strings per batch, none in a reference cycle, so
    reference counting frees them all; meanwhile the cyclic collector would run every 700 allocations and, as they
    survive into older generations, walk the whole heap again and again: a quarter of an import's Python time."""
    if not gc.isenabled():  # already paused by an outer caller
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def prepare_batch(rows: Sequence[Any]) -> PreparedBatch:
    """Validate up to MAX_BATCH contacts (pure Python, no queries). Within a batch the last row for an external_id
    wins; earlier ones are reported."""
    if len(rows) > MAX_BATCH:
        raise ValidationError({"contacts": [f"At most {MAX_BATCH} contacts per call."]})
    with _cyclic_gc_paused():
        return _prepare_batch(rows)


def _prepare_batch(rows: Sequence[Any]) -> PreparedBatch:
    fast = _clean_columns(rows)
    if fast is not None:  # the usual batch: every row valid and plain, no id repeated
        external_ids, columns = fast
        return PreparedBatch(
            copy_data=_copy_csv(external_ids, columns),
            external_ids=external_ids,
            catalogue=_catalogue(columns["attributes"]),
            result=UpsertResult(),
        )
    result = UpsertResult()
    # external_id -> (row index, clean contact, plain: every value can go into the COPY unquoted)
    cleaned: dict[str, tuple[int, dict[str, Any], bool]] = {}
    repeated = False
    for index, raw in enumerate(rows):
        clean = _clean_plain(raw)
        plain = clean is not None
        if clean is None:
            clean, errors = _validate_contact_fully(raw, partial=False)
            if errors:
                result.rejected.append({"index": index, "external_id": _raw_id(raw), "errors": errors})
                continue
        external_id = clean["external_id"]
        if external_id in cleaned:
            repeated = True
            result.rejected.append(
                {
                    "index": cleaned[external_id][0],
                    "external_id": external_id,
                    "errors": {"external_id": [f"Repeated later in this batch (row {index}), which was used instead."]},
                }
            )
        cleaned[external_id] = (index, clean, plain)
    if repeated or result.rejected:
        result.rejected.sort(key=lambda item: item["index"])
    entries = list(cleaned.values())
    contacts = [clean for _, clean, _ in entries]
    columns = {key: [contact.get(key) for contact in contacts] for key in COLUMNS}
    quoted = [row for row, (_, _, plain) in enumerate(entries) if not plain]
    return PreparedBatch(
        copy_data=_copy_csv(list(cleaned), columns, quoted=quoted),
        external_ids=list(cleaned),
        catalogue=_catalogue(columns["attributes"]),
        result=result,
    )


_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_EMPTY = QUOTE + QUOTE  # an empty string; an empty unquoted field is NULL (left out)


def encode_attributes(attributes: dict[str, Any]) -> str:
    """Compact JSON, as json.dumps(separators=(",", ":"), ensure_ascii=False) writes it up to number spelling.

    orjson is seven times faster than the standard encoder, which was an eighth of an import's Python time; it
    refuses integers beyond 64 bits, which the standard encoder (and jsonb) take."""
    try:
        return orjson.dumps(attributes).decode()
    except TypeError:
        return _json_encode(attributes)


def _csv_field(value: str | None) -> str:
    if value is None:
        return ""
    if not value:
        return _EMPTY
    if _unsafe(value):
        return QUOTE + value.replace(QUOTE, _EMPTY) + QUOTE
    return value


def _copy_csv(external_ids: list[str], columns: dict[str, Column], *, quoted: Sequence[int] = ()) -> bytes:
    """The staging rows in COPY format, emails and phones encrypted and their look-up hashes added
    (audiences.pii): a field left out (None) stays left out (NULL), an empty one clears all three.

    Built column by column, in the order of STAGING_COLUMNS then attributes: one nonce draw and one loop per
    sealed column, and rows joined by zip and str.join. The rows listed in `quoted` (not plain, see _clean_plain:
    something COPY would have to quote) are then rebuilt with quoting."""
    emails, phones = columns["email"], columns["phone"]
    seal = sealer()
    copied = [
        external_ids,
        seal.encrypt_many(emails),
        seal.encrypt_many(phones),
        columns["first_name"], columns["last_name"], columns["timezone"], columns["locale"],
        seal.hash_many(emails),
        seal.hash_many(phones),
        [None if email is None else email_domain(email) for email in emails],
        columns.get("attributes_json")
        or [None if attributes is None else encode_attributes(attributes) for attributes in columns["attributes"]],
    ]  # fmt: skip
    as_copied = [
        ["" if value is None else value or _EMPTY for value in column] if None in column or "" in column else column
        for column in copied
    ]
    lines = list(map(DELIMITER.join, zip(*as_copied, strict=True)))
    for row in quoted:
        lines[row] = DELIMITER.join([_csv_field(column[row]) for column in copied])
    lines.append("")
    return "\n".join(lines).encode()


def write_batch(
    organisation: Organisation,
    batch: PreparedBatch,
    *,
    try_insert: bool = True,
    wait_turn: Callable[[], bool] | None = None,
) -> tuple[UpsertResult, bool]:
    """Write a prepared batch in one transaction: the upsert, then the attribute catalogue. Returns the result and
    whether every contact was new (the INSERT path), which tells a stream whether to keep trying it.

    try_insert=False goes straight to the MERGE (a stream that has met existing contacts). A stream's writers
    pass wait_turn: called once the rows are staged, it returns when every earlier batch has committed, with
    try_insert as they left it, so staging overlaps the previous batch's write while writes stay in order."""
    result = batch.result
    if not batch.external_ids:
        return result, False
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(STAGING_SQL)
        with cursor.cursor.copy(COPY_SQL) as copy:
            copy.write(batch.copy_data)
        if wait_turn is not None:
            try_insert = wait_turn()
        # One writer per organisation at a time, so the created/updated split below is exact and two batches
        # creating the same new contact cannot race.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext('contacts-upsert'), hashtext(%s))", [str(organisation.pk)]
        )
        inserted = try_insert and _insert_new(cursor, organisation, nulls=b'":null' in batch.copy_data)
        if inserted:
            existing = 0
        else:
            cursor.execute(EXISTING_SQL, {"org": organisation.pk})
            existing = cursor.fetchone()[0]
            cursor.execute(UPSERT_SQL, {"org": organisation.pk})
        if batch.catalogue:
            cursor.execute(CATALOGUE_SQL, {"seen": json.dumps(batch.catalogue), "org": organisation.pk})
    result.updated = existing
    result.created = len(batch.external_ids) - existing
    return result, inserted


def _insert_new(cursor: Any, organisation: Organisation, *, nulls: bool) -> bool:
    """INSERT the staged contacts if none exists yet; False (nothing written) if one does."""
    try:
        with transaction.atomic():  # a savepoint: the staged rows stay for the MERGE
            cursor.execute(INSERT_SQL_STRIP_NULLS if nulls else INSERT_SQL, {"org": organisation.pk})
    except IntegrityError as exc:
        cause = exc.__cause__
        if getattr(cause, "sqlstate", None) == "23505" and "contact_unique_external_id" in str(cause):
            return False
        raise
    return True


def contacts_upsert_rows(*, organisation: Organisation, rows: Sequence[Any]) -> UpsertResult:
    """Validate and upsert up to MAX_BATCH contacts in one SQL statement. Bad rows are reported by index and
    skipped; the good ones are written."""
    batch = prepare_batch(rows)
    # A single contact (the console's create and update) goes straight to the MERGE; a batch tries the INSERT.
    return write_batch(organisation, batch, try_insert=len(batch.external_ids) > 1)[0]


def contacts_upsert_stream(
    *,
    organisation: Organisation,
    batches: Iterable[tuple[Any, Sequence[Any]]],
    on_batch: Callable[[Any, UpsertResult], None] | None = None,
) -> UpsertResult:
    """Upsert many (tag, rows) batches, calling on_batch(tag, result) as each is written.

    With more than one batch, the next batch is validated in this thread while two writer threads, each with its
    own connection, stage and write the previous ones (psycopg releases the GIL while PostgreSQL works), so an
    import keeps Python and the database busy at once; batches still write and commit one at a time, in order
    (_WriteTurns). A single batch is written here, in the caller's connection and transaction.

    on_batch(tag, result) runs in this thread, in batch order, after the batch has committed; the next one or two
    batches may already have committed by then. If on_batch (or the caller's iterator) raises, the batches still
    waiting are rolled back, but those already committed stay, unreported: a resumed import re-sends them and
    counts them as updates.

    The cyclic garbage collector is paused throughout (see _cyclic_gc_paused): the caller's batches, a CSV
    reader's rows for instance, are as many acyclic objects as validation makes."""
    with _cyclic_gc_paused():
        return _upsert_stream(organisation, batches, on_batch)


def _upsert_stream(
    organisation: Organisation,
    batches: Iterable[tuple[Any, Sequence[Any]]],
    on_batch: Callable[[Any, UpsertResult], None] | None,
) -> UpsertResult:
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
    if second is None or connection.in_atomic_block:
        # Inside the caller's transaction the writes must share its connection: a second connection would not see
        # its uncommitted rows and would wait forever on the locks it holds (the per-organisation upsert lock).
        all_new_here = True
        for tag, rows in itertools.chain([(first_tag, None)], [second] if second else [], iterator):
            batch = prepared if rows is None else prepare_batch(rows)
            result, inserted = write_batch(organisation, batch, try_insert=all_new_here)
            all_new_here = all_new_here and inserted
            account(tag, result)
        return total

    # Two writer threads, each with its own connection: while one writes batch k, the other stages batch k+1
    # (its COPY into the session's staging table) and waits for its turn; this thread validates batch k+2.
    turns = _WriteTurns()
    writer_connections: list[Any] = []

    def register_thread() -> None:
        writer_connections.append(connections[DEFAULT_DB_ALIAS])  # this thread's own connection wrapper

    def write_in_thread(index: int, batch: PreparedBatch) -> UpsertResult:
        try:
            if not batch.external_ids:  # every row rejected: nothing to write, but the turn still passes in order
                turns.wait_for(index)
                turns.done(index, all_new=True)
                return batch.result
            result, inserted = write_batch(organisation, batch, wait_turn=lambda: turns.wait_for(index))
        except BaseException:
            turns.abandon(after=index)
            raise
        # After the commit: the next batch may now write (and sees what this one wrote).
        turns.done(index, all_new=inserted)
        return result

    try:
        with (
            ThreadPoolExecutor(
                max_workers=WRITERS, thread_name_prefix="contacts-writer", initializer=register_thread
            ) as writers,
            _writer_responsive(),
        ):
            pending: deque[tuple[Any, Future[UpsertResult]]] = deque()
            try:
                pending.append((first_tag, writers.submit(write_in_thread, 0, prepared)))
                for index, (tag, rows) in enumerate(itertools.chain([second], iterator), start=1):
                    prepared = prepare_batch(rows)  # overlaps with the writes in progress
                    if len(pending) == WRITERS:
                        done_tag, future = pending.popleft()
                        account(done_tag, future.result())
                    pending.append((tag, writers.submit(write_in_thread, index, prepared)))
                while pending:
                    done_tag, future = pending.popleft()
                    account(done_tag, future.result())
            finally:
                turns.abandon()  # on an error here, writers still waiting for their turn give up
                for _, future in pending:
                    future.exception()  # wait for them to roll back
    finally:
        # The pool has shut down: close its threads' connections from here (idle, and never used again).
        for writer_connection in writer_connections:
            writer_connection.inc_thread_sharing()
            try:
                writer_connection.close()
            finally:
                writer_connection.dec_thread_sharing()
    return total


WRITERS = 2


class StreamAbandoned(Exception):
    """An earlier batch of the stream failed: this one is rolled back, not written out of order."""


class _WriteTurns:
    """Batches of a stream write (lock, INSERT or MERGE, commit) strictly in order, one at a time; whether to try
    the INSERT passes from each to the next (a batch that met existing contacts switches the rest to the MERGE)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next = 0
        self._all_new = True
        self._abandoned_after = sys.maxsize

    def wait_for(self, index: int) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: self._next == index or self._abandoned_after < index)
            if self._abandoned_after < index:
                raise StreamAbandoned
            return self._all_new

    def done(self, index: int, all_new: bool) -> None:
        with self._changed:
            self._all_new = self._all_new and all_new
            self._next = index + 1
            self._changed.notify_all()

    def abandon(self, after: int = -1) -> None:
        """Batches after `after` will not write (a batch that failed names itself; the stream, on its own error,
        abandons every batch still waiting). An earlier batch keeps its turn, so the error a caller sees first is
        the failed batch's own."""
        with self._changed:
            self._abandoned_after = min(self._abandoned_after, after)
            self._changed.notify_all()


WRITER_SWITCH_INTERVAL = 0.001  # seconds


@contextmanager
def _writer_responsive() -> Iterator[None]:
    """While this thread validates, the writer thread gets the GIL back within a millisecond, not five.

    A batch's write is a dozen round trips (lock, staging, COPY, INSERT, catalogue, commit), and after each the
    writer waits for the GIL, which the validating thread gives up only every switch interval: at the default
    5 ms that idled PostgreSQL for a sixth of the import."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, WRITER_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


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


CATALOGUE_SAMPLE = 250


def _catalogue(documents: Sequence[Mapping[str, Any] | None], max_examples: int = 5) -> list[dict[str, Any]]:
    """Each attribute name in a batch's documents (None: left out) with its most common type and a few distinct
    example values.

    Types and examples come from the first CATALOGUE_SAMPLE documents; later ones only add names not seen yet, so
    a 10,000-row batch costs little more than a 250-row one (250 values are plenty to tell a type by)."""
    kinds: dict[str, Counter[str]] = {}
    examples: dict[str, list[str]] = {}

    def observe(name: str, value: Any) -> None:
        kind = attribute_type(value)
        if kind is None:
            return
        counter = kinds.get(name)
        if counter is None:
            counter = kinds[name] = Counter()
            examples[name] = []
        counter[kind] += 1
        seen = examples[name]
        if len(seen) < max_examples:
            text = json.dumps(value) if kind == "list" else str(value).lower() if kind == "boolean" else str(value)
            if text[:80] not in seen:
                seen.append(text[:80])

    for attributes in documents[:CATALOGUE_SAMPLE]:
        for name, value in (attributes or {}).items():
            observe(name, value)
    known = set(kinds)
    for attributes in documents[CATALOGUE_SAMPLE:]:
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
