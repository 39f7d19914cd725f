"""An SMS's length for the longest values the organisation's contacts hold, beside the previewed contact's.

A template that fits one SMS for "Alex" may not for "Maximiliane-Charlotte", and one "ë" in a name turns the whole
message into UCS-2, 70 units a part instead of 160. The send measures every rendered message and refuses those over
the campaign's limit (delivery.sending); this tells the marketer before that, from what the contacts really hold:
for each contact field and attribute the template prints, the longest value seen (as GSM-7 septets, and as UTF-16
units over all values) and an example of a value GSM-7 cannot carry, in one scan of the organisation's contacts.

The per-field maxima come from different contacts, so the result is an upper bound: "up to N parts". Values held
only by an external user_360 are not seen (our stored contacts are), nor is the text of email and phone, which are
encrypted at rest.
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

from audiences.jsonb import jsonb_loads
from campaigns.content.render import render_message
from campaigns.content.sms import GSM7_CHARACTERS, GSM7_EXTENSION, sms_length, sms_over_limit
from campaigns.content.templates import TemplateProblem
from campaigns.models import Campaign

# Contact fields stored as plain text, which the scan can measure.
MEASURED_FIELDS = ("first_name", "last_name", "external_id", "timezone", "locale")
# The largest ids a real send can have: links that carry them are as long as they can get.
LONGEST_ID = str(2**63 - 1)
CACHE_SECONDS = 300  # the preview asks on every pause in typing; contacts' longest values change slowly

LONGEST_VALUES_SQL = """
WITH v AS (
    SELECT f.name, f.value #>> '{{}}' AS text, f.value
    FROM audiences_contact c
    CROSS JOIN LATERAL (VALUES {values}) AS f(name, value)
    WHERE c.organisation_id = %(org)s AND jsonb_typeof(f.value) IN ('string', 'number', 'boolean')
      AND f.value #>> '{{}}' <> ''
), measured AS (
    SELECT name, text, value, translate(text, %(gsm)s, '') AS foreign_chars,
           2 * length(text) - length(translate(text, %(extension)s, '')) AS septets,
           length(text) + regexp_count(text, %(astral)s) AS units
    FROM v
)
(SELECT DISTINCT ON (name) 'gsm' AS kind, name, value FROM measured WHERE foreign_chars = ''
 ORDER BY name, septets DESC, text)
UNION ALL
(SELECT DISTINCT ON (name) 'any', name, value FROM measured ORDER BY name, units DESC, text)
UNION ALL
(SELECT DISTINCT ON (name) 'foreign', name, value FROM measured WHERE foreign_chars <> ''
 ORDER BY name, length(text), text)
"""


@dataclass(frozen=True)
class LongestValues:
    gsm: dict[str, Any]  # field -> the longest value GSM-7 can carry (septets)
    any: dict[str, Any]  # field -> the longest value (UTF-16 units)
    foreign: dict[str, str]  # field -> the shortest value GSM-7 cannot carry, as an example


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


def longest_values(organisation_id: Any, fields: list[str]) -> LongestValues:
    """One scan of the organisation's contacts for the printed fields (cached a few minutes per field set)."""
    if not fields:
        return LongestValues({}, {}, {})
    digest = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]
    key = f"sms-longest:{organisation_id}:{digest}"
    cached = cache.get(key)
    if cached is not None:
        return LongestValues(*cached)
    params: dict[str, Any] = {
        "org": organisation_id,
        "gsm": GSM7_CHARACTERS,
        "extension": GSM7_EXTENSION,
        "astral": r"[\U00010000-\U0010FFFF]",
    }
    values = []
    for index, field in enumerate(fields):
        params[f"n{index}"] = field
        if field.startswith("attributes."):
            params[f"a{index}"] = field.removeprefix("attributes.")
            values.append(f"(%(n{index})s, c.attributes -> %(a{index})s)")
        elif field in MEASURED_FIELDS:  # a column name from our own list, never the template's text
            values.append(f"(%(n{index})s, to_jsonb(c.{field}))")
    found: dict[str, dict[str, Any]] = {"gsm": {}, "any": {}, "foreign": {}}
    if not values:
        return LongestValues({}, {}, {})
    with connection.cursor() as cursor:
        cursor.execute(LONGEST_VALUES_SQL.format(values=", ".join(values)), params)
        for kind, name, value in cursor.fetchall():
            parsed = jsonb_loads(value) if isinstance(value, str | bytes) else value
            found[kind][name] = parsed if kind != "foreign" else str(parsed)
    result = (found["gsm"], found["any"], found["foreign"])
    cache.set(key, result, CACHE_SECONDS)
    return LongestValues(*result)


def _with_values(profile: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    changed = dict(profile)
    changed["attributes"] = dict(profile.get("attributes") or {})
    for field, value in values.items():
        if field.startswith("attributes."):
            changed["attributes"][field.removeprefix("attributes.")] = value
        else:
            changed[field] = value
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

    def measured(values: Mapping[str, Any], *, ucs2: bool = False) -> dict[str, Any]:
        context = message_context(campaign, _with_values(profile, values), LONGEST_ID, LONGEST_ID, event=event)
        rendered = render_message("sms", content, context)
        return sms_length(rendered["body"], ucs2=ucs2).as_dict()

    try:
        gsm = measured(seen.gsm)
        # One value GSM-7 cannot carry makes the whole message UCS-2: the longest values, counted so, bound it.
        worst = measured(seen.any, ucs2=bool(seen.foreign))
    except TemplateProblem as exc:
        return {"fields": fields, "problem": f"Could not render with the longest values seen: {exc}"}
    if worst["segments"] < gsm["segments"]:
        worst = gsm  # GSM-7 values heavy in two-septet characters can outweigh the longest in code units
    example = None
    if seen.foreign:
        field, value = next(iter(seen.foreign.items()))
        example = {"field": field, "value": value, "characters": list(sms_length(value).non_gsm)}
        if worst["encoding"] == "UCS-2" and not worst["non_gsm"]:
            worst["non_gsm"] = example["characters"]  # counted as UCS-2 because of them
        summary = (
            f"up to {_parts(gsm)} ({gsm['encoding']}); "
            f"up to {_parts(worst)} (UCS-2 when a {_label(field)} like {value!r} is used)"
        )
    else:
        summary = f"up to {_parts(worst)} ({worst['encoding']})"
    return {
        "fields": fields,
        "values": {field: seen.any.get(field, seen.gsm.get(field)) for field in fields},
        "gsm": gsm,
        "worst": worst,
        "parts": max(gsm["segments"], worst["segments"]),
        "non_gsm_example": example,
        "summary": summary,
        "refusal": sms_over_limit(worst, multipart=multipart),
    }


def _parts(length: Mapping[str, Any]) -> str:
    return f"{length['segments']} part" + ("" if length["segments"] == 1 else "s")
