"""Sending: workers claim batches of a run's due messages, render them, hand them to the channel backend and record
what happened, all in one PostgreSQL transaction per batch.

The claim is `SELECT … FOR UPDATE SKIP LOCKED` on the (run, due_at) index of queued rows: concurrent workers take
disjoint batches, and the row locks are the lease. A worker killed mid-batch drops its connection, PostgreSQL rolls
its transaction back and the rows are queued again for the next worker; the backend sees the same idempotency keys
a second time and a provider that honours them does not send twice. Nothing depends on Redis remembering anything.

Preferences, unsubscribes and suppressions are checked again in the claim itself, so a contact who opted out after
fan-out is skipped, not sent.

Lock order (the full statement is at the top of delivery.runs' cancel section): campaign row → run row → message
rows, and message rows are only ever taken with SKIP LOCKED, so nobody waits for one. A worker holds its claimed
rows through the provider call and then waits, at most briefly, for the run row to add its counters; cancel, pause
and complete hold the run row but never wait for a claimed row, so they answer at once and cannot deadlock with a
worker. Right before each hand-off the worker re-reads the run's status in a fresh statement: a batch claimed
before a pause or cancel is not handed over, its rows stay queued (for resume) and a stopped run's leftovers are
cancelled as the batch is recorded, under the run row's lock.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audiences.adapters import AdapterError, enriched_profile, user_profile_provider
from audiences.jsonb import jsonb_loads
from audiences.pii import decrypt, keys
from audiences.segments import global_control_seed, global_control_threshold, holdout_bucket_sql
from campaigns.content.channels import WHATSAPP_MAX
from campaigns.content.render import Renderer, Sender, trigger_event
from campaigns.content.sms import sms_over_limit
from campaigns.content.templates import TemplateProblem
from campaigns.models import Campaign, Variant
from compliance.selectors import consent_params, whatsapp_freeform_variants
from delivery import caps as caps_module
from delivery import progress, throttle
from delivery.backends import Outcome, Outgoing, backend_for
from delivery.metrics import send_outcomes_count_on_commit
from delivery.models import Run, message_key
from delivery.receipts import AutomaticSuppression, suppressions_add_automatic
from delivery.sandbox import sandbox_profile, scheduled_engagement_add

logger = logging.getLogger(__name__)

# The claim: due queued rows of a sending run, locked, with what rendering and the send-time checks need. The
# EXISTS on the run is evaluated once per statement: a paused run yields nothing from the next claim on.
CLAIM_SQL = """
WITH claimed AS (
    SELECT m.id, m.contact_id, m.channel, m.variant_id, m.attempts, m.trigger_key
    FROM delivery_message m
    WHERE m.run_id = %(run)s AND m.status = 'queued' AND m.due_at <= %(now)s
      AND (%(channel)s::text IS NULL OR m.channel = %(channel)s::text)
      AND EXISTS (SELECT 1 FROM delivery_run r WHERE r.id = %(run)s AND r.status = 'sending')
    ORDER BY m.due_at
    LIMIT %(limit)s
    FOR UPDATE OF m SKIP LOCKED
)
SELECT cl.id, cl.contact_id, cl.channel, cl.variant_id, cl.attempts,
       c.external_id, c.email, c.phone, c.first_name, c.last_name, c.timezone, c.locale, c.attributes,
       -- As Python's isoformat() of the UTC time, built here: parsing a timestamp per row costs more.
       to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
         || CASE WHEN date_part('microseconds', c.created_at)::int %% 1000000 = 0 THEN ''
                 ELSE to_char(c.created_at AT TIME ZONE 'UTC', '.US') END || '+00:00',
       CASE
         WHEN c.id IS NULL THEN 'contact_deleted'
         WHEN p.global_opt_out THEN 'opted_out'
         WHEN p.unsubscribed_at IS NOT NULL AND %(category)s = 'marketing' THEN 'unsubscribed'
         WHEN cl.channel = ANY(p.disabled_channels) THEN 'channel_disabled'
         WHEN %(category)s = ANY(p.disabled_categories) THEN 'category_disabled'
         WHEN cl.channel = 'email' AND c.email = '' THEN 'no_email'
         WHEN cl.channel IN ('sms', 'whatsapp') AND c.phone = '' THEN 'no_phone'
         -- Suppressions match by keyed hash (audiences.pii), erased contacts' addresses included.
         WHEN cl.channel = 'email' AND EXISTS (SELECT 1 FROM compliance_suppression s
              WHERE s.organisation_id = %(org)s AND s.address_hash = c.email_hash) THEN 'suppressed'
         WHEN cl.channel IN ('sms', 'whatsapp') AND EXISTS (SELECT 1 FROM compliance_suppression s
              WHERE s.organisation_id = %(org)s AND s.address_hash = c.phone_hash) THEN 'suppressed'
         -- Free-form WhatsApp only within 24 h of the contact's last inbound message (templates any time).
         WHEN cl.channel = 'whatsapp' AND cl.variant_id = ANY(%(freeform_whatsapp)s::uuid[])
              AND NOT EXISTS (SELECT 1 FROM compliance_contactchannelactivity a WHERE a.contact_id = cl.contact_id
                  AND a.channel = 'whatsapp' AND a.last_inbound_at >= %(now)s - interval '24 hours')
              THEN 'whatsapp_session_closed'
         -- The global control group as it stands now (fan-out and triggers left it out as it stood then).
         WHEN %(category)s = 'marketing' AND %(gc_threshold)s > 0
              AND GLOBAL_CONTROL_BUCKET < %(gc_threshold)s THEN 'global_control'
       END AS blocked,
       -- With send rules, when this recipient may next be sent to (later than now: outside their window).
       -- And past the recipient's own quiet hours, for marketing (GREATEST ignores NULLs).
       GREATEST(CASE WHEN %(rules)s THEN cs_next_send_time(%(now)s, COALESCE(NULLIF(c.timezone, ''), %(tz)s),
            %(window_start)s::time, %(window_end)s::time, %(skip_weekends)s, %(local_time)s::time) END,
            CASE WHEN %(category)s = 'marketing' THEN cs_quiet_hours_end(%(now)s,
                 COALESCE(NULLIF(c.timezone, ''), %(tz)s), p.quiet_hours_start, p.quiet_hours_end) END,
            -- Marketing SMS only inside MARKETING_SMS_WINDOW local time; marketing email waits during a complaint hold.
            CASE WHEN %(category)s = 'marketing' AND cl.channel = 'sms' THEN cs_quiet_hours_end(%(now)s,
                 COALESCE(NULLIF(c.timezone, ''), %(tz)s), %(sms_quiet_start)s::time, %(sms_quiet_end)s::time) END,
            -- (The complaint hold, compliance.SendingHold: an uncorrelated EXISTS, evaluated once per claim.)
            CASE WHEN %(category)s = 'marketing' AND cl.channel = 'email' AND EXISTS (SELECT 1
                 FROM compliance_sendinghold h WHERE h.organisation_id = %(org)s AND h.channel = 'email'
                 AND h.category = 'marketing' AND h.released_at IS NULL)
                 THEN %(now)s + interval '5 minutes' END) AS next_at,
       cl.trigger_key,
       -- A triggered message's event, for its templates: the trigger key is the sender's event id, unique in the
       -- organisation (one index probe per claimed triggered row).
       e.type, e.properties,
       to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
         || CASE WHEN date_part('microseconds', e.occurred_at)::int %% 1000000 = 0 THEN ''
                 ELSE to_char(e.occurred_at AT TIME ZONE 'UTC', '.US') END || '+00:00'
FROM claimed cl
LEFT JOIN audiences_contact c ON c.id = cl.contact_id
LEFT JOIN compliance_contactpreference p ON p.contact_id = cl.contact_id
-- OFFSET 0 keeps the subquery apart, so the empty key of every other run's row is a one-time filter, not a probe.
LEFT JOIN LATERAL (SELECT e.type, e.properties, e.occurred_at FROM audiences_event e
                   WHERE cl.trigger_key <> '' AND e.organisation_id = %(org)s AND e.event_id = cl.trigger_key
                   OFFSET 0) e ON true
"""

CLAIM_SQL = CLAIM_SQL.replace("GLOBAL_CONTROL_BUCKET", holdout_bucket_sql("cl.contact_id", "%(gc_seed)s"))

# Batches travel as one JSON parameter each: PostgreSQL parses it far faster than the driver quotes arrays.
RECORD_SQL = """
UPDATE delivery_message m
SET status = u.s, provider_message_id = COALESCE(u.p, m.provider_message_id), error = COALESCE(u.e, m.error),
    attempts = m.attempts + u.a, parts = COALESCE(u.n, m.parts),
    sent_at = CASE WHEN u.s IN ('sent', 'delivered', 'bounced') THEN %(now)s ELSE m.sent_at END,
    due_at = CASE WHEN u.s = 'queued' THEN %(now)s + make_interval(secs => u.r) ELSE m.due_at END
FROM json_to_recordset(%(rows)s::json) AS u(i bigint, s text, p text, e text, r float8, a int, n int)
WHERE m.id = u.i
"""

ENGAGEMENT_SQL = """
INSERT INTO analytics_engagementevent (organisation_id, campaign_id, run_id, message_id, variant_id, contact_id,
                                       channel, kind, occurred_at, is_machine, value, dedupe_key)
SELECT %s, %s, %s, u.m, u.v, u.c, u.ch, u.k, %s::timestamptz + make_interval(secs => u.after), u.machine, u.value,
       u.d
FROM json_to_recordset(%s::json)
     AS u(m bigint, v uuid, c bigint, ch text, k text, after float8, machine boolean, value numeric, d text)
ON CONFLICT (dedupe_key) DO NOTHING
"""

SENT_STATUSES = ("sent", "delivered", "bounced")


@dataclass
class RunContext:
    run: Run
    campaign: Campaign
    variants: dict[str, Variant]
    profile: dict[str, Any]
    # The current batch's rendered SMS: message id -> parts, filled by _render and written by _record's UPDATE (a
    # statement of its own cost as much as that UPDATE: 20-30 ms per 1,000 rows).
    sms_parts: dict[int, int] = field(default_factory=dict)


@dataclass
class BatchResult:
    claimed: int = 0
    counts: Counter[str] | None = None
    # Seconds until a throttle lets more through, set only when due messages were held back by it: an empty
    # bucket with nothing due is not a reason to come back.
    wait: float = 0.0
    # A bucket gave fewer tokens than the batch could take, and all of them were used: due messages were held back.
    throttled: bool = False

    @property
    def done(self) -> bool:
        return self.claimed == 0 and not self.wait


def _run_context(run_id: Any) -> RunContext | None:
    run = Run.objects.select_related("campaign", "campaign__organisation").filter(pk=run_id).first()
    if run is None:
        return None
    variants = {str(v.pk): v for v in Variant.objects.filter(campaign_id=run.campaign_id)}
    return RunContext(run, run.campaign, variants, sandbox_profile(run.campaign.sandbox_profile))


def _profile(row: Sequence[Any], pii_keys: dict[str, Any]) -> dict[str, Any]:
    return {
        "external_id": row[5],
        "email": decrypt(row[6], pii_keys),  # encrypted at rest (audiences.pii)
        "phone": decrypt(row[7], pii_keys),
        "first_name": row[8],
        "last_name": row[9],
        "timezone": row[10],
        "locale": row[11],
        "attributes": _json(row[12]),
        "created_at": row[13],
    }


def _json(value: Any) -> dict[str, Any]:
    """jsonb from a raw cursor: Django's psycopg 3 setup hands it over as text (JSONField parses it itself), so a
    raw query must parse it too, or templates see a string instead of the contact's attributes."""
    if value is None:
        return {}
    return jsonb_loads(value)  # exactly as JSONField reads it (orjson alone turns big integers into floats)


def _address(channel: str, profile: Mapping[str, Any]) -> str:
    if channel == "email":
        return profile["email"]
    if channel in ("sms", "whatsapp"):
        return profile["phone"]
    return profile["external_id"]


def _render(ctx: RunContext, rows: Sequence[Sequence[Any]]) -> tuple[list[Outgoing], list[Outcome]]:
    """Render every claimable row; rows that cannot be sent come back as outcomes straight away."""
    campaign, organisation = ctx.campaign, ctx.campaign.organisation
    profiles = user_profile_provider()
    outgoing: list[Outgoing] = []
    settled: list[Outcome] = []
    sender = Sender(
        organisation_id=str(organisation.pk),
        organisation_name=organisation.name,
        postal_address=organisation.postal_address,
        sender_name=organisation.sender_name,
        sender_email=organisation.sender_email,
        reply_to=organisation.reply_to_email,
        campaign_name=campaign.name,
        tracking=campaign.tracking_enabled,
        webhook_secret=organisation.webhook_secret,
        campaign_id=str(campaign.pk),
        category=campaign.category,
        triggered=campaign.type == "triggered",
    )
    renderers: dict[tuple[str, str], Renderer] = {}  # per variant and channel: the run's constant work done once
    pii_keys = keys()
    # The run's ids as text once per batch, not once per message.
    run_id, campaign_id, organisation_id = str(ctx.run.pk), str(campaign.pk), str(organisation.pk)
    ctx.sms_parts.clear()
    ours = {row[0]: _profile(row, pii_keys) for row in rows if not row[14]}
    # An external user_360 enriches the batch's contacts in one request (never one per message inside the claim).
    # Failing, it fails no message: each waits for a retry with the reason, using up an attempt only when the
    # service's answer was not a transient failure.
    external: dict[str, dict[str, Any]] = {}
    unenriched: AdapterError | None = None
    if not profiles.embedded and ours:
        try:
            external = profiles.profiles(organisation, [profile["external_id"] for profile in ours.values()])
        except AdapterError as exc:
            logger.warning("user_360 failed for a batch of %d of run %s: %s", len(ours), ctx.run.pk, exc)
            unenriched = exc
    for row in rows:
        message_id, contact_id, channel, variant_id, blocked = row[0], row[1], row[2], str(row[3]), row[14]
        if blocked:
            settled.append(Outcome(message_id, "skipped", "", blocked))
            continue
        if unenriched is not None:
            settled.append(Outcome(message_id, "retry", "", str(unenriched)[:500], tried=not unenriched.transient))
            continue
        # The address is always our contact's, the one the claim checked consent and suppression against.
        contact = ours[message_id]
        profile = enriched_profile(contact, external.get(contact["external_id"])) if external else contact
        variant = ctx.variants.get(variant_id)
        content = (variant.content if variant else {}).get(channel)
        if variant is None or content is None:
            settled.append(Outcome(message_id, "failed", "", "the variant has no content for this channel"))
            continue
        key = message_key(run_id, contact_id, channel, row[16])
        # A triggered message's event, built as its preview builds it (a stored event that is gone keeps its id).
        event = trigger_event(row[16], row[17] or campaign.trigger_event, _json(row[18]), row[19]) if row[16] else None
        try:
            renderer = renderers.get((variant_id, channel))
            if renderer is None:
                renderer = renderers[variant_id, channel] = Renderer(channel, content, sender)
            payload = renderer.render(str(message_id), profile, str(contact_id), None, event)
        except TemplateProblem as exc:
            settled.append(Outcome(message_id, "failed", "", f"template: {exc}"[:500]))
            continue
        refusal = _length_refusal(campaign, channel, content, payload)
        if channel == "sms":
            ctx.sms_parts[message_id] = payload["length"]["segments"]
        if refusal:
            settled.append(Outcome(message_id, "failed", "", refusal[:500]))
            continue
        if channel in ("sms", "whatsapp") and organisation.sms_sender_id:
            payload["sender_id"] = organisation.sms_sender_id
        outgoing.append(
            Outgoing(
                message_id=message_id,
                idempotency_key=key,
                channel=channel,
                run_id=run_id,
                campaign_id=campaign_id,
                organisation_id=organisation_id,
                variant_id=variant_id,
                variant_name=variant.name,
                contact_id=contact_id,
                address=_address(channel, contact),
                payload=payload,
            )
        )
    return outgoing, settled


def _length_refusal(campaign: Campaign, channel: str, content: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """Why a rendered message is too long to send ("" if it is not), by the rule its content was saved under: the
    template fitting says nothing about a personalised value ("Zoë" makes a GSM-7 text UCS-2)."""
    if channel == "sms":
        # As at save: the campaign's switch allows multi-part for every variant, a variant's own flag for itself.
        multipart = content.get("allow_multipart") is True or campaign.sms_allow_multipart
        return sms_over_limit(payload["length"], multipart=multipart)
    if channel == "whatsapp" and len(payload["body"]) > WHATSAPP_MAX:
        return f"WhatsApp message is {len(payload['body']):,} characters; WhatsApp allows {WHATSAPP_MAX:,}"
    return ""


def _hand_off(ctx: RunContext, outgoing: Sequence[Outgoing]) -> list[Outcome]:
    by_channel: dict[str, list[Outgoing]] = defaultdict(list)
    for message in outgoing:
        by_channel[message.channel].append(message)
    outcomes: list[Outcome] = []
    for channel, messages in by_channel.items():
        try:
            outcomes.extend(backend_for(channel).send_batch(messages, profile=ctx.profile))
        except Exception as exc:
            logger.warning("backend for %s failed on a batch of %d: %s", channel, len(messages), exc)
            outcomes.extend(Outcome(m.message_id, "retry", "", f"backend error: {exc}"[:500]) for m in messages)
    return outcomes


def _retry_delay(attempts: int) -> float:
    """Exponential backoff with full jitter: up to 30 s, 60 s, 120 s … capped at an hour."""
    return random.uniform(1, min(3600, settings.DELIVERY_RETRY_BASE_SECONDS * 2**attempts))  # noqa: S311


def _record(ctx: RunContext, rows: Sequence[Sequence[Any]], outcomes: Sequence[Outcome], now: datetime) -> Counter:
    attempts = {row[0]: row[4] for row in rows}
    updates = []
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        status, delay, error = outcome.status, outcome.retry_after, outcome.error
        used = 1  # attempts this outcome uses up
        if status == "retry" and not outcome.tried:
            status, used = "queued", 0
            delay = delay or _retry_delay(attempts.get(outcome.message_id, 0))
        elif status == "retry":
            if attempts.get(outcome.message_id, 0) + 1 >= settings.DELIVERY_MAX_ATTEMPTS:
                status, error = "failed", f"gave up after {settings.DELIVERY_MAX_ATTEMPTS} attempts: {error}"
            else:
                status = "queued"
                delay = delay or _retry_delay(attempts.get(outcome.message_id, 0))
        if status == "defer":  # outside the recipient's send window: wait, no attempt used, nothing recorded
            updates.append({"i": outcome.message_id, "s": "queued", "p": None, "e": None, "r": delay, "a": 0})
            counts["deferred"] += 1
            continue
        updates.append(
            {
                "i": outcome.message_id,
                "s": status,
                "p": outcome.provider_message_id,
                "e": error[:500],
                "r": delay,
                "a": used,
                "n": ctx.sms_parts.get(outcome.message_id),
            }
        )
        counts[status] += 1
    send_outcomes_count_on_commit({row[0]: row[2] for row in rows}, updates)
    with connection.cursor() as cursor:
        cursor.execute(RECORD_SQL, {"now": now, "rows": json.dumps(updates)})
        _suppress_hard_bounces(cursor, ctx, rows, outcomes)
        _record_engagement(cursor, ctx, rows, outcomes, now)
        cursor.execute(
            "UPDATE delivery_run SET sent_count = sent_count + %s, delivered_count = delivered_count + %s,"
            " bounced_count = bounced_count + %s, failed_count = failed_count + %s,"
            " skipped_count = skipped_count + %s, last_progress_at = %s WHERE id = %s"
            " RETURNING status, status_reason",
            [
                sum(counts[s] for s in SENT_STATUSES),
                counts["delivered"],
                counts["bounced"],
                counts["failed"],
                counts["skipped"],
                now,
                str(ctx.run.pk),
            ],
        )
        run_status, reason = cursor.fetchone() or ("", "")
        from delivery import runs  # the cancel rule lives with the run lifecycle

        if run_status in runs.STOPPED_STATUSES:
            # Cancelled or completed while this batch was out (the run row, locked now, shows it): the cancel
            # skipped these rows, so this batch's still-queued ones (released, or retries) are cancelled here.
            runs.run_cancel_queued(cursor, ctx.run.pk, reason or "run stopped")
    return counts


def _suppress_hard_bounces(
    cursor: Any, ctx: RunContext, rows: Sequence[Sequence[Any]], outcomes: Sequence[Outcome]
) -> None:
    """An address the mail server refused for good while we sent (a synchronous hard bounce) goes on the
    organisation's suppression list with its audit entry, as a hard-bounce receipt puts it there — in this batch's
    transaction, so the bounce and the suppression are recorded together or not at all."""
    refusals = {o.message_id: o.error for o in outcomes if o.hard_bounce and o.status == "bounced"}
    if not refusals:
        return
    pii_keys = keys()
    entries = [
        # The claimed row holds the contact's addresses encrypted (email, phone): no query needed.
        AutomaticSuppression(
            decrypt(row[6] if row[2] == "email" else row[7], pii_keys), "hard_bounce", refusals[row[0]]
        )
        for row in rows
        if row[0] in refusals
    ]
    suppressions_add_automatic(
        cursor, organisation_id=str(ctx.campaign.organisation_id), entries=entries, actor_label="mail server refusal"
    )


def _run_still_sending(cursor: Any, run_id: Any) -> bool:
    """The run's status as committed now (a fresh statement sees a pause or cancel made after the claim)."""
    cursor.execute("SELECT status = 'sending' FROM delivery_run WHERE id = %s", [str(run_id)])
    row = cursor.fetchone()
    return bool(row and row[0])


def _record_engagement(
    cursor: Any, ctx: RunContext, rows: Sequence[Sequence[Any]], outcomes: Sequence[Outcome], now: datetime
) -> None:
    meta = {row[0]: (str(row[3]), row[1], row[2]) for row in rows}
    events = []
    later = []  # reported for later (the sandbox's simulated people): recorded when its time comes, never ahead
    for outcome in outcomes:
        for index, event in enumerate(outcome.engagement):
            variant_id, contact_id, channel = meta[outcome.message_id]
            if event.seconds_after_send > 0:
                later.append(
                    {
                        "m": outcome.message_id,
                        "k": event.kind,
                        "after": event.seconds_after_send,
                        "machine": event.is_machine,
                        "value": event.value,
                        "d": f"provider:{outcome.message_id}:{event.kind}:{index}",
                    }
                )
                continue
            events.append(
                {
                    "m": outcome.message_id,
                    "v": variant_id,
                    "c": contact_id,
                    "ch": channel,
                    "k": event.kind,
                    "after": event.seconds_after_send,
                    "machine": event.is_machine,
                    "value": event.value,
                    "d": f"provider:{outcome.message_id}:{event.kind}:{index}",
                }
            )
    if events:
        org, campaign, run = str(ctx.campaign.organisation_id), str(ctx.campaign.pk), str(ctx.run.pk)
        cursor.execute(ENGAGEMENT_SQL, [org, campaign, run, now, json.dumps(events)])
    scheduled_engagement_add(cursor, later, now=now)


def run_send_batch(run_id: Any, *, batch_size: int | None = None, ctx: RunContext | None = None) -> BatchResult:
    """Claim, render, hand off and record one batch of a run. Returns how many rows it claimed (0: none due) and,
    when a throttle held due messages back, how long until it lets more through."""
    ctx = ctx or _run_context(run_id)
    if ctx is None:
        return BatchResult()
    limit = batch_size or settings.DELIVERY_BATCH_SIZE
    buckets = {channel: throttle.campaign_buckets(ctx.campaign, channel) for channel in ctx.campaign.channels}
    if not any(buckets.values()):
        result = _send_claimed(ctx, channel=None, limit=limit)
    else:
        # Throttled: each channel takes what its buckets allow (the campaign's and the organisation's channel
        # limit), so one slow channel does not hold the others back.
        result = BatchResult(counts=Counter())
        waits = []
        for channel, channel_buckets in buckets.items():
            taken, wait = throttle.take(channel_buckets, limit)
            if not taken:
                if _due_now(ctx, channel):
                    waits.append(wait)
                continue
            part = _send_claimed(ctx, channel=channel, limit=taken)
            result.throttled = result.throttled or (taken < limit and part.claimed == taken)
            unused = taken - part.claimed + (part.counts or Counter())["deferred"]
            throttle.give_back(channel_buckets, unused)
            result.claimed += part.claimed
            result.counts.update(part.counts or Counter())
        if not result.claimed and waits:
            result.wait = min(waits)
    counts = result.counts or Counter()
    if counts["failed"] or counts["bounced"]:
        run_pause_if_failing(ctx.run.pk)
    return result


def _due_now(ctx: RunContext, channel: str) -> bool:
    """Whether the run is sending and has a message of this channel due now (the partial due index answers)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM delivery_run WHERE id = %(run)s AND status = 'sending')"
            " AND EXISTS (SELECT 1 FROM delivery_message WHERE run_id = %(run)s AND status = 'queued'"
            " AND due_at <= %(now)s AND channel = %(channel)s)",
            {"run": str(ctx.run.pk), "now": timezone.now(), "channel": channel},
        )
        return bool(cursor.fetchone()[0])


def _send_claimed(ctx: RunContext, *, channel: str | None, limit: int) -> BatchResult:
    campaign = ctx.campaign
    now = timezone.now()
    params = {
        "run": str(ctx.run.pk),
        "now": now,
        "limit": limit,
        "org": campaign.organisation_id,
        "channel": channel,
        "rules": campaign.has_send_rules,
        "tz": str(campaign.organisation.timezone),
        "window_start": campaign.send_window_start,
        "window_end": campaign.send_window_end,
        "skip_weekends": campaign.skip_weekends,
        # The local send time was applied at fan-out (it set due_at); applied again here, after the due instant,
        # it would push every message to the next day, forever. The claim only keeps windows and weekdays.
        "local_time": None,
        **consent_params(campaign.organisation_id, campaign.category),
        "freeform_whatsapp": whatsapp_freeform_variants(ctx.variants.values()),
        "gc_seed": global_control_seed(campaign.organisation_id),
        "gc_threshold": global_control_threshold(campaign.organisation),
    }
    with transaction.atomic(), connection.cursor() as cursor:
        # The batch's record need not wait for its WAL flush: a crash loses at most the last fraction of a second of
        # records, whose rows go back to queued and are handed over again under the same idempotency keys — the
        # at-least-once the engine promises anyway — while every batch stops paying a disk flush (half of a
        # triggered send's latency with a hundred campaigns sending a message or two at a time).
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.execute(CLAIM_SQL, params)
        rows = cursor.fetchall()
        if not rows:
            return BatchResult()
        # In flight, for the progress bar; a standing trigger run has none, and its batches are a message or two.
        token = progress.in_flight_add(ctx.run.pk, len(rows)) if ctx.run.trigger != Run.Trigger.EVENT else ""
        try:
            deferred_rows = [row for row in rows if row[15] is not None and row[15] > now]
            sendable = [row for row in rows if row[15] is None or row[15] <= now] if deferred_rows else rows
            caps = caps_module.caps_for(campaign)
            capped: list[Outcome] = []
            if caps:
                refused = caps_module.over_cap(campaign, [r for r in sendable if not r[14]], caps, now)
                capped = [Outcome(message_id, "skipped", "", "frequency_cap") for message_id in refused]
                sendable = [row for row in sendable if row[0] not in refused]
            outgoing, outcomes = _render(ctx, sendable)
            if not _run_still_sending(cursor, ctx.run.pk):
                # Paused or cancelled since the claim: nothing of this batch reaches the provider and nothing of it
                # is recorded; its rows stay queued, for resume, or to be cancelled in _record for a stopped run.
                outgoing, outcomes, deferred_rows, capped = [], [], [], []
            outcomes.extend(_hand_off(ctx, outgoing))
            recorded_at = timezone.now()
            # A deferred row is due exactly when its window opens: its delay counts from the recording instant.
            deferred = [
                Outcome(row[0], "defer", retry_after=max(0.0, (row[15] - recorded_at).total_seconds()))
                for row in deferred_rows
            ]
            counts = _record(ctx, rows, [*outcomes, *deferred, *capped], recorded_at)
            if caps:
                sent_ids = {o.message_id for o in outcomes if o.status in SENT_STATUSES}
                caps_module.count_sends(campaign, sendable, sent_ids, now)
        finally:
            if token:
                progress.in_flight_done(ctx.run.pk, token)
    return BatchResult(claimed=len(rows), counts=counts)


def run_pause_if_failing(run_id: Any) -> bool:
    """Pause the campaign when the run's failure rate crosses DELIVERY_AUTO_PAUSE_RATE, saying why: a broken
    provider or a bad list should not burn through the audience."""
    run = Run.objects.select_related("campaign", "campaign__organisation").get(pk=run_id)
    handed = run.sent_count + run.failed_count
    if run.status != Run.Status.SENDING or handed < settings.DELIVERY_AUTO_PAUSE_MIN:
        return False
    rate = (run.failed_count + run.bounced_count) / handed
    if rate <= settings.DELIVERY_AUTO_PAUSE_RATE:
        return False
    from audiences.access import system_actor
    from campaigns.services import campaign_transition
    from config.errors import Conflict

    reason = (
        f"Paused automatically: {rate:.0%} of {handed} messages failed or bounced "
        f"(threshold {settings.DELIVERY_AUTO_PAUSE_RATE:.0%}). Check the channel's provider and the list, then resume."
    )
    try:
        with transaction.atomic():
            campaign_transition(
                actor=system_actor(run.campaign.organisation, "delivery engine (failure rate)"),
                campaign_id=run.campaign_id,
                action="pause",
                by_engine=True,
            )
            Run.objects.filter(pk=run.pk).update(status_reason=reason)
    except Conflict:
        return False  # already paused or cancelled by someone else
    logger.warning("run %s: %s", run.pk, reason)
    return True


@dataclass
class SendSpell:
    """What a send task did and what should happen next."""

    claimed: int = 0
    # More is due now (the time was up): hand over to a fresh task at once.
    more: bool = False
    # Due messages are held back by a throttle for this many seconds: come back then.
    wait: float = 0.0
    # The longest a batch took (claim to record): a throttled lane whose batches outlast the bucket's burst loses
    # tokens while it waits for the provider, and asks for another lane.
    slowest_batch: float = 0.0
    # A throttle held due messages back at some point of the spell.
    throttled: bool = False


def run_send_for(
    run_id: Any, *, seconds: float, batch_size: int | None = None, max_sleep: float | None = None
) -> SendSpell:
    """Send batches until nothing is due or the time is up. A throttle's wait is slept here when it is at most
    `max_sleep` seconds (any wait within the time left, when None); a longer one ends the spell with `wait` set,
    so a worker is not held asleep. Nothing due now ends it with neither `more` nor `wait`: whatever is due later
    (a retry, a send window, a deferred SMS) is the pump's to wake."""
    deadline = timezone.now() + timedelta(seconds=seconds)
    ctx = _run_context(run_id)
    spell = SendSpell()
    while ctx is not None:
        began = time.monotonic()
        result = run_send_batch(run_id, batch_size=batch_size, ctx=ctx)
        spell.claimed += result.claimed
        if result.claimed:
            spell.slowest_batch = max(spell.slowest_batch, time.monotonic() - began)
        if result.done:
            return spell
        spell.throttled = spell.throttled or result.throttled or bool(result.wait)
        left = (deadline - timezone.now()).total_seconds()
        if result.wait and not result.claimed:
            if left <= 0 or (max_sleep is not None and result.wait > max_sleep):
                spell.wait = result.wait
                return spell
            time.sleep(min(result.wait, left))
            continue
        if left <= 0:
            spell.more = True
            return spell
    return spell
