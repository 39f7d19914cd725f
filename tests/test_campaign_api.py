"""Create, read, update through the API, as a client would."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign
from compliance.models import AuditLogEntry
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/campaigns/"


def test_it_creates_a_draft_with_a_default_variant(teammate):
    response = teammate.api.post(
        URL,
        {"name": "Spring sale", "description": "20% off", "type": "scheduled", "channels": ["email", "sms"]},
        format="json",
    )
    assert response.status_code == 201, response.data
    body = response.data
    assert body["name"] == "Spring sale"
    assert body["description"] == "20% off"
    assert body["status"] == "draft"
    assert body["type"] == "scheduled"
    assert body["channels"] == ["email", "sms"]
    assert [(v["name"], v["allocation_percent"], v["is_control"]) for v in body["variants"]] == [("A", 100, False)]
    assert {a["action"] for a in body["allowed_actions"]} == {"schedule", "start"}
    campaign = Campaign.objects.get(pk=body["id"])
    assert campaign.organisation == teammate.organisation
    assert AuditLogEntry.objects.filter(target_id=str(campaign.pk), action="campaign.create").count() == 1


def test_it_creates_with_variants(teammate):
    response = teammate.api.post(
        URL,
        {
            "name": "AB",
            "channels": ["email"],
            "variants": [
                {"name": "A", "allocation_percent": 45, "content": {"email": {"subject": "Hi"}}},
                {"name": "B", "allocation_percent": 45, "content": {"email": {"subject": "Hello"}}},
                {"name": "Control", "allocation_percent": 10, "is_control": True},
            ],
        },
        format="json",
    )
    assert response.status_code == 201, response.data
    assert [(v["name"], v["allocation_percent"]) for v in response.data["variants"]] == [
        ("A", 45),
        ("B", 45),
        ("Control", 10),
    ]
    assert response.data["variants"][1]["content"] == {"email": {"subject": "Hello"}}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "type": "weekly"}, "type"),
        ({"name": "ok", "channels": ["fax"]}, "channels"),
        ({"name": "ok", "channels": "email"}, "channels"),
        ({"name": "ok", "scheduled_at": "tomorrow"}, "scheduled_at"),
        ({"name": "ok", "messages_per_minute": 0}, "messages_per_minute"),
        ({"name": "ok", "messages_per_hour": -5}, "messages_per_hour"),
        ({"name": "ok", "variants": []}, "variants"),
        ({"name": "ok", "variants": [{"name": "A", "allocation_percent": 60}]}, "variants"),
        ({"name": "ok", "variants": [{"name": "A", "allocation_percent": 150}]}, "variants"),
        (
            {
                "name": "ok",
                "variants": [
                    {"name": "A", "allocation_percent": 50},
                    {"name": "A", "allocation_percent": 50},
                ],
            },
            "variants",
        ),
        (
            {"name": "ok", "variants": [{"name": "A", "allocation_percent": 100, "is_control": True}]},
            "variants",
        ),
        (
            {"name": "ok", "variants": [{"name": f"V{i}", "allocation_percent": 16} for i in range(6)]},
            "variants",
        ),
        (
            {
                "name": "ok",
                "channels": ["email"],
                "variants": [{"name": "A", "allocation_percent": 100, "content": {"sms": {"body": "x"}}}],
            },
            "variants",
        ),
    ],
)
def test_it_rejects_bad_input_with_field_errors(teammate, payload, field):
    response = teammate.api.post(URL, payload, format="json")
    assert response.status_code == 400
    assert field in response.data, response.data
    assert Campaign.objects.count() == 0


def test_it_rejects_a_duplicate_live_name_case_insensitively(teammate):
    assert teammate.api.post(URL, {"name": "Launch"}, format="json").status_code == 201
    response = teammate.api.post(URL, {"name": "launch"}, format="json")
    assert response.status_code == 400
    assert response.data == {"name": ["A campaign with this name already exists."]}


def test_the_same_name_is_fine_in_another_organisation(teammate, outsider):
    assert teammate.api.post(URL, {"name": "Launch"}, format="json").status_code == 201
    assert outsider.api.post(URL, {"name": "Launch"}, format="json").status_code == 201


def test_it_rejects_malformed_json(teammate):
    response = teammate.api.generic("POST", URL, "{not json", content_type="application/json")
    assert response.status_code == 400


def test_it_reads_a_campaign_created_in_a_session_with_its_owner(teammate):
    created = teammate.client.post(URL, {"name": "Read me", "channels": ["sms"]}, format="json").data
    response = teammate.api.get(f"{URL}{created['id']}/")
    assert response.status_code == 200
    assert response.data["name"] == "Read me"
    assert response.data["owner"] == teammate.membership.user.username


def test_it_patches_only_what_was_sent(teammate):
    created = teammate.api.post(
        URL,
        {"name": "Patch me", "description": "keep", "channels": ["sms"], "messages_per_minute": 50},
        format="json",
    ).data
    response = teammate.api.patch(f"{URL}{created['id']}/", {"name": "Patched"}, format="json")
    assert response.status_code == 200, response.data
    assert response.data["name"] == "Patched"
    assert response.data["description"] == "keep"
    assert response.data["channels"] == ["sms"]
    assert response.data["messages_per_minute"] == 50


def test_it_replaces_variants_on_update(teammate):
    created = teammate.api.post(URL, {"name": "V", "channels": ["email"]}, format="json").data
    response = teammate.api.patch(
        f"{URL}{created['id']}/",
        {"variants": [{"name": "A", "allocation_percent": 50}, {"name": "B", "allocation_percent": 50}]},
        format="json",
    )
    assert response.status_code == 200, response.data
    assert [v["name"] for v in response.data["variants"]] == ["A", "B"]


def test_update_refuses_a_duplicate_name(teammate):
    teammate.api.post(URL, {"name": "First"}, format="json")
    second = teammate.api.post(URL, {"name": "Second"}, format="json").data
    response = teammate.api.patch(f"{URL}{second['id']}/", {"name": "FIRST"}, format="json")
    assert response.status_code == 400
    assert "name" in response.data


def test_removing_a_channel_that_variants_use_is_a_400(teammate):
    created = teammate.api.post(
        URL,
        {
            "name": "C",
            "channels": ["email", "sms"],
            "variants": [{"name": "A", "allocation_percent": 100, "content": {"sms": {"body": "hi"}}}],
        },
        format="json",
    ).data
    response = teammate.api.patch(f"{URL}{created['id']}/", {"channels": ["email"]}, format="json")
    assert response.status_code == 400
    assert "variants" in response.data
    assert Campaign.objects.get(pk=created["id"]).channels == ["email", "sms"]


@pytest.mark.parametrize("status", ["scheduled", "active", "running", "completed", "cancelled"])
def test_updates_are_refused_outside_draft_and_paused(teammate, status):
    campaign = CampaignFactory(
        organisation=teammate.organisation,
        name="Live",
        status=status,
        type="triggered" if status == "active" else "scheduled",
        scheduled_at=timezone.now() + timedelta(days=1),
    )
    response = teammate.api.patch(f"{URL}{campaign.pk}/", {"name": "Changed"}, format="json")
    assert response.status_code == 409
    assert response.data["code"] == "not_editable"
    assert response.data["status"] == status
    assert response.data["editable_statuses"] == ["draft", "paused"]
    campaign.refresh_from_db()
    assert campaign.name == "Live"


def test_a_paused_campaign_can_be_updated_but_not_retyped(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, name="Paused", status="paused")
    ok = teammate.api.patch(f"{URL}{campaign.pk}/", {"description": "investigating"}, format="json")
    assert ok.status_code == 200
    retype = teammate.api.patch(f"{URL}{campaign.pk}/", {"type": "triggered"}, format="json")
    assert retype.status_code == 400
    assert "type" in retype.data


def test_put_replaces_the_editable_fields(teammate):
    created = teammate.api.post(URL, {"name": "Put", "description": "old", "channels": ["sms"]}, format="json").data
    response = teammate.api.put(f"{URL}{created['id']}/", {"name": "Put 2", "channels": ["email"]}, format="json")
    assert response.status_code == 200, response.data
    assert response.data["description"] == ""
    assert response.data["channels"] == ["email"]


def test_unknown_ids_are_404_not_500(teammate):
    assert teammate.api.get(f"{URL}00000000-0000-0000-0000-000000000000/").status_code == 404
    assert teammate.api.get(f"{URL}not-a-uuid/").status_code == 404
