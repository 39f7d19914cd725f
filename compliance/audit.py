"""The compliance audit log writer. Every service that changes state calls `audit_record` inside its transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models

from compliance.models import AuditLogEntry

if TYPE_CHECKING:
    from audiences.access import Actor


def audit_record(
    *,
    actor: Actor,
    action: str,
    target: models.Model,
    details: dict[str, Any] | None = None,
) -> AuditLogEntry:
    return AuditLogEntry.objects.create(
        organisation=actor.organisation,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        target_repr=str(target)[:300],
        actor_label=actor.label[:200],
        actor_user=actor.user,
        actor_api_key=actor.api_key,
        ip_address=actor.ip or None,
        details=details or {},
    )
