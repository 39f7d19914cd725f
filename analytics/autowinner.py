"""Auto-winner: while a campaign runs, celery-beat looks at its variants again and again; once one is better at the
chosen level under a test that stays valid however often it looks (analytics.experiments.sequential_decision, a
mixture SPRT), the remaining queued messages and every future run go to the winner.

Repeated looks are why a fixed-sample p-value cannot be used here: checking a 95 % test every minute names a
"winner" between identical variants far more often than 5 % of the time (tests/test_analytics_experiments.py shows
both). A sample-ratio mismatch or fewer than the minimum delivered per variant blocks a decision and says why.

Opens are the weakest target: Apple Mail Privacy Protection and image proxies open on the recipient's behalf (they are
excluded, but what is left under-counts people with images off), so clicks or conversions are the safer default."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction

from analytics import experiments
from analytics.models import ExperimentDecision, Notice
from audiences.access import Actor, require_campaign_write, system_actor
from campaigns.models import Campaign, CampaignStatus
from campaigns.selectors import campaign_get_for_update
from compliance.audit import audit_record

logger = logging.getLogger(__name__)

EVALUATED_STATUSES = (CampaignStatus.RUNNING, CampaignStatus.ACTIVE)
METRIC_WARNING = experiments.AUTO_WINNER_ADVICE

SWITCH_SQL = """
UPDATE delivery_message m SET variant_id = %s
FROM delivery_run r
WHERE r.id = m.run_id AND r.campaign_id = %s AND m.status = 'queued' AND m.variant_id = ANY(%s::uuid[])
"""


def auto_winner_settings_update(
    *, actor: Actor, campaign_id: Any, enabled: bool, metric: str, level: int, min_sample: int
) -> Campaign:
    """Turn the auto-winner on or off and set its metric, level (90/95/99) and minimum sample per variant. Allowed
    while the campaign runs (that is when it matters); not once a winner has been chosen."""
    from django.core.exceptions import ValidationError

    require_campaign_write(actor)
    errors: dict[str, list[str]] = {}
    if metric not in experiments.METRICS:
        errors["metric"] = [f"One of {', '.join(experiments.METRICS)}."]
    if level not in (90, 95, 99):
        errors["level"] = ["One of 90, 95, 99."]
    if min_sample < 100:
        errors["min_sample"] = ["At least 100."]
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        campaign = campaign_get_for_update(actor, campaign_id)
        if ExperimentDecision.objects.filter(campaign=campaign).exists():
            raise ValidationError({"enabled": ["A winner has already been chosen for this campaign."]})
        campaign.auto_winner_enabled = enabled
        campaign.auto_winner_metric = metric
        campaign.auto_winner_level = level
        campaign.auto_winner_min_sample = min_sample
        actor.stamp(campaign, "auto-winner settings")
        campaign.save(
            update_fields=["auto_winner_enabled", "auto_winner_metric", "auto_winner_level", "auto_winner_min_sample"]
        )
        audit_record(
            actor=actor,
            action="campaign.auto_winner_updated",
            target=campaign,
            details={"enabled": enabled, "metric": metric, "level": level, "min_sample": min_sample},
        )
    return campaign


@dataclass(frozen=True)
class Evaluation:
    decided: bool
    reason: str
    winner_id: str | None = None
    messages_switched: int = 0


def auto_winner_evaluate(campaign_id: Any) -> Evaluation:
    """One look at a campaign. Idempotent: the campaign row lock serialises concurrent looks (the broker may
    deliver a task twice) and a campaign has at most one decision."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update(of=("self",)).select_related("owner").get(pk=campaign_id)
        if not campaign.auto_winner_enabled or campaign.status not in EVALUATED_STATUSES:
            return Evaluation(False, "Auto-winner is off or the campaign is not running.")
        if ExperimentDecision.objects.filter(campaign=campaign).exists():
            return Evaluation(False, "A winner has already been chosen.")
        metric, level = campaign.auto_winner_metric, campaign.auto_winner_level / 100
        comparison = experiments.experiment_comparison(campaign, metric, level)
        rows = comparison["variants"]
        if len(rows) < 2:
            return Evaluation(False, "Needs at least two variants.")
        decision = experiments.sequential_decision(
            [r["successes"] for r in rows],
            [r["delivered"] for r in rows],
            level=level,
            tau=experiments.MSPRT_TAU[metric],
            min_sample=campaign.auto_winner_min_sample,
            assigned=comparison["sample_ratio_inputs"]["observed"],
            allocation=comparison["sample_ratio_inputs"]["weights"],
        )
        if decision.winner is None:
            return Evaluation(False, decision.reason)
        winner = rows[decision.winner]
        return _apply(campaign, winner, rows, decision, metric, level)


def _apply(
    campaign: Campaign,
    winner: dict[str, Any],
    rows: list[dict[str, Any]],
    decision: experiments.SequentialDecision,
    metric: str,
    level: float,
) -> Evaluation:
    actor = system_actor(campaign.organisation, "auto-winner")
    losers = [str(v.pk) for v in campaign.variants.exclude(pk=winner["id"])]
    for variant in campaign.variants.all():
        variant.allocation_percent = 100 if str(variant.pk) == winner["id"] else 0
        actor.stamp(variant, "auto-winner")
        variant.save(update_fields=["allocation_percent"])
    # Queued messages of the other variants go to the winner in one statement; the metric trigger moves their
    # queued counts with them (new minus old per variant). Messages already handed over keep their variant.
    with connection.cursor() as cursor:
        cursor.execute(SWITCH_SQL, [winner["id"], str(campaign.pk), losers])
        switched = cursor.rowcount
    numbers = {
        "variants": [
            {k: r[k] for k in ("id", "name", "assigned", "delivered", "successes", "rate", "interval")} for r in rows
        ],
        "lambdas": decision.lambdas,
        "threshold": decision.threshold,
    }
    method = f"mixture SPRT (always valid), tau {experiments.MSPRT_TAU[metric]}, threshold (k-1)/alpha"
    ExperimentDecision.objects.create(
        campaign=campaign,
        winner_id=winner["id"],
        metric=metric,
        level=Decimal(str(level)),
        method=method,
        numbers=numbers,
        messages_switched=switched,
    )
    audit_record(
        actor=actor,
        action="campaign.auto_winner_decided",
        target=campaign,
        details={"winner": winner["id"], "winner_name": winner["name"], "metric": metric, "level": level,
                 "messages_switched": switched, "reason": decision.reason},
    )  # fmt: skip
    text = (
        f"{campaign.name}: variant {winner['name']} won on {experiments.METRICS[metric][1].lower()} at "
        f"{level:.0%} ({winner['rate']:.2%} of {winner['delivered']:,}); {switched:,} queued messages and future "
        "runs now get it."
    )
    owner = campaign.owner
    if owner is not None:
        Notice.objects.create(organisation=campaign.organisation, user=owner, campaign=campaign, text=text[:500])
        if owner.email:
            transaction.on_commit(lambda: _mail(owner.email, campaign.name, text))
    logger.info("auto-winner %s: %s", campaign.pk, text)
    return Evaluation(True, decision.reason, winner["id"], switched)


def _mail(to: str, campaign_name: str, text: str) -> None:
    send_mail(
        f"Auto-winner chosen: {campaign_name}"[:200],
        text + "\n\nThe decision and its numbers are on the campaign's report.",
        settings.DEFAULT_FROM_EMAIL,
        [to],
        fail_silently=True,  # the decision stands without the mail; the in-app notice carries it too
    )


def auto_winner_candidates(limit: int = 500) -> list[Any]:
    return list(
        Campaign.objects.filter(
            auto_winner_enabled=True, status__in=EVALUATED_STATUSES, deleted_at__isnull=True, experiment_decision=None
        ).values_list("pk", flat=True)[:limit]
    )


def notices_unread(user: Any) -> list[Notice]:
    return list(Notice.objects.filter(user=user, read_at__isnull=True).order_by("-created_at")[:20])
