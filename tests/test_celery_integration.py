"""A real Celery worker and celery-beat, as separate processes, over the real Redis broker and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from campaigns.models import Campaign
from campaigns.tasks import campaigns_purge_deleted_task
from tests.factories import CampaignFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent


def _test_database_url() -> str:
    db = connection.settings_dict
    host = quote(db["HOST"] or "localhost", safe="")
    credentials = quote(db["USER"] or "postgres", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{credentials}@{host}{port}/{db['NAME']}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=_test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        SECRET_KEY=settings.SECRET_KEY,
        DB_CONN_MAX_AGE="0",
    )
    return env


def _stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output.decode(errors="replace")


@pytest.fixture
def worker_queue() -> Iterator[str]:
    # A private queue, so no other worker on a shared Redis takes our tasks (and we take none of theirs).
    queue = f"test-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queue,
            "--concurrency",
            "1",
            "--pool",
            "solo",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    yield queue
    output = _stop(process)
    if process.returncode not in (0, -15):
        print(output)


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_worker_purges_expired_campaigns_through_redis(organisation, worker_queue):
    expired = CampaignFactory(organisation=organisation, name="Expired")
    kept = CampaignFactory(organisation=organisation, name="Kept")
    Campaign.objects.filter(pk=expired.pk).update(deleted_at=timezone.now() - timedelta(days=31))
    Campaign.objects.filter(pk=kept.pk).update(deleted_at=timezone.now() - timedelta(days=1))

    campaigns_purge_deleted_task.apply_async(queue=worker_queue)

    assert _wait_for(lambda: not Campaign.objects.filter(pk=expired.pk).exists())
    assert Campaign.objects.filter(pk=kept.pk).exists()


def test_the_task_delivered_twice_is_harmless(organisation, worker_queue):
    expired = CampaignFactory(organisation=organisation, name="Twice")
    Campaign.objects.filter(pk=expired.pk).update(deleted_at=timezone.now() - timedelta(days=45))
    campaigns_purge_deleted_task.apply_async(queue=worker_queue)
    campaigns_purge_deleted_task.apply_async(queue=worker_queue)
    assert _wait_for(lambda: not Campaign.objects.filter(pk=expired.pk).exists())
    from compliance.models import AuditLogEntry

    assert _wait_for(lambda: AuditLogEntry.objects.filter(action="campaign.purge").count() == 1)
    time.sleep(1)
    assert AuditLogEntry.objects.filter(action="campaign.purge", target_id=str(expired.pk)).count() == 1


def test_beat_installs_the_purge_schedule(db):
    from django_celery_beat.models import PeriodicTask

    schedule_file = f"/tmp/beat-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "beat",
            "-l",
            "info",
            "-s",
            schedule_file,
            "--scheduler",
            "django_celery_beat.schedulers:DatabaseScheduler",
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _wait_for(
            lambda: PeriodicTask.objects.filter(task="campaigns.tasks.campaigns_purge_deleted_task").exists()
        ), "beat did not install the purge schedule"
        task = PeriodicTask.objects.get(task="campaigns.tasks.campaigns_purge_deleted_task")
        assert task.enabled
        assert task.interval is not None
        assert (task.interval.every, task.interval.period) == (3600, "seconds")
    finally:
        _stop(process)
