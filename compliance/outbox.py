"""The account_service outbox: consent changes written next to the change, pushed afterwards with retries.

The local preference store is the source of truth; account_service gets a copy. `enqueue` runs inside the
service's transaction (no push for a change that rolled back, no change without its push) and asks for a push
on commit; celery-beat's `compliance_outbox_push_task` retries whatever is still due, so a push lost with a worker
or refused by a down account_service goes out later. Without ACCOUNT_SERVICE_URL (the embedded default) nothing is
written or pushed.

Pushes claim due rows with `FOR UPDATE SKIP LOCKED`, so two workers never push the same row at once; the request
carries an Idempotency-Key, so a push repeated after a crash between the call and the commit is harmless.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audiences.models import Contact
from compliance.models import OutboxEvent

logger = logging.getLogger(__name__)


def enabled() -> bool:
    return bool(settings.ACCOUNT_SERVICE_URL)


def enqueue(*, contact: Contact, kind: str, state: dict[str, Any]) -> OutboxEvent | None:
    if not enabled():
        return None
    event = OutboxEvent.objects.create(
        organisation_id=contact.organisation_id,
        contact_id=contact.pk,
        kind=kind,
        payload={"contact": contact.external_id, "preferences": state},
        next_attempt_at=timezone.now(),
    )
    from compliance.tasks import compliance_outbox_push_task
    from config.outage import task_enqueue_on_commit

    task_enqueue_on_commit(compliance_outbox_push_task)  # beat's retry pushes it if the broker is down
    return event


def backoff(attempts: int) -> float:
    """Exponential with jitter: between half and all of base * 2^attempts seconds, capped at an hour."""
    ceiling = min(3600.0, settings.ACCOUNT_SERVICE_RETRY_BASE_SECONDS * 2**attempts)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


def _body(event: OutboxEvent) -> dict[str, Any]:
    return {
        "sequence": event.pk,
        "organisation_id": str(event.organisation_id),
        "kind": event.kind,
        "occurred_at": event.created_at.isoformat(),
        **event.payload,
    }


def push_due(*, limit: int = 100, client: httpx.Client | None = None) -> dict[str, int]:
    """Push one batch of due events. Returns how many were pushed and how many wait for a retry."""
    if not enabled():
        return {"pushed": 0, "retrying": 0}
    url = settings.ACCOUNT_SERVICE_URL.rstrip("/") + "/v1/consent-events"
    headers = {"Authorization": f"Bearer {settings.ACCOUNT_SERVICE_TOKEN}"} if settings.ACCOUNT_SERVICE_TOKEN else {}
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(settings.EXTERNAL_HTTP_TIMEOUT), follow_redirects=False)
    pushed = retrying = 0
    try:
        with transaction.atomic():
            due = list(
                OutboxEvent.objects.select_for_update(skip_locked=True)
                .filter(
                    delivered_at__isnull=True,
                    next_attempt_at__lte=timezone.now(),
                    attempts__lt=settings.ACCOUNT_SERVICE_MAX_ATTEMPTS,
                )
                .order_by("id")[:limit]
            )
            for event in due:
                error = ""
                try:
                    response = http.post(
                        url, json=_body(event), headers={**headers, "Idempotency-Key": f"consent-{event.pk}"}
                    )
                    if response.status_code >= 300:
                        error = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                now = timezone.now()
                event.attempts += 1
                if error:
                    event.last_error = error[:500]
                    event.next_attempt_at = now + timedelta(seconds=backoff(event.attempts))
                    retrying += 1
                else:
                    event.delivered_at, event.last_error = now, ""
                    pushed += 1
                event.save(update_fields=["attempts", "last_error", "next_attempt_at", "delivered_at"])
    finally:
        if own:
            http.close()
    if retrying:
        logger.warning("account_service outbox: %d pushed, %d failed and wait for a retry", pushed, retrying)
    return {"pushed": pushed, "retrying": retrying}
