"""The execution engine in-process: send now, fan-out with consent, sending batches, pause/resume/cancel, retries,
crash-safety of a batch, and the runs API. Celery task messages are captured, not sent; the integration tests run
the same paths through real workers."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection, transaction
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.models import Campaign, Variant
from compliance.models import ContactPreference, Suppression
from delivery import runs, sending
from delivery.backends import Outcome, reset_backends
from delivery.models import Message, Run, SandboxHandoff
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

N = 240


@pytest.fixture
def contacts(organisation):
    rows = [
        {
            "external_id": f"u{i}",
            "email": f"u{i}@example.com",
            "phone": f"+4477009{i:05d}",
            "first_name": f"Name{i}",
        }
        for i in range(N)
    ]
    contacts_upsert_rows(organisation=organisation, rows=rows)
    return {c.external_id: c for c in Contact.objects.filter(organisation=organisation)}


@pytest.fixture
def campaign(organisation, contacts):
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email", "sms"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "u"},
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    content = {
        "email": {"subject": "Hi {{ contact.first_name }}", "html": "<p>Hello {{ contact.first_name }}</p>"},
        "sms": {"body": "Hi {{ contact.first_name }}"},
    }
    Variant.objects.create(campaign=campaign, name="A", position=0, allocation_percent=50, content=content)
    Variant.objects.create(campaign=campaign, name="B", position=1, allocation_percent=50, content=content)
    return campaign


def _send_now(persona, campaign, django_capture_on_commit_callbacks) -> Run:
    with django_capture_on_commit_callbacks(execute=False):
        response = persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
    assert response.status_code == 200, response.data
    assert response.data["status"] == "running"
    return Run.objects.get(campaign=campaign)


def _prepare(run: Run, django_capture_on_commit_callbacks) -> Run:
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    return run


def _drain(run: Run) -> None:
    sending.run_send_for(run.pk, seconds=60, batch_size=50)
    runs.run_finish_if_done(run.pk)
    run.refresh_from_db()


def test_send_now_sends_every_message_once_and_completes(teammate, campaign, django_capture_on_commit_callbacks):
    run = _send_now(teammate, campaign, django_capture_on_commit_callbacks)
    assert run.status == "pending" and run.trigger == "manual" and run.number == 1
    run = _prepare(run, django_capture_on_commit_callbacks)
    assert run.status == "sending"
    assert run.message_count == 2 * N
    _drain(run)
    assert run.status == "completed"
    assert run.sent_count == run.delivered_count == 2 * N
    assert run.progress_percent == 100.0
    statuses = Counter(Message.objects.filter(run=run).values_list("status", flat=True))
    assert statuses == {"delivered": 2 * N}
    handoffs = SandboxHandoff.objects.filter(run_id=run.pk)
    assert handoffs.count() == 2 * N
    assert set(handoffs.values_list("handoffs", flat=True)) == {1}
    campaign.refresh_from_db()
    assert campaign.status == "completed"


def test_messages_carry_the_idempotency_key_and_the_rendered_variant(
    teammate, campaign, monkeypatch, django_capture_on_commit_callbacks
):
    seen = []
    from delivery.sandbox import SandboxBackend

    original = SandboxBackend.send_batch

    def spy(self, messages, *, profile):
        seen.extend(messages)
        return original(self, messages, profile=profile)

    monkeypatch.setattr(SandboxBackend, "send_batch", spy)
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    _drain(run)
    assert len(seen) == 2 * N
    assert len({m.idempotency_key for m in seen}) == 2 * N
    email = next(m for m in seen if m.channel == "email" and m.address == "u7@example.com")
    assert email.idempotency_key == f"{run.pk}:{email.contact_id}:email"
    assert email.payload["subject"] == "Hi Name7"
    assert "List-Unsubscribe" in email.payload["headers"]
    sms = next(m for m in seen if m.channel == "sms" and m.contact_id == email.contact_id)
    assert sms.payload["body"] == "Hi Name7" and sms.address == "+447700900007"


def test_consent_is_honoured_at_fan_out_and_each_reason_counted(
    teammate, campaign, contacts, django_capture_on_commit_callbacks
):
    org = teammate.organisation
    ContactPreference.objects.create(contact=contacts["u1"], organisation=org, global_opt_out=True)
    ContactPreference.objects.create(contact=contacts["u2"], organisation=org, unsubscribed_at=timezone.now())
    ContactPreference.objects.create(contact=contacts["u3"], organisation=org, disabled_channels=["sms"])
    Suppression.objects.create(organisation=org, address="u4@example.com", reason="hard_bounce")
    Suppression.objects.create(organisation=org, address=contacts["u5"].phone, reason="manual")
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    assert run.excluded == {"opted_out": 1, "unsubscribed": 1, "channel_disabled": 1, "suppressed": 2}
    assert run.message_count == 2 * N - 2 * 2 - 1 - 2
    keys = set(Message.objects.filter(run=run).values_list("contact__external_id", "channel"))
    for gone in [("u1", "email"), ("u1", "sms"), ("u2", "email"), ("u3", "sms"), ("u4", "email"), ("u5", "sms")]:
        assert gone not in keys
    assert ("u3", "email") in keys and ("u4", "sms") in keys and ("u5", "email") in keys


def test_an_unsubscribe_after_fan_out_stops_the_queued_message(
    teammate, campaign, contacts, django_capture_on_commit_callbacks
):
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    org = teammate.organisation
    ContactPreference.objects.create(contact=contacts["u9"], organisation=org, unsubscribed_at=timezone.now())
    ContactPreference.objects.create(contact=contacts["u10"], organisation=org, disabled_channels=["email"])
    Suppression.objects.create(organisation=org, address=contacts["u11"].phone, reason="complaint")
    _drain(run)
    skipped = dict(
        Message.objects.filter(run=run, status="skipped").values_list("contact__external_id", "error").order_by()
    )
    assert run.skipped_count == 4
    assert skipped["u9"] == "unsubscribed"
    assert skipped["u10"] == "channel_disabled"
    assert skipped["u11"] == "suppressed"
    assert not SandboxHandoff.objects.filter(idempotency_key=f"{run.pk}:{contacts['u9'].pk}:email").exists()
    assert run.status == "completed"


def test_pause_stops_claims_and_resume_sends_each_remaining_message_once(
    teammate, campaign, django_capture_on_commit_callbacks
):
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    sending.run_send_batch(run.pk, batch_size=100)
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/pause/").status_code == 200
    run.refresh_from_db()
    assert run.status == "paused" and run.paused_by
    assert sending.run_send_batch(run.pk, batch_size=100).claimed == 0
    assert run.sent_count == 100
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/resume/").status_code == 200
    assert callbacks, "resuming asks workers to continue"
    run.refresh_from_db()
    assert run.status == "sending"
    _drain(run)
    assert run.status == "completed" and run.sent_count == 2 * N
    assert set(SandboxHandoff.objects.filter(run_id=run.pk).values_list("handoffs", flat=True)) == {1}
    assert SandboxHandoff.objects.filter(run_id=run.pk).count() == 2 * N


def test_cancel_marks_unsent_messages_cancelled(teammate, campaign, django_capture_on_commit_callbacks):
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    sending.run_send_batch(run.pk, batch_size=40)
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/cancel/").status_code == 200
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert run.cancelled_count == 2 * N - 40
    assert Message.objects.filter(run=run, status="cancelled").count() == 2 * N - 40
    assert sending.run_send_batch(run.pk).claimed == 0


def test_a_batch_that_dies_before_recording_is_sent_again_with_the_same_keys(
    teammate, campaign, monkeypatch, django_capture_on_commit_callbacks
):
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )

    def die(*args, **kwargs):
        raise SystemExit("worker killed after the hand-off")

    monkeypatch.setattr(sending, "_record", die)
    with pytest.raises(SystemExit), transaction.atomic():
        sending.run_send_batch(run.pk, batch_size=30)
    monkeypatch.undo()
    assert Message.objects.filter(run=run, status="queued").count() == 2 * N  # rolled back: nothing lost
    _drain(run)
    assert run.status == "completed" and run.sent_count == 2 * N
    handoffs = Counter(SandboxHandoff.objects.filter(run_id=run.pk).values_list("handoffs", flat=True))
    assert handoffs == {1: 2 * N - 30, 2: 30}  # the provider saw 30 keys twice and, honouring keys, sent them once
    assert Message.objects.filter(run=run).exclude(status="delivered").count() == 0


class FlakyBackend:
    calls = 0

    def send_batch(self, messages, *, profile):
        FlakyBackend.calls += 1
        return [Outcome(m.message_id, "retry", "", "provider timeout", retry_after=60) for m in messages]


def test_transient_failures_retry_later_then_fail_for_good(
    settings, teammate, campaign, django_capture_on_commit_callbacks
):
    settings.DELIVERY_BACKENDS = {"default": "tests.test_delivery_engine.FlakyBackend"}
    settings.DELIVERY_MAX_ATTEMPTS = 2
    settings.DELIVERY_AUTO_PAUSE_MIN = 10**6  # this test is about retries, not the failure-rate brake
    reset_backends()
    try:
        run = _prepare(
            _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
        )
        sending.run_send_for(run.pk, seconds=30, batch_size=100)
        queued = Message.objects.filter(run=run, status="queued")
        assert queued.count() == 2 * N
        assert all(m.attempts == 1 and m.due_at > timezone.now() for m in queued)
        assert sending.run_send_batch(run.pk).claimed == 0  # not due yet
        Message.objects.filter(run=run).update(due_at=timezone.now())
        sending.run_send_for(run.pk, seconds=30, batch_size=100)
        assert Message.objects.filter(run=run, status="failed").count() == 2 * N
        assert "gave up after 2 attempts" in Message.objects.filter(run=run).first().error
        runs.run_finish_if_done(run.pk)
        run.refresh_from_db()
        assert run.status == "completed" and run.failed_count == 2 * N
    finally:
        reset_backends()


def test_holdout_and_control_are_recorded_but_never_sent(
    teammate, organisation, contacts, django_capture_on_commit_callbacks
):
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email"],
        variants=False,
        holdout_percent=10,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "u"},
    )
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=80, content={"email": {"subject": "s", "html": "h"}}
    )
    Variant.objects.create(campaign=campaign, name="Control", position=1, allocation_percent=20, is_control=True)
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    _drain(run)
    statuses = Counter(Message.objects.filter(run=run).values_list("status", flat=True))
    assert statuses["holdout"] == run.holdout_count > 0
    assert statuses["control"] == run.control_count > 0
    assert SandboxHandoff.objects.filter(run_id=run.pk).count() == run.message_count
    assert run.sent_count + run.failed_count == run.message_count


def test_sandbox_rates_per_variant_produce_receipts_and_engagement(
    teammate, campaign, django_capture_on_commit_callbacks
):
    Campaign.objects.filter(pk=campaign.pk).update(
        sandbox_profile={
            "failed": 0.05,
            "bounced": 0.05,
            "engagement": {"open": 0.2, "click": 0.0, "machine_open": 0},
            "variants": {"B": {"open": 0.9, "click": 0.5}},
        }
    )
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    _drain(run)
    assert run.bounced_count > 0 and run.failed_count > 0
    assert run.sent_count + run.failed_count == 2 * N
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT v.name, e.kind, count(*) FROM analytics_engagementevent e JOIN campaigns_variant v"
            " ON v.id = e.variant_id WHERE e.run_id = %s GROUP BY 1, 2",
            [str(run.pk)],
        )
        events = {(name, kind): count for name, kind, count in cursor.fetchall()}
    assert events[("B", "open")] > 2 * events[("A", "open")]
    assert events.get(("B", "click"), 0) > 0 and ("A", "click") not in events


def test_runs_api_lists_progress_and_hides_other_organisations(
    teammate, outsider, campaign, django_capture_on_commit_callbacks
):
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    sending.run_send_batch(run.pk, batch_size=100)
    listed = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/runs/")
    assert listed.status_code == 200
    [item] = listed.data["results"]
    assert item["id"] == str(run.pk) and item["status"] == "sending"
    assert item["progress"]["sent"] == 100
    assert item["progress"]["queued"] == 2 * N - 100
    assert item["progress"]["total"] == 2 * N
    assert teammate.api.get(f"/api/v1/runs/{run.pk}/").data["number"] == 1
    assert outsider.api.get(f"/api/v1/runs/{run.pk}/").status_code == 404
    assert outsider.api.get(f"/api/v1/campaigns/{campaign.pk}/runs/").data["results"] == []
    assert teammate.api.get("/api/v1/runs/?campaign=not-a-uuid").status_code == 400


def test_a_run_with_too_many_failures_pauses_itself_and_says_why(
    settings, teammate, campaign, django_capture_on_commit_callbacks
):
    settings.DELIVERY_AUTO_PAUSE_MIN = 100
    settings.DELIVERY_AUTO_PAUSE_RATE = 0.2
    Campaign.objects.filter(pk=campaign.pk).update(sandbox_profile={"failed": 0.3, "bounced": 0.1})
    run = _prepare(
        _send_now(teammate, campaign, django_capture_on_commit_callbacks), django_capture_on_commit_callbacks
    )
    with django_capture_on_commit_callbacks(execute=False):
        sending.run_send_for(run.pk, seconds=30, batch_size=60)
    run.refresh_from_db()
    campaign.refresh_from_db()
    assert campaign.status == "paused" and run.status == "paused"
    assert "Paused automatically" in run.status_reason and "failed or bounced" in run.status_reason
    assert "failure rate" in run.paused_by
    assert run.sent_count + run.failed_count < 2 * N  # it stopped before burning through the audience
    assert Message.objects.filter(run=run, status="queued").exists()
