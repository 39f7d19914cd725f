from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from audiences.access import Actor
from delivery import progress
from delivery.estimates import run_estimate
from delivery.models import Run


def run_list(actor: Actor, *, campaign_id: Any = None) -> QuerySet[Run]:
    runs = Run.objects.filter(organisation=actor.organisation, campaign__deleted_at__isnull=True)
    if campaign_id is not None:
        runs = runs.filter(campaign_id=campaign_id)
    return runs.select_related("campaign__organisation").order_by("-created_at")  # the estimate reads both


def run_progress(run: Run) -> dict[str, Any]:
    """Where a run stands, for the progress bar and the API: every message is in exactly one bucket."""
    sending = min(progress.in_flight(run.pk), run.remaining_count) if run.status == Run.Status.SENDING else 0
    return {
        "total": run.message_count,
        "queued": max(0, run.remaining_count - sending),
        "sending": sending,
        "sent": run.sent_count,
        "delivered": run.delivered_count,
        "bounced": run.bounced_count,
        "failed": run.failed_count,
        "skipped": run.skipped_count,
        "cancelled": run.cancelled_count,
        "percent": run.progress_percent,
    }


def run_estimated_completion(run: Run, *, now: datetime | None = None) -> datetime | None:
    """When an unfinished run should finish (None: finished, paused, or nothing to go on yet); the instant of
    delivery.estimates.run_estimate, which also says why."""
    estimate = run_estimate(run, now=now)
    return None if estimate.finished else estimate.at
