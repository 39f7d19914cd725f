"""/metrics as Prometheus scrapes it: the token, and a small known run moving the gauges and counters (this test
process plays the worker, a batch at a time; counters are added once each batch commits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from audiences.contacts import contacts_upsert_rows
from audiences.models import ContactImport
from audiences.services import contact_import_run
from campaigns.models import Variant
from config.celery import app
from config.health import beat_heartbeat_write
from delivery import runs, sending
from delivery.models import Message, Run, SandboxHandoff
from tests.factories import CampaignFactory, console_client
from tests.support import database_url, wait_for

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent

TOKEN = "scrape-token-for-tests"
P = "campaign_service_"


def scrape(client: Client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((P + name, frozenset(labels.items())))


@pytest.fixture
def metrics_on(settings) -> None:
    settings.METRICS_TOKEN = TOKEN


def test_metrics_are_off_without_a_token_and_refuse_a_wrong_one(settings, client):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    settings.METRICS_TOKEN = TOKEN
    missing = client.get("/metrics")
    assert (missing.status_code, missing["WWW-Authenticate"]) == (401, 'Bearer realm="metrics"')
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def _campaign(organisation, channel: str, profile: dict):
    campaign = CampaignFactory(
        organisation=organisation,
        channels=[channel],
        variants=False,
        sandbox_profile=profile,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "m"},
    )
    content = {"email": {"subject": "Hi", "html": "<p>Hello</p>"}, "sms": {"body": "Hello"}}[channel]
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content={channel: content})
    return campaign


def _start(persona, campaign, capture) -> Run:
    with capture(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with capture(execute=False):
        runs.run_prepare(run.pk)
    return run


def test_a_small_run_moves_the_gauges_and_counts_what_it_sent_and_failed(
    metrics_on, teammate, client, django_capture_on_commit_callbacks
):
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"m{i}", "email": f"m{i}@example.com", "phone": f"+4477009000{i:02d}"} for i in range(5)],
    )
    delivered = _campaign(organisation, "email", {"failed": 0, "bounced": 0})
    refused = _campaign(organisation, "sms", {"failed": 1, "bounced": 0})
    before = scrape(client)
    assert value(before, "runs_sending") == 0
    assert value(before, "messages_queued") == 0
    assert value(before, "oldest_due_message_age_seconds") == 0

    email_run = _start(teammate, delivered, django_capture_on_commit_callbacks)
    sms_run = _start(teammate, refused, django_capture_on_commit_callbacks)
    # The email run's messages have waited a minute and a half (a backlog behind the throttle, say).
    Message.objects.filter(run=email_run).update(due_at=timezone.now() - timedelta(seconds=90))
    started = time.time()
    during = scrape(client)
    assert value(during, "runs", status="sending") == 2
    assert value(during, "runs_sending") == 2
    assert value(during, "messages_queued") == 10
    assert 90 <= value(during, "oldest_due_message_age_seconds") <= 90 + (time.time() - started) + 1

    for run in (email_run, sms_run):
        with django_capture_on_commit_callbacks(execute=True):
            sending.run_send_for(run.pk, seconds=60, batch_size=2)
        runs.run_finish_if_done(run.pk)
    after = scrape(client)
    assert value(after, "runs_sending") == 0
    assert value(after, "messages_queued") == 0
    assert value(after, "oldest_due_message_age_seconds") == 0
    assert value(after, "messages_sent_total", channel="email") == 5
    assert value(after, "messages_sent_total", channel="sms") is None
    assert value(after, "send_failures_total", channel="sms", reason="permanent") == 5
    assert value(after, "send_failures_total", channel="email", reason="permanent") is None


def test_requests_events_imports_and_beat_lag_are_counted(
    metrics_on, teammate, client, django_capture_on_commit_callbacks
):
    for _ in range(3):
        assert teammate.api.get("/api/v1/organisation/").status_code == 200
    assert teammate.api.get("/api/v1/campaigns/00000000-0000-0000-0000-000000000000/").status_code == 404

    contacts_upsert_rows(organisation=teammate.organisation, rows=[{"external_id": "c0"}, {"external_id": "c1"}])
    events = [{"id": f"e{i}", "type": "purchase", "contact": f"c{i % 2}"} for i in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        response = teammate.api.post("/api/v1/events/", {"events": events}, format="json")
    assert (response.status_code, response.data["accepted"]) == (202, 3), response.content
    with django_capture_on_commit_callbacks(execute=True):  # the same ids again: stored once, counted once
        response = teammate.api.post("/api/v1/events/", {"events": events}, format="json")
    assert (response.status_code, response.data["duplicates"]) == (202, 3)

    csv = "external_id,email\nn1,n1@example.com\nn2,n2@example.com\nn3,not-an-email\n"
    with django_capture_on_commit_callbacks(execute=False):
        console_client(teammate).post(
            "/contacts/import/", {"file": SimpleUploadedFile("people.csv", csv.encode(), "text/csv")}
        )
    contact_import_run(ContactImport.objects.get().pk)

    beat_heartbeat_write(now=time.time() - 30)
    samples = scrape(client)
    get_organisation = {"method": "GET", "view": "api-organisation", "status": "200"}
    assert value(samples, "http_requests_total", **get_organisation) == 3
    assert value(samples, "http_requests_total", method="GET", view="campaign-detail", status="404") == 1
    assert value(samples, "events_ingested_total") == 3
    assert value(samples, "contacts_imported_total", outcome="created") == 2
    assert value(samples, "contacts_imported_total", outcome="rejected") == 1
    assert value(samples, "contacts_imported_total", outcome="updated") is None
    assert 30 <= value(samples, "beat_lag_seconds") < 60


def test_counters_add_up_across_worker_processes(
    metrics_on, transactional_db, teammate, client, settings, django_capture_on_commit_callbacks
):
    """A prefork worker with two processes, batches of one message and two lanes, so the sends are counted by
    whichever process holds a lane; this (web) process's scrape counts every message exactly once."""
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": f"m{i}", "email": f"m{i}@example.com"} for i in range(6)]
    )
    campaign = _campaign(organisation, "email", {"failed": 0, "bounced": 0})
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": app.conf.broker_url,
        "CELERY_TASK_DEFAULT_QUEUE": app.conf.task_default_queue,
        "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],  # where the counters are kept
        "SECRET_KEY": settings.SECRET_KEY,
        "DB_CONN_MAX_AGE": "0",
        "DELIVERY_BATCH_SIZE": "1",
        "DELIVERY_PARALLELISM": "2",
        "LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", app.conf.task_default_queue),
            *("--pool", "prefork", "--concurrency", "2", "-l", "warning"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        settings.DELIVERY_PARALLELISM = 2
        with django_capture_on_commit_callbacks(execute=True):
            assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        assert wait_for(lambda: Run.objects.get(pk=run.pk).sent_count == 6, 90), "the worker did not send the run"
        handoffs = list(SandboxHandoff.objects.filter(run_id=run.pk).values_list("handoffs", flat=True))
        assert handoffs == [1] * 6  # the provider's ledger: each message handed over once
        assert wait_for(lambda: value(scrape(client), "messages_sent_total", channel="email") == 6, 30)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
