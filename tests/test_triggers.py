"""Triggered campaigns: an event posted to the API becomes a message at the sandbox provider; conditions, audience
membership at trigger time, frequency limits, delays and quiet hours (defer / skip, across DST), pause and
deactivate, idempotent event ids, and every decision counted."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Campaign, Variant
from campaigns.trigger_conditions import compile_conditions
from config.metrics import count as metrics_count
from delivery import runs, sending
from delivery.models import Message, Run, SandboxHandoff
from delivery.triggers import trigger_decisions
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/events/"


@pytest.fixture
def contacts(organisation):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "ana", "email": "ana@example.com", "attributes": {"plan": "pro"}},
            {"external_id": "ben", "email": "ben@example.com", "attributes": {"plan": "free"}},
            {"external_id": "tokyo", "email": "t@example.com", "timezone": "Asia/Tokyo", "attributes": {"plan": "pro"}},
        ],
    )


def _campaign(persona, capture, **fields) -> Campaign:
    campaign = CampaignFactory(
        organisation=persona.organisation,
        type="triggered",
        trigger_event="order_completed",
        variants=False,
        sandbox_profile={"failed": 0, "bounced": 0},
        audience_rules={"field": "email", "op": "exists"},
        **fields,
    )
    Variant.objects.create(
        campaign=campaign,
        name="A",
        allocation_percent=100,
        content={"email": {"subject": "Thanks {{ contact.external_id }}", "html": "<p>Order received</p>"}},
    )
    with capture(execute=False):
        response = persona.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/")
    assert response.status_code == 200, response.data
    return campaign


def _post(persona, capture, *events, execute=True):
    with capture(execute=False) as callbacks:
        response = persona.api.post(EVENTS, {"events": list(events)}, format="json")
    assert response.status_code == 202, response.data
    return response, callbacks


def _send(campaign):
    run = Run.objects.get(campaign=campaign, trigger="event")
    sending.run_send_for(run.pk, seconds=10)
    return run


def test_an_event_posted_to_the_api_becomes_a_message_at_the_provider(
    teammate, contacts, django_capture_on_commit_callbacks
):
    campaign = _campaign(teammate, django_capture_on_commit_callbacks)
    run = Run.objects.get(campaign=campaign)
    assert run.trigger == "event" and run.status == "sending"
    _, callbacks = _post(
        teammate, django_capture_on_commit_callbacks, {"id": "o-1", "type": "order_completed", "contact": "ana"}
    )
    assert callbacks, "workers are asked to send right after the event is stored"
    _send(campaign)
    message = Message.objects.get(run=run)
    assert message.status == "delivered" and message.trigger_key == "o-1"
    assert SandboxHandoff.objects.filter(idempotency_key=f"{run.pk}:{message.contact_id}:email:o-1").exists()
    # The same event again (a retry at the sender) changes nothing; a new event sends again.
    _post(teammate, django_capture_on_commit_callbacks, {"id": "o-1", "type": "order_completed", "contact": "ana"})
    _post(teammate, django_capture_on_commit_callbacks, {"id": "o-2", "type": "order_completed", "contact": "ana"})
    _send(campaign)
    assert Message.objects.filter(run=run, status="delivered").count() == 2
    assert trigger_decisions(campaign) == {"matched": 2, "queued": 2}
    runs.run_finish_if_done(run.pk)
    assert Run.objects.get(pk=run.pk).status == "sending"  # the standing run stays open


@pytest.mark.parametrize(
    ("conditions", "properties", "expected"),
    [
        ({"property": "total", "op": "gt", "value": 50}, {"total": 60}, True),
        ({"property": "total", "op": "gt", "value": 50}, {"total": "40"}, False),
        ({"property": "total", "op": "lt", "value": 50}, {"total": 40.5}, True),
        ({"property": "total", "op": "lt", "value": 50}, {}, False),
        ({"property": "currency", "op": "eq", "value": "EUR"}, {"currency": "EUR"}, True),
        ({"property": "currency", "op": "neq", "value": "EUR"}, {"currency": "USD"}, True),
        ({"property": "currency", "op": "neq", "value": "EUR"}, {}, True),
        ({"property": "sku", "op": "contains", "value": "shoe"}, {"sku": "RUNNING-SHOE-42"}, True),
        ({"property": "tags", "op": "contains", "value": "gift"}, {"tags": ["gift", "sale"]}, True),
        ({"property": "coupon", "op": "exists"}, {"coupon": "X1"}, True),
        ({"property": "coupon", "op": "exists"}, {"coupon": None}, False),
        ({"property": "cart.total", "op": "gt", "value": 10}, {"cart": {"total": 11}}, True),
        (
            {
                "or": [
                    {"property": "total", "op": "gt", "value": 100},
                    {
                        "and": [
                            {"property": "vip", "op": "eq", "value": True},
                            {"property": "total", "op": "gt", "value": 10},
                        ]
                    },
                ]
            },
            {"vip": True, "total": 20},
            True,
        ),
        (
            {
                "and": [
                    {"property": "total", "op": "gt", "value": 10},
                    {"property": "currency", "op": "eq", "value": "EUR"},
                ]
            },
            {"total": 20, "currency": "USD"},
            False,
        ),
    ],
)
def test_conditions(conditions, properties, expected):
    assert compile_conditions(conditions)(properties) is expected


def test_bad_conditions_are_400s_naming_the_node(teammate):
    response = teammate.api.post(
        "/api/v1/campaigns/",
        {
            "name": "T",
            "type": "triggered",
            "trigger_event": "x",
            "trigger_conditions": {
                "and": [{"property": "a", "op": "between", "value": 1}, {"op": "gt", "value": "no"}]
            },
        },
        format="json",
    )
    assert response.status_code == 400
    text = " ".join(response.data["trigger_conditions"])
    assert "/and/0/op" in text and "/and/1/property" in text


def test_conditions_audience_and_frequency_decide_and_are_counted(
    teammate, contacts, django_capture_on_commit_callbacks
):
    campaign = _campaign(
        teammate,
        django_capture_on_commit_callbacks,
        trigger_conditions={"property": "total", "op": "gt", "value": 50},
        frequency_limit="24h",
    )
    Campaign.objects.filter(pk=campaign.pk).update(
        audience_rules={"field": "attributes.plan", "op": "eq", "value": "pro"}
    )
    _post(
        teammate,
        django_capture_on_commit_callbacks,
        {"id": "1", "type": "order_completed", "contact": "ana", "properties": {"total": 80}},
        {"id": "2", "type": "order_completed", "contact": "ana", "properties": {"total": 90}},  # capped (24 h)
        {"id": "3", "type": "order_completed", "contact": "ana", "properties": {"total": 20}},  # condition
        {"id": "4", "type": "order_completed", "contact": "ben", "properties": {"total": 99}},  # not in audience
        {"id": "5", "type": "page_view", "contact": "ana"},  # another type: not matched at all
    )
    run = _send(campaign)
    assert Message.objects.filter(run=run).count() == 1
    assert trigger_decisions(campaign) == {
        "matched": 4,
        "filtered_by_condition": 1,
        "not_in_audience": 1,
        "capped": 1,
        "queued": 1,
    }
    # Membership is checked when the event happens: ben upgrades, and his next event counts.
    contacts_upsert_rows(
        organisation=teammate.organisation, rows=[{"external_id": "ben", "attributes": {"plan": "pro"}}]
    )
    _post(
        teammate,
        django_capture_on_commit_callbacks,
        {"id": "6", "type": "order_completed", "contact": "ben", "properties": {"total": 99}},
    )
    assert Message.objects.filter(run=run).count() == 2


@pytest.mark.parametrize(
    ("limit", "age", "capped"),
    [
        ("1h", timedelta(minutes=59), True),
        ("1h", timedelta(minutes=61), False),
        ("24h", timedelta(hours=23), True),
        ("24h", timedelta(hours=25), False),
        ("7d", timedelta(days=6), True),
        ("7d", timedelta(days=8), False),
        ("30d", timedelta(days=29), True),
        ("30d", timedelta(days=31), False),
        ("ever", timedelta(days=900), True),
        ("none", timedelta(seconds=1), False),
    ],
)
def test_every_frequency_window(teammate, contacts, django_capture_on_commit_callbacks, limit, age, capped):
    campaign = _campaign(teammate, django_capture_on_commit_callbacks, frequency_limit=limit)
    _post(teammate, django_capture_on_commit_callbacks, {"id": "first", "type": "order_completed", "contact": "ana"})
    run = Run.objects.get(campaign=campaign)
    Message.objects.filter(run=run).update(created_at=timezone.now() - age)
    _post(teammate, django_capture_on_commit_callbacks, {"id": "second", "type": "order_completed", "contact": "ana"})
    assert Message.objects.filter(run=run).count() == (1 if capped else 2)


def test_a_delay_makes_a_due_row_the_pump_sends_later(teammate, contacts, django_capture_on_commit_callbacks):
    campaign = _campaign(teammate, django_capture_on_commit_callbacks, trigger_delay_seconds=3600)
    _, callbacks = _post(
        teammate, django_capture_on_commit_callbacks, {"id": "d1", "type": "order_completed", "contact": "ana"}
    )
    # Nothing to send now: the one thing left for the commit is counting the event for /metrics.
    assert [(callback.func, callback.args) for callback in callbacks] == [(metrics_count, ("events_ingested", 1))]
    run = Run.objects.get(campaign=campaign)
    message = Message.objects.get(run=run)
    assert timedelta(minutes=59) < message.due_at - timezone.now() <= timedelta(hours=1)
    assert sending.run_send_batch(run.pk).claimed == 0
    Message.objects.filter(pk=message.pk).update(due_at=timezone.now())
    Run.objects.filter(pk=run.pk).update(last_progress_at=timezone.now() - timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=False) as kicked:
        assert runs.delivery_pump()["kicked"] == 1
    assert kicked
    _send(campaign)
    assert Message.objects.get(pk=message.pk).status == "delivered"


def _quiet_campaign(persona, capture, policy):
    return _campaign(
        persona, capture, quiet_hours_start=time(21, 0), quiet_hours_end=time(8, 0), quiet_hours_policy=policy
    )


def test_quiet_hours_defer_to_their_end_in_the_contacts_zone(
    teammate, contacts, django_capture_on_commit_callbacks, monkeypatch
):
    campaign = _quiet_campaign(teammate, django_capture_on_commit_callbacks, "defer")
    # 23:30 in Tokyo (14:30 UTC): quiet until 08:00 JST = 23:00 UTC.
    now = datetime(2026, 11, 25, 14, 30, tzinfo=UTC)
    monkeypatch.setattr(timezone, "now", lambda: now)
    _post(
        teammate,
        django_capture_on_commit_callbacks,
        {"id": "q1", "type": "order_completed", "contact": "tokyo", "occurred_at": now.isoformat()},
        {"id": "q2", "type": "order_completed", "contact": "ana", "occurred_at": now.isoformat()},
    )
    run = Run.objects.get(campaign=campaign)
    due = {m.contact.external_id: m.due_at for m in Message.objects.filter(run=run).select_related("contact")}
    assert due["tokyo"] == datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
    assert due["ana"] == now  # 14:30 in London: not quiet
    assert trigger_decisions(campaign)["deferred_quiet_hours"] == 1


def test_quiet_hours_across_the_autumn_change_and_the_skip_policy(
    teammate, contacts, django_capture_on_commit_callbacks, monkeypatch
):
    campaign = _quiet_campaign(teammate, django_capture_on_commit_callbacks, "defer")
    # Sunday 25 October 2026, 00:30 UTC = 01:30 BST (before the change, London): quiet until 08:00 GMT = 08:00 UTC.
    now = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    monkeypatch.setattr(timezone, "now", lambda: now)
    _post(
        teammate,
        django_capture_on_commit_callbacks,
        {"id": "a1", "type": "order_completed", "contact": "ana", "occurred_at": now.isoformat()},
    )
    message = Message.objects.get(run__campaign=campaign)
    assert message.due_at == datetime(2026, 10, 25, 8, 0, tzinfo=UTC)
    skipper = _quiet_campaign(teammate, django_capture_on_commit_callbacks, "skip")
    Campaign.objects.filter(pk=skipper.pk).update(trigger_event="late_event")
    _post(
        teammate,
        django_capture_on_commit_callbacks,
        {"id": "s1", "type": "late_event", "contact": "ana", "occurred_at": now.isoformat()},
    )
    assert not Message.objects.filter(run__campaign=skipper).exists()
    assert trigger_decisions(skipper) == {"matched": 1, "skipped_quiet_hours": 1}


def test_pause_keeps_pending_sends_and_deactivating_cancels_them(
    teammate, contacts, django_capture_on_commit_callbacks
):
    campaign = _campaign(teammate, django_capture_on_commit_callbacks, trigger_delay_seconds=600)
    _post(teammate, django_capture_on_commit_callbacks, {"id": "p1", "type": "order_completed", "contact": "ana"})
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/pause/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    assert run.status == "paused" and Message.objects.get(run=run).status == "queued"
    _post(teammate, django_capture_on_commit_callbacks, {"id": "p2", "type": "order_completed", "contact": "ben"})
    assert Message.objects.filter(run=run).count() == 1  # paused: no new sends
    assert trigger_decisions(campaign)["ignored_paused"] == 1
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/resume/").status_code == 200
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/complete/").status_code == 200
    run.refresh_from_db()
    assert run.status == "completed" and run.cancelled_count == 1
    assert Message.objects.get(run=run).status == "cancelled"


def test_activation_needs_an_event(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, type="triggered", trigger_event="")
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/")
    assert response.status_code == 400 and "trigger_event" in response.data


def test_the_campaign_page_shows_the_decisions(teammate, contacts, django_capture_on_commit_callbacks):
    from tests.factories import console_client

    campaign = _campaign(
        teammate, django_capture_on_commit_callbacks, trigger_conditions={"property": "total", "op": "gt", "value": 5}
    )
    _post(
        teammate,
        django_capture_on_commit_callbacks,
        {"id": "c1", "type": "order_completed", "contact": "ana", "properties": {"total": 1}},
    )
    panel = console_client(teammate).get(f"/delivery/campaigns/{campaign.pk}/runs/").content.decode()
    assert "filtered by a condition: <strong>1</strong>" in panel and "events matched: <strong>1</strong>" in panel


# --- organisation-wide frequency caps -------------------------------------------------------------------------------


def _send_run(persona, capture, **fields):
    campaign = CampaignFactory(organisation=persona.organisation, sandbox_profile={"failed": 0, "bounced": 0}, **fields)
    with capture(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=10)
    return campaign, run


def test_an_organisation_frequency_cap_spans_scheduled_and_triggered_campaigns(
    teammate, contacts, django_capture_on_commit_callbacks
):
    org = teammate.organisation
    org.frequency_caps = {"email": {"count": 2, "days": 1}}
    org.save()
    _send_run(teammate, django_capture_on_commit_callbacks, name="First")
    _, second = _send_run(teammate, django_capture_on_commit_callbacks, name="Second")
    assert Run.objects.get(pk=second.pk).sent_count == 3  # everyone at 2 of 2 now
    _, third = _send_run(teammate, django_capture_on_commit_callbacks, name="Third")
    skipped = Message.objects.filter(run=third, status="skipped")
    assert skipped.count() == 3 and set(skipped.values_list("error", flat=True)) == {"frequency_cap"}
    # A triggered marketing campaign is capped too; a transactional one and an opted-out one are not.
    trigger = _campaign(teammate, django_capture_on_commit_callbacks)
    _post(teammate, django_capture_on_commit_callbacks, {"id": "c1", "type": "order_completed", "contact": "ana"})
    assert Message.objects.get(run__campaign=trigger).status == "queued"
    _send(trigger)
    assert Message.objects.get(run__campaign=trigger).error == "frequency_cap"
    _, receipts = _send_run(teammate, django_capture_on_commit_callbacks, name="Receipt", category="transactional")
    _, opted_out = _send_run(teammate, django_capture_on_commit_callbacks, name="Urgent", bypass_frequency_cap=True)
    assert Run.objects.get(pk=receipts.pk).sent_count == 3 and Run.objects.get(pk=opted_out.pk).sent_count == 3


def test_cap_days_are_the_contacts_local_days(teammate, contacts, django_capture_on_commit_callbacks, monkeypatch):
    from delivery.caps import local_day

    # 23:30 UTC on 25 November is already 26 November in Tokyo and still the 25th in London.
    now = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    assert str(local_day(now, "Asia/Tokyo", "Europe/London")) == "2026-11-26"
    assert str(local_day(now, "", "Europe/London")) == "2026-11-25"
    assert str(local_day(now, "Nowhere/City", "Europe/London")) == "2026-11-25"
    org = teammate.organisation
    org.frequency_caps = {"email": {"count": 1, "days": 1}}
    org.save()
    monkeypatch.setattr(timezone, "now", lambda: now - timedelta(hours=1))  # 22:30 UTC: 07:30 on the 26th in Tokyo
    _send_run(teammate, django_capture_on_commit_callbacks, name="Evening")
    monkeypatch.setattr(timezone, "now", lambda: now + timedelta(hours=1))  # 00:30 UTC on the 26th
    _, later = _send_run(teammate, django_capture_on_commit_callbacks, name="Night")
    statuses = {m.contact.external_id: m.status for m in Message.objects.filter(run=later).select_related("contact")}
    # London contacts are on a new local day; the Tokyo contact is still on the 26th, already used.
    assert statuses["ana"] == "delivered" and statuses["ben"] == "delivered" and statuses["tokyo"] == "skipped"


def test_frequency_caps_are_validated(owner):
    ok = owner.api.patch("/api/v1/organisation/", {"frequency_caps": {"email": {"count": 3, "days": 7}}}, format="json")
    assert ok.status_code == 200 and ok.data["frequency_caps"] == {"email": {"count": 3, "days": 7}}
    bad = owner.api.patch("/api/v1/organisation/", {"frequency_caps": {"email": {"count": 0}}}, format="json")
    assert bad.status_code == 400 and "frequency_caps" in bad.data


def test_the_console_configures_a_triggered_campaign(teammate, contacts, django_capture_on_commit_callbacks):
    from tests.factories import console_client

    teammate.api.post(EVENTS, {"id": "seen", "type": "cart_abandoned", "contact": "ana"}, format="json")
    browser = console_client(teammate)
    page = browser.get("/campaigns/new/").content.decode()
    assert '<option value="cart_abandoned">' in page
    response = browser.post(
        "/campaigns/new/",
        {
            "name": "Come back",
            "type": "triggered",
            "channels": ["email"],
            "category": "marketing",
            "trigger_event": "cart_abandoned",
            "trigger_conditions": '{"property": "items", "op": "gt", "value": 0}',
            "trigger_delay_seconds": "3600",
            "quiet_hours_start": "22:00",
            "quiet_hours_end": "07:00",
            "quiet_hours_policy": "defer",
            "frequency_limit": "7d",
            "audience_combine": "or",
            "holdout_percent": "0",
            "tracking_enabled": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    campaign = Campaign.objects.get(name="Come back")
    assert (campaign.trigger_event, campaign.trigger_delay_seconds, campaign.frequency_limit) == (
        "cart_abandoned",
        3600,
        "7d",
    )
    assert campaign.trigger_conditions == {"property": "items", "op": "gt", "value": 0}
    bad = browser.post(
        f"/campaigns/{campaign.pk}/edit/",
        {
            "name": "Come back",
            "type": "triggered",
            "category": "marketing",
            "quiet_hours_policy": "defer",
            "frequency_limit": "7d",
            "audience_combine": "or",
            "holdout_percent": "0",
            "trigger_conditions": '{"property": "items", "op": "between", "value": 1}',
        },
    )
    assert bad.status_code == 400 and "/op" in bad.content.decode()


def test_trigger_decisions_through_the_api(teammate, outsider, contacts, django_capture_on_commit_callbacks):
    campaign = _campaign(teammate, django_capture_on_commit_callbacks)
    _post(teammate, django_capture_on_commit_callbacks, {"id": "api1", "type": "order_completed", "contact": "ana"})
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/trigger-decisions/")
    assert response.status_code == 200 and response.data == {"decisions": {"matched": 1, "queued": 1}}
    assert outsider.api.get(f"/api/v1/campaigns/{campaign.pk}/trigger-decisions/").status_code == 404
