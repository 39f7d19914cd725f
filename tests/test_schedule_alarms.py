"""Schedule alarms as the django_celery_beat tables and an HTTP task_service see them: any number of campaigns (of
any organisations) at one instant, each campaign's alarm set, moved and removed with its status (unschedule,
reschedule, send now, cancel, delete, complete, a recurring campaign's next occurrence), nothing left behind, old
shared rows cleaned by the migration; the HTTP call made after commit, with the campaign row free; and the first run
of a recurring schedule at least 5 minutes ahead."""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from django.apps import apps
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask

from campaigns import services
from campaigns.models import Campaign
from delivery import runs
from delivery.models import Run
from delivery.task_service import alarm_key
from tests.factories import CampaignFactory, console_client, issue_key

FIRE_TASK = "delivery.tasks.campaign_schedule_fire_task"


def _beat_rows() -> dict[str, Any]:
    """What celery-beat's tables hold for campaigns: alarm name → its clocked time, and the schedule rows."""
    alarms = {
        task.name: task.clocked.clocked_time if task.clocked else None
        for task in PeriodicTask.objects.filter(task=FIRE_TASK).select_related("clocked")
    }
    return {
        "alarms": alarms,
        "clocked": sorted(ClockedSchedule.objects.values_list("clocked_time", flat=True)),
        "crontab": CrontabSchedule.objects.count(),
    }


def _expect(alarms: dict[Campaign, datetime]) -> dict[str, Any]:
    return {
        "alarms": {alarm_key(c.pk): at for c, at in alarms.items()},
        "clocked": sorted(alarms.values()),
        "crontab": 0,
    }


def _instant(hours: float = 3) -> datetime:
    return (timezone.now() + timedelta(hours=hours)).replace(second=0, microsecond=0)


# --- many campaigns, one instant -----------------------------------------------------------------------------


def test_twelve_campaigns_of_two_organisations_scheduled_for_one_instant_at_once(
    live_server, transactional_db, teammate, outsider
):
    at = _instant()
    keys = {
        teammate.organisation.pk: issue_key(teammate.organisation),
        outsider.organisation.pk: issue_key(outsider.organisation),
    }
    campaigns = [CampaignFactory(organisation=teammate.organisation) for _ in range(6)] + [
        CampaignFactory(organisation=outsider.organisation) for _ in range(6)
    ]
    start = threading.Barrier(len(campaigns))

    def schedule(campaign: Campaign) -> httpx.Response:
        headers = {"Authorization": f"Bearer {keys[campaign.organisation_id]}"}
        with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as client:
            start.wait()
            return client.post(f"/api/v1/campaigns/{campaign.pk}/schedule/", json={"scheduled_at": at.isoformat()})

    with ThreadPoolExecutor(max_workers=len(campaigns)) as pool:
        responses = list(pool.map(schedule, campaigns))

    assert [r.status_code for r in responses] == [200] * 12, [r.text[:300] for r in responses]
    assert _beat_rows() == _expect(dict.fromkeys(campaigns, at))
    # A thirteenth for the same instant, later: the instant is not spoiled for anyone.
    late = CampaignFactory(organisation=outsider.organisation)
    response = outsider.api.post(f"/api/v1/campaigns/{late.pk}/schedule/", {"scheduled_at": at.isoformat()})
    assert response.status_code == 200, response.data
    assert _beat_rows() == _expect(dict.fromkeys([*campaigns, late], at))
    # Unscheduling one removes its alarm only.
    assert teammate.api.post(f"/api/v1/campaigns/{campaigns[0].pk}/unschedule/").status_code == 200
    assert _beat_rows() == _expect(dict.fromkeys([*campaigns[1:], late], at))


# --- the alarm follows the campaign --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_alarm_follows_schedule_reschedule_unschedule_send_now_cancel_and_delete(
    teammate, django_capture_on_commit_callbacks
):
    api = teammate.api
    first, second, third = (CampaignFactory(organisation=teammate.organisation) for _ in range(3))
    at, later = _instant(3), _instant(27)
    for campaign in (first, second, third):
        assert (
            api.post(f"/api/v1/campaigns/{campaign.pk}/schedule/", {"scheduled_at": at.isoformat()}).status_code == 200
        )
    assert _beat_rows() == _expect({first: at, second: at, third: at})

    for _cycle in range(3):
        assert (
            api.post(f"/api/v1/campaigns/{first.pk}/reschedule/", {"scheduled_at": later.isoformat()}).status_code
            == 200
        )
        assert _beat_rows() == _expect({first: later, second: at, third: at})
        assert api.post(f"/api/v1/campaigns/{first.pk}/unschedule/").status_code == 200
        assert _beat_rows() == _expect({second: at, third: at})
        assert api.post(f"/api/v1/campaigns/{first.pk}/schedule/", {"scheduled_at": at.isoformat()}).status_code == 200
        assert _beat_rows() == _expect({first: at, second: at, third: at})

    with django_capture_on_commit_callbacks(execute=False):  # no workers here: the run just starts
        assert api.post(f"/api/v1/campaigns/{first.pk}/send-now/").status_code == 200
    assert _beat_rows() == _expect({second: at, third: at})
    assert api.post(f"/api/v1/campaigns/{second.pk}/cancel/").status_code == 200
    assert _beat_rows() == _expect({third: at})
    assert api.delete(f"/api/v1/campaigns/{third.pk}/").status_code == 200  # a soft delete, restorable
    assert Campaign.objects.get(pk=third.pk).status == "cancelled"
    assert _beat_rows() == _expect({})


@pytest.mark.django_db
def test_a_recurring_campaign_has_an_alarm_for_each_next_occurrence_until_it_completes(
    teammate, django_capture_on_commit_callbacks
):
    campaign = CampaignFactory(organisation=teammate.organisation)
    now = timezone.now()
    ends = now + timedelta(days=2, hours=12)
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/schedule/",
        {"recurrence": "daily", "time": (now + timedelta(hours=1)).strftime("%H:%M"), "timezone": "UTC"},
        format="json",
    )
    assert response.status_code == 200, response.data
    campaign.refresh_from_db()
    campaign.recurrence_ends_at = ends
    campaign.save(update_fields=["recurrence_ends_at"])
    first = campaign.scheduled_at
    assert _beat_rows() == _expect({campaign: first})
    for day in range(3):
        occurrence = first + timedelta(days=day)
        with django_capture_on_commit_callbacks(execute=False):
            run = runs.campaign_schedule_fire(campaign.pk, now=occurrence)
            assert run is not None and run.scheduled_for == occurrence
            assert _beat_rows() == _expect({})  # running: nothing to wake
            runs.run_prepare(run.pk)
        runs.run_finish_if_done(run.pk)  # nobody in the audience: the run finishes at once
        campaign.refresh_from_db()
        if occurrence + timedelta(days=1) <= ends:
            assert campaign.status == "scheduled" and campaign.scheduled_at == occurrence + timedelta(days=1)
            assert _beat_rows() == _expect({campaign: occurrence + timedelta(days=1)})
    assert campaign.status == "completed"
    assert Run.objects.filter(campaign=campaign).count() == 3
    assert _beat_rows() == _expect({})


@pytest.mark.django_db
def test_purging_prunes_alarms_left_behind_and_unused_clocks(teammate):
    waiting = CampaignFactory(organisation=teammate.organisation)
    at = _instant()
    assert (
        teammate.api.post(f"/api/v1/campaigns/{waiting.pk}/schedule/", {"scheduled_at": at.isoformat()}).status_code
        == 200
    )
    # What a crash or an older version could leave: an alarm of a cancelled campaign, an alarm of a campaign that no
    # longer exists, and a clock no task uses.
    cancelled = CampaignFactory(organisation=teammate.organisation, status="cancelled")
    for name in (alarm_key(cancelled.pk), alarm_key("7b0c8d5e-0000-4000-8000-000000000000")):
        PeriodicTask.objects.create(
            name=name, task=FIRE_TASK, clocked=ClockedSchedule.objects.create(clocked_time=at), one_off=True
        )
    ClockedSchedule.objects.create(clocked_time=at)
    deleted = CampaignFactory(organisation=teammate.organisation, deleted_at=timezone.now() - timedelta(days=60))
    assert services.campaigns_purge_deleted() == 1
    assert not Campaign.objects.filter(pk=deleted.pk).exists()
    assert _beat_rows() == _expect({waiting: at})


@pytest.mark.django_db
def test_the_migration_replaces_shared_and_crontab_alarms_with_one_clock_per_waiting_campaign(teammate):
    at, later = _instant(3), _instant(30)
    one_time = CampaignFactory(organisation=teammate.organisation, status="scheduled", scheduled_at=at)
    twin = CampaignFactory(organisation=teammate.organisation, status="scheduled", scheduled_at=at)
    recurring = CampaignFactory(
        organisation=teammate.organisation,
        status="scheduled",
        scheduled_at=later,
        recurrence="daily",
        cron_expression=f"{later.minute} {later.hour} * * *",
    )
    gone = CampaignFactory(organisation=teammate.organisation, status="completed")
    # The old code's rows: two clocks for one instant shared by two campaigns, a crontab alarm, a stale alarm.
    shared = ClockedSchedule.objects.create(clocked_time=at)
    ClockedSchedule.objects.create(clocked_time=at)
    for campaign in (one_time, twin, gone):
        PeriodicTask.objects.create(name=alarm_key(campaign.pk), task=FIRE_TASK, clocked=shared, one_off=True)
    cron = CrontabSchedule.objects.create(minute=str(later.minute), hour=str(later.hour), timezone="UTC")
    PeriodicTask.objects.create(name=alarm_key(recurring.pk), task=FIRE_TASK, crontab=cron)
    # celery-beat's own tasks and their schedules are not touched.
    PeriodicTask.objects.create(name="other", task="x.y", crontab=CrontabSchedule.objects.create(minute="5"))

    migration = importlib.import_module("delivery.migrations.0012_schedule_alarms")
    migration.rebuild_alarms(apps, connection.schema_editor())

    assert _beat_rows() == {
        "alarms": {alarm_key(one_time.pk): at, alarm_key(twin.pk): at, alarm_key(recurring.pk): later},
        "clocked": [at, at, later],
        "crontab": 1,
    }
    assert PeriodicTask.objects.get(name="other").crontab.minute == "5"
    alarm = PeriodicTask.objects.get(name=alarm_key(recurring.pk))
    assert alarm.one_off and alarm.enabled and json.loads(alarm.args) == [str(recurring.pk)]


# --- the HTTP task_service -----------------------------------------------------------------------------------


class RecordingTaskService(BaseHTTPRequestHandler):
    """Records every call with what the database showed at that moment: whether the campaign's row could be
    locked (FOR UPDATE NOWAIT from another connection) and the campaign's committed status and time."""

    calls: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _record(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        campaign_id = self.path.rsplit(":", 1)[1]
        seen: dict[str, Any] = {"method": method, "body": body}
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT status, scheduled_at FROM campaigns_campaign WHERE id = %s FOR UPDATE NOWAIT",
                    [campaign_id],
                )
                seen["status"], seen["scheduled_at"] = cursor.fetchone()
                seen["row_free"] = True
        except DatabaseError:
            seen["row_free"] = False
        finally:
            connections.close_all()
        RecordingTaskService.calls.append(seen)
        self.send_response(200 if method == "PUT" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_PUT(self) -> None:
        self._record("PUT")

    def do_DELETE(self) -> None:
        self._record("DELETE")


@pytest.fixture
def recording_task_service(settings) -> Iterator[list[dict[str, Any]]]:
    RecordingTaskService.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingTaskService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.TASK_SERVICE_URL = f"http://127.0.0.1:{server.server_address[1]}"
    yield RecordingTaskService.calls
    server.shutdown()


def test_the_http_task_service_is_called_after_commit_with_the_campaign_row_free(
    transactional_db, teammate, recording_task_service
):
    calls = recording_task_service
    campaign = CampaignFactory(organisation=teammate.organisation)
    at, later = _instant(3), _instant(27)
    api = teammate.api
    assert api.post(f"/api/v1/campaigns/{campaign.pk}/schedule/", {"scheduled_at": at.isoformat()}).status_code == 200
    assert (
        api.post(f"/api/v1/campaigns/{campaign.pk}/reschedule/", {"scheduled_at": later.isoformat()}).status_code == 200
    )
    assert api.post(f"/api/v1/campaigns/{campaign.pk}/unschedule/").status_code == 200
    assert api.post(f"/api/v1/campaigns/{campaign.pk}/schedule/", {"scheduled_at": at.isoformat()}).status_code == 200
    assert api.post(f"/api/v1/campaigns/{campaign.pk}/cancel/").status_code == 200

    assert [(c["method"], c["body"] and c["body"]["schedule"]) for c in calls] == [
        ("PUT", {"type": "once", "run_at": at.isoformat()}),
        ("PUT", {"type": "once", "run_at": later.isoformat()}),
        ("DELETE", None),
        ("PUT", {"type": "once", "run_at": at.isoformat()}),
        ("DELETE", None),
    ]
    # Every call came after the change had committed (the service saw it), and none while the row was locked.
    assert [c["row_free"] for c in calls] == [True] * 5
    assert [c["status"] for c in calls] == ["scheduled", "scheduled", "draft", "scheduled", "cancelled"]
    assert [c["scheduled_at"] for c in calls[:2]] == [at, later]
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()  # the external service owns the alarms


def test_a_rolled_back_schedule_never_reaches_the_http_task_service(transactional_db, teammate, recording_task_service):
    campaign = CampaignFactory(organisation=teammate.organisation)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.campaign_transition(
            actor=teammate.actor, campaign_id=campaign.pk, action="schedule", scheduled_at=_instant()
        )
        raise RuntimeError("the caller's transaction fails after scheduling")
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"
    assert recording_task_service == []


# --- the first run of a recurring schedule -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_recurring_schedule_whose_first_run_is_under_five_minutes_away_is_refused(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    now = datetime.now(UTC)
    soon = (now + timedelta(minutes=2)).replace(second=0, microsecond=0)  # 60-120 s ahead
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/schedule/",
        {"recurrence": "daily", "time": soon.strftime("%H:%M"), "timezone": "UTC"},
        format="json",
    )
    assert response.status_code == 400 and list(response.data) == ["time"], response.data
    assert "at least 5 minutes in the future" in response.data["time"][0]
    cron = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/schedule/",
        {"recurrence": "cron", "cron": f"{soon.minute} {soon.hour} * * *", "timezone": "UTC"},
        format="json",
    )
    assert cron.status_code == 400 and list(cron.data) == ["cron"], cron.data
    page = console_client(teammate).post(
        f"/campaigns/{campaign.pk}/schedule/",
        {"recurrence": "daily", "time": soon.strftime("%H:%M"), "timezone": "UTC"},
        follow=True,
    )
    assert "at least 5 minutes in the future" in page.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()
    # Ten minutes ahead is accepted, for today (or tomorrow just before midnight), not a day later.
    fine = (now + timedelta(minutes=10)).replace(second=0, microsecond=0)
    accepted = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/schedule/",
        {"recurrence": "daily", "time": fine.strftime("%H:%M"), "timezone": "UTC"},
        format="json",
    )
    assert accepted.status_code == 200, accepted.data
    assert Campaign.objects.get(pk=campaign.pk).scheduled_at == fine


@pytest.mark.django_db
def test_a_start_the_api_cannot_read_is_a_field_error(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    data = {"recurrence": "cron", "cron": "0 9 * * 1", "starts_at": "99999-01-01T00:00"}
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/schedule/", data, format="json")
    assert response.status_code == 400 and list(response.data) == ["starts_at"], response.data


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"scheduled_at": "2030-01-01T09:00\x00"}, "scheduled_at"),
        ({"scheduled_at": "9" * 5000}, "scheduled_at"),
        ({"scheduled_at": "2030-01-01T09:00", "timezone": "Europe/London\x00"}, "timezone"),
        ({"scheduled_at": "2030-01-01T09:00", "timezone": "x" * 5000}, "timezone"),
        ({"recurrence": "daily", "time": "09:00\x00"}, "time"),
        ({"recurrence": "monthly", "time": "09:00", "day_of_month": "9" * 5000}, "day_of_month"),
        ({"recurrence": "daily", "time": "09:00", "ends_at": "2030-01-01\x00"}, "ends_at"),
    ],
)
def test_bad_schedule_input_is_a_field_error_in_the_api_and_the_console(teammate, data, field):
    campaign = CampaignFactory(organisation=teammate.organisation)
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/schedule/", data, format="json")
    assert response.status_code == 400 and field in response.data, response.data
    page = console_client(teammate).post(f"/campaigns/{campaign.pk}/schedule/", data, follow=True)
    assert page.status_code == 200
    assert f"{field.replace('_', ' ')}: " in page.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()
