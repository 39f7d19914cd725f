from __future__ import annotations

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from audiences.models import ApiKey, Organisation


class AuditLogEntry(models.Model):
    """One state-changing operation: who, what, on which object, when. Append-only.

    Written in the same transaction as the change it records, so there is never a change without its entry
    (or an entry for a change that rolled back).
    """

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="audit_log")
    occurred_at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=64, help_text="<entity>.<verb>, e.g. campaign.clone")
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=300, blank=True)
    actor_label = models.CharField(max_length=200)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [
            models.Index(fields=["organisation", "target_type", "target_id", "-occurred_at"], name="audit_target_idx"),
            models.Index(fields=["organisation", "-occurred_at"], name="audit_org_time_idx"),
        ]
        verbose_name_plural = "audit log entries"

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.target_repr}"
