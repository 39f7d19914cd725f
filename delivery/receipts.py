"""Provider receipts (delivered, bounced, complained, failed) and in-app reads, applied in bulk.

A receipt names its message by our message id or by the provider's message id (the SMTP Message-ID, the
notification_service id). Applying is idempotent: a message only moves forward (sent → delivered / bounced /
failed; a complaint is recorded once), so a provider retrying its webhook changes nothing twice. Hard bounces and
complaints suppress the address for the whole organisation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from audiences.access import Actor, require_provider_post
from audiences.models import Contact
from audiences.pii import encrypt, pii_hash
from compliance.audit import audit_record

STATUSES = ("delivered", "bounced", "complained", "failed")

# Only these moves are allowed; anything else (a late "delivered" after a bounce, a repeat) is ignored.
APPLY_SQL = """
WITH incoming AS (
    SELECT * FROM json_to_recordset(%(rows)s::json)
        AS r(idx int, message_id bigint, provider_message_id text, status text, reason text)
), found AS (
    -- Two joins rather than one OR, so each uses its index (the primary key; the provider id's partial index).
    SELECT i.*, m.id AS mid FROM incoming i JOIN delivery_message m ON m.id = i.message_id
    UNION ALL
    SELECT i.*, m.id FROM incoming i
    JOIN delivery_message m ON i.message_id IS NULL AND i.provider_message_id <> ''
                            AND m.provider_message_id = i.provider_message_id
                            AND m.channel IN ('sms', 'whatsapp')
), matched AS (
    SELECT DISTINCT ON (m.id) m.id, m.run_id, m.status AS old_status, f.status AS receipt, f.reason, f.idx,
           m.contact_id, m.channel, m.variant_id
    FROM found f
    JOIN delivery_message m ON m.id = f.mid
    JOIN delivery_run r ON r.id = m.run_id AND r.organisation_id = %(org)s
    ORDER BY m.id, f.idx
), moved AS (
    UPDATE delivery_message m
    SET status = CASE WHEN x.receipt = 'complained' THEN m.status ELSE x.receipt END,
        error = CASE WHEN x.receipt IN ('bounced', 'failed') THEN left(x.reason, 500) ELSE m.error END
    FROM matched x
    WHERE m.id = x.id
      AND ((x.receipt = 'delivered' AND x.old_status = 'sent')
        OR (x.receipt IN ('bounced', 'failed') AND x.old_status IN ('sent', 'delivered'))
        OR (x.receipt = 'complained' AND x.old_status IN ('sent', 'delivered')
            AND NOT EXISTS (SELECT 1 FROM analytics_engagementevent e
                            WHERE e.dedupe_key = 'receipt:' || x.id || ':complaint')))
    RETURNING m.id, m.run_id, x.old_status, x.receipt, x.idx, m.contact_id, m.channel, m.variant_id
)
SELECT id, run_id, old_status, receipt, idx, contact_id, channel, variant_id FROM moved
"""


MESSAGE_ID_HEADER = re.compile(r"^<(\d+)(?:\.[0-9a-f]+)?@[^>]+>$")


def _message_id_in(provider_message_id: str) -> int | None:
    """Our email Message-IDs are "<message id.random@sender domain>" ("<message id@sender domain>" before): a
    receipt quoting one names the message."""
    match = MESSAGE_ID_HEADER.match(provider_message_id.strip())
    return int(match.group(1)) if match else None


def receipts_apply(*, actor: Actor, receipts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply validated receipts (`message_id` or `provider_message_id`, `status`, optional `reason`). Returns how
    many changed a message, how many matched nothing of this organisation (by index), and the suppressions added."""
    rows = [
        {
            "idx": index,
            "message_id": item.get("message_id") or _message_id_in(item.get("provider_message_id") or ""),
            "provider_message_id": item.get("provider_message_id") or "",
            "status": item["status"],
            "reason": item.get("reason") or "",
        }
        for index, item in enumerate(receipts)
    ]
    require_provider_post(actor)
    organisation = actor.organisation
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(APPLY_SQL, {"rows": json.dumps(rows), "org": str(organisation.pk)})
        moved = cursor.fetchall()
        _count(cursor, moved)
        _engagement(cursor, organisation, moved, now)
        suppressed = _suppress(cursor, organisation, moved, rows)
        if moved:
            audit_record(
                actor=actor,
                action="delivery.receipts",
                target=organisation,
                details={"applied": len(moved), "suppressed": suppressed},
            )
    applied = {row[4] for row in moved}
    return {
        "applied": len(moved),
        "ignored": [i for i in range(len(rows)) if i not in applied],
        "suppressed": suppressed,
    }


def _count(cursor: Any, moved: Sequence[Sequence[Any]]) -> None:
    """Run counters follow the rows: a delivered receipt adds to delivered, a bounce after delivery moves it."""
    per_run: dict[Any, dict[str, int]] = {}
    for _id, run_id, old, receipt, *_ in moved:
        counts = per_run.setdefault(run_id, {"delivered": 0, "bounced": 0, "failed": 0, "sent": 0})
        if receipt == "delivered":
            counts["delivered"] += 1
        elif receipt in ("bounced", "failed"):
            counts[receipt] += 1
            if old == "delivered":
                counts["delivered"] -= 1
            if receipt == "failed":
                counts["sent"] -= 1  # handed over but never accepted: counted as failed, not sent
    for run_id, counts in per_run.items():
        cursor.execute(
            "UPDATE delivery_run SET delivered_count = delivered_count + %s, bounced_count = bounced_count + %s,"
            " failed_count = failed_count + %s, sent_count = sent_count + %s WHERE id = %s",
            [counts["delivered"], counts["bounced"], counts["failed"], counts["sent"], run_id],
        )


def _engagement(cursor: Any, organisation: Any, moved: Sequence[Sequence[Any]], now: Any) -> None:
    complaints = [row for row in moved if row[3] == "complained"]
    if not complaints:
        return
    cursor.execute(
        "INSERT INTO analytics_engagementevent (organisation_id, campaign_id, run_id, message_id, variant_id,"
        " contact_id, channel, kind, occurred_at, is_machine, value, dedupe_key)"
        " SELECT %s, r.campaign_id, r.id, u.m, u.v, u.c, u.ch, 'complaint', %s, false, NULL, 'receipt:' || u.m ||"
        " ':complaint' FROM json_to_recordset(%s::json) AS u(m bigint, r uuid, v uuid, c bigint, ch text)"
        " JOIN delivery_run r ON r.id = u.r ON CONFLICT (dedupe_key) DO NOTHING",
        [
            str(organisation.pk),
            now,
            json.dumps(
                [{"m": m, "r": str(r), "v": str(v), "c": c, "ch": ch} for m, r, _o, _s, _i, c, ch, v in complaints]
            ),
        ],
    )


def _suppress(cursor: Any, organisation: Any, moved: Sequence[Sequence[Any]], rows: Sequence[Mapping]) -> int:
    """Hard bounces and complaints put the address on the organisation's suppression list."""
    targets = [
        {"c": contact_id, "ch": channel, "why": "complaint" if receipt == "complained" else "hard_bounce"}
        for _id, _run, _old, receipt, idx, contact_id, channel, _v in moved
        if receipt == "complained" or (receipt == "bounced" and "soft" not in rows[idx]["reason"].lower())
    ]
    if not targets:
        return 0
    # The addresses are encrypted in the contact store: read (and decrypt) the few contacts concerned.
    contacts = Contact.objects.filter(organisation=organisation, pk__in={t["c"] for t in targets}).only(
        "email", "phone"
    )
    by_id = {contact.pk: contact for contact in contacts}
    entries = []
    for target in targets:
        contact = by_id.get(target["c"])
        address = (contact.email if target["ch"] == "email" else contact.phone) if contact else ""
        if address:
            entries.append(AutomaticSuppression(address, target["why"], "from a provider receipt"))
    return suppressions_add_automatic(
        cursor, organisation_id=str(organisation.pk), entries=entries, actor_label="provider receipt"
    )


@dataclass(frozen=True)
class AutomaticSuppression:
    address: str  # in clear: it is encrypted here, and quoted in the audit entry
    reason: str  # hard_bounce or complaint (compliance.Suppression.Reason)
    note: str


def suppressions_add_automatic(
    cursor: Any, *, organisation_id: str, entries: Sequence[AutomaticSuppression], actor_label: str
) -> int:
    """Put addresses the far end refused for good (hard bounces, complaints) on the organisation's suppression
    list, each new one with its audit entry, in one statement on the caller's cursor (so in the caller's
    transaction: a provider receipt's, or the send batch's record). An address already suppressed keeps its row.
    Returns how many were added."""
    rows = [
        {
            "a": encrypt(entry.address),
            "h": pii_hash(entry.address),
            "why": entry.reason,
            "note": entry.note[:500],
            "plain": entry.address,
        }
        for entry in entries
        if entry.address
    ]
    if not rows:
        return 0
    # The new suppressions and, in the same statement, one audit entry each (quoting the address, which the
    # suppression row itself holds only encrypted).
    cursor.execute(
        "WITH incoming AS (SELECT DISTINCT ON (u.h) u.a, u.h, u.why, u.note, u.plain"
        "   FROM json_to_recordset(%(rows)s::json) AS u(a text, h text, why text, note text, plain text)),"
        " added AS ("
        "   INSERT INTO compliance_suppression (organisation_id, address, address_hash, reason, note, created_at)"
        "   SELECT %(org)s, a, h, why, note, %(now)s FROM incoming"
        "   ON CONFLICT (organisation_id, address_hash) DO NOTHING RETURNING id, address_hash, reason, note)"
        " INSERT INTO compliance_auditlogentry (organisation_id, occurred_at, action, target_type, target_id,"
        "                                       target_repr, actor_label, details)"
        " SELECT %(org)s, %(now)s, 'suppression.auto', 'compliance.suppression', added.id::text,"
        "        left(i.plain || ' (' || added.reason || ')', 300), %(actor)s,"
        "        jsonb_build_object('reason', added.reason, 'note', added.note)"
        " FROM added JOIN incoming i ON i.h = added.address_hash ORDER BY added.id",
        {"org": organisation_id, "now": timezone.now(), "rows": json.dumps(rows), "actor": actor_label},
    )
    return cursor.rowcount
