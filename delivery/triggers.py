"""Triggered campaigns: events in, messages out.

An active triggered campaign has one standing Run (trigger "event"). When events arrive (audiences.signals
.events_received, inside the ingestion transaction), each active campaign listening for their type decides per
event: matched → filtered by condition → not in the audience → capped by its frequency limit → skipped or deferred
for quiet hours → queued. Queued sends are ordinary message rows of the standing run with their due time (the event
time plus the delay, moved past quiet hours in the recipient's timezone), so the engine sends them: at once for
zero delay (workers are asked right after the ingestion commits), later through the pump polling due rows —
never a Celery countdown. Pausing the campaign pauses the run (pending rows wait); deactivating it cancels them.
Every decision is counted per campaign (delivery.models.TriggerDecision).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from audiences import segments as engine
from audiences.models import Organisation
from campaigns.audience import audience_condition, audience_in_holdout
from campaigns.content.assignment import assign_variant
from campaigns.models import Campaign, CampaignStatus, CampaignType
from campaigns.trigger_conditions import compile_conditions
from delivery.models import Run

FREQUENCY_WINDOWS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
ADDRESS_FIELDS = {"email": "email", "sms": "phone", "whatsapp": "phone"}


def trigger_run_open(campaign: Campaign) -> Run:
    """The standing run of an active triggered campaign (created on activation; reused after a pause)."""
    from delivery.fanout import run_create

    run = (
        Run.objects.filter(campaign=campaign, trigger=Run.Trigger.EVENT)
        .exclude(status__in=[Run.Status.COMPLETED, Run.Status.CANCELLED, Run.Status.FAILED])
        .first()
    )
    if run is None:
        run = run_create(campaign=campaign, trigger=Run.Trigger.EVENT)
        now = timezone.now()
        Run.objects.filter(pk=run.pk).update(
            status=Run.Status.SENDING, fanned_out_at=now, started_sending_at=now, last_progress_at=now
        )
        run.refresh_from_db()
    return run


def _count(decisions: Mapping[tuple[Any, str], int], now: datetime) -> None:
    if not decisions:
        return
    rows = [{"c": str(campaign), "d": decision, "n": n} for (campaign, decision), n in decisions.items() if n]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO delivery_triggerdecision (campaign_id, decision, count, last_at)"
            " SELECT u.c, u.d, u.n, %s FROM json_to_recordset(%s::json) AS u(c uuid, d text, n bigint)"
            " ON CONFLICT (campaign_id, decision) DO UPDATE"
            " SET count = delivery_triggerdecision.count + EXCLUDED.count, last_at = EXCLUDED.last_at",
            [now, json.dumps(rows)],
        )


def _capped(run: Run, contact_ids: Sequence[int], frequency_limit: str, now: datetime) -> set[int]:
    """Contacts this campaign already sent to (or queued for) within its frequency window."""
    if frequency_limit == "none" or not contact_ids:
        return set()
    window = "" if frequency_limit == "ever" else " AND created_at >= %s"
    params: list[Any] = [str(run.pk), list(contact_ids)]
    if frequency_limit != "ever":
        params.append(now - FREQUENCY_WINDOWS[frequency_limit])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT contact_id FROM delivery_message WHERE run_id = %s AND contact_id = ANY(%s)"
            " AND status NOT IN ('cancelled', 'skipped')" + window,
            params,
        )
        return {row[0] for row in cursor.fetchall()}


def _queue(campaign: Campaign, run: Run, sends: Sequence[Mapping[str, Any]], now: datetime) -> Counter[str]:
    """Write the message rows (one per channel with an address), due after the delay and outside quiet hours;
    returns the decisions about quiet hours."""
    organisation = campaign.organisation
    quiet_start = campaign.quiet_hours_start or organisation.default_quiet_hours_start
    quiet_end = campaign.quiet_hours_end or organisation.default_quiet_hours_end
    variants = list(campaign.variants.order_by("position", "name"))
    allocations = [(v, v.allocation_percent) for v in variants]
    rows = []
    for send in sends:
        variant = assign_variant(str(campaign.pk), send["contact_id"], allocations)
        held_out = audience_in_holdout(campaign, send["contact_id"])
        status = "holdout" if held_out else "control" if variant.is_control else "queued"
        rows.append(
            {
                "c": send["contact_id"],
                "v": str(variant.pk),
                "s": status,
                "k": send["event_id"],
                "due": (max(send["occurred_at"], now - timedelta(days=1)) if campaign.trigger_delay_seconds else now)
                + timedelta(seconds=campaign.trigger_delay_seconds),
            }
        )
    for row in rows:
        row["due"] = max(row["due"], now).isoformat()
    quiet = quiet_start is not None and quiet_end is not None
    # Quiet hours [start, end) are the complement of a send window [end, start): cs_next_send_time moves a due
    # time inside them to their end, in the contact's timezone (the organisation's when the contact has none).
    next_allowed = (
        "cs_next_send_time(u.due, COALESCE(NULLIF(c.timezone, ''), %(tz)s), %(q_end)s::time, %(q_start)s::time,"
        " false, NULL)"
        if quiet
        else "u.due"
    )
    skip = quiet and campaign.quiet_hours_policy == "skip"
    sql = f"""
    WITH wanted AS (
        SELECT u.c AS contact_id, u.v AS variant_id, u.s AS status, u.k AS trigger_key, u.due,
               {next_allowed} AS due_at, ch.channel, c.email, c.phone
        FROM json_to_recordset(%(rows)s::json) AS u(c bigint, v uuid, s text, k text, due timestamptz)
        JOIN audiences_contact c ON c.id = u.c
        CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)
    ), kept AS (
        SELECT * FROM wanted
        WHERE (channel <> 'email' OR email <> '') AND (channel NOT IN ('sms', 'whatsapp') OR phone <> '')
          AND NOT (%(skip)s AND due_at > due)
    ), inserted AS (
        INSERT INTO delivery_message (run_id, contact_id, channel, variant_id, status, trigger_key, due_at,
                                      attempts, provider_message_id, error, created_at)
        SELECT %(run)s, contact_id, channel, variant_id, status, trigger_key, due_at, 0, '', '', %(now)s FROM kept
        ON CONFLICT ON CONSTRAINT message_idempotency_key DO NOTHING
        RETURNING status, due_at
    )
    SELECT (SELECT count(DISTINCT (contact_id, trigger_key)) FROM wanted WHERE due_at > due),
           (SELECT count(*) FROM inserted WHERE status = 'queued'),
           (SELECT count(*) FROM inserted WHERE status = 'holdout'),
           (SELECT count(*) FROM inserted WHERE status = 'control')
    """
    params = {
        "rows": json.dumps(rows),
        "tz": str(organisation.timezone),
        "q_end": quiet_end,
        "q_start": quiet_start,
        "channels": list(campaign.channels),
        "skip": skip,
        "run": str(run.pk),
        "now": now,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        in_quiet, queued, holdout, control = cursor.fetchone()
        cursor.execute(
            "UPDATE delivery_run SET message_count = message_count + %s, holdout_count = holdout_count + %s,"
            " control_count = control_count + %s, audience_count = audience_count + %s WHERE id = %s",
            [queued, holdout, control, len(rows), str(run.pk)],
        )
    decisions: Counter[str] = Counter()
    if in_quiet:
        decisions["skipped_quiet_hours" if skip else "deferred_quiet_hours"] += in_quiet
    decisions["queued"] += len(rows) - (in_quiet if skip else 0)
    return decisions


def triggers_on_events(organisation: Organisation, events: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Match freshly stored events against the organisation's active triggered campaigns. Returns the runs that
    now have messages due at once (the caller asks workers to send them after commit)."""
    if not events:
        return []
    now = timezone.now()
    types = {event["type"] for event in events}
    campaigns = list(
        Campaign.objects.filter(
            organisation=organisation,
            type=CampaignType.TRIGGERED,
            status__in=[CampaignStatus.ACTIVE, CampaignStatus.PAUSED],
            deleted_at__isnull=True,
            trigger_event__in=types,
        ).select_related("organisation")
    )
    decisions: Counter[tuple[Any, str]] = Counter()
    to_kick = []
    for campaign in campaigns:
        matching = [event for event in events if event["type"] == campaign.trigger_event]
        decisions[(campaign.pk, "matched")] += len(matching)
        if campaign.status == CampaignStatus.PAUSED:
            # Paused: no new sends are started; the events are counted and otherwise left alone.
            decisions[(campaign.pk, "ignored_paused")] += len(matching)
            continue
        run = trigger_run_open(campaign)
        predicate = compile_conditions(campaign.trigger_conditions)
        passed = [event for event in matching if predicate(event["properties"])]
        decisions[(campaign.pk, "filtered_by_condition")] += len(matching) - len(passed)
        condition = audience_condition(campaign, refresh_external=False)
        contact_ids = sorted({event["contact_id"] for event in passed})
        if condition is not None and contact_ids:
            members = set(
                engine.matching_contacts(organisation, condition)
                .filter(pk__in=contact_ids)
                .values_list("pk", flat=True)
            )
        else:
            members = set(contact_ids) if condition is None else set()
        in_audience = [event for event in passed if event["contact_id"] in members]
        decisions[(campaign.pk, "not_in_audience")] += len(passed) - len(in_audience)
        capped = _capped(run, contact_ids, campaign.frequency_limit, now)
        sends = []
        for event in sorted(in_audience, key=lambda e: e["occurred_at"]):
            if event["contact_id"] in capped:
                decisions[(campaign.pk, "capped")] += 1
                continue
            if campaign.frequency_limit != "none":
                capped.add(event["contact_id"])  # a second event in the same batch counts against the limit too
            sends.append(event)
        if sends:
            for decision, count in _queue(campaign, run, sends, now).items():
                decisions[(campaign.pk, decision)] += count
            if not campaign.trigger_delay_seconds:
                to_kick.append(run.pk)
    _count(decisions, now)
    return to_kick


def trigger_decisions(campaign: Campaign) -> dict[str, int]:
    return dict(campaign.trigger_decisions.values_list("decision", "count"))
