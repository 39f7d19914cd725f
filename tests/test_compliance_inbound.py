"""Inbound messages: STOP / START keywords by SMS or WhatsApp (audited preference changes) and WhatsApp's 24-hour
session — free-form WhatsApp only to contacts who wrote within 24 h, approved templates to anyone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.models import Variant
from compliance.models import AuditLogEntry, ContactChannelActivity, ContactPreference
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def contacts(organisation):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"w{i}", "phone": f"+44770090{i:04d}"} for i in range(3)],
    )
    return {c.external_id: c for c in Contact.objects.filter(organisation=organisation)}


def _inbound(persona, *messages):
    return persona.api.post("/api/v1/inbound/", {"messages": list(messages)}, format="json")


def test_stop_turns_the_channel_off_and_start_turns_it_back_on(teammate, contacts):
    response = _inbound(teammate, {"channel": "sms", "from": "+44 7700 900001", "body": " stop "})
    assert response.status_code == 200 and response.data == {"matched": 1, "stopped": 1, "started": 0}
    assert ContactPreference.objects.get(contact=contacts["w1"]).disabled_channels == ["sms"]
    entry = AuditLogEntry.objects.get(action="contact.preferences")
    assert entry.details == {"source": "sms_stop", "changes": {"disabled_channels": [[], ["sms"]]}}
    assert _inbound(teammate, {"channel": "sms", "from": "+447700900001", "body": "STOP"}).data["stopped"] == 0
    assert _inbound(teammate, {"channel": "sms", "from": "+447700900001", "body": "START"}).data["started"] == 1
    assert ContactPreference.objects.get(contact=contacts["w1"]).disabled_channels == []
    # Ordinary replies and unknown numbers change no preference.
    assert _inbound(teammate, {"channel": "sms", "from": "+447700900002", "body": "stop sending me this"}).data == {
        "matched": 1,
        "stopped": 0,
        "started": 0,
    }
    assert _inbound(teammate, {"channel": "sms", "from": "+447700909999", "body": "STOP"}).data["matched"] == 0
    assert AuditLogEntry.objects.filter(action="contact.preferences").count() == 2


def test_bad_inbound_messages_are_400s(teammate, contacts):
    response = _inbound(teammate, {"channel": "fax", "from": "12"})
    assert response.status_code == 400
    assert teammate.api.post("/api/v1/inbound/", {"messages": []}, format="json").status_code == 400
    assert not ContactChannelActivity.objects.exists()


def test_inbound_only_touches_the_callers_organisation(outsider, contacts, anonymous):
    assert _inbound(outsider, {"channel": "sms", "from": "+447700900001", "body": "STOP"}).data["matched"] == 0
    assert anonymous.post("/api/v1/inbound/", {"messages": []}, format="json").status_code == 401
    assert not ContactPreference.objects.exists()


def _whatsapp_run(persona, organisation, content, capture) -> Run:
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["whatsapp"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "w"},
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content={"whatsapp": content})
    with capture(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with capture(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=60)
    return run


def test_free_form_whatsapp_only_inside_the_24_hour_session(
    teammate, contacts, settings, django_capture_on_commit_callbacks
):
    settings.WHATSAPP_SESSION_RULE = True
    now = timezone.now()
    _inbound(
        teammate,
        {"channel": "whatsapp", "from": "+447700900000", "body": "hi", "received_at": now - timedelta(hours=2)},
    )
    _inbound(
        teammate,
        {"channel": "whatsapp", "from": "+447700900001", "body": "hi", "received_at": now - timedelta(hours=25)},
    )
    _inbound(teammate, {"channel": "sms", "from": "+447700900002", "body": "hi"})  # SMS opens no WhatsApp session
    run = _whatsapp_run(teammate, teammate.organisation, {"body": "Hello"}, django_capture_on_commit_callbacks)
    outcome = {
        m.contact.external_id: (m.status, m.error) for m in Message.objects.filter(run=run).select_related("contact")
    }
    assert outcome["w0"][0] == "delivered"
    assert outcome["w1"] == outcome["w2"] == ("skipped", "whatsapp_session_closed")
    # An approved template goes to everyone.
    template = {"template_name": "order_update", "template_language": "en"}
    run = _whatsapp_run(teammate, teammate.organisation, template, django_capture_on_commit_callbacks)
    assert set(Message.objects.filter(run=run).values_list("status", flat=True)) == {"delivered"}
