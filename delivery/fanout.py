"""Fan-out: a run's audience becomes one message row per recipient and channel, in set-based SQL.

One INSERT … SELECT: the audience resolution (segments, rules, exclusions, holdout) joined to the contacts, crossed
with the campaign's channels, a deterministic variant for each contact (the same hash as
campaigns.content.assignment, computed in SQL), and contacts without an address for a channel left out and counted.
ON CONFLICT on the idempotency key makes a repeated fan-out (a worker that died half-way) add only what is missing.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from audiences.access import system_actor
from audiences.rules import Compiled
from audiences.segments import global_control_condition
from campaigns.audience import audience_resolution_select
from campaigns.models import Campaign, Channel
from compliance.audit import audit_record
from delivery.assignment import kept_variants_stage, sticky_assignment_applies
from delivery.models import Message, Run

# Why a contact of the audience got nothing because it is in the global control group (run.excluded, audit). Not
# a compliance exclusion: no RunExclusion row, since membership is a hash anyone can recompute.
GLOBAL_CONTROL = "global_control"

# Channels that need an address on the contact, and the staging flag saying the contact has one.
ADDRESS_FLAGS = {Channel.EMAIL: "has_email", Channel.SMS: "has_phone", Channel.WHATSAPP: "has_phone"}


def _variant_case(campaign: Campaign, *, sticky: bool = False) -> tuple[str, list[Any], list[Any]]:
    """SQL choosing each contact's variant id from its bucket (`r.variant_bucket`, out of BUCKETS) — or the variant
    it keeps (`r.kept_variant`, delivery.assignment) when `sticky` — its params, and the control variant ids."""
    variants = list(campaign.variants.order_by("position", "name"))
    whens: list[str] = []
    params: list[Any] = []
    upper = 0
    for variant in variants[:-1]:
        upper += variant.allocation_percent * 100
        whens.append(f"WHEN r.variant_bucket < {upper} THEN %s::uuid")
        params.append(str(variant.pk))
    params.append(str(variants[-1].pk))
    sql = ("CASE " + " ".join(whens) + " ELSE %s::uuid END") if whens else "%s::uuid"
    if sticky:
        sql = f"COALESCE(r.kept_variant, {sql})"
    return sql, params, [str(v.pk) for v in variants if v.is_control]


def _due_at(campaign: Campaign, *, now: Any) -> tuple[str, list[Any], str, list[Any]]:
    """When each message may go: now, or — with a send window, weekends off or a local send time — the next
    allowed moment in the recipient's timezone (the organisation's for contacts without one), worked out once per
    recipient by cs_next_send_time (delivery migration 0011)."""
    if not campaign.has_send_rules:
        return "%s", [now], "", []
    join = (
        "JOIN audiences_contact tz_c ON tz_c.id = r.contact_id"
        " CROSS JOIN LATERAL (SELECT cs_next_send_time(%s, COALESCE(NULLIF(tz_c.timezone, ''), %s),"
        " %s::time, %s::time, %s, %s::time) AS at) due"
    )
    params = [
        now,
        str(campaign.organisation.timezone),
        campaign.send_window_start,
        campaign.send_window_end,
        campaign.skip_weekends,
        campaign.local_send_time,
    ]
    return "due.at", [], join, params


def _mark_consent(cursor: Any, *, organisation_id: str, channels: list[str], category: str) -> int:
    """Flag staged recipients who opted out, unsubscribed (marketing only), turned the campaign's category or
    channels off, or whose address is suppressed. Each statement touches only the matching rows (few), not the
    audience."""
    cursor.execute(
        "UPDATE fan_out_recipients r SET blocked = CASE WHEN p.global_opt_out THEN 'opted_out'"
        " WHEN p.unsubscribed_at IS NOT NULL AND %(category)s = 'marketing' THEN 'unsubscribed'"
        " WHEN %(category)s = ANY(p.disabled_categories) THEN 'category_disabled' END,"
        " disabled = NULLIF(p.disabled_channels, '{}')"
        " FROM compliance_contactpreference p"
        " WHERE p.contact_id = r.contact_id AND p.organisation_id = %(org)s"
        " AND (p.global_opt_out OR p.unsubscribed_at IS NOT NULL OR p.disabled_channels <> '{}'"
        " OR p.disabled_categories <> '{}')",
        {"org": organisation_id, "category": category},
    )
    flagged = cursor.rowcount
    # Suppressions (hard bounces, complaints, manual, imported, erased contacts) match by keyed hash
    # (audiences.pii): the addresses themselves are encrypted.
    if Channel.EMAIL in channels:
        cursor.execute(
            "UPDATE fan_out_recipients r SET email_suppressed = true FROM compliance_suppression s"
            " JOIN audiences_contact c ON c.organisation_id = s.organisation_id AND c.email_hash = s.address_hash"
            " WHERE s.organisation_id = %s AND s.address_hash <> '' AND c.email_hash <> '' AND r.contact_id = c.id",
            [organisation_id],
        )
        flagged += cursor.rowcount
    if Channel.SMS in channels or Channel.WHATSAPP in channels:
        cursor.execute(
            "UPDATE fan_out_recipients r SET phone_suppressed = true FROM compliance_suppression s"
            " JOIN audiences_contact c ON c.organisation_id = s.organisation_id AND c.phone_hash = s.address_hash"
            " WHERE s.organisation_id = %s AND s.address_hash <> '' AND c.phone_hash <> '' AND r.contact_id = c.id",
            [organisation_id],
        )
        flagged += cursor.rowcount
    return flagged


def _mark_global_control(cursor: Any, campaign: Campaign) -> None:
    """Leave out the organisation's global control group (audiences.segments), from marketing campaigns only:
    one statement over the staged audience, and none when the group is off. Consent is marked first, so a contact
    who opted out is counted as opted out whichever group it is in."""
    condition = global_control_condition(campaign.organisation, "r.contact_id")
    if condition is None or campaign.category != "marketing":
        return
    cursor.execute(
        f"UPDATE fan_out_recipients r SET blocked = '{GLOBAL_CONTROL}' WHERE r.blocked IS NULL AND {condition.sql}",
        condition.params,
    )


def _record_exclusions(cursor: Any, *, run: Run, channels: list[str], now: Any) -> None:
    """One row per excluded recipient (and channel, when only some of its channels were left out) for the audit
    trail, from the staged flags; ON CONFLICT keeps a resumed fan-out from writing twice."""
    cursor.execute(
        "INSERT INTO compliance_runexclusion (organisation_id, run_id, campaign_id, contact_id, channel, reason,"
        " created_at)"
        " SELECT %(org)s::uuid, %(run)s::uuid, %(campaign)s::uuid, r.contact_id, '', r.blocked, %(now)s::timestamptz"
        f" FROM fan_out_recipients r WHERE r.blocked IS NOT NULL AND r.blocked <> '{GLOBAL_CONTROL}'"
        " UNION ALL"
        " SELECT %(org)s::uuid, %(run)s::uuid, %(campaign)s::uuid, r.contact_id, ch.channel,"
        "  CASE WHEN ch.channel = ANY(COALESCE(r.disabled, '{}')) THEN 'channel_disabled' ELSE 'suppressed' END,"
        "  %(now)s::timestamptz"
        " FROM fan_out_recipients r CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)"
        " WHERE r.blocked IS NULL AND (r.disabled IS NOT NULL OR r.email_suppressed OR r.phone_suppressed)"
        "  AND (ch.channel = ANY(COALESCE(r.disabled, '{}'))"
        "   OR (ch.channel = 'email' AND r.email_suppressed AND r.has_email)"
        "   OR (ch.channel IN ('sms', 'whatsapp') AND r.phone_suppressed AND r.has_phone))"
        " ON CONFLICT ON CONSTRAINT run_exclusion_unique DO NOTHING",
        {
            "org": str(run.organisation_id),
            "run": str(run.pk),
            "campaign": str(run.campaign_id),
            "now": now,
            "channels": channels,
        },
    )


def _reachable(channels: list[str]) -> str:
    """SQL: the staged recipient would get a message on at least one of the channels (the conditions of the
    message INSERT below, per channel)."""
    checks = []
    for channel in channels:
        check = f"NOT '{channel}' = ANY(COALESCE(r.disabled, '{{}}'))"
        if channel in ADDRESS_FLAGS:
            check += f" AND r.{ADDRESS_FLAGS[channel]}"
        check += {"email": " AND NOT r.email_suppressed", "sms": " AND NOT r.phone_suppressed",
                  "whatsapp": " AND NOT r.phone_suppressed"}.get(channel, "")  # fmt: skip
        checks.append(f"({check})")
    return "(" + " OR ".join(checks or ["false"]) + ")"


def _stage_phase(cursor: Any, run: Run, channels: list[str]) -> int:
    """Keep in the staging table only the recipients of this run's phase (analytics.autowinner), so every count
    and exclusion below is the phase's own and each recipient is counted in one run of the campaign:

    - test share: of those who would get a message, the held out and the first `experiment_test_percent` %
      (rounded up) of the others, in an order drawn from (campaign, contact) independently of the variant bucket;
    - winner: everyone without a message row in the campaign's earlier runs (the test share and its holdout),
      including those left out for consent or an address (counted here, once).

    Returns how many are staged: the run's audience."""
    if run.phase == Run.Phase.TEST:
        cursor.execute(f"DELETE FROM fan_out_recipients r WHERE r.blocked IS NOT NULL OR NOT {_reachable(channels)}")
        cursor.execute(
            "DELETE FROM fan_out_recipients r USING ("
            "  SELECT contact_id, row_number() OVER (ORDER BY md5(%s || contact_id::text), contact_id) AS rank,"
            "         count(*) OVER () AS total"
            "  FROM fan_out_recipients WHERE NOT is_holdout"
            ") k WHERE k.contact_id = r.contact_id AND k.rank > ceil(k.total * %s / 100.0)",
            [f"test-share:{run.campaign_id}:", int(run.campaign.experiment_test_percent)],
        )
    elif run.phase == Run.Phase.WINNER:
        cursor.execute(
            "DELETE FROM fan_out_recipients r USING delivery_message m"
            " JOIN delivery_run earlier ON earlier.id = m.run_id"
            " WHERE m.contact_id = r.contact_id AND earlier.campaign_id = %s AND earlier.id <> %s",
            [str(run.campaign_id), str(run.pk)],
        )
    cursor.execute("SELECT count(*) FROM fan_out_recipients")
    return int(cursor.fetchone()[0])


def run_create(
    *, campaign: Campaign, trigger: str = Run.Trigger.MANUAL, scheduled_for: Any = None, phase: str | None = None
) -> Run:
    """A new run. Without a `phase`, a campaign whose auto-winner has a test share and no decision yet starts with
    the test share (the auto-winner sends the winner to the rest in a run of its own)."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        number = (locked.runs.aggregate(last=Max("number"))["last"] or 0) + 1
        if phase is None:
            undecided = not Campaign.objects.filter(pk=locked.pk, experiment_decision__isnull=False).exists()
            test = trigger != Run.Trigger.EVENT and undecided and locked.test_share_applies
            phase = Run.Phase.TEST if test else Run.Phase.WHOLE
        return Run.objects.create(
            organisation=campaign.organisation,
            campaign=locked,
            number=number,
            trigger=trigger,
            scheduled_for=scheduled_for,
            phase=phase,
        )


def run_fan_out(run_id: Any) -> Run | None:
    """Write the run's message rows. Idempotent: a second call (or a retry after a crash) adds nothing twice."""
    claimed = Run.objects.filter(pk=run_id, status__in=[Run.Status.PENDING, Run.Status.FANNING_OUT]).update(
        status=Run.Status.FANNING_OUT
    )
    if not claimed:
        return None
    run = Run.objects.select_related("campaign", "campaign__organisation").get(pk=run_id)
    campaign = run.campaign
    select: Compiled = audience_resolution_select(campaign)
    sticky = sticky_assignment_applies(campaign)
    variant_sql, variant_params, control_ids = _variant_case(campaign, sticky=sticky)
    channels = list(campaign.channels)
    due_sql, due_select_params, due_join, due_join_params = _due_at(campaign, now=timezone.now())
    address_checks = " AND ".join(f"(ch.channel <> '{channel}' OR r.{flag})" for channel, flag in ADDRESS_FLAGS.items())
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        # One fan-out per run at a time (a redelivered task waits, then finds the run done).
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('run-fan-out'), hashtext(%s))", [str(run.pk)])
        # A first fan-out inserts plainly; only a resumed one pays for per-row conflict checks.
        resumed = Message.objects.filter(run_id=run.pk).exists()
        on_conflict = "ON CONFLICT ON CONSTRAINT message_idempotency_key DO NOTHING" if resumed else ""
        # Session-local staging, emptied at commit; IF NOT EXISTS because a connection reuses it across runs.
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS fan_out_recipients"
            " (contact_id bigint PRIMARY KEY, is_holdout boolean, variant_bucket integer, has_email boolean,"
            " has_phone boolean, blocked text, disabled text[], email_suppressed boolean DEFAULT false,"
            " phone_suppressed boolean DEFAULT false, kept_variant uuid) ON COMMIT DELETE ROWS"
        )
        cursor.execute("TRUNCATE fan_out_recipients")
        cursor.execute(
            "INSERT INTO fan_out_recipients (contact_id, is_holdout, variant_bucket, has_email, has_phone)"
            f" {select.sql}",
            select.params,
        )
        audience = cursor.rowcount
        kept = kept_variants_stage(cursor, campaign, run_id=run.pk) if sticky else 0
        flagged = _mark_consent(
            cursor, organisation_id=str(campaign.organisation_id), channels=channels, category=campaign.category
        )
        _mark_global_control(cursor, campaign)
        if run.phase:
            audience = _stage_phase(cursor, run, channels)
        cursor.execute(
            "SELECT count(*) FILTER (WHERE is_holdout AND blocked IS NULL),"
            " count(*) FILTER (WHERE blocked = 'opted_out'), count(*) FILTER (WHERE blocked = 'unsubscribed'),"
            " count(*) FILTER (WHERE blocked = 'category_disabled'),"
            " count(*) FILTER (WHERE NOT has_email AND blocked IS NULL),"
            " count(*) FILTER (WHERE NOT has_phone AND blocked IS NULL),"
            f" count(*) FILTER (WHERE blocked = '{GLOBAL_CONTROL}') FROM fan_out_recipients"
        )
        holdout, opted_out, unsubscribed, category_disabled, no_email, no_phone, global_control = cursor.fetchone()
        channel_disabled = suppressed = 0
        if flagged:  # a pass over the audience only when someone in it has a channel off or a suppressed address
            cursor.execute(
                "SELECT count(*) FILTER (WHERE ch.channel = ANY(r.disabled)),"
                " count(*) FILTER (WHERE NOT ch.channel = ANY(COALESCE(r.disabled, '{}')) AND ("
                "   (ch.channel = 'email' AND r.email_suppressed AND r.has_email)"
                "   OR (ch.channel IN ('sms', 'whatsapp') AND r.phone_suppressed AND r.has_phone)))"
                " FROM fan_out_recipients r CROSS JOIN unnest(%s::text[]) AS ch(channel)"
                " WHERE r.blocked IS NULL AND (r.disabled IS NOT NULL OR r.email_suppressed OR r.phone_suppressed)",
                [channels],
            )
            channel_disabled, suppressed = cursor.fetchone()
            _record_exclusions(cursor, run=run, channels=channels, now=now)
        cursor.execute(
            f"""
            INSERT INTO delivery_message (run_id, contact_id, channel, variant_id, variant_kept, status, due_at,
                                          attempts, provider_message_id, error, created_at)
            SELECT %s, r.contact_id, ch.channel, v.variant_id, r.kept_variant IS NOT NULL,
                   CASE WHEN r.is_holdout THEN 'holdout'
                        WHEN v.variant_id = ANY(%s::uuid[]) THEN 'control'
                        ELSE 'queued' END,
                   {due_sql}, 0, '', '', %s
            FROM fan_out_recipients r
            {due_join}
            CROSS JOIN LATERAL (SELECT {variant_sql} AS variant_id) v
            CROSS JOIN unnest(%s::text[]) AS ch(channel)
            WHERE r.blocked IS NULL AND {address_checks}
              AND (r.disabled IS NULL OR NOT ch.channel = ANY(r.disabled))
              AND NOT (ch.channel = 'email' AND r.email_suppressed)
              AND NOT (ch.channel IN ('sms', 'whatsapp') AND r.phone_suppressed)
            {on_conflict}
            """,
            [str(run.pk), control_ids, *due_select_params, now, *due_join_params, *variant_params, channels],
        )
        # Counted from the table rather than RETURNING every row: cheaper, and right for a resumed fan-out too.
        cursor.execute(
            "SELECT count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'control'),"
            " count(*) FROM delivery_message WHERE run_id = %s",
            [str(run.pk)],
        )
        queued, control, total = cursor.fetchone()
        excluded = {
            "opted_out": opted_out,
            "unsubscribed": unsubscribed,
            "category_disabled": category_disabled,
            "channel_disabled": channel_disabled,
            "suppressed": suppressed,
            "no_email": no_email if Channel.EMAIL in channels else 0,
            "no_phone": no_phone if (Channel.SMS in channels or Channel.WHATSAPP in channels) else 0,
            GLOBAL_CONTROL: global_control,
        }
        Run.objects.filter(pk=run.pk).update(
            audience_count=audience,
            holdout_count=holdout,
            message_count=queued,
            control_count=control,
            excluded={reason: count for reason, count in excluded.items() if count},
            fanned_out_at=now,
        )
        # Why recipients were left out goes to the compliance audit log with the run, in the same transaction.
        audit_record(
            actor=system_actor(run.campaign.organisation, "delivery engine"),
            action="run.fan_out",
            target=run,
            details={
                "campaign": str(run.campaign_id),
                "audience": audience,
                "holdout": holdout,
                "queued": queued,
                "control": control,
                "excluded": {reason: count for reason, count in excluded.items() if count},
                **({"kept_variant": kept} if sticky else {}),
                **({"phase": run.phase} if run.phase else {}),
            },
        )
        # A run paused while it fanned out stays paused.
        Run.objects.filter(pk=run.pk, status=Run.Status.FANNING_OUT).update(status=Run.Status.READY)
    run.refresh_from_db()
    run.total_rows = total  # type: ignore[attr-defined]
    return run
