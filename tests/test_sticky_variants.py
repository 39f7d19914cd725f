"""Sticky assignment: once allocations change after a campaign has sent, contacts already assigned keep their
variant (batch runs and triggered sends alike), new contacts follow the new allocation, and the sample-ratio check
weighs only fresh assignments against the allocation of their period. An auto-winner decision overrides it."""

from __future__ import annotations

from collections import Counter

import pytest

from analytics.experiments import experiment_comparison, sample_ratio_check
from analytics.models import ExperimentDecision
from audiences.contacts import contacts_upsert_rows
from campaigns.content.assignment import assign_variant
from campaigns.models import Campaign, Variant
from campaigns.services import campaign_update
from delivery.fanout import run_create, run_fan_out
from delivery.models import Message, Run
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

CONTENT = {"email": {"subject": "Hello", "html": "<p>Hi</p>"}}


def _contacts(organisation, start: int, stop: int) -> None:
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"s{i}", "email": f"s{i}@example.com"} for i in range(start, stop)],
    )


def _variants(**shares: int) -> list[dict]:
    return [{"name": name, "allocation_percent": share, "content": CONTENT} for name, share in shares.items()]


def _assignments(run) -> dict[int, tuple[str, bool]]:
    messages = Message.objects.filter(run=run).select_related("variant")
    return {m.contact_id: (m.variant.name, m.variant_kept) for m in messages}


@pytest.fixture
def campaign(teammate):
    campaign = CampaignFactory(
        organisation=teammate.organisation,
        channels=["email"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "s"},
    )
    for position, name in enumerate("AB"):
        Variant.objects.create(campaign=campaign, name=name, position=position, allocation_percent=50, content=CONTENT)
    return campaign


def test_assigned_contacts_keep_their_variant_when_the_allocation_changes(teammate, campaign):
    _contacts(teammate.organisation, 0, 1000)
    first = _assignments(run_fan_out(run_create(campaign=campaign).pk))
    assert Counter(name for name, _ in first.values()).keys() == {"A", "B"}
    # Same allocations, next run: the hash alone gives everyone the same variant, nothing is marked as kept.
    again = _assignments(run_fan_out(run_create(campaign=campaign).pk))
    assert again == first
    assert Campaign.objects.get(pk=campaign.pk).allocation_history == []

    campaign_update(actor=teammate.actor, campaign_id=campaign.pk, changes={}, variants=_variants(A=90, B=10))
    campaign.refresh_from_db()
    variants = {v.name: str(v.pk) for v in campaign.variants.all()}
    assert [entry["allocation"] for entry in campaign.allocation_history] == [
        {variants["A"]: 50, variants["B"]: 50},
        {variants["A"]: 90, variants["B"]: 10},
    ]
    _contacts(teammate.organisation, 1000, 2000)
    run = run_fan_out(run_create(campaign=campaign).pk)
    after = _assignments(run)

    new_allocation = [("A", 90), ("B", 10)]
    moved = [c for c, (name, _) in first.items() if assign_variant(str(campaign.pk), c, new_allocation) != name]
    assert len(moved) > 300  # without stickiness these contacts would switch variant
    for contact_id, (name, _) in first.items():
        assert after[contact_id] == (name, True)
    newcomers = {c: v for c, v in after.items() if c not in first}
    assert len(newcomers) == 1000
    for contact_id, (name, kept) in newcomers.items():
        assert (name, kept) == (assign_variant(str(campaign.pk), contact_id, new_allocation), False)
    assert run.excluded == {}

    # Naively every assigned message against 90/10 is a glaring mismatch; the period-aware check is not.
    comparison = experiment_comparison(campaign, "click")
    assigned = [row["assigned"] for row in comparison["variants"]]
    assert sum(assigned) == 4000
    assert sample_ratio_check(assigned, [90, 10]).mismatch
    observed = comparison["sample_ratio_inputs"]["observed"]
    expected = comparison["sample_ratio_inputs"]["weights"]
    newcomer_a = sum(1 for name, _ in newcomers.values() if name == "A")
    first_a = sum(1 for name, _ in first.values() if name == "A")
    # Fresh draws: run 1 and its identical repeat (1000 each at 50/50), then the 1000 newcomers at 90/10.
    assert observed == [2 * first_a + newcomer_a, 2 * (1000 - first_a) + (1000 - newcomer_a)]
    assert expected == pytest.approx([500 + 500 + 900, 500 + 500 + 100])
    assert comparison["sample_ratio"]["mismatch"] is False


def test_a_removed_variant_is_not_kept(teammate, campaign):
    _contacts(teammate.organisation, 0, 400)
    first = _assignments(run_fan_out(run_create(campaign=campaign).pk))
    campaign_update(actor=teammate.actor, campaign_id=campaign.pk, changes={}, variants=_variants(A=100))
    after = _assignments(run_fan_out(run_create(campaign=campaign).pk))
    assert {name for name, _ in after.values()} == {"A"}
    assert {kept for c, (_, kept) in after.items()} == {True, False}
    assert all(kept == (first[c][0] == "A") for c, (_, kept) in after.items())


def test_an_auto_winner_decision_overrides_stickiness(teammate, campaign):
    _contacts(teammate.organisation, 0, 400)
    run_fan_out(run_create(campaign=campaign).pk)
    campaign_update(actor=teammate.actor, campaign_id=campaign.pk, changes={}, variants=_variants(A=80, B=20))
    winner = campaign.variants.get(name="B")
    Variant.objects.filter(campaign=campaign).update(allocation_percent=0)
    Variant.objects.filter(pk=winner.pk).update(allocation_percent=100)
    ExperimentDecision.objects.create(
        campaign=campaign, winner=winner, metric="click", level="0.95", method="test", numbers={}
    )
    after = _assignments(run_fan_out(run_create(campaign=campaign).pk))
    assert set(after.values()) == {("B", False)}


def test_triggered_sends_keep_the_variant_of_earlier_messages(teammate, campaign, django_capture_on_commit_callbacks):
    _contacts(teammate.organisation, 0, 300)
    Campaign.objects.filter(pk=campaign.pk).update(type="triggered", trigger_event="order_completed")
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/").status_code == 200

    def post(ids, prefix):
        events = [{"id": f"{prefix}{i}", "type": "order_completed", "contact": f"s{i}"} for i in ids]
        with django_capture_on_commit_callbacks(execute=False):
            response = teammate.api.post("/api/v1/events/", {"events": events}, format="json")
        assert response.status_code == 202, response.data

    post(range(0, 200), "first-")
    run = Run.objects.get(campaign=campaign, trigger="event")
    first = {m.contact_id: m.variant.name for m in Message.objects.filter(run=run).select_related("variant")}
    assert len(first) == 200

    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/pause/").status_code == 200
    campaign_update(actor=teammate.actor, campaign_id=campaign.pk, changes={}, variants=_variants(A=10, B=90))
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/resume/").status_code == 200

    post(range(0, 300), "second-")
    second = Message.objects.filter(run=run, trigger_key__startswith="second-").select_related("variant")
    assert second.count() == 300
    new_allocation = [("A", 10), ("B", 90)]
    for message in second:
        if message.contact_id in first:
            assert (message.variant.name, message.variant_kept) == (first[message.contact_id], True)
        else:
            expected = assign_variant(str(campaign.pk), message.contact_id, new_allocation)
            assert (message.variant.name, message.variant_kept) == (expected, False)
