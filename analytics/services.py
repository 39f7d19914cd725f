"""Recording engagement (opens and clicks from the tracking endpoints, conversions from the events API) and keeping
the metric deltas compact. Every write is one set-based statement, idempotent on its dedupe key; the metric
triggers (migration 0003) turn the stored events into counts in the same transaction.

Machine opens and clicks — privacy proxies and link scanners, not people — are flagged, and each flag says which
rule decided (METHODOLOGY, shown on reports):
- `apple_mpp`: Apple Mail Privacy Protection fetches every image through Apple's proxies (17.0.0.0/8) with a bare
  `Mozilla/5.0` user agent, whether or not the message is read.
- `scanner_ua`: a user agent of a known security scanner, link checker or HTTP library.
- `head_request`: a HEAD request (link checkers; mail clients GET).
- `too_fast`: an open within 2 s or a click within 10 s of the hand-off — faster than a person opens mail.
- `provider`: the provider said so (the sandbox reproduces proxy opens).
Google's image proxy fetches an image when a person opens the message, so it counts as human.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

METHODOLOGY = (
    "Machine opens and clicks are counted in totals and left out of the human figures: Apple Mail Privacy "
    "Protection (Apple proxy addresses with a bare user agent), known security scanners and link checkers (user "
    "agent, HEAD requests), opens within 2 s and clicks within 10 s of sending, and those the provider flags."
)
APPLE_PROXY = ipaddress.ip_network("17.0.0.0/8")
SCANNER_UA = re.compile(
    r"barracuda|mimecast|proofpoint|symantec|messagelabs|forcepoint|trend ?micro|sophos|fortinet|cisco|ironport|"
    r"safelinks|linkscanner|urldefense|bot\b|crawler|spider|python-requests|python-httpx|curl/|wget/|go-http-client|"
    r"java/|okhttp|headlesschrome|phantomjs|microsoft office|ms-office|outlook-ios-linkpreview|preview",
    re.IGNORECASE,
)
TOO_FAST = {"open": 2.0, "click": 10.0}

MESSAGE_SQL = """
SELECT m.id, r.organisation_id, r.campaign_id, m.run_id, m.variant_id, m.contact_id, m.channel, m.sent_at
FROM delivery_message m JOIN delivery_run r ON r.id = m.run_id
WHERE m.id = %s AND m.status IN ('sent', 'delivered', 'bounced')
"""

INSERT_SQL = """
INSERT INTO analytics_engagementevent (organisation_id, campaign_id, run_id, message_id, variant_id, contact_id,
                                       channel, kind, occurred_at, is_machine, classification, url, value, dedupe_key)
SELECT r.organisation_id, r.campaign_id, m.run_id, m.id, m.variant_id, m.contact_id, m.channel, u.kind,
       u.at, u.machine, u.why, u.url, u.value, u.dedupe
FROM json_to_recordset(%s::json)
     AS u(message_id bigint, kind text, at timestamptz, machine boolean, why text, url text, value numeric,
          dedupe text)
JOIN delivery_message m ON m.id = u.message_id AND m.status IN ('sent', 'delivered', 'bounced')
JOIN delivery_run r ON r.id = m.run_id
ORDER BY u.dedupe
ON CONFLICT (dedupe_key) DO NOTHING
"""


def classify(
    kind: str, *, user_agent: str, ip: str, method: str = "GET", seconds_after_send: float | None = None
) -> tuple[bool, str]:
    """Whether an open or click came from a machine, and the rule that said so."""
    ua = (user_agent or "").strip()
    if method.upper() == "HEAD":
        return True, "head_request"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        address = None
    if kind == "open" and (ua == "Mozilla/5.0" or (address is not None and address in APPLE_PROXY)):
        return True, "apple_mpp"
    if not ua or (SCANNER_UA.search(ua) and "googleimageproxy" not in ua.lower()):
        return True, "scanner_ua"
    if seconds_after_send is not None and seconds_after_send < TOO_FAST.get(kind, 0):
        return True, "too_fast"
    return False, ""


def _parse_message_id(raw: str) -> int | None:
    # Previews, test sends and seed copies carry ids like "preview-…" / "seed-…": nothing to attribute.
    return int(raw) if raw.isdigit() else None


def engagement_record_tracking(
    *, kind: str, message_id: str, user_agent: str, ip: str, method: str = "GET", url: str = "", at: Any = None
) -> bool:
    """An open (pixel) or click (redirect) of a sent message. Repeats count in the totals; a repeat from the
    same client within 5 s (a mail client loading the image twice) is one. Returns whether it was stored."""
    message = _parse_message_id(message_id)
    if message is None:
        return False
    now = at or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(MESSAGE_SQL, [message])
        row = cursor.fetchone()
    if row is None:
        return False
    sent_at = row[7]
    seconds = (now - sent_at).total_seconds() if sent_at else None
    machine, why = classify(kind, user_agent=user_agent, ip=ip, method=method, seconds_after_send=seconds)
    client = hashlib.blake2b(f"{ip}|{user_agent}|{url}".encode(), digest_size=6).hexdigest()
    dedupe = f"track:{kind}:{message}:{client}:{int(now.timestamp() // 5)}"
    stored = engagement_record_many(
        [{"message_id": message, "kind": kind, "at": now, "machine": machine, "why": why, "url": url, "dedupe": dedupe}]
    )
    return stored == 1


def engagement_record_many(events: Sequence[Mapping[str, Any]]) -> int:
    """Store many engagement events in one statement, each attributed through its message (run, campaign, variant,
    channel, contact); unknown or unsent messages are dropped, repeated dedupe keys ignored. Returns how many
    were new. The bulk path for tracking, providers' engagement webhooks and the benchmark."""
    if not events:
        return 0
    rows = [
        {
            "message_id": e["message_id"],
            "kind": e["kind"],
            "at": (e.get("at") or timezone.now()).isoformat(),
            "machine": bool(e.get("machine")),
            "why": e.get("why", ""),
            "url": (e.get("url") or "")[:2048],
            "value": None if e.get("value") is None else str(e["value"]),
            "dedupe": e["dedupe"][:160],
        }
        for e in events
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(INSERT_SQL, [json.dumps(rows)])
        return cursor.rowcount


# --- conversions from the events API ---------------------------------------------------------------------------------

CONVERSION_SQL = """
WITH ev AS (
    SELECT * FROM json_to_recordset(%(events)s::json)
        AS e(event_id text, contact_id bigint, type text, occurred_at timestamptz, value numeric)
), campaigns AS (
    SELECT c.id, c.conversion_event, c.attribution_days, c.attribution_model FROM campaigns_campaign c
    WHERE c.organisation_id = %(org)s AND c.conversion_event = ANY(%(types)s) AND c.deleted_at IS NULL
), messages AS (
    -- The campaign's messages to the contact, each with the moment it touched them: when it was sent, whatever
    -- the age of its run (a triggered run activated months ago sends today). Held-out recipients "touch" when
    -- they were held out (their run's start for a batch, the trigger for a triggered send), so their conversions
    -- form the baseline. Found per run on the (run, contact, …) key.
    SELECT e.event_id, e.occurred_at, e.value, c.id AS campaign_id, c.attribution_model AS model,
           c.attribution_days, m.id AS message_id, m.status,
           CASE WHEN m.status = 'holdout' THEN GREATEST(m.created_at, COALESCE(r.started_sending_at, m.created_at))
                ELSE m.sent_at END AS touched_at
    FROM ev e
    JOIN campaigns c ON c.conversion_event = e.type
    JOIN delivery_run r ON r.campaign_id = c.id
    JOIN delivery_message m ON m.run_id = r.id AND m.contact_id = e.contact_id
    WHERE m.status IN ('sent', 'delivered', 'bounced', 'holdout')
), touches AS (
    -- Those within the window before the event, edges included: 7 days before is in, 7 days and 1 s is out.
    SELECT t.*,
           row_number() OVER (PARTITION BY t.event_id, t.campaign_id
                              ORDER BY t.touched_at DESC, t.message_id DESC) AS from_last,
           row_number() OVER (PARTITION BY t.event_id, t.campaign_id
                              ORDER BY t.touched_at, t.message_id) AS from_first,
           count(*) OVER (PARTITION BY t.event_id, t.campaign_id) AS touches
    FROM messages t
    WHERE t.touched_at <= t.occurred_at
      AND t.touched_at >= t.occurred_at - make_interval(days => t.attribution_days)
), touched AS (
    -- One conversion per event under every model: last_touch credits the latest message with all of it,
    -- first_touch the earliest, linear each of n messages with 1/n (the value split in cents). The latest takes
    -- the rounding remainders, so the credits add up to 1 and the credited values to the event's value.
    SELECT t.*,
           CASE WHEN t.model <> 'linear' THEN 1
                WHEN t.from_last = 1 THEN 1 - round(1.0 / t.touches, 6) * (t.touches - 1)
                ELSE round(1.0 / t.touches, 6) END AS credit,
           CASE WHEN t.model <> 'linear' OR t.value IS NULL THEN t.value
                WHEN t.from_last = 1 THEN t.value - round(t.value / t.touches, 2) * (t.touches - 1)
                ELSE round(t.value / t.touches, 2) END AS credited
    FROM touches t
    WHERE (t.model = 'first_touch' AND t.from_first = 1) OR (t.model = 'linear')
       OR (t.model NOT IN ('first_touch', 'linear') AND t.from_last = 1)
)
INSERT INTO analytics_engagementevent (organisation_id, campaign_id, run_id, message_id, variant_id, contact_id,
                                       channel, kind, occurred_at, is_machine, classification, url, value, credit,
                                       dedupe_key)
SELECT %(org)s, t.campaign_id, m.run_id, m.id, m.variant_id, m.contact_id, m.channel, 'conversion', t.occurred_at,
       false, CASE WHEN t.status = 'holdout' THEN 'holdout' ELSE '' END, '', t.credited, t.credit,
       'conversion:' || t.campaign_id || ':' || t.event_id || CASE WHEN t.model = 'linear' THEN ':' || m.id ELSE '' END
FROM touched t JOIN delivery_message m ON m.id = t.message_id
ORDER BY 15
ON CONFLICT (dedupe_key) DO NOTHING
"""


# An event's revenue: the first of these properties it has, in cents (half to even); not a number, none.
EVENT_VALUE_KEYS = ("value", "revenue", "amount", "total")


def event_value_sql(properties_sql: str) -> str:
    """_event_value in SQL, for a jsonb column: the same key order, the same numbers accepted, the same rounding."""
    number = r"^\s*[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
    whens = " ".join(
        f"WHEN {properties_sql} ? '{key}' THEN CASE WHEN ({properties_sql} ->> '{key}') ~ '{number}'"
        f" THEN trim({properties_sql} ->> '{key}')::numeric * 100 END"
        for key in EVENT_VALUE_KEYS
    )
    cents = f"(CASE {whens} END)"
    # round() in PostgreSQL takes halves away from zero; Decimal.quantize takes them to the even cent.
    return (
        f"(CASE WHEN {cents} - floor({cents}) = 0.5 THEN floor({cents}) + abs(mod(floor({cents}), 2))"
        f" ELSE round({cents}) END / 100)::numeric(20, 2)"
    )


def _event_value(properties: Mapping[str, Any]) -> str | None:
    for key in EVENT_VALUE_KEYS:
        if key in properties:
            try:
                return str(Decimal(str(properties[key])).quantize(Decimal("0.01")))
            except (InvalidOperation, ValueError):
                return None
    return None


def conversions_from_events(organisation: Any, events: Sequence[Mapping[str, Any]]) -> int:
    """Attribute stored events to the campaigns that name their type as the conversion event (in the ingestion
    transaction): one conversion per event and campaign, credited to the campaign's messages sent to the contact
    within the attribution window before it, by the campaign's model. A repeated event id converts nothing twice.
    Returns how many touches were credited."""
    if not events:
        return 0
    types = sorted({e["type"] for e in events})
    rows = [
        {
            "event_id": str(e["event_id"]),
            "contact_id": e["contact_id"],
            "type": e["type"],
            "occurred_at": e["occurred_at"].isoformat() if isinstance(e["occurred_at"], datetime) else e["occurred_at"],
            "value": _event_value(e.get("properties") or {}),
        }
        for e in events
        if e.get("contact_id")
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM campaigns_campaign"
            " WHERE organisation_id = %s AND conversion_event = ANY(%s))",
            [str(organisation.pk), types],
        )
        if not cursor.fetchone()[0]:
            return 0
        cursor.execute(CONVERSION_SQL, {"events": json.dumps(rows), "org": str(organisation.pk), "types": types})
        return cursor.rowcount


# --- compaction ------------------------------------------------------------------------------------------------------

COMPACT_SQL = """
WITH old AS (
    SELECT campaign_id, run_id, variant_id, channel, bucket, metric
    FROM analytics_metricdelta WHERE created_at < %(cutoff)s
    GROUP BY 1, 2, 3, 4, 5, 6 HAVING count(*) > 1
    LIMIT %(keys)s
), moved AS (
    DELETE FROM analytics_metricdelta d USING old o
    WHERE d.created_at < %(cutoff)s AND d.campaign_id = o.campaign_id AND d.run_id = o.run_id
      AND d.variant_id = o.variant_id AND d.channel = o.channel AND d.bucket = o.bucket AND d.metric = o.metric
    RETURNING d.campaign_id, d.run_id, d.variant_id, d.channel, d.bucket, d.metric, d.count, d.amount, d.credit,
              d.created_at
)
INSERT INTO analytics_metricdelta (campaign_id, run_id, variant_id, channel, bucket, metric, count, amount, credit,
                                   created_at)
SELECT campaign_id, run_id, variant_id, channel, bucket, metric, sum(count), sum(amount), sum(credit),
       max(created_at)
FROM moved GROUP BY 1, 2, 3, 4, 5, 6
"""


def metrics_compact(*, older_than: timedelta = timedelta(seconds=30), keys: int = 50_000) -> int:
    """Fold each key's deltas older than `older_than` into one row (sums unchanged), so reads stay short however
    long a campaign runs. Safe beside writers: new deltas are newer than the cutoff. Returns keys folded."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(COMPACT_SQL, {"cutoff": timezone.now() - older_than, "keys": keys})
        folded = cursor.rowcount
    if folded and not connection.in_atomic_block:
        # The folded rows leave dead tuples that every metrics read would step over until autovacuum came by
        # (a 10M-message campaign read 1,500 dead pages: 16 ms instead of 4). The table is small: vacuum now.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM analytics_metricdelta")
    return folded
