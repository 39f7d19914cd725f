"""Cancel, pause, complete and delete while a slow provider has batches in hand, with real parts: Celery workers
(prefork) in their own processes, PostgreSQL, Redis, the real API, and a notification_service on a local port
that logs when each request arrives and answers only after LATENCY seconds.

What a user observes: the answer comes at once (before the batch that is with the provider is done); from that
answer on nothing more reaches the provider; every message the provider received is recorded as sent, every
other one as cancelled (or, after a pause, sent once on resume); the run's counters equal its rows. Each test
waits for the engine to be idle before it looks.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.test import APIClient

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Campaign, Variant
from config.celery import app
from delivery.models import Message, Run
from tests.factories import CampaignFactory, issue_key
from tests.support import database_url, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
LATENCY = 2.0  # seconds the provider takes to answer each request (a batch's requests go out together)
# One message per batch: each request the provider logs is one hand-off, so its arrival time is the hand-off's
# (a batch's requests otherwise trickle in over a few milliseconds of connection setup).
BATCH = 1
LANES = 2
START_LIMIT = 60.0  # the PRD's limit for a run to start sending after "send now"
IDLE_LIMIT = 60.0


# --- the slow provider ------------------------------------------------------------------------------------------


@dataclass
class Arrival:
    at: float
    key: str
    message_id: int
    run_id: str


@dataclass
class SlowProvider:
    """The notification_service: logs each request as it arrives, then answers 202 after `latency` seconds."""

    latency: float
    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    busy: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)

    def serve(self) -> ThreadingHTTPServer:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                arrival = Arrival(
                    time.time(),
                    self.headers.get("Idempotency-Key", ""),
                    int(body["metadata"]["message_id"]),
                    str(body["metadata"]["run_id"]),
                )
                with provider.lock:
                    provider.arrivals.append(arrival)
                    provider.busy += 1
                    provider.lock.notify_all()
                try:
                    time.sleep(provider.latency)
                    answer = json.dumps({"id": f"np-{arrival.key}"}).encode()
                    self.send_response(202)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                finally:
                    with provider.lock:
                        provider.busy -= 1
                        provider.lock.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            # A batch's requests connect at once: the default backlog of 5 would drop connections, and the kernel's
            # SYN retry would deliver them a second later, as if handed over late.
            request_queue_size = 256

        server = Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def of_run(self, run_id: object) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.run_id == str(run_id)]

    def wait_for_run(self, run_id: object, count: int = 1, timeout: float = START_LIMIT) -> list[Arrival]:
        """Blocks until `count` requests of the run have arrived; returns them."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                arrived = [a for a in self.arrivals if a.run_id == str(run_id)]
                if len(arrived) >= count:
                    return arrived
                left = deadline - time.monotonic()
                assert left > 0, f"run {run_id}: {len(arrived)} of {count} requests reached the provider in {timeout}s"
                self.lock.wait(left)


@pytest.fixture
def provider() -> Iterator[SlowProvider]:
    provider = SlowProvider(latency=LATENCY)
    server = provider.serve()
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield provider
    server.shutdown()


# --- the workers --------------------------------------------------------------------------------------------------


@pytest.fixture
def batch_size() -> int:
    return BATCH


@pytest.fixture
def workers(transactional_db, provider, settings, batch_size) -> Iterator[subprocess.Popen]:
    """A prefork Celery worker on this test session's queue and broker (so the API's on-commit tasks reach it) and
    its cache prefix (so kick markers agree), sending SMS through the slow provider."""
    settings.DELIVERY_PARALLELISM = LANES  # lanes asked for from this process (resume)
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=app.conf.broker_url,
        CELERY_TASK_DEFAULT_QUEUE=app.conf.task_default_queue,
        CACHE_KEY_PREFIX=settings.CACHES["default"]["KEY_PREFIX"],
        SECRET_KEY=settings.SECRET_KEY,  # the worker decrypts the phones this process encrypted
        DB_CONN_MAX_AGE="0",
        DELIVERY_BATCH_SIZE=str(batch_size),
        DELIVERY_PARALLELISM=str(LANES),
        DELIVERY_TASK_SECONDS="30",
        DELIVERY_BACKEND_SMS="delivery.channels.NotificationServiceBackend",
        NOTIFICATION_SERVICE_URL=provider.url,
        MARKETING_SMS_WINDOW="",  # the tests run at any hour
    )
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", app.conf.task_default_queue),
            *("--concurrency", "8", "--pool", "prefork", "-l", "warning"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    yield worker
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def _phones(organisation, count: int) -> None:
    rows = [{"external_id": f"c{i}", "phone": f"+1202555{i:04d}", "first_name": f"C{i}"} for i in range(count)]
    contacts_upsert_rows(organisation=organisation, rows=rows)


def _api(persona) -> APIClient:
    """A client of its own (one per thread), with the persona's role."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_key(persona.organisation, persona.membership.role)}")
    return client


def _sms_campaign(organisation, **fields) -> Campaign:
    return CampaignFactory(
        organisation=organisation,
        channels=["sms"],
        audience_rules={"field": "external_id", "op": "starts_with", "value": "c"},
        **fields,
    )


def _idle(runs: list[Run], provider: SlowProvider) -> bool:
    """Nothing queued in these runs (a claimed batch is still queued until it is recorded) and nobody at the
    provider."""
    with provider.lock:
        if provider.busy:
            return False
    return not Message.objects.filter(run__in=runs, status="queued").exists()


def _statuses(run: Run) -> dict[int, str]:
    return dict(Message.objects.filter(run=run).values_list("id", "status"))


def _assert_counters_match_rows(run: Run) -> Counter:
    run.refresh_from_db()
    rows = Counter(Message.objects.filter(run=run).values_list("status", flat=True))
    assert run.message_count == sum(rows.values()), (run.message_count, rows)
    assert run.sent_count == rows["sent"], (run.sent_count, rows)
    assert run.cancelled_count == rows["cancelled"], (run.cancelled_count, rows)
    assert run.failed_count == rows["failed"] == 0 and run.skipped_count == rows["skipped"] == 0, rows
    return rows


# --- cancel -------------------------------------------------------------------------------------------------------


@dataclass
class Cancelled:
    run: Run
    asked_at: float
    answered_at: float
    # When the earliest batch that was with the provider as the cancel was asked gets its answer.
    in_flight_until: float
    status_code: int


def _send_and_cancel(persona, provider: SlowProvider, seed: int) -> Cancelled:
    api = _api(persona)
    rng = random.Random(seed)
    try:
        campaign = _sms_campaign(persona.organisation)
        response = api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        assert response.status_code == 200, response.data
        run = Run.objects.get(campaign=campaign)
        # Both lanes' first batches are with the provider; the cancel comes somewhere in the first quarter of
        # what is left of the earlier call (the rest is the margin for a loaded machine's slow answer). A cancel
        # while a lane is between claim and hand-off is test_a_batch_claimed_before_the_answer_….
        in_flight = provider.wait_for_run(run.pk, count=LANES * BATCH)
        first, last = in_flight[0], in_flight[-1]
        time.sleep(max(0.0, last.at + rng.uniform(0, max(0.0, first.at + LATENCY - last.at) / 4) - time.time()))
        asked = time.time()
        response = api.post(f"/api/v1/campaigns/{campaign.pk}/cancel/")
        answered = time.time()
        with_provider = [a for a in provider.of_run(run.pk) if a.at <= asked < a.at + LATENCY]
        until = min((a.at + LATENCY for a in with_provider), default=asked)
        return Cancelled(run, asked, answered, until, response.status_code)
    finally:
        connection.close()


def test_100_cancels_of_sending_runs_answer_at_once_and_stop_the_provider(teammate, provider, workers):
    _phones(teammate.organisation, 4 * BATCH)  # 4 batches per run: 2 with the provider at once, 2 queued behind
    started = time.monotonic()
    # Four at a time: every cancel meets runs of other campaigns sending beside it.
    with ThreadPoolExecutor(max_workers=4) as pool:
        cancels = list(pool.map(lambda seed: _send_and_cancel(teammate, provider, seed), range(100)))
    assert wait_for(lambda: _idle([c.run for c in cancels], provider), IDLE_LIMIT), "the workers did not settle"
    print(f"100 cancels in {time.monotonic() - started:.1f}s")

    assert [c.status_code for c in cancels] == [200] * 100
    slowest = max(c.answered_at - c.asked_at for c in cancels)
    print(f"slowest cancel answer: {slowest * 1000:.0f} ms")
    sent_total = cancelled_total = 0
    for cancel in cancels:
        # At once: before the batch that was with the provider when it was asked had its answer.
        assert cancel.answered_at < cancel.in_flight_until, cancel
        arrivals = provider.of_run(cancel.run.pk)
        late = [a for a in arrivals if a.at > cancel.answered_at]
        assert late == [], f"{len(late)} handed to the provider after the cancel answered"
        received = Counter(a.message_id for a in arrivals)
        assert max(received.values()) == 1  # each handed over once
        statuses = _statuses(cancel.run)
        assert {mid for mid, s in statuses.items() if s == "sent"} == set(received)
        assert {mid for mid, s in statuses.items() if s != "sent"} == {
            mid for mid, s in statuses.items() if s == "cancelled"
        }
        rows = _assert_counters_match_rows(cancel.run)
        assert cancel.run.status == "cancelled"
        sent_total += rows["sent"]
        cancelled_total += rows["cancelled"]
    assert Campaign.objects.filter(status="cancelled").count() == 100
    print(f"handed over and recorded sent: {sent_total}; cancelled: {cancelled_total}")
    assert sent_total >= 100 * BATCH  # every cancel caught at least one batch with the provider
    assert cancelled_total >= 100 * BATCH  # …and at least one batch still queued behind it


# 10,000 loop steps per message: a 300-message batch is still rendering well after the answer comes.
SLOW_TO_RENDER = {
    "sms": {
        "body": "{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}Hi {{ contact.first_name }}"
    },
}


def _claimed(run: Run) -> bool:
    """A worker has claimed a batch of the run (delivery.progress books it in Redis right after the claim)."""
    from django.core.cache import cache

    return bool(cache._cache.get_client().exists(cache.make_key(f"run-in-flight:{run.pk}")))


@pytest.mark.parametrize("batch_size", [300])
@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_a_batch_claimed_before_the_answer_is_not_handed_over(teammate, provider, workers, action, batch_size):
    _phones(teammate.organisation, batch_size)  # one batch: a lane claims every message
    campaign = _sms_campaign(teammate.organisation, variants=False)
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=SLOW_TO_RENDER)
    api = _api(teammate)
    assert api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    deadline = time.monotonic() + START_LIMIT
    while not _claimed(run):
        assert time.monotonic() < deadline, "no worker claimed the run"
        time.sleep(0.002)
    asked = time.time()
    response = api.post(f"/api/v1/campaigns/{campaign.pk}/{action}/")
    answered = time.time()
    assert response.status_code == 200, response.data
    assert wait_for(lambda: not _claimed(run), IDLE_LIMIT), "the claimed batch was never let go"
    time.sleep(LATENCY)
    assert provider.of_run(run.pk) == []  # claimed before the answer, rendered after it: not handed over
    print(f"{action} answered in {(answered - asked) * 1000:.0f} ms while the batch was rendering")
    rows = _assert_counters_match_rows(run)
    if action == "cancel":
        assert run.status == "cancelled" and rows == Counter(cancelled=batch_size)
        return
    assert run.status == "paused" and rows == Counter(queued=batch_size)  # kept for resume
    assert api.post(f"/api/v1/campaigns/{campaign.pk}/resume/").status_code == 200
    assert wait_for(lambda: Run.objects.get(pk=run.pk).status == "completed", IDLE_LIMIT)
    received = Counter(a.message_id for a in provider.of_run(run.pk))
    assert len(received) == batch_size and set(received.values()) == {1}
    assert _assert_counters_match_rows(run) == Counter(sent=batch_size)


# --- pause and resume ---------------------------------------------------------------------------------------------


def test_pause_stops_the_provider_at_once_and_resume_sends_the_rest_once(teammate, provider, workers):
    _phones(teammate.organisation, 6 * BATCH)  # 6 batches: with 2 lanes, 3 rounds at the provider
    api = _api(teammate)
    runs = []
    for _ in range(5):
        campaign = _sms_campaign(teammate.organisation)
        assert api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        runs.append(run)
        for pause in range(2):
            # Both lanes with the provider: the first pause inside the first round, the second inside the first
            # round after resuming.
            in_flight = provider.wait_for_run(run.pk, count=(pause + 1) * LANES * BATCH)[-LANES * BATCH :]
            first = in_flight[0]
            asked = time.time()
            response = api.post(f"/api/v1/campaigns/{campaign.pk}/pause/")
            answered = time.time()
            assert response.status_code == 200, response.data
            assert answered < first.at + LATENCY, "the pause waited for the batch with the provider"
            assert wait_for(lambda run=run: _idle_at_provider(run, provider), IDLE_LIMIT)
            time.sleep(LATENCY)  # a batch handed over after the pause would be at the provider by now
            late = [a for a in provider.of_run(run.pk) if a.at > answered]
            assert late == [], f"{len(late)} handed to the provider after the pause answered"
            assert Run.objects.get(pk=run.pk).status == "paused"
            assert Message.objects.filter(run=run, status="queued").exists()  # the rest waits for resume
            assert answered - asked < LATENCY
            assert api.post(f"/api/v1/campaigns/{campaign.pk}/resume/").status_code == 200
        assert wait_for(lambda run=run: Run.objects.get(pk=run.pk).status == "completed", IDLE_LIMIT)
    for run in runs:
        received = Counter(a.message_id for a in provider.of_run(run.pk))
        statuses = _statuses(run)
        assert set(received) == set(statuses) and set(received.values()) == {1}  # every message, once
        assert set(statuses.values()) == {"sent"}
        rows = _assert_counters_match_rows(run)
        assert rows["sent"] == 6 * BATCH
        assert Campaign.objects.get(pk=run.campaign_id).status == "completed"


def _idle_at_provider(run: Run, provider: SlowProvider) -> bool:
    """The run's batches that were with the provider are answered and recorded: no claimed row is left over."""
    received = {a.message_id for a in provider.of_run(run.pk)}
    recorded = set(Message.objects.filter(run=run, status="sent").values_list("id", flat=True))
    return received == recorded


# --- complete and delete of a triggered campaign while events stream in -------------------------------------------


@dataclass
class Stream:
    """Threads posting events through the API until stopped; every answer is kept."""

    persona: object
    threads: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[tuple[float, float, int, list[str]]] = field(default_factory=list)  # asked, answered, code, ids
    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: list[threading.Thread] = field(default_factory=list)

    def start(self, contacts: int) -> None:
        for index in range(self.threads):
            thread = threading.Thread(target=self._post, args=(index, contacts), daemon=True)
            thread.start()
            self.workers.append(thread)

    def _post(self, index: int, contacts: int) -> None:
        api = _api(self.persona)
        sequence = 0
        try:
            while not self.stop.is_set():
                ids = [f"e-{index}-{sequence + i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
                sequence += 3
                events = [
                    {"id": event_id, "type": "order_completed", "contact": f"c{hash(event_id) % contacts}"}
                    for event_id in ids
                ]
                asked = time.time()
                response = api.post("/api/v1/events/", {"events": events}, format="json")
                with self.lock:
                    self.answers.append((asked, time.time(), response.status_code, ids))
                time.sleep(0.02)
        finally:
            connection.close()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.workers:
            thread.join(timeout=30)


def _triggered_campaign(persona) -> Campaign:
    campaign = CampaignFactory(
        organisation=persona.organisation,
        type="triggered",
        trigger_event="order_completed",
        channels=["sms"],
        frequency_limit="none",
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "c"},
    )
    Variant.objects.create(
        campaign=campaign,
        name="A",
        allocation_percent=100,
        content={"sms": {"body": "Thanks {{ contact.first_name }}"}},
    )
    assert _api(persona).post(f"/api/v1/campaigns/{campaign.pk}/activate/").status_code == 200
    return campaign


@pytest.mark.parametrize("ending", ["complete", "delete"])
def test_ending_a_triggered_campaign_while_events_stream_in(teammate, provider, workers, ending):
    _phones(teammate.organisation, 50)
    campaign = _triggered_campaign(teammate)
    run = Run.objects.get(campaign=campaign, trigger="event")
    stream = Stream(teammate)
    stream.start(contacts=50)
    try:
        # Sending is well under way; the ending comes while the run's lane is inside a provider call.
        count = len(provider.wait_for_run(run.pk, count=3 * BATCH))
        provider.wait_for_run(run.pk, count=count + 1)
        api = _api(teammate)
        asked = time.time()
        if ending == "complete":
            response = api.post(f"/api/v1/campaigns/{campaign.pk}/complete/")
        else:
            response = api.delete(f"/api/v1/campaigns/{campaign.pk}/")
        answered = time.time()
        rows_at_answer = Message.objects.filter(run=run).count()
        time.sleep(2 * LATENCY)  # events keep coming after the answer
    finally:
        stream.finish()
    assert response.status_code == 200, response.data
    assert wait_for(lambda: _idle([run], provider), IDLE_LIMIT), "the workers did not settle"

    codes = Counter(code for _a, _b, code, _ids in stream.answers)
    assert set(codes) == {202}, codes  # 0 errors while the campaign ended under them
    assert answered - asked < LATENCY, "the answer waited for the batch with the provider"
    assert Message.objects.filter(run=run).count() == rows_at_answer  # nothing added after the answer
    late = [a for a in provider.of_run(run.pk) if a.at > answered]
    assert late == [], f"{len(late)} handed to the provider after the campaign ended"
    # Nothing lost: every event stored before the ending was asked for has its message, sent or cancelled.
    before = {event_id for _a, done, _c, ids in stream.answers if done < asked for event_id in ids}
    keys = set(Message.objects.filter(run=run).values_list("trigger_key", flat=True))
    assert before <= keys, f"{len(before - keys)} events stored before the ending have no message"
    received = Counter(a.message_id for a in provider.of_run(run.pk))
    statuses = _statuses(run)
    assert max(received.values()) == 1
    assert {mid for mid, s in statuses.items() if s == "sent"} == set(received)
    assert {mid for mid, s in statuses.items() if s != "sent"} == {
        mid for mid, s in statuses.items() if s == "cancelled"
    }
    _assert_counters_match_rows(run)
    run.refresh_from_db()
    ended = Campaign.objects.get(pk=campaign.pk)
    if ending == "complete":
        assert run.status == "completed" and ended.status == "completed"
    else:
        assert run.status == "cancelled" and ended.status == "cancelled" and ended.deleted_at is not None
    print(
        f"{ending}: answered in {(answered - asked) * 1000:.0f} ms; {len(stream.answers)} event posts, "
        f"{sum(received.values())} sent, {sum(1 for s in statuses.values() if s == 'cancelled')} cancelled"
    )


# --- leftovers of a batch rolled back after the cancel -------------------------------------------------------------


def test_the_pump_cancels_what_a_batch_rolled_back_after_the_cancel_left_queued(teammate, transactional_db):
    import psycopg

    from delivery import runs
    from delivery.fanout import run_fan_out

    _phones(teammate.organisation, 3)
    campaign = _sms_campaign(teammate.organisation)
    api = _api(teammate)
    assert api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    run_fan_out(run.pk)
    Run.objects.filter(pk=run.pk).update(status="sending")
    held = sorted(Message.objects.filter(run=run).values_list("id", flat=True))[:2]
    # A worker's claim, on a connection of its own: these rows are locked until it ends.
    params = {
        k: v
        for k, v in connection.get_connection_params().items()
        if k in ("dbname", "user", "password", "host", "port")
    }
    with psycopg.connect(**params) as worker:
        worker.execute("SELECT id FROM delivery_message WHERE id = ANY(%s) FOR UPDATE", [held])
        asked = time.monotonic()
        response = api.post(f"/api/v1/campaigns/{campaign.pk}/cancel/")
        assert response.status_code == 200, response.data
        assert time.monotonic() - asked < LATENCY  # it did not wait for the claimed rows
        worker.rollback()  # the worker dies before recording: its rows are queued again, in a cancelled run
    assert Counter(_statuses(run).values()) == Counter(cancelled=1, queued=2)
    assert runs.delivery_pump()["leftovers_cancelled"] == 2
    assert _assert_counters_match_rows(run) == Counter(cancelled=3)
    assert "leftovers_cancelled" not in runs.delivery_pump()  # nothing left: the next pass does nothing
