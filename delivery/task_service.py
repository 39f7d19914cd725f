"""The task_service adapter: the alarm clock that starts scheduled campaigns.

- Embedded default: django-celery-beat. A one-time schedule is a one-off clocked PeriodicTask; a recurring one a
  crontab PeriodicTask in the campaign's timezone (celery-beat evaluates it in wall-clock time there). The alarm
  calls delivery.tasks.campaign_schedule_fire_task, which starts the run for the due occurrence once.
- HTTP: TASK_SERVICE_URL. `PUT {base}/tasks/{key}` registers (or replaces) a job with its schedule and a callback
  (POST to our signed /hooks/task-service/… URL); `DELETE {base}/tasks/{key}` removes it.

Whatever the alarm, the campaign's scheduled_at column is the truth: the delivery pump starts any scheduled
campaign whose time has passed, so a missed alarm costs seconds, not a send.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import httpx
from django.conf import settings
from django.core import signing
from django.urls import reverse

from audiences.adapters import AdapterError
from campaigns.models import Campaign, Recurrence
from campaigns.scheduling import campaign_timezone

FIRE_TASK = "delivery.tasks.campaign_schedule_fire_task"
CALLBACK_SALT = "task-service-callback"


def alarm_key(campaign_id: Any) -> str:
    return f"campaign-schedule:{campaign_id}"


class TaskService(Protocol):
    def register(self, campaign: Campaign) -> None: ...

    def remove(self, campaign_id: Any) -> None: ...


class CeleryBeatTaskService:
    embedded = True

    def register(self, campaign: Campaign) -> None:
        from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask

        key = alarm_key(campaign.pk)
        fields: dict[str, Any] = {
            "task": FIRE_TASK,
            "args": json.dumps([str(campaign.pk)]),
            "enabled": True,
            "description": f"Starts campaign {campaign.name!r}",
            "clocked": None,
            "crontab": None,
            "interval": None,
            "solar": None,
            "one_off": False,
            "expires": None,
        }
        if campaign.recurrence == Recurrence.NONE:
            fields["clocked"], _ = ClockedSchedule.objects.get_or_create(clocked_time=campaign.scheduled_at)
            fields["one_off"] = True
        else:
            minute, hour, day_of_month, month, day_of_week = campaign.cron_expression.split()
            fields["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month,
                day_of_week=day_of_week,
                timezone=campaign_timezone(campaign),
            )
            fields["expires"] = campaign.recurrence_ends_at
        PeriodicTask.objects.update_or_create(name=key, defaults=fields)

    def remove(self, campaign_id: Any) -> None:
        from django_celery_beat.models import PeriodicTask

        PeriodicTask.objects.filter(name=alarm_key(campaign_id)).delete()


def callback_token(campaign_id: Any) -> str:
    return signing.dumps({"campaign": str(campaign_id)}, salt=CALLBACK_SALT)


def read_callback_token(token: str) -> str:
    """The campaign id in a callback token; raises signing.BadSignature for anything we did not sign."""
    return str(signing.loads(token, salt=CALLBACK_SALT)["campaign"])


class HttpTaskService:
    embedded = False

    def __init__(self, base_url: str, token: str = "", timeout: float = 5.0, client: httpx.Client | None = None):
        self.client = client or httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout),
            headers={"Authorization": f"Bearer {token}"} if token else {},
            follow_redirects=False,
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AdapterError(f"task_service unreachable: {exc}") from exc
        if response.status_code >= 300 and not (method == "DELETE" and response.status_code == 404):
            raise AdapterError(f"task_service answered {response.status_code}: {response.text[:200]}")
        return response

    def register(self, campaign: Campaign) -> None:
        if campaign.recurrence == Recurrence.NONE:
            schedule: dict[str, Any] = {"type": "once", "run_at": campaign.scheduled_at.isoformat()}
        else:
            schedule = {
                "type": "cron",
                "cron": campaign.cron_expression,
                "timezone": campaign_timezone(campaign),
                "ends_at": campaign.recurrence_ends_at.isoformat() if campaign.recurrence_ends_at else None,
            }
        callback = settings.SITE_URL.rstrip("/") + reverse("task-service-callback", args=[callback_token(campaign.pk)])
        key = alarm_key(campaign.pk)
        self._call(
            "PUT",
            f"/tasks/{key}",
            json={"key": key, "schedule": schedule, "callback": {"url": callback, "method": "POST"}},
        )

    def remove(self, campaign_id: Any) -> None:
        self._call("DELETE", f"/tasks/{alarm_key(campaign_id)}")


def task_service() -> TaskService:
    if settings.TASK_SERVICE_URL:
        return HttpTaskService(
            settings.TASK_SERVICE_URL, settings.TASK_SERVICE_TOKEN, timeout=settings.EXTERNAL_HTTP_TIMEOUT
        )
    return CeleryBeatTaskService()
