"""Run lifecycle: start (fan-out, then sending), pause, resume, cancel, finish, and the pump that keeps it moving.

PostgreSQL holds every fact (run status, message rows, due times); Celery messages only say "go look at run X".
The pump, run by celery-beat every few seconds, is what makes that safe: it starts scheduled campaigns whose time
has come, restarts fan-outs and sending that stalled (a killed worker, a Redis restart that lost queued tasks), and
finishes runs with nothing left to send. Every step is idempotent, so duplicate or lost task messages do no harm.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from audiences.access import Actor, system_actor
from campaigns import services as campaign_services
from campaigns.models import Campaign, CampaignStatus
from config.errors import Conflict
from delivery import seeds
from delivery.fanout import run_create, run_fan_out
from delivery.models import Run

logger = logging.getLogger(__name__)
S = Run.Status


def _on_commit(callback: Any) -> None:
    transaction.on_commit(callback)


def _enqueue_prepare(run_id: Any) -> None:
    from delivery.tasks import run_prepare_task

    _on_commit(lambda: run_prepare_task.delay(str(run_id)))


def _enqueue_seed_copies(run_id: Any) -> None:
    from delivery.tasks import run_seed_copies_task

    _on_commit(lambda: run_seed_copies_task.delay(str(run_id)))


def run_kick(run_id: Any, *, workers: int | None = None) -> None:
    """Ask workers to send a run: one task per lane. Extra tasks find nothing to claim and end."""
    from delivery.tasks import run_send_task

    lanes = workers or (1 if _throttled(run_id) else settings.DELIVERY_PARALLELISM)
    _on_commit(lambda: [run_send_task.delay(str(run_id)) for _ in range(lanes)])


def kick_marker(run_id: Any) -> str:
    return f"run-kick-pending:{run_id}"


def run_kick_coalesced(run_id: Any) -> None:
    """For streams of small additions (triggered sends): one send task waiting per run is enough. The marker is
    cleared by the task as it starts, before it claims, so anything added after that asks for a new task."""
    from django.core.cache import cache

    from delivery.tasks import run_send_task

    def kick() -> None:
        if cache.add(kick_marker(run_id), 1, timeout=30):
            run_send_task.delay(str(run_id))

    _on_commit(kick)


def _throttled(run_id: Any) -> bool:
    """A throttled run needs one lane: more would only wait for the same tokens."""
    from delivery.throttle import campaign_buckets

    run = Run.objects.select_related("campaign", "campaign__organisation").filter(pk=run_id).first()
    return bool(run and any(campaign_buckets(run.campaign, channel) for channel in run.campaign.channels))


# --- reacting to campaign transitions (delivery.receivers) ---------------------------------------------------


def runs_on_campaign_start(campaign: Campaign, *, occurrence: datetime | None) -> Run:
    run = run_create(
        campaign=campaign,
        trigger=Run.Trigger.SCHEDULE if occurrence else Run.Trigger.MANUAL,
        scheduled_for=occurrence,
    )
    _enqueue_prepare(run.pk)
    return run


def runs_pause(campaign: Campaign, *, actor: Actor) -> int:
    return Run.objects.filter(campaign=campaign, status__in=[S.PENDING, S.FANNING_OUT, S.READY, S.SENDING]).update(
        status=S.PAUSED, paused_at=timezone.now(), paused_by=actor.label
    )


def runs_resume(campaign: Campaign) -> int:
    resumed = 0
    for run in Run.objects.filter(campaign=campaign, status=S.PAUSED):
        if run.fanned_out_at is None:
            Run.objects.filter(pk=run.pk).update(status=S.PENDING, paused_at=None, paused_by="")
            _enqueue_prepare(run.pk)
        else:
            Run.objects.filter(pk=run.pk).update(status=S.SENDING, paused_at=None, paused_by="")
            run_kick(run.pk)
        resumed += 1
    return resumed


def runs_cancel(campaign: Campaign, *, reason: str = "", final_status: str = S.CANCELLED) -> int:
    """Stop every open run for good; their unsent messages become cancelled (set-based)."""
    now = timezone.now()
    cancelled = 0
    for run in Run.objects.select_for_update().filter(campaign=campaign, status__in=Run.ACTIVE_STATUSES):
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE delivery_message SET status = 'cancelled', error = %s WHERE run_id = %s AND status = 'queued'",
                [reason[:500], str(run.pk)],
            )
            count = cursor.rowcount
        Run.objects.filter(pk=run.pk).update(
            status=final_status,
            cancelled_count=run.cancelled_count + count,
            finished_at=now,
            status_reason=reason[:500],
        )
        cancelled += 1
    return cancelled


# --- the engine's own steps (Celery tasks call these) --------------------------------------------------------


def run_prepare(run_id: Any) -> Run | None:
    """Fan out (idempotent) and start sending, unless the run was paused or cancelled meanwhile."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None or run.status not in (S.PENDING, S.FANNING_OUT, S.READY):
        return run
    if run.status != S.READY:
        try:
            run_fan_out(run_id)
        except Exception as exc:
            Run.objects.filter(pk=run_id, status__in=[S.PENDING, S.FANNING_OUT]).update(
                status=S.FAILED, status_reason=f"fan-out failed: {exc}"[:500], finished_at=timezone.now()
            )
            raise
    now = timezone.now()
    if Run.objects.filter(pk=run_id, status=S.READY).update(
        status=S.SENDING, started_sending_at=now, last_progress_at=now
    ):
        with transaction.atomic():
            run_kick(run_id)
            if seeds.run_seed_copies_plan(Run.objects.select_related("campaign").get(pk=run_id)):
                _enqueue_seed_copies(run_id)
    return Run.objects.get(pk=run_id)


def run_finish_if_done(run_id: Any) -> bool:
    """Complete a sending run that has nothing queued (sent, failed, skipped or cancelled every message), and move
    its campaign on: completed, or back to scheduled for a recurring campaign's next occurrence."""
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_id, status=S.SENDING).select_related("campaign").first()
        if run is None or run.trigger == Run.Trigger.EVENT:
            return False  # a triggered campaign's standing run stays open while the campaign is active
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM delivery_message WHERE run_id = %s AND status = 'queued')", [str(run.pk)]
            )
            if cursor.fetchone()[0]:
                return False
        now = timezone.now()
        Run.objects.filter(pk=run.pk).update(status=S.COMPLETED, finished_at=now, last_progress_at=now)
        _campaign_after_run(run, now)
    return True


def _campaign_after_run(run: Run, now: datetime) -> None:
    campaign = run.campaign
    if campaign.status != CampaignStatus.RUNNING:
        return
    if Run.objects.filter(campaign=campaign, status__in=Run.ACTIVE_STATUSES).exclude(pk=run.pk).exists():
        return
    actor = system_actor(campaign.organisation, "delivery engine")
    action = "await_next" if _has_next_occurrence(campaign, now) else "complete"
    campaign_services.campaign_transition(
        actor=actor, campaign_id=campaign.pk, action=action, by_engine=True, occurrence=run.scheduled_for
    )


def _has_next_occurrence(campaign: Campaign, now: datetime) -> bool:
    from campaigns.scheduling import following_occurrence

    return following_occurrence(campaign, now) is not None


def campaign_schedule_fire(campaign_id: Any, *, now: datetime | None = None) -> Run | None:
    """The alarm for a scheduled campaign went off (celery-beat, an external task_service, or the pump). Starts a
    run for the due occurrence once; early, repeated or stale alarms start nothing."""
    now = now or timezone.now()
    with transaction.atomic():
        campaign = (
            Campaign.objects.select_for_update()
            .select_related("organisation")
            .filter(pk=campaign_id, deleted_at__isnull=True)
            .first()
        )
        if campaign is None or campaign.status != CampaignStatus.SCHEDULED or campaign.scheduled_at is None:
            return None
        if campaign.scheduled_at > now + timedelta(seconds=settings.SCHEDULE_EARLY_TOLERANCE_SECONDS):
            return None  # an alarm for a time that has been moved
        occurrence = campaign.scheduled_at
        if Run.objects.filter(campaign=campaign, scheduled_for=occurrence).exists():
            return None
        actor = system_actor(campaign.organisation, "scheduler")
        try:
            with transaction.atomic():
                campaign_services.campaign_transition(
                    actor=actor, campaign_id=campaign.pk, action="start", by_engine=True, occurrence=occurrence
                )
        except (Conflict, ValidationError) as exc:
            # A campaign that can no longer launch (content made invalid, audience emptied…) goes back to draft
            # with the reason in its history and the audit log, instead of the alarm firing forever.
            reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
            logger.warning("scheduled campaign %s could not start: %s", campaign.pk, reason)
            campaign_services.campaign_transition(
                actor=system_actor(campaign.organisation, f"scheduler: could not start ({reason[:150]})"),
                campaign_id=campaign.pk,
                action="unschedule",
                by_engine=True,
            )
            return None
        return Run.objects.filter(campaign=campaign, scheduled_for=occurrence).first()


def delivery_pump(*, now: datetime | None = None) -> dict[str, int]:
    """One pass of the engine's safety net (celery-beat runs it every few seconds). Cheap when idle: it reads the
    partial indexes of due campaigns and active runs only."""
    now = now or timezone.now()
    report = {"fired": 0, "prepared": 0, "kicked": 0, "finished": 0, "seed_copies": 0}
    due = Campaign.objects.filter(
        status=CampaignStatus.SCHEDULED, deleted_at__isnull=True, scheduled_at__lte=now
    ).values_list("pk", flat=True)[:100]
    for campaign_id in due:
        try:
            if campaign_schedule_fire(campaign_id, now=now):
                report["fired"] += 1
        except Exception:
            logger.exception("scheduled campaign %s failed to start", campaign_id)
    stall = timedelta(seconds=settings.DELIVERY_STALL_SECONDS)
    for run in Run.objects.filter(status__in=[S.PENDING, S.FANNING_OUT, S.READY], created_at__lte=now - stall):
        # A fan-out whose task was lost or whose worker died: fan-out is idempotent, so run it again, unless one
        # is in progress (it holds the run's advisory lock).
        if _fan_out_in_progress(run.pk):
            continue
        _enqueue_prepare_now(run.pk)
        report["prepared"] += 1
    for run in Run.objects.filter(status=S.SENDING):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM delivery_message WHERE run_id = %s AND status = 'queued'),"
                " EXISTS (SELECT 1 FROM delivery_message WHERE run_id = %s AND status = 'queued' AND due_at <= %s)",
                [str(run.pk), str(run.pk), now],
            )
            any_queued, any_due = cursor.fetchone()
        if not any_queued:
            if run_finish_if_done(run.pk):
                report["finished"] += 1
        elif any_due and run.trigger == Run.Trigger.EVENT:
            # Delayed and deferred triggered sends: asked for as soon as they are due (one lane; idempotent).
            if run.last_progress_at is None or run.last_progress_at <= now - timedelta(seconds=2):
                with transaction.atomic():
                    run_kick(run.pk, workers=1)
                report["kicked"] += 1
        elif any_due and (run.last_progress_at is None or run.last_progress_at <= now - stall):
            with transaction.atomic():
                run_kick(run.pk)
            report["kicked"] += 1
    for run_id in seeds.due_seed_copy_runs(now=now):
        with transaction.atomic():
            _enqueue_seed_copies(run_id)
        report["seed_copies"] += 1
    return report


def _enqueue_prepare_now(run_id: Any) -> None:
    from delivery.tasks import run_prepare_task

    run_prepare_task.delay(str(run_id))


def _fan_out_in_progress(run_id: Any) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext('run-fan-out'), hashtext(%s))", [str(run_id)])
        return not cursor.fetchone()[0]
