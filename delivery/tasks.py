"""Celery tasks: thin, take ids, idempotent. Redis carries them; PostgreSQL decides what they do."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from delivery import runs, sandbox, seeds


@shared_task(name="delivery.tasks.run_prepare_task")
def run_prepare_task(run_id: str) -> str | None:
    run = runs.run_prepare(run_id)
    return run.status if run else None


@shared_task(name="delivery.tasks.run_send_task")
def run_send_task(run_id: str, lane: int = 0) -> int:
    """Send a run's due messages for a while on one lane, then hand over, come back when the throttle allows, or
    end (runs.run_send_spell)."""
    return runs.run_send_spell(run_id, lane=lane)


@shared_task(name="delivery.tasks.trigger_sweep_task")
def trigger_sweep_task(organisation_id: str, lane: int = 0) -> int:
    """Send what is due in an organisation's triggered campaigns' standing runs (runs.trigger_sweep)."""
    return runs.trigger_sweep(organisation_id, lane=lane)


@shared_task(name="delivery.tasks.campaign_schedule_fire_task")
def campaign_schedule_fire_task(campaign_id: str) -> str | None:
    run = runs.campaign_schedule_fire(campaign_id)
    return str(run.pk) if run else None


@shared_task(name="delivery.tasks.delivery_pump_task")
def delivery_pump_task() -> dict[str, Any]:
    return runs.delivery_pump()


@shared_task(name="delivery.tasks.scheduled_engagement_record_task")
def scheduled_engagement_record_task() -> int:
    """celery-beat: record the engagement whose time has come (delivery.sandbox)."""
    return sandbox.scheduled_engagement_record_due()


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
