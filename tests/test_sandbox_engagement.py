"""The sandbox's simulated engagement arrives over time, as people's would: scheduled at the send, invisible until
its time, recorded once when it comes (dated then, never ahead), and nothing costly while nothing is due. The due
times are recomputed here from the sandbox's documented draws (blake2b of salt and idempotency key)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from analytics.models import EngagementEvent
from audiences.contacts import contacts_upsert_rows
from campaigns.models import Variant
from delivery import runs, sending
from delivery.models import Message, Run, ScheduledEngagement
from delivery.sandbox import RECORD_DUE_SQL, scheduled_engagement_record_due
from delivery.tasks import scheduled_engagement_record_task
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

N = 30
PROFILE = {
    "failed": 0,
    "bounced": 0,
    "engagement_over_time": True,
    "engagement": {"open": 0.6, "machine_open": 0.2, "click": 0.5, "conversion": 0.5, "order_value": 40},
}


def draw(key: str, salt: str) -> float:
    return int.from_bytes(hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest(), "big") / 2**64


def expected_engagement(message: Message) -> list[tuple[str, float, bool]]:
    """(kind, seconds after the send, machine) the sandbox profile above gives one email, by hand."""
    key = f"{message.run_id}:{message.contact_id}:email"
    rates = PROFILE["engagement"]
    events = []
    if draw(key, "machine-open") < rates["machine_open"]:
        events.append(("open", 2.0, True))
    if draw(key, "open") < rates["open"]:
        events.append(("open", 60 + 3600 * draw(key, "open-at"), False))
        if draw(key, "click") < rates["click"]:
            events.append(("click", 120 + 3600 * draw(key, "click-at"), False))
            if draw(key, "conversion") < rates["conversion"]:
                events.append(("conversion", 600 + 7200 * draw(key, "conv-at"), False))
    return events


@pytest.fixture
def sent(teammate, django_capture_on_commit_callbacks) -> Run:
    contacts_upsert_rows(
        organisation=teammate.organisation,
        rows=[{"external_id": f"s{i}", "email": f"s{i}@example.com"} for i in range(N)],
    )
    campaign = CampaignFactory(
        organisation=teammate.organisation,
        channels=["email"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "s"},
        sandbox_profile=PROFILE,
    )
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={"email": {"subject": "Hi", "html": "<p>Hi</p>"}}
    )
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=60)
    run.refresh_from_db()
    assert run.delivered_count == N
    return run


def _metrics(persona, run: Run) -> dict:
    response = persona.api.get(f"/api/v1/campaigns/{run.campaign_id}/metrics/")
    assert response.status_code == 200
    return response.data["counts"]


def test_engagement_is_scheduled_at_the_send_and_recorded_once_when_due(teammate, sent):
    expected = {
        (message.pk, kind, machine): message.sent_at + timedelta(seconds=after)
        for message in Message.objects.filter(run=sent)
        for kind, after, machine in expected_engagement(message)
    }
    kinds = {kind for _m, kind, _machine in expected}
    assert kinds == {"open", "click", "conversion"}, "the profile gives every kind for 30 recipients"
    # Nothing is recorded at the send, and nothing is dated in the future: it waits, due when a person would act.
    assert not EngagementEvent.objects.filter(run_id=sent.pk).exists()
    scheduled = {(s.message_id, s.kind, s.is_machine): s.due_at for s in ScheduledEngagement.objects.all()}
    assert scheduled.keys() == expected.keys()
    assert all(abs(scheduled[k] - expected[k]) <= timedelta(microseconds=1) for k in expected)
    assert _metrics(teammate, sent)["opened_total"] == 0

    # Half an hour later: exactly what was due by then, dated when it was due.
    sent_at = Message.objects.filter(run=sent).earliest("sent_at").sent_at
    half_hour = sent_at + timedelta(minutes=30)
    due = {k for k, at in scheduled.items() if at <= half_hour}
    assert 0 < len(due) < len(expected)
    assert scheduled_engagement_record_due(now=half_hour) == len(due)
    recorded = EngagementEvent.objects.filter(run_id=sent.pk)  # .all() below: a fresh read each time
    assert {(e.message_id, e.kind, e.is_machine) for e in recorded.all()} == due
    assert all(e.occurred_at == scheduled[(e.message_id, e.kind, e.is_machine)] for e in recorded.all())
    assert _metrics(teammate, sent)["opened_total"] == sum(1 for _m, kind, _machine in due if kind == "open")
    # Run again at the same moment: nothing new.
    assert scheduled_engagement_record_due(now=half_hour) == 0
    assert recorded.all().count() == len(due)

    # Three hours on, everything has come, each event once, and nothing is left waiting.
    assert scheduled_engagement_record_due(now=sent_at + timedelta(hours=3)) == len(expected) - len(due)
    assert {(e.message_id, e.kind, e.is_machine) for e in recorded.all()} == expected.keys()
    assert not ScheduledEngagement.objects.exists()
    conversions = recorded.all().filter(kind="conversion")
    assert conversions.count() == sum(1 for _m, kind, _machine in expected if kind == "conversion")
    assert all(20 <= c.value <= 60 for c in conversions)  # order value 40 x (0.5 to 1.5)
    assert _metrics(teammate, sent)["opened_total"] == sum(1 for _m, kind, _machine in expected if kind == "open")


def test_at_rest_the_recorder_is_one_indexed_statement(sent):
    """Engagement waiting but not due: the beat task's pass is one statement, planned as an index range scan on the
    due time (not a scan of everything that waits), and it records nothing."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO delivery_scheduledengagement (message_id, kind, due_at, is_machine, dedupe_key)"
            " SELECT 0, 'open', now() + interval '1 day', false, 'waiting:' || i FROM generate_series(1, 20000) i"
        )
        cursor.execute("ANALYZE delivery_scheduledengagement")
        cursor.execute("EXPLAIN " + RECORD_DUE_SQL, {"now": timezone.now(), "limit": 5000})
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan using scheduled_engagement_due_idx" in plan or "Index Only Scan using" in plan, plan
    assert "Seq Scan on delivery_scheduledengagement" not in plan, plan
    waiting = ScheduledEngagement.objects.count()
    with CaptureQueriesContext(connection) as queries:
        assert scheduled_engagement_record_task.apply().get() == 0
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 1 and "delivery_scheduledengagement" in statements[0]
    assert ScheduledEngagement.objects.count() == waiting
    assert not EngagementEvent.objects.filter(run_id=sent.pk).exists()


def test_a_profile_without_time_reports_at_the_send(teammate, django_capture_on_commit_callbacks, settings):
    """The tests' default (conftest): engagement at the send, dated at the send, nothing scheduled."""
    contacts_upsert_rows(organisation=teammate.organisation, rows=[{"external_id": "a1", "email": "a1@example.com"}])
    campaign = CampaignFactory(
        organisation=teammate.organisation,
        channels=["email"],
        variants=False,
        audience_rules={"field": "external_id", "op": "eq", "value": "a1"},
        sandbox_profile={**PROFILE, "engagement_over_time": False, "engagement": {"open": 1, "machine_open": 0}},
    )
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={"email": {"subject": "Hi", "html": "<p>Hi</p>"}}
    )
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=10)
    message = Message.objects.get(run=run)
    [event] = EngagementEvent.objects.filter(run_id=run.pk)
    assert (event.kind, event.occurred_at) == ("open", message.sent_at)
    assert not ScheduledEngagement.objects.exists()
