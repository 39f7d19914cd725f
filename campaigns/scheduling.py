"""When a scheduled campaign runs: one time, or recurring (daily, weekly, monthly, custom cron) in a timezone.

Recurring schedules are five-field cron expressions evaluated in wall-clock time of the campaign's timezone, so
"09:00 every day" in Europe/London is 09:00 GMT in winter and 09:00 BST in summer. Around daylight-saving changes:
a time that does not exist (the hour skipped in spring) runs at the moment the clock jumps past it (02:30 becomes
03:30), and a time that happens twice (the hour repeated in autumn) runs once, at its first occurrence.

Cron fields are parsed by Celery's crontab parser, the one celery-beat uses to fire the alarm, and follow its
meaning: when both day-of-month and day-of-week are restricted, a day must match both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from celery.schedules import ParseException, crontab
from django.core.exceptions import ValidationError
from django.utils.dateparse import parse_datetime, parse_time

from campaigns.models import Recurrence

MIN_SCHEDULE_LEAD = timedelta(minutes=5)
# Far enough for "29 February" and "31st of months with 31 days"; a cron that matches nothing in this window
# (e.g. 30 February) is refused.
SEARCH_DAYS = 366 * 8 + 2
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # cron numbering: 0 = Sunday


@dataclass(frozen=True)
class Schedule:
    scheduled_at: datetime  # the first (next) occurrence, UTC
    timezone: str
    recurrence: str = Recurrence.NONE
    cron_expression: str = ""
    ends_at: datetime | None = None

    @property
    def recurring(self) -> bool:
        return self.recurrence != Recurrence.NONE


def zone(name: str) -> ZoneInfo:
    if not name or name not in _zones():
        raise ValidationError({"timezone": [f"Unknown timezone {name!r}; use an IANA name such as Europe/Paris."]})
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - filtered above
        raise ValidationError({"timezone": [str(exc)]}) from exc


_ZONES: set[str] | None = None


def _zones() -> set[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = available_timezones() | {"UTC"}
    return _ZONES


def parse_cron(expression: str) -> crontab:
    fields = expression.split()
    if len(fields) != 5:
        raise ValidationError(
            {"cron": ["A cron expression has five fields: minute hour day-of-month month day-of-week."]}
        )
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month, day_of_week=day_of_week
        )
    except (ParseException, ValueError, TypeError, KeyError) as exc:
        raise ValidationError({"cron": [f"Not a valid cron expression: {exc}"]}) from exc


def _local_candidates(cron: crontab, day: date, tz: ZoneInfo) -> list[datetime]:
    """The UTC instants on which the cron fires on this local day, in order."""
    found = []
    for hour in sorted(cron.hour):
        for minute in sorted(cron.minute):
            # fold=0 picks the first of a repeated autumn time; for a time skipped in spring, zoneinfo applies the
            # offset from before the jump, which is the instant the clock passes it (02:30 → 03:30 local).
            found.append(datetime.combine(day, time(hour, minute), tzinfo=tz).astimezone(UTC))
    return sorted(found)


def next_occurrence(expression: str, timezone_name: str, after: datetime) -> datetime | None:
    """The first instant strictly after `after` at which the cron expression fires in the zone (UTC), if any."""
    cron = parse_cron(expression)
    tz = zone(timezone_name)
    start = after.astimezone(tz).date()
    for offset in range(SEARCH_DAYS):
        day = start + timedelta(days=offset)
        if day.month not in cron.month_of_year or day.day not in cron.day_of_month:
            continue
        if (day.weekday() + 1) % 7 not in cron.day_of_week:
            continue
        for instant in _local_candidates(cron, day, tz):
            if instant > after:
                return instant
    return None


def occurrences(expression: str, timezone_name: str, after: datetime, count: int) -> list[datetime]:
    result: list[datetime] = []
    current = after
    while len(result) < count:
        following = next_occurrence(expression, timezone_name, current)
        if following is None:
            break
        result.append(following)
        current = following
    return result


def _parse_when(value: Any, tz: ZoneInfo, field: str) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = parse_datetime(str(value or "").strip())
        except ValueError:
            parsed = None
        if parsed is None:
            raise ValidationError({field: ["Give a date and time, e.g. 2026-12-01T09:00 (ISO 8601)."]})
    if parsed.tzinfo is None:
        # A time without an offset is a wall-clock time in the schedule's timezone.
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def _parse_time_of_day(value: Any) -> time:
    try:
        parsed = value if isinstance(value, time) else parse_time(str(value or "").strip())
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValidationError({"time": ["Give the time of day as HH:MM, e.g. 09:00."]})
    return parsed


def _weekday_numbers(values: Any) -> list[int]:
    if not isinstance(values, list | tuple) or not values:
        raise ValidationError({"weekdays": ["Choose at least one day of the week (mon … sun)."]})
    numbers = set()
    for value in values:
        text = str(value).strip().lower()[:3]
        if text in WEEKDAYS:
            numbers.add(WEEKDAYS.index(text))
        elif text.isdigit() and int(text) <= 7:
            numbers.add(int(text) % 7)
        else:
            raise ValidationError({"weekdays": [f"Unknown day {value!r}; use mon, tue, wed, thu, fri, sat or sun."]})
    return sorted(numbers)


def cron_for(recurrence: str, data: Mapping[str, Any]) -> str:
    if recurrence == Recurrence.CRON:
        expression = " ".join(str(data.get("cron") or "").split())
        if not expression:
            raise ValidationError({"cron": ["Give a cron expression, e.g. 0 9 * * 1-5."]})
        parse_cron(expression)
        return expression
    at = _parse_time_of_day(data.get("time"))
    if recurrence == Recurrence.DAILY:
        return f"{at.minute} {at.hour} * * *"
    if recurrence == Recurrence.WEEKLY:
        days = ",".join(str(d) for d in _weekday_numbers(data.get("weekdays")))
        return f"{at.minute} {at.hour} * * {days}"
    if recurrence == Recurrence.MONTHLY:
        try:
            day = int(data.get("day_of_month"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            day = 0
        if not 1 <= day <= 31:
            raise ValidationError({"day_of_month": ["Choose a day of the month from 1 to 31."]})
        return f"{at.minute} {at.hour} {day} * *"
    raise ValidationError({"recurrence": [f"Choose one of: {', '.join(Recurrence.values)}."]})


def schedule_from_input(data: Mapping[str, Any], *, default_timezone: str, now: datetime) -> Schedule:
    """Validate what a marketer asked for and work out the first occurrence."""
    timezone_name = str(data.get("timezone") or default_timezone or "UTC")
    tz = zone(timezone_name)
    recurrence = str(data.get("recurrence") or Recurrence.NONE)
    if recurrence not in Recurrence.values:
        raise ValidationError({"recurrence": [f"Choose one of: {', '.join(Recurrence.values)}."]})
    ends_at = _parse_when(data["ends_at"], tz, "ends_at") if data.get("ends_at") else None
    if recurrence == Recurrence.NONE:
        if not data.get("scheduled_at"):
            raise ValidationError({"scheduled_at": ["Choose when the campaign should be sent."]})
        when = _parse_when(data["scheduled_at"], tz, "scheduled_at")
        if when < now + MIN_SCHEDULE_LEAD:
            raise ValidationError({"scheduled_at": ["The scheduled time must be at least 5 minutes in the future."]})
        return Schedule(scheduled_at=when, timezone=timezone_name)
    expression = cron_for(recurrence, data)
    starts = _parse_when(data["starts_at"], tz, "starts_at") if data.get("starts_at") else now
    first = next_occurrence(expression, timezone_name, max(starts, now) - timedelta(microseconds=1))
    if first is None:
        raise ValidationError({"cron": ["This schedule never fires."]})
    if ends_at is not None and ends_at <= first:
        raise ValidationError({"ends_at": ["The schedule ends before it first runs."]})
    return Schedule(
        scheduled_at=first, timezone=timezone_name, recurrence=recurrence, cron_expression=expression, ends_at=ends_at
    )


def following_occurrence(campaign: Any, after: datetime) -> datetime | None:
    """A recurring campaign's next occurrence after `after`, or None when it is one-time or its schedule ended."""
    if campaign.recurrence == Recurrence.NONE or not campaign.cron_expression:
        return None
    following = next_occurrence(campaign.cron_expression, campaign_timezone(campaign), after)
    if following is None or (campaign.recurrence_ends_at and following > campaign.recurrence_ends_at):
        return None
    return following


def campaign_timezone(campaign: Any) -> str:
    return campaign.schedule_timezone or str(campaign.organisation.timezone) or "UTC"


def describe_schedule(campaign: Any) -> str:
    tz_name = campaign_timezone(campaign)
    if campaign.recurrence == Recurrence.NONE:
        if not campaign.scheduled_at:
            return "Not scheduled"
        local = campaign.scheduled_at.astimezone(ZoneInfo(tz_name))
        return f"Once, {local:%a %d %b %Y %H:%M} ({tz_name})"
    minute, hour, day_of_month, _month, day_of_week = (campaign.cron_expression.split() + ["*"] * 5)[:5]
    at = f"{int(hour):02d}:{int(minute):02d}" if hour.isdigit() and minute.isdigit() else ""
    if campaign.recurrence == Recurrence.DAILY:
        text = f"Every day at {at}"
    elif campaign.recurrence == Recurrence.WEEKLY:
        names = ", ".join(WEEKDAYS[int(d) % 7].capitalize() for d in day_of_week.split(",") if d.isdigit())
        text = f"Every week on {names} at {at}"
    elif campaign.recurrence == Recurrence.MONTHLY:
        text = f"Every month on day {day_of_month} at {at}"
    else:
        text = f"cron {campaign.cron_expression}"
    text += f" ({tz_name})"
    if campaign.recurrence_ends_at:
        text += f", until {campaign.recurrence_ends_at.astimezone(ZoneInfo(tz_name)):%d %b %Y %H:%M}"
    return text
