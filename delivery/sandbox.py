"""The built-in sandbox provider, every channel's default in `make run`.

It behaves like a real provider without sending anything: an optional latency per call, an outcome per message
(delivered / bounced / failed at configured rates) and engagement (open, click, conversion at configured rates per
variant), so a demo shows live metrics and a real A/B result. Every draw is a hash of the message's idempotency
key, so a message handed over twice gets the same outcome.

Like a real provider it keeps its own books, outside our transactions: a ledger row per idempotency key counting
hand-offs (on its own autocommit connection, as if it were another service). A hand-off repeated after a crash is
counted there and delivered once, which is how the reliability tests count duplicates at the provider.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection

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


def _engagement(message: Outgoing, rates: Mapping[str, Any]) -> list[Engagement]:
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
                outcome = Outcome(message.message_id, "delivered", provider_id, "", 0.0, _engagement(message, rates))
            outcomes.append(outcome)
            statuses.append(outcome.status)
        if profile.get("ledger", True):
            _record_handoffs(messages, statuses)
        return outcomes
