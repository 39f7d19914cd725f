"""Who made a change, for django-simple-history.

simple_history only knows Django users, but half our writes come from API keys. Each historical row also stores
a readable label of the actor ("alice@example.com" or "API key 'CI' (cs_ab12…)"), taken from the service call
that made the change rather than from the request, so Celery tasks and management commands are covered too.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.dispatch import receiver
from simple_history.signals import pre_create_historical_record


class HistoryActorMixin(models.Model):
    history_actor = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        abstract = True


@receiver(pre_create_historical_record)
def _label_history_actor(sender: Any, instance: models.Model, history_instance: Any, **kwargs: Any) -> None:
    if hasattr(history_instance, "history_actor"):
        history_instance.history_actor = getattr(instance, "_history_actor_label", "")[:200]
