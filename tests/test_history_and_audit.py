"""Every change is recorded twice: django-simple-history on the object, and the compliance audit log."""

from __future__ import annotations

import pytest

from campaigns.models import Campaign
from compliance.models import AuditLogEntry

pytestmark = pytest.mark.django_db


def test_history_shows_who_changed_what_and_when(teammate, owner):
    created = teammate.client.post("/api/v1/campaigns/", {"name": "Tracked", "channels": ["email"]}, format="json").data
    owner.api.patch(
        f"/api/v1/campaigns/{created['id']}/",
        {"name": "Tracked v2", "channels": ["email", "sms"]},
        format="json",
    )
    rows = teammate.api.get(f"/api/v1/campaigns/{created['id']}/history/").data
    change = next(row for row in rows if row["action"] == "updated")
    assert change["actor"].startswith("API key 'test key'")
    assert change["changes"]["name"] == {"from": "Tracked", "to": "Tracked v2"}
    assert change["changes"]["channels"] == {"from": ["email"], "to": ["email", "sms"]}
    creation = next(row for row in rows if row["action"] == "created")
    assert creation["actor"] == teammate.membership.user.username
    assert creation["changes"]["name"] == {"from": None, "to": "Tracked"}
    assert rows[0]["at"] >= rows[-1]["at"]


def test_simple_history_links_the_django_user(teammate):
    created = teammate.client.post("/api/v1/campaigns/", {"name": "User"}, format="json").data
    record = Campaign.history.filter(id=created["id"]).first()
    assert record.history_user == teammate.membership.user
    assert record.history_actor == teammate.membership.user.username


def test_variant_changes_appear_in_the_campaign_history(teammate):
    created = teammate.api.post("/api/v1/campaigns/", {"name": "Var", "channels": ["sms"]}, format="json").data
    teammate.api.patch(
        f"/api/v1/campaigns/{created['id']}/",
        {
            "variants": [
                {"name": "A", "allocation_percent": 70, "content": {"sms": {"body": "hi"}}},
                {"name": "B", "allocation_percent": 30},
            ]
        },
        format="json",
    )
    rows = teammate.api.get(f"/api/v1/campaigns/{created['id']}/history/").data
    variant_rows = [row for row in rows if row["action"].startswith("variant")]
    a_change = next(
        r
        for r in variant_rows
        if r["action"].startswith("variant A")
        and "allocation_percent" in r["changes"]
        and r["changes"]["allocation_percent"]["from"] == 100
    )
    assert a_change["changes"]["allocation_percent"] == {"from": 100, "to": 70}
    assert any(r["action"].startswith("variant B: created") for r in variant_rows)


def test_audit_log_records_each_operation_with_actor(teammate):
    created = teammate.api.post(
        "/api/v1/campaigns/",
        {
            "name": "Audit",
            "channels": ["email"],
            "audience": {"rules": {"field": "email", "op": "exists"}},
            "variants": [{"name": "A", "allocation_percent": 100, "content": {"email": {"subject": "S", "html": "H"}}}],
        },
        format="json",
    ).data
    campaign_id = created["id"]
    teammate.api.patch(f"/api/v1/campaigns/{campaign_id}/", {"description": "d"}, format="json")
    teammate.api.post(
        f"/api/v1/campaigns/{campaign_id}/schedule/", {"scheduled_at": "2099-01-01T09:00:00Z"}, format="json"
    )
    teammate.api.post(f"/api/v1/campaigns/{campaign_id}/clone/")
    teammate.api.delete(f"/api/v1/campaigns/{campaign_id}/")
    teammate.api.post(f"/api/v1/campaigns/{campaign_id}/restore/")
    entries = AuditLogEntry.objects.filter(target_id=campaign_id).order_by("occurred_at", "id")
    assert [e.action for e in entries] == [
        "campaign.create",
        "campaign.update",
        "campaign.schedule",
        "campaign.cancel",
        "campaign.delete",
        "campaign.restore",
    ]
    assert {e.organisation_id for e in entries} == {teammate.organisation.pk}
    assert all(e.actor_api_key is not None for e in entries)
    update = entries[1]
    assert update.details["changed"] == {"description": {"from": "", "to": "d"}}


def test_a_failed_operation_leaves_no_audit_entry_and_no_change(teammate):
    created = teammate.api.post("/api/v1/campaigns/", {"name": "Atomic"}, format="json").data
    before = AuditLogEntry.objects.count()
    response = teammate.api.patch(
        f"/api/v1/campaigns/{created['id']}/",
        {"name": "Atomic 2", "variants": [{"name": "A", "allocation_percent": 99}]},
        format="json",
    )
    assert response.status_code == 400
    assert AuditLogEntry.objects.count() == before
    assert Campaign.objects.get(pk=created["id"]).name == "Atomic"
    assert Campaign.history.filter(id=created["id"]).count() == 1
