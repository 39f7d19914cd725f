from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import connection
from django.utils import timezone

from audiences.models import ContactImport
from audiences.services import contact_import_run
from config.outage import task_enqueue


@shared_task(name="audiences.tasks.contacts_import_task", acks_late=True)
def contacts_import_task(import_id: str) -> str | None:
    """Runs a CSV import; a redelivered task resumes where the previous attempt stopped. One worker at a time per
    import (a session advisory lock, released by PostgreSQL if the worker dies): the pump may ask again for an
    import whose first message was only slow, and two workers on one file would count its rows twice."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext('contact-import'), hashtext(%s))", [str(import_id)])
        if not cursor.fetchone()[0]:
            return None
    try:
        job = contact_import_run(import_id)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext('contact-import'), hashtext(%s))", [str(import_id)])
    return job.status if job else None


@shared_task(name="audiences.tasks.contact_imports_pump_task")
def contact_imports_pump_task() -> int:
    """celery-beat's safety net for uploads whose task message never reached a broker (Redis was down when the
    upload committed): imports still waiting after CONTACT_IMPORT_STALL_SECONDS are asked for again."""
    stalled_before = timezone.now() - timedelta(seconds=settings.CONTACT_IMPORT_STALL_SECONDS)
    pending = ContactImport.objects.filter(status=ContactImport.Status.PENDING, created_at__lte=stalled_before)
    return sum(task_enqueue(contacts_import_task, str(pk)) for pk in pending.values_list("pk", flat=True)[:100])


@shared_task(name="audiences.tasks.event_feed_pull_task")
def event_feed_pull_task() -> dict[str, int]:
    """celery-beat polls the external event_service for every organisation (a no-op without EVENT_SERVICE_URL).
    Idempotent: events are deduplicated by id and the cursor moves with each stored page."""
    from audiences.adapters import AdapterError
    from audiences.event_feed import event_feed, event_feed_pull
    from audiences.models import Organisation

    feed = event_feed()
    totals = {"organisations": 0, "accepted": 0, "errors": 0}
    if feed is None:
        return totals
    for organisation in Organisation.objects.all():
        try:
            result = event_feed_pull(organisation, feed=feed)
        except AdapterError:
            totals["errors"] += 1
            continue
        totals["organisations"] += 1
        totals["accepted"] += result["accepted"]
    return totals
