"""Triggered sends: event accepted → message handed to the sandbox provider, at a sustained event rate, with 100
active triggered campaigns in the organisation; and bulk ingestion throughput.

    .venv/bin/python bench/triggers.py [--rate 500] [--seconds 30] [--campaigns 100] [--types 1] [--workers 2]
                                       # after bench/audiences.py has loaded its contacts

Uses the bench database and organisation, and the machine's Redis on a private queue with real Celery workers.
Events go through the production path (audiences.events.events_ingest: validation, idempotent insert, catalogue,
trigger matching and message rows in the same transaction, workers asked on commit) in batches every 100 ms. The
latency of each event is the sandbox ledger's first hand-off time minus the event's received_at, both written by
PostgreSQL clocks of the same machine. --types spreads the events over that many event types (each type is
listened to by one of the campaigns).
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
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=500, help="events per second")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--types", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/campaign_service")
    parts = urlsplit(base)
    os.environ["DATABASE_URL"] = parts._replace(
        path=(parts.path.rstrip("/") or "/campaign_service") + "_bench"
    ).geturl()
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    queue = f"bench-triggers-{uuid.uuid4().hex[:8]}"
    os.environ["CELERY_TASK_DEFAULT_QUEUE"] = queue
    os.environ["SANDBOX_LATENCY_MS"] = "0"
    os.environ["DELIVERY_PUMP_SECONDS"] = "1"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from audiences.access import system_actor
    from audiences.events import events_ingest
    from audiences.models import Contact, Organisation
    from campaigns import services
    from campaigns.models import Campaign

    call_command("migrate", verbosity=0)
    organisation = Organisation.objects.get(slug="bench-audiences")
    actor = system_actor(organisation, "bench")
    Organisation.objects.filter(pk=organisation.pk).update(postal_address="1 Bench Street, London")
    organisation.refresh_from_db()
    actor = system_actor(organisation, "bench")
    external_ids = list(
        Contact.objects.filter(organisation=organisation).order_by("id").values_list("external_id", flat=True)[:20000]
    )
    tag = uuid.uuid4().hex[:6]
    campaigns = []
    for index in range(args.campaigns):
        campaign = services.campaign_create(
            actor=actor,
            name=f"Trigger bench {tag} {index}",
            type="triggered",
            channels=["email"],
            audience={"rules": {"field": "email", "op": "exists"}},
            trigger_event=f"bench_{tag}_{index}",
            variants=[
                {
                    "name": "A",
                    "allocation_percent": 100,
                    "content": {
                        "email": {
                            "subject": "Thanks {{ contact.first_name }}",
                            "html": "<p>Your order is confirmed.</p>",
                        }
                    },
                }
            ],
        )
        services.campaign_transition(actor=actor, campaign_id=campaign.pk, action="activate")
        campaigns.append(campaign)
    print(f"{args.campaigns} active triggered campaigns; events spread over {args.types} of their types")

    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queue,
                "--concurrency",
                "1",
                "--pool",
                "solo",
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"trig{index}@%h",
            ],
            cwd=ROOT,
            env=dict(os.environ),
            start_new_session=True,
        )
        for index in range(args.workers)
    ]
    beat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "beat",
            "-l",
            "warning",
            "-s",
            f"/tmp/beat-{tag}",
            "--scheduler",
            "celery.beat:PersistentScheduler",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        start_new_session=True,
    )
    try:
        time.sleep(5)
        # Ingestion throughput first: 10 batches of 1,000 to a type nobody listens to.
        started = time.perf_counter()
        for batch in range(10):
            events_ingest(
                actor=actor,
                items=[
                    {
                        "id": f"bulk-{tag}-{batch}-{i}",
                        "type": f"bulk_{tag}",
                        "contact": external_ids[i % len(external_ids)],
                        "properties": {"value": i},
                    }
                    for i in range(1000)
                ],
            )
        bulk = time.perf_counter() - started
        print(f"ingestion: 10,000 events in batches of 1,000 in {bulk:.2f}s = {10000 / bulk:,.0f} events/s")

        per_tick = max(1, args.rate // 10)
        sent = 0
        started = time.perf_counter()
        next_tick = started
        while time.perf_counter() - started < args.seconds:
            events_ingest(
                actor=actor,
                items=[
                    {
                        "id": f"ev-{tag}-{sent + i}",
                        "type": f"bench_{tag}_{(sent + i) % args.types}",
                        "contact": external_ids[(sent + i) % len(external_ids)],
                        "properties": {"total": 42},
                    }
                    for i in range(per_tick)
                ],
            )
            sent += per_tick
            next_tick += 0.1
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        elapsed = time.perf_counter() - started
        print(f"posted {sent:,} events in {elapsed:.1f}s = {sent / elapsed:,.0f} events/s (target {args.rate})")
        time.sleep(5)  # let the last ones go out
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT extract(epoch FROM h.first_at - e.received_at) FROM audiences_event e"
                " JOIN delivery_message m ON m.trigger_key = e.event_id"
                " JOIN delivery_run r ON r.id = m.run_id AND r.campaign_id = ANY(%s)"
                " JOIN delivery_sandboxhandoff h ON h.idempotency_key = m.run_id::text || ':' || m.contact_id || ':'"
                " || m.channel || ':' || m.trigger_key"
                " WHERE e.organisation_id = %s AND e.event_id LIKE %s",
                [[str(c.pk) for c in campaigns], str(organisation.pk), f"ev-{tag}-%"],
            )
            latencies = sorted(float(row[0]) for row in cursor.fetchall())
        if latencies:
            q = statistics.quantiles(latencies, n=100)
            print(
                f"event accepted -> handed to the provider: {len(latencies):,} of {sent:,} events; "
                f"p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, "
                f"max {latencies[-1] * 1000:.0f} ms"
            )
        else:
            print("no event reached the provider")
    finally:
        for process in [*workers, beat]:
            os.killpg(process.pid, signal.SIGTERM)
        for process in [*workers, beat]:
            process.wait(timeout=30)
        for campaign in campaigns:
            services.campaign_transition(actor=actor, campaign_id=campaign.pk, action="complete")
        Campaign.objects.filter(pk__in=[c.pk for c in campaigns]).update(deleted_at=django.utils.timezone.now())


if __name__ == "__main__":
    main()
