"""GDPR: export everything held about a contact; erase one (PII gone, messages and events anonymised, metrics
unchanged, the address kept suppressed by keyed hash so a later import of it is not sent to), audited."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from analytics.models import EngagementEvent
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Event
from audiences.pii import pii_hash
from campaigns.content import links
from campaigns.models import Variant
from compliance import services
from compliance.models import AuditLogEntry, ContactPreference, Suppression, Unsubscribe
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


def _campaign(organisation, name="Launch"):
    campaign = CampaignFactory(
        organisation=organisation,
        name=name,
        channels=["email", "sms"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "g"},
        sandbox_profile={"failed": 0, "bounced": 0, "engagement": {"open": 1, "machine_open": 0, "click": 0}},
    )
    content = {"email": {"subject": "Hi", "html": "<p>Hi {{ contact.first_name }}</p>"}, "sms": {"body": "Hi"}}
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    return campaign


def _send(persona, campaign, capture) -> Run:
    with capture(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.filter(campaign=campaign).order_by("-number").first()
    with capture(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=60)
    run.refresh_from_db()
    return run


@pytest.fixture
def sent(owner, organisation, django_capture_on_commit_callbacks):
    rows = [
        {
            "external_id": f"g{i}",
            "email": f"G{i}@Example.com",
            "phone": f"+4477009{i:05d}",
            "first_name": f"Gee{i}",
            "attributes": {"plan": "pro"},
        }
        for i in range(4)
    ]
    contacts_upsert_rows(organisation=organisation, rows=rows)
    contacts = {c.external_id: c for c in Contact.objects.filter(organisation=organisation)}
    target = contacts["g1"]
    services.preference_update(
        actor=owner.actor, contact=target, changes={"disabled_channels": ["whatsapp"]}, source="api"
    )
    Event.objects.create(
        organisation=organisation,
        event_id="e1",
        type="purchase",
        contact_id=target.pk,
        properties={"card": "4242"},
        occurred_at=target.created_at,
        received_at=target.created_at,
    )
    campaign = _campaign(organisation)
    run = _send(owner, campaign, django_capture_on_commit_callbacks)
    message = Message.objects.get(run=run, contact=target, channel="email")
    Client().post(
        f"/u/{links.unsubscribe_token(str(organisation.pk), str(target.pk), str(message.pk))}", {"reason": "too_many"}
    )
    return {"contacts": contacts, "target": target, "campaign": campaign, "run": run}


def test_export_holds_everything_about_the_contact(owner, sent):
    target = sent["target"]
    response = owner.api.get(f"/api/v1/contacts/{target.pk}/export/")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="contact-{target.pk}.json"'
    data = response.json()
    assert data["contact"]["external_id"] == "g1" and data["contact"]["email"] == target.email
    assert data["contact"]["attributes"] == {"plan": "pro"}
    assert data["preferences"]["disabled_channels"] == ["whatsapp"] and data["preferences"]["unsubscribed"] is True
    assert [u["reason"] for u in data["unsubscribes"]] == ["Too many emails"]
    assert {m["channel"] for m in data["messages"]} == {"email", "sms"}
    assert {m["campaign"] for m in data["messages"]} == {"Launch"}
    kinds = {e["kind"] for e in data["engagement"]}
    assert "unsubscribe" in kinds and "open" in kinds
    assert data["events"][0]["properties"] == {"card": "4242"}
    assert data["inbound"] == []
    assert {"contact.preferences", "contact.unsubscribe"} <= {a["action"] for a in data["audit"]}
    assert AuditLogEntry.objects.filter(action="contact.export", target_id=str(target.pk)).count() == 1


def test_export_and_erase_are_scoped_and_for_admins_and_compliance(teammate, outsider, anonymous, sent):
    target = sent["target"]
    assert outsider.api.get(f"/api/v1/contacts/{target.pk}/export/").status_code == 404
    assert outsider.api.post(f"/api/v1/contacts/{target.pk}/erase/").status_code == 404
    assert teammate.api.get(f"/api/v1/contacts/{target.pk}/export/").status_code == 403
    assert teammate.api.post(f"/api/v1/contacts/{target.pk}/erase/").status_code == 403
    assert anonymous.post(f"/api/v1/contacts/{target.pk}/erase/").status_code == 401
    assert Contact.objects.filter(pk=target.pk).exists()


def _metric_totals(campaign_id) -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT metric, sum(count) FROM analytics_metricdelta WHERE campaign_id = %s GROUP BY metric",
            [str(campaign_id)],
        )
        return {metric: int(total) for metric, total in cursor.fetchall()}


def test_erase_removes_pii_anonymises_history_and_keeps_counts(owner, sent):
    target, run, campaign = sent["target"], sent["run"], sent["campaign"]
    Suppression.objects.create(organisation=target.organisation, address=target.phone, reason="manual")
    services_audit = AuditLogEntry.objects.filter(target_type="audiences.contact", target_id=str(target.pk))
    before_metrics = _metric_totals(campaign.pk)
    before_messages = Message.objects.filter(run=run).count()
    before_events = EngagementEvent.objects.filter(run_id=run.pk).count()
    before_run = (run.sent_count, run.delivered_count)
    metrics_before = owner.api.get(f"/api/v1/campaigns/{campaign.pk}/metrics/").data["counts"]

    response = owner.api.post(f"/api/v1/contacts/{target.pk}/erase/")
    assert response.status_code == 200
    assert response.data["anonymised"]["messages"] == 2 and response.data["anonymised"]["events"] == 1

    assert not Contact.objects.filter(pk=target.pk).exists()
    assert not ContactPreference.objects.filter(contact_id=target.pk).exists()
    assert Unsubscribe.objects.get().contact_id is None  # still counted for the campaign
    assert not Message.objects.filter(contact_id=target.pk).exists()
    assert not EngagementEvent.objects.filter(contact_id=target.pk).exists()
    surrogates = set(Message.objects.filter(run=run, contact_id__lt=0).values_list("contact_id", flat=True))
    assert len(surrogates) == 1
    assert set(EngagementEvent.objects.filter(contact_id__lt=0).values_list("contact_id", flat=True)) == surrogates
    event = Event.objects.get(event_id="e1")
    assert event.properties == {} and event.contact_id in surrogates
    # Counts and metrics are unchanged.
    assert Message.objects.filter(run=run).count() == before_messages
    assert EngagementEvent.objects.filter(run_id=run.pk).count() == before_events
    run.refresh_from_db()
    assert (run.sent_count, run.delivered_count) == before_run
    assert _metric_totals(campaign.pk) == before_metrics
    assert owner.api.get(f"/api/v1/campaigns/{campaign.pk}/metrics/").data["counts"] == metrics_before
    # Addresses survive only as keyed hashes.
    suppressions = dict(Suppression.objects.values_list("address", "reason"))
    expected = {
        pii_hash("g1@example.com"): "erased",
        pii_hash(target.phone): "erased",
    }
    assert suppressions == expected
    key = hmac.new(settings.SECRET_KEY.encode(), b"campaign-service.compliance.erased-address", hashlib.sha256).digest()
    assert pii_hash("g1@example.com") == "h:" + hmac.new(key, b"g1@example.com", "sha256").hexdigest()
    # Nothing quotes the person any more.
    for entry in AuditLogEntry.objects.all():
        text = f"{entry.target_repr} {entry.details}"
        assert "g1@example.com" not in text.lower() and target.phone not in text
    assert set(services_audit.values_list("target_repr", flat=True)) == {"erased contact"}
    erase = AuditLogEntry.objects.get(action="contact.erase")
    assert erase.target_id == str(target.pk) and erase.details["messages"] == 2 and erase.actor_label


def test_an_erased_address_imported_again_is_suppressed_at_fan_out_and_send_time(
    owner, sent, django_capture_on_commit_callbacks
):
    target = sent["target"]
    assert owner.api.post(f"/api/v1/contacts/{target.pk}/erase/").status_code == 200
    # The same person comes back in an import, with a differently cased email.
    contacts_upsert_rows(
        organisation=target.organisation,
        rows=[{"external_id": "g1-again", "email": "g1@EXAMPLE.com", "phone": target.phone}],
    )
    again = Contact.objects.get(external_id="g1-again")
    run = _send(owner, _campaign(target.organisation, name="Second"), django_capture_on_commit_callbacks)
    assert run.excluded.get("suppressed") == 2
    assert not Message.objects.filter(run=run, contact=again).exists()

    # Imported after fan-out: the send-time claim refuses it too.
    campaign = _campaign(target.organisation, name="Third")
    with django_capture_on_commit_callbacks(execute=False):
        owner.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
    third = Run.objects.get(campaign=campaign)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(third.pk)
    # The claim sees the address the contact has when it sends: erase a contact whose message is queued.
    queued_contact = sent["contacts"]["g2"]
    assert Message.objects.filter(run=third, contact=queued_contact, status="queued").count() == 2
    Suppression.objects.create(
        organisation=target.organisation, address=pii_hash(queued_contact.email.lower()), reason="erased"
    )
    sending.run_send_for(third.pk, seconds=60)
    email = Message.objects.get(run=third, contact=queued_contact, channel="email")
    sms = Message.objects.get(run=third, contact=queued_contact, channel="sms")
    assert (email.status, email.error) == ("skipped", "suppressed")
    assert sms.status == "delivered"


def test_the_console_exports_and_erases_with_confirmation(owner, teammate, outsider, sent):
    from tests.factories import console_client

    target = sent["target"]
    client = console_client(owner)
    page = client.get(f"/compliance/contacts/{target.pk}/").content.decode()
    assert "Erase contact" in page
    assert "Erase contact" not in console_client(teammate).get(f"/compliance/contacts/{target.pk}/").content.decode()
    export = client.get(f"/compliance/contacts/{target.pk}/export.json")
    assert export.status_code == 200 and export.json()["contact"]["external_id"] == "g1"
    assert console_client(outsider).get(f"/compliance/contacts/{target.pk}/export.json").status_code == 404
    assert (
        console_client(outsider).post(f"/compliance/contacts/{target.pk}/erase/", {"confirm": "erase"}).status_code
        == 404
    )
    assert (
        console_client(teammate).post(f"/compliance/contacts/{target.pk}/erase/", {"confirm": "erase"}).status_code
        == 403
    )
    assert client.post(f"/compliance/contacts/{target.pk}/erase/", {"confirm": "yes"}).status_code == 302
    assert Contact.objects.filter(pk=target.pk).exists()
    assert client.post(f"/compliance/contacts/{target.pk}/erase/", {"confirm": "erase"}).status_code == 302
    assert not Contact.objects.filter(pk=target.pk).exists()
    assert AuditLogEntry.objects.filter(action="contact.erase").count() == 1
