from __future__ import annotations

from celery import shared_task

from compliance import outbox


@shared_task(name="compliance.tasks.compliance_outbox_push_task")
def compliance_outbox_push_task() -> dict[str, int]:
    """Push due consent changes to account_service (after each change commits, and from celery-beat for retries).
    Safe to run concurrently and repeatedly: rows are claimed with SKIP LOCKED and pushes are idempotent."""
    return outbox.push_due()
