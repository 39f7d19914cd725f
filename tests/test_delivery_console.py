"""Console side of the engine: the schedule editor, send now, pause/resume/cancel, and the live runs panel."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Campaign
from delivery import runs, sending
from delivery.models import Run
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(organisation):
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(50)]
    )
    return CampaignFactory(organisation=organisation, name="Console send", sandbox_profile={"failed": 0, "bounced": 0})


def test_the_schedule_editor_schedules_a_weekly_send_in_a_timezone(teammate, campaign):
    browser = console_client(teammate)
    page = browser.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert 'data-testid="schedule-form"' in page and "Send now" in page
    response = browser.post(
        f"/campaigns/{campaign.pk}/schedule/",
        {"recurrence": "weekly", "time": "10:30", "weekdays": ["tue", "fri"], "timezone": "Europe/Madrid"},
    )
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == "scheduled"
    assert campaign.cron_expression == "30 10 * * 2,5"
    page = browser.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert "Every week on Tue, Fri at 10:30 (Europe/Madrid)" in page


def test_schedule_errors_are_shown_inline_and_change_nothing(teammate, campaign):
    browser = console_client(teammate)
    response = browser.post(
        f"/campaigns/{campaign.pk}/schedule/", {"recurrence": "none", "scheduled_at": "2020-01-01T10:00"}, follow=True
    )
    assert "at least 5 minutes in the future" in response.content.decode()
    response = browser.post(
        f"/campaigns/{campaign.pk}/schedule/", {"recurrence": "cron", "cron": "nonsense"}, follow=True
    )
    assert "five fields" in response.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"


def test_a_one_time_schedule_reads_the_time_in_the_chosen_zone(teammate, campaign):
    browser = console_client(teammate)
    when = (timezone.now() + timedelta(days=2)).astimezone(timezone.get_fixed_timezone(0)).replace(second=0)
    local = when.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    browser.post(
        f"/campaigns/{campaign.pk}/schedule/",
        {"recurrence": "none", "scheduled_at": local.strftime("%Y-%m-%dT%H:%M"), "timezone": "Asia/Tokyo"},
    )
    campaign.refresh_from_db()
    assert campaign.scheduled_at == when.replace(microsecond=0)
    assert campaign.schedule_timezone == "Asia/Tokyo"


def test_send_now_then_the_runs_panel_shows_progress_until_done(teammate, campaign, django_capture_on_commit_callbacks):
    browser = console_client(teammate)
    with django_capture_on_commit_callbacks(execute=False):
        browser.post(f"/campaigns/{campaign.pk}/start/")
    run = Run.objects.get(campaign=campaign)
    panel = browser.get(f"/delivery/campaigns/{campaign.pk}/runs/").content.decode()
    assert "Preparing recipients" in panel
    assert 'hx-trigger="every 1s"' in panel  # polls while the run is active
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_batch(run.pk, batch_size=20)
    panel = browser.get(f"/delivery/campaigns/{campaign.pk}/runs/").content.decode()
    assert 'data-testid="run-percent">40.0%' in panel
    assert 'data-testid="count-queued">30<' in panel
    assert 'data-testid="count-delivered">20<' in panel
    sending.run_send_for(run.pk, seconds=30)
    runs.run_finish_if_done(run.pk)
    panel = browser.get(f"/delivery/campaigns/{campaign.pk}/runs/").content.decode()
    assert 'data-testid="run-percent">100.0%' in panel
    assert 'data-status="completed"' in panel
    assert "every 1s" not in panel  # nothing left to watch


def test_pause_shows_who_paused_and_resume_continues(teammate, campaign, django_capture_on_commit_callbacks):
    browser = console_client(teammate)
    with django_capture_on_commit_callbacks(execute=False):
        browser.post(f"/campaigns/{campaign.pk}/start/")
        runs.run_prepare(Run.objects.get(campaign=campaign).pk)
        browser.post(f"/campaigns/{campaign.pk}/pause/")
    panel = browser.get(f"/delivery/campaigns/{campaign.pk}/runs/").content.decode()
    assert 'data-status="paused"' in panel
    assert f"by {teammate.membership.user.username}" in panel
    page = browser.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert 'data-testid="action-resume"' in page and 'data-testid="action-cancel"' in page
    with django_capture_on_commit_callbacks(execute=False):
        browser.post(f"/campaigns/{campaign.pk}/resume/")
    assert Run.objects.get(campaign=campaign).status == "sending"


def test_the_runs_panel_is_scoped_to_the_organisation(outsider, campaign):
    assert console_client(outsider).get(f"/delivery/campaigns/{campaign.pk}/runs/").status_code == 404
    assert Client().get(f"/delivery/campaigns/{campaign.pk}/runs/").status_code == 302
