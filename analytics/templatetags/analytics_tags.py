from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template

register = template.Library()


@register.filter
def pct(value: Any) -> str:
    """A rate as a percentage with one decimal, or a dash when there is nothing to divide by."""
    if value is None or value == "":
        return "—"
    return f"{float(value) * 100:.1f} %"


@register.filter
def isotime(value: Any) -> str:
    if not value:
        return ""
    moment = datetime.fromisoformat(str(value))
    return moment.strftime("%d %b %Y %H:%M:%S %Z")


@register.filter
def money(value: Any, currency: str) -> str:
    """An amount with its currency code ("1,234.50 EUR"); "—" when there is none."""
    from audiences.currencies import format_amount

    return format_amount(value, currency) or "—"


@register.filter
def figure(value: Any) -> str:
    """A count as a number: whole counts as they are, conversion credit (1/3 of a purchase) to two decimals."""
    if value is None or value == "":
        return "—"
    number = float(value)
    return str(int(number)) if number == int(number) else f"{number:.2f}"
