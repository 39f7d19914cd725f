"""Reads of campaigns, always scoped to the acting organisation (the tenancy chokepoint for campaigns)."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet

from audiences.access import Actor
from campaigns.models import Campaign, Variant


def campaign_queryset(actor: Actor, *, deleted: str = "exclude") -> QuerySet[Campaign]:
    """Campaigns of the actor's organisation. `deleted` is "exclude" (default), "include" or "only"."""
    queryset = Campaign.objects.filter(organisation=actor.organisation)
    if deleted == "exclude":
        queryset = queryset.filter(deleted_at__isnull=True)
    elif deleted == "only":
        queryset = queryset.filter(deleted_at__isnull=False)
    return queryset


def campaign_list(actor: Actor, *, deleted: str = "exclude") -> QuerySet[Campaign]:
    return (
        campaign_queryset(actor, deleted=deleted)
        .select_related("owner", "organisation")
        .prefetch_related(Prefetch("variants", queryset=Variant.objects.order_by("position", "name")), "segment_links")
    )


def campaign_get(actor: Actor, campaign_id: object, *, include_deleted: bool = False) -> Campaign:
    """The campaign if it belongs to the actor's organisation; otherwise Campaign.DoesNotExist (a 404 to callers)."""
    return campaign_list(actor, deleted="include" if include_deleted else "exclude").get(pk=campaign_id)


def campaign_get_for_update(actor: Actor, campaign_id: object, *, include_deleted: bool = False) -> Campaign:
    """Like `campaign_get`, but row-locked until the surrounding transaction ends, so concurrent status changes
    serialise instead of both passing the state check."""
    queryset = campaign_queryset(actor, deleted="include" if include_deleted else "exclude")
    return queryset.select_for_update(of=("self",)).get(pk=campaign_id)


HISTORY_FIELDS = (
    "name",
    "description",
    "type",
    "status",
    "channels",
    "scheduled_at",
    "messages_per_minute",
    "messages_per_hour",
    "owner_id",
    "paused_at",
    "paused_by",
    "deleted_at",
    "deleted_by",
    "audience_combine",
    "audience_rules",
    "holdout_percent",
)
VARIANT_HISTORY_FIELDS = ("name", "allocation_percent", "is_control", "content")
_HISTORY_TYPES = {"+": "created", "~": "changed", "-": "deleted"}


def _diff_rows(rows: list[Any], fields: tuple[str, ...]) -> list[tuple[Any, dict[str, dict[str, Any]]]]:
    previous = None
    result = []
    for row in rows:
        changes = {}
        for field in fields:
            new = getattr(row, field)
            old = getattr(previous, field) if previous is not None else None
            if previous is None and row.history_type != "+":
                continue
            if previous is None or new != old:
                if previous is None and new in (None, "", [], {}):
                    continue
                changes[field.removesuffix("_id")] = {"from": old, "to": new}
        result.append((row, changes))
        previous = row
    return result


def campaign_history(campaign: Campaign, *, limit: int = 200) -> list[dict[str, Any]]:
    """Who changed what and when, newest first: the campaign's own history and its variants'. Two queries."""
    entries: list[dict[str, Any]] = []
    campaign_rows = list(Campaign.history.filter(id=campaign.pk).order_by("history_date", "history_id"))
    for row, changes in _diff_rows(campaign_rows, HISTORY_FIELDS):
        entries.append(
            {
                "at": row.history_date,
                "actor": row.history_actor or "system",
                "action": row.history_change_reason or _HISTORY_TYPES[row.history_type],
                "object": "campaign",
                "changes": changes,
            }
        )
    variant_rows = list(Variant.history.filter(campaign_id=campaign.pk).order_by("id", "history_date", "history_id"))
    by_variant: dict[Any, list[Any]] = {}
    for row in variant_rows:
        by_variant.setdefault(row.id, []).append(row)
    for rows in by_variant.values():
        for row, changes in _diff_rows(rows, VARIANT_HISTORY_FIELDS):
            if not changes and row.history_type == "~":
                continue
            entries.append(
                {
                    "at": row.history_date,
                    "actor": row.history_actor or "system",
                    "action": f"variant {row.name}: " + (row.history_change_reason or _HISTORY_TYPES[row.history_type]),
                    "object": "variant",
                    "changes": changes,
                }
            )
    entries.sort(key=lambda e: e["at"], reverse=True)
    return entries[:limit]
