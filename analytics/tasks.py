"""Celery tasks: thin, idempotent."""

from __future__ import annotations

from celery import shared_task

from analytics import autowinner
from analytics.services import metrics_compact


@shared_task(name="analytics.tasks.metrics_compact_task")
def metrics_compact_task() -> int:
    return metrics_compact()


@shared_task(name="analytics.tasks.auto_winner_evaluate_task")
def auto_winner_evaluate_task() -> int:
    """One look at every running campaign with the auto-winner on; returns how many chose a winner."""
    return sum(autowinner.auto_winner_evaluate(pk).decided for pk in autowinner.auto_winner_candidates())
