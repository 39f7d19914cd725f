from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import QuerySet
from django.utils import timezone

from audiences.access import Actor
from delivery import progress, throttle
from delivery.models import Run


def run_list(actor: Actor, *, campaign_id: Any = None) -> QuerySet[Run]:
    runs = Run.objects.filter(organisation=actor.organisation, campaign__deleted_at__isnull=True)
    if campaign_id is not None:
        runs = runs.filter(campaign_id=campaign_id)
    return runs.select_related("campaign").order_by("-created_at")


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
    """When the run should finish, from what is left, the limits and the send windows (None: finished, or nothing
    to go on yet). Windows are read in the organisation's timezone here, an approximation for audiences spread
    over zones; rates are the throttle's own."""
    now = now or timezone.now()
    remaining = run.remaining_count
    if run.status not in (Run.Status.SENDING, Run.Status.READY, Run.Status.PAUSED) or remaining <= 0:
        return None
    campaign = run.campaign
    per_minute = throttle.effective_per_minute(campaign, list(campaign.channels))
    if per_minute is None and run.started_sending_at and run.done_count:
        elapsed = max(1.0, (now - run.started_sending_at).total_seconds())
        per_minute = 60 * run.done_count / elapsed  # as fast as the workers have been going
    if not campaign.has_send_rules:
        return now + timedelta(minutes=remaining / per_minute) if per_minute else None
    return _through_windows(campaign, remaining, per_minute, now)


def _through_windows(campaign: Any, remaining: float, per_minute: float | None, now: datetime) -> datetime | None:
    zone = ZoneInfo(str(campaign.organisation.timezone))
    local_now = now.astimezone(zone)
    for offset in range(400):
        day = (local_now + timedelta(days=offset)).date()
        if campaign.skip_weekends and day.isoweekday() >= 6:
            continue
        if campaign.local_send_time is not None:
            start = datetime.combine(day, campaign.local_send_time, tzinfo=zone)
            end = start + timedelta(days=1)
        elif campaign.send_window_start is not None:
            start = datetime.combine(day, campaign.send_window_start, tzinfo=zone)
            end = datetime.combine(day, campaign.send_window_end, tzinfo=zone)
            if end <= start:
                end += timedelta(days=1)  # a window across midnight
        else:
            start = datetime.combine(day, time.min, tzinfo=zone)
            end = start + timedelta(days=1)
        start = max(start, local_now)
        if end <= start:
            continue
        if per_minute is None:
            return start.astimezone(now.tzinfo)  # unthrottled: it all goes when the window opens
        minutes = (end - start).total_seconds() / 60
        if remaining <= minutes * per_minute:
            return (start + timedelta(minutes=remaining / per_minute)).astimezone(now.tzinfo)
        remaining -= minutes * per_minute
    return None
