"""The built-in sandbox provider, every channel's default in `make run`.

It behaves like a real provider without sending anything: an optional latency per call, an outcome per message
(delivered / bounced / failed at configured rates) and engagement (open, click, conversion at configured rates per
variant), so a demo shows live metrics and a real A/B result. Every draw is a hash of the message's idempotency
key, so a message handed over twice gets the same outcome.

Like a real provider it keeps its own books, outside our transactions: a ledger row per idempotency key counting
hand-offs (on its own autocommit connection, as if it were another service). A hand-off repeated after a crash is
counted there and delivered once, which is how the reliability tests count duplicates at the provider.

Engagement arrives as it would from people: a privacy proxy's open seconds after delivery, a reader's open within
the hour, clicks after it and conversions up to a couple of hours later. The engine keeps what is reported for
later as ScheduledEngagement rows (written with the batch's outcome, in its transaction) and
scheduled_engagement_record_due, run by celery-beat every few seconds, records the due ones dated when they were
due — so a report fills in live and nothing is dated in the future. A profile with `"engagement_over_time": false`
reports everything at the send (tests that look at engagement right after a send use it).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from delivery.backends import Engagement, Outcome, Outgoing

_local = threading.local()


def sandbox_profile(campaign_profile: Mapping[str, Any] | None) -> dict[str, Any]:
    """settings.SANDBOX_PROVIDER overlaid with a campaign's own sandbox_profile."""
    merged: dict[str, Any] = {**settings.SANDBOX_PROVIDER}
    for key, value in (campaign_profile or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _draw(key: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the key: the same message always draws the same."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _ledger_connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "pid", None) != os.getpid():
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        conn = psycopg.connect(**params, autocommit=True)
        _local.conn, _local.pid = conn, os.getpid()
    return conn


def _record_handoffs(messages: Sequence[Outgoing], outcomes: Sequence[str]) -> None:
    rows = [
        {"k": m.idempotency_key, "r": m.run_id, "c": m.channel, "o": outcome}
        for m, outcome in zip(messages, outcomes, strict=True)
    ]
    sql = (
        "INSERT INTO delivery_sandboxhandoff (idempotency_key, run_id, channel, handoffs, outcome, first_at, last_at)"
        " SELECT u.k, u.r, u.c, 1, u.o, now(), now()"
        " FROM json_to_recordset(%s::json) AS u(k text, r uuid, c text, o text)"
        " ON CONFLICT (idempotency_key) DO UPDATE"
        " SET handoffs = delivery_sandboxhandoff.handoffs + 1, last_at = now()"
    )
    params = [json.dumps(rows)]
    try:
        _ledger_connection().execute(sql, params)
    except psycopg.OperationalError:
        _local.conn = None  # a dropped connection: reconnect once
        _ledger_connection().execute(sql, params)


def _engagement(message: Outgoing, rates: Mapping[str, Any], *, over_time: bool = True) -> list[Engagement]:
    events = _engagement_over_time(message, rates)
    if over_time:
        return events
    return [Engagement(e.kind, seconds_after_send=0.0, value=e.value, is_machine=e.is_machine) for e in events]


def _engagement_over_time(message: Outgoing, rates: Mapping[str, Any]) -> list[Engagement]:
    key = message.idempotency_key
    events: list[Engagement] = []
    opened = _draw(key, "open") < float(rates.get("open", 0))
    machine_open = _draw(key, "machine-open") < float(rates.get("machine_open", 0))
    if machine_open:
        # A privacy proxy fetches the pixel within seconds of delivery, whether or not anyone reads it.
        events.append(Engagement("open", seconds_after_send=2.0, is_machine=True))
    if opened and message.channel in ("email", "in_app"):
        events.append(Engagement("open", seconds_after_send=60 + 3600 * _draw(key, "open-at")))
    clicks = opened or message.channel not in ("email", "in_app")
    if clicks and _draw(key, "click") < float(rates.get("click", 0)):
        events.append(Engagement("click", seconds_after_send=120 + 3600 * _draw(key, "click-at")))
        if _draw(key, "conversion") < float(rates.get("conversion", 0)):
            value = round(float(rates.get("order_value", 40)) * (0.5 + _draw(key, "value")), 2)
            events.append(Engagement("conversion", seconds_after_send=600 + 7200 * _draw(key, "conv-at"), value=value))
    return events


class SandboxBackend:
    """Any channel. Outcome per message at the profile's rates; nothing leaves the machine."""

    def send_batch(self, messages: Sequence[Outgoing], *, profile: dict[str, Any]) -> list[Outcome]:
        latency = float(profile.get("latency_ms", 0)) / 1000
        if latency:
            time.sleep(latency)  # one provider call per batch
        bounce = float(profile.get("bounced", 0))
        fail = float(profile.get("failed", 0))
        engagement_rates: Mapping[str, Any] = profile.get("engagement") or {}
        per_variant: Mapping[str, Any] = profile.get("variants") or {}
        over_time = bool(profile.get("engagement_over_time", True))
        outcomes: list[Outcome] = []
        statuses: list[str] = []
        for message in messages:
            key = message.idempotency_key
            provider_id = "sbx-" + hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
            draw = _draw(key, "outcome")
            if draw < fail:
                outcome = Outcome(message.message_id, "failed", provider_id, "sandbox: provider rejected the message")
            elif draw < fail + bounce:
                outcome = Outcome(message.message_id, "bounced", provider_id, "sandbox: mailbox does not exist")
            else:
                rates = {**engagement_rates, **(per_variant.get(message.variant_name) or {})}
                engagement = _engagement(message, rates, over_time=over_time)
                outcome = Outcome(message.message_id, "delivered", provider_id, "", 0.0, engagement)
            outcomes.append(outcome)
            statuses.append(outcome.status)
        if profile.get("ledger", True):
            _record_handoffs(messages, statuses)
        return outcomes


# --- engagement reported for later -------------------------------------------------------------------------------

SCHEDULE_SQL = """
INSERT INTO delivery_scheduledengagement (message_id, kind, due_at, is_machine, value, dedupe_key)
SELECT u.m, u.k, %s::timestamptz + make_interval(secs => u.after), u.machine, u.value, u.d
FROM json_to_recordset(%s::json) AS u(m bigint, k text, after float8, machine boolean, value numeric, d text)
ON CONFLICT (dedupe_key) DO NOTHING
"""

# One statement: take the due rows (SKIP LOCKED, so two recorders share the work instead of waiting), delete them
# and record them as engagement events of their message, dated when they were due. A message gone since (a purged
# campaign) takes its rows with it; the dedupe key makes a row recorded twice count once.
RECORD_DUE_SQL = """
WITH due AS (
    DELETE FROM delivery_scheduledengagement
    WHERE id IN (SELECT id FROM delivery_scheduledengagement WHERE due_at <= %(now)s
                 ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING message_id, kind, due_at, is_machine, value, dedupe_key
)
INSERT INTO analytics_engagementevent (organisation_id, campaign_id, run_id, message_id, variant_id, contact_id,
                                       channel, kind, occurred_at, is_machine, value, dedupe_key)
SELECT r.organisation_id, r.campaign_id, m.run_id, m.id, m.variant_id, m.contact_id, m.channel, d.kind, d.due_at,
       d.is_machine, d.value, d.dedupe_key
FROM due d JOIN delivery_message m ON m.id = d.message_id JOIN delivery_run r ON r.id = m.run_id
ORDER BY d.dedupe_key
ON CONFLICT (dedupe_key) DO NOTHING
"""

RECORD_BATCH = 5000


def scheduled_engagement_add(cursor: Any, events: Sequence[Mapping[str, Any]], *, now: datetime) -> None:
    """Keep engagement reported for later (`after` seconds past `now`) until it is due: rows with the message
    id (`m`), kind (`k`), `after`, `machine`, `value` and dedupe key (`d`), in the caller's transaction."""
    if events:
        cursor.execute(SCHEDULE_SQL, [now, json.dumps(list(events))])


def scheduled_engagement_record_due(*, now: datetime | None = None, batches: int = 20) -> int:
    """Record the engagement whose time has come, up to `batches` x RECORD_BATCH rows (the next beat takes the
    rest). Idempotent; with nothing due it is one index probe. Returns how many events it recorded."""
    taken = 0
    for _ in range(batches):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(RECORD_DUE_SQL, {"now": now or timezone.now(), "limit": RECORD_BATCH})
            recorded = cursor.rowcount  # the INSERT's: fewer than a batch means nothing more is due now
        taken += recorded
        if recorded < RECORD_BATCH:
            break
    return taken
