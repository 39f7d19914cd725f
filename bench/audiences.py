"""Contacts and segments at scale: import rate, estimate latency, exact count, full resolution.

    python -m config.devstack exec .venv/bin/python bench/audiences.py [--contacts 1000000] [--fresh]

Uses its own database (<DATABASE_URL name>_bench). Contacts go through the real import path
(audiences.contacts.contacts_upsert_stream, as the CSV import: validation, then one set-based write per 10,000 —
an INSERT while every contact is new, else a MERGE), so the rate includes validation, encryption and hashing of
emails and phones, JSON encoding, the write and the attribute catalogue. The synthetic input rows are built in
memory before the clock runs (their build time is printed beside the rate). The segment is three conditions:
plan in (pro, enterprise) AND orders >= 5 AND signed up within the last 365 days. Resolution writes one row per
recipient (contact id + holdout flag, 10 % holdout) into a table, as a campaign run will.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLANS = ["free"] * 14 + ["pro"] * 5 + ["enterprise"]
COUNTRIES = ["GB", "FR", "DE", "US", "ES", "NL", "IE", "IT", "SE", "PL"]
ZONES = ["Europe/London", "Europe/Paris", "Europe/Berlin", "America/New_York", "Europe/Madrid"]
INTERESTS = ["shoes", "bags", "outdoor", "kids", "sale", "beauty", "home", "tech"]
CHUNK_BATCHES = 50  # batches of input built in memory at a time


def synthetic(start: int, count: int, rng: random.Random, today: date) -> list[dict]:
    rows = []
    for index in range(start, start + count):
        rows.append(
            {
                "external_id": f"user-{index:08d}",
                "email": f"user{index}@example.com",
                "phone": f"+4477{index % 100_000_000:08d}" if index % 3 else "",
                "first_name": "Alex",
                "timezone": ZONES[index % len(ZONES)],
                "locale": "en-GB",
                "attributes": {
                    "plan": PLANS[index % len(PLANS)],
                    "country": COUNTRIES[rng.randrange(len(COUNTRIES))],
                    "orders": rng.randrange(0, 30),
                    "lifetime_value": round(rng.expovariate(1 / 150), 2),
                    "newsletter": rng.random() < 0.7,
                    "signed_up": (today - timedelta(days=rng.randrange(0, 1500))).isoformat(),
                    "interests": rng.sample(INTERESTS, rng.randrange(0, 4)),
                },
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--fresh", action="store_true", help="delete the bench organisation's contacts first")
    parser.add_argument("--estimates", type=int, default=50)
    args = parser.parse_args()

    from benchdb import setup_django

    setup_django()
    from django.db import connection

    from audiences import segments as engine
    from audiences.contacts import MAX_BATCH, contacts_upsert_stream
    from audiences.models import Contact, Organisation

    organisation, _ = Organisation.objects.get_or_create(slug="bench-audiences", defaults={"name": "Bench"})
    if args.fresh:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM audiences_contact WHERE organisation_id = %s", [organisation.pk])
    existing = Contact.objects.filter(organisation=organisation).count()
    rng = random.Random(42)
    today = date.today()
    if existing < args.contacts:
        total = args.contacts - existing
        done = 0
        # Ten varied template batches, re-keyed for each real batch (own ids, emails and phones). The figure
        # measures the import path (validation, encryption, encoding, the write) on rows already in memory, as
        # contacts_upsert_stream receives them: the input is built before the clock runs, a chunk of
        # CHUNK_BATCHES batches at a time (about 300 MB per 500k rows), and the time it took is printed apart.
        templates = [synthetic(0, MAX_BATCH, rng, today) for _ in range(10)]
        starts = list(range(existing, args.contacts, MAX_BATCH))
        spent = built = 0.0

        def batch(number: int, start: int) -> tuple[int, list[dict]]:
            size = min(MAX_BATCH, args.contacts - start)
            return start, [
                {
                    **row,
                    "external_id": f"user-{start + i:08d}",
                    "email": f"user{start + i}@example.com",
                    "phone": f"+4477{(start + i) % 100_000_000:08d}" if row["phone"] else "",
                }
                for i, row in enumerate(templates[number % len(templates)][:size])
            ]

        def progress(tag, result):
            nonlocal done
            assert not result.rejected, result.rejected[:3]
            done += result.accepted
            rate = done / (spent + time.perf_counter() - started)
            print(f"\r  imported {done:,}/{total:,} ({rate:,.0f} contacts/s)", end="", flush=True)

        for first in range(0, len(starts), CHUNK_BATCHES):
            building = time.perf_counter()
            chunk = [batch(number, starts[number]) for number in range(first, min(first + CHUNK_BATCHES, len(starts)))]
            built += time.perf_counter() - building
            started = time.perf_counter()
            contacts_upsert_stream(organisation=organisation, batches=chunk, on_batch=progress)
            spent += time.perf_counter() - started
            del chunk
        print()
        print(
            f"import: {done:,} contacts in {spent:.1f}s = {done / spent:,.0f} contacts/s (validate + upsert;"
            f" the input rows took {built:.1f}s to build beforehand, not counted)"
        )
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audiences_contact")
    count = Contact.objects.filter(organisation=organisation).count()
    print(f"contacts in organisation: {count:,}")

    rules = {
        "and": [
            {"field": "attributes.plan", "op": "in", "value": ["pro", "enterprise"]},
            {"field": "attributes.orders", "op": "gte", "value": 5},
            {"field": "attributes.signed_up", "op": "within_last_days", "value": 365},
        ]
    }
    condition = engine.compile_rules(organisation, rules)

    timings = []
    for _ in range(args.estimates):
        started = time.perf_counter()
        estimate = engine.estimate(organisation, condition)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    print(
        f"estimate: ≈{estimate.count:,} [{estimate.low:,}-{estimate.high:,}] ({estimate.method}); "
        f"p50 {statistics.median(timings):.0f} ms, max {timings[-1]:.0f} ms over {args.estimates} runs"
    )

    started = time.perf_counter()
    exact = engine.count_exact(organisation, condition)
    print(
        f"exact count: {exact:,} in {(time.perf_counter() - started) * 1000:.0f} ms "
        f"(estimate error {abs(estimate.count - exact) / max(exact, 1):.1%})"
    )

    select = engine.resolution_select(organisation, condition, holdout_percent=10, seed="bench-campaign")
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_recipients")
        cursor.execute(
            "CREATE UNLOGGED TABLE bench_recipients"
            " (contact_id bigint PRIMARY KEY, is_holdout boolean, variant_bucket integer, has_email boolean,"
            " has_phone boolean)"
        )
        started = time.perf_counter()
        cursor.execute(
            f"INSERT INTO bench_recipients (contact_id, is_holdout, variant_bucket, has_email, has_phone) {select.sql}",
            select.params,
        )
        written = cursor.rowcount
        elapsed = time.perf_counter() - started
        cursor.execute("SELECT count(*) FILTER (WHERE is_holdout) FROM bench_recipients")
        held = cursor.fetchone()[0]
    print(f"resolve 3-condition segment into recipient rows: {written:,} rows ({held:,} holdout) in {elapsed:.2f}s")

    everyone = engine.compile_rules(organisation, {"field": "email", "op": "exists"})
    select = engine.resolution_select(organisation, everyone, holdout_percent=10, seed="bench-campaign")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE bench_recipients")
        started = time.perf_counter()
        cursor.execute(
            f"INSERT INTO bench_recipients (contact_id, is_holdout, variant_bucket, has_email, has_phone) {select.sql}",
            select.params,
        )
        written = cursor.rowcount
        elapsed = time.perf_counter() - started
        cursor.execute("DROP TABLE bench_recipients")
    print(f"resolve the whole organisation into recipient rows: {written:,} rows in {elapsed:.2f}s")

    sample_contact = (
        Contact.objects.filter(organisation=organisation).order_by("id").values_list("id", flat=True)[count // 2]
    )
    timings = []
    for _ in range(200):
        started = time.perf_counter()
        engine.is_member(organisation, condition, sample_contact)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    print(f"is_member: p50 {statistics.median(timings):.2f} ms, p99 {timings[197]:.2f} ms")


if __name__ == "__main__":
    main()
