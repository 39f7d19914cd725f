"""Campaign list API with 100k campaigns in one organisation.

    python -m config.devstack exec .venv/bin/python bench/campaign_list.py [--campaigns 100000] [--requests 200]

Uses its own database (<DATABASE_URL name>_bench), seeds it set-based (one INSERT … SELECT over
generate_series) and times real API requests in-process (Django test client, API-key auth, throttling on), printing
p50 / p99 per query shape and the plan's index for each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUERIES = {
    "default page (newest first)": "",
    "status filter": "?status=scheduled",
    "type + channel": "?type=triggered&channel=sms",
    "name prefix search": "?search=Spring%20sale%2012",
    "sort by name, page 50": "?ordering=name&page=50",
    "sort by scheduled date": "?ordering=scheduled",
    "created date range": "?created_after=2026-03-01&created_before=2026-03-07",
    "page_size=100": "?page_size=100",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--campaigns", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    from benchdb import setup_django

    setup_django(API_RATE_LIMIT="100000000/60")
    from django.db import connection
    from rest_framework.test import APIClient

    from audiences.access import system_actor
    from audiences.models import Organisation, Role
    from audiences.services import api_key_create
    from campaigns.models import Campaign

    organisation, _ = Organisation.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    existing = Campaign.objects.filter(organisation=organisation).count()
    if existing < args.campaigns:
        started = time.perf_counter()
        # The columns given below; every other column takes the model field's default, so the INSERT stays
        # valid as the model grows.
        given = {"id", "organisation_id", "name", "description", "type", "status", "channels", "scheduled_at",
                 "created_at", "updated_at", "status_changed_at", "paused_by", "deleted_by", "deleted_at"}  # fmt: skip
        defaulted = [
            field
            for field in Campaign._meta.concrete_fields
            if field.column not in given and not field.null and field.has_default()
        ]
        defaults = {
            f"default_{field.column}": field.get_db_prep_save(field.get_default(), connection) for field in defaulted
        }
        extra_columns = "".join(f", {field.column}" for field in defaulted)
        extra_values = "".join(f", %(default_{field.column})s" for field in defaulted)
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO campaigns_campaign (id, organisation_id, name, description, type, status, channels,
                    scheduled_at, created_at, updated_at, status_changed_at, paused_by, deleted_by, deleted_at
                    {extra_columns})
                SELECT gen_random_uuid(), %(org)s,
                       (ARRAY['Spring sale','Welcome','Winback','Newsletter','Launch'])[1 + i %% 5] || ' ' || i,
                       '', CASE WHEN i %% 4 = 0 THEN 'triggered' ELSE 'scheduled' END,
                       CASE WHEN i %% 4 = 0 THEN (ARRAY['draft','active','paused','completed'])[1 + i %% 16 / 4]
                            ELSE (ARRAY['draft','scheduled','running','paused','completed','cancelled'])[1 + i %% 6]
                       END,
                       CASE i %% 6 WHEN 0 THEN ARRAY['email'] WHEN 1 THEN ARRAY['sms']
                            WHEN 2 THEN ARRAY['email', 'sms'] WHEN 3 THEN ARRAY['in_app']
                            WHEN 4 THEN ARRAY['whatsapp'] ELSE ARRAY['webhook'] END::varchar[],
                       CASE WHEN i %% 4 = 0 THEN NULL
                            ELSE timestamptz '2026-01-01' + (i %% 365) * interval '1 day' END,
                       timestamptz '2026-01-01' + (i * interval '2 minutes'), now(), now(), '', '',
                       CASE WHEN i %% 50 = 0 THEN now() ELSE NULL END {extra_values}
                FROM generate_series(%(start)s, %(stop)s) AS i
                """,
                {"org": organisation.pk, "start": existing + 1, "stop": args.campaigns, **defaults},
            )
            cursor.execute(
                "INSERT INTO campaigns_variant (id, campaign_id, name, position, allocation_percent, is_control,"
                " content) SELECT gen_random_uuid(), c.id, 'A', 0, 100, false, '{}'::jsonb"
                " FROM campaigns_campaign c LEFT JOIN campaigns_variant v ON v.campaign_id = c.id"
                " WHERE c.organisation_id = %s AND v.id IS NULL",
                [organisation.pk],
            )
            # What autovacuum would soon do in production; without it index-only scans still visit the heap.
            cursor.execute("VACUUM ANALYZE campaigns_campaign")
            cursor.execute("VACUUM ANALYZE campaigns_variant")
        print(f"seeded {args.campaigns - existing} campaigns in {time.perf_counter() - started:.1f}s")
    total = Campaign.objects.filter(organisation=organisation).count()
    issued = api_key_create(actor=system_actor(organisation, "bench"), name="bench", role=Role.ADMIN)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")

    print(f"campaigns in organisation: {total:,}; {args.requests} requests per query")
    print(f"{'query':34} {'p50 ms':>8} {'p99 ms':>8} {'rows':>6}  plan")
    for label, query in QUERIES.items():
        timings = []
        for _ in range(args.requests):
            started = time.perf_counter()
            response = client.get(f"/api/v1/campaigns/{query}")
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.content
        timings.sort()
        p50 = statistics.median(timings)
        p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
        print(f"{label:34} {p50:8.1f} {p99:8.1f} {len(response.data['results']):6}  {_plan(client, query)}")


def _plan(client, query: str) -> str:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        client.get(f"/api/v1/campaigns/{query}")
    page_sql = next(
        (q["sql"] for q in ctx.captured_queries if "ORDER BY" in q["sql"] and "campaigns_campaign" in q["sql"]), None
    )
    if page_sql is None:  # an empty result: the count said 0, so no page was read
        return "(no page query)"
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + page_sql)
        lines = [row[0] for row in cursor.fetchall()]
    indexes = sorted({line.split(" using ")[1].split(" ")[0] for line in lines if " using " in line})
    return ", ".join(indexes) or "seq scan"


if __name__ == "__main__":
    main()
