"""The global control group's report: what all the organisation's marketing adds, per contact.

Every contact of the organisation is in one of two groups by the hash that keeps the control group out of marketing
(audiences.segments.global_control_condition): treated (may receive marketing) or control (never does). The report
compares them as assigned, whether or not a treated contact was actually sent anything (intention to treat), over a
period and one conversion event type: conversions per contact and revenue per contact (the event's value, as
attribution reads it: analytics.services.event_value_sql), the difference with a Welch interval (unequal variances;
the per-contact means and variances come from PostgreSQL's numerically stable var_samp in one grouped statement) and
the relative lift. Membership is the group as the share stands now: after a change of the share, contacts of the
margin have been treated until the change (the page says when it was last changed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from scipy import stats

from analytics.experiments import Moments, welch
from analytics.services import event_value_sql
from audiences.decorators import member_required
from audiences.models import EventType, Organisation
from audiences.segments import global_control_seed, global_control_threshold, holdout_bucket_sql
from campaigns.models import Campaign
from compliance.models import AuditLogEntry

LEVEL = 0.95
MAX_DAYS = 365
DEFAULT_DAYS = 30
DEFAULT_EVENT = "purchase"

# Built from constant SQL fragments (the holdout bucket, the event value); everything else is a parameter.
REPORT_SQL = f"""
SELECT {holdout_bucket_sql("c.id", "%(seed)s")} < %(threshold)s AS in_control,
       count(*), COALESCE(sum(e.n), 0), avg(COALESCE(e.n, 0)), var_samp(COALESCE(e.n, 0)),
       COALESCE(sum(e.revenue), 0), avg(COALESCE(e.revenue, 0)), var_samp(COALESCE(e.revenue, 0))
FROM audiences_contact c
LEFT JOIN (
    SELECT ev.contact_id, count(*) AS n, sum({event_value_sql("ev.properties")}) AS revenue
    FROM audiences_event ev
    WHERE ev.organisation_id = %(org)s AND ev.type = %(type)s AND ev.occurred_at >= %(since)s
      AND ev.occurred_at < %(until)s
    GROUP BY ev.contact_id
) e ON e.contact_id = c.id
WHERE c.organisation_id = %(org)s
GROUP BY 1
"""  # noqa: S608


@dataclass(frozen=True)
class Comparison:
    """Treated minus control for one per-contact metric."""

    treated: float | None
    control: float | None
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    lift: float | None  # the difference over the control's mean


def welch_interval(control: Moments, treated: Moments, level: float = LEVEL) -> tuple[float, float] | None:
    """Welch's interval for mean(treated) - mean(control): the Welch-Satterthwaite degrees of freedom, the t
    quantile from scipy. None when it is undefined (fewer than two in a group, or no variance in either)."""
    if control.n < 2 or treated.n < 2:
        return None
    a, b = control.variance / control.n, treated.variance / treated.n
    if a + b == 0:
        return None
    df = (a + b) ** 2 / (a * a / (control.n - 1) + b * b / (treated.n - 1))
    half = float(stats.t.ppf((1 + level) / 2, df)) * math.sqrt(a + b)
    difference = treated.mean - control.mean
    return difference - half, difference + half


def _compare(control: Moments, treated: Moments) -> Comparison:
    interval = welch_interval(control, treated)
    test = welch(control, treated)
    has_both = control.n > 0 and treated.n > 0
    difference = treated.mean - control.mean if has_both else None
    return Comparison(
        treated=treated.mean if treated.n else None,
        control=control.mean if control.n else None,
        difference=difference,
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
        p_value=test[1] if test else None,
        lift=difference / control.mean if difference is not None and control.mean else None,
    )


def _moments(n: int, mean: Any, variance: Any) -> Moments:
    if not n:
        return Moments(0, 0.0, 0.0)
    return Moments(n, float(mean), float(variance or 0) * (n - 1))


def global_control_report(
    organisation: Organisation, *, event_type: str, since: datetime, until: datetime
) -> dict[str, Any]:
    """Treated and control, their conversions and revenue per contact, and the comparisons. One statement."""
    threshold = global_control_threshold(organisation)
    params = {
        "seed": global_control_seed(organisation.pk),
        "threshold": threshold,
        "org": str(organisation.pk),
        "type": event_type,
        "since": since,
        "until": until,
    }
    with connection.cursor() as cursor:
        cursor.execute(REPORT_SQL, params)
        rows = {bool(row[0]): row[1:] for row in cursor.fetchall()}
    groups: dict[str, dict[str, Any]] = {}
    moments: dict[str, tuple[Moments, Moments]] = {}
    for name, in_control in (("treated", False), ("control", True)):
        n, conversions, conv_mean, conv_var, revenue, rev_mean, rev_var = rows.get(in_control, (0, 0, 0, 0, 0, 0, 0))
        groups[name] = {
            "contacts": int(n),
            "conversions": int(conversions),
            "revenue": revenue,
            "conversions_per_contact": float(conv_mean) if n else None,
            "revenue_per_contact": float(rev_mean) if n else None,
        }
        moments[name] = (_moments(n, conv_mean, conv_var), _moments(n, rev_mean, rev_var))
    return {
        "percent": organisation.global_control_percent,
        "enabled": threshold > 0,
        "event_type": event_type,
        "since": since,
        "until": until,
        "level": LEVEL,
        "currency": organisation.currency,
        "groups": groups,
        "conversions": _compare(moments["control"][0], moments["treated"][0]),
        "revenue": _compare(moments["control"][1], moments["treated"][1]),
    }


def _event_types(organisation: Organisation) -> list[str]:
    """The event types worth choosing, the default first: campaigns' conversion events (most used first), then
    "purchase" when the organisation sends it, then the others by name."""
    conversion = [
        row["conversion_event"]
        for row in Campaign.objects.filter(organisation=organisation, deleted_at__isnull=True)
        .exclude(conversion_event="")
        .values("conversion_event")
        .annotate(n=Count("id"))
        .order_by("-n", "conversion_event")
    ]
    others = EventType.objects.filter(organisation=organisation).order_by("name").values_list("name", flat=True)
    others = sorted(others, key=lambda name: name != DEFAULT_EVENT)
    return list(dict.fromkeys([*conversion, *others]))


def _last_change(organisation: Organisation) -> AuditLogEntry | None:
    """The latest settings change that moved the share (the console's form audits every field it saves)."""
    entries = AuditLogEntry.objects.filter(
        organisation_id=organisation.pk, action="organisation.update", details__has_key="global_control_percent"
    ).order_by("-occurred_at")[:50]
    for entry in entries:
        change = entry.details["global_control_percent"]
        if change.get("from") != change.get("to"):
            return entry
    return None


def _query(request: HttpRequest, choices: list[str]) -> tuple[str, int]:
    errors: dict[str, str] = {}
    event_type = request.GET.get("event") or (choices[0] if choices else DEFAULT_EVENT)
    if len(event_type) > 100:
        errors["event"] = "An event type has at most 100 characters."
    raw_days = request.GET.get("days") or str(DEFAULT_DAYS)
    days = int(raw_days) if raw_days.isdigit() else 0
    if not 1 <= days <= MAX_DAYS:
        errors["days"] = f"A whole number of days from 1 to {MAX_DAYS}."
    if errors:
        raise ValidationError(errors)
    return event_type, days


@member_required
def global_control_view(request: HttpRequest) -> HttpResponse:
    """The organisation's global control report; every member may read it."""
    organisation = request.actor.organisation
    choices = _event_types(organisation)
    try:
        event_type, days = _query(request, choices)
    except ValidationError as exc:
        context = {"errors": exc.message_dict, "choices": choices, "organisation": organisation}
        return render(request, "analytics/global_control.html", context, status=400)
    until = timezone.now()
    report = global_control_report(organisation, event_type=event_type, since=until - timedelta(days=days), until=until)
    context = {
        "report": report,
        "days": days,
        "choices": choices if event_type in choices else [event_type, *choices],
        "comparisons": [
            (("conversions", "Conversions"), report["conversions"]),
            (("revenue", f"Revenue ({organisation.currency})"), report["revenue"]),
        ],
        "last_change": _last_change(organisation),
        "organisation": organisation,
    }
    return render(request, "analytics/global_control.html", context)
