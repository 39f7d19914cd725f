"""The PRD's operator spellings (equals, contains, greater_than, less_than) are accepted in segment rules and
trigger conditions as documented aliases of eq, contains, gt and lt."""

from __future__ import annotations

import pytest

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Variant
from delivery.models import Message, Run
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def contacts(organisation) -> None:
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "ana", "email": "ana@example.com", "attributes": {"plan": "pro", "spend": 120}},
            {"external_id": "ben", "email": "ben@example.com", "attributes": {"plan": "free", "spend": 30}},
            {"external_id": "cat", "email": "cat@example.com", "attributes": {"plan": "professional", "spend": 75}},
        ],
    )


@pytest.mark.parametrize(
    ("rules", "count"),
    [
        ({"field": "attributes.plan", "op": "equals", "value": "pro"}, 1),
        ({"field": "attributes.plan", "op": "contains", "value": "pro"}, 2),
        ({"field": "attributes.spend", "op": "greater_than", "value": 50}, 2),
        ({"field": "attributes.spend", "op": "less_than", "value": 100}, 2),
        ({"not": {"field": "attributes.spend", "op": "greater_than", "value": 100}}, 2),
    ],
)
def test_segment_rules_take_the_long_spellings(teammate, contacts, rules, count):
    response = teammate.api.post("/api/v1/segments/estimate/", {"rules": rules, "exact": True}, format="json")
    assert response.status_code == 200, response.data
    assert response.data["count"] == count


def test_an_unknown_spelling_is_a_400_naming_the_aliases(teammate, contacts):
    rules = {"field": "attributes.spend", "op": "bigger_than", "value": 1}
    response = teammate.api.post("/api/v1/segments/estimate/", {"rules": rules}, format="json")
    assert response.status_code == 400
    assert "(or equals, greater_than, less_than)" in str(response.data)


def test_trigger_conditions_take_the_long_spellings(teammate, contacts, django_capture_on_commit_callbacks):
    campaign = CampaignFactory(
        organisation=teammate.organisation,
        type="triggered",
        trigger_event="order_completed",
        variants=False,
        sandbox_profile={"failed": 0, "bounced": 0},
        audience_rules={"field": "email", "op": "exists"},
    )
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={"email": {"subject": "s", "html": "<p>x</p>"}}
    )
    conditions = {
        "and": [
            {"property": "total", "op": "greater_than", "value": 50},
            {"property": "total", "op": "less_than", "value": 500},
            {"property": "currency", "op": "equals", "value": "EUR"},
            {"property": "coupon", "op": "contains", "value": "spring"},
        ]
    }
    saved = teammate.api.patch(f"/api/v1/campaigns/{campaign.pk}/", {"trigger_conditions": conditions}, format="json")
    assert saved.status_code == 200, saved.data
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/").status_code == 200
    events = [
        {
            "id": "1",
            "type": "order_completed",
            "contact": "ana",
            "properties": {"total": 80, "currency": "EUR", "coupon": "SPRING-24"},
        },
        {
            "id": "2",
            "type": "order_completed",
            "contact": "ben",
            "properties": {"total": 20, "currency": "EUR", "coupon": "spring"},
        },
        {
            "id": "3",
            "type": "order_completed",
            "contact": "cat",
            "properties": {"total": 80, "currency": "USD", "coupon": "spring"},
        },
    ]
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post("/api/v1/events/", {"events": events}, format="json").status_code == 202
    run = Run.objects.get(campaign=campaign, trigger="event")
    assert list(Message.objects.filter(run=run).values_list("contact__external_id", flat=True)) == ["ana"]
