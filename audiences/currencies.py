"""The currency an organisation reports revenue in: an ISO 4217 code (pycountry's table), shown beside every amount."""

from __future__ import annotations

from decimal import Decimal

import pycountry
from django.core.exceptions import ValidationError

DEFAULT_CURRENCY = "USD"


def currency_codes() -> list[str]:
    return sorted(currency.alpha_3 for currency in pycountry.currencies)


def validate_currency(value: str) -> None:
    if pycountry.currencies.get(alpha_3=value or "") is None or value != value.upper():
        raise ValidationError(f"{value!r} is not an ISO 4217 currency code (e.g. USD, EUR, GBP).", code="invalid")


def format_amount(amount: object, currency: str) -> str:
    """The figure with its code ("1,234.50 EUR"), never a bare number."""
    if amount is None or amount == "":
        return ""
    return f"{Decimal(str(amount)):,.2f} {currency}"
