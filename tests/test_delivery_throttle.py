"""Throttles and send windows: the next allowed send time per recipient timezone across DST, fan-out and claim-time
windows, token-bucket pacing (evenly spread, never above the limit), organisation channel limits, the estimate."""

from __future__ import annotations

import math
import time as clock
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Campaign
from delivery import runs, sending, throttle
from delivery.models import Message, Run
from delivery.selectors import run_estimated_completion
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def next_send(now, tz, start=None, end=None, weekends=False, local=None):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT cs_next_send_time(%s, %s, %s::time, %s::time, %s, %s::time)", [now, tz, start, end, weekends, local]
        )
        return cursor.fetchone()[0]


@pytest.mark.parametrize(
    ("now", "tz", "rules", "expected"),
    [
        # Inside the window: now.
        (utc(2026, 11, 25, 10), "Europe/London", {"start": "09:00", "end": "17:00"}, utc(2026, 11, 25, 10)),
        # Before it opens (08:00 GMT): 09:00 GMT.
        (utc(2026, 11, 25, 8), "Europe/London", {"start": "09:00", "end": "17:00"}, utc(2026, 11, 25, 9)),
        # After it closes on Friday, weekends off: Monday 09:00.
        (
            utc(2026, 11, 27, 18),
            "Europe/London",
            {"start": "09:00", "end": "17:00", "weekends": True},
            utc(2026, 11, 30, 9),
        ),
        # Across the spring change: Saturday evening → Monday 09:00 BST = 08:00 UTC.
        (
            utc(2026, 3, 28, 19),
            "Europe/London",
            {"start": "09:00", "end": "17:00", "weekends": True},
            utc(2026, 3, 30, 8),
        ),
        # Sunday 29 March 2026 in London: the window opens at 09:00 BST (08:00 UTC) on the day the clocks change.
        (utc(2026, 3, 29, 0, 30), "Europe/London", {"start": "09:00", "end": "17:00"}, utc(2026, 3, 29, 8)),
        # Autumn: 25 October 2026, 09:00 GMT = 09:00 UTC (it was 08:00 UTC the day before).
        (utc(2026, 10, 25, 1), "Europe/London", {"start": "09:00", "end": "17:00"}, utc(2026, 10, 25, 9)),
        (utc(2026, 10, 24, 1), "Europe/London", {"start": "09:00", "end": "17:00"}, utc(2026, 10, 24, 8)),
        # A window across midnight (20:00 to 02:00 Tokyo): 08:30 JST → 20:00 JST.
        (utc(2026, 11, 25, 23, 30), "Asia/Tokyo", {"start": "20:00", "end": "02:00"}, utc(2026, 11, 26, 11)),
        (utc(2026, 11, 25, 16, 30), "Asia/Tokyo", {"start": "20:00", "end": "02:00"}, utc(2026, 11, 25, 16, 30)),
        # "9:00 wherever they are": New York after the March change (EDT) and before it (EST).
        (utc(2026, 3, 9, 5), "America/New_York", {"local": "09:00"}, utc(2026, 3, 9, 13)),
        (utc(2026, 3, 6, 5), "America/New_York", {"local": "09:00"}, utc(2026, 3, 6, 14)),
        # Past today's local time: tomorrow; weekends off moves Saturday to Monday.
        (utc(2026, 11, 27, 15), "Europe/Paris", {"local": "09:00", "weekends": True}, utc(2026, 11, 30, 8)),
        # An unknown zone is read as UTC rather than failing the run.
        (utc(2026, 11, 25, 6), "Mars/Olympus", {"start": "09:00", "end": "17:00"}, utc(2026, 11, 25, 9)),
    ],
)
def test_next_allowed_send_time(now, tz, rules, expected):
    assert (
        next_send(now, tz, rules.get("start"), rules.get("end"), rules.get("weekends", False), rules.get("local"))
        == expected
    )


@pytest.fixture
def contacts(organisation):
    rows = [
        {"external_id": "tokyo", "email": "t@example.com", "timezone": "Asia/Tokyo"},
        {"external_id": "ny", "email": "n@example.com", "timezone": "America/New_York"},
        {"external_id": "nozone", "email": "z@example.com"},
    ]
    contacts_upsert_rows(organisation=organisation, rows=rows)


def _send_now(persona, campaign, capture):
    with capture(execute=False):
        response = persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        assert response.status_code == 200, response.data
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    return run


def test_local_send_time_is_nine_in_each_recipients_zone(teammate, contacts, django_capture_on_commit_callbacks):
    campaign = CampaignFactory(organisation=teammate.organisation, local_send_time=time(9, 0))
    run = _send_now(teammate, campaign, django_capture_on_commit_callbacks)
    due = {m.contact.external_id: m.due_at for m in Message.objects.filter(run=run).select_related("contact")}
    for external_id, zone in (("tokyo", "Asia/Tokyo"), ("ny", "America/New_York"), ("nozone", "Europe/London")):
        local = timezone.localtime(due[external_id], ZoneInfo(zone))
        assert (local.hour, local.minute) == (9, 0), external_id  # contacts without a zone: the organisation's
        assert timezone.now() <= due[external_id] <= timezone.now() + timedelta(days=1)
    sending.run_send_batch(run.pk)
    for message in Message.objects.filter(run=run):
        # Nothing went before 9:00 in its recipient's zone.
        assert message.status == "queued" or message.sent_at >= message.due_at


def test_a_message_outside_its_window_at_claim_time_waits_without_using_an_attempt(
    teammate, contacts, django_capture_on_commit_callbacks
):
    campaign = CampaignFactory(organisation=teammate.organisation)
    run = _send_now(teammate, campaign, django_capture_on_commit_callbacks)
    # The window changed after fan-out (the campaign was paused and edited): the claim re-checks it. Everyone is
    # in London here, and the window opens two hours from now.
    contacts_upsert_rows(
        organisation=teammate.organisation,
        rows=[{"external_id": x, "timezone": "Europe/London"} for x in ("tokyo", "ny", "nozone")],
    )
    now_london = timezone.localtime(timezone.now(), ZoneInfo("Europe/London"))
    closed_start = (now_london + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    closed_end = (now_london + timedelta(hours=3)).time().replace(second=0, microsecond=0)
    Campaign.objects.filter(pk=campaign.pk).update(send_window_start=closed_start, send_window_end=closed_end)
    Message.objects.filter(run=run).update(due_at=timezone.now())
    result = sending.run_send_batch(run.pk)
    assert result.claimed == 3 and result.counts["deferred"] == 3
    for message in Message.objects.filter(run=run):
        assert message.status == "queued" and message.attempts == 0
        assert message.due_at > timezone.now() + timedelta(hours=1)
    run.refresh_from_db()
    assert run.sent_count == 0


def test_a_throttled_run_never_goes_above_its_limit_and_spreads_its_sends(
    teammate, organisation, django_capture_on_commit_callbacks
):
    """The bound, not the speed (the delivered rate is measured in bench/throttle.py): however the claims fall,
    no window holds more than a full bucket plus that window's refill, and the sends are spread, not bunched."""
    per_minute = 2400  # 40 a second
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": f"t{i}", "email": f"t{i}@example.com"} for i in range(200)]
    )
    campaign = CampaignFactory(
        organisation=organisation, messages_per_minute=per_minute, sandbox_profile={"failed": 0, "bounced": 0}
    )
    run = _send_now(teammate, campaign, django_capture_on_commit_callbacks)
    bucket = throttle.Bucket("x", per_minute)
    began = clock.monotonic()
    while Message.objects.filter(run=run, status="queued").exists() and clock.monotonic() - began < 60:
        sending.run_send_for(run.pk, seconds=5)
    took = clock.monotonic() - began
    assert not Message.objects.filter(run=run, status="queued").exists()
    # A token bucket cannot hand out 200 faster than a full bucket and then its refill rate.
    assert took >= (200 - bucket.capacity) / bucket.rate * 0.98, took
    sent_at = sorted(Message.objects.filter(run=run).values_list("sent_at", flat=True))
    worst = max(
        sum(1 for other in sent_at[i:] if (other - first).total_seconds() < 1.0) for i, first in enumerate(sent_at)
    )
    # sent_at is stamped when a batch is recorded, a claim and a hand-off after its tokens were taken: a quarter
    # of a second of that jitter is allowed on top of the bucket's bound.
    assert worst <= bucket.capacity + bucket.rate * 1.25 + 1
    # Spread, not bunched: sends went out in (nearly) every second of the run, not in a few bursts. How evenly, to
    # the second, is measured on the wire in bench/throttle.py.
    seconds = {int((t - sent_at[0]).total_seconds()) for t in sent_at}
    assert len(seconds) >= 0.8 * (sent_at[-1] - sent_at[0]).total_seconds(), sorted(seconds)


def test_bucket_limits_keep_every_window_at_most_n_and_deliver_within_two_percent():
    """The bucket's numbers, for per-minute and per-hour limits from 60 to 60,000: a full bucket plus one window's
    refill is at most N, and three windows deliver at least 98 % of 3N."""
    for per_window in (60, 120, 600, 6_000, 60_000):
        for window in (60.0, 3600.0):
            bucket = throttle.Bucket("x", float(per_window), window_seconds=window)
            # Whole messages: the most any window can hold, hand-off jitter included, is at most N.
            assert math.floor(bucket.capacity + bucket.rate * (window + throttle.JITTER_SECONDS)) <= per_window
            if per_window >= 60:
                assert bucket.capacity + bucket.rate * 3 * window >= 0.98 * 3 * per_window
            # Tokens accrue for a second while a batch is with the provider before any are thrown away.
            assert bucket.capacity >= max(1.0, per_window * throttle.BURST_SECONDS / window)


def test_an_organisation_channel_limit_is_shared_by_its_campaigns(
    teammate, organisation, django_capture_on_commit_callbacks
):
    organisation.channel_limits_per_minute = {"email": 1200}  # 20 a second for all campaigns together
    organisation.save()
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": f"s{i}", "email": f"s{i}@example.com"} for i in range(60)]
    )
    first = CampaignFactory(organisation=organisation, name="First", sandbox_profile={"failed": 0, "bounced": 0})
    second = CampaignFactory(organisation=organisation, name="Second", sandbox_profile={"failed": 0, "bounced": 0})
    run_a = _send_now(teammate, first, django_capture_on_commit_callbacks)
    run_b = _send_now(teammate, second, django_capture_on_commit_callbacks)
    began = clock.monotonic()
    while clock.monotonic() - began < 30 and Message.objects.filter(status="queued").exists():
        sending.run_send_for(run_a.pk, seconds=0.5)
        sending.run_send_for(run_b.pk, seconds=0.5)
    took = clock.monotonic() - began
    assert not Message.objects.filter(status="queued").exists()
    assert took >= (120 - throttle.Bucket("x", 1200).capacity) / throttle.Bucket("x", 1200).rate * 0.95


def test_the_estimate_walks_through_send_windows(teammate, organisation):
    organisation.timezone = "UTC"
    organisation.save()
    campaign = CampaignFactory(
        organisation=organisation,
        messages_per_minute=100,
        send_window_start=time(9, 0),
        send_window_end=time(10, 0),
        skip_weekends=True,
    )
    run = Run.objects.create(
        organisation=organisation, campaign=campaign, number=1, status="sending", message_count=9000
    )
    rate = throttle.effective_per_minute(campaign, ["email"])
    now = utc(2026, 11, 27, 9, 30)  # a Friday, half an hour of window left
    # 30 minutes today, then Monday's hour, Tuesday's hour… until 9,000 are through at ≈ 99.8 a minute.
    at = run_estimated_completion(run, now=now)
    left = 9000 - 30 * rate
    full_days, rest = divmod(left, 60 * rate)
    expected_day = datetime(2026, 11, 30, tzinfo=UTC) + timedelta(days=int(full_days))
    assert at == pytest.approx(expected_day + timedelta(hours=9, minutes=rest / rate), abs=timedelta(seconds=1))
    assert at.isoweekday() < 6


def test_send_rules_are_validated(teammate):
    url = "/api/v1/campaigns/"
    one_end = teammate.api.post(url, {"name": "x", "send_window_start": "09:00"}, format="json")
    assert one_end.status_code == 400 and "send_window_end" in one_end.data
    same = teammate.api.post(
        url, {"name": "y", "send_window_start": "09:00", "send_window_end": "09:00"}, format="json"
    )
    assert same.status_code == 400 and "send_window_end" in same.data
    outside = teammate.api.post(
        url,
        {"name": "z", "send_window_start": "09:00", "send_window_end": "17:00", "local_send_time": "18:00"},
        format="json",
    )
    assert outside.status_code == 400 and "local_send_time" in outside.data
    ok = teammate.api.post(
        url,
        {"name": "w", "send_window_start": "20:00", "send_window_end": "02:00", "skip_weekends": True},
        format="json",
    )
    assert ok.status_code == 201 and ok.data["send_window_start"] == "20:00:00" and ok.data["skip_weekends"] is True
