"""Segment rules: a JSON tree compiled into ONE SQL boolean expression over `audiences_contact`.

Grammar (every node is an object):

    {"and": [node, ...]}            all children hold              (1-50 children)
    {"or":  [node, ...]}            at least one child holds
    {"not": node}                   the child does not hold
    {"field": F, "op": OP, "value": V}
    {"segment": "<uuid>"}           membership of another segment of the organisation
    {"event": X, "min_count": N, "within_days": D}   behaviour (see below)

F is a standard field (external_id, email, phone, email_domain, first_name, last_name, timezone, locale,
created_at, updated_at) or `attributes.<name>` for an attribute in the organisation's catalogue, whose type decides the
operators allowed:

    string   eq neq contains starts_with in not_in exists not_exists
    number   eq neq gt gte lt lte between in not_in exists not_exists
    boolean  eq neq exists not_exists
    date     eq before after gt gte lt lte between within_last_days exists not_exists
    list     contains exists not_exists

email and phone are encrypted at rest: eq neq in not_in exists not_exists only (keyed hashes, audiences.pii).

The spellings equals, greater_than and less_than are aliases of eq, gt and lt (OPERATOR_ALIASES; contains is
spelled the same), here and in trigger conditions.

Behaviour: {"event": X, "min_count": N, "within_days": D} holds when the contact did event X at least N times
(default 1) in the last D days (default: ever), compiled to an EXISTS / a bounded count over the events index.

Every condition compiles to a two-valued boolean (missing values make it false, never NULL), so NOT is an exact
complement. Errors name the offending node with a JSON Pointer (e.g. "/and/1/value").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audiences.pii import pii_hash

TABLE = '"audiences_contact"'
ATTRS = f"{TABLE}.attributes"

STANDARD_FIELDS: dict[str, str] = {
    "external_id": "string",
    "email": "string",
    "phone": "string",
    "email_domain": "string",
    "first_name": "string",
    "last_name": "string",
    "timezone": "string",
    "locale": "string",
    "created_at": "date",
    "updated_at": "date",
}
OPERATORS: dict[str, tuple[str, ...]] = {
    "string": ("eq", "neq", "contains", "starts_with", "in", "not_in", "exists", "not_exists"),
    "number": ("eq", "neq", "gt", "gte", "lt", "lte", "between", "in", "not_in", "exists", "not_exists"),
    "boolean": ("eq", "neq", "exists", "not_exists"),
    "date": ("eq", "before", "after", "gt", "gte", "lt", "lte", "between", "within_last_days", "exists", "not_exists"),
    "list": ("contains", "exists", "not_exists"),
}
# Emails and phones are encrypted at rest (audiences.pii): conditions on them compare keyed hashes, so equality,
# lists and presence work, substrings do not (email_domain, kept in clear, covers matching by domain).
ENCRYPTED_FIELDS = {"email": "email_hash", "phone": "phone_hash"}
ENCRYPTED_OPERATORS = ("eq", "neq", "in", "not_in", "exists", "not_exists")
ALL_OPERATORS = sorted({op for ops in OPERATORS.values() for op in ops})
# Long spellings of the operators, accepted wherever an operator is (segment rules and trigger conditions).
OPERATOR_ALIASES: dict[str, str] = {"equals": "eq", "greater_than": "gt", "less_than": "lt"}


def canonical_operator(op: Any) -> Any:
    """The operator an alias stands for (anything else unchanged, to be judged by the caller)."""
    return OPERATOR_ALIASES.get(op, op) if isinstance(op, str) else op


ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_CHILDREN = 50
MAX_DEPTH = 10
MAX_CONDITIONS = 200
MAX_IN_VALUES = 1000
# A plausible calendar date at the start of a string: month 01-12, day 01-31.
ISO_DATE = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"

COMPARISONS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "before": "<", "after": ">"}


@dataclass
class RuleProblem:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path or "/", "message": self.message}


class RuleError(ValueError):
    """One or more invalid nodes. `problems` point at each with a JSON Pointer."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__("; ".join(f"{p.path or '/'}: {p.message}" for p in problems))
        self.problems = problems

    def as_list(self) -> list[dict[str, str]]:
        return [p.as_dict() for p in self.problems]

    def as_messages(self) -> list[str]:
        """One "<JSON Pointer>: <problem>" string per bad node, for field-level validation errors."""
        return [f"{p.path or '/'}: {p.message}" for p in self.problems]


@dataclass
class Compiled:
    sql: str
    params: list[Any] = field(default_factory=list)


# Resolves a {"segment": id} node: returns the compiled membership expression, or raises RuleError.
SegmentCompiler = Callable[[UUID, str, frozenset[UUID]], Compiled]


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _parse_moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value, UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        if "T" in text or " " in text:
            moment = parse_datetime(text)
            if moment is None:
                return None
            return moment if timezone.is_aware(moment) else timezone.make_aware(moment, UTC)
        day = parse_date(text)
    except ValueError:
        return None
    return datetime(day.year, day.month, day.day, tzinfo=UTC) if day else None


class RuleCompiler:
    def __init__(
        self,
        *,
        attribute_types: Mapping[str, str],
        compile_segment: SegmentCompiler | None = None,
    ) -> None:
        self.attribute_types = attribute_types
        self.compile_segment = compile_segment
        self.problems: list[RuleProblem] = []
        self.conditions = 0

    # -- entry point -----------------------------------------------------------------------------------------

    def compile(self, node: Any, *, path: str = "", seen: frozenset[UUID] = frozenset()) -> Compiled:
        compiled = self._node(node, path, 0, seen)
        if self.problems:
            raise RuleError(self.problems)
        return compiled

    # -- nodes ---------------------------------------------------------------------------------------------------

    def _fail(self, path: str, message: str) -> Compiled:
        self.problems.append(RuleProblem(path, message))
        return Compiled("FALSE")

    def _node(self, node: Any, path: str, depth: int, seen: frozenset[UUID]) -> Compiled:
        if depth > MAX_DEPTH:
            return self._fail(path, f"Rules nest at most {MAX_DEPTH} levels deep.")
        if not isinstance(node, Mapping):
            return self._fail(path, "Each rule must be an object.")
        for group in ("and", "or"):
            if group in node:
                if len(node) != 1:
                    return self._fail(path, f'An "{group}" group has no other keys.')
                return self._group(group, node[group], f"{path}/{group}", depth, seen)
        if "not" in node:
            if len(node) != 1:
                return self._fail(path, 'A "not" node has no other keys.')
            inner = self._node(node["not"], f"{path}/not", depth + 1, seen)
            return Compiled(f"(NOT {inner.sql})", inner.params)
        if "segment" in node:
            return self._segment(node, path, seen)
        if "field" in node:
            return self._condition(node, path)
        if "event" in node:
            return self._event(node, path)
        return self._fail(
            path, 'Unknown rule: use "and", "or", "not", "segment", "event", or a condition with "field".'
        )

    def _event(self, node: Mapping[str, Any], path: str) -> Compiled:
        """{"event": X, "min_count": N (default 1), "within_days": D (optional)}: the contact did X at least N
        times (in the last D days). Reads the (organisation, contact, type, occurred_at) index of events."""
        self.conditions += 1
        unknown = sorted(set(node) - {"event", "min_count", "within_days"})
        if unknown:
            return self._fail(f"{path}/{unknown[0]}", "Unknown key in an event condition.")
        event_type = node.get("event")
        if not isinstance(event_type, str) or not re.match(r"^[A-Za-z0-9_.:\-]{1,100}$", event_type):
            return self._fail(f"{path}/event", "Give an event type.")
        min_count = node.get("min_count", 1)
        if isinstance(min_count, bool) or not isinstance(min_count, int) or not 1 <= min_count <= 1_000_000:
            return self._fail(f"{path}/min_count", "A whole number from 1.")
        days = node.get("within_days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650):
            return self._fail(f"{path}/within_days", "A whole number of days from 1 to 3650.")
        window = " AND e.occurred_at >= now() - make_interval(days => %s)" if days is not None else ""
        params: list[Any] = [event_type, *([days] if days is not None else [])]
        if min_count == 1:
            sql = (
                "EXISTS (SELECT 1 FROM audiences_event e WHERE e.organisation_id = "
                f"{TABLE}.organisation_id AND e.contact_id = {TABLE}.id AND e.type = %s{window})"
            )
            return Compiled(sql, params)
        # Counting stops at N: the LIMIT keeps a heavy user's history from being read in full.
        sql = (
            "((SELECT count(*) FROM (SELECT 1 FROM audiences_event e WHERE e.organisation_id = "
            f"{TABLE}.organisation_id AND e.contact_id = {TABLE}.id AND e.type = %s{window} LIMIT %s) hits) >= %s)"
        )
        return Compiled(sql, [*params, min_count, min_count])

    def _group(self, group: str, children: Any, path: str, depth: int, seen: frozenset[UUID]) -> Compiled:
        if not isinstance(children, list) or not children:
            return self._fail(path, f'"{group}" needs a non-empty list of rules.')
        if len(children) > MAX_CHILDREN:
            return self._fail(path, f"A group holds at most {MAX_CHILDREN} rules.")
        parts = [self._node(child, f"{path}/{index}", depth + 1, seen) for index, child in enumerate(children)]
        joiner = " AND " if group == "and" else " OR "
        return Compiled("(" + joiner.join(p.sql for p in parts) + ")", [x for p in parts for x in p.params])

    def _segment(self, node: Mapping[str, Any], path: str, seen: frozenset[UUID]) -> Compiled:
        if len(node) != 1:
            return self._fail(path, 'A "segment" node has no other keys.')
        try:
            segment_id = UUID(str(node["segment"]))
        except ValueError:
            return self._fail(f"{path}/segment", "Not a segment id.")
        if segment_id in seen:
            return self._fail(f"{path}/segment", "A segment cannot include itself.")
        if self.compile_segment is None:
            return self._fail(f"{path}/segment", "Segment references are not allowed here.")
        try:
            return self.compile_segment(segment_id, f"{path}/segment", seen | {segment_id})
        except RuleError as exc:
            self.problems.extend(exc.problems)
            return Compiled("FALSE")

    # -- conditions ----------------------------------------------------------------------------------------------

    def _condition(self, node: Mapping[str, Any], path: str) -> Compiled:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            return self._fail(path, f"A rule tree holds at most {MAX_CONDITIONS} conditions.")
        extra = set(node) - {"field", "op", "value"}
        if extra:
            return self._fail(path, f"Unknown key(s) in a condition: {', '.join(sorted(extra))}.")
        name = node.get("field")
        op = canonical_operator(node.get("op"))
        if not isinstance(name, str):
            return self._fail(f"{path}/field", "The field must be a string.")
        if name in STANDARD_FIELDS:
            kind, attribute = STANDARD_FIELDS[name], None
        elif name.startswith("attributes."):
            attribute = name.removeprefix("attributes.")
            if not ATTRIBUTE_NAME.match(attribute):
                return self._fail(f"{path}/field", f"Invalid attribute name {attribute!r}.")
            if attribute not in self.attribute_types:
                return self._fail(f"{path}/field", f"Unknown attribute {attribute!r}: no contact has it yet.")
            kind = self.attribute_types[attribute]
        else:
            return self._fail(
                f"{path}/field",
                f"Unknown field {name!r}. Use one of {', '.join(STANDARD_FIELDS)} or attributes.<name>.",
            )
        if op not in OPERATORS[kind]:
            if op not in ALL_OPERATORS:
                return self._fail(
                    f"{path}/op",
                    f"Unknown operator {op!r}. Use one of: {', '.join(ALL_OPERATORS)}"
                    f" (or {', '.join(OPERATOR_ALIASES)}).",
                )
            return self._fail(
                f"{path}/op",
                f"{op!r} does not apply to {kind} field {name!r}; use one of: {', '.join(OPERATORS[kind])}.",
            )
        if name in ENCRYPTED_FIELDS and op not in ENCRYPTED_OPERATORS:
            hint = " Match domains with email_domain." if name == "email" else ""
            return self._fail(
                f"{path}/op",
                f"{op!r} does not apply to {name!r}: it is encrypted at rest, so only "
                f"{', '.join(ENCRYPTED_OPERATORS)} do.{hint}",
            )
        if op in ("exists", "not_exists"):
            if node.get("value") is not None:
                return self._fail(f"{path}/value", f"{op!r} takes no value.")
            value: Any = None
        else:
            if "value" not in node:
                return self._fail(f"{path}/value", f"{op!r} needs a value.")
            value = self._value(kind, op, node["value"], f"{path}/value")
            if value is _INVALID:
                return Compiled("FALSE")
        if attribute is None:
            return self._standard(name, kind, op, value)
        return self._attribute(attribute, kind, op, value)

    def _value(self, kind: str, op: str, raw: Any, path: str) -> Any:
        def bad(message: str) -> Any:
            self.problems.append(RuleProblem(path, message))
            return _INVALID

        if op in ("in", "not_in"):
            if not isinstance(raw, list) or not raw or len(raw) > MAX_IN_VALUES:
                return bad(f"{op!r} needs a list of 1 to {MAX_IN_VALUES} values.")
            items = [self._scalar(kind, item) for item in raw]
            if any(item is _INVALID for item in items):
                return bad(f"Every value must be a {kind}.")
            return items
        if op == "between":
            if not isinstance(raw, list) or len(raw) != 2:
                return bad('"between" needs [low, high].')
            low, high = (self._scalar(kind, item) for item in raw)
            if low is _INVALID or high is _INVALID:
                return bad(f"Both bounds must be {'dates' if kind == 'date' else kind + 's'}.")
            if low > high:
                return bad("The low bound is above the high bound.")
            return [low, high]
        if op == "within_last_days":
            if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 3650:
                return bad("A whole number of days between 1 and 3650.")
            return raw
        if kind == "list":
            if isinstance(raw, (dict, list)) or raw is None:
                return bad("A list element to look for: a string, number or boolean.")
            return raw
        value = self._scalar(kind, raw)
        if value is _INVALID:
            return bad(f"Expected a {kind}{' (YYYY-MM-DD or ISO 8601)' if kind == 'date' else ''}, got {raw!r}.")
        if op in ("contains", "starts_with") and not value:
            return bad("An empty string matches everything; give some text.")
        return value

    @staticmethod
    def _scalar(kind: str, raw: Any) -> Any:
        if kind == "string":
            return raw if isinstance(raw, str) and len(raw) <= 1000 else _INVALID
        if kind == "number":
            # Decimal keeps big integers exact and lets psycopg send mixed int/float lists as numeric[].
            ok = isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw == raw
            return Decimal(str(raw)) if ok else _INVALID
        if kind == "boolean":
            return raw if isinstance(raw, bool) else _INVALID
        if kind == "date":
            moment = _parse_moment(raw)
            return moment if moment is not None else _INVALID
        return _INVALID

    def _standard(self, name: str, kind: str, op: str, value: Any) -> Compiled:
        column = f'{TABLE}."{name}"'
        if kind == "date":
            return _date_condition(column, op, value)
        if name in ENCRYPTED_FIELDS and op not in ("exists", "not_exists"):
            hashed = f'{TABLE}."{ENCRYPTED_FIELDS[name]}"'
            if op in ("eq", "neq"):
                return Compiled(f"({hashed} {'=' if op == 'eq' else '<>'} %s)", [pii_hash(value)])
            hashes = [pii_hash(item) for item in value]
            return Compiled(f"({'NOT ' if op == 'not_in' else ''}({hashed} = ANY(%s)))", [hashes])
        if name == "email_domain" and isinstance(value, str):
            value = value.lower()  # domains are stored lowercased
        elif name == "email_domain" and isinstance(value, list):
            value = [item.lower() for item in value]
        if op == "eq":
            return Compiled(f"({column} = %s)", [value])
        if op == "neq":
            return Compiled(f"({column} <> %s)", [value])
        if op == "contains":
            return Compiled(f"({column} ILIKE %s)", [f"%{_escape_like(value)}%"])
        if op == "starts_with":
            return Compiled(f"({column} ILIKE %s)", [f"{_escape_like(value)}%"])
        if op == "in":
            return Compiled(f"({column} = ANY(%s))", [value])
        if op == "not_in":
            return Compiled(f"(NOT ({column} = ANY(%s)))", [value])
        if op == "exists":
            return Compiled(f"({column} <> '')")
        return Compiled(f"({column} = '')")  # not_exists

    def _attribute(self, name: str, kind: str, op: str, value: Any) -> Compiled:
        exists = f"({ATTRS} ? %s AND {ATTRS} -> %s <> 'null'::jsonb)"
        if op == "exists":
            return Compiled(exists, [name, name])
        if op == "not_exists":
            return Compiled(f"(NOT {exists})", [name, name])
        if op in ("eq", "neq") and kind in ("string", "number", "boolean"):
            # Containment is exact in type and value (5 = 5.0, "5" ≠ 5) and can use a GIN index.
            contains = Compiled(f"({ATTRS} @> %s::jsonb)", [json.dumps({name: _json_scalar(value)})])
            return contains if op == "eq" else Compiled(f"(NOT {contains.sql})", contains.params)
        if kind == "string":
            text = f"(CASE WHEN jsonb_typeof({ATTRS} -> %s) = 'string' THEN {ATTRS} ->> %s END)"
            if op == "contains":
                return Compiled(f"COALESCE({text} ILIKE %s, FALSE)", [name, name, f"%{_escape_like(value)}%"])
            if op == "starts_with":
                return Compiled(f"COALESCE({text} ILIKE %s, FALSE)", [name, name, f"{_escape_like(value)}%"])
            if op == "in":
                return Compiled(f"COALESCE({text} = ANY(%s), FALSE)", [name, name, value])
            return Compiled(f"(NOT COALESCE({text} = ANY(%s), FALSE))", [name, name, value])  # not_in
        if kind == "number":
            number = f"(CASE WHEN jsonb_typeof({ATTRS} -> %s) = 'number' THEN ({ATTRS} ->> %s)::numeric END)"
            if op in COMPARISONS:
                return Compiled(f"COALESCE({number} {COMPARISONS[op]} %s, FALSE)", [name, name, value])
            if op == "between":
                return Compiled(f"COALESCE({number} BETWEEN %s AND %s, FALSE)", [name, name, *value])
            if op == "in":
                return Compiled(f"COALESCE({number} = ANY(%s::numeric[]), FALSE)", [name, name, value])
            return Compiled(f"(NOT COALESCE({number} = ANY(%s::numeric[]), FALSE))", [name, name, value])
        if kind == "date":
            # Date attributes are ISO 8601 text; they compare by calendar date (their first ten characters),
            # which needs no cast that could fail on a malformed value and keeps the query parallel-safe.
            day = (
                f"(CASE WHEN jsonb_typeof({ATTRS} -> %s) = 'string' AND ({ATTRS} ->> %s) ~ '{ISO_DATE}'"
                f" THEN left({ATTRS} ->> %s, 10) END)"
            )
            compiled = _calendar_condition(day, op, value)
            return Compiled(compiled.sql, [name, name, name, *compiled.params])
        # list: contains an element
        array = f"(jsonb_typeof({ATTRS} -> %s) = 'array' AND {ATTRS} -> %s @> %s::jsonb)"
        return Compiled(f"COALESCE{array}", [name, name, json.dumps([value])])


def _calendar_condition(day: str, op: str, value: Any) -> Compiled:
    """A condition on an expression yielding 'YYYY-MM-DD' text (or NULL); ISO dates order as text."""

    def iso(moment: Any) -> str:
        return moment.astimezone(UTC).date().isoformat()

    if op in COMPARISONS:
        return Compiled(f"COALESCE({day} {COMPARISONS[op]} %s, FALSE)", [iso(value)])
    if op == "eq":
        return Compiled(f"COALESCE({day} = %s, FALSE)", [iso(value)])
    if op == "between":
        return Compiled(f"COALESCE({day} BETWEEN %s AND %s, FALSE)", [iso(value[0]), iso(value[1])])
    if op == "within_last_days":
        return Compiled(
            f"COALESCE({day} BETWEEN to_char(CURRENT_DATE - %s::int, 'YYYY-MM-DD')"
            " AND to_char(CURRENT_DATE, 'YYYY-MM-DD'), FALSE)",
            [value],
        )
    raise AssertionError(f"unhandled date operator {op}")  # exists/not_exists are handled before


def _date_condition(column: str, op: str, value: Any) -> Compiled:
    """A condition on a NOT NULL timestamptz column (created_at, updated_at)."""
    if op in COMPARISONS:
        return Compiled(f"({column} {COMPARISONS[op]} %s)", [value])
    if op == "eq":  # the same calendar day (UTC) as the given date
        return Compiled(f"(({column} AT TIME ZONE 'UTC')::date = (%s AT TIME ZONE 'UTC')::date)", [value])
    if op == "between":
        return Compiled(f"({column} BETWEEN %s AND %s)", list(value))
    if op == "within_last_days":
        return Compiled(f"({column} BETWEEN now() - make_interval(days => %s) AND now())", [value])
    return Compiled("TRUE" if op == "exists" else "FALSE")


def _json_scalar(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


_INVALID = _Invalid()
