"""The task_service adapter: the alarm clock that starts scheduled campaigns.

- Embedded default: django-celery-beat. Every campaign waiting for an occurrence has one one-off clocked
  PeriodicTask named after it (`campaign-schedule:<id>`), with a ClockedSchedule row of its own for that occurrence
  — never shared, so any number of campaigns (of any organisations) can wait for the same instant, and removing a
  campaign's alarm removes both rows. A recurring campaign is an alarm for its next occurrence only, set again each
  time it goes back to waiting: celery-beat never evaluates cron (its crontab reads the day fields differently from
  standard cron), campaigns.scheduling alone decides when each occurrence is. The rows are written in the campaign's
  transaction (they commit or roll back with its status); beat is told its schedule changed once that commits.
- HTTP: TASK_SERVICE_URL. `PUT {base}/tasks/{key}` registers (or replaces) a job with its schedule (always "once",
  at the next occurrence, for the same reason) and a callback (POST to our signed /hooks/task-service/… URL);
  `DELETE {base}/tasks/{key}` removes it. The call is made after the campaign's transaction commits — never while
  its row is locked, where a slow task_service would stall every writer of that campaign — and it sends the state
  committed by then, one call at a time per campaign, so callbacks running out of order still end on the last state.

Whatever the alarm, the campaign's scheduled_at column is the truth: the delivery pump starts any scheduled
campaign whose time has passed, so a missed alarm costs seconds, not a send.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, Protocol

import httpx
from django.conf import settings
from django.core import signing
from django.db import connection, transaction
from django.urls import reverse

from audiences.adapters import AdapterError
from campaigns.models import Campaign, CampaignStatus

logger = logging.getLogger(__name__)

FIRE_TASK = "delivery.tasks.campaign_schedule_fire_task"
CALLBACK_SALT = "task-service-callback"
ALARM_PREFIX = "campaign-schedule:"
# pg_advisory_lock(class, key): the class keeps these keys apart from other advisory locks of the application.
ALARM_LOCK_CLASS = 8017


def alarm_key(campaign_id: Any) -> str:
    return f"{ALARM_PREFIX}{campaign_id}"


def needs_alarm(campaign: Campaign) -> bool:
    """A campaign waits for an alarm only while it is scheduled (for a one-time send or its next occurrence)."""
    return campaign.status == CampaignStatus.SCHEDULED and campaign.deleted_at is None and bool(campaign.scheduled_at)


class TaskService(Protocol):
    def register(self, campaign: Campaign) -> None: ...

    def remove(self, campaign_id: Any) -> None: ...

    def follow(self, campaign: Campaign) -> None: ...


def _beat_schedule_changed() -> None:
    """Tell celery-beat's database scheduler to reload. Its marker is one row every schedule change updates, so
    it is touched after commit in a statement of its own, never held locked by a campaign's transaction."""
    from django_celery_beat.models import PeriodicTasks

    PeriodicTasks.update_changed()


class CeleryBeatTaskService:
    embedded = True

    def register(self, campaign: Campaign) -> None:
        from django_celery_beat.models import ClockedSchedule, PeriodicTask

        with transaction.atomic():
            self._delete_alarms([campaign.pk])
            # bulk_create, not save(): save() touches beat's change marker inside this transaction (see above).
            [clock] = ClockedSchedule.objects.bulk_create([ClockedSchedule(clocked_time=campaign.scheduled_at)])
            PeriodicTask.objects.bulk_create(
                [
                    PeriodicTask(
                        name=alarm_key(campaign.pk),
                        task=FIRE_TASK,
                        args=json.dumps([str(campaign.pk)]),
                        clocked=clock,
                        one_off=True,
                        enabled=True,
                        description=f"Starts campaign {campaign.name[:150]!r}",
                    )
                ]
            )
            transaction.on_commit(_beat_schedule_changed, robust=True)

    def remove(self, campaign_id: Any) -> None:
        with transaction.atomic():
            if self._delete_alarms([campaign_id]):
                transaction.on_commit(_beat_schedule_changed, robust=True)

    def follow(self, campaign: Campaign) -> None:
        # Inside the campaign's transaction, which holds its row: the alarm commits (or not) with the status.
        if needs_alarm(campaign):
            self.register(campaign)
        else:
            self.remove(campaign.pk)

    @staticmethod
    def _delete_alarms(campaign_ids: Iterable[Any]) -> int:
        """Delete the campaigns' alarms with the schedule rows no other task uses (rows left shared by older
        versions included). Plain SQL: the ORM's delete would touch beat's change marker per row."""
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM django_celery_beat_periodictask WHERE name = ANY(%s) RETURNING clocked_id, crontab_id",
                [[alarm_key(pk) for pk in campaign_ids]],
            )
            gone = cursor.fetchall()
            _delete_unused_schedules(
                cursor,
                clocked=[c for c, _ in gone if c is not None],
                crontab=[c for _, c in gone if c is not None],
            )
        return len(gone)


def _delete_unused_schedules(cursor: Any, *, clocked: list[int] | None, crontab: list[int] | None) -> None:
    """Delete these schedule rows (None: all of them) unless a task still uses them."""
    for table, column, ids in (("clockedschedule", "clocked_id", clocked), ("crontabschedule", "crontab_id", crontab)):
        if ids is not None and not ids:
            continue
        cursor.execute(
            f"DELETE FROM django_celery_beat_{table} s"  # noqa: S608 - table and column names are constants
            f" WHERE (%s::bigint[] IS NULL OR s.id = ANY(%s::bigint[]))"
            f" AND NOT EXISTS (SELECT 1 FROM django_celery_beat_periodictask t WHERE t.{column} = s.id)",
            [ids, ids],
        )


def beat_alarms_prune() -> int:
    """Remove the alarms of campaigns that no longer wait for one (and any missing campaign's), and the clocked
    schedules no task uses: what a crash, a cascade or an older version may have left. Returns tasks removed."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM django_celery_beat_periodictask t WHERE t.name LIKE %s AND NOT EXISTS ("
            " SELECT 1 FROM campaigns_campaign c WHERE t.name = %s || c.id::text"
            " AND c.status = %s AND c.deleted_at IS NULL AND c.scheduled_at IS NOT NULL)",
            [ALARM_PREFIX + "%", ALARM_PREFIX, CampaignStatus.SCHEDULED],
        )
        removed = cursor.rowcount
        _delete_unused_schedules(cursor, clocked=None, crontab=[])
        if removed:
            transaction.on_commit(_beat_schedule_changed, robust=True)
    return removed


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
        callback = settings.SITE_URL.rstrip("/") + reverse("task-service-callback", args=[callback_token(campaign.pk)])
        key = alarm_key(campaign.pk)
        self._call(
            "PUT",
            f"/tasks/{key}",
            json={
                "key": key,
                "schedule": {"type": "once", "run_at": campaign.scheduled_at.isoformat()},
                "callback": {"url": callback, "method": "POST"},
            },
        )

    def remove(self, campaign_id: Any) -> None:
        self._call("DELETE", f"/tasks/{alarm_key(campaign_id)}")

    def follow(self, campaign: Campaign) -> None:
        campaign_id = campaign.pk
        transaction.on_commit(lambda: self.sync(campaign_id), robust=True)

    def sync(self, campaign_id: Any) -> None:
        """Register or remove the campaign's job to match its committed state. Calls for one campaign take turns
        (a session advisory lock, not a row lock: nothing the campaign's writers wait for), each reading the state
        once it has its turn, so the last call to run sends the last committed state."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [ALARM_LOCK_CLASS, str(campaign_id)])
            try:
                campaign = Campaign.objects.filter(pk=campaign_id).first()
                try:
                    if campaign is not None and needs_alarm(campaign):
                        self.register(campaign)
                    else:
                        self.remove(campaign_id)
                except AdapterError as exc:
                    # The pump starts due campaigns from scheduled_at anyway; the alarm only makes it punctual, and
                    # a stale one is harmless: firing checks the campaign's status and time first.
                    logger.warning("task_service could not follow campaign %s: %s", campaign_id, exc)
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [ALARM_LOCK_CLASS, str(campaign_id)])


def task_service_is_external() -> bool:
    return bool(settings.TASK_SERVICE_URL)


def task_service() -> TaskService:
    if task_service_is_external():
        return HttpTaskService(
            settings.TASK_SERVICE_URL, settings.TASK_SERVICE_TOKEN, timeout=settings.EXTERNAL_HTTP_TIMEOUT
        )
    return CeleryBeatTaskService()
