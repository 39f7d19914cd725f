"""The runs panel on a campaign page: each run's live progress (htmx polls it while a run is active)."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from audiences.decorators import member_required
from campaigns import selectors as campaign_selectors
from campaigns.models import Campaign
from delivery.estimates import run_estimate
from delivery.failures import run_failure_reasons
from delivery.models import Run
from delivery.selectors import run_list, run_progress
from delivery.triggers import trigger_decisions

SEGMENTS = [
    ("delivered", "Delivered"),
    ("sent", "Sent, awaiting receipt"),
    ("bounced", "Bounced"),
    ("failed", "Failed"),
    ("skipped", "Skipped at send time"),
    ("cancelled", "Cancelled"),
    ("sending", "Sending"),
]
DECISIONS = {
    "matched": "events matched",
    "filtered_by_condition": "filtered by a condition",
    "not_in_audience": "not in the audience",
    "capped": "capped by the frequency limit",
    "deferred_quiet_hours": "deferred past quiet hours",
    "skipped_quiet_hours": "skipped in quiet hours",
    "ignored_paused": "ignored while paused",
    "global_control": "in the global control group",
    "queued": "queued to send",
}
REASONS = {
    "opted_out": "opted out of everything",
    "unsubscribed": "unsubscribed",
    "channel_disabled": "turned the channel off",
    "category_disabled": "turned this kind of message off",
    "whatsapp_session_closed": "no WhatsApp session (template needed)",
    "suppressed": "address suppressed",
    "no_email": "no email address",
    "no_phone": "no phone number",
    "global_control": "in the global control group",
}


def _bar(progress: dict[str, Any]) -> list[dict[str, Any]]:
    total = progress["total"] or 1
    values = {**progress, "sent": progress["sent"] - progress["delivered"] - progress["bounced"]}
    return [
        {"key": key, "label": label, "count": values[key], "width": round(100 * values[key] / total, 2)}
        for key, label in SEGMENTS
        if values[key] > 0
    ]


@member_required
def campaign_runs_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    try:
        campaign = campaign_selectors.campaign_get(request.actor, campaign_id, include_deleted=True)
    except Campaign.DoesNotExist as exc:
        raise Http404("No such campaign") from exc
    runs = list(run_list(request.actor, campaign_id=campaign.pk)[:10])
    rows = []
    failures = run_failure_reasons(runs)
    for run in runs:
        progress = run_progress(run)
        rows.append(
            {
                "run": run,
                "progress": progress,
                "bar": _bar(progress),
                "legend": [(key, label, progress[key]) for key, label in SEGMENTS],
                "estimate": run_estimate(run),
                "excluded": [(REASONS.get(k, k), v) for k, v in sorted(run.excluded.items())],
                "failures": failures[run.pk],
            }
        )
    active = any(run.status in Run.ACTIVE_STATUSES and run.status != Run.Status.PAUSED for run in runs)
    decisions = [(DECISIONS.get(name, name), count) for name, count in sorted(trigger_decisions(campaign).items())]
    return render(
        request,
        "delivery/_runs.html",
        {"campaign": campaign, "rows": rows, "active": active, "segments": SEGMENTS, "decisions": decisions},
    )
