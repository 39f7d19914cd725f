from __future__ import annotations

import re
from datetime import datetime, time
from typing import Any

import django_filters
from django import forms
from django.db.models import F, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from campaigns.models import Campaign, CampaignStatus, CampaignType, Channel


class ChoiceInFilter(django_filters.BaseInFilter, django_filters.ChoiceFilter):
    """`?status=draft,paused` (comma-separated) or a single value; every item must be a valid choice."""


class DateOrDateTimeField(forms.CharField):
    """Accepts 2026-03-01 or an ISO 8601 datetime. A bare date means the whole day, and a datetime without an
    offset is local time, both in the current timezone: UTC on the API, the organisation's in the console."""

    def __init__(self, *args: Any, end_of_day: bool = False, **kwargs: Any) -> None:
        self.end_of_day = end_of_day
        super().__init__(*args, **kwargs)

    def to_python(self, value: Any) -> datetime | None:
        value = super().to_python(value)
        if not value:
            return None
        value = value.strip()
        if re.search(r"T.* \d\d:?\d\d$", value):
            value = value[::-1].replace(" ", "+", 1)[::-1]  # an unencoded "+01:00" arrives as " 01:00"
        zone = timezone.get_current_timezone()
        if "T" not in value and " " not in value:
            # A bare date. (datetime.fromisoformat would read it as midnight, losing "the whole day".)
            try:
                parsed_date = parse_date(value)
            except ValueError:
                parsed_date = None
            if parsed_date is None:
                raise forms.ValidationError("Use a date (YYYY-MM-DD) or an ISO 8601 datetime.")
            return datetime.combine(parsed_date, time.max if self.end_of_day else time.min, tzinfo=zone)
        try:
            parsed_dt = parse_datetime(value)
        except ValueError:
            parsed_dt = None
        if parsed_dt is None:
            raise forms.ValidationError("Use a date (YYYY-MM-DD) or an ISO 8601 datetime.")
        if timezone.is_naive(parsed_dt):
            parsed_dt = timezone.make_aware(parsed_dt, zone)
        return parsed_dt


class DateBoundFilter(django_filters.Filter):
    field_class = DateOrDateTimeField

    def __init__(self, *args: Any, end_of_day: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra["end_of_day"] = end_of_day


SORTS = {
    "created": ("created_at",),
    "-created": ("-created_at",),
    "scheduled": ("scheduled_at",),
    "-scheduled": ("-scheduled_at",),
    "name": ("name",),
    "-name": ("-name",),
    # The field names work too.
    "created_at": ("created_at",),
    "-created_at": ("-created_at",),
    "scheduled_at": ("scheduled_at",),
    "-scheduled_at": ("-scheduled_at",),
}


class CampaignFilter(django_filters.FilterSet):
    status = ChoiceInFilter(choices=CampaignStatus.choices)
    type = ChoiceInFilter(choices=CampaignType.choices)
    channel = ChoiceInFilter(
        choices=Channel.choices, method="filter_channel", help_text="Campaigns using any of these channels."
    )
    search = django_filters.CharFilter(
        method="filter_search", help_text="Case-insensitive name prefix.", max_length=200
    )
    created_after = DateBoundFilter(field_name="created_at", lookup_expr="gte")
    created_before = DateBoundFilter(field_name="created_at", lookup_expr="lte", end_of_day=True)
    scheduled_after = DateBoundFilter(field_name="scheduled_at", lookup_expr="gte")
    scheduled_before = DateBoundFilter(field_name="scheduled_at", lookup_expr="lte", end_of_day=True)
    ordering = django_filters.ChoiceFilter(
        choices=[(key, key) for key in SORTS],
        method="filter_ordering",
        help_text="created, scheduled or name; prefix with - for descending. Default: -created.",
    )

    class Meta:
        model = Campaign
        fields: list[str] = []

    def filter_channel(self, queryset: QuerySet[Campaign], name: str, value: list[str]) -> QuerySet[Campaign]:
        return queryset.filter(channels__overlap=value) if value else queryset

    def filter_search(self, queryset: QuerySet[Campaign], name: str, value: str) -> QuerySet[Campaign]:
        value = value.strip()
        return queryset.filter(name__istartswith=value) if value else queryset

    def filter_ordering(self, queryset: QuerySet[Campaign], name: str, value: str) -> QuerySet[Campaign]:
        return queryset  # applied in `qs` so a missing parameter gets the default order too

    @property
    def qs(self) -> QuerySet[Campaign]:
        queryset = super().qs
        sort = self.form.cleaned_data.get("ordering") if self.is_bound and self.form.is_valid() else None
        field = SORTS.get(sort or "-created", ("-created_at",))[0]
        descending = field.startswith("-")
        column = field.lstrip("-")
        if column == "scheduled_at":
            # Unscheduled campaigns sort last either way (matching the two scheduled_at indexes).
            expression = F(column).desc(nulls_last=True) if descending else F(column).asc(nulls_last=True)
        else:
            expression = F(column).desc() if descending else F(column).asc()
        # The id tie-break keeps pages stable when many campaigns share a value.
        return queryset.order_by(expression, "-id" if descending else "id")
