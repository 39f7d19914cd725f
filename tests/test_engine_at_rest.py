"""The engine at rest, with real parts (celery-beat, prefork workers, a Redis of their own, PostgreSQL): once a
throttled run has finished and a throttled run has been cancelled mid-send, no send task is active, reserved or
scheduled for them, the broker queue is empty, and the database does what the beat schedule alone makes it do.

The demo organisation is throttled, so every demo run is: this is the path every new user takes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis
from django.db import connection

from audiences.contacts import contacts_upsert_rows
from campaigns import services
from delivery.models import Message, Run, SandboxHandoff
from tests.factories import CampaignFactory
from tests.support import wait_for
from tests.test_delivery_reliability import ROOT, Engine

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _commits() -> int:
    """Committed transactions in the test database so far (the statistics are flushed within a second or so)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def _commit_rate(seconds: float) -> float:
    """Commits a second by everybody but this probe, over `seconds`."""
    time.sleep(2)  # let the statistics of what came before be flushed
    before = _commits()
    time.sleep(seconds)
    after = _commits()
    return (after - before - 2) / seconds


def _inspect(engine: Engine, what: str) -> list:
    """`celery inspect` as an operator runs it, against the engine's broker: every task the workers hold."""
    output = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "inspect", what, "--json", "--timeout", "3"],
        cwd=ROOT,
        env=engine.env_cached,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    replies = json.loads(output.strip().splitlines()[-1])
    assert replies, f"no worker answered `inspect {what}`"
    return [task for tasks in replies.values() for task in tasks]


def _queue_length(engine: Engine) -> int:
    client = redis.Redis.from_url(engine.env_cached["REDIS_URL"])
    return int(client.llen(engine.env_cached["CELERY_TASK_DEFAULT_QUEUE"]))


def _throttled_campaign(persona, prefix: str, count: int, per_minute: int):
    contacts_upsert_rows(
        organisation=persona.organisation,
        rows=[{"external_id": f"{prefix}{i}", "email": f"{prefix}{i}@example.com"} for i in range(count)],
    )
    return CampaignFactory(
        organisation=persona.organisation,
        channels=["email"],
        audience_rules={"field": "external_id", "op": "starts_with", "value": prefix},
        messages_per_minute=per_minute,
        sandbox_profile={"failed": 0, "bounced": 0},
    )


def _start(persona, campaign, capture) -> Run:
    # This process's broker is not the engine's: the engine's pump finds the pending run on its own.
    with capture(execute=False):
        services.campaign_transition(actor=persona.actor, campaign_id=campaign.pk, action="start")
    return Run.objects.get(campaign=campaign)


def test_after_a_throttled_run_and_a_cancelled_run_the_engine_is_at_rest(
    tmp_path, teammate, django_capture_on_commit_callbacks
):
    engine = Engine(tmp=tmp_path, pump_seconds="2")
    engine.start()
    try:
        baseline = _commit_rate(12)  # beat and its pump, nothing to send

        # 60 messages at 1,200 a minute: three seconds of throttled sending, then done.
        finished = _start(teammate, _throttled_campaign(teammate, "f", 60, 1200), django_capture_on_commit_callbacks)
        # 2,000 at 600 a minute would take minutes: cancelled once it is sending.
        cancelled = _start(teammate, _throttled_campaign(teammate, "c", 2000, 600), django_capture_on_commit_callbacks)
        assert wait_for(lambda: Run.objects.get(pk=cancelled.pk).sent_count >= 5, 60), "never started sending"
        services.campaign_transition(actor=teammate.actor, campaign_id=cancelled.campaign_id, action="cancel")
        assert wait_for(lambda: Run.objects.get(pk=finished.pk).status == "completed", 60), Run.objects.get(
            pk=finished.pk
        ).status
        finished.refresh_from_db()
        cancelled.refresh_from_db()
        assert (finished.sent_count, cancelled.status) == (60, "cancelled")
        assert Message.objects.filter(run=cancelled, status="queued").count() == 0

        # Within seconds, nothing is left working on either run: not running, not held, not waiting, not queued.
        def idle() -> bool:
            held = [*_inspect(engine, "active"), *_inspect(engine, "reserved"), *_inspect(engine, "scheduled")]
            return not held and _queue_length(engine) == 0

        assert wait_for(idle, 15), (
            _inspect(engine, "active"),
            _inspect(engine, "reserved"),
            _inspect(engine, "scheduled"),
            _queue_length(engine),
        )
        handed_over = SandboxHandoff.objects.filter(run_id=cancelled.pk).count()

        at_rest = _commit_rate(30)
        print(f"commits/s: beat baseline {baseline:.2f}, after the runs {at_rest:.2f}")
        # The same schedule, the same few statements: a send task looping would add hundreds a second.
        assert at_rest <= baseline * 1.5 + 1.0, (baseline, at_rest)
        assert not [*_inspect(engine, "active"), *_inspect(engine, "scheduled")]
        # Nothing more reached the provider for the cancelled run while we watched.
        assert SandboxHandoff.objects.filter(run_id=cancelled.pk).count() == handed_over
        assert Run.objects.get(pk=cancelled.pk).sent_count == handed_over
    finally:
        engine.stop()
