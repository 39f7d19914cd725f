from __future__ import annotations

from celery import shared_task

from audiences.services import contact_import_run


@shared_task(name="audiences.tasks.contacts_import_task", acks_late=True)
def contacts_import_task(import_id: str) -> str | None:
    """Runs a CSV import; a redelivered task resumes where the previous attempt stopped."""
    job = contact_import_run(import_id)
    return job.status if job else None


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
