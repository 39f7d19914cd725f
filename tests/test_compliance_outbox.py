"""The account_service outbox: consent changes written in the change's transaction, pushed on commit, retried with
backoff against a server that fails first, never pushed for a rolled-back change, nothing without a URL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.content import links
from compliance import outbox, services
from compliance.models import OutboxEvent
from compliance.tasks import compliance_outbox_push_task

pytestmark = pytest.mark.django_db


class AccountService(BaseHTTPRequestHandler):
    """A local account_service: answers the queued status codes first, then 200."""

    requests: list[dict] = []
    failures: list[int] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        AccountService.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
        code = AccountService.failures.pop(0) if AccountService.failures else 200
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def account_service(settings) -> Iterator[str]:
    AccountService.requests, AccountService.failures = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), AccountService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    settings.ACCOUNT_SERVICE_URL = url
    settings.ACCOUNT_SERVICE_TOKEN = "acct-token"
    settings.ACCOUNT_SERVICE_RETRY_BASE_SECONDS = 30
    yield url
    server.shutdown()


@pytest.fixture
def contact(organisation) -> Contact:
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "o1", "email": "o1@example.com"}])
    return Contact.objects.get(organisation=organisation, external_id="o1")


def _due_now() -> None:
    OutboxEvent.objects.filter(delivered_at__isnull=True).update(next_attempt_at=timezone.now())


def test_an_unsubscribe_is_pushed_after_retries_against_a_failing_server(
    account_service, contact, django_capture_on_commit_callbacks
):
    AccountService.failures = [503, 500]
    token = links.unsubscribe_token(str(contact.organisation_id), str(contact.pk))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = Client().post(
            f"/u/{token}", data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
        )
    assert response.status_code == 200
    assert len(callbacks) == 1  # the push is enqueued on commit; no worker runs here, so the test calls the task
    event = OutboxEvent.objects.get()
    assert (event.kind, event.contact_id, event.delivered_at) == ("unsubscribe", contact.pk, None)

    before = timezone.now()
    assert compliance_outbox_push_task() == {"pushed": 0, "retrying": 1}
    event.refresh_from_db()
    assert event.attempts == 1 and event.last_error.startswith("HTTP 503")
    assert 15 <= (event.next_attempt_at - before).total_seconds() <= 61  # base 30 s * 2^1, jittered
    # Not due yet: celery-beat's next pass leaves it alone.
    assert compliance_outbox_push_task() == {"pushed": 0, "retrying": 0}
    _due_now()
    assert compliance_outbox_push_task() == {"pushed": 0, "retrying": 1}
    event.refresh_from_db()
    assert event.attempts == 2 and (event.next_attempt_at - timezone.now()) > timedelta(seconds=29)
    _due_now()
    assert compliance_outbox_push_task() == {"pushed": 1, "retrying": 0}
    event.refresh_from_db()
    assert event.delivered_at is not None and event.last_error == "" and event.attempts == 3

    assert len(AccountService.requests) == 3
    last = AccountService.requests[-1]
    assert last["path"] == "/v1/consent-events"
    assert last["headers"]["Authorization"] == "Bearer acct-token"
    assert {r["headers"]["Idempotency-Key"] for r in AccountService.requests} == {f"consent-{event.pk}"}
    body = last["json"]
    assert body["sequence"] == event.pk and body["kind"] == "unsubscribe" and body["contact"] == "o1"
    assert body["organisation_id"] == str(contact.organisation_id)
    assert body["preferences"]["unsubscribed"] is True
    # Pushed once: nothing more to do.
    _due_now()
    assert compliance_outbox_push_task() == {"pushed": 0, "retrying": 0}


def test_an_unreachable_server_is_retried_and_gives_up_after_the_limit(settings, account_service, contact, teammate):
    settings.ACCOUNT_SERVICE_URL = "http://127.0.0.1:9"  # nothing listens on the discard port
    settings.ACCOUNT_SERVICE_MAX_ATTEMPTS = 2
    services.preference_update(actor=teammate.actor, contact=contact, changes={"global_opt_out": True}, source="api")
    assert outbox.push_due() == {"pushed": 0, "retrying": 1}
    _due_now()
    assert outbox.push_due() == {"pushed": 0, "retrying": 1}
    _due_now()
    assert outbox.push_due() == {"pushed": 0, "retrying": 0}  # at the limit: left for an operator
    event = OutboxEvent.objects.get()
    assert event.attempts == 2 and event.delivered_at is None and "ConnectError" in event.last_error


def test_a_change_that_rolls_back_writes_no_outbox_row(account_service, contact, teammate):
    with pytest.raises(RuntimeError), transaction.atomic():
        services.preference_update(
            actor=teammate.actor, contact=contact, changes={"disabled_channels": ["sms"]}, source="api"
        )
        raise RuntimeError("the caller failed after the change")
    assert not OutboxEvent.objects.exists()
    # A change that changes nothing pushes nothing either.
    services.preference_update(actor=teammate.actor, contact=contact, changes={"disabled_channels": []}, source="api")
    assert not OutboxEvent.objects.exists()


def test_without_an_account_service_nothing_is_written_or_pushed(settings, contact, teammate):
    settings.ACCOUNT_SERVICE_URL = ""
    services.preference_update(actor=teammate.actor, contact=contact, changes={"global_opt_out": True}, source="api")
    assert not OutboxEvent.objects.exists()
    assert compliance_outbox_push_task() == {"pushed": 0, "retrying": 0}


def test_celery_beat_retries_the_outbox(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["compliance-outbox"]
    assert entry["task"] == "compliance.tasks.compliance_outbox_push_task"
    assert entry["options"]["expires"] > 0
