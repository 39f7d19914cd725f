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
