"""Messages in flight per run, for the progress bar: a worker adds its batch when it claims it and removes it when
the batch is recorded. Display only: the authoritative counts are PostgreSQL's. Entries expire on their own, so a
killed worker's batch stops showing as "sending" within a minute; its rows are queued again by then anyway."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from django.core.cache import cache

from config.outage import cache_outage

logger = logging.getLogger(__name__)
TTL = 60


def _key(run_id: Any) -> str:
    return f"run-in-flight:{run_id}"


def in_flight_add(run_id: Any, count: int) -> str:
    token = uuid.uuid4().hex
    try:
        client = cache._cache.get_client(write=True)  # the redis-py client behind Django's Redis cache
        key = cache.make_key(_key(run_id))
        client.hset(key, token, f"{count}:{time.time() + TTL}")
        client.expire(key, TTL)
    except Exception as exc:
        logger.debug("in-flight bookkeeping failed: %s", exc)
    return token


def in_flight_done(run_id: Any, token: str) -> None:
    try:
        cache._cache.get_client(write=True).hdel(cache.make_key(_key(run_id)), token)
    except Exception as exc:
        logger.debug("in-flight bookkeeping failed: %s", exc)


def in_flight(run_id: Any) -> int:
    if cache_outage.skipping():  # read by progress pages: a hung Redis must not cost each of them a timeout
        return 0
    try:
        entries = cache._cache.get_client().hgetall(cache.make_key(_key(run_id)))
    except Exception as exc:
        cache_outage.failed("in-flight count", exc)
        return 0
    now, total = time.time(), 0
    for value in entries.values():
        count, _, expires = value.decode().partition(":")
        if float(expires or 0) > now:
            total += int(count)
    return total
