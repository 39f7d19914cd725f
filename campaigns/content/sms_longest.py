"""An SMS's length for the longest values the organisation's contacts hold, beside the previewed contact's.

A template that fits one SMS for "Alex" may not for "Maximiliane-Charlotte", and one "ë" in a name turns the whole
message into UCS-2, 70 units a part instead of 160. The send measures every rendered message and refuses those over
the campaign's limit (delivery.sending); this tells the marketer before that, from what the contacts really hold:
for each contact field and attribute the template prints, the longest value seen (in GSM-7 septets among the
values GSM-7 can carry, in UTF-16 units among all), in one aggregate over the organisation's contacts, and when some
value cannot be carried by GSM-7, an example of one. The template is then rendered with values of those lengths in
place of the previewed contact's (a string of N septets or units counts as any other of that length), and measured.

The per-field maxima come from different contacts, so the result is an upper bound: "up to N parts". Values held
only by an external user_360 are not seen (our stored contacts are), nor is the text of email and phone, which are
encrypted at rest. Control characters in stored ASCII values (a tab) are not flagged here (the send's count, which
is exact, does); numbers and booleans keep the previewed contact's value, for templates that compute with them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from django.core.cache import cache
from django.db import connection
from jinja2 import nodes

from campaigns.content.render import render_message
from campaigns.content.sms import GSM7_CHARACTERS, GSM7_EXTENSION, sms_length, sms_over_limit
from campaigns.content.templates import TemplateProblem
from campaigns.models import Campaign

# Contact fields stored as plain text, which the scan can measure.
MEASURED_FIELDS = ("first_name", "last_name", "external_id", "timezone", "locale")
# The largest ids a real send can have: links that carry them are as long as they can get.
LONGEST_ID = str(2**63 - 1)
CACHE_SECONDS = 300  # the preview asks on every pause in typing; contacts' longest values change slowly

# Per printed field: the most septets among values GSM-7 can carry, the most UTF-16 units among all, and whether
# any value needs UCS-2. ASCII values (most of them) take the cheap path: only the backtick is outside GSM-7, and the
# two-septet characters are counted with translate(); the others go through the regular expressions.
LONGEST_VALUES_SQL = """
SELECT name, max(septets) FILTER (WHERE NOT is_foreign), max(units), bool_or(is_foreign)
FROM (
    SELECT name,
           CASE WHEN ascii THEN strpos(text, '`') > 0 ELSE text ~ %(non_gsm)s END AS is_foreign,
           CASE WHEN ascii THEN 2 * length(text) - length(translate(text, %(ascii_extension)s, ''))
                ELSE length(text) + regexp_count(text, %(extension)s) END AS septets,
           CASE WHEN ascii THEN length(text) ELSE length(text) + regexp_count(text, %(astral)s) END AS units
    FROM (SELECT f.name, f.text, octet_length(f.text) = length(f.text) AS ascii
          FROM audiences_contact c
          CROSS JOIN LATERAL (VALUES {values}) AS f(name, text)
          WHERE c.organisation_id = %(org)s AND f.text <> '') AS v
) AS measured
GROUP BY name
"""
# An example of a value GSM-7 cannot carry (the shortest of the first few found), for the field that has one.
NON_GSM_EXAMPLE_SQL = """
SELECT text FROM (
    SELECT f.text FROM audiences_contact c CROSS JOIN LATERAL (VALUES {value}) AS f(text)
    WHERE c.organisation_id = %(org)s
      AND CASE WHEN octet_length(f.text) = length(f.text) THEN strpos(f.text, '`') > 0 ELSE f.text ~ %(non_gsm)s END
    LIMIT 20
) AS found
ORDER BY length(text), text LIMIT 1
"""


def _bracket(characters: str) -> str:
    """Characters for a PostgreSQL regular expression bracket expression (ARE: backslash escapes inside it)."""
    return "".join("\\" + ch if ch in "\\]^-[" else ch for ch in characters)


_PATTERNS = {
    "non_gsm": f"[^{_bracket(GSM7_CHARACTERS)}]",
    "extension": f"[{_bracket(GSM7_EXTENSION)}]",
    "ascii_extension": "".join(ch for ch in GSM7_EXTENSION if ch.isascii()),
    "astral": r"[\U00010000-\U0010FFFF]",
}


@dataclass(frozen=True)
class FieldLongest:
    septets: int  # the most septets among the values GSM-7 can carry (0: none can)
    units: int  # the most UTF-16 units among all values
    non_gsm: bool  # some value needs UCS-2


@dataclass(frozen=True)
class LongestValues:
    fields: dict[str, FieldLongest]
    example: tuple[str, str] | None  # (field, value): a value GSM-7 cannot carry


def _chain(node: Any) -> tuple[str, list[str]] | None:
    """`a.b.c` as ("a", ["b", "c"]); None for anything but attribute lookups on a name."""
    names: list[str] = []
    while isinstance(node, nodes.Getattr):
        names.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    return node.name, names[::-1]


def fields_printed(source: str) -> list[str]:
    """The measurable contact fields and attributes an SMS template refers to, as "first_name" or
    "attributes.<name>", in the order they first appear; through a `{% set a = contact.attributes %}` alias too
    (written so, a tight SMS saves its braces)."""
    try:
        tree = jinja2.Environment(autoescape=False).parse(source)  # noqa: S701 - parsed, never rendered
    except jinja2.TemplateSyntaxError:
        return []
    aliases: dict[str, list[str]] = {"contact": []}
    for assign in tree.find_all(nodes.Assign):
        target, value = (
            assign.target,
            _chain(assign.node) if isinstance(assign.node, nodes.Getattr | nodes.Name) else None,
        )
        if isinstance(target, nodes.Name) and value is not None and value[0] == "contact":
            aliases[target.name] = value[1]
    found: dict[str, None] = {}
    for node in tree.find_all(nodes.Getattr):
        chain = _chain(node)
        if chain is None or chain[0] not in aliases:
            continue
        path = aliases[chain[0]] + chain[1]
        if len(path) >= 2 and path[0] == "attributes":
            found[f"attributes.{path[1]}"] = None
        elif len(path) == 1 and path[0] in MEASURED_FIELDS:
            found[path[0]] = None
    return list(found)


def longest_values_cache_key(organisation_id: Any, fields: list[str]) -> str:
    return f"sms-longest:{organisation_id}:{hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]}"


def _column(index: int, field: str, params: dict[str, Any]) -> str:
    if field.startswith("attributes."):
        params[f"a{index}"] = field.removeprefix("attributes.")
        return f"c.attributes ->> %(a{index})s"
    if field not in MEASURED_FIELDS:  # column names come from our own list, never from the template's text
        raise ValueError(field)
    return f"c.{field}"


def longest_values(organisation_id: Any, fields: list[str]) -> LongestValues:
    """One aggregate over the organisation's contacts for the printed fields, and one short search for an example
    when some value needs UCS-2 (cached a few minutes per field set)."""
    if not fields:
        return LongestValues({}, None)
    key = longest_values_cache_key(organisation_id, fields)
    cached = cache.get(key)
    if cached is not None:
        return cached
    params: dict[str, Any] = {"org": organisation_id, **_PATTERNS}
    columns = {}
    for index, field in enumerate(fields):
        params[f"n{index}"] = field
        columns[field] = _column(index, field, params)
    values = ", ".join(f"(%(n{index})s, {columns[field]})" for index, field in enumerate(fields))
    found: dict[str, FieldLongest] = {}
    example = None
    with connection.cursor() as cursor:
        cursor.execute(LONGEST_VALUES_SQL.format(values=values), params)
        for name, septets, units, non_gsm in cursor.fetchall():
            found[name] = FieldLongest(septets or 0, units or 0, bool(non_gsm))
        first = next((field for field in fields if field in found and found[field].non_gsm), None)
        if first is not None:
            cursor.execute(NON_GSM_EXAMPLE_SQL.format(value=f"({columns[first]})"), params)
            row = cursor.fetchone()
            example = (first, row[0]) if row else None
    result = LongestValues(found, example)
    cache.set(key, result, CACHE_SECONDS)
    return result


def _with_lengths(profile: Mapping[str, Any], lengths: Mapping[str, int]) -> dict[str, Any]:
    """The profile with each measured field a string of that many units ("x" is one septet and one code unit)."""
    changed = dict(profile)
    attributes = changed["attributes"] = dict(profile.get("attributes") or {})
    for field, length in lengths.items():
        if field.startswith("attributes."):
            name = field.removeprefix("attributes.")
            if isinstance(attributes.get(name, ""), str):
                attributes[name] = "x" * length
        else:
            changed[field] = "x" * length
    return changed


def _label(field: str) -> str:
    return field.removeprefix("attributes.").replace("_", " ")


def sms_length_for_longest_values(
    campaign: Campaign,
    content: Mapping[str, Any],
    *,
    profile: Mapping[str, Any],
    event: Mapping[str, Any] | None = None,
    multipart: bool | None = None,
) -> dict[str, Any]:
    """The SMS rendered with the longest values seen in place of the previewed contact's, measured: the parts it
    comes to at most, in which encoding, and what the send would say of it. `multipart` defaults to what the
    content and campaign allow."""
    from campaigns.content.preview import message_context  # preview imports this module

    body = content.get("body") or ""
    fields = fields_printed(body)
    seen = longest_values(campaign.organisation_id, fields)
    if multipart is None:
        multipart = content.get("allow_multipart") is True or campaign.sms_allow_multipart

    def measured(lengths: Mapping[str, int], *, ucs2: bool = False) -> dict[str, Any]:
        context = message_context(campaign, _with_lengths(profile, lengths), LONGEST_ID, LONGEST_ID, event=event)
        rendered = render_message("sms", content, context)
        return sms_length(rendered["body"], ucs2=ucs2).as_dict()

    any_non_gsm = any(longest.non_gsm for longest in seen.fields.values())
    try:
        gsm = measured({field: longest.septets for field, longest in seen.fields.items()})
        # One value GSM-7 cannot carry makes the whole message UCS-2: the longest values, counted so, bound it.
        worst = measured({field: longest.units for field, longest in seen.fields.items()}, ucs2=any_non_gsm)
    except TemplateProblem as exc:
        return {"fields": fields, "problem": f"Could not render with the longest values seen: {exc}"}
    if worst["segments"] < gsm["segments"]:
        worst = gsm  # GSM-7 values heavy in two-septet characters can outweigh the longest in code units
    example = None
    if any_non_gsm and seen.example is not None:
        field, value = seen.example
        example = {"field": field, "value": value, "characters": list(sms_length(value).non_gsm)}
        if worst["encoding"] == "UCS-2" and not worst["non_gsm"]:
            worst["non_gsm"] = example["characters"]  # counted as UCS-2 because of them
        summary = (
            f"up to {_parts(gsm)} ({gsm['encoding']}); "
            f"up to {_parts(worst)} (UCS-2 when a {_label(field)} like {value!r} is used)"
        )
    elif any_non_gsm:
        summary = f"up to {_parts(gsm)} ({gsm['encoding']}); up to {_parts(worst)} (UCS-2)"
    else:
        summary = f"up to {_parts(worst)} ({worst['encoding']})"
    return {
        "fields": fields,
        "longest": {
            field: {"septets": longest.septets, "units": longest.units, "non_gsm": longest.non_gsm}
            for field, longest in seen.fields.items()
        },
        "gsm": gsm,
        "worst": worst,
        "parts": max(gsm["segments"], worst["segments"]),
        "non_gsm_example": example,
        "summary": summary,
        "refusal": sms_over_limit(worst, multipart=multipart),
    }


def _parts(length: Mapping[str, Any]) -> str:
    return f"{length['segments']} part" + ("" if length["segments"] == 1 else "s")
