"""Sending rates: per campaign (messages per minute and per hour, defaults from the organisation) and per channel
for the whole organisation (provider limits). Token buckets in Redis, taken atomically across every bucket that
applies, so workers on any machine share them.

A bucket holds at most `capacity` tokens and refills continuously at `rate` per second. Workers take tokens before
claiming, so sends are spread evenly through each window instead of bursting at :00. Two numbers decide whether a
limit of N per window W is kept and delivered:
- capacity is what accrues in BURST_SECONDS (at least one token). While a worker's batch is with the provider
  (a slow provider takes hundreds of milliseconds), tokens keep accruing up to the capacity and are taken by the
  next claim; a capacity of a fraction of that time throws tokens away and the run falls short of its rate.
- the refill rate is (N - capacity - jitter) / W, so that a full bucket plus a window's refill never exceed N in
  any window of W seconds, even with hand-offs that take a little more or less time than each other (a quarter of
  a second's worth is kept back). Over three windows that delivers within 1.6 % of 3N.
Bucket state is coordination, not data: if Redis loses it, a bucket starts full again, which is at most one
capacity's worth of messages early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache

TAKE = """
local want = tonumber(ARGV[1])
local fraction = tonumber(ARGV[#ARGV])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local available = want
local worthwhile = 1
local state = {}
for i, key in ipairs(KEYS) do
    local rate = tonumber(ARGV[2 * i])
    local capacity = tonumber(ARGV[2 * i + 1])
    local data = redis.call('HMGET', key, 't', 'ts')
    local tokens = tonumber(data[1]) or capacity
    local ts = tonumber(data[2]) or now
    tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
    state[i] = tokens
    available = math.min(available, math.floor(tokens))
    worthwhile = math.max(worthwhile, math.floor(capacity * fraction))
end
-- A batch is worth a provider call once REFILL_FRACTION of the bucket has accrued (or all that is wanted):
-- handing out a token or two at a time would keep a worker process busy with tiny batches all the time.
if available < math.min(want, worthwhile) then
    available = 0
end
local wait = 0
for i, key in ipairs(KEYS) do
    local rate = tonumber(ARGV[2 * i])
    local capacity = tonumber(ARGV[2 * i + 1])
    local tokens = state[i] - available
    redis.call('HSET', key, 't', tostring(tokens), 'ts', tostring(now))
    redis.call('EXPIRE', key, 7200)
    if available < want then
        -- Come back when a worthwhile batch has accrued (REFILL_FRACTION of the bucket, at least a token), not for
        -- every single token: a throttled lane then takes a worker once a second or so, not dozens of times.
        local target = math.max(1, math.min(want, math.floor(capacity * fraction)))
        wait = math.max(wait, math.max(0, target - tokens) / rate)
    end
end
return {available, tostring(wait)}
"""

GIVE_BACK = """
for i, key in ipairs(KEYS) do
    redis.call('HINCRBYFLOAT', key, 't', ARGV[1])
end
return 1
"""


# Tokens accrue for this long while a batch is away at the provider before any are lost (see the docstring).
BURST_SECONDS = 1.0
# What arrives at the provider is a hand-off later than the tokens were taken, and hand-offs do not all take the
# same time: a quarter of a second of that jitter is kept out of every window, so none holds more than N on the wire.
JITTER_SECONDS = 0.25
# How late (in tokens) a lane may come back for a token without the bucket overflowing.
LATE_TOKENS = 0.25
# An empty bucket's wait is until it holds this fraction of its capacity again: the rest of the second is slack for
# the follow-up task's round trip, so nothing accrues past the capacity and is lost.
REFILL_FRACTION = 0.6


@dataclass(frozen=True)
class Bucket:
    key: str
    per_minute: float  # the limit N per window (per minute, or per hour with window_seconds=3600)
    window_seconds: float = 60.0

    @property
    def capacity(self) -> float:
        # At least a token and a quarter: at a token a second or slower, a lane comes back for the next token a
        # little after it is whole (a task's round trip), and a bucket capped at exactly one would throw that
        # time away on every token (N=60 delivered 4 % short).
        return max(1.0 + LATE_TOKENS, self.per_minute * BURST_SECONDS / self.window_seconds)

    @property
    def rate(self) -> float:
        """Tokens per second such that no window holds more than N messages: a full bucket plus a window's refill,
        and the hand-off jitter — which can only add a whole message to a window once a quarter second's refill
        reaches one message (below that, the window's bound is the bucket's alone)."""
        jitter = self.per_minute * JITTER_SECONDS / self.window_seconds
        headroom = self.capacity + (jitter if jitter >= 1.0 else 0.0)
        return max(self.per_minute - headroom, self.per_minute * 0.5) / self.window_seconds


def campaign_buckets(campaign: Any, channel: str) -> list[Bucket]:
    organisation = campaign.organisation
    buckets = []
    per_minute = campaign.messages_per_minute or organisation.default_messages_per_minute
    per_hour = campaign.messages_per_hour or organisation.default_messages_per_hour
    if per_minute:
        buckets.append(Bucket(f"throttle:campaign:{campaign.pk}:minute", float(per_minute)))
    if per_hour:
        buckets.append(Bucket(f"throttle:campaign:{campaign.pk}:hour", float(per_hour), window_seconds=3600))
    channel_limit = (organisation.channel_limits_per_minute or {}).get(channel)
    if channel_limit:
        buckets.append(Bucket(f"throttle:org:{organisation.pk}:{channel}", float(channel_limit)))
    return buckets


def binding_limit(campaign: Any, channels: list[str]) -> tuple[float, float] | None:
    """The limit that decides how fast this campaign can go, as (messages a minute the bucket lets through, the
    limit as configured, a minute's share of it); None when nothing limits it. The first is a little under the
    second: a bucket keeps its burst and the hand-off jitter inside every window."""
    organisation = campaign.organisation
    limits: list[tuple[float, float]] = []
    per_minute = campaign.messages_per_minute or organisation.default_messages_per_minute
    per_hour = campaign.messages_per_hour or organisation.default_messages_per_hour
    if per_minute:
        limits.append((Bucket("", float(per_minute)).rate * 60, float(per_minute)))
    if per_hour:
        limits.append((Bucket("", float(per_hour), window_seconds=3600).rate * 60, per_hour / 60))
    channel_limits = [
        (Bucket("", float(limit)).rate * 60, float(limit))
        for channel, limit in (organisation.channel_limits_per_minute or {}).items()
        if channel in channels and limit
    ]
    if channel_limits:
        # Messages of different channels queue behind their own limits; the slowest channel decides.
        limits.append(min(channel_limits))
    return min(limits) if limits else None


def effective_per_minute(campaign: Any, channels: list[str]) -> float | None:
    """The most messages a minute this campaign can send (None: unlimited), for estimates."""
    limit = binding_limit(campaign, channels)
    return limit[0] if limit else None


def _client() -> Any:
    return cache._cache.get_client(write=True)  # the redis-py client behind Django's Redis cache


def take(buckets: list[Bucket], want: int) -> tuple[int, float]:
    """Take up to `want` tokens from every bucket at once. Returns (taken, seconds until the next token)."""
    if not buckets or want <= 0:
        return want, 0.0
    keys = [cache.make_key(bucket.key) for bucket in buckets]
    args: list[Any] = [want]
    for bucket in buckets:
        args.extend([bucket.rate, bucket.capacity])
    args.append(REFILL_FRACTION)
    taken, wait = _client().eval(TAKE, len(keys), *keys, *args)
    return int(taken), float(wait)


def give_back(buckets: list[Bucket], count: int) -> None:
    """Return tokens taken for messages that turned out not to be there (a claim that found fewer rows)."""
    if buckets and count > 0:
        keys = [cache.make_key(bucket.key) for bucket in buckets]
        _client().eval(GIVE_BACK, len(keys), *keys, count)


def minutes_for(count: int, per_minute: float | None) -> float:
    return 0.0 if not per_minute else math.ceil(count) / per_minute
