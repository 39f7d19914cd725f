"""What a request does while Redis is down: carry on. Redis carries work (Celery messages) and counters (rate
limits, progress), never facts, which are PostgreSQL's, so nothing a request must answer needs it.

- `task_enqueue` / `task_enqueue_on_commit` send a task message and, when the broker cannot take it, log and
  return: the state the task would act on is already committed, and a beat-driven pump finds it (delivery's pump
  starts pending runs and kicks stalled ones; the outbox and imports have their own). A request that raised here
  would turn a committed change into a 500, and the client would retry a change that already happened.
- `Outage` remembers, per process, that a dependency just failed: for a couple of seconds callers skip it instead
  of paying a connect or read timeout on every request, and the warning is logged once a minute, not per request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.db import transaction
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# What a broker or cache that is down, unreachable or hung raises: kombu wraps connection errors and timeouts in
# OperationalError; Django's Redis cache lets redis-py's through; OSError for a socket error that escapes both.
REDIS_ERRORS: tuple[type[BaseException], ...] = (OperationalError, RedisError, OSError)


class Outage:
    """A dependency's recent failure, as seen by this process.

    `skip_seconds` after a failure, `skipping()` is true, so callers answer without trying (a hung server would
    otherwise cost a read timeout per request); then the next call tries again. Warnings are logged at most once
    per `log_every` seconds, with how many failures the quiet period swallowed."""

    def __init__(self, name: str, *, skip_seconds: float = 2.0, log_every: float = 60.0) -> None:
        self.name = name
        self.skip_seconds = skip_seconds
        self.log_every = log_every
        self._lock = threading.Lock()
        self._skip_until = 0.0
        self._next_log = 0.0
        self._unlogged = 0

    def skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self._skip_until = now + self.skip_seconds
            if now < self._next_log:
                self._unlogged += 1
                return
            self._next_log = now + self.log_every
            unlogged, self._unlogged = self._unlogged, 0
        logger.warning(
            "%s unavailable (%s: %s: %s); carrying on without it%s",
            self.name,
            what,
            type(exc).__name__,
            exc,
            f" ({unlogged} more failures since the last warning)" if unlogged else "",
        )

    def reset(self) -> None:
        """Forget the failure (tests, or a caller that knows the dependency is back)."""
        with self._lock:
            self._skip_until = 0.0
            self._next_log = 0.0
            self._unlogged = 0


cache_outage = Outage("Redis cache")
broker_outage = Outage("Celery broker")


def task_enqueue(task: Any, *args: Any, countdown: float | None = None) -> bool:
    """`task.delay(*args)` (or `apply_async` with a countdown) that never raises for a broker that is down:
    returns whether the message was sent. Only for tasks whose work a pump finds again from PostgreSQL (tasks take
    ids, positionally); the caller's state must already be committed (see `task_enqueue_on_commit`)."""

    def send() -> None:
        if countdown:
            task.apply_async(args, countdown=countdown)
        else:
            task.delay(*args)

    if task.app.conf.task_always_eager:
        send()  # no broker involved; the task's own errors are the caller's to see
        return True
    if broker_outage.skipping():
        return False
    try:
        send()
    except REDIS_ERRORS as exc:
        broker_outage.failed(f"enqueue {task.name}", exc)
        return False
    return True


def task_enqueue_on_commit(task: Any, *args: Any, countdown: float | None = None) -> None:
    """Enqueue once the current transaction commits (a worker must find the rows it is told about), with
    `task_enqueue`'s tolerance of a broker that is down."""
    transaction.on_commit(lambda: task_enqueue(task, *args, countdown=countdown))
