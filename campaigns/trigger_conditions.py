"""Conditions on a trigger event's properties: nested {"and": [...]} / {"or": [...]} groups of
{"property": P, "op": OP, "value": V}. P may be dotted ("cart.total"); OP is eq, neq, contains, gt, lt or exists
(or equals, greater_than, less_than: audiences.rules.OPERATOR_ALIASES).
Validated when the campaign is saved (errors name the node with a JSON Pointer) and compiled once to a predicate.
A missing property makes a comparison false (and `neq` true), never an error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.core.exceptions import ValidationError

from audiences.rules import OPERATOR_ALIASES, canonical_operator

OPERATORS = ("eq", "neq", "contains", "gt", "lt", "exists")
MAX_DEPTH = 5
MISSING = object()

Predicate = Callable[[Mapping[str, Any]], bool]


def _lookup(properties: Mapping[str, Any], path: str) -> Any:
    current: Any = properties
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return MISSING
        current = current[part]
    return current


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return actual is not MISSING and actual is not None
    if actual is MISSING:
        return op == "neq"
    if op == "eq":
        return actual == expected or (_number(actual) is not None and _number(actual) == _number(expected))
    if op == "neq":
        return not _compare("eq", actual, expected)
    if op == "contains":
        if isinstance(actual, list):
            return expected in actual
        return isinstance(actual, str) and str(expected).lower() in actual.lower()
    left, right = _number(actual), _number(expected)
    if left is None or right is None:
        return False
    return left > right if op == "gt" else left < right


def compile_conditions(tree: Any) -> Predicate:
    """A predicate over an event's properties; None or {} matches every event. Raises ValidationError."""
    if not tree:
        return lambda properties: True
    problems: list[str] = []
    predicate = _compile(tree, "", 0, problems)
    if problems:
        raise ValidationError({"trigger_conditions": problems})
    return predicate


def _compile(node: Any, path: str, depth: int, problems: list[str]) -> Predicate:
    if depth > MAX_DEPTH:
        problems.append(f"{path or '/'}: conditions nest at most {MAX_DEPTH} levels deep.")
        return lambda p: False
    if not isinstance(node, Mapping):
        problems.append(f"{path or '/'}: each condition is an object.")
        return lambda p: False
    for group in ("and", "or"):
        if group in node:
            children = node[group]
            if len(node) != 1 or not isinstance(children, list) or not children:
                problems.append(f"{path}/{group}: a non-empty list of conditions, and nothing else.")
                return lambda p: False
            parts = [_compile(child, f"{path}/{group}/{i}", depth + 1, problems) for i, child in enumerate(children)]
            if group == "and":
                return lambda p, parts=parts: all(part(p) for part in parts)
            return lambda p, parts=parts: any(part(p) for part in parts)
    prop, op = node.get("property"), canonical_operator(node.get("op"))
    if not isinstance(prop, str) or not prop.strip():
        problems.append(f"{path}/property: give the event property to test.")
        return lambda p: False
    if op not in OPERATORS:
        problems.append(f"{path}/op: one of {', '.join(OPERATORS)} (or {', '.join(OPERATOR_ALIASES)}).")
        return lambda p: False
    extra = sorted(set(node) - {"property", "op", "value"})
    if extra:
        problems.append(f"{path}/{extra[0]}: unknown key.")
    if op != "exists" and "value" not in node:
        problems.append(f"{path}/value: give a value to compare with.")
    if op in ("gt", "lt") and _number(node.get("value")) is None:
        problems.append(f"{path}/value: a number.")
    expected = node.get("value")
    return lambda p: _compare(op, _lookup(p, prop), expected)
