"""Prometheus metrics at /metrics: requests, and the product's own counters and gauges.

- Counters (requests, messages sent, send failures, contacts imported, events ingested) are incremented by every
  process that does the work — gunicorn workers, Celery workers in other containers — so they are kept where all of
  them can add to them: one Redis hash (HINCRBY, one round trip per request or per send batch). prometheus-client's
  multiprocess mode needs a directory shared by every process, which the containers of a deployment do not have.
  Redis restarting resets them to zero, which Prometheus's rate() and increase() read as a counter reset.
- Gauges are read from PostgreSQL when /metrics is scraped, each by an indexed statement: runs by active status
  (the runs' partial status index), queued messages from the sending runs' counters, the oldest due message per
  sending run (its first row in the queued-message index), and beat's heartbeat age.
- /metrics wants `Authorization: Bearer <METRICS_TOKEN>`; without METRICS_TOKEN it is off (404).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config.outage import REDIS_ERRORS, Outage

PREFIX = "campaign_service"


@dataclass(frozen=True)
class CounterSpec:
    name: str  # without the prefix and _total
    documentation: str
    labels: tuple[str, ...]


# One definition per counter; `count` refuses names or labels not listed here.
COUNTERS = {
    spec.name: spec
    for spec in (
        CounterSpec(
            "http_requests", "HTTP requests answered, by method, view and status code.", ("method", "view", "status")
        ),
        CounterSpec("http_request_duration_seconds", "Seconds spent answering HTTP requests, by method.", ("method",)),
        CounterSpec(
            "messages_sent", "Messages handed to a channel's provider (sent, delivered or bounced).", ("channel",)
        ),
        CounterSpec(
            "send_failures",
            "Messages that did not go out on an attempt, by channel and reason: transient (retried later), "
            "unreachable (the provider was not reached; retried without using an attempt), gave_up (out of "
            "attempts), permanent (failed for good) and bounced.",
            ("channel", "reason"),
        ),
        CounterSpec(
            "contacts_imported", "Rows of CSV contact imports, by outcome (created, updated, rejected).", ("outcome",)
        ),
        CounterSpec("events_ingested", "Events stored (repeated ids not counted): the API's and the feed's.", ()),
    )
}

counter_outage = Outage("Redis (metrics counters)")
_clients: dict[str, redis.Redis] = {}


def _client() -> redis.Redis:
    url = settings.REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(
            url,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        )
    return _clients[url]


def _key() -> str:
    # The cache's key prefix separates deployments (and test runs) sharing one Redis.
    return f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:metrics:counters"


def _field(name: str, labels: Mapping[str, str]) -> str:
    spec = COUNTERS[name]
    if set(labels) != set(spec.labels):
        raise ValueError(f"counter {name} takes labels {spec.labels}, not {tuple(labels)}")
    return json.dumps([name, [str(labels[label]) for label in spec.labels]], separators=(",", ":"))


def count_many(increments: Iterable[tuple[str, Mapping[str, str], float]]) -> None:
    """Add to counters, each (name, labels, amount), in one round trip. Never raises for Redis being down: a
    counter is worth less than the request or batch it counts (the gap shows as a missed increase)."""
    fields = [(_field(name, labels), amount) for name, labels, amount in increments if amount]
    if not fields or counter_outage.skipping():
        return
    try:
        pipe = _client().pipeline(transaction=False)
        key = _key()
        for field, amount in fields:
            if isinstance(amount, int):
                pipe.hincrby(key, field, amount)
            else:
                pipe.hincrbyfloat(key, field, amount)
        pipe.execute()
    except REDIS_ERRORS as exc:
        counter_outage.failed("count", exc)


def count(name: str, amount: float = 1, **labels: str) -> None:
    count_many([(name, labels, amount)])


def counter_values() -> dict[str, list[tuple[list[str], float]]]:
    raw = _client().hgetall(_key())
    values: dict[str, list[tuple[list[str], float]]] = {name: [] for name in COUNTERS}
    for field, amount in raw.items():
        try:
            name, label_values = json.loads(field)
        except ValueError:
            continue
        if name in values:
            values[name].append((label_values, float(amount)))
    return values


class RequestMetricsMiddleware:
    """Counts every request by method, view (the URL pattern's name, so the label has as many values as the
    URL conf has routes) and status."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or "unnamed") if match else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        count_many(
            [
                ("http_requests", {"method": method, "view": view, "status": str(response.status_code)}, 1),
                ("http_request_duration_seconds", {"method": method}, time.perf_counter() - started),
            ]
        )
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# --- gauges ---------------------------------------------------------------------------------------------------

ACTIVE_RUN_STATUSES = ("pending", "fanning_out", "ready", "sending")

# Runs in the statuses the runs' partial status index covers, and the work left in the sending ones (from their
# counters: message_count less what is done), all from that index.
RUNS_SQL = """
SELECT status, count(*),
       coalesce(sum(greatest(message_count - sent_count - failed_count - skipped_count - cancelled_count, 0))
                FILTER (WHERE status = 'sending'), 0)
FROM delivery_run
WHERE status IN ('pending', 'fanning_out', 'ready', 'sending')
GROUP BY status
"""

# The oldest queued message already due, over the sending runs: each run's first row in the queued-message index
# (run_id, due_at) WHERE status = 'queued'.
OLDEST_DUE_SQL = """
SELECT min(first.due_at)
FROM delivery_run r
CROSS JOIN LATERAL (
    SELECT m.due_at FROM delivery_message m
    WHERE m.run_id = r.id AND m.status = 'queued' AND m.due_at <= statement_timestamp()
    ORDER BY m.due_at LIMIT 1
) first
WHERE r.status = 'sending'
"""


def _gauges() -> Iterator[Metric]:
    from config.health import beat_heartbeat_age

    runs = GaugeMetricFamily(f"{PREFIX}_runs", "Runs by status (those still to finish).", labels=["status"])
    queued = 0
    found: dict[str, int] = {}
    with connection.cursor() as cursor:
        cursor.execute(RUNS_SQL)
        for status, n, remaining in cursor.fetchall():
            found[status] = int(n)
            queued += int(remaining)
        cursor.execute(OLDEST_DUE_SQL)
        (oldest,) = cursor.fetchone()
        cursor.execute("SELECT statement_timestamp()")
        (now,) = cursor.fetchone()
    for status in ACTIVE_RUN_STATUSES:
        runs.add_metric([status], found.get(status, 0))
    yield runs
    yield GaugeMetricFamily(f"{PREFIX}_runs_sending", "Runs sending now.", value=found.get("sending", 0))
    yield GaugeMetricFamily(
        f"{PREFIX}_messages_queued",
        "Messages of sending runs not yet sent, failed, skipped or cancelled.",
        value=queued,
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_oldest_due_message_age_seconds",
        "How long the oldest queued message that is due has been due (0: nothing is waiting).",
        value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
    )
    age = beat_heartbeat_age()
    if age is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_beat_lag_seconds", "Seconds since celery-beat's last heartbeat (its scheduler tick).", value=age
        )


class ServiceCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from _gauges()
        try:
            values = counter_values()
        except REDIS_ERRORS:
            values = {}  # Redis down: counters are absent from this scrape (and /readyz says why)
        for name, samples in values.items():
            spec = COUNTERS[name]
            family = CounterMetricFamily(f"{PREFIX}_{name}", spec.documentation, labels=list(spec.labels))
            for label_values, amount in sorted(samples):
                family.add_metric(label_values, amount)
            yield family


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponse("Metrics are off (METRICS_TOKEN is not set).\n", status=404, content_type="text/plain")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        response = HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
