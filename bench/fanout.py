"""Fan-out of a 1M-contact audience into message rows.

    .venv/bin/python bench/fanout.py [--global-control 10]   # after bench/audiences.py has loaded its contacts

Uses the bench database and the organisation bench/audiences.py fills. The campaign sends email to everyone
with an email address (all of them) through two variants (45/45) and a 10 % control, with a 10 % holdout; the
fan-out is the production path (delivery.fanout.run_fan_out): audience resolution into a staging table, counts of
exclusions, then one INSERT … SELECT with the variant hash, holdout and control decided in SQL. With
--global-control P the organisation's global control group (P %) is left out first, for the run only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--global-control", type=float, default=0, help="the organisation's global control share, %%")
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/campaign_service")
    parts = urlsplit(base)
    os.environ["DATABASE_URL"] = parts._replace(
        path=(parts.path.rstrip("/") or "/campaign_service") + "_bench"
    ).geturl()
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from audiences.access import system_actor
    from audiences.models import Contact, Organisation
    from campaigns import services
    from delivery.fanout import run_create, run_fan_out
    from delivery.models import Message, Run

    call_command("migrate", verbosity=0)
    organisation = Organisation.objects.get(slug="bench-audiences")
    contacts = Contact.objects.filter(organisation=organisation).count()
    actor = system_actor(organisation, "bench")
    name = f"Fan-out bench {time.time_ns()}"
    campaign = services.campaign_create(
        actor=actor,
        name=name,
        channels=["email"],
        audience={"rules": {"field": "email", "op": "exists"}, "holdout_percent": 10},
        variants=[
            {"name": "A", "allocation_percent": 45, "content": {"email": {"subject": "A", "html": "a"}}},
            {"name": "B", "allocation_percent": 45, "content": {"email": {"subject": "B", "html": "b"}}},
            {"name": "Control", "allocation_percent": 10, "is_control": True},
        ],
    )
    share = organisation.global_control_percent
    Organisation.objects.filter(pk=organisation.pk).update(global_control_percent=args.global_control)
    run = run_create(campaign=campaign)
    started = time.perf_counter()
    run = run_fan_out(run.pk)
    elapsed = time.perf_counter() - started
    Organisation.objects.filter(pk=organisation.pk).update(global_control_percent=share)
    print(f"contacts in organisation: {contacts:,}")
    print(
        f"fan-out: {run.audience_count:,} recipients -> {Message.objects.filter(run=run).count():,} message rows "
        f"({run.message_count:,} queued, {run.holdout_count:,} holdout, {run.control_count:,} control) "
        f"in {elapsed:.2f}s = {run.audience_count / elapsed:,.0f} recipients/s; excluded {run.excluded}"
    )
    with connection.cursor() as cursor:  # leave the bench database as it was
        cursor.execute("DELETE FROM delivery_message WHERE run_id = %s", [str(run.pk)])
    Run.objects.filter(pk=run.pk).delete()


if __name__ == "__main__":
    main()
