"""Every (status, type, action) combination: legal ones move the campaign, the rest are a 409 listing what is
allowed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign
from compliance.models import AuditLogEntry
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

STATUSES = ["draft", "scheduled", "active", "running", "paused", "completed", "cancelled"]
ACTIONS = ["schedule", "reschedule", "unschedule", "start", "activate", "pause", "resume", "complete", "cancel"]
ENDPOINTS = {"start": "send-now"}

# Written out by hand from the issue and the PRD, independently of campaigns.services.TRANSITIONS.
LEGAL = {
    ("scheduled", "draft", "schedule"): "scheduled",
    ("scheduled", "scheduled", "reschedule"): "scheduled",
    ("scheduled", "scheduled", "unschedule"): "draft",
    ("scheduled", "draft", "start"): "running",
    ("scheduled", "scheduled", "start"): "running",
    ("triggered", "draft", "activate"): "active",
    ("scheduled", "running", "pause"): "paused",
    ("triggered", "active", "pause"): "paused",
    ("scheduled", "paused", "resume"): "running",
    ("triggered", "paused", "resume"): "active",
    ("triggered", "active", "complete"): "completed",
    ("scheduled", "scheduled", "cancel"): "cancelled",
    ("scheduled", "running", "cancel"): "cancelled",
    ("scheduled", "paused", "cancel"): "cancelled",
    ("triggered", "active", "cancel"): "cancelled",
    ("triggered", "paused", "cancel"): "cancelled",
}


def _make(organisation, campaign_type, status):
    return CampaignFactory(
        organisation=organisation,
        type=campaign_type,
        status=status,
        scheduled_at=timezone.now() + timedelta(hours=2),
    )


# Triggered campaigns are never scheduled or running (they are active); scheduled ones are never active.
REACHABLE = [
    (campaign_type, status)
    for campaign_type in ("scheduled", "triggered")
    for status in STATUSES
    if (campaign_type, status) not in {("triggered", "scheduled"), ("triggered", "running"), ("scheduled", "active")}
]


@pytest.mark.parametrize(("campaign_type", "status"), REACHABLE)
@pytest.mark.parametrize("action", ACTIONS)
def test_transition_matrix(teammate, campaign_type, status, action):
    campaign = _make(teammate.organisation, campaign_type, status)
    endpoint = ENDPOINTS.get(action, action)
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/{endpoint}/", {}, format="json")
    expected = LEGAL.get((campaign_type, status, action))
    campaign.refresh_from_db()
    if expected is None:
        assert response.status_code == 409, response.data
        assert response.data["code"] == "invalid_transition"
        assert response.data["status"] == status
        legal_here = sorted(a for (t, s, a) in LEGAL if t == campaign_type and s == status)
        assert sorted(response.data["allowed_actions"]) == legal_here
        assert sorted(response.data["allowed_statuses"]) == sorted(
            {LEGAL[(campaign_type, status, a)] for a in legal_here}
        )
        assert campaign.status == status
        assert not AuditLogEntry.objects.filter(target_id=str(campaign.pk)).exists()
    else:
        assert response.status_code == 200, response.data
        assert response.data["status"] == expected
        assert campaign.status == expected
        entry = AuditLogEntry.objects.get(target_id=str(campaign.pk), action=f"campaign.{action}")
        assert entry.details["from"] == status
        assert entry.details["to"] == expected
        assert entry.actor_api_key is not None


def test_allowed_actions_in_the_payload_follow_the_machine(teammate):
    campaign = _make(teammate.organisation, "triggered", "active")
    data = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/").data
    assert data["allowed_actions"] == [
        {"action": "pause", "status": "paused"},
        {"action": "complete", "status": "completed"},
        {"action": "cancel", "status": "cancelled"},
    ]


def test_schedule_needs_a_time_at_least_five_minutes_ahead(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, scheduled_at=None)
    url = f"/api/v1/campaigns/{campaign.pk}/schedule/"
    missing = teammate.api.post(url, {}, format="json")
    assert missing.status_code == 400
    assert "scheduled_at" in missing.data
    too_soon = teammate.api.post(
        url, {"scheduled_at": (timezone.now() + timedelta(minutes=4)).isoformat()}, format="json"
    )
    assert too_soon.status_code == 400
    assert too_soon.data == {"scheduled_at": ["The scheduled time must be at least 5 minutes in the future."]}
    past = teammate.api.post(url, {"scheduled_at": "2020-01-01T00:00:00Z"}, format="json")
    assert past.status_code == 400
    campaign.refresh_from_db()
    assert campaign.status == "draft"
    at = timezone.now() + timedelta(minutes=6)
    ok = teammate.api.post(url, {"scheduled_at": at.isoformat()}, format="json")
    assert ok.status_code == 200
    campaign.refresh_from_db()
    assert campaign.status == "scheduled"
    assert campaign.scheduled_at == at


def test_schedule_with_a_timezone_offset(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    at = (timezone.now() + timedelta(days=1)).replace(microsecond=0)
    local = at.astimezone(timezone.get_fixed_timezone(-300)).isoformat()  # UTC-05:00
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/schedule/", {"scheduled_at": local}, format="json")
    assert response.status_code == 200
    campaign.refresh_from_db()
    assert campaign.scheduled_at == at


def test_launching_needs_a_channel(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, type="triggered", channels=[])
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/")
    assert response.status_code == 400
    assert "channels" in response.data


def test_pause_records_who_and_when(teammate):
    campaign = _make(teammate.organisation, "triggered", "active")
    before = timezone.now()
    response = teammate.client.post(f"/api/v1/campaigns/{campaign.pk}/pause/")
    assert response.status_code == 200
    campaign.refresh_from_db()
    assert campaign.paused_by == teammate.membership.user.username
    assert campaign.paused_at >= before
    assert response.data["paused_by"] == teammate.membership.user.username


def test_the_engine_can_start_and_complete_a_scheduled_run_but_people_cannot(teammate):
    campaign = _make(teammate.organisation, "scheduled", "scheduled")
    assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/start/").status_code == 404  # no such endpoint
    services.campaign_transition(actor=teammate.actor, campaign_id=campaign.pk, action="start", by_engine=True)
    assert Campaign.objects.get(pk=campaign.pk).status == "running"
    assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/complete/").status_code == 409
    services.campaign_transition(actor=teammate.actor, campaign_id=campaign.pk, action="complete", by_engine=True)
    assert Campaign.objects.get(pk=campaign.pk).status == "completed"


def test_a_new_campaign_is_a_draft_whatever_the_client_says(teammate):
    response = teammate.api.post("/api/v1/campaigns/", {"name": "Sneaky", "status": "running"}, format="json")
    assert response.status_code == 201
    assert response.data["status"] == "draft"


def test_status_cannot_be_patched_directly(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    teammate.api.patch(f"/api/v1/campaigns/{campaign.pk}/", {"status": "running"}, format="json")
    campaign.refresh_from_db()
    assert campaign.status == "draft"
