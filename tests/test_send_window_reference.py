"""cs_next_send_time and cs_quiet_hours_end (delivery migration 0011) against a brute-force reading of the
recipient's clock: Python's zoneinfo, minute by minute, in the zones where clocks misbehave — DST on both
hemispheres, Lord Howe's 30-minute change, São Paulo's changes at midnight, Kiritimati (+14, which skipped
31 December 1994), Apia (which skipped 30 December 2011), Honolulu (-10) and Kolkata (+5:30).

The reference is the definition (the function's comment says it in words):
- an instant is allowed when its local time of day is inside the window [start, end) — across midnight when the
  start is later; no window or equal ends: any time — and, with weekends off, its local date is Monday to Friday;
  the next send time is the first allowed instant from now on;
- with a local send time, a date's send moment is the first minute the clock shows that time or later that day
  (the first of two on an autumn night, the end of the gap when skipped); the answer is the first such moment from
  now on that the window and weekday rules allow, looked for from yesterday's date to nine days ahead, else the
  window alone.
Local and UTC offsets are whole minutes in every zone here since 1972, so every instant where the answer can land
is a whole minute of UTC and a minute-by-minute reading finds it exactly.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

MINUTE = timedelta(minutes=1)
SPAN_BEFORE = timedelta(days=4)  # the clock is read from 4 days before a case's base instant…
SPAN_DAYS = 18  # …for 18 days: yesterday's date to nine days ahead, and a weekend beyond, fit whatever "now" is.

ZONES = (
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Kiritimati",
    "Pacific/Honolulu",
    "Asia/Kolkata",
    "America/Sao_Paulo",
    "Pacific/Apia",
    "CET",  # an IANA name PostgreSQL also knows as a fixed-offset abbreviation
    "UTC",
)
# Years with clock changes worth reading: Kiritimati's and Apia's skipped days, São Paulo's last DST years
# (changes at midnight), and now.
YEARS = (1994, 2011, 2018, 2026, 2027)

# Daily windows: none, ordinary, across midnight, ending or starting at midnight, equal ends, and windows around
# the hours clocks change at (01:00-03:00 local in most zones, 00:00 in São Paulo, 02:00-02:30 on Lord Howe).
WINDOWS: tuple[tuple[time | None, time | None], ...] = (
    (None, None),
    (time(9), time(17)),
    (time(20), time(2)),
    (time(22), time(0)),
    (time(0), time(6)),
    (time(23), time(1)),
    (time(1), time(3)),
    (time(1, 30), time(2, 30)),
    (time(2), time(3)),
    (time(2, 15), time(2, 45)),
    (time(0, 30), time(1, 30)),
    (time(1), time(1, 45)),
    (time(3), time(2)),
    (time(9), time(9)),
)
LOCAL_TIMES = (time(0), time(0, 30), time(1), time(1, 30), time(2), time(2, 15), time(2, 30), time(9), time(23, 30))


class Clock:
    """A zone's wall clock read minute by minute from `start` (a whole UTC minute) for SPAN_DAYS days."""

    def __init__(self, zone: str, start: datetime) -> None:
        self.start = start
        tz = ZoneInfo(zone)
        base = int(start.timestamp())
        self.walls = [
            datetime.fromtimestamp(base + 60 * i, tz).replace(tzinfo=None) for i in range(SPAN_DAYS * 24 * 60)
        ]
        # The latest local time the clock has shown so far: the first minute it is >= X is the first minute the
        # clock shows X or later (the clock goes back on autumn nights).
        self.shown = list(itertools.accumulate(self.walls, max))
        self.minutes = [w.hour * 60 + w.minute for w in self.walls]
        self.weekend = [w.isoweekday() >= 6 for w in self.walls]

    def index(self, at: datetime) -> int:
        """The minute `at` falls in."""
        i = int((at - self.start).total_seconds() // 60)
        assert 0 <= i < len(self.walls), "case outside the clock's span"
        return i

    def instant(self, i: int) -> datetime:
        assert 0 < i < len(self.walls), "answer outside the clock's span"
        return self.start + i * MINUTE


def in_window(minute_of_day: int, start: time | None, end: time | None) -> bool:
    if start is None or end is None or start == end:
        return True
    lo, hi = start.hour * 60 + start.minute, end.hour * 60 + end.minute
    return lo <= minute_of_day < hi if lo < hi else (minute_of_day >= lo or minute_of_day < hi)


def allowed(clock: Clock, i: int, start: time | None, end: time | None, skip_weekends: bool) -> bool:
    return not (skip_weekends and clock.weekend[i]) and in_window(clock.minutes[i], start, end)


def reference_window(clock: Clock, now: datetime, start, end, skip_weekends) -> datetime:
    # Windows open and close on whole minutes, so within now's minute nothing changes.
    i = clock.index(now)
    if allowed(clock, i, start, end, skip_weekends):
        return now
    i += 1
    while not allowed(clock, i, start, end, skip_weekends):
        i += 1
    return clock.instant(i)


def reference_next_send_time(clock: Clock, now, start, end, skip_weekends, local_time) -> datetime:
    if local_time is not None:
        today = clock.walls[clock.index(now)].date()
        for days_ahead in range(-1, 10):
            target = datetime.combine(today + timedelta(days=days_ahead), local_time)
            i = bisect.bisect_left(clock.shown, target)
            assert i > 0, "the clock must start before the target"
            moment = clock.instant(i)
            if moment >= now and allowed(clock, i, start, end, skip_weekends):
                return moment
    return reference_window(clock, now, start, end, skip_weekends)


def reference_quiet_hours_end(clock: Clock, at: datetime, quiet_start, quiet_end) -> datetime | None:
    if quiet_start == quiet_end:
        return None
    i = clock.index(at)
    if not in_window(clock.minutes[i], quiet_start, quiet_end):
        return None
    i += 1
    while in_window(clock.minutes[i], quiet_start, quiet_end):
        i += 1
    return clock.instant(i)


def clock_changes(zone: str, year: int) -> list[datetime]:
    """The instants (UTC) the zone's offset changed in `year`: hourly readings, then the exact minute."""
    tz = ZoneInfo(zone)
    at = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    changes = []
    previous = at.astimezone(tz).utcoffset()
    while at < end:
        after = (at + timedelta(hours=1)).astimezone(tz).utcoffset()
        if after != previous:
            minute = at
            while (minute + MINUTE).astimezone(tz).utcoffset() == previous:
                minute += MINUTE
            changes.append(minute + MINUTE)
            previous = after
        at += timedelta(hours=1)
    return changes


@dataclass
class Base:
    zone: str
    instant: datetime  # a clock change, or an ordinary instant
    clock: Clock


@functools.cache
def bases() -> list[Base]:
    """Read once for the module: the clocks are the slow part of the reference."""
    return list(_bases(random.Random(0)))


def _bases(rng: random.Random) -> Iterator[Base]:
    for zone in ZONES:
        instants = [change for year in YEARS for change in clock_changes(zone, year)]
        # Ordinary days too, each weekday included: a Friday and a Sunday at least.
        instants += [datetime(2026, 12, 4, 12, tzinfo=UTC), datetime(2026, 12, 6, 12, tzinfo=UTC)]
        instants += [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(365 * 1440))]
        for instant in instants:
            start = (instant - SPAN_BEFORE).replace(second=0, microsecond=0)
            yield Base(zone, instant, Clock(zone, start))


NOW_OFFSETS = [
    timedelta(seconds=s)
    for s in (-26 * 3600, -3 * 3600, -3600 - 60, -3600, -1800, -60, -1, 0, 1, 59, 1800, 3600, 3660, 7200, 25 * 3600)
]


def nows(base: Base, rng: random.Random) -> list[datetime]:
    """Instants around the base: on the minute and off it, before, at and after a change."""
    out = [base.instant + offset for offset in NOW_OFFSETS]
    out += [base.instant + timedelta(seconds=rng.uniform(-36 * 3600, 48 * 3600)) for _ in range(10)]
    return out


def sql_next_send_times(cases: list[tuple]) -> list[datetime]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT cs_next_send_time(u.now_ts, u.tz, u.ws, u.we, u.skip, u.lt)"
            " FROM unnest(%s::timestamptz[], %s::text[], %s::time[], %s::time[], %s::boolean[], %s::time[])"
            " WITH ORDINALITY AS u(now_ts, tz, ws, we, skip, lt, n) ORDER BY u.n",
            [list(column) for column in zip(*cases, strict=True)],
        )
        return [row[0] for row in cursor.fetchall()]


def sql_quiet_hours_ends(cases: list[tuple]) -> list[datetime | None]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT cs_quiet_hours_end(u.at, u.tz, u.qs, u.qe)"
            " FROM unnest(%s::timestamptz[], %s::text[], %s::time[], %s::time[])"
            " WITH ORDINALITY AS u(at, tz, qs, qe, n) ORDER BY u.n",
            [list(column) for column in zip(*cases, strict=True)],
        )
        return [row[0] for row in cursor.fetchall()]


def _mismatches(cases, got, expected) -> list[str]:
    return [
        f"{case}: got {g.isoformat() if g else g}, expected {e.isoformat() if e else e}"
        for case, g, e in zip(cases, got, expected, strict=True)
        if g != e
    ]


def _check_next_send_time(with_local_time: bool, seed: int) -> int:
    rng = random.Random(seed)
    cases, expected = [], []
    rules = list(itertools.product(WINDOWS, (False, True), LOCAL_TIMES if with_local_time else (None,)))
    for base in bases():
        for now in nows(base, rng):
            # Many rules (every one without a local time) within an hour of the change, a sample elsewhere.
            near = abs(now - base.instant) <= timedelta(hours=1)
            chosen = rng.sample(rules, min(len(rules), 48 if near else 12))
            for (start, end), skip_weekends, local_time in chosen:
                cases.append((now, base.zone, start, end, skip_weekends, local_time))
                expected.append(reference_next_send_time(base.clock, now, start, end, skip_weekends, local_time))
    mismatches = _mismatches(cases, sql_next_send_times(cases), expected)
    assert mismatches[:20] == [], f"{len(mismatches)} of {len(cases)} differ"
    return len(cases)


def test_next_send_time_with_windows_and_weekends_is_the_clocks_first_allowed_minute():
    assert _check_next_send_time(with_local_time=False, seed=17) > 10_000


def test_local_send_time_is_the_first_moment_the_clock_shows_it_on_an_allowed_day():
    assert _check_next_send_time(with_local_time=True, seed=1709) > 10_000


def test_quiet_hours_end_is_the_first_minute_the_clock_leaves_them():
    rng = random.Random(42)
    cases, expected = [], []
    quiet_hours = [(start, end) for start, end in WINDOWS if start is not None]
    for base in bases():
        for now in nows(base, rng):
            for quiet_start, quiet_end in quiet_hours:
                cases.append((now, base.zone, quiet_start, quiet_end))
                expected.append(reference_quiet_hours_end(base.clock, now, quiet_start, quiet_end))
    mismatches = _mismatches(cases, sql_quiet_hours_ends(cases), expected)
    assert mismatches[:20] == [], f"{len(mismatches)} of {len(cases)} differ"
    assert len(cases) > 10_000
    assert sum(e is not None for e in expected) > 2_000  # inside quiet hours often enough to mean something


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "tz", "rules", "expected"),
    [
        # 20:00-02:00 with weekends off, on a Saturday in London (GMT): Monday's 00:00-02:00 part is a weekday's.
        (utc(2026, 11, 28, 12), "Europe/London", {"window": (time(20), time(2)), "skip": True}, utc(2026, 11, 30)),
        (utc(2026, 11, 28, 1), "Europe/London", {"window": (time(20), time(2)), "skip": True}, utc(2026, 11, 30)),
        # …and Friday night up to midnight is Friday's.
        (utc(2026, 11, 27, 23), "Europe/London", {"window": (time(20), time(2)), "skip": True}, utc(2026, 11, 27, 23)),
        # New York springs forward at 07:00 UTC on 8 March 2026 (01:59 EST -> 03:00 EDT). A window opening at 02:30
        # is entered when the clock jumps to 03:00 EDT (07:00 UTC), not at "02:30 EST" (07:30 UTC).
        (utc(2026, 3, 8, 5), "America/New_York", {"window": (time(2, 30), time(5))}, utc(2026, 3, 8, 7)),
        # A 02:00-03:00 window does not exist that day: the next day's, 02:00 EDT, not 03:00 EDT (its end).
        (utc(2026, 3, 8, 5), "America/New_York", {"window": (time(2), time(3))}, utc(2026, 3, 9, 6)),
        # Clocks go back at 06:00 UTC on 1 November 2026 (01:59 EDT -> 01:00 EST): 01:30 first comes at 01:30 EDT.
        (utc(2026, 11, 1, 4), "America/New_York", {"local": time(1, 30)}, utc(2026, 11, 1, 5, 30)),
        # Inside a 01:00-01:45 window during the first 01:10 (EDT): now, not an hour later at 01:10 EST.
        (utc(2026, 11, 1, 5, 10), "America/New_York", {"window": (time(1), time(1, 45))}, utc(2026, 11, 1, 5, 10)),
        # Lord Howe moves its clock 30 minutes, at 02:00 local on 4 October 2026 (15:30 UTC the day before):
        # 02:15 is skipped, so "02:15 local" is 02:30 (+11) that day.
        (utc(2026, 10, 3, 12), "Australia/Lord_Howe", {"local": time(2, 15)}, utc(2026, 10, 3, 15, 30)),
        # The same local time from -10 to +14: 09:00 in Honolulu and in Kiritimati are the same instant.
        (utc(2026, 12, 4, 18), "Pacific/Honolulu", {"local": time(9)}, utc(2026, 12, 4, 19)),
        (utc(2026, 12, 4, 18), "Pacific/Kiritimati", {"local": time(9)}, utc(2026, 12, 4, 19)),
        # 09:00 already passed today in Kolkata (23:30 IST): tomorrow's, 03:30 UTC.
        (utc(2026, 12, 4, 18), "Asia/Kolkata", {"local": time(9)}, utc(2026, 12, 5, 3, 30)),
        # IANA names that are also abbreviations keep their summer time (not CET's fixed +01 and so on).
        (utc(2026, 7, 1, 1), "CET", {"local": time(9)}, utc(2026, 7, 1, 7)),
        (utc(2026, 7, 1, 1), "MET", {"local": time(9)}, utc(2026, 7, 1, 7)),
        (utc(2026, 7, 1, 1), "EET", {"local": time(9)}, utc(2026, 7, 1, 6)),
        (utc(2026, 7, 1, 1), "WET", {"local": time(9)}, utc(2026, 7, 1, 8)),
    ],
)
def test_cases_from_the_issue(now, tz, rules, expected):
    start, end = rules.get("window", (None, None))
    assert sql_next_send_times([(now, tz, start, end, rules.get("skip", False), rules.get("local"))]) == [expected]


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", None, "Europe/Londn", "'; DROP TABLE x; --"])
def test_an_unknown_zone_is_read_as_utc(tz):
    now = utc(2026, 12, 4, 6)
    assert sql_next_send_times([(now, tz, time(9), time(17), False, None)]) == [utc(2026, 12, 4, 9)]
    assert sql_next_send_times([(now, tz, None, None, False, time(7, 30))]) == [utc(2026, 12, 4, 7, 30)]
    assert sql_quiet_hours_ends([(now, tz, time(22), time(7))]) == [utc(2026, 12, 4, 7)]


def test_the_clock_reading_itself_sees_the_changes_it_is_meant_to():
    """The reference's own premises: the zones' tz data has the changes this file relies on."""
    assert clock_changes("Pacific/Kiritimati", 1994) == [utc(1994, 12, 31, 10)]
    assert clock_changes("America/Sao_Paulo", 2018) == [utc(2018, 2, 18, 2), utc(2018, 11, 4, 3)]
    assert clock_changes("Australia/Lord_Howe", 2026) == [utc(2026, 4, 4, 15), utc(2026, 10, 3, 15, 30)]
    assert date(2011, 12, 30) not in {
        (utc(2011, 12, 29) + i * MINUTE).astimezone(ZoneInfo("Pacific/Apia")).date() for i in range(3 * 1440)
    }


def test_a_contact_zone_postgresql_does_not_know_is_read_as_utc_at_fan_out_and_claim(
    organisation, django_capture_on_commit_callbacks
):
    from audiences.contacts import contacts_upsert_rows
    from audiences.models import Contact
    from campaigns.models import Variant
    from compliance.models import ContactPreference
    from delivery import runs, sending
    from delivery.fanout import run_create
    from delivery.models import Message
    from tests.factories import CampaignFactory

    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": "z1", "email": "z1@example.com", "timezone": "Europe/Paris"}]
    )
    contact = Contact.objects.get(organisation=organisation, external_id="z1")
    # A name that reached the row without the import's check (or left the tz data since): no crash, UTC.
    Contact.objects.filter(pk=contact.pk).update(timezone="Mars/Olympus")
    hour = datetime.now(UTC).hour
    # Personal quiet hours the claim reads in the contact's zone (as UTC: not now), and a window around now (UTC).
    ContactPreference.objects.create(
        contact=contact,
        organisation=organisation,
        quiet_hours_start=time((hour + 3) % 24),
        quiet_hours_end=time((hour + 4) % 24),
    )
    sent_now = CampaignFactory(
        organisation=organisation,
        channels=["email"],
        audience_rules={"field": "external_id", "op": "eq", "value": "z1"},
        send_window_start=time((hour + 23) % 24),
        send_window_end=time((hour + 2) % 24),
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    at_nine = CampaignFactory(
        organisation=organisation,
        channels=["email"],
        audience_rules={"field": "external_id", "op": "eq", "value": "z1"},
        local_send_time=time(9),
    )
    assert Variant.objects.filter(campaign__in=[sent_now, at_nine]).count() == 2
    for campaign in (sent_now, at_nine):
        with django_capture_on_commit_callbacks(execute=False):
            runs.run_prepare(run_create(campaign=campaign).pk)
    sending.run_send_for(Message.objects.get(run__campaign=sent_now).run_id, seconds=10)
    assert Message.objects.get(run__campaign=sent_now).status == "delivered"  # the sandbox confirms at once
    message = Message.objects.get(run__campaign=at_nine)
    fanned_out_at = message.run.fanned_out_at
    nine = datetime.combine(fanned_out_at.date(), time(9), tzinfo=UTC)
    assert message.due_at == (nine if nine >= fanned_out_at else nine + timedelta(days=1))
