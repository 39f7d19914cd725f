"""Clone, soft delete, restore, and the purge after the restore window."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign, Variant
from campaigns.services import campaigns_purge_deleted
from compliance.models import AuditLogEntry
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/campaigns/"


def _rich_campaign(organisation, **kwargs):
    campaign = CampaignFactory(
        organisation=organisation,
        name="Summer",
        description="Beach",
        channels=["email", "sms"],
        messages_per_minute=100,
        messages_per_hour=5000,
        variants=False,
        scheduled_at=timezone.now() + timedelta(days=3),
        **kwargs,
    )
    Variant.objects.create(
        campaign=campaign,
        name="A",
        position=0,
        allocation_percent=50,
        content={"email": {"subject": "Sun", "html": "<p>Hi</p>"}, "sms": {"body": "Sun!"}},
    )
    Variant.objects.create(
        campaign=campaign, name="B", position=1, allocation_percent=40, content={"email": {"subject": "Sea"}}
    )
    Variant.objects.create(campaign=campaign, name="Holdout", position=2, allocation_percent=10, is_control=True)
    return campaign


@pytest.mark.parametrize("status", ["draft", "scheduled", "running", "paused", "completed", "cancelled"])
def test_clone_copies_configuration_into_an_independent_draft(teammate, status):
    origin = _rich_campaign(teammate.organisation, status=status)
    response = teammate.api.post(f"{URL}{origin.pk}/clone/")
    assert response.status_code == 201, response.data
    clone = Campaign.objects.get(pk=response.data["id"])
    assert clone.pk != origin.pk
    assert clone.name == "Copy of Summer"
    assert clone.status == "draft"
    assert (clone.description, clone.type, clone.channels) == (
        origin.description,
        origin.type,
        origin.channels,
    )
    assert (clone.messages_per_minute, clone.messages_per_hour) == (100, 5000)
    assert [(v.name, v.allocation_percent, v.is_control, v.content) for v in clone.variants.all()] == [
        (v.name, v.allocation_percent, v.is_control, v.content) for v in origin.variants.all()
    ]
    assert not set(clone.variants.values_list("pk", flat=True)) & set(origin.variants.values_list("pk", flat=True))


def test_clone_is_independent_of_the_origin(teammate):
    origin = _rich_campaign(teammate.organisation)
    clone_id = teammate.api.post(f"{URL}{origin.pk}/clone/").data["id"]
    patched = teammate.api.patch(
        f"{URL}{clone_id}/",
        {
            "name": "Autumn",
            "variants": [{"name": "A", "allocation_percent": 100, "content": {"email": {"subject": "Leaves"}}}],
        },
        format="json",
    )
    assert patched.status_code == 200, patched.data
    origin.refresh_from_db()
    assert origin.name == "Summer"
    assert origin.variants.get(name="A").content["email"]["subject"] == "Sun"
    assert origin.variants.count() == 3
    teammate.api.delete(f"{URL}{origin.pk}/")
    assert teammate.api.get(f"{URL}{clone_id}/").data["deleted_at"] is None


def test_clone_names_are_made_unique(teammate):
    origin = _rich_campaign(teammate.organisation)
    names = [teammate.api.post(f"{URL}{origin.pk}/clone/").data["name"] for _ in range(3)]
    assert names == ["Copy of Summer", "Copy of Summer (2)", "Copy of Summer (3)"]


def test_clone_records_its_origin_in_history_and_audit_log(teammate):
    origin = _rich_campaign(teammate.organisation)
    clone_id = teammate.api.post(f"{URL}{origin.pk}/clone/").data["id"]
    entry = AuditLogEntry.objects.get(action="campaign.clone", target_id=clone_id)
    assert entry.details == {"origin_campaign_id": str(origin.pk), "origin_campaign_name": "Summer"}
    history = teammate.api.get(f"{URL}{clone_id}/history/").data
    assert any(f"cloned from campaign {origin.pk}" in row["action"] for row in history)


@pytest.mark.parametrize("status", ["draft", "paused", "completed", "cancelled"])
def test_delete_is_a_soft_delete(teammate, status):
    campaign = CampaignFactory(organisation=teammate.organisation, status=status)
    response = teammate.api.delete(f"{URL}{campaign.pk}/")
    assert response.status_code == 200
    assert response.data["deleted_at"] is not None
    assert response.data["status"] == status
    campaign.refresh_from_db()
    assert campaign.deleted_at is not None
    assert teammate.api.get(URL).data["count"] == 0
    assert teammate.api.get(f"{URL}?deleted=only").data["count"] == 1
    assert teammate.api.get(f"{URL}{campaign.pk}/").status_code == 200  # still readable, and restorable


@pytest.mark.parametrize(("campaign_type", "status"), [("scheduled", "scheduled"), ("triggered", "active")])
def test_deleting_a_scheduled_or_active_campaign_cancels_it_first(teammate, campaign_type, status):
    campaign = CampaignFactory(
        organisation=teammate.organisation,
        type=campaign_type,
        status=status,
        scheduled_at=timezone.now() + timedelta(days=1),
    )
    response = teammate.api.delete(f"{URL}{campaign.pk}/")
    assert response.status_code == 200
    assert response.data["status"] == "cancelled"
    actions = list(AuditLogEntry.objects.filter(target_id=str(campaign.pk)).values_list("action", flat=True))
    assert sorted(actions) == ["campaign.cancel", "campaign.delete"]


def test_a_running_campaign_cannot_be_deleted(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, status="running")
    response = teammate.api.delete(f"{URL}{campaign.pk}/")
    assert response.status_code == 409
    assert response.data["code"] == "not_deletable"
    assert "pause" in response.data["detail"]
    assert "pause" in response.data["allowed_actions"]
    campaign.refresh_from_db()
    assert campaign.deleted_at is None


def test_a_deleted_campaign_cannot_be_changed(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    teammate.api.delete(f"{URL}{campaign.pk}/")
    assert teammate.api.patch(f"{URL}{campaign.pk}/", {"name": "x"}, format="json").status_code == 404
    assert teammate.api.delete(f"{URL}{campaign.pk}/").status_code == 404


def test_restore_brings_it_back(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, name="Back")
    teammate.api.delete(f"{URL}{campaign.pk}/")
    response = teammate.api.post(f"{URL}{campaign.pk}/restore/")
    assert response.status_code == 200
    assert response.data["deleted_at"] is None
    assert response.data["name"] == "Back"
    assert teammate.api.get(URL).data["count"] == 1


def test_restore_renames_when_the_name_was_reused(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, name="Reused")
    teammate.api.delete(f"{URL}{campaign.pk}/")
    assert teammate.api.post(URL, {"name": "Reused"}, format="json").status_code == 201
    response = teammate.api.post(f"{URL}{campaign.pk}/restore/")
    assert response.status_code == 200
    assert response.data["name"] == "Reused (2)"


def test_a_deleted_name_is_free_for_a_new_campaign(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, name="Free")
    teammate.api.delete(f"{URL}{campaign.pk}/")
    assert teammate.api.post(URL, {"name": "Free"}, format="json").status_code == 201


def test_restore_of_a_live_campaign_is_409(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    response = teammate.api.post(f"{URL}{campaign.pk}/restore/")
    assert response.status_code == 409
    assert response.data["code"] == "not_deleted"


def test_restore_after_the_window_is_409(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    Campaign.objects.filter(pk=campaign.pk).update(deleted_at=timezone.now() - timedelta(days=30, seconds=1))
    response = teammate.api.post(f"{URL}{campaign.pk}/restore/")
    assert response.status_code == 409
    assert response.data["code"] == "restore_window_expired"


def test_restore_deadline_is_thirty_days_after_deletion(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation)
    data = teammate.api.delete(f"{URL}{campaign.pk}/").data
    campaign.refresh_from_db()
    assert data["restore_deadline"] == (campaign.deleted_at + timedelta(days=30)).isoformat().replace("+00:00", "Z")


def test_purge_hard_deletes_only_campaigns_past_the_window(teammate, outsider):
    now = timezone.now()
    old = _rich_campaign(teammate.organisation, status="completed")
    recent = CampaignFactory(organisation=teammate.organisation, name="Recent")
    live = CampaignFactory(organisation=teammate.organisation, name="Live")
    other_old = CampaignFactory(organisation=outsider.organisation, name="Other old")
    Campaign.objects.filter(pk__in=[old.pk, other_old.pk]).update(deleted_at=now - timedelta(days=31))
    Campaign.objects.filter(pk=recent.pk).update(deleted_at=now - timedelta(days=29))

    assert campaigns_purge_deleted(now=now, batch_size=1) == 2

    assert set(Campaign.objects.values_list("name", flat=True)) == {"Recent", "Live"}
    assert not Variant.objects.filter(campaign_id=old.pk).exists()
    assert not Campaign.history.filter(id=old.pk).exists()
    assert not Variant.history.filter(campaign_id=old.pk).exists()
    assert Campaign.history.filter(id=live.pk).exists()
    purges = AuditLogEntry.objects.filter(action="campaign.purge")
    assert {(e.organisation_id, e.target_id) for e in purges} == {
        (teammate.organisation.pk, str(old.pk)),
        (outsider.organisation.pk, str(other_old.pk)),
    }
    assert campaigns_purge_deleted(now=now) == 0  # idempotent


def test_purge_task_runs_the_service(teammate):
    from campaigns.tasks import campaigns_purge_deleted_task

    campaign = CampaignFactory(organisation=teammate.organisation)
    Campaign.objects.filter(pk=campaign.pk).update(deleted_at=timezone.now() - timedelta(days=40))
    assert campaigns_purge_deleted_task.apply().get() == 1
    assert not Campaign.objects.filter(pk=campaign.pk).exists()


def test_purge_is_scheduled_in_celery_beat(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["purge-deleted-campaigns"]
    assert entry["task"] == "campaigns.tasks.campaigns_purge_deleted_task"
    assert entry["schedule"] <= timedelta(days=1)
    assert entry["options"]["expires"] > 0
