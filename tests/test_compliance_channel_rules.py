"""Channel rules: marketing SMS only 08:00-21:00 in the recipient's timezone (deferred otherwise), and the
complaint-rate guard for marketing email (alert above 0.1 %, hold above 0.3 %, released from the console)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import connection
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.models import Variant
from compliance.models import AuditLogEntry, SendingHold
from delivery import runs, sending
from delivery.complaints import complaint_rate_check
from delivery.models import Message, Run
from delivery.tasks import complaint_rate_check_task
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db


def _zone_at(local_hour: int) -> str:
    """An IANA zone (fixed offset, no DST) where it is now `local_hour` o'clock, give or take the minutes."""
    utc_hour = timezone.now().astimezone(dt.UTC).hour
    offset = (local_hour - utc_hour + 12) % 24 - 12  # -12..11
    # Etc/GMT signs are inverted: Etc/GMT-3 is UTC+3.
    return "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def _campaign(organisation, *, channels, category="marketing"):
    campaign = CampaignFactory(
        organisation=organisation,
        channels=channels,
        category=category,
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "c"},
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    content = {"email": {"subject": "Hi", "html": "<p>Hi</p>"}, "sms": {"body": "Hi"}}
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={c: content[c] for c in channels}
    )
    return campaign


def _send(persona, campaign, capture) -> Run:
    with capture(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with capture(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=60)
    run.refresh_from_db()
    return run


@pytest.mark.parametrize("category", ["marketing", "transactional"])
def test_marketing_sms_waits_for_08_00_local_time(teammate, category, settings, django_capture_on_commit_callbacks):
    settings.MARKETING_SMS_WINDOW = "08:00-21:00"
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "c-night", "phone": "+447700900001", "timezone": _zone_at(3)},
            {"external_id": "c-day", "phone": "+447700900002", "timezone": _zone_at(12)},
        ],
    )
    run = _send(
        teammate, _campaign(organisation, channels=["sms"], category=category), django_capture_on_commit_callbacks
    )
    night = Message.objects.get(run=run, contact__external_id="c-night")
    day = Message.objects.get(run=run, contact__external_id="c-day")
    assert day.status == "delivered"
    if category == "transactional":
        assert night.status == "delivered"
        return
    assert night.status == "queued" and night.attempts == 0
    wait_hours = (night.due_at - timezone.now()).total_seconds() / 3600
    assert 4 < wait_hours <= 5 + 1 / 60  # from 03:xx until 08:00 local


def _fake_email_history(run, *, complaints: int) -> None:
    """Sent emails and complaint events in the last hour, as sending and receipts write them."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE delivery_message SET status = 'delivered', sent_at = %s WHERE run_id = %s", [now, str(run.pk)]
        )
        cursor.execute("UPDATE delivery_run SET last_progress_at = %s WHERE id = %s", [now, str(run.pk)])
    ids = list(Message.objects.filter(run=run).values_list("id", "variant_id", "contact_id")[:complaints])
    rows = [{"m": m, "v": str(v), "c": c} for m, v, c in ids]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO analytics_engagementevent (organisation_id, campaign_id, run_id, message_id, variant_id,"
            " contact_id, channel, kind, occurred_at, is_machine, value, dedupe_key)"
            " SELECT %s, %s, %s, u.m, u.v, u.c, 'email', 'complaint', %s, false, NULL, 'test:' || u.m"
            " FROM json_to_recordset(%s::json) AS u(m bigint, v uuid, c bigint)",
            [str(run.organisation_id), str(run.campaign_id), str(run.pk), now, json.dumps(rows)],
        )


@pytest.fixture
def email_run(teammate, settings, django_capture_on_commit_callbacks):
    settings.COMPLAINT_RATE_MIN_SENT = 1000
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(1000)]
    )
    campaign = _campaign(organisation, channels=["email"])
    with django_capture_on_commit_callbacks(execute=False):
        teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
    run = Run.objects.get(campaign=campaign)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    return run


def test_the_complaint_rate_alerts_above_a_tenth_of_a_percent(teammate, email_run):
    organisation = teammate.organisation
    _fake_email_history(email_run, complaints=1)
    assert complaint_rate_check(organisation) == "ok"  # 0.1 % is not above 0.1 %
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM analytics_engagementevent WHERE dedupe_key LIKE 'test:%%'")
    _fake_email_history(email_run, complaints=2)
    assert complaint_rate_check(organisation) == "alert"
    assert complaint_rate_check(organisation) == "alert"
    alerts = AuditLogEntry.objects.filter(action="compliance.complaint_rate_alert")
    assert alerts.count() == 1  # once a day, not on every check
    assert alerts.get().details == {"sent": 1000, "complaints": 2, "rate": 0.002}
    assert not SendingHold.objects.exists()


def test_above_three_tenths_marketing_email_is_held_until_released(
    teammate, owner, email_run, django_capture_on_commit_callbacks
):
    organisation = teammate.organisation
    _fake_email_history(email_run, complaints=4)
    assert complaint_rate_check_task() == {"hold": 1}
    assert complaint_rate_check(organisation) == "held"
    hold = SendingHold.objects.get()
    assert (hold.channel, hold.category, hold.released_at) == ("email", "marketing", None)
    assert AuditLogEntry.objects.filter(action="compliance.sending_hold").count() == 1

    # A new marketing email run waits; a transactional one goes.
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "c-new", "email": "new@example.com"}])
    marketing = _campaign(organisation, channels=["email"])
    marketing.audience_rules = {"field": "external_id", "op": "eq", "value": "c-new"}
    marketing.save()
    held_run = _send(teammate, marketing, django_capture_on_commit_callbacks)
    waiting = Message.objects.get(run=held_run)
    assert waiting.status == "queued" and waiting.due_at > timezone.now()
    receipt = _campaign(organisation, channels=["email"], category="transactional")
    receipt.audience_rules = {"field": "external_id", "op": "eq", "value": "c-new"}
    receipt.save()
    assert Message.objects.get(run=_send(teammate, receipt, django_capture_on_commit_callbacks)).status == "delivered"

    page = console_client(teammate).get("/compliance/suppressions/").content.decode()
    assert "Marketing email is on hold" in page
    assert console_client(teammate).post(f"/compliance/holds/{hold.pk}/release/").status_code == 302
    hold.refresh_from_db()
    assert hold.released_at is not None and hold.released_by == teammate.membership.user.username
    assert AuditLogEntry.objects.filter(action="compliance.sending_hold_release").count() == 1
    Message.objects.filter(pk=waiting.pk).update(due_at=timezone.now())
    sending.run_send_for(held_run.pk, seconds=60)
    assert Message.objects.get(pk=waiting.pk).status == "delivered"


def test_few_sends_are_not_judged(teammate, settings):
    settings.COMPLAINT_RATE_MIN_SENT = 1000
    assert complaint_rate_check(teammate.organisation) == "too_few"
    assert Contact.objects.count() == 0
