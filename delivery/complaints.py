"""Complaint-rate guard for marketing email: above COMPLAINT_RATE_ALERT (0.1 %) of the last 24 h's sent emails an
alert is recorded; above COMPLAINT_RATE_PAUSE (0.3 %) the organisation's marketing email is put on hold (a
compliance SendingHold: queued marketing emails wait at the send-time claim) until someone releases it. Mailbox
providers throttle or block senders past those rates, so stopping early protects every later campaign.

In delivery because it reads message rows and engagement events; celery-beat runs it every few minutes.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audiences.access import system_actor
from audiences.models import Organisation
from compliance.audit import audit_record
from compliance.models import AuditLogEntry, SendingHold

logger = logging.getLogger(__name__)

RATE_SQL = """
SELECT
  (SELECT count(*) FROM delivery_message m
   WHERE m.run_id IN (SELECT r.id FROM delivery_run r WHERE r.organisation_id = %(org)s
                      AND COALESCE(r.last_progress_at, r.created_at) >= %(since)s)
     AND m.channel = 'email' AND m.sent_at >= %(since)s),
  (SELECT count(*) FROM analytics_engagementevent e
   WHERE e.campaign_id IN (SELECT c.id FROM campaigns_campaign c WHERE c.organisation_id = %(org)s)
     AND e.occurred_at >= %(since)s AND e.kind = 'complaint' AND e.channel = 'email')
"""


def complaint_rate(organisation: Organisation, *, now: Any = None) -> tuple[int, int]:
    """(emails sent, complaints) in the 24 h before `now`."""
    since = (now or timezone.now()) - timedelta(hours=24)
    with connection.cursor() as cursor:
        cursor.execute(RATE_SQL, {"org": str(organisation.pk), "since": since})
        sent, complaints = cursor.fetchone()
    return int(sent), int(complaints)


def complaint_rate_check(organisation: Organisation, *, now: Any = None) -> str:
    """Returns what it decided: "ok", "too_few", "alert", "hold" (new hold), "held" (already on hold)."""
    now = now or timezone.now()
    sent, complaints = complaint_rate(organisation, now=now)
    if sent < settings.COMPLAINT_RATE_MIN_SENT:
        return "too_few"
    rate = complaints / sent
    details = {"sent": sent, "complaints": complaints, "rate": round(rate, 6)}
    actor = system_actor(organisation, "complaint-rate guard")
    if rate > settings.COMPLAINT_RATE_PAUSE:
        reason = (
            f"Marketing email on hold: {complaints} complaints from {sent} emails in 24 h ({rate:.2%}, limit "
            f"{settings.COMPLAINT_RATE_PAUSE:.1%}). Check the lists and content, then release the hold."
        )
        try:
            with transaction.atomic():
                hold = SendingHold.objects.create(
                    organisation=organisation, channel="email", category="marketing", reason=reason
                )
                audit_record(actor=actor, action="compliance.sending_hold", target=hold, details=details)
        except IntegrityError:
            return "held"  # one active hold at a time (constraint)
        logger.warning("organisation %s: %s", organisation.pk, reason)
        return "hold"
    if rate > settings.COMPLAINT_RATE_ALERT:
        recent = AuditLogEntry.objects.filter(
            organisation=organisation,
            action="compliance.complaint_rate_alert",
            occurred_at__gte=now - timedelta(hours=24),
        ).exists()
        if not recent:
            audit_record(actor=actor, action="compliance.complaint_rate_alert", target=organisation, details=details)
            logger.warning("organisation %s: email complaint rate %.2f%% over 24 h", organisation.pk, rate * 100)
        return "alert"
    return "ok"
