"""Fan-out: one message row per recipient and channel, set-based, idempotent, with variants, holdout and control."""

from __future__ import annotations

from collections import Counter

import pytest

from audiences.contacts import contacts_upsert_rows
from campaigns.audience import audience_in_holdout
from campaigns.content.assignment import assign_variant
from campaigns.models import Variant
from delivery.fanout import run_create, run_fan_out
from delivery.models import Message
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

N = 3000


@pytest.fixture
def campaign(organisation):
    rows = [
        {
            "external_id": f"f{i}",
            "email": f"f{i}@example.com" if i % 10 else "",
            "phone": f"+4477009{i:05d}" if i % 3 == 0 else "",
        }
        for i in range(N)
    ]
    for start in range(0, N, 1000):
        contacts_upsert_rows(organisation=organisation, rows=rows[start : start + 1000])
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email", "sms", "in_app"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "f"},
        holdout_percent=10,
    )
    for position, (name, share, control) in enumerate([("A", 45, False), ("B", 45, False), ("Ctl", 10, True)]):
        Variant.objects.create(
            campaign=campaign, name=name, position=position, allocation_percent=share, is_control=control
        )
    return campaign


def test_fan_out_writes_the_right_rows(campaign):
    run = run_fan_out(run_create(campaign=campaign).pk)
    messages = list(Message.objects.filter(run=run).select_related("contact", "variant"))
    variants = list(campaign.variants.order_by("position"))
    allocations = [(v.name, v.allocation_percent) for v in variants]
    for message in messages:
        # The SQL assignment and holdout agree with the Python functions, contact by contact.
        assert message.variant.name == assign_variant(str(campaign.pk), message.contact_id, allocations)
        expected_status = (
            "holdout"
            if audience_in_holdout(campaign, message.contact_id)
            else "control"
            if message.variant.is_control
            else "queued"
        )
        assert message.status == expected_status
    by_channel = Counter(m.channel for m in messages)
    assert by_channel == {"in_app": N, "email": N - N // 10, "sms": N // 3}
    assert run.audience_count == N
    assert run.excluded == {"no_email": N // 10, "no_phone": N - N // 3}
    assert run.holdout_count == sum(audience_in_holdout(campaign, c) for c in {m.contact_id for m in messages})
    assert run.message_count == sum(1 for m in messages if m.status == "queued")
    assert run.status == "ready"


def test_fan_out_is_idempotent(campaign):
    run = run_create(campaign=campaign)
    first = run_fan_out(run.pk)
    count = Message.objects.filter(run=run).count()
    Message.objects.filter(run=run, channel="sms").delete()  # as if a worker died half-way
    type(run).objects.filter(pk=run.pk).update(status="fanning_out")
    again = run_fan_out(run.pk)
    assert Message.objects.filter(run=run).count() == count
    assert again.message_count == first.message_count
    assert run_fan_out(run.pk) is None  # finished runs are not fanned out again


def test_runs_are_numbered_per_campaign(campaign):
    assert [run_create(campaign=campaign).number for _ in range(3)] == [1, 2, 3]


def test_purging_a_campaign_and_deleting_a_contact_remove_their_messages(campaign, teammate):
    from datetime import timedelta

    from django.utils import timezone

    from audiences.models import Contact
    from audiences.services import contact_delete
    from campaigns.models import Campaign
    from campaigns.services import campaigns_purge_deleted
    from delivery.models import Run

    run = run_fan_out(run_create(campaign=campaign).pk)
    contact = Contact.objects.get(external_id="f3")
    contact_delete(actor=teammate.actor, contact=contact)
    assert not Message.objects.filter(contact_id=contact.pk).exists()
    assert Message.objects.filter(run=run).exists()
    Campaign.objects.filter(pk=campaign.pk).update(deleted_at=timezone.now() - timedelta(days=31))
    assert campaigns_purge_deleted() == 1
    assert not Message.objects.filter(run_id=run.pk).exists()
    assert not Run.objects.filter(pk=run.pk).exists()
