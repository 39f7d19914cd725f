"""Sticky variant assignment.

A contact's variant is a hash of (campaign, contact) into the allocation's bucket ranges
(campaigns.content.assignment), so it is the same in every run as long as the allocations stay put. When someone
changes the allocations of a campaign that has already sent (recorded in Campaign.allocation_history), the ranges
move and the hash alone would move contacts to another variant: a recipient of a recurring or triggered campaign
would see both versions, and the comparison would mix them. From the first such change on, a contact who already
has a message of the campaign keeps that message's variant (the latest one, so a kept variant stays kept), and only
contacts new to the campaign are hashed into the new allocation. Their messages carry `variant_kept`, which the
sample-ratio check uses to weigh only fresh assignments against the allocation of their period.

Once the auto-winner has decided, everyone gets the winner: the decision overrides stickiness.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connection

from campaigns.models import Campaign


def sticky_assignment_applies(campaign: Campaign) -> bool:
    if not campaign.allocation_history:
        return False
    return not Campaign.objects.filter(pk=campaign.pk, experiment_decision__isnull=False).exists()


def _live_variant_ids(campaign: Campaign) -> list[str]:
    return [str(pk) for pk in campaign.variants.values_list("pk", flat=True)]


def kept_variants_stage(cursor: Any, campaign: Campaign, *, run_id: Any) -> int:
    """Fill `kept_variant` of the fan-out staging table from the campaign's earlier messages, in one statement;
    returns how many staged contacts keep a variant."""
    cursor.execute(
        "UPDATE fan_out_recipients r SET kept_variant = k.variant_id FROM ("
        "  SELECT DISTINCT ON (m.contact_id) m.contact_id, m.variant_id FROM delivery_message m"
        "  JOIN delivery_run run ON run.id = m.run_id"
        "  WHERE run.campaign_id = %s AND m.run_id <> %s AND m.variant_id = ANY(%s::uuid[])"
        "  ORDER BY m.contact_id, m.created_at DESC, m.id DESC"
        ") k WHERE k.contact_id = r.contact_id",
        [str(campaign.pk), str(run_id), _live_variant_ids(campaign)],
    )
    return cursor.rowcount


def kept_variants_for(campaign: Campaign, contact_ids: Iterable[int]) -> dict[int, str]:
    """The variant each of these contacts keeps (contacts without an earlier message are absent)."""
    ids = list(set(contact_ids))
    if not ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT ON (m.contact_id) m.contact_id, m.variant_id FROM delivery_message m"
            " JOIN delivery_run run ON run.id = m.run_id"
            " WHERE run.campaign_id = %s AND m.contact_id = ANY(%s) AND m.variant_id = ANY(%s::uuid[])"
            " ORDER BY m.contact_id, m.created_at DESC, m.id DESC",
            [str(campaign.pk), ids, _live_variant_ids(campaign)],
        )
        return {contact_id: str(variant_id) for contact_id, variant_id in cursor.fetchall()}
