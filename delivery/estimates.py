"""When a run will finish: one estimate for the run page, its progress fragment and the API.

What is left goes in order of due time — messages due now first, then the deferred ones (retries, marketing SMS
waiting for the morning, quiet hours, local send times, a closed send window) from their due_at on, so the last
due_at among queued messages is a lower bound — at one rate: before sending starts, the throttles'
(delivery.throttle.effective_per_minute); once it has, the rate observed over the last minute of recorded batches,
or the throttles' when that is within 2 % of it or above. A campaign's send window stops the flow when it closes
and resumes it when it opens.

The send window is followed in the organisation's timezone, except that deferred messages due while the
organisation's window is closed are taken to be recipients elsewhere whose own window opens then, and get a
window's length from there: their due_at was set in their own zone (cs_next_send_time), the closing is not known.

Cheap to call every second: the run row's counters, and the deferred messages grouped by minute from the
(run, due_at) index of queued rows, which holds only queued rows. The observed rate needs two readings of the
counters; each call leaves its reading in Redis for the next one (display only, like delivery.progress: without
Redis the rate is the one since sending started).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from time import perf_counter
from typing import Any
from zoneinfo import ZoneInfo

from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from config.outage import REDIS_ERRORS, cache_outage
from delivery import throttle
from delivery.models import Run

# The observed rate is measured over at most this much of the run's recent recording history…
RATE_WINDOW_SECONDS = 60.0
# …and over at least this much, below which a reading is too close to the last one to tell a rate.
RATE_MIN_SPAN_SECONDS = 2.0
# An observed rate this close to the throttles' (or above) is the throttle at work: the estimate goes at its rate.
LIMIT_REACHED = 0.98
# A deferred-messages query slower than this is kept for a while (see _deferred).
DEFERRED_CACHE_ABOVE_SECONDS = 0.02
# How far ahead the walk through send windows looks before it gives up (a window of a minute a week is slow).
HORIZON_DAYS = 400

# Queued messages due later than now, in minutes: when each minute's last one is due and how many there are.
DEFERRED_SQL = """
SELECT max(due_at), count(*)
FROM delivery_message
WHERE run_id = %s AND status = 'queued' AND due_at > %s
GROUP BY date_trunc('minute', due_at)
ORDER BY 1
"""

FINISHED = {Run.Status.COMPLETED: "finished", Run.Status.CANCELLED: "cancelled", Run.Status.FAILED: "failed"}


@dataclass(frozen=True)
class RunEstimate:
    """When the run should finish (the actual time once it has), and why: "at 600/min limit", "observed
    512/min", "waits for send window 08:00 GMT". `at` is None while paused or with nothing to go on yet."""

    at: datetime | None
    explanation: str
    finished: bool = False


def run_estimate(run: Run, *, now: datetime | None = None) -> RunEstimate:
    now = now or timezone.now()
    if run.status in FINISHED:
        return RunEstimate(run.finished_at, FINISHED[run.status], finished=True)
    if run.status == Run.Status.PAUSED:
        _forget_readings(run)  # the time paused is no part of the rate after resuming
        return RunEstimate(None, "paused")
    if run.status in (Run.Status.PENDING, Run.Status.FANNING_OUT):
        return RunEstimate(None, "preparing recipients")
    if run.trigger == Run.Trigger.EVENT:
        return RunEstimate(None, "open while the campaign is active")
    remaining = run.remaining_count
    if remaining <= 0:
        return RunEstimate(now, "finishing")

    campaign = run.campaign
    binding = throttle.binding_limit(campaign, list(campaign.channels))
    limit = binding[0] if binding else None
    # Said as the marketer set it ("the 600/min limit"); the pace a little under it is the bucket's.
    at_limit = f"at the {_rate(binding[1])}/min limit" if binding else ""
    deferred = _deferred(run, now)
    due_now = max(0, remaining - sum(count for _, count in deferred))
    observed = _observed_per_minute(run) if run.status == Run.Status.SENDING else None
    if observed and due_now and not (limit and observed >= LIMIT_REACHED * limit):
        per_minute: float | None = observed
        basis = f"observed {_rate(observed)}/min"
    elif observed and due_now:
        # Going at the limit (a reading a batch early or late is a little over or under it): the throttle decides.
        per_minute, basis = limit, at_limit
    elif limit:
        # Nothing sending now (or not yet): what went in the last minute says nothing of the rate once the
        # deferred messages are due; the throttle's rate does.
        per_minute, basis = limit, at_limit
    elif observed:
        per_minute, basis = observed, f"observed {_rate(observed)}/min"
    else:
        per_minute, basis = None, "measuring the send rate"
    if per_minute is None and due_now:
        return RunEstimate(None, basis)  # unlimited and nothing recorded yet: no rate to go on

    # The counters are exact as of the last recorded batch, so a sending run's flow is counted from then.
    start = now
    if run.status == Run.Status.SENDING and run.last_progress_at and now - run.last_progress_at < timedelta(minutes=1):
        start = min(now, run.last_progress_at)
    walk = _Walk(campaign, per_minute, start)
    walk.send(due_now)
    for due_at, count in deferred:
        walk.release(due_at)
        walk.send(count)
    at = max(walk.at, now)
    parts = [basis] if per_minute else []
    if walk.waited_for is not None:
        parts.append(f"waits for {_wait_label(campaign)} {_clock(walk.waited_for, walk.zone, now)}")
    elif walk.crossed_closing:
        parts.append("across send windows")
    return RunEstimate(at, "; ".join(parts))


def _deferred(run: Run, now: datetime) -> list[tuple[datetime, int]]:
    """The deferred messages by minute. A run with many (a million waiting for a send window: ~300 ms) keeps its
    answer for a while, fifty times as long as it took (at most 30 s), so a page polling every second does not
    spend the database on it: a minute's messages that fell due meanwhile are simply not waited for."""
    key = cache.make_key(f"run-deferred:{run.pk}")
    cached = _cache_call(lambda client: client.get(key))
    if cached:
        return [(datetime.fromisoformat(due_at), count) for due_at, count in json.loads(cached)]
    began = perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(DEFERRED_SQL, [str(run.pk), now])
        rows = [(due_at, count) for due_at, count in cursor.fetchall()]
    took = perf_counter() - began
    if took > DEFERRED_CACHE_ABOVE_SECONDS:
        payload = json.dumps([(due_at.isoformat(), count) for due_at, count in rows])
        _cache_call(lambda client: client.set(key, payload, px=int(1000 * min(30.0, max(1.0, 50 * took)))))
    return rows


def _cache_call(call: Any) -> Any:
    """A Redis call that answers None while Redis is unavailable (config.outage: a failure is skipped for a
    while, not waited for on every page view)."""
    if cache_outage.skipping():
        return None
    try:
        return call(cache._cache.get_client(write=True))  # the redis-py client behind Django's Redis cache
    except REDIS_ERRORS as exc:
        cache_outage.failed("run estimate", exc)
        return None


# --- the observed rate --------------------------------------------------------------------------------------------


def _readings_key(run: Run) -> str:
    return cache.make_key(f"run-rate-readings:{run.pk}")


def _observed_per_minute(run: Run) -> float | None:
    """Messages done per minute between an earlier reading of the counters (the oldest within the last minute
    of recording; else the start of sending) and this one. Readings are taken at last_progress_at, the instant the
    counters are exact for, so a reading between two batches does not see a rate fall."""
    if run.started_sending_at is None or run.last_progress_at is None or run.done_count <= 0:
        return None
    at, done = run.last_progress_at.timestamp(), run.done_count
    since, done_then = run.started_sending_at.timestamp(), 0
    oldest = _readings_exchange(run, at, done)
    if oldest is not None and oldest[1] < done:  # a reading after the first batch: the time to start up is left out
        since, done_then = oldest
    if done <= done_then or at - since < RATE_MIN_SPAN_SECONDS:
        return None  # too soon to tell (the first batch alone would read as a burst)
    return 60.0 * (done - done_then) / (at - since)


def _readings_exchange(run: Run, at: float, done: int) -> tuple[float, int] | None:
    """Leave this reading (at, done) and return the oldest one within the last minute of recording but at least
    RATE_MIN_SPAN_SECONDS before it (None: none, or Redis is unavailable)."""
    key = _readings_key(run)

    def exchange(client: Any) -> list[bytes]:
        pipe = client.pipeline()
        pipe.zadd(key, {f"{at}:{done}": at})
        pipe.zremrangebyscore(key, "-inf", f"({at - 2 * RATE_WINDOW_SECONDS}")
        pipe.expire(key, int(4 * RATE_WINDOW_SECONDS))
        pipe.zrangebyscore(key, at - RATE_WINDOW_SECONDS, at - RATE_MIN_SPAN_SECONDS, start=0, num=1)
        return pipe.execute()[-1]

    oldest = _cache_call(exchange)
    if not oldest:
        return None
    then, _, count = oldest[0].decode().partition(":")
    return float(then), int(count)


def _forget_readings(run: Run) -> None:
    _cache_call(lambda client: client.delete(_readings_key(run)))


# --- time through send windows ---------------------------------------------------------------------------------


class _Walk:
    """A clock that sends messages at a rate, only while the campaign's send window is open."""

    def __init__(self, campaign: Any, per_minute: float | None, start: datetime) -> None:
        self.campaign = campaign
        self.per_minute = per_minute
        self.at = start.astimezone(UTC)
        self.zone = ZoneInfo(str(campaign.organisation.timezone))
        self.windowed = campaign.send_window_start is not None or campaign.skip_weekends
        self.waited_for: datetime | None = None
        self.crossed_closing = False
        # Set when the window is followed from a deferred release instead of the organisation's clock.
        self.phase: datetime | None = None

    def release(self, due_at: datetime) -> None:
        """Messages due at `due_at` join the flow: if it has run dry by then, the clock waits for them."""
        if due_at <= self.at:
            return
        self.at = due_at.astimezone(UTC)
        self.waited_for = due_at
        if self.windowed and not self._open_in_organisation_zone(due_at):
            self.phase = self.at
        elif self.windowed:
            self.phase = None

    def send(self, count: float) -> None:
        if count <= 0 or not self.per_minute:
            return
        minutes = count / self.per_minute
        if not self.windowed:
            self.at += timedelta(minutes=minutes)
            return
        left = timedelta(minutes=minutes)
        for opens, closes in self._intervals(self.at):
            if opens > self.at:
                self.crossed_closing = True
            start = max(opens, self.at)
            if start + left <= closes:
                self.at = start + left
                return
            left -= closes - start
            self.at = closes
        self.at += left  # past the horizon: a bound, not a promise

    def _intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        if self.phase is not None:
            yield from self._phase_intervals(self.phase, start)
        else:
            yield from self._organisation_intervals(start)

    def _organisation_intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Allowed stretches in the organisation's zone: each local weekday's window (a window across midnight
        is its evening part and the next day's early part, each on its own day, weekends off per day)."""
        campaign, zone = self.campaign, self.zone
        first = start.astimezone(zone).date() - timedelta(days=1)
        for offset in range(HORIZON_DAYS):
            day = first + timedelta(days=offset)
            if campaign.skip_weekends and day.isoweekday() >= 6:
                continue
            for opens, closes in _day_parts(campaign.send_window_start, campaign.send_window_end):
                begin = datetime.combine(day, opens, tzinfo=zone)
                end = (
                    datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone)
                    if closes is None
                    else datetime.combine(day, closes, tzinfo=zone)
                )
                if end > start:
                    # In UTC: arithmetic on a zone's datetimes is wall-clock time, an hour out across DST.
                    yield begin.astimezone(UTC), end.astimezone(UTC)

    def _phase_intervals(self, phase: datetime, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """A window's length from `phase` on each day after it (weekends judged by the organisation's calendar)."""
        length = _window_length(self.campaign.send_window_start, self.campaign.send_window_end)
        for offset in range(HORIZON_DAYS):
            begin = phase + timedelta(days=offset)
            if offset and self.campaign.skip_weekends and (begin + length / 2).astimezone(self.zone).isoweekday() >= 6:
                continue
            if begin + length > start:
                yield begin, begin + length

    def _open_in_organisation_zone(self, instant: datetime) -> bool:
        for opens, closes in self._organisation_intervals(instant):
            return opens <= instant < closes
        return False


def _day_parts(opens: time | None, closes: time | None) -> list[tuple[time, time | None]]:
    """A day's allowed parts as (from, to) local times, to=None meaning midnight at the end of the day."""
    if opens is None or closes is None:
        return [(time.min, None)]
    if opens < closes:
        return [(opens, closes)]
    return [(time.min, closes), (opens, None)]  # across midnight, e.g. 20:00-02:00


def _window_length(opens: time | None, closes: time | None) -> timedelta:
    if opens is None or closes is None:
        return timedelta(days=1)

    def seconds(t: time) -> int:
        return t.hour * 3600 + t.minute * 60 + t.second

    return timedelta(seconds=(seconds(closes) - seconds(opens)) % 86400 or 86400)


# --- words -------------------------------------------------------------------------------------------------------


def _wait_label(campaign: Any) -> str:
    if campaign.send_window_start is not None or campaign.skip_weekends:
        return "send window"
    if campaign.local_send_time is not None:
        return "local send time"
    return "messages due"


def _rate(per_minute: float) -> str:
    return f"{per_minute:,.0f}" if per_minute >= 10 else f"{per_minute:.1f}"


def _clock(instant: datetime, zone: ZoneInfo, now: datetime) -> str:
    local = instant.astimezone(zone)
    if local.date() == now.astimezone(zone).date():
        return local.strftime("%H:%M %Z")
    return local.strftime("%a %d %b %H:%M %Z")
