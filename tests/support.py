"""What the tests that start real processes (Celery workers, beat, receivers) share."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

from django.db import connection


def database_url() -> str:
    """The test database's URL, for worker and beat processes started by a test."""
    db = connection.settings_dict
    credentials = quote(db["USER"] or "postgres", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{credentials}@{quote(db['HOST'] or 'localhost', safe='')}{port}/{db['NAME']}"


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.2) -> bool:
    """Wait for an event another process brings about, at most `timeout` seconds (the PRD's limit for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
