from __future__ import annotations

from celery import shared_task

from audiences.services import contact_import_run


@shared_task(name="audiences.tasks.contacts_import_task", acks_late=True)
def contacts_import_task(import_id: str) -> str | None:
    """Runs a CSV import; a redelivered task resumes where the previous attempt stopped."""
    job = contact_import_run(import_id)
    return job.status if job else None
