"""Analytics at scale: engagement ingestion rate, metrics API latency on a campaign with 10M messages, PDF time.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/campaign_service REDIS_URL=redis://127.0.0.1:6379/0 \\
      .venv/bin/python bench/analytics.py [--messages 10000000] [--events 200000] [--requests 300] [--keep]

Uses its own database (`<name>_analytics_bench`). One campaign, three variants, one run: its message rows are
written with INSERT … SELECT over generate_series (as fan-out does, so the metric trigger counts them), then a
sending pass moves them to sent/delivered/bounced in UPDATEs of 100k rows (the status trigger moves the counts),
with 1M of them fanned out per minute of bucket time as a real run would be. Then:
- ingestion: `engagement_record_many` in batches of 1,000 (opens, 10 % by machines, and clicks), timed;
- metrics API: real requests through DRF in-process (API-key auth, rate limiting in Redis, the grouped read over
  the deltas), p50 / p99 over `--requests`, before and after the compaction task;
- the PDF report for the campaign, timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup_database() -> None:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/campaign_service")
    parts = urlsplit(base)
    os.environ["DATABASE_URL"] = parts._replace(
        path=(parts.path.rstrip("/") or "/campaign_service") + "_analytics_bench"
    ).geturl()
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import psycopg

    admin = parts._replace(path="/postgres").geturl()
    name = urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/")
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="leave the campaign in the bench database")
    parser.add_argument("--reuse", action="store_true", help="measure the campaign a --keep run left (no loading)")
    args = parser.parse_args()
    _setup_database()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from analytics import services
    from audiences.access import system_actor
    from audiences.models import Organisation
    from campaigns import services as campaign_services
    from delivery.fanout import run_create

    call_command("migrate", verbosity=0)
    organisation, _ = Organisation.objects.get_or_create(
        slug="bench-analytics", defaults={"name": "Bench analytics", "postal_address": "1 Bench Street"}
    )
    actor = system_actor(organisation, "bench")
    if args.reuse:
        from campaigns.models import Campaign

        campaign = Campaign.objects.filter(organisation=organisation).order_by("-created_at").first()
        _measure(campaign, organisation, args)
        return
    campaign = campaign_services.campaign_create(
        actor=actor,
        name=f"Analytics bench {time.time_ns()}",
        channels=["email"],
        variants=[
            {"name": name, "allocation_percent": share, "content": {"email": {"subject": name, "html": "x"}}}
            for name, share in (("A", 34), ("B", 33), ("C", 33))
        ],
    )
    variants = [str(v.pk) for v in campaign.variants.order_by("name")]
    run = run_create(campaign=campaign)
    total = args.messages
    chunk = 1_000_000
    started = time.perf_counter()
    # Contacts are plain ids here (messages carry no FK): the figures are about the analytics tables.
    for offset in range(0, total, chunk):
        size = min(chunk, total - offset)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO delivery_message (run_id, contact_id, channel, variant_id, status, trigger_key, due_at,"
                " attempts, provider_message_id, error, created_at)"
                " SELECT %s, g, 'email', (%s::uuid[])[1 + g %% 3], 'queued', '', now(), 0, '', '', now()"
                " FROM generate_series(%s, %s) AS g",
                [str(run.pk), variants, offset + 1, offset + size],
            )
        print(f"\r  wrote {offset + size:,} message rows", end="", flush=True)
    print(f"\nmessages: {total:,} rows in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(id), max(id) FROM delivery_message WHERE run_id = %s", [str(run.pk)])
        low, high = cursor.fetchone()
    step = 100_000
    for start in range(low, high + 1, step):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "UPDATE delivery_message SET status = CASE WHEN id %% 50 = 0 THEN 'bounced' WHEN id %% 10 = 0"
                " THEN 'sent' ELSE 'delivered' END, sent_at = now() WHERE id BETWEEN %s AND %s",
                [start, min(start + step - 1, high)],
            )
        print(f"\r  sent {min(start + step, high + 1) - low:,}", end="", flush=True)
    print(f"\nsending pass (status trigger on {total:,} rows): {time.perf_counter() - started:.1f}s")

    # Engagement ingestion, batches of 1,000, attributed through the message rows.
    ids = list(range(low, low + args.events))
    now = timezone.now()
    started = time.perf_counter()
    stored = 0
    for batch_start in range(0, len(ids), 1000):
        batch = ids[batch_start : batch_start + 1000]
        events = [
            {
                "message_id": message_id,
                "kind": "open" if message_id % 4 else "click",
                "at": now + timedelta(seconds=message_id % 3600),
                "machine": message_id % 10 == 1,
                "why": "provider" if message_id % 10 == 1 else "",
                "dedupe": f"bench:{message_id}",
            }
            for message_id in batch
        ]
        stored += services.engagement_record_many(events)
    elapsed = time.perf_counter() - started
    print(f"ingestion: {stored:,} engagement events in {elapsed:.2f}s = {stored / elapsed:,.0f} events/s")
    _measure(campaign, organisation, args)
    if not args.keep:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM analytics_engagementevent WHERE campaign_id = %s", [str(campaign.pk)])
            cursor.execute("DELETE FROM analytics_metricdelta WHERE campaign_id = %s", [str(campaign.pk)])
            cursor.execute("ALTER TABLE delivery_message DISABLE TRIGGER cs_metrics_message_delete")
            cursor.execute("DELETE FROM delivery_message WHERE run_id = %s", [str(run.pk)])
            cursor.execute("ALTER TABLE delivery_message ENABLE TRIGGER cs_metrics_message_delete")
            cursor.execute("TRUNCATE analytics_messagefirst")
            cursor.execute("VACUUM delivery_message")


def _measure(campaign, organisation, args) -> None:
    from datetime import timedelta

    from django.db import connection
    from rest_framework.test import APIClient

    from analytics import reports, services
    from audiences.access import Actor
    from audiences.models import Role
    from audiences.services import api_key_create

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM delivery_message m JOIN delivery_run r ON r.id = m.run_id WHERE r.campaign_id = %s",
            [str(campaign.pk)],
        )
        print(f"campaign {campaign.name}: {cursor.fetchone()[0]:,} message rows")
    key = api_key_create(
        actor=Actor(organisation=organisation, role=Role.ADMIN, system="bench"), name="bench", role=Role.ANALYST
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.secret}")
    url = f"/api/v1/campaigns/{campaign.pk}/metrics/"

    def measure(label: str, params: dict) -> None:
        client.get(url, params)  # warm
        times = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            response = client.get(url, params, HTTP_HOST="localhost")
            times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, response.content[:300]
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        sent = response.json()["counts"]["sent"]
        print(f"metrics API {label}: p50 {statistics.median(times):.1f} ms, p99 {p99:.1f} ms (sent={sent:,})")

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM analytics_metricdelta WHERE campaign_id = %s", [str(campaign.pk)])
        print(f"metric delta rows before compaction: {cursor.fetchone()[0]:,}")
    measure("totals", {})
    measure("with hourly series", {"interval": "hour"})
    started = time.perf_counter()
    folded = services.metrics_compact(older_than=timedelta(seconds=-1))
    print(f"compaction: {folded:,} keys folded in {time.perf_counter() - started:.2f}s")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM analytics_metricdelta WHERE campaign_id = %s", [str(campaign.pk)])
        print(f"metric delta rows after compaction: {cursor.fetchone()[0]:,}")
    measure("totals after compaction", {})
    started = time.perf_counter()
    pdf = reports.report_pdf(campaign)
    print(f"PDF report: {len(pdf):,} bytes in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main()
