"""Probes for the orchestrator, and celery-beat's heartbeat.

- `/healthz` (liveness): the process answers. It touches nothing else, so a database or Redis outage never gets
  healthy web processes restarted (restarting would not bring PostgreSQL back).
- `/readyz` (readiness): PostgreSQL, Redis (cache, counters, throttles), the Celery broker and a fresh beat
  heartbeat. 200 when all are up; 503 with a JSON body naming what is down, so a load balancer stops routing to an
  instance that would answer 500s and an operator sees which dependency to look at.

Both answer without authentication, as probes must; they say only up or down and the kind of error, never hosts,
credentials or data.

Beat writes its heartbeat on every scheduler tick (`HeartbeatScheduler`, the configured beat scheduler): without
beat nothing is scheduled, no stalled run is recovered and no due message is woken, while every other process looks
fine. Exactly one beat may run (docs/operations.md)."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django_celery_beat.schedulers import DatabaseScheduler

from config.outage import REDIS_ERRORS, Outage

logger = logging.getLogger(__name__)

HEARTBEAT_KEY = "beat:heartbeat"
heartbeat_outage = Outage("Redis (beat heartbeat)")


def beat_heartbeat_write(now: float | None = None) -> None:
    """Record that beat is alive (wall-clock seconds, shared by every host through the cache)."""
    if heartbeat_outage.skipping():
        return
    try:
        cache.set(HEARTBEAT_KEY, time.time() if now is None else now, timeout=None)
    except REDIS_ERRORS as exc:
        heartbeat_outage.failed("write the beat heartbeat", exc)


def beat_heartbeat_age() -> float | None:
    """Seconds since beat's last heartbeat; None when there is none or Redis cannot say."""
    try:
        beat = cache.get(HEARTBEAT_KEY)
    except REDIS_ERRORS:
        return None
    return None if beat is None else max(0.0, time.time() - float(beat))


class HeartbeatScheduler(DatabaseScheduler):
    """django-celery-beat's scheduler (schedules in PostgreSQL) that also writes the heartbeat, at most once a
    second. Beat ticks at least every few seconds (the pump's interval, at most the scheduler's 5 s)."""

    _last_heartbeat = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = super().tick(*args, **kwargs)
        now = time.monotonic()
        if now - self._last_heartbeat >= 1.0:
            self._last_heartbeat = now
            beat_heartbeat_write()
        return interval


def _error(exc: BaseException) -> str:
    return f"down ({type(exc).__name__})"


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure to answer SELECT 1 is "down"; the kind is reported
        return _error(exc)
    return "ok"


def _redis() -> str:
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
    )
    try:
        client.ping()
    except REDIS_ERRORS as exc:
        return _error(exc)
    finally:
        client.close()
    return "ok"


def _broker() -> str:
    from config.celery import app

    try:
        with app.connection_for_write(url=settings.CELERY_BROKER_URL) as conn:
            conn.ensure_connection(max_retries=0, timeout=settings.REDIS_CONNECT_TIMEOUT)
            # A connection is not an answer: ask the broker something (kombu's Redis transport connects lazily).
            conn.default_channel.client.ping()
    except Exception as exc:  # kombu raises its own and the transport's errors; any of them is "down"
        return _error(exc)
    return "ok"


def _beat(redis_state: str) -> str:
    if redis_state != "ok":
        return "unknown (the heartbeat is kept in Redis)"
    age = beat_heartbeat_age()
    if age is None:
        return "down (no heartbeat)"
    if age > settings.BEAT_HEARTBEAT_MAX_AGE:
        return f"down (last heartbeat {age:.0f} s ago)"
    return "ok"


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _database(), "redis": _redis(), "broker": _broker()}
    checks["beat"] = _beat(checks["redis"])
    down = [name for name, state in checks.items() if state != "ok"]
    body = {"status": "unavailable" if down else "ok", "down": down, "checks": checks}
    if down:
        logger.warning("not ready: %s", ", ".join(f"{name} {checks[name]}" for name in down))
    return JsonResponse(body, status=503 if down else 200)
