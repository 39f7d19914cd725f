"""Celery tasks: thin, idempotent."""

from __future__ import annotations

from celery import shared_task

from analytics.services import metrics_compact


@shared_task(name="analytics.tasks.metrics_compact_task")
def metrics_compact_task() -> int:
    return metrics_compact()
