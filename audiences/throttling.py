"""Per-key API rate limit: a fixed window counted with an atomic Redis INCR, answered with 429 + Retry-After.

DRF's stock throttles keep a list of timestamps per client and rewrite it on every request, which loses counts
when two requests race; INCR cannot.
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle


def parse_rate(rate: str) -> tuple[int, int]:
    count, _, seconds = rate.partition("/")
    units = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
    window = units[seconds] if seconds in units else int(seconds)
    return int(count), window


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
        limit, window = parse_rate(settings.API_RATE_LIMIT)
        now = time.time()
        window_start = int(now // window) * window
        key = f"throttle:{identity}:{window_start}"
        cache.add(key, 0, timeout=window + 1)
        try:
            used = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=window + 1)
            used = 1
        request.rate_limit = {
            "limit": limit,
            "remaining": max(limit - used, 0),
            "reset": window_start + window,
        }
        if used > limit:
            self._wait = window_start + window - now
            return False
        return True

    def wait(self) -> float:
        return max(1, math.ceil(self._wait))
