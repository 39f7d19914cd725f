"""A retry waits its backoff, and no more than the pump's period beyond it: a webhook receiver on a local port
answers 503 with Retry-After the first time it sees an idempotency key and 200 the second; the engine (beat,
prefork workers, a Redis of its own) must come back for each message at its due time — not earlier, and not at
some stall timeout later — and must not call in between."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audiences.contacts import contacts_upsert_rows
from campaigns import services
from delivery import runs
from delivery.models import Message, Run
from tests.factories import CampaignFactory
from tests.support import wait_for
from tests.test_delivery_reliability import Engine

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

RETRY_AFTER = 4  # seconds, as the receiver asks
PUMP_SECONDS = 2


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.arrivals: dict[str, list[float]] = {}
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers["Idempotency-Key"]
        with self.server.lock:
            seen = self.server.arrivals.setdefault(key, [])
            seen.append(time.time())
            first = len(seen) == 1
        self.send_response(503 if first else 200)
        if first:
            self.send_header("Retry-After", str(RETRY_AFTER))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class WebhookEngine(Engine):
    target = ""  # the receiver's host:port, allowed as a webhook target

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            DELIVERY_BACKEND_WEBHOOK="delivery.channels.WebhookBackend",
            SSRF_ALLOWED_TARGETS=self.target,
            # Stall detection must not be what brings the retries back.
            DELIVERY_STALL_SECONDS="600",
            DELIVERY_PUMP_SECONDS=str(PUMP_SECONDS),
        )
        return env


def test_a_retry_comes_back_at_its_backoff(tmp_path, teammate, django_capture_on_commit_callbacks, settings):
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{receiver.server_address[1]}"
    settings.SSRF_ALLOWED_TARGETS = [target]  # saved in this process, sent from the engine's
    engine = WebhookEngine(tmp=tmp_path)
    engine.target = target
    engine.start()
    try:
        contacts_upsert_rows(
            organisation=teammate.organisation,
            rows=[{"external_id": f"w{i}", "email": f"w{i}@example.com"} for i in range(5)],
        )
        campaign = CampaignFactory(
            organisation=teammate.organisation,
            channels=["webhook"],
            category="transactional",
            audience_rules={"field": "external_id", "op": "starts_with", "value": "w"},
            variants=False,
        )
        campaign.variants.create(
            name="A",
            allocation_percent=100,
            content={
                "webhook": {
                    "url": f"http://{target}/hook",
                    "payload_template": '{"id": "{{ contact.external_id }}"}',
                }
            },
        )
        # Fanned out here; the tasks this process asks for go to its own broker, not the engine's: the engine's
        # pump finds the sending run with messages due and asks its workers.
        with django_capture_on_commit_callbacks(execute=False):
            services.campaign_transition(actor=teammate.actor, campaign_id=campaign.pk, action="start")
            run = Run.objects.get(campaign=campaign)
            runs.run_prepare(run.pk)
        # The PRD's 60 s for a send to start, then the backoff.
        assert wait_for(lambda: Run.objects.get(pk=run.pk).status == "completed", 60 + RETRY_AFTER + 30), (
            Run.objects.get(pk=run.pk).status,
            list(Message.objects.filter(run=run).values_list("status", "attempts", "error", "due_at")),
            receiver.arrivals,
        )
        assert set(Message.objects.filter(run=run).values_list("status", "attempts")) == {("delivered", 2)}
        assert len(receiver.arrivals) == 5
        for key, arrivals in receiver.arrivals.items():
            assert len(arrivals) == 2, (key, arrivals)  # nothing in between
            waited = arrivals[1] - arrivals[0]
            # Not before Retry-After; back within the pump's period (plus a worker's pick-up) after it.
            assert RETRY_AFTER <= waited <= RETRY_AFTER + PUMP_SECONDS + 8, (key, waited)
    finally:
        engine.stop()
        receiver.shutdown()
