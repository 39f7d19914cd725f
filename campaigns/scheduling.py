"""When a scheduled campaign runs: one time, or recurring (daily, weekly, monthly, custom cron) in a timezone.

Recurring schedules are five-field cron expressions (minute hour day-of-month month day-of-week) read as standard
(Vixie) cron reads them, evaluated in wall-clock time of the campaign's timezone, so "09:00 every day" in
Europe/London is 09:00 GMT in winter and 09:00 BST in summer:

- Fields take `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and comma lists of these; months and weekdays
  also take names (JAN…DEC, SUN…SAT, any case); day-of-week 0 and 7 are both Sunday.
- Day-of-month and day-of-week: when both are restricted (neither field starts with `*`), a day matches if EITHER
  matches — "0 9 1 * MON" is the 1st of every month and every Monday. When one starts with `*` (`*`, `*/2`), a day
  must match both, which with a plain `*` means the other field alone decides. Celery's crontab ANDs them always,
  so nothing here uses it: occurrences are computed by this module only, and the alarm is set for each computed
  occurrence (delivery.task_service), so what fires is exactly what this module says.
- Daylight-saving changes: a wall-clock time fires the first time the local clock reaches or passes it. A time
  skipped in spring (02:30 when clocks jump from 02:00 to 03:00) fires at the jump (03:00 local); a time repeated
  in autumn fires once, at its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from django.core.exceptions import ValidationError
from django.utils.dateparse import parse_datetime, parse_time

from campaigns.models import Recurrence

MIN_SCHEDULE_LEAD = timedelta(minutes=5)
# Far enough for "29 February" and "31st of months with 31 days"; a cron that matches nothing in this window
# (e.g. 30 February) is refused.
SEARCH_DAYS = 366 * 8 + 2
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # cron numbering: 0 = Sunday
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
# The campaign's cron_expression column holds 120 characters.
MAX_CRON_LENGTH = 120
CRON_FIELD = re.compile(r"^[0-9A-Za-z*,/\-]+$")


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
        raise ValidationError({"timezone": [f"Unknown timezone {name[:64]!r}; use an IANA name such as Europe/Paris."]})
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


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression: the values each field allows, and whether the day fields are starred
    (which decides how they combine)."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday … 6 = Saturday
    day_of_month_starred: bool
    day_of_week_starred: bool

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_month_day = day.day in self.days_of_month
        by_weekday = (day.weekday() + 1) % 7 in self.days_of_week
        if self.day_of_month_starred or self.day_of_week_starred:
            return by_month_day and by_weekday
        return by_month_day or by_weekday


_CRON_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, MONTHS),
    ("day-of-week", 0, 7, WEEKDAYS),
)


def _cron_error(message: str) -> ValidationError:
    return ValidationError({"cron": [message]})


def _cron_value(text: str, label: str, low: int, high: int, names: list[str] | None) -> int:
    if names is not None and text.lower() in names:
        return names.index(text.lower()) + low
    if not text.isdigit() or len(text) > 2 or not low <= int(text) <= high:
        named = f" or a name ({names[0].upper()}…{names[-1].upper()})" if names else ""
        raise _cron_error(f"{label}: {text[:20]!r} is not a number from {low} to {high}{named}.")
    return int(text)


def _cron_field(text: str, label: str, low: int, high: int, names: list[str] | None) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or len(step_text) > 2 or int(step_text) == 0:
                raise _cron_error(f"{label}: the step in {part[:20]!r} must be a number from 1 to {high}.")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start_text, _, end_text = base.partition("-")
            first = _cron_value(start_text, label, low, high, names)
            last = _cron_value(end_text, label, low, high, names)
            if first > last:
                sunday = " (Sunday ends a range as 7, e.g. FRI-7)" if names is WEEKDAYS else ""
                raise _cron_error(f"{label}: the range {base[:20]!r} runs backwards{sunday}.")
        elif slash:
            raise _cron_error(f"{label}: a step needs a range or *, e.g. */{step} or {base[:5]}-{high}/{step}.")
        else:
            first = last = _cron_value(base, label, low, high, names)
        values.update(range(first, last + 1, step))
    return values


def parse_cron(expression: str) -> Cron:
    """Parse a five-field cron expression, refusing anything standard cron would not read the same way."""
    if not isinstance(expression, str) or len(expression) > MAX_CRON_LENGTH:
        raise _cron_error(f"A cron expression is at most {MAX_CRON_LENGTH} characters.")
    fields = expression.split()
    if len(fields) != 5:
        raise _cron_error("A cron expression has five fields: minute hour day-of-month month day-of-week.")
    parsed = []
    for text, (label, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        if not CRON_FIELD.match(text):
            raise _cron_error(f"{label}: use numbers, names, *, -, / and commas only.")
        parsed.append(_cron_field(text, label, low, high, names))
    minutes, hours, days_of_month, months, days_of_week = parsed
    return Cron(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days_of_month=frozenset(days_of_month),
        months=frozenset(months),
        days_of_week=frozenset(day % 7 for day in days_of_week),
        day_of_month_starred=fields[2].startswith("*"),
        day_of_week_starred=fields[4].startswith("*"),
    )


def _local_wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def first_instant_of(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the local clock in `tz` reads `wall` or later.

    For an existing time that is its first occurrence (fold=0, the earlier of a repeated autumn time). For a time
    inside a spring gap it is the jump itself: zoneinfo gives the instants with the offsets before (fold=0) and
    after (fold=1) the jump, and the jump lies between them."""
    later = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _local_wall(later, tz) == wall:
        return later
    earlier = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    low, high = min(earlier, later), max(earlier, later)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if _local_wall(middle, tz) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def next_occurrence(expression: str, timezone_name: str, after: datetime) -> datetime | None:
    """The first instant strictly after `after` at which the cron expression fires in the zone (UTC), if any."""
    cron = parse_cron(expression)
    tz = zone(timezone_name)
    times = [time(hour, minute) for hour in cron.hours for minute in cron.minutes]
    # From the day before: a clock set back across midnight can still have yesterday's times ahead of it.
    start = after.astimezone(tz).date() - timedelta(days=1)
    for offset in range(SEARCH_DAYS):
        day = start + timedelta(days=offset)
        if not cron.matches_day(day):
            continue
        # A later wall time is never reached earlier, so the day's first time still ahead is found by bisection
        # (an every-minute cron has 1,440 times a day).
        low, high = 0, len(times)
        while low < high:
            middle = (low + high) // 2
            if first_instant_of(datetime.combine(day, times[middle]), tz) > after:
                high = middle
            else:
                low = middle + 1
        if low < len(times):
            return first_instant_of(datetime.combine(day, times[low]), tz)
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
    for key, value in data.items():
        # Some parsers (datetime.fromisoformat) read past a NUL byte; PostgreSQL cannot store one.
        texts = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(text, str) and "\x00" in text for text in texts):
            raise ValidationError({key: ["Null characters are not allowed."]})
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
    if first < now + MIN_SCHEDULE_LEAD:
        # The first run is a scheduled time like any other (AC-008.4): quietly moving it to the next occurrence
        # would send a day (or a week) later than the marketer saw on the form.
        field = "starts_at" if data.get("starts_at") else "cron" if recurrence == Recurrence.CRON else "time"
        raise ValidationError(
            {
                field: [
                    f"The first run would be {first.astimezone(tz):%a %d %b %Y %H:%M} ({timezone_name}), less than"
                    " 5 minutes from now; the scheduled time must be at least 5 minutes in the future. Choose a"
                    " later time or a later start."
                ]
            }
        )
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
