"""Schedules: one-time and recurring in a timezone (DST-correct), the celery-beat alarm behind the task_service
adapter, the HTTP task_service client against a local server, firing exactly once per occurrence, and the pump."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from campaigns.models import Campaign
from campaigns.scheduling import next_occurrence, occurrences, schedule_from_input
from config.celery import app as celery_app
from delivery import runs
from delivery.models import Run
from delivery.task_service import HttpTaskService, alarm_key, callback_token
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _in_ten_minutes() -> str:
    return (timezone.now() + timedelta(minutes=10)).isoformat()


# --- the cron evaluator -------------------------------------------------------------------------------------


def test_daily_at_nine_stays_at_nine_local_across_both_dst_changes():
    spring = occurrences("0 9 * * *", "Europe/London", utc(2026, 3, 27, 12), 3)
    assert spring == [utc(2026, 3, 28, 9), utc(2026, 3, 29, 8), utc(2026, 3, 30, 8)]  # GMT, then BST
    autumn = occurrences("0 9 * * *", "America/New_York", utc(2026, 10, 31, 20), 3)
    assert autumn == [utc(2026, 11, 1, 14), utc(2026, 11, 2, 14), utc(2026, 11, 3, 14)]  # EST after 1 Nov
    assert occurrences("0 9 * * *", "America/New_York", utc(2026, 10, 30, 20), 1) == [utc(2026, 10, 31, 13)]


def test_a_skipped_local_time_runs_when_the_clock_jumps_past_it_and_a_repeated_one_runs_once():
    # Europe/Berlin: 29 March 2026 02:00 → 03:00; 02:30 does not exist and runs at the jump, 03:00 CEST = 01:00 UTC.
    assert next_occurrence("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1, 0)
    # 25 October 2026 03:00 → 02:00; 02:30 happens twice and runs at the first (CEST, 00:30 UTC) only.
    runs_ = occurrences("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), 2)
    assert runs_ == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_weekly_monthly_and_leap_days():
    # Mondays and Thursdays 08:15 in Tokyo (no DST): Thursday 26 Nov 2026 then Monday 30 Nov.
    weekly = schedule_from_input(
        {"recurrence": "weekly", "time": "08:15", "weekdays": ["mon", "thu"], "timezone": "Asia/Tokyo"},
        default_timezone="UTC",
        now=utc(2026, 11, 25, 12),
    )
    assert weekly.cron_expression == "15 8 * * 1,4"
    assert weekly.scheduled_at == utc(2026, 11, 25, 23, 15)
    monthly = schedule_from_input(
        {"recurrence": "monthly", "time": "10:00", "day_of_month": 31}, default_timezone="UTC", now=utc(2026, 11, 2)
    )
    assert monthly.scheduled_at == utc(2026, 12, 31, 10)  # November has no 31st
    assert next_occurrence("0 0 29 2 *", "UTC", utc(2026, 3, 1)) == utc(2028, 2, 29)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"recurrence": "cron", "cron": "61 * * * *"}, "cron"),
        ({"recurrence": "cron", "cron": "* * *"}, "cron"),
        ({"recurrence": "cron", "cron": "0 0 30 2 *"}, "cron"),
        ({"recurrence": "daily", "time": "25:00"}, "time"),
        ({"recurrence": "weekly", "time": "09:00", "weekdays": []}, "weekdays"),
        ({"recurrence": "weekly", "time": "09:00", "weekdays": ["someday"]}, "weekdays"),
        ({"recurrence": "monthly", "time": "09:00", "day_of_month": 32}, "day_of_month"),
        ({"recurrence": "hourly"}, "recurrence"),
        ({"scheduled_at": "2030-01-01T09:00", "timezone": "Mars/Olympus"}, "timezone"),
        ({"scheduled_at": "tomorrow"}, "scheduled_at"),
        ({"scheduled_at": "2020-01-01T09:00"}, "scheduled_at"),
        ({"recurrence": "daily", "time": "09:00", "ends_at": "2026-11-25T10:00Z"}, "ends_at"),
    ],
)
def test_bad_schedules_name_the_field(data, field):
    with pytest.raises(ValidationError) as caught:
        schedule_from_input(data, default_timezone="UTC", now=utc(2026, 11, 25, 12))
    assert field in caught.value.message_dict


def test_a_time_without_offset_is_read_in_the_chosen_timezone():
    plan = schedule_from_input(
        {"scheduled_at": "2027-07-01T09:00", "timezone": "America/Los_Angeles"},
        default_timezone="UTC",
        now=utc(2026, 11, 25),
    )
    assert plan.scheduled_at == utc(2027, 7, 1, 16)  # PDT = UTC-7


# --- the API and the celery-beat alarm ------------------------------------------------------------------------


def test_schedule_once_registers_a_one_off_beat_alarm_and_cancel_removes_it(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    at = (timezone.now() + timedelta(hours=3)).replace(microsecond=0)
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/schedule/", {"scheduled_at": at.isoformat()}, format="json"
    )
    assert response.status_code == 200, response.data
    assert response.data["schedule"]["recurrence"] == "none"
    assert response.data["schedule"]["timezone"] == "Europe/London"  # the organisation's
    alarm = PeriodicTask.objects.get(name=alarm_key(campaign.pk))
    assert alarm.one_off and alarm.clocked.clocked_time == at
    assert alarm.task == "delivery.tasks.campaign_schedule_fire_task"
    assert json.loads(alarm.args) == [str(campaign.pk)]
    later = at + timedelta(days=1)
    moved = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/reschedule/", {"scheduled_at": later.isoformat()}, format="json"
    )
    assert moved.status_code == 200 and moved.data["status"] == "scheduled"
    assert PeriodicTask.objects.get(name=alarm_key(campaign.pk)).clocked.clocked_time == later
    assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/cancel/").status_code == 200
    assert not PeriodicTask.objects.filter(name=alarm_key(campaign.pk)).exists()


def test_recurring_schedule_is_an_alarm_at_its_next_occurrence_in_the_campaign_timezone(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/schedule/",
        # starts_at: a first run under 5 minutes away is refused, whatever the hour the suite runs at
        {"recurrence": "daily", "time": "09:30", "timezone": "America/New_York", "starts_at": _in_ten_minutes()},
        format="json",
    )
    assert response.status_code == 200, response.data
    schedule = response.data["schedule"]
    assert schedule["cron"] == "30 9 * * *" and schedule["timezone"] == "America/New_York"
    assert schedule["description"] == "Every day at 09:30 (America/New_York)"
    # celery-beat never reads the cron (its crontab ANDs the day fields): the alarm is the next occurrence.
    alarm = PeriodicTask.objects.get(name=alarm_key(campaign.pk))
    campaign.refresh_from_db()
    assert alarm.one_off and alarm.crontab is None and alarm.clocked.clocked_time == campaign.scheduled_at
    local = campaign.scheduled_at.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (9, 30) and campaign.scheduled_at > timezone.now()
    assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/unschedule/").status_code == 200
    assert not PeriodicTask.objects.filter(name=alarm_key(campaign.pk)).exists()
    assert Campaign.objects.get(pk=campaign.pk).recurrence == "none"


def test_bad_schedule_is_a_field_error_and_changes_nothing(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/schedule/", {"recurrence": "cron", "cron": "0 25 * * *"}, format="json"
    )
    assert response.status_code == 400 and "cron" in response.data
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"
    assert not PeriodicTask.objects.filter(name=alarm_key(campaign.pk)).exists()


# --- firing -----------------------------------------------------------------------------------------------------


def _scheduled(teammate, **schedule) -> Campaign:
    campaign = CampaignFactory(organisation=teammate.organisation)
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/schedule/", schedule, format="json")
    assert response.status_code == 200, response.data
    return Campaign.objects.get(pk=campaign.pk)


def test_an_alarm_starts_one_run_per_occurrence(teammate, django_capture_on_commit_callbacks):
    campaign = _scheduled(teammate, scheduled_at=(timezone.now() + timedelta(minutes=10)).isoformat())
    assert runs.campaign_schedule_fire(campaign.pk) is None  # too early: a moved schedule's stale alarm
    due = campaign.scheduled_at + timedelta(seconds=1)
    with django_capture_on_commit_callbacks(execute=False):
        run = runs.campaign_schedule_fire(campaign.pk, now=due)
        again = runs.campaign_schedule_fire(campaign.pk, now=due)
    assert run is not None and again is None
    assert run.trigger == "schedule" and run.scheduled_for == campaign.scheduled_at
    assert Run.objects.filter(campaign=campaign).count() == 1
    assert Campaign.objects.get(pk=campaign.pk).status == "running"
    assert not PeriodicTask.objects.filter(name=alarm_key(campaign.pk)).exists()


def test_a_recurring_campaign_goes_back_to_waiting_after_each_run(teammate, django_capture_on_commit_callbacks):
    campaign = _scheduled(
        teammate, recurrence="daily", time="07:00", timezone="Europe/Paris", starts_at=_in_ten_minutes()
    )
    first = campaign.scheduled_at
    with django_capture_on_commit_callbacks(execute=False):
        run = runs.campaign_schedule_fire(campaign.pk, now=first)
        runs.run_prepare(run.pk)
    runs.run_finish_if_done(run.pk)  # an audience with nobody in it finishes at once
    campaign.refresh_from_db()
    assert Run.objects.get(pk=run.pk).status == "completed"
    assert campaign.status == "scheduled"
    assert campaign.scheduled_at == first + timedelta(days=1)
    assert PeriodicTask.objects.filter(name=alarm_key(campaign.pk)).exists()


def test_a_campaign_that_can_no_longer_launch_goes_back_to_draft(teammate):
    campaign = _scheduled(teammate, scheduled_at=(timezone.now() + timedelta(minutes=10)).isoformat())
    campaign.variants.update(content={})
    assert runs.campaign_schedule_fire(campaign.pk, now=campaign.scheduled_at) is None
    campaign.refresh_from_db()
    assert campaign.status == "draft"
    assert "could not start" in campaign.history.first().history_actor


def test_the_pump_starts_due_campaigns_even_without_the_alarm(teammate, django_capture_on_commit_callbacks):
    campaign = _scheduled(teammate, scheduled_at=(timezone.now() + timedelta(minutes=10)).isoformat())
    PeriodicTask.objects.filter(name=alarm_key(campaign.pk)).delete()
    assert runs.delivery_pump()["fired"] == 0
    with django_capture_on_commit_callbacks(execute=False):
        report = runs.delivery_pump(now=campaign.scheduled_at + timedelta(seconds=2))
    assert report["fired"] == 1
    assert Run.objects.filter(campaign=campaign, scheduled_for=campaign.scheduled_at).count() == 1


# --- the HTTP task_service client -------------------------------------------------------------------------------


class FakeTaskService(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, dict]] = []

    def log_message(self, *args):
        pass

    def _reply(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_PUT(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeTaskService.requests.append(("PUT", self.path, {"body": body, "auth": self.headers.get("Authorization")}))
        self._reply(500 if "fail" in self.path else 200)

    def do_DELETE(self):
        FakeTaskService.requests.append(("DELETE", self.path, {}))
        self._reply(404)


@pytest.fixture
def task_server() -> Iterator[str]:
    FakeTaskService.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTaskService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_task_service_registers_with_a_signed_callback(
    settings, task_server, teammate, django_capture_on_commit_callbacks
):
    settings.TASK_SERVICE_URL = task_server
    settings.TASK_SERVICE_TOKEN = "svc-token"
    with django_capture_on_commit_callbacks(execute=True):  # the call is made once the schedule has committed
        campaign = _scheduled(
            teammate,
            recurrence="weekly",
            time="18:00",
            weekdays=["fri"],
            timezone="Asia/Kolkata",
            starts_at=_in_ten_minutes(),
        )
    [(method, path, sent)] = FakeTaskService.requests
    assert (method, path) == ("PUT", f"/tasks/{alarm_key(campaign.pk)}")
    assert sent["auth"] == "Bearer svc-token"
    # The next occurrence, as campaigns.scheduling computes it (the service's own cron reading may differ).
    assert sent["body"]["schedule"] == {"type": "once", "run_at": campaign.scheduled_at.isoformat()}
    assert sent["body"]["callback"]["url"].startswith(settings.SITE_URL + "/hooks/task-service/")
    assert not PeriodicTask.objects.filter(name=alarm_key(campaign.pk)).exists()  # the external service owns it
    with django_capture_on_commit_callbacks(execute=True):
        teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/unschedule/")
    assert FakeTaskService.requests[-1][:2] == ("DELETE", f"/tasks/{alarm_key(campaign.pk)}")


def test_http_task_service_failure_is_an_adapter_error(task_server):
    from audiences.adapters import AdapterError

    client = HttpTaskService(task_server)
    campaign = CampaignFactory.build(pk="00000000-0000-0000-0000-00000000fa11", scheduled_at=timezone.now())
    campaign.pk = "fail"
    with pytest.raises(AdapterError):
        client.register(campaign)
    with pytest.raises(AdapterError):
        HttpTaskService("http://127.0.0.1:9", timeout=0.5).remove("x")


def test_the_callback_fires_the_campaign_and_refuses_forged_tokens(teammate, client, monkeypatch):
    campaign = _scheduled(teammate, scheduled_at=(timezone.now() + timedelta(minutes=10)).isoformat())
    Campaign.objects.filter(pk=campaign.pk).update(scheduled_at=timezone.now() - timedelta(seconds=1))
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    assert client.post(f"/hooks/task-service/{callback_token(campaign.pk)}x").status_code == 404
    assert client.get(f"/hooks/task-service/{callback_token(campaign.pk)}").status_code == 405
    response = client.post(f"/hooks/task-service/{callback_token(campaign.pk)}")
    assert response.status_code == 202
    assert Run.objects.filter(campaign=campaign, trigger="schedule").count() == 1
