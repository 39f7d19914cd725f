"""The cron evaluator against a brute-force reference of standard (Vixie) cron: the reference steps through every
minute in UTC, reads the local clock in the campaign's timezone and fires when the clock reaches or passes a
matching wall-clock time — so times skipped by a spring change fire at the jump and repeated autumn times once.
Generated expressions (lists, ranges, steps, names, 7 = Sunday, both day fields restricted) are checked around
every daylight-saving change of 2026-2027 in zones with 1-hour, 30-minute and midnight changes. Bad expressions
are a 400 that names the cron field, never a 500."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError

from campaigns.models import Campaign
from campaigns.scheduling import next_occurrence, schedule_from_input
from tests.factories import CampaignFactory, console_client

ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute changes
    "America/Santiago",  # changes at midnight
    "America/Havana",  # changes at midnight (00:00 → 01:00), and back at 01:00 → 00:00
    "Pacific/Chatham",  # +12:45 / +13:45
    "Asia/Kathmandu",  # +05:45, no changes
    "UTC",
]
MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


# --- the reference: written from the crontab(5) manual, independent of campaigns.scheduling ------------------


def _reference_values(field: str, low: int, high: int, names: list[str]) -> set[int]:
    def number(text: str) -> int:
        upper = text.upper()
        return names.index(upper) + low if upper in names else int(text)

    values: set[int] = set()
    for item in field.split(","):
        step = int(item.split("/")[1]) if "/" in item else 1
        span = item.split("/")[0]
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (number(x) for x in span.split("-"))
        else:
            first = last = number(span)
        values |= set(range(first, last + 1, step))
    return values


class Reference:
    def __init__(self, expression: str) -> None:
        minute, hour, dom, month, dow = expression.split()
        self.minutes = _reference_values(minute, 0, 59, [])
        self.hours = _reference_values(hour, 0, 23, [])
        self.doms = _reference_values(dom, 1, 31, [])
        self.months = _reference_values(month, 1, 12, MONTH_NAMES)
        self.dows = {d % 7 for d in _reference_values(dow, 0, 7, DAY_NAMES)}
        # crontab(5): "If both fields are restricted (i.e., don't start with *), the command will be run when either
        # field matches the current time."
        self.either = not dom.startswith("*") and not dow.startswith("*")

    def matches(self, wall: datetime) -> bool:
        if wall.minute not in self.minutes or wall.hour not in self.hours or wall.month not in self.months:
            return False
        dom, dow = wall.day in self.doms, wall.isoweekday() % 7 in self.dows
        return (dom or dow) if self.either else (dom and dow)

    def fires(self, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
        """Every minute from two days before `start`: fire when the local clock reaches or passes a matching wall
        time it had not reached before (a jump forward passes several at once; a jump back passes none)."""
        result = []
        t = start.replace(second=0, microsecond=0) - timedelta(days=2)
        reached = t.astimezone(tz).replace(tzinfo=None)
        while t <= end:
            t += timedelta(minutes=1)
            wall = t.astimezone(tz).replace(tzinfo=None)
            if wall <= reached:
                continue
            passed, probe = False, reached + timedelta(minutes=1)
            while probe <= wall and not passed:
                passed = self.matches(probe)
                probe += timedelta(minutes=1)
            reached = wall
            if passed and start < t <= end:
                result.append(t)
        return result


def _evaluated(expression: str, zone_name: str, start: datetime, end: datetime) -> list[datetime]:
    result, current = [], start
    while (following := next_occurrence(expression, zone_name, current)) is not None and following <= end:
        result.append(following)
        current = following
    return result


def _transitions(zone_name: str) -> list[datetime]:
    tz, found = ZoneInfo(zone_name), []
    t = datetime(2026, 1, 1, tzinfo=UTC)
    while t < datetime(2028, 1, 1, tzinfo=UTC):
        if (t + timedelta(hours=1)).astimezone(tz).utcoffset() != t.astimezone(tz).utcoffset():
            found.append(t)
        t += timedelta(hours=1)
    return found


def _random_field(rng: random.Random, low: int, high: int, names: list[str] | None = None) -> str:
    def value() -> str:
        number = rng.randint(low, high)
        if names and rng.random() < 0.4:
            return names[(number - low) % len(names)]
        return str(number)

    def item() -> str:
        kind = rng.choice(["value", "value", "range", "range-step", "star-step"])
        if kind == "value":
            return value()
        first = rng.randint(low, high - 1)
        last = rng.randint(first + 1, high)
        if names and rng.random() < 0.3:
            span = f"{names[(first - low) % len(names)]}-{names[(last - low) % len(names)]}"
            if (first - low) >= len(names) or (last - low) >= len(names):
                span = f"{first}-{last}"
        else:
            span = f"{first}-{last}"
        if kind == "range":
            return span
        step = rng.randint(1, max(1, (high - low) // 2))
        return f"{span}/{step}" if kind == "range-step" else f"*/{step}"

    if rng.random() < 0.25:
        return "*"
    return ",".join(item() for _ in range(rng.choice([1, 1, 2, 3])))


def _random_expression(rng: random.Random) -> str:
    minute = rng.choice(["0", "30", "*/15", "5,35", "0-59/20", _random_field(rng, 0, 59)])
    hour = rng.choice(["*", "2", "0-3", "1,2,3", "*/2", "23", _random_field(rng, 0, 23)])
    dom = _random_field(rng, 1, 31)
    month = rng.choice(["*", "*", _random_field(rng, 1, 12, MONTH_NAMES)])
    dow = _random_field(rng, 0, 7, DAY_NAMES)
    return f"{minute} {hour} {dom} {month} {dow}"


def _cases() -> list[tuple[str, str, datetime]]:
    rng = random.Random(2026)
    cases = []
    for zone_name in ZONES:
        moments = _transitions(zone_name) or [datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, tzinfo=UTC)]
        for moment in moments:
            for _ in range(6):
                cases.append((_random_expression(rng), zone_name, moment - timedelta(hours=rng.randint(2, 40))))
    return cases


@pytest.mark.parametrize(("expression", "zone_name", "start"), _cases())
def test_occurrences_equal_the_minute_by_minute_reference(expression, zone_name, start):
    end = start + timedelta(days=3)
    assert _evaluated(expression, zone_name, start, end) == Reference(expression).fires(ZoneInfo(zone_name), start, end)


# --- the rules one by one ------------------------------------------------------------------------------------


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _next(expression: str, after: datetime, zone_name: str = "UTC", count: int = 1) -> list[datetime]:
    return _evaluated(expression, zone_name, after, after + timedelta(days=400))[:count]


def test_both_day_fields_restricted_means_either_day():
    # 1 December 2026 is a Tuesday: "the 1st, and every Monday" fires on 1, 7, 14 December…
    assert _next("0 9 1 * MON", utc(2026, 11, 30, 12), count=3) == [
        utc(2026, 12, 1, 9),
        utc(2026, 12, 7, 9),
        utc(2026, 12, 14, 9),
    ]
    # …while a starred field means both must match: odd days that are Mondays.
    assert _next("0 9 */2 * 1", utc(2026, 11, 30, 12), count=2) == [utc(2026, 12, 7, 9), utc(2026, 12, 21, 9)]
    # A plain * leaves the other field to decide.
    assert _next("0 9 * * 1", utc(2026, 11, 30, 12)) == [utc(2026, 12, 7, 9)]
    assert _next("0 9 13 * *", utc(2026, 11, 30, 12)) == [utc(2026, 12, 13, 9)]


def test_names_ranges_steps_and_sunday_as_seven():
    assert _next("0 12 * * 7", utc(2026, 12, 1)) == _next("0 12 * * SUN", utc(2026, 12, 1)) == [utc(2026, 12, 6, 12)]
    assert _next("0 12 * * FRI-7", utc(2026, 12, 1), count=3) == _next("0 12 * * 5,6,0", utc(2026, 12, 1), count=3)
    assert _next("0 0 1 jan,Jul *", utc(2026, 12, 1), count=2) == [utc(2027, 1, 1), utc(2027, 7, 1)]
    assert _next("5-59/20 */6 * * *", utc(2026, 12, 1), count=4) == [
        utc(2026, 12, 1, 0, 5),
        utc(2026, 12, 1, 0, 25),
        utc(2026, 12, 1, 0, 45),
        utc(2026, 12, 1, 6, 5),
    ]


def test_daylight_saving_in_the_campaign_timezone():
    # Europe/Berlin, 29 March 2026: 02:00 → 03:00. 02:30 fires at the jump; 03:30 as usual.
    assert _next("30 2,3 * * *", utc(2026, 3, 28, 12), "Europe/Berlin", 3) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 30, 0, 30),
    ]
    # 25 October 2026: 03:00 → 02:00. The repeated 02:30 fires once, at its first (summer-time) occurrence.
    assert _next("30 2 * * *", utc(2026, 10, 24, 12), "Europe/Berlin", 2) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "* * * *",
        "* * * * * *",
        "@daily",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "99999999999999999999 * * * *",
        "*/0 * * * *",
        "*/99999999999 * * * *",
        "5/10 * * * *",
        "10-5 * * * *",
        "1-2-3 * * * *",
        "* * * FOO *",
        "* * * * MONDAY",
        "0 12 * * FRI-SUN",  # SUN is 0: the range runs backwards
        "0 0 30 2 *",  # never fires
        "0 0 31 2,4 *",
        "0\x00 * * * *",
        "0 9 * * 1;rm",
        "1," * 100 + "1 * * * *",
    ],
)
def test_bad_expressions_are_refused_with_a_message(expression):
    with pytest.raises(ValidationError) as caught:
        schedule_from_input({"recurrence": "cron", "cron": expression}, default_timezone="UTC", now=utc(2026, 12, 1))
    assert list(caught.value.message_dict) == ["cron"]
    assert all(message.strip() for message in caught.value.message_dict["cron"])


@pytest.mark.django_db
@pytest.mark.parametrize("expression", ["61 * * * *", "99999999999999999999 * * * *", "0\x00 9 * * *", "x" * 5000])
def test_bad_cron_through_the_api_and_the_console_is_a_field_error(teammate, expression):
    campaign = CampaignFactory(organisation=teammate.organisation)
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/schedule/", {"recurrence": "cron", "cron": expression}, format="json"
    )
    assert response.status_code == 400 and list(response.data) == ["cron"], response.data
    page = console_client(teammate).post(
        f"/campaigns/{campaign.pk}/schedule/", {"recurrence": "cron", "cron": expression}, follow=True
    )
    assert page.status_code == 200
    assert "cron:" in page.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"
