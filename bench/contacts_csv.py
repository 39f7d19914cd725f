"""The console's CSV import end to end: an uploaded file of N contacts → contacts, through contact_import_run.

    python -m config.devstack exec .venv/bin/python bench/contacts_csv.py [--contacts 200000]

Uses its own database (<DATABASE_URL name>_bench) and a new organisation each run. The file (external_id, email,
phone, first_name, timezone, locale and six attribute columns: plan, country, orders, lifetime_value, newsletter,
signed_up) is written before the clock runs; the timed part is what the Celery task does: count the rows, read the
file, validate, encrypt, write, and record progress and the rejected-rows report after each chunk of 5,000.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLANS = ["free"] * 14 + ["pro"] * 5 + ["enterprise"]
COUNTRIES = ["GB", "FR", "DE", "US", "ES", "NL", "IE", "IT", "SE", "PL"]
ZONES = ["Europe/London", "Europe/Paris", "Europe/Berlin", "America/New_York", "Europe/Madrid"]
HEADER = [
    "external_id", "email", "phone", "first_name", "timezone", "locale",
    "plan", "country", "orders", "lifetime_value", "newsletter", "signed_up",
]  # fmt: skip


def synthetic_csv(count: int, seed: int = 42) -> bytes:
    rng = random.Random(seed)
    today = date.today()
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(HEADER)
    for index in range(count):
        writer.writerow(
            [
                f"user-{index:08d}",
                f"user{index}@example.com",
                f"+4477{index % 100_000_000:08d}" if index % 3 else "",
                "Alex",
                ZONES[index % len(ZONES)],
                "en-GB",
                PLANS[index % len(PLANS)],
                COUNTRIES[rng.randrange(len(COUNTRIES))],
                rng.randrange(0, 30),
                round(rng.expovariate(1 / 150), 2),
                "true" if rng.random() < 0.7 else "false",
                (today - timedelta(days=rng.randrange(0, 1500))).isoformat(),
            ]
        )
    return text.getvalue().encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=200_000)
    args = parser.parse_args()

    from benchdb import setup_django

    setup_django()
    from django.core.files.base import ContentFile

    from audiences.models import Contact, ContactImport, Organisation
    from audiences.services import contact_import_run

    started = time.perf_counter()
    content = synthetic_csv(args.contacts)
    print(f"file: {args.contacts:,} rows, {len(content) / 1e6:.1f} MB, written in {time.perf_counter() - started:.1f}s")
    slug = f"bench-csv-{uuid.uuid4().hex[:8]}"
    organisation = Organisation.objects.create(slug=slug, name="Bench CSV")
    job = ContactImport(organisation=organisation, filename="bench.csv")
    job.file.save("bench.csv", ContentFile(content), save=False)
    job.save()

    started = time.perf_counter()
    job = contact_import_run(job.pk)
    spent = time.perf_counter() - started
    assert job is not None and job.status == ContactImport.Status.COMPLETED, job and job.error
    stored = Contact.objects.filter(organisation=organisation).count()
    print(
        f"CSV import: {job.created_count:,} created, {job.rejected_count:,} rejected, {stored:,} stored,"
        f" in {spent:.1f}s = {job.processed_rows / spent:,.0f} rows/s (count, read, validate, encrypt, write, progress)"
    )


if __name__ == "__main__":
    main()
