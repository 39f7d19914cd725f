"""Celery tasks: thin, take ids, idempotent. Redis carries them; PostgreSQL decides what they do."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from delivery import runs, seeds, sending


@shared_task(name="delivery.tasks.run_prepare_task")
def run_prepare_task(run_id: str) -> str | None:
    run = runs.run_prepare(run_id)
    return run.status if run else None


@shared_task(name="delivery.tasks.run_send_task")
def run_send_task(run_id: str) -> int:
    """Send a run's due messages for a while, then hand over to a fresh task (other runs get their turn and no
    task runs for long). When nothing is left, finish the run."""
    cache.delete(runs.kick_marker(run_id))  # a send task is running now: later additions ask for another
    claimed, more = sending.run_send_for(run_id, seconds=settings.DELIVERY_TASK_SECONDS)
    if more:
        run_send_task.delay(run_id)
    else:
        runs.run_finish_if_done(run_id)
    return claimed


@shared_task(name="delivery.tasks.campaign_schedule_fire_task")
def campaign_schedule_fire_task(campaign_id: str) -> str | None:
    run = runs.campaign_schedule_fire(campaign_id)
    return str(run.pk) if run else None


@shared_task(name="delivery.tasks.delivery_pump_task")
def delivery_pump_task() -> dict[str, Any]:
    return runs.delivery_pump()


@shared_task(name="delivery.tasks.run_seed_copies_task")
def run_seed_copies_task(run_id: str) -> int:
    return seeds.run_seed_copies_send(run_id)


@shared_task(name="delivery.tasks.complaint_rate_check_task")
def complaint_rate_check_task() -> dict[str, int]:
    """celery-beat: the complaint-rate guard for every organisation that sent email in the last day."""
    from collections import Counter
    from datetime import timedelta

    from django.utils import timezone

    from audiences.models import Organisation
    from delivery.complaints import complaint_rate_check

    since = timezone.now() - timedelta(hours=24)
    active = Organisation.objects.filter(runs__last_progress_at__gte=since).distinct()
    return dict(Counter(complaint_rate_check(organisation) for organisation in active))
