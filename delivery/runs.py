"""Run lifecycle: start (fan-out, then sending), pause, resume, cancel, finish, and the pump that keeps it moving.

PostgreSQL holds every fact (run status, message rows, due times); Celery messages only say "go look at run X".
The pump, run by celery-beat every few seconds, is what makes that safe: it starts scheduled campaigns whose time
has come, restarts fan-outs and sending that stalled (a killed worker, a Redis restart that lost queued tasks), and
finishes runs with nothing left to send. Every step is idempotent, so duplicate or lost task messages do no harm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from time import monotonic
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from audiences.access import Actor, system_actor
from audiences.adapters import AdapterError
from campaigns import services as campaign_services
from campaigns.models import Campaign, CampaignStatus
from config.errors import Conflict
from config.outage import REDIS_ERRORS, cache_outage, task_enqueue, task_enqueue_on_commit
from delivery import seeds
from delivery.fanout import run_create, run_fan_out
from delivery.models import Run
from delivery.throttle import BURST_SECONDS

logger = logging.getLogger(__name__)
S = Run.Status


def _on_commit(callback: Any) -> None:
    transaction.on_commit(callback)


def _enqueue_prepare(run_id: Any) -> None:
    from delivery.tasks import run_prepare_task

    task_enqueue_on_commit(run_prepare_task, str(run_id))


def _enqueue_seed_copies(run_id: Any) -> None:
    from delivery.tasks import run_seed_copies_task

    task_enqueue_on_commit(run_seed_copies_task, str(run_id))


def run_kick(run_id: Any, *, workers: int | None = None) -> None:
    """Ask workers to send a run, once this transaction commits: one task per lane. A lane already asked for (its
    task is queued, or a throttle's follow-up is waiting) is not asked twice, and a task whose lane is busy ends at
    once, so kicking is cheap and safe from anywhere. A triggered campaign's standing run is sent by its
    organisation's trigger sweep instead."""
    run = Run.objects.filter(pk=run_id).values("trigger", "organisation_id").first()
    if run is None:
        return
    if run["trigger"] == Run.Trigger.EVENT:
        trigger_sweep_kick(run["organisation_id"])
        return
    lanes = workers or run_lanes(run_id)
    _on_commit(lambda: [_ask_for_lane(run_id, lane) for lane in range(lanes)])


def kick_marker(run_id: Any, lane: int = 0) -> str:
    return f"run-kick-pending:{run_id}:{lane}"


# A kick is pending for at most this long without its task starting before another may be asked for (a task lost
# with a Redis restart); the pump asks again after that.
KICK_PENDING_SECONDS = 15
# A throttle's wait up to this long is slept inside the task; a longer one ends the task with a follow-up task
# at the time the tokens are there (a Celery countdown, which holds no worker), at most FOLLOW_UP_MAX_SECONDS ahead —
# a longer wait is simply another follow-up then. None is slept: a throttled lane asleep in a worker process kept
# other campaigns' lanes waiting for a process (two worker processes, four throttled campaigns: the slowest got a
# third of its rate).
SLEEP_IN_TASK_SECONDS = 0.0
FOLLOW_UP_MAX_SECONDS = 300.0


def _ask(marker: str, task: Any, *args: Any, countdown: float = 0.0) -> bool:
    """Send `task` unless the same ask is pending (marker), tolerating a Redis that is down: the messages are safe
    in PostgreSQL and the pump asks again once it is back."""
    from django.core.cache import cache

    if cache_outage.skipping():
        return False  # Redis just failed: do not make every ingestion wait a timeout for it; the pump asks later
    try:
        if not cache.add(marker, 1, timeout=int(countdown + KICK_PENDING_SECONDS)):
            return False
    except REDIS_ERRORS as exc:
        cache_outage.failed("kick marker", exc)
        return False
    return task_enqueue(task, *args, countdown=countdown or None)


def _ask_for_lane(run_id: Any, lane: int, *, countdown: float = 0.0) -> bool:
    from delivery.tasks import run_send_task

    return _ask(kick_marker(run_id, lane), run_send_task, str(run_id), lane, countdown=countdown)


def _clear_marker(marker: str) -> None:
    from django.core.cache import cache

    try:
        cache.delete(marker)  # started: anything added from now on asks for a new task
    except REDIS_ERRORS as exc:
        cache_outage.failed("kick marker", exc)


def run_lanes(run_id: Any) -> int:
    """How many tasks send a run at once. A throttled run needs as many as it takes to keep up with its limit
    while batches are with the provider (one, below about 30,000 a minute); more would only wait for the same
    tokens. A triggered campaign's standing run takes small additions: one."""
    from delivery.throttle import effective_per_minute

    run = Run.objects.select_related("campaign", "campaign__organisation").filter(pk=run_id).first()
    if run is None or run.trigger == Run.Trigger.EVENT:
        return 1
    per_minute = effective_per_minute(run.campaign, list(run.campaign.channels))
    if per_minute is None:
        return settings.DELIVERY_PARALLELISM
    per_lane = 30_000 * settings.DELIVERY_BATCH_SIZE / 1000  # a lane's batch every two seconds at most
    return max(1, min(settings.DELIVERY_PARALLELISM, math.ceil(per_minute / per_lane)))


@contextmanager
def advisory_lock(name: str, lane: int) -> Iterator[bool]:
    """Hold lane `lane` of `name` for one task (a session-level advisory lock on (hashtext(name), lane): it goes
    with the connection if the worker dies). Yields whether this task has it; a second task for a busy lane has
    nothing to do. The pump reads these locks to know what is being worked on."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", [name, lane])
        held = bool(cursor.fetchone()[0])
    try:
        yield held
    finally:
        if held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", [name, lane])
            except DatabaseError:  # the connection is gone, and the lock with it
                logger.info("%s lane %d: connection lost before unlocking", name, lane)


def send_lane(run_id: Any, lane: int) -> Any:
    """Lane `lane` of a run's sending (advisory_lock on the run's id)."""
    return advisory_lock(str(run_id), lane)


# Whether a run has a message due now that nobody holds (SKIP LOCKED passes over rows a lane has claimed).
CLAIMABLE_SQL = """
SELECT EXISTS (SELECT 1 FROM delivery_run WHERE id = %(run)s AND status = 'sending')
   AND EXISTS (SELECT 1 FROM delivery_message WHERE run_id = %(run)s AND status = 'queued' AND due_at <= %(now)s
               FOR UPDATE SKIP LOCKED)
"""


def run_send_spell(run_id: Any, *, lane: int = 0) -> int:
    """A send task's work: hold the lane, send for a while, then say what comes next — a fresh task at once (the
    time was up), a follow-up when the throttle has tokens again, or nothing: the run is finished, or what is left
    is due later and the pump wakes it then. Nothing polls."""
    from delivery import sending

    _clear_marker(kick_marker(run_id, lane))
    with send_lane(run_id, lane) as held:
        if not held:
            return 0
        spell = sending.run_send_for(run_id, seconds=settings.DELIVERY_TASK_SECONDS, max_sleep=SLEEP_IN_TASK_SECONDS)
    if spell.throttled and spell.slowest_batch > BURST_SECONDS * 0.8 and lane + 1 < settings.DELIVERY_PARALLELISM:
        # Throttled, and the provider keeps a batch longer than the bucket holds tokens: another lane takes the
        # tokens that accrue meanwhile (each lane asks for the next, up to DELIVERY_PARALLELISM).
        _ask_for_lane(run_id, lane + 1)
    if spell.more:
        _ask_for_lane(run_id, lane)
    elif spell.wait:
        _ask_for_lane(run_id, lane, countdown=min(spell.wait, FOLLOW_UP_MAX_SECONDS))
    elif _claimable_now(run_id):
        # Added while this task held the lane (a triggered send whose own task found the lane busy): go again.
        _ask_for_lane(run_id, lane)
    else:
        run_finish_if_done(run_id)
    return spell.claimed


def _claimable_now(run_id: Any) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIMABLE_SQL, {"run": str(run_id), "now": timezone.now()})
        return bool(cursor.fetchone()[0])


# --- triggered sends: a sweep per organisation over its standing runs ------------------------------------------
#
# Events for a hundred triggered campaigns make a hundred runs with a message or two due at a time; a send task
# per run would pay its fixed cost (task, run context, lane) for each. One sweep instead goes over every standing
# run of the organisation with something due, claiming each run's due messages in turn (SKIP LOCKED, as lanes do),
# and keeps the run contexts for its spell. Lane 0 is asked for on every ingestion commit; it asks lane 1 to help
# when more than one run has something due.

TRIGGER_SWEEP_LANES = 2

DUE_TRIGGER_RUNS_SQL = """
SELECT r.id FROM delivery_run r
WHERE r.organisation_id = %(org)s AND r.status = 'sending' AND r.trigger = 'event'
  AND EXISTS (SELECT 1 FROM delivery_message m WHERE m.run_id = r.id AND m.status = 'queued' AND m.due_at <= %(now)s)
ORDER BY r.id
"""

CLAIMABLE_TRIGGER_SQL = """
SELECT EXISTS (
    SELECT 1 FROM delivery_message m JOIN delivery_run r ON r.id = m.run_id
    WHERE r.organisation_id = %(org)s AND r.status = 'sending' AND r.trigger = 'event'
      AND m.status = 'queued' AND m.due_at <= %(now)s
    FOR UPDATE OF m SKIP LOCKED)
"""


# A standing run's context (run, campaign, variants: what rendering needs) is kept by the worker process for this
# long between sweeps. An active triggered campaign's content and settings cannot change (only drafts and paused
# campaigns are edited, and a pause stops the run, which the claim checks in SQL), so this only saves queries.
SWEEP_CONTEXT_SECONDS = 10.0
_sweep_contexts: dict[Any, tuple[float, Any]] = {}


def sweep_marker(organisation_id: Any, lane: int = 0) -> str:
    return f"trigger-sweep-pending:{organisation_id}:{lane}"


def sweep_lock_name(organisation_id: Any) -> str:
    return f"trigger-sweep:{organisation_id}"


def trigger_sweep_kick(organisation_id: Any, *, lane: int = 0) -> None:
    """Ask for the organisation's trigger sweep once this transaction commits (not twice while one is pending)."""
    _on_commit(lambda: _ask_for_sweep(organisation_id, lane))


def _ask_for_sweep(organisation_id: Any, lane: int, *, countdown: float = 0.0) -> bool:
    from delivery.tasks import trigger_sweep_task

    return _ask(
        sweep_marker(organisation_id, lane), trigger_sweep_task, str(organisation_id), lane, countdown=countdown
    )


def trigger_sweep(organisation_id: Any, *, lane: int = 0) -> int:
    """Send what is due in the organisation's standing trigger runs, for a spell; then hand over, come back when a
    throttle has tokens again, or end. Returns the messages claimed."""
    from delivery import sending

    _clear_marker(sweep_marker(organisation_id, lane))
    contexts = _sweep_contexts
    claimed, wait, more = 0, 0.0, False
    with advisory_lock(sweep_lock_name(organisation_id), lane) as held:
        if not held:
            return 0
        deadline = timezone.now() + timedelta(seconds=settings.DELIVERY_TASK_SECONDS)
        while True:
            due = _due_trigger_runs(organisation_id)
            if lane == 0 and len(due) > 1:
                for helper in range(1, TRIGGER_SWEEP_LANES):
                    _ask_for_sweep(organisation_id, helper)
            if lane % 2:
                due.reverse()  # the lanes start at opposite ends and meet in the middle
            progressed, waits = 0, []
            for run_id in due:
                ctx = contexts.get(run_id)
                if ctx is None or ctx[0] < monotonic():
                    ctx = contexts[run_id] = (monotonic() + SWEEP_CONTEXT_SECONDS, sending._run_context(run_id))
                if ctx[1] is None:
                    continue
                result = sending.run_send_batch(run_id, ctx=ctx[1])
                progressed += result.claimed
                if result.wait:
                    waits.append(result.wait)
            claimed += progressed
            if not progressed:
                wait = min(waits, default=0.0)
                break
            if timezone.now() >= deadline:
                more = True
                break
    if more:
        _ask_for_sweep(organisation_id, lane)
    elif wait:
        _ask_for_sweep(organisation_id, lane, countdown=min(wait, FOLLOW_UP_MAX_SECONDS))
    elif _trigger_claimable_now(organisation_id):
        _ask_for_sweep(organisation_id, lane)  # added while this sweep held the lane
    return claimed


def _due_trigger_runs(organisation_id: Any) -> list[Any]:
    with connection.cursor() as cursor:
        cursor.execute(DUE_TRIGGER_RUNS_SQL, {"org": str(organisation_id), "now": timezone.now()})
        return [row[0] for row in cursor.fetchall()]


def _trigger_claimable_now(organisation_id: Any) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIMABLE_TRIGGER_SQL, {"org": str(organisation_id), "now": timezone.now()})
        return bool(cursor.fetchone()[0])


# --- reacting to campaign transitions (delivery.receivers) ---------------------------------------------------


def runs_on_campaign_start(campaign: Campaign, *, occurrence: datetime | None) -> Run:
    run = run_create(
        campaign=campaign,
        trigger=Run.Trigger.SCHEDULE if occurrence else Run.Trigger.MANUAL,
        scheduled_for=occurrence,
    )
    _enqueue_prepare(run.pk)
    return run


# --- pause, resume, cancel: the lock order -------------------------------------------------------------------
#
# Cancel, complete, delete and pause answer at once, even while a worker is inside a slow provider call, and they
# cannot deadlock with the workers, triggered sends or each other, because every transaction that may WAIT for a
# lock takes them in one order:
#
#     campaign row  →  run row  →  (message rows, only ever with SKIP LOCKED: nobody waits for a message row)
#
# - A campaign transition locks the campaign (campaign_get_for_update), then the run rows here, and then changes
#   only the queued messages no worker holds (FOR UPDATE SKIP LOCKED). It never waits on a claimed batch.
# - Ingestion of events (delivery.triggers) locks the standing runs (id order) before it decides anything and
#   never locks a campaign: a complete or delete either waits for the batch of events and cancels what it queued,
#   or closes the run first and the batch adds nothing.
# - A worker holds its claimed message rows (taken with SKIP LOCKED, so it never waited for them) and may then wait
#   for the run row to add its counters: nobody holding a run row waits for message rows, so there is no cycle.
# - Finishing a run (run_finish_if_done) locks its campaign before the run, like a transition.
#
# The run's status is what workers obey: set first, and re-read by the worker in a fresh statement right before
# each hand-off (delivery.sending). A batch claimed before a cancel or pause is not handed over after it; its rows
# are released, still queued. (Left open is only the instant between that read and the backend call: a batch whose
# read just preceded the commit reaches the provider milliseconds later, more on a starved CPU. Closing it would
# mean waiting for the provider call, which is what the answer must not do.) A batch already with the provider is
# recorded as sent. Queued rows of a stopped run
# that were locked when the cancel ran are cancelled by whoever sees them last: the worker after recording its
# batch (under the run row's lock, so the cancel's status is visible), or run_cancel_leftovers from the pump.

STOPPED_STATUSES = (S.CANCELLED, S.COMPLETED, S.FAILED)

# Cancel a stopped run's queued messages that no transaction holds, and count them on the run in the same
# statement, so cancelled_count always equals the rows.
CANCEL_QUEUED_SQL = """
WITH cancelled AS (
    UPDATE delivery_message SET status = 'cancelled', error = %(reason)s
    WHERE id IN (SELECT id FROM delivery_message WHERE run_id = %(run)s AND status = 'queued'
                 FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
UPDATE delivery_run SET cancelled_count = cancelled_count + (SELECT count(*) FROM cancelled)
WHERE id = %(run)s
RETURNING (SELECT count(*) FROM cancelled)
"""


def run_cancel_queued(cursor: Any, run_id: Any, reason: str) -> int:
    """Cancel the queued messages of a stopped run that nobody holds; returns how many. The caller holds (or will
    take, in this statement) the run row; message rows are skipped when locked, never waited for."""
    cursor.execute(CANCEL_QUEUED_SQL, {"run": str(run_id), "reason": reason[:500]})
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def run_cancel_leftovers(run_id: Any) -> int:
    """For the pump and run finishing: queued rows of a cancelled or completed run (a worker killed mid-batch after
    the cancel rolls its rows back to queued) become cancelled. Cheap and idempotent."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT status_reason FROM delivery_run WHERE id = %s AND status = ANY(%s) FOR UPDATE",
            [str(run_id), list(STOPPED_STATUSES)],
        )
        row = cursor.fetchone()
        if row is None:
            return 0
        return run_cancel_queued(cursor, run_id, row[0] or "run stopped")


# Stopped runs of the last day that still have queued rows (a batch rolled back after the cancel, e.g. its worker
# was killed). delivery_run is small and a read commits nothing, so the pump can ask every pass.
STOPPED_WITH_QUEUED_SQL = """
SELECT r.id FROM delivery_run r
WHERE r.status = ANY(%(stopped)s) AND r.finished_at >= %(since)s
  AND EXISTS (SELECT 1 FROM delivery_message m WHERE m.run_id = r.id AND m.status = 'queued')
"""


def stopped_runs_with_queued(now: datetime) -> list[Any]:
    with connection.cursor() as cursor:
        cursor.execute(STOPPED_WITH_QUEUED_SQL, {"stopped": list(STOPPED_STATUSES), "since": now - timedelta(days=1)})
        return [row[0] for row in cursor.fetchall()]


def runs_pause(campaign: Campaign, *, actor: Actor) -> int:
    """Workers stop handing over at once: a batch claimed before the pause is released, still queued, for resume."""
    return Run.objects.filter(campaign=campaign, status__in=[S.PENDING, S.FANNING_OUT, S.READY, S.SENDING]).update(
        status=S.PAUSED, paused_at=timezone.now(), paused_by=actor.label
    )


def runs_resume(campaign: Campaign) -> int:
    resumed = 0
    for run in Run.objects.select_for_update().filter(campaign=campaign, status=S.PAUSED):
        if run.fanned_out_at is None:
            Run.objects.filter(pk=run.pk).update(status=S.PENDING, paused_at=None, paused_by="")
            _enqueue_prepare(run.pk)
        else:
            Run.objects.filter(pk=run.pk).update(status=S.SENDING, paused_at=None, paused_by="")
            run_kick(run.pk)
        resumed += 1
    return resumed


def runs_cancel(campaign: Campaign, *, reason: str = "", final_status: str = S.CANCELLED) -> int:
    """Stop every open run for good (inside the campaign's transition, which holds the campaign row). The status
    comes first, so workers hand nothing more over; the queued messages no worker holds become cancelled now, the
    ones in a claimed batch when that worker records it (see the lock order above)."""
    now = timezone.now()
    cancelled = 0
    with connection.cursor() as cursor:
        for run in Run.objects.select_for_update().filter(campaign=campaign, status__in=Run.ACTIVE_STATUSES):
            Run.objects.filter(pk=run.pk).update(status=final_status, finished_at=now, status_reason=reason[:500])
            run_cancel_queued(cursor, run.pk, reason)
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
        except AdapterError as exc:
            # The audience service (intelligent_query) failed or hung: wait for it, never fail the run at once.
            return run_wait_for_audience(run_id, exc)
        except Exception as exc:
            Run.objects.filter(pk=run_id, status__in=[S.PENDING, S.FANNING_OUT]).update(
                status=S.FAILED, status_reason=f"fan-out failed: {exc}"[:500], finished_at=timezone.now()
            )
            raise
    now = timezone.now()
    if Run.objects.filter(pk=run_id, status=S.READY).update(
        status=S.SENDING,
        started_sending_at=now,
        last_progress_at=now,
        # A run that waited for its audience service says so no more.
        status_reason=Case(When(waiting_since__isnull=False, then=Value("")), default=F("status_reason")),
        waiting_since=None,
        retry_at=None,
    ):
        with transaction.atomic():
            run_kick(run_id)
            if seeds.run_seed_copies_plan(Run.objects.select_related("campaign").get(pk=run_id)):
                _enqueue_seed_copies(run_id)
    return Run.objects.get(pk=run_id)


AUDIENCE_WAITING = "Waiting for the audience service"
MAX_AUDIENCE_RETRY_SECONDS = 300.0


def run_wait_for_audience(run_id: Any, exc: AdapterError) -> Run | None:
    """The run's audience service failed at its start: back to pending, with the reason on the campaign page, to be
    prepared again by the pump at retry_at (AUDIENCE_SERVICE_RETRY_SECONDS, doubling, at most 5 minutes apart).
    Past AUDIENCE_SERVICE_WAIT_SECONDS of waiting the run fails with the reason, and its campaign, unless another
    run is open, goes back to draft (audited), for the marketer to check and send again."""
    now = timezone.now()
    with transaction.atomic():
        # The campaign row before the run row (the lock order above): giving up moves the campaign.
        campaign_of_run = Run.objects.filter(pk=run_id).values_list("campaign_id", flat=True)
        list(Campaign.objects.select_for_update().filter(pk__in=campaign_of_run).values_list("pk", flat=True))
        run = (
            Run.objects.select_for_update(of=("self",))
            .select_related("campaign", "campaign__organisation")
            .filter(pk=run_id, status__in=[S.PENDING, S.FANNING_OUT])
            .first()
        )
        if run is None:
            return Run.objects.filter(pk=run_id).first()  # paused or cancelled meanwhile: nothing to wait for
        since = run.waiting_since or now
        waited = (now - since).total_seconds()
        if waited >= settings.AUDIENCE_SERVICE_WAIT_SECONDS:
            minutes = max(1, round(waited / 60))
            reason = f"The audience service did not answer for {minutes} min, so the run was given up: {exc}"[:500]
            Run.objects.filter(pk=run.pk).update(
                status=S.FAILED, status_reason=reason, finished_at=now, retry_at=None, last_progress_at=now
            )
            logger.warning("run %s: %s", run.pk, reason)
            campaign = run.campaign
            others = Run.objects.filter(campaign=campaign, status__in=Run.ACTIVE_STATUSES).exclude(pk=run.pk)
            if campaign.status == CampaignStatus.RUNNING and not others.exists():
                campaign_services.campaign_transition(
                    actor=system_actor(campaign.organisation, f"delivery engine: {reason[:150]}"),
                    campaign_id=campaign.pk,
                    action="back_to_draft",
                    by_engine=True,
                )
        else:
            delay = min(MAX_AUDIENCE_RETRY_SECONDS, settings.AUDIENCE_SERVICE_RETRY_SECONDS * 2**run.wait_attempts)
            Run.objects.filter(pk=run.pk).update(
                status=S.PENDING,
                status_reason=f"{AUDIENCE_WAITING}: {exc}"[:500],
                waiting_since=since,
                retry_at=now + timedelta(seconds=delay),
                wait_attempts=run.wait_attempts + 1,
            )
            logger.warning("run %s waits %.0f s for the audience service: %s", run.pk, delay, exc)
    return Run.objects.get(pk=run_id)


def run_finish_if_done(run_id: Any) -> bool:
    """Complete a sending run that has nothing queued (sent, failed, skipped or cancelled every message), and move
    its campaign on: completed, or back to scheduled for a recurring campaign's next occurrence."""
    with transaction.atomic():
        # The campaign row before the run row: the lock order of cancel and every transition (see above); locking
        # both in one join could take the run first and deadlock with a cancel holding the campaign.
        campaign_of_run = Run.objects.filter(pk=run_id).values_list("campaign_id", flat=True)
        list(Campaign.objects.select_for_update().filter(pk__in=campaign_of_run).values_list("pk", flat=True))
        run = (
            Run.objects.select_for_update(of=("self",))
            .filter(pk=run_id, status=S.SENDING)
            .select_related("campaign")
            .first()
        )
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
    if run.phase == Run.Phase.TEST and not Run.objects.filter(campaign=campaign, phase=Run.Phase.WINNER).exists():
        # The test share is out: the campaign keeps running until the auto-winner decides and sends the rest
        # (analytics.autowinner, which celery-beat looks at whether or not anything is still sending).
        return
    actor = system_actor(campaign.organisation, "delivery engine")
    # Measured from the same instant campaign_transition's await_next uses: a run that finished before its own
    # occurrence (an alarm may fire a few seconds early) must not count that occurrence as the next one.
    after = max(now, run.scheduled_for or now)
    action = "await_next" if _has_next_occurrence(campaign, after) else "complete"
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
    unprepared = Run.objects.filter(status__in=[S.PENDING, S.FANNING_OUT, S.READY])
    for run in unprepared.filter(
        Q(retry_at__isnull=True, created_at__lte=now - stall) | Q(status=S.PENDING, retry_at__lte=now)
    ):
        # A fan-out whose task was lost or whose worker died: fan-out is idempotent, so run it again, unless one
        # is in progress (it holds the run's advisory lock). A run waiting for its audience service is tried
        # again when its retry_at comes.
        if _fan_out_in_progress(run.pk):
            continue
        _enqueue_prepare_now(run.pk)
        report["prepared"] += 1
    for run_id, trigger, any_queued, any_due, busy in _sending_runs(now):
        if not any_queued:
            if trigger != Run.Trigger.EVENT and run_finish_if_done(run_id):
                report["finished"] += 1
        elif any_due and not busy:
            # Due now and no task on it: a retry's backoff is over, a send window opened, a deferred or delayed
            # send came due — or a task was lost. Asking is idempotent (a pending ask is not repeated).
            with transaction.atomic():
                run_kick(run_id)
            report["kicked"] += 1
    for run_id in stopped_runs_with_queued(now):
        report["leftovers_cancelled"] = report.get("leftovers_cancelled", 0) + run_cancel_leftovers(run_id)
    for run_id in seeds.due_seed_copy_runs(now=now):
        with transaction.atomic():
            _enqueue_seed_copies(run_id)
        report["seed_copies"] += 1
    return report


# Every sending run in one statement: whether it has anything queued, anything due now, and whether a send task
# holds one of its lanes (advisory_lock: the run's lanes, or for a standing trigger run its organisation's sweep).
SENDING_RUNS_SQL = """
SELECT r.id, r.trigger,
       EXISTS (SELECT 1 FROM delivery_message m WHERE m.run_id = r.id AND m.status = 'queued'),
       EXISTS (SELECT 1 FROM delivery_message m WHERE m.run_id = r.id AND m.status = 'queued'
               AND m.due_at <= %(now)s),
       EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.objsubid = 2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid = hashtext(CASE WHEN r.trigger = 'event'
                                             THEN 'trigger-sweep:' || r.organisation_id::text
                                             ELSE r.id::text END)::oid)
FROM delivery_run r
WHERE r.status = 'sending'
"""


def _sending_runs(now: datetime) -> list[tuple[Any, str, bool, bool, bool]]:
    with connection.cursor() as cursor:
        cursor.execute(SENDING_RUNS_SQL, {"now": now})
        return cursor.fetchall()


def _enqueue_prepare_now(run_id: Any) -> None:
    from delivery.tasks import run_prepare_task

    task_enqueue(run_prepare_task, str(run_id))


def _fan_out_in_progress(run_id: Any) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext('run-fan-out'), hashtext(%s))", [str(run_id)])
        return not cursor.fetchone()[0]
