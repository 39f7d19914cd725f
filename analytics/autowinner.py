"""Auto-winner, as marketers use it: a test share of the audience split across the variants, a decision, then the
winner to everyone else.

With `experiment_test_percent` set (a one-time campaign, two variants or more: Campaign.test_share_applies), the
campaign's first run is its test share (delivery.fanout, phase "test"); the campaign stays running once that run is
out (delivery.runs), and celery-beat looks at it every minute whether or not anything is still sending — an
unthrottled test share is usually out before the first look. The decision:

- "sequential": at the first look at which one variant is better under a test that stays valid however often it
  looks (analytics.experiments.sequential_decision, a mixture SPRT), with the minimum sample per variant and the
  level the campaign sets;
- "window_end": one look at the window's end with the fixed-sample comparison (chi-square, Holm with more than two
  variants) — valid because it is one look;
- either way, if nothing is significant by the end of the window (`experiment_window_hours` from the test share's
  first message), the fallback: the best observed rate, or the variant the marketer chose.

Then the winner gets 100 %, the test share's queued messages of the other variants switch to it in one UPDATE, and
a run of its own (phase "winner") sends it to everyone in the audience without a message from the test share. A
campaign without a test share is looked at while it runs, and the winner takes over what is still queued.

Repeated looks are why a fixed-sample p-value cannot decide sequentially: checking a 95 % test every minute names a
"winner" between identical variants far more often than 5 % of the time (tests/test_analytics_experiments.py shows
both). A sample-ratio mismatch or fewer than the minimum delivered per variant blocks a significant decision.

The decision notifies the campaign's owner (its creator, or for a campaign made over the API the key's creator) or,
without one, the organisation's admins, by email and with a console notice, and is audited.

Opens are the weakest target: Apple Mail Privacy Protection and image proxies open on the recipient's behalf (they are
excluded, but what is left under-counts people with images off), so clicks or conversions are the safer default."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mass_mail
from django.db import connection, transaction
from django.utils import timezone

from analytics import experiments
from analytics.models import ExperimentDecision, Notice
from audiences.access import Actor, require_campaign_write, system_actor
from audiences.models import Membership, Role
from campaigns.models import Campaign, CampaignStatus
from campaigns.selectors import campaign_get_for_update
from compliance.audit import audit_record
from config.outage import task_enqueue_on_commit
from delivery.fanout import run_create
from delivery.models import Run

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
    while the campaign runs (that is when it matters); not once a winner has been chosen, and not off once a test
    share has gone out (the rest of the audience waits for the decision)."""
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
        if not enabled and Run.objects.filter(campaign=campaign, phase=Run.Phase.TEST).exists():
            raise ValidationError(
                {"enabled": ["The test share has gone out: the rest of the audience waits for this decision."]}
            )
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
    winner_run_id: str | None = None


@dataclass(frozen=True)
class Choice:
    """What the look decided: the winning row, how, why, and the numbers it rests on."""

    winner: dict[str, Any]
    method: str
    reason: str
    numbers: dict[str, Any]
    fallback: bool = False


def window_deadline(campaign: Campaign, test_run: Run | None) -> datetime | None:
    """When the test share's window ends: `experiment_window_hours` after its first message went out."""
    if test_run is None or test_run.started_sending_at is None:
        return None
    return campaign.test_window_end(test_run.started_sending_at)


def auto_winner_evaluate(campaign_id: Any, *, now: datetime | None = None) -> Evaluation:
    """One look at a campaign. Idempotent: the campaign row lock serialises concurrent looks (the broker may
    deliver a task twice) and a campaign has at most one decision (and one winner run)."""
    now = now or timezone.now()
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update(of=("self",)).select_related("owner").get(pk=campaign_id)
        if not campaign.auto_winner_enabled or campaign.status not in EVALUATED_STATUSES:
            return Evaluation(False, "Auto-winner is off or the campaign is not running.")
        if ExperimentDecision.objects.filter(campaign=campaign).exists():
            return Evaluation(False, "A winner has already been chosen.")
        test_run = Run.objects.filter(campaign=campaign, phase=Run.Phase.TEST).order_by("number").first()
        if test_run is not None and test_run.started_sending_at is None:
            return Evaluation(False, "The test share has not started sending.")
        deadline = window_deadline(campaign, test_run)
        window_over = deadline is not None and now >= deadline
        metric, level = campaign.auto_winner_metric, campaign.auto_winner_level / 100
        if deadline is not None and campaign.experiment_decide == "window_end" and not window_over:
            return Evaluation(False, f"One look at the window's end, {deadline:%Y-%m-%d %H:%M} UTC.")
        comparison = experiments.experiment_comparison(campaign, metric, level)
        rows = comparison["variants"]
        if len(rows) < 2:
            return Evaluation(False, "Needs at least two variants.")
        if deadline is not None and campaign.experiment_decide == "window_end":
            choice = _fixed_horizon(campaign, comparison)
        else:
            choice, reason = _sequential(campaign, comparison, metric, level)
            if choice is None and not window_over:
                return Evaluation(False, reason)
        if choice is None:
            choice = _fallback(campaign, rows)
        return _apply(campaign, choice, rows, metric, level, test_run=test_run)


def _sequential(campaign: Campaign, comparison: dict[str, Any], metric: str, level: float) -> tuple[Choice | None, str]:
    rows = comparison["variants"]
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
        return None, decision.reason
    method = f"mixture SPRT (always valid), tau {experiments.MSPRT_TAU[metric]}, threshold (k-1)/alpha"
    numbers = {"lambdas": decision.lambdas, "threshold": decision.threshold}
    return Choice(rows[decision.winner], method, decision.reason, numbers), decision.reason


def _fixed_horizon(campaign: Campaign, comparison: dict[str, Any]) -> Choice | None:
    """The window's one look: the comparison's winner (significant after Holm, sample ratio in order), provided
    every variant reached the minimum sample."""
    rows = comparison["variants"]
    if comparison["winner"] is None or min(r["delivered"] for r in rows) < campaign.auto_winner_min_sample:
        return None
    winner = next(r for r in rows if r["id"] == comparison["winner"])
    numbers = {"p_adjusted": [(r["difference"] or {}).get("p_adjusted") for r in rows]}
    method = "chi-square 2x2 without continuity correction, Holm-adjusted, one look at the window's end"
    return Choice(winner, method, "Significant at the window's end.", numbers)


def _fallback(campaign: Campaign, rows: list[dict[str, Any]]) -> Choice:
    """Nothing significant by the window's end: the chosen variant, or the best observed rate (the first by
    position on a tie)."""
    chosen = next((r for r in rows if r["name"] == campaign.experiment_fallback_variant), None)
    if campaign.experiment_fallback == "variant" and chosen is not None:
        return Choice(chosen, "fallback: the chosen variant", "No significant winner by the window's end.", {}, True)
    best = max(rows, key=lambda r: (r["rate"] if r["rate"] is not None else -1.0, -rows.index(r)))
    why = "No significant winner by the window's end."
    if campaign.experiment_fallback == "variant":
        why += f" The chosen variant '{campaign.experiment_fallback_variant}' no longer exists."
    return Choice(best, "fallback: the best observed rate", why, {}, True)


def _apply(
    campaign: Campaign,
    choice: Choice,
    rows: list[dict[str, Any]],
    metric: str,
    level: float,
    *,
    test_run: Run | None,
) -> Evaluation:
    actor = system_actor(campaign.organisation, "auto-winner")
    winner = choice.winner
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
        **choice.numbers,
    }
    rest, gets = (
        ("the rest of the audience", "gets") if test_run else (f"{switched:,} queued messages and future runs", "get")
    )
    if choice.fallback:
        text = (
            f"{campaign.name}: no variant was significantly better on {experiments.METRICS[metric][1].lower()} "
            f"by the end of the {campaign.experiment_window_hours} h window; {rest} now {gets} {winner['name']} "
            f"({choice.method.removeprefix('fallback: ')})."
        )
    else:
        text = (
            f"{campaign.name}: variant {winner['name']} won on {experiments.METRICS[metric][1].lower()} at "
            f"{level:.0%} ({winner['rate']:.2%} of {winner['delivered']:,}); {rest} now {gets} it."
        )
    numbers["summary"] = text  # what the campaign page says about the decision
    ExperimentDecision.objects.create(
        campaign=campaign,
        winner_id=winner["id"],
        metric=metric,
        level=Decimal(str(level)),
        method=choice.method[:200],
        numbers=numbers,
        messages_switched=switched,
    )
    winner_run = None
    if test_run is not None:
        # The rest of the audience, in a run of its own; fan-out leaves out everyone the test share reached.
        from delivery.tasks import run_prepare_task

        winner_run = run_create(campaign=campaign, trigger=Run.Trigger.MANUAL, phase=Run.Phase.WINNER)
        task_enqueue_on_commit(run_prepare_task, str(winner_run.pk))
    notified = _notified_users(campaign)
    audit_record(
        actor=actor,
        action="campaign.auto_winner_decided",
        target=campaign,
        details={"winner": winner["id"], "winner_name": winner["name"], "metric": metric, "level": level,
                 "messages_switched": switched, "reason": choice.reason, "method": choice.method,
                 "fallback": choice.fallback, "winner_run": str(winner_run.pk) if winner_run else None,
                 "notified": [user.get_username() for user in notified]},
    )  # fmt: skip
    Notice.objects.bulk_create(
        [Notice(organisation=campaign.organisation, user=user, campaign=campaign, text=text[:500]) for user in notified]
    )
    addresses = [user.email for user in notified if user.email]
    if addresses:
        transaction.on_commit(lambda: _mail(addresses, campaign.name, text))
    logger.info("auto-winner %s: %s", campaign.pk, text)
    return Evaluation(True, choice.reason, winner["id"], switched, str(winner_run.pk) if winner_run else None)


def _notified_users(campaign: Campaign) -> list[Any]:
    """The campaign's owner; without one, the organisation's admins."""
    if campaign.owner is not None:
        return [campaign.owner]
    admins = Membership.objects.filter(organisation=campaign.organisation, role=Role.ADMIN).select_related("user")
    return [membership.user for membership in admins.order_by("created_at", "id")]


def _mail(addresses: list[str], campaign_name: str, text: str) -> None:
    subject = f"Auto-winner chosen: {campaign_name}"[:200]
    body = text + "\n\nThe decision and its numbers are on the campaign's report."
    send_mass_mail(
        [(subject, body, settings.DEFAULT_FROM_EMAIL, [to]) for to in addresses],
        fail_silently=True,  # the decision stands without the mail; the console notice carries it too
    )


def auto_winner_candidates(limit: int = 500) -> list[Any]:
    return list(
        Campaign.objects.filter(
            auto_winner_enabled=True, status__in=EVALUATED_STATUSES, deleted_at__isnull=True, experiment_decision=None
        ).values_list("pk", flat=True)[:limit]
    )


def notices_unread(user: Any) -> list[Notice]:
    return list(Notice.objects.filter(user=user, read_at__isnull=True).order_by("-created_at")[:20])
