"""The run's estimated completion against its actual finish: a throttled run sent by real Celery workers.

    .venv/bin/python bench/estimate.py [--messages 20000] [--per-minute 10000] [--latency-ms 400] [--workers 2]

Uses the bench database (DATABASE_URL + "_bench", created and migrated if missing) with an organisation of its own
("bench-estimate", its contacts made on the first run), the machine's Redis (REDIS_URL) on a private queue, and
celery-beat for the engine's pump. The sandbox provider takes --latency-ms per batch, as under `make run`. The
run is fanned out first (not part of the run's time). While it sends, the bench reads the estimate every second as
the run page does (delivery.estimates.run_estimate) and keeps the one read at each 10 % of progress; once the run
has completed it prints, for each, how far it was from the run's finished_at: as a share of the run's duration
(started_sending_at → finished_at) and of the time that was still left when it was read. It also times the
estimate itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchdb import setup_django  # noqa: E402

CONTENT = {"email": {"subject": "Hi {{ contact.first_name }}", "html": "<p>Hello</p><p>{{ unsubscribe_url }}</p>"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--per-minute", type=int, default=10_000, help="the campaign's throttle")
    parser.add_argument("--latency-ms", type=float, default=400, help="the sandbox provider's time per batch")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (a throttled run uses one lane)")
    args = parser.parse_args()
    queue = f"bench-estimate-{uuid.uuid4().hex[:8]}"
    setup_django(
        CELERY_TASK_DEFAULT_QUEUE=queue,
        SANDBOX_LATENCY_MS=str(args.latency_ms),
        DELIVERY_PUMP_SECONDS="1",
    )
    from django.db import connection

    from audiences.access import system_actor
    from audiences.contacts import contacts_upsert_rows
    from audiences.models import Contact, Organisation
    from campaigns import services
    from delivery.estimates import run_estimate
    from delivery.fanout import run_create, run_fan_out
    from delivery.models import Run
    from delivery.runs import run_prepare

    organisation, _ = Organisation.objects.get_or_create(
        slug="bench-estimate", defaults={"name": "Estimate bench", "postal_address": "1 Bench Street, London"}
    )
    have = Contact.objects.filter(organisation=organisation).count()
    if have < args.messages:
        rows = [{"external_id": f"est{i}", "email": f"est{i}@example.com"} for i in range(have, args.messages)]
        for start in range(0, len(rows), 5000):
            contacts_upsert_rows(organisation=organisation, rows=rows[start : start + 5000])
    actor = system_actor(organisation, "bench")
    campaign = services.campaign_create(
        actor=actor,
        name=f"Estimate bench {time.time_ns()}",
        channels=["email"],
        audience={"rules": {"field": "external_id", "op": "starts_with", "value": "est"}},
        messages_per_minute=args.per_minute,
        sandbox_profile={"failed": 0, "bounced": 0},
        variants=[{"name": "A", "allocation_percent": 100, "content": CONTENT}],
    )
    run = run_create(campaign=campaign)
    run_fan_out(run.pk)
    with connection.cursor() as cursor:  # the first N contacts, so a larger earlier bench does not matter
        cursor.execute(
            "DELETE FROM delivery_message WHERE run_id = %s AND id NOT IN (SELECT id FROM delivery_message"
            " WHERE run_id = %s ORDER BY contact_id LIMIT %s)",
            [str(run.pk), str(run.pk), args.messages],
        )
        cursor.execute("SELECT count(*) FROM delivery_message WHERE run_id = %s", [str(run.pk)])
        queued = cursor.fetchone()[0]
    Run.objects.filter(pk=run.pk).update(message_count=queued)
    at_limit = queued / (args.per_minute / 60)
    print(
        f"{queued:,} messages at {args.per_minute:,}/min (≈ {at_limit:.0f} s at the limit), provider "
        f"{args.latency_ms:.0f} ms per batch"
    )

    celery = [sys.executable, "-m", "celery", "-A", "config"]
    quiet = ["-l", "warning"]
    common = {"cwd": ROOT, "env": dict(os.environ), "start_new_session": True}
    processes = [
        subprocess.Popen(
            [
                *celery,
                "worker",
                "-Q",
                queue,
                "--concurrency",
                "1",
                "--pool",
                "solo",
                *quiet,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"estimate{index}@%h",
            ],
            **common,
        )
        for index in range(args.workers)
    ]
    processes.append(subprocess.Popen([*celery, "beat", *quiet, "-s", f"/tmp/{queue}-beat"], **common))
    readings: dict[int, tuple[float, object]] = {}  # progress mark → (when read, estimate)
    timings = []
    try:
        time.sleep(4)  # workers up
        run_prepare(run.pk)  # READY → SENDING and the send task
        deadline = time.monotonic() + 60 + 10 * at_limit
        while time.monotonic() < deadline:
            current = Run.objects.select_related("campaign__organisation").get(pk=run.pk)
            if current.status == Run.Status.COMPLETED:
                break
            began = time.perf_counter()
            estimate = run_estimate(current)
            timings.append(time.perf_counter() - began)
            done = 100 * current.done_count / queued
            for mark in range(10, 100, 10):
                if mark not in readings and done >= mark and estimate.at is not None:
                    readings[mark] = (time.time(), estimate)
                    print(f"  {done:5.1f} % done: estimate {estimate.at:%H:%M:%S} ({estimate.explanation})", flush=True)
            time.sleep(1)
        else:
            raise SystemExit("the run did not complete in time")
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
    finished = Run.objects.get(pk=run.pk)
    duration = (finished.finished_at - finished.started_sending_at).total_seconds()
    end = finished.finished_at.timestamp()
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(sent_at), max(sent_at) FROM delivery_message WHERE run_id = %s", [str(run.pk)])
        first_sent, last_sent = cursor.fetchone()
    print(
        f"run sent in {duration:.1f} s ({60 * queued / duration:,.0f}/min), finished {finished.finished_at:%H:%M:%S};"
        f" first message {(first_sent - finished.started_sending_at).total_seconds():.1f} s after sending started,"
        f" finished_at {(finished.finished_at - last_sent).total_seconds():.1f} s after the last"
    )
    print(" done | estimate | error   | of run | of time left")
    for mark, (read_at, estimate) in sorted(readings.items()):
        error = estimate.at.timestamp() - end
        left = max(end - read_at, 0.001)
        print(
            f" {mark:3d} % | {estimate.at:%H:%M:%S} | {error:+6.1f} s | {100 * abs(error) / duration:5.1f} % |"
            f" {100 * abs(error) / left:5.1f} %"
        )
    worst = max(abs(e.at.timestamp() - end) / duration for _, e in readings.values())
    print(f"worst error: {100 * worst:.1f} % of the run's duration")
    print(
        f"estimate call: median {1000 * statistics.median(timings):.1f} ms, max {1000 * max(timings):.1f} ms "
        f"over {len(timings)} reads"
    )
    with connection.cursor() as cursor:  # leave the bench database as it was
        cursor.execute("DELETE FROM delivery_message WHERE run_id = %s", [str(run.pk)])
        cursor.execute("DELETE FROM delivery_sandboxhandoff WHERE run_id = %s", [str(run.pk)])
        cursor.execute("DELETE FROM analytics_engagementevent WHERE run_id = %s", [str(run.pk)])
    Run.objects.filter(pk=run.pk).delete()


if __name__ == "__main__":
    main()
