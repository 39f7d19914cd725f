"""Log lines and request ids as an operator and an API client see them: the X-Request-ID header, the id in API
error bodies and on the request's JSON log lines, and a real worker's lines carrying the run and campaign they
were written for, without the pump's per-tick chatter."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from audiences.contacts import contacts_upsert_rows
from config.celery import app
from delivery.models import Run
from delivery.tasks import delivery_pump_task
from tests.factories import CampaignFactory
from tests.support import database_url, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db


def test_a_callers_request_id_is_returned_and_one_is_made_when_missing_or_malformed(teammate):
    given = teammate.api.get("/api/v1/organisation/", HTTP_X_REQUEST_ID="lb-7f3a.42")
    assert given["X-Request-ID"] == "lb-7f3a.42"
    made = teammate.api.get("/api/v1/organisation/")
    assert re.fullmatch(r"[0-9a-f]{32}", made["X-Request-ID"])
    # Not an id: a header must not put arbitrary text on our log lines.
    replaced = teammate.api.get("/api/v1/organisation/", HTTP_X_REQUEST_ID="x" * 129)
    assert re.fullmatch(r"[0-9a-f]{32}", replaced["X-Request-ID"])
    spaced = teammate.api.get("/api/v1/organisation/", HTTP_X_REQUEST_ID="two words")
    assert re.fullmatch(r"[0-9a-f]{32}", spaced["X-Request-ID"])


def test_api_error_bodies_carry_the_request_id(teammate, analyst):
    campaign = CampaignFactory(organisation=teammate.organisation)
    missing = teammate.api.get("/api/v1/campaigns/00000000-0000-0000-0000-000000000000/", HTTP_X_REQUEST_ID="r-404")
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": "No Campaign matches the given query.", "request_id": "r-404"},
    )
    # A validation error maps fields to messages: the id is in its header only (a field could be named request_id).
    invalid = teammate.api.post("/api/v1/campaigns/", {"name": ""}, format="json", HTTP_X_REQUEST_ID="r-400")
    assert (invalid.status_code, invalid["X-Request-ID"], "request_id" in invalid.json()) == (400, "r-400", False)
    conflict = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/pause/", HTTP_X_REQUEST_ID="r-409")
    assert (conflict.status_code, conflict.json()["request_id"]) == (409, "r-409")
    forbidden = analyst.api.post("/api/v1/campaigns/", {"name": "x"}, format="json", HTTP_X_REQUEST_ID="r-403")
    assert (forbidden.status_code, forbidden.json()["request_id"]) == (403, "r-403")


@pytest.fixture
def console_output() -> io.StringIO:
    """What the configured console handler (settings.LOGGING: formatter and filters) writes, into a buffer."""
    (console,) = [handler for handler in logging.getLogger().handlers if handler.get_name() == "console"]
    buffer = io.StringIO()
    copy = logging.StreamHandler(buffer)
    copy.setFormatter(console.formatter)
    for log_filter in console.filters:
        copy.addFilter(log_filter)
    logging.getLogger().addHandler(copy)
    yield buffer
    logging.getLogger().removeHandler(copy)


def test_a_requests_log_lines_are_json_with_its_request_id(client, console_output):
    assert client.get("/no-such-page/", HTTP_X_REQUEST_ID="trace-me-1").status_code == 404
    lines = [json.loads(line) for line in console_output.getvalue().splitlines()]
    (not_found,) = [line for line in lines if line["logger"] == "django.request"]
    assert not_found["level"] == "WARNING"
    assert not_found["message"] == "Not Found: /no-such-page/"
    assert not_found["request_id"] == "trace-me-1"
    assert not_found["status_code"] == 404


def test_a_workers_engine_lines_carry_run_and_campaign_and_the_pump_is_quiet(
    transactional_db, teammate, settings, django_capture_on_commit_callbacks
):
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": f"w{i}", "email": f"w{i}@example.com"} for i in range(3)]
    )
    campaign = CampaignFactory(organisation=organisation, sandbox_profile={"failed": 0, "bounced": 0})
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": app.conf.broker_url,
        "CELERY_TASK_DEFAULT_QUEUE": app.conf.task_default_queue,
        "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
        "SECRET_KEY": settings.SECRET_KEY,
        "DB_CONN_MAX_AGE": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", app.conf.task_default_queue),
                *("--pool", "solo", "-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        try:
            delivery_pump_task.delay()
            with django_capture_on_commit_callbacks(execute=True):
                assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
            run = Run.objects.get(campaign=campaign)
            assert wait_for(lambda: Run.objects.get(pk=run.pk).sent_count == 3, 90), "the worker did not send the run"
            delivery_pump_task.delay()  # the pump finishes the run; its lines are DEBUG
            assert wait_for(lambda: Run.objects.get(pk=run.pk).status == Run.Status.COMPLETED, 90)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        log.seek(0)
        lines = [json.loads(line) for line in log.read().decode().splitlines() if line.startswith("{")]

    sends = [
        line for line in lines if "delivery.tasks.run_send_task" in line["message"] and "succeeded" in line["message"]
    ]
    assert sends, "no run_send_task line"
    for line in sends:
        assert (line["level"], line["run_id"], line["campaign_id"]) == ("INFO", str(run.pk), str(campaign.pk))
        assert line["task"] == "delivery.tasks.run_send_task"
    prepared = [line for line in lines if "run_prepare_task" in line["message"] and "succeeded" in line["message"]]
    assert [(line["run_id"], line["campaign_id"]) for line in prepared] == [(str(run.pk), str(campaign.pk))]
    assert [line for line in lines if "delivery_pump_task" in line["message"]] == []


class _Envelopes(BaseHTTPRequestHandler):
    """A Sentry-compatible ingestion endpoint: keeps every envelope posted to it, decompressed."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":
            import brotli

            body = brotli.decompress(body)
        self.received.append(body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


SENTRY_SCRIPT = """
import logging, django, sentry_sdk
django.setup()
print("active", sentry_sdk.get_client().is_active())
logging.getLogger("ops.check").error("the sentry check")
sentry_sdk.flush(10)
"""


def test_errors_reach_sentry_when_a_dsn_is_set_and_only_then(settings):
    import sentry_sdk

    assert not sentry_sdk.get_client().is_active()  # this process has no SENTRY_DSN: the SDK was never initialised
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Envelopes)
    _Envelopes.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SENTRY_DSN": f"http://public@127.0.0.1:{server.server_port}/42",
    }
    try:
        result = subprocess.run(
            [sys.executable, "-c", SENTRY_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert "active True" in result.stdout
    events = [item for body in _Envelopes.received for item in _envelope_items(body) if item.get("level") == "error"]
    assert [event.get("logentry", {}).get("message") for event in events] == ["the sentry check"]


def _envelope_items(body: bytes) -> list[dict]:
    """The JSON objects of a Sentry envelope (a header line, then item headers and payloads, one a line)."""
    items = []
    for line in body.split(b"\n"):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            items.append(item)
    return items
