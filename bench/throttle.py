"""Throttles on the wire: does a campaign limited to N a minute deliver N a minute, and never more?

    .venv/bin/python bench/throttle.py [--per-minute 60,600,6000,60000] [--minutes 3] [--latency-ms 400]
                                       [--per-hour 3600]

For each limit: an organisation of its own with 3.3 N contacts (so the run cannot finish inside the measurement),
a campaign limited to N/min (or N/hour with --per-hour), real Celery workers (prefork, 2 processes) and celery-beat
on a private queue of the machine's Redis, and the sandbox provider taking --latency-ms per batch. The sandbox
keeps its own ledger of what it was handed and when (delivery_sandboxhandoff.first_at, stamped by PostgreSQL as the
provider books each batch): that is the wire. From the first hand-off on, the bench counts what arrived in the
next --minutes minutes, the busiest 60-second window (sliding, to the millisecond), and how evenly the sends
are spread (per-second counts), then cancels the campaign.

Pass: the total is within 2 % of minutes * N and no 60-second window holds more than N.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from bisect import bisect_left
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

QUEUE = f"bench-throttle-{uuid.uuid4().hex[:8]}"


def _start_engine(env: dict[str, str]) -> list[subprocess.Popen]:
    common = [sys.executable, "-m", "celery", "-A", "config"]
    worker = subprocess.Popen(
        [*common, "worker", "-Q", QUEUE, "--concurrency", "2", "--pool", "prefork", "-l", "warning"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    beat = subprocess.Popen(
        [
            *common,
            "beat",
            "-l",
            "warning",
            "-s",
            f"/tmp/{QUEUE}-beat",
            "--scheduler",
            "celery.beat:PersistentScheduler",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    return [worker, beat]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _busiest_window(times: list[float], window: float) -> int:
    """The most hand-offs in any half-open window [t, t + window), t running over the hand-off times."""
    return max((bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def measure(limit: int, *, per_hour: bool, minutes: float, latency_ms: float) -> dict[str, float]:
    from django.db import connection

    from audiences.access import system_actor
    from audiences.contacts import contacts_upsert_rows
    from audiences.models import Organisation
    from campaigns import services
    from campaigns.models import Campaign, Variant
    from delivery.models import Run

    slug = f"bench-throttle-{uuid.uuid4().hex[:8]}"
    organisation = Organisation.objects.create(
        name=slug,
        slug=slug,
        timezone="UTC",
        postal_address="1 Bench Street, London",
        default_messages_per_minute=None,
        default_messages_per_hour=None,
    )
    window = 3600.0 if per_hour else 60.0
    seconds = minutes * 60
    per_second = limit / window
    count = max(300, math.ceil(per_second * seconds * 1.1) + limit // 20)
    for start in range(0, count, 10_000):
        contacts_upsert_rows(
            organisation=organisation,
            rows=[
                {"external_id": f"t{i}", "email": f"t{i}@example.com"} for i in range(start, min(count, start + 10_000))
            ],
        )
    limits = {"messages_per_hour": limit} if per_hour else {"messages_per_minute": limit}
    campaign = Campaign.objects.create(
        organisation=organisation,
        name=f"Throttle {limit}/{'h' if per_hour else 'min'}",
        channels=["email"],
        audience_rules={"field": "external_id", "op": "starts_with", "value": "t"},
        sandbox_profile={"failed": 0, "bounced": 0, "latency_ms": latency_ms, "engagement": {}},
        **limits,
    )
    Variant.objects.create(
        campaign=campaign,
        name="A",
        allocation_percent=100,
        content={"email": {"subject": "Hello {{ contact.first_name }}", "html": "<p>Hi {{ contact.external_id }}</p>"}},
    )
    actor = system_actor(organisation, "bench")
    services.campaign_transition(actor=actor, campaign_id=campaign.pk, action="start")
    run = Run.objects.get(campaign=campaign)

    def first_handoff() -> float | None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT extract(epoch FROM min(first_at)) FROM delivery_sandboxhandoff WHERE run_id = %s", [run.pk]
            )
            value = cursor.fetchone()[0]
        return float(value) if value is not None else None

    began = time.monotonic()
    while (t0 := first_handoff()) is None:
        if time.monotonic() - began > 600:
            raise SystemExit("the run never reached the provider")
        time.sleep(0.2)
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM now())")
        now = float(cursor.fetchone()[0])
    time.sleep(max(0.0, t0 + seconds + 5 - now))  # the measured span, and a few seconds for the last batch
    services.campaign_transition(actor=actor, campaign_id=campaign.pk, action="cancel")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM first_at) FROM delivery_sandboxhandoff WHERE run_id = %s ORDER BY first_at",
            [run.pk],
        )
        times = [float(row[0]) - t0 for row in cursor.fetchall()]
    inside = [t for t in times if t < seconds]
    busiest = _busiest_window(times, window) if not per_hour else _busiest_window(times, 60.0)
    per_second_counts = [0] * int(seconds)
    for t in inside:
        per_second_counts[int(t)] += 1
    steady = per_second_counts[1:]  # the first second holds the bucket's burst
    expected = per_second * seconds
    return {
        "limit": limit,
        "expected": expected,
        "total": len(inside),
        "ratio": len(inside) / expected,
        "busiest_60s": busiest,
        "per_second_mean": statistics.fmean(steady),
        "per_second_stdev": statistics.pstdev(steady),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-minute", default="60,600,6000,60000")
    parser.add_argument("--per-hour", default="", help="limits per hour to measure (over --minutes)")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--latency-ms", type=float, default=400.0)
    args = parser.parse_args()

    from benchdb import setup_django

    environment = {"CELERY_TASK_DEFAULT_QUEUE": QUEUE, "DB_CONN_MAX_AGE": "60", "SANDBOX_LEDGER": "1"}
    bench_url = setup_django(**environment)
    from delivery.throttle import Bucket

    env = {**os.environ, **environment, "DATABASE_URL": bench_url}
    processes = _start_engine(env)
    try:
        time.sleep(3)
        cases = [(int(n), False) for n in args.per_minute.split(",") if n] + [
            (int(n), True) for n in args.per_hour.split(",") if n
        ]
        for limit, per_hour in cases:
            result = measure(limit, per_hour=per_hour, minutes=args.minutes, latency_ms=args.latency_ms)
            unit = "hour" if per_hour else "min"
            # Per hour: a 60-second slice of an hour's limit holds at most a full bucket and a minute's refill.
            hourly = Bucket("", float(limit), window_seconds=3600)
            window_limit = limit if not per_hour else math.floor(hourly.capacity + hourly.rate * 60)
            verdict = (
                "ok" if abs(result["ratio"] - 1) <= 0.02 and result["busiest_60s"] <= window_limit else "OUT OF BOUNDS"
            )
            print(
                f"N={limit}/{unit}: {result['total']} in {args.minutes:g} min (expected {result['expected']:.0f},"
                f" {100 * (result['ratio'] - 1):+.2f} %), busiest 60 s window {result['busiest_60s']}"
                f" (limit {window_limit}), per second {result['per_second_mean']:.1f}"
                f" ± {result['per_second_stdev']:.1f} — {verdict}",
                flush=True,
            )
    finally:
        _stop(processes)


if __name__ == "__main__":
    main()
