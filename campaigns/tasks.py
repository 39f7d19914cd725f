from __future__ import annotations

from celery import shared_task

from campaigns.services import campaigns_purge_deleted


@shared_task(name="campaigns.tasks.campaigns_purge_deleted_task")
def campaigns_purge_deleted_task() -> int:
    """celery-beat runs this hourly; it is idempotent, so a duplicate delivery only finds nothing left to do."""
    return campaigns_purge_deleted()
