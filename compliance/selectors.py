"""Reads that need care: what the send paths pass to their consent checks."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.utils import timezone

from audiences.models import Role
from audiences.pii import pii_hash
from compliance.models import AuditLogEntry, RunExclusion, SendingHold, Suppression, Unsubscribe


def consent_params(organisation_id: Any, category: str) -> dict[str, Any]:
    """Parameters of the consent checks in the send-time claim: the campaign's category and the marketing SMS
    hours. Whether marketing email is on hold (email_marketing_held) the claim reads in SQL, once per claim."""
    return {"category": category, **marketing_sms_quiet_hours()}


def marketing_sms_quiet_hours() -> dict[str, dt.time | None]:
    """Outside settings.MARKETING_SMS_WINDOW ("08:00-21:00"; empty: no rule) marketing SMS wait: as quiet hours
    from the window's end to its start, for cs_quiet_hours_end."""
    window = settings.MARKETING_SMS_WINDOW.strip()
    if not window:
        return {"sms_quiet_start": None, "sms_quiet_end": None}
    opens, _, closes = window.partition("-")
    return {
        "sms_quiet_start": dt.time.fromisoformat(closes.strip()),
        "sms_quiet_end": dt.time.fromisoformat(opens.strip()),
    }


def email_marketing_held(organisation_id: Any) -> bool:
    return SendingHold.objects.filter(
        organisation_id=organisation_id, channel="email", category="marketing", released_at__isnull=True
    ).exists()


def unsubscribes_for_campaign(organisation_id: Any, campaign_id: Any) -> QuerySet[Unsubscribe]:
    """Who unsubscribed from a campaign's messages, newest first (erased contacts show without a contact)."""
    return (
        Unsubscribe.objects.filter(organisation_id=organisation_id, campaign_id=campaign_id)
        .select_related("contact")
        .order_by("-created_at", "-id")
    )


UNSUBSCRIBE_CSV_HEADER = ("unsubscribed_at", "contact", "email", "phone", "channel", "source", "reason", "message_id")


def unsubscribe_csv_rows(queryset: QuerySet[Unsubscribe]) -> Iterator[tuple[Any, ...]]:
    for u in queryset.iterator(chunk_size=2000):
        contact = u.contact
        yield (
            u.created_at.isoformat(),
            contact.external_id if contact else "(erased)",
            contact.email if contact else "",
            contact.phone if contact else "",
            u.channel,
            u.source,
            u.reason,
            u.message_id or "",
        )


def suppression_list(organisation: Any, *, search: str = "", reason: str = "") -> QuerySet[Suppression]:
    queryset = Suppression.objects.filter(organisation=organisation).order_by("-created_at", "-id")
    if search.strip():
        # Addresses are encrypted at rest: a whole address is found by its keyed hash (no prefixes).
        queryset = queryset.filter(address_hash=pii_hash(search))
    if reason:
        if reason not in Suppression.Reason.values:
            raise ValidationError({"reason": [f"One of {', '.join(Suppression.Reason.values)}."]})
        queryset = queryset.filter(reason=reason)
    return queryset


# Who may read the audit log: it names every actor and what they changed.
AUDIT_READERS = frozenset({Role.ADMIN, Role.COMPLIANCE})


def _moment(name: str, raw: str, *, end: bool) -> dt.datetime:
    try:
        if len(raw) == 10:
            day = dt.date.fromisoformat(raw)
            moment = dt.datetime.combine(day + dt.timedelta(days=1) if end else day, dt.time())
        else:
            moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError({name: ["An ISO date (2026-05-01) or date-time."]}) from exc
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_current_timezone())
    return moment


def audit_filters(params: Mapping[str, str]) -> dict[str, Any]:
    """Validated audit-log filters from query parameters (a ValidationError names the bad ones)."""
    filters: dict[str, Any] = {}
    for name in ("action", "target_type", "target_id", "actor"):
        value = (params.get(name) or "").strip()
        if value:
            filters[name] = value[:200]
    errors: dict[str, list[str]] = {}
    for name, end in (("since", False), ("until", True)):
        raw = (params.get(name) or "").strip()
        if raw:
            try:
                filters[name] = _moment(name, raw, end=end)
            except ValidationError as exc:
                errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    return filters


def audit_log(actor: Any, filters: Mapping[str, Any]) -> QuerySet[AuditLogEntry]:
    if actor.role not in AUDIT_READERS:
        raise PermissionDenied("Only admins and compliance officers can read the audit log.")
    queryset = AuditLogEntry.objects.filter(organisation=actor.organisation)
    action = filters.get("action")
    if action:
        queryset = (
            queryset.filter(action__startswith=action) if action.endswith(".") else queryset.filter(action=action)
        )
    if filters.get("target_type"):
        queryset = queryset.filter(target_type=filters["target_type"])
    if filters.get("target_id"):
        queryset = queryset.filter(target_id=filters["target_id"])
    if filters.get("actor"):
        queryset = queryset.filter(actor_label__icontains=filters["actor"])
    if filters.get("since"):
        queryset = queryset.filter(occurred_at__gte=filters["since"])
    if filters.get("until"):
        queryset = queryset.filter(occurred_at__lt=filters["until"])
    return queryset.order_by("-occurred_at", "-id")


AUDIT_CSV_HEADER = ("occurred_at", "action", "target_type", "target_id", "target", "actor", "details", "ip")


def audit_csv_rows(queryset: QuerySet[AuditLogEntry]) -> Iterator[tuple[Any, ...]]:
    for entry in queryset.iterator(chunk_size=2000):
        yield (
            entry.occurred_at.isoformat(),
            entry.action,
            entry.target_type,
            entry.target_id,
            entry.target_repr,
            entry.actor_label,
            json.dumps(entry.details, sort_keys=True, cls=DjangoJSONEncoder),
            entry.ip_address or "",
        )


def whatsapp_freeform_variants(variants: Iterable[Any]) -> list[str]:
    """Variants whose WhatsApp content is free-form (no approved template): the claim sends those only inside the
    contact's 24-hour session. Empty with settings.WHATSAPP_SESSION_RULE off."""
    if not settings.WHATSAPP_SESSION_RULE:
        return []
    return [str(v.pk) for v in variants if "whatsapp" in v.content and not v.content["whatsapp"].get("template_name")]


EXCLUSION_FILTERS = ("run", "campaign", "contact", "reason", "channel")


def exclusion_filters(params: Mapping[str, str]) -> dict[str, Any]:
    """Validated run-exclusion filters (run and campaign are UUIDs, contact an id); a ValidationError names the
    bad ones."""
    filters: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name in EXCLUSION_FILTERS:
        raw = (params.get(name) or "").strip()
        if not raw:
            continue
        if name in ("run", "campaign"):
            try:
                filters[name] = uuid.UUID(raw)
            except ValueError:
                errors[name] = [f"{raw!r} is not a {name} id (a UUID)."]
        elif name == "contact":
            if raw.isdigit():
                filters[name] = int(raw)
            else:
                errors[name] = [f"{raw!r} is not a contact id."]
        else:
            filters[name] = raw[:32]
    if errors:
        raise ValidationError(errors)
    return filters


def run_exclusions(actor: Any, filters: Mapping[str, Any]) -> QuerySet[RunExclusion]:
    """The organisation's per-recipient fan-out exclusions, newest first."""
    if actor.role not in AUDIT_READERS:
        raise PermissionDenied("Only admins and compliance officers can read the audit log.")
    queryset = RunExclusion.objects.filter(organisation=actor.organisation)
    for name, column in (("run", "run_id"), ("campaign", "campaign_id"), ("contact", "contact_id")):
        if name in filters:
            queryset = queryset.filter(**{column: filters[name]})
    if "reason" in filters:
        queryset = queryset.filter(reason=filters["reason"])
    if "channel" in filters:
        queryset = queryset.filter(channel=filters["channel"])
    return queryset.order_by("-created_at", "-id")


EXCLUSION_CSV_HEADER = ("created_at", "run_id", "campaign_id", "contact_id", "channel", "reason")


def exclusion_csv_rows(queryset: QuerySet[RunExclusion]) -> Iterator[tuple[Any, ...]]:
    for row in queryset.iterator(chunk_size=5000):
        yield (
            row.created_at.isoformat(),
            str(row.run_id),
            str(row.campaign_id),
            "" if row.contact_id is None else row.contact_id,
            row.channel or "all",
            row.reason,
        )
