"""What exact SMS counting costs: the count per message, recording the parts with the batch, and the preview's scan
for the longest values.

    .venv/bin/python bench/sms_length.py [--batches 30]   # after bench/audiences.py has loaded its contacts

1. `sms_length` per message (CPU, one core) for a 150-character GSM-7 text, a 300-character one with escapes, and
   a 150-unit UCS-2 text with emoji.
2. Recording a batch of 1,000 SMS rows in the bench database, alternated, each in its own transaction with
   `synchronous_commit = off` as the send's batch: the record UPDATE without parts (an email batch), with the parts
   in it (what the send does), and without them plus a separate parts UPDATE of the same rows (the design it
   replaced). The rows are made here for a run of no campaign and deleted afterwards.
3. The preview's longest-values scan (campaigns.content.sms_longest) over the bench organisation's contacts for
   first_name and two attributes, uncached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The design replaced: the parts written by an UPDATE of their own.
SEPARATE_PARTS_SQL = """
UPDATE delivery_message m SET parts = u.n
FROM json_to_recordset(%(rows)s::json) AS u(i bigint, n int)
WHERE m.id = u.i AND m.parts IS DISTINCT FROM u.n
"""


def per_message_counting() -> None:
    from campaigns.content.sms import sms_length

    texts = {
        "150 chars GSM-7": "Hi Alexandra, your parcel is ready to collect at the Main Street shop. " * 2 + "Reply STOP",
        "300 chars GSM-7 with escapes": ("Use code {SAVE20} for 20€ off [today] " * 8)[:300],
        "150 units UCS-2 with emoji": ("Zoë, ваш заказ готов 😀 " * 7)[:140],
    }
    for label, text in texts.items():
        rounds = 20_000
        started = time.process_time()
        for _ in range(rounds):
            sms_length(text)
        micro = (time.process_time() - started) / rounds * 1e6
        length = sms_length(text)
        units = f"{length.units} {length.encoding} units, {length.segments} parts"
        print(f"  sms_length, {label} ({units}): {micro:.1f} µs")


def record_statements(batches: int) -> None:
    from django.db import connection, transaction

    from delivery.sending import RECORD_SQL

    run, variant = uuid.uuid4(), uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO delivery_message (run_id, contact_id, channel, variant_id, variant_kept, status, trigger_key,"
            " due_at, attempts, provider_message_id, error, created_at)"
            " SELECT %s, g, 'sms', %s, false, 'queued', '', now(), 0, '', '', now()"
            " FROM generate_series(1, %s) g RETURNING id",
            [str(run), str(variant), 1000 * 3 * batches],
        )
        ids = [row[0] for row in cursor.fetchall()]
    kinds = ["record without parts", "record with parts (the send)", "record + separate parts UPDATE"]
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for number in range(3 * batches):
            batch = ids[number * 1000 : (number + 1) * 1000]
            kind = kinds[number % 3]
            rows = [{"i": i, "s": "sent", "p": f"ns-{i}", "e": "", "r": None, "a": 1} for i in batch]
            if kind == kinds[1]:
                rows = [{**row, "n": 1} for row in rows]
            started = time.perf_counter()
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
                if kind == kinds[2]:
                    cursor.execute(SEPARATE_PARTS_SQL, {"rows": json.dumps([{"i": i, "n": 1} for i in batch])})
                cursor.execute(RECORD_SQL, {"rows": json.dumps(rows), "now": datetime.now(UTC)})
            times[kind].append(time.perf_counter() - started)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM delivery_message WHERE run_id = %s", [str(run)])
    for kind, values in times.items():
        print(
            f"  {kind:32s} per 1,000 rows: median {statistics.median(values) * 1000:5.1f} ms,"
            f" min {min(values) * 1000:5.1f} ms ({len(values)} batches)"
        )


def longest_values_scan() -> None:
    from django.core.cache import cache

    from audiences.models import Contact, Organisation
    from campaigns.content.sms_longest import longest_values, longest_values_cache_key

    organisation = Organisation.objects.get(slug="bench-audiences")
    fields = ["first_name", "attributes.plan", "attributes.country"]
    durations = []
    for _ in range(5):
        cache.delete(longest_values_cache_key(organisation.pk, fields))
        started = time.perf_counter()
        seen = longest_values(organisation.pk, fields)
        durations.append(time.perf_counter() - started)
    count = Contact.objects.filter(organisation=organisation).count()
    print(
        f"  longest values of {', '.join(fields)} over {count:,} contacts: median"
        f" {statistics.median(durations) * 1000:.0f} ms, min {min(durations) * 1000:.0f} ms (5 scans, uncached);"
        f" first name {seen.fields.get('first_name')}, non-GSM example {seen.example}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30, help="batches of 1,000 rows per recording variant")
    args = parser.parse_args()
    from benchdb import setup_django

    setup_django()
    print("counting per message (CPU):")
    per_message_counting()
    print("recording a batch of 1,000 SMS (alternated):")
    record_statements(args.batches)
    print("preview, longest values seen:")
    longest_values_scan()


if __name__ == "__main__":
    main()
