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
from time import monotonic
from typing import Any

from django.db import connection
from django.db.models import Prefetch
from django.utils import timezone

from audiences.models import Organisation
from audiences.rules import Compiled
from audiences.segments import global_control_seed, global_control_threshold, holdout_bucket_sql
from campaigns.audience import audience_condition, audience_in_holdout
from campaigns.content.assignment import assign_variant
from campaigns.models import Campaign, CampaignStatus, CampaignType, Variant
from campaigns.trigger_conditions import compile_conditions
from delivery.assignment import kept_variants_for, sticky_assignment_applies
from delivery.models import Run

FREQUENCY_WINDOWS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


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
    # In key order: concurrent event batches update the same counters, and one order means they wait, not deadlock.
    counted = sorted((str(campaign), decision, n) for (campaign, decision), n in decisions.items() if n)
    rows = [{"c": campaign, "d": decision, "n": n} for campaign, decision, n in counted]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO delivery_triggerdecision (campaign_id, decision, count, last_at)"
            " SELECT u.c, u.d, u.n, %s FROM json_to_recordset(%s::json) AS u(c uuid, d text, n bigint)"
            " ON CONFLICT (campaign_id, decision) DO UPDATE"
            " SET count = delivery_triggerdecision.count + EXCLUDED.count, last_at = EXCLUDED.last_at",
            [now, json.dumps(rows)],
        )


_AUDIENCE_CACHE: dict[Any, tuple[float, Compiled | None]] = {}
AUDIENCE_CACHE_SECONDS = 30.0


def _audience(campaign: Campaign) -> Compiled | None:
    """The campaign's compiled audience condition. Membership is always evaluated against current contact data;
    the compiled definition is reused for up to 30 s (an active campaign's own audience cannot change, a segment it
    uses can), which keeps a stream of events from recompiling it for every batch."""
    key = (campaign.pk, campaign.updated_at)
    cached = _AUDIENCE_CACHE.get(key)
    if cached and cached[0] > monotonic():
        return cached[1]
    condition = audience_condition(campaign, refresh_external=False)
    _AUDIENCE_CACHE[key] = (monotonic() + AUDIENCE_CACHE_SECONDS, condition)
    return condition


def _members(organisation: Organisation, wanted: Mapping[Any, set[int]], campaigns: Mapping[Any, Campaign]) -> set:
    """(campaign id, contact id) pairs in each campaign's audience, in one query for all campaigns."""
    parts, params, members = [], [], set()
    for campaign_id, contact_ids in wanted.items():
        condition = _audience(campaigns[campaign_id])
        if condition is None:
            members.update((campaign_id, contact_id) for contact_id in contact_ids)
            continue
        parts.append(
            "SELECT %s::uuid, id FROM audiences_contact"
            f" WHERE organisation_id = %s AND id = ANY(%s) AND {condition.sql}"
        )
        params.extend([str(campaign_id), str(organisation.pk), sorted(contact_ids), *condition.params])
    if parts:
        with connection.cursor() as cursor:
            cursor.execute(" UNION ALL ".join(parts), params)
            members.update((row[0], row[1]) for row in cursor.fetchall())
    return members


def _recent_sends(limits: Mapping[Any, tuple[Run, str]], contact_ids: set[int], now: datetime) -> set:
    """(campaign id, contact id) pairs already sent to or queued within each campaign's frequency window."""
    limited = {campaign_id: (run, limit) for campaign_id, (run, limit) in limits.items() if limit != "none"}
    if not limited or not contact_ids:
        return set()
    ever = any(limit == "ever" for _run, limit in limited.values())
    oldest = None if ever else now - max(FREQUENCY_WINDOWS[limit] for _run, limit in limited.values())
    by_run = {str(run.pk): (campaign_id, limit) for campaign_id, (run, limit) in limited.items()}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT run_id, contact_id, max(created_at) FROM delivery_message"
            " WHERE run_id = ANY(%s::uuid[]) AND contact_id = ANY(%s) AND status NOT IN ('cancelled', 'skipped')"
            " AND (%s::timestamptz IS NULL OR created_at >= %s) GROUP BY run_id, contact_id",
            [list(by_run), sorted(contact_ids), oldest, oldest],
        )
        rows = cursor.fetchall()
    recent = set()
    for run_id, contact_id, last in rows:
        campaign_id, limit = by_run[str(run_id)]
        if limit == "ever" or last >= now - FREQUENCY_WINDOWS[limit]:
            recent.add((campaign_id, contact_id))
    return recent


def _queue(
    organisation: Organisation, plans: Sequence[tuple[Campaign, Run, Sequence[Mapping[str, Any]]]], now: datetime
) -> Counter[tuple[Any, str]]:
    """Write the message rows of every campaign in one statement (one per channel with an address), due after the
    delay and outside quiet hours; returns the quiet-hours and queued decisions per campaign."""
    rows = []
    by_run = {}
    for campaign, run, sends in plans:
        by_run[str(run.pk)] = campaign
        quiet_start = campaign.quiet_hours_start or organisation.default_quiet_hours_start
        quiet_end = campaign.quiet_hours_end or organisation.default_quiet_hours_end
        quiet = quiet_start is not None and quiet_end is not None
        allocations = [(v, v.allocation_percent) for v in campaign.variants.all()]
        by_id = {str(v.pk): v for v, _ in allocations}
        kept = (
            kept_variants_for(campaign, (send["contact_id"] for send in sends))
            if sticky_assignment_applies(campaign)
            else {}
        )
        for send in sends:
            kept_id = kept.get(send["contact_id"])
            variant = by_id[kept_id] if kept_id else assign_variant(str(campaign.pk), send["contact_id"], allocations)
            held_out = audience_in_holdout(campaign, send["contact_id"])
            due = (
                max(send["occurred_at"], now - timedelta(days=1)) if campaign.trigger_delay_seconds else now
            ) + timedelta(seconds=campaign.trigger_delay_seconds)
            rows.append(
                {
                    "r": str(run.pk),
                    "c": send["contact_id"],
                    "v": str(variant.pk),
                    "kv": kept_id is not None,
                    "s": "holdout" if held_out else "control" if variant.is_control else "queued",
                    "k": send["event_id"],
                    "due": max(due, now).isoformat(),
                    "qs": quiet_start.isoformat() if quiet else None,
                    "qe": quiet_end.isoformat() if quiet else None,
                    "skip": quiet and campaign.quiet_hours_policy == "skip",
                    "ch": list(campaign.channels),
                    "mk": campaign.category == "marketing",
                }
            )
    # Quiet hours [start, end) are the complement of a send window [end, start): cs_next_send_time moves a due
    # time inside them to their end, in the contact's timezone (the organisation's when the contact has none).
    sql = """
    WITH wanted AS (
        SELECT u.r AS run_id, u.c AS contact_id, u.v AS variant_id, u.kv AS variant_kept, u.s AS status,
               u.k AS trigger_key, u.due, u.skip,
               CASE WHEN u.qs IS NULL THEN u.due
                    ELSE cs_next_send_time(u.due, COALESCE(NULLIF(c.timezone, ''), %(tz)s), u.qe, u.qs, false, NULL)
               END AS due_at,
               ch.channel, c.email, c.phone, u.mk AND {global_control} AS global_control
        FROM json_to_recordset(%(rows)s::json)
             AS u(r uuid, c bigint, v uuid, kv boolean, s text, k text, due timestamptz, qs time, qe time, skip boolean,
                  ch text[], mk boolean)
        JOIN audiences_contact c ON c.id = u.c
        CROSS JOIN LATERAL unnest(u.ch) AS ch(channel)
    ), kept AS (
        SELECT * FROM wanted
        WHERE (channel <> 'email' OR email <> '') AND (channel NOT IN ('sms', 'whatsapp') OR phone <> '')
          AND NOT (skip AND due_at > due) AND NOT global_control
    ), controlled AS (
        SELECT run_id, count(DISTINCT (contact_id, trigger_key)) AS n FROM wanted WHERE global_control GROUP BY run_id
    ), inserted AS (
        INSERT INTO delivery_message (run_id, contact_id, channel, variant_id, variant_kept, status, trigger_key,
                                      due_at, attempts, provider_message_id, error, created_at)
        SELECT run_id, contact_id, channel, variant_id, variant_kept, status, trigger_key, due_at, 0, '', '', %(now)s
        FROM kept
        ON CONFLICT ON CONSTRAINT message_idempotency_key DO NOTHING
        RETURNING run_id, status
    ), quiet AS (
        SELECT run_id, count(DISTINCT (contact_id, trigger_key)) AS n, bool_or(skip) AS skip
        FROM wanted WHERE due_at > due AND NOT global_control GROUP BY run_id
    ), counted AS (
        SELECT run_id, count(*) FILTER (WHERE status = 'queued') AS queued,
               count(*) FILTER (WHERE status = 'holdout') AS holdout,
               count(*) FILTER (WHERE status = 'control') AS control
        FROM inserted GROUP BY run_id
    )
    SELECT COALESCE(q.run_id, n.run_id, g.run_id), COALESCE(q.n, 0), COALESCE(q.skip, false),
           COALESCE(n.queued, 0), COALESCE(n.holdout, 0), COALESCE(n.control, 0), COALESCE(g.n, 0)
    FROM quiet q FULL JOIN counted n ON n.run_id = q.run_id
    FULL JOIN controlled g ON g.run_id = COALESCE(q.run_id, n.run_id)
    """
    # The organisation's global control group gets no marketing message (audiences.segments): the same bucket
    # as fan-out's, worked out in this statement.
    threshold = global_control_threshold(organisation)
    control_sql = f"{holdout_bucket_sql('c.id', '%(gc_seed)s')} < %(gc_threshold)s" if threshold else "false"
    params = {
        "rows": json.dumps(rows),
        "tz": str(organisation.timezone),
        "now": now,
        "gc_seed": global_control_seed(organisation.pk),
        "gc_threshold": threshold,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql.replace("{global_control}", control_sql), params)
        results = cursor.fetchall()
        sends_per_run = Counter(row["r"] for row in rows)
        cursor.execute(
            "UPDATE delivery_run r SET message_count = r.message_count + u.q, holdout_count = r.holdout_count + u.h,"
            " control_count = r.control_count + u.ct, audience_count = r.audience_count + u.a"
            " FROM json_to_recordset(%s::json) AS u(id uuid, q int, h int, ct int, a int) WHERE r.id = u.id",
            [
                json.dumps(
                    [
                        {"id": str(run_id), "q": queued, "h": holdout, "ct": control, "a": sends_per_run[str(run_id)]}
                        for run_id, _n, _skip, queued, holdout, control, _controlled in results
                    ]
                )
            ],
        )
    decisions: Counter[tuple[Any, str]] = Counter()
    skipped: Counter[str] = Counter()
    for run_id, in_quiet, skip, *_, controlled in results:
        campaign = by_run[str(run_id)]
        if in_quiet:
            decisions[(campaign.pk, "skipped_quiet_hours" if skip else "deferred_quiet_hours")] += in_quiet
            if skip:
                skipped[str(run_id)] += in_quiet
        if controlled:
            decisions[(campaign.pk, "global_control")] += controlled
            skipped[str(run_id)] += controlled
    for run_id, count in sends_per_run.items():
        decisions[(by_run[run_id].pk, "queued")] += count - skipped[run_id]
    return decisions


def triggers_on_events(organisation: Organisation, events: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Match freshly stored events against the organisation's active triggered campaigns, all campaigns of a batch
    together (a handful of statements, whatever the number of campaigns). Returns the runs with messages due at
    once (the caller asks workers to send them after commit)."""
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
        )
        .select_related("organisation")
        .prefetch_related(Prefetch("variants", queryset=Variant.objects.order_by("position", "name")))
    )
    if not campaigns:
        return []
    decisions: Counter[tuple[Any, str]] = Counter()
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    # The standing runs are locked (in id order) before anything is decided. A complete, cancel or delete locks
    # the campaign, then its run (the lock order in delivery.runs), so it either waits for this batch and then
    # cancels what it queued, or closes the run first, and this batch, having waited, finds no open run and adds
    # nothing. (The counters update below held this lock until commit anyway; it is only taken earlier.)
    standing = {
        run.campaign_id: run
        for run in Run.objects.select_for_update(no_key=True)
        .filter(campaign__in=campaigns, trigger=Run.Trigger.EVENT)
        .exclude(status__in=[Run.Status.COMPLETED, Run.Status.CANCELLED, Run.Status.FAILED])
        .order_by("pk")
    }
    # Read again now that the runs are held: a campaign closed while this batch waited is left out.
    still_open = set(
        Campaign.objects.filter(
            pk__in=[campaign.pk for campaign in campaigns],
            status__in=[CampaignStatus.ACTIVE, CampaignStatus.PAUSED],
            deleted_at__isnull=True,
        ).values_list("pk", flat=True)
    )
    campaigns = [campaign for campaign in campaigns if campaign.pk in still_open]
    candidates: dict[Any, list[Mapping[str, Any]]] = {}
    by_id = {campaign.pk: campaign for campaign in campaigns}
    for campaign in campaigns:
        matching = by_type.get(campaign.trigger_event, [])
        decisions[(campaign.pk, "matched")] += len(matching)
        if campaign.status == CampaignStatus.PAUSED:
            # Paused: no new sends are started; the events are counted and otherwise left alone.
            decisions[(campaign.pk, "ignored_paused")] += len(matching)
            continue
        if campaign.pk not in standing:
            standing[campaign.pk] = trigger_run_open(campaign)
        predicate = compile_conditions(campaign.trigger_conditions)
        passed = [event for event in matching if predicate(event["properties"])]
        decisions[(campaign.pk, "filtered_by_condition")] += len(matching) - len(passed)
        if passed:
            candidates[campaign.pk] = passed
    members = _members(organisation, {cid: {e["contact_id"] for e in evs} for cid, evs in candidates.items()}, by_id)
    recent = _recent_sends(
        {cid: (standing[cid], by_id[cid].frequency_limit) for cid in candidates},
        {e["contact_id"] for evs in candidates.values() for e in evs},
        now,
    )
    plans = []
    for campaign_id, passed in candidates.items():
        campaign = by_id[campaign_id]
        in_audience = [event for event in passed if (campaign_id, event["contact_id"]) in members]
        decisions[(campaign_id, "not_in_audience")] += len(passed) - len(in_audience)
        sends = []
        taken = set()
        for event in sorted(in_audience, key=lambda e: e["occurred_at"]):
            key = (campaign_id, event["contact_id"])
            if key in recent or (campaign.frequency_limit != "none" and key in taken):
                decisions[(campaign_id, "capped")] += 1
                continue
            taken.add(key)  # a second event in the same batch counts against the limit too
            sends.append(event)
        if sends:
            plans.append((campaign, standing[campaign_id], sends))
    if plans:
        decisions.update(_queue(organisation, plans, now))
    _count(decisions, now)
    return [run.pk for campaign, run, _sends in plans if not campaign.trigger_delay_seconds]


def trigger_decisions(campaign: Campaign) -> dict[str, int]:
    return dict(campaign.trigger_decisions.values_list("decision", "count"))
