"""Per-key API rate limit: a fixed window counted with an atomic Redis INCR, answered with 429 + Retry-After.

DRF's stock throttles keep a list of timestamps per client and rewrite it on every request, which loses counts
when two requests race; INCR cannot.

While Redis is unreachable the limits degrade open: a request is answered uncounted rather than refused or
failed, because the counter protects capacity, while an API that answers 500 (or a one-click unsubscribe that
fails) is the outage itself. The failure is logged, at most once a minute per process (config.outage).
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

from config.outage import REDIS_ERRORS, cache_outage


def parse_rate(rate: str) -> tuple[int, int]:
    count, _, seconds = rate.partition("/")
    units = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
    window = units[seconds] if seconds in units else int(seconds)
    return int(count), window


def window_count(identity: str, rate: str, *, add: int = 1) -> tuple[int, int, int]:
    """Count one more hit (or none: add=0) for `identity` in the current fixed window of `rate`. Returns (used,
    limit, when the window ends as a Unix time). An atomic INCR, so racing requests are all counted."""
    limit, window = parse_rate(rate)
    now = time.time()
    window_start = int(now // window) * window
    key = f"throttle:{identity}:{window_start}"
    if cache_outage.skipping():
        return 0, limit, window_start + window  # Redis failed moments ago: do not wait on it again yet
    try:
        cache.add(key, 0, timeout=window + 1)
        try:
            used = cache.incr(key, add) if add else int(cache.get(key) or 0)
        except ValueError:  # expired between add and incr
            cache.add(key, add, timeout=window + 1)
            used = add
    except REDIS_ERRORS as exc:
        cache_outage.failed("rate-limit counter", exc)
        return 0, limit, window_start + window  # degrade open: counted as nothing used
    return used, limit, window_start + window


class ApiKeyRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait = 0.0

    def _identity(self, request: Any) -> str | None:
        api_key = getattr(request.user, "api_key", None)
        if api_key is not None:
            return f"key:{api_key.pk}"
        if request.user and request.user.is_authenticated:
            return f"user:{request.user.pk}"
        return None  # unauthenticated requests are refused before they cost anything

    def allow_request(self, request: Any, view: Any) -> bool:
        identity = self._identity(request)
        if identity is None:
            return True
        used, limit, reset = window_count(identity, settings.API_RATE_LIMIT)
        request.rate_limit = {"limit": limit, "remaining": max(limit - used, 0), "reset": reset}
        if used > limit:
            self._wait = reset - time.time()
            return False
        return True

    def wait(self) -> float:
        return max(1, math.ceil(self._wait))
