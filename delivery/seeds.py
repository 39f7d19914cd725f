"""Messages to a campaign's seeds: SMS and WhatsApp test sends, and the copy of every variant that each run sends
to the seed list and phones when the campaign asks for it ("seeds get a copy of every send").

Seed messages go through the same channel backend as the real sends, with their own idempotency keys, and are
recorded as SeedSend rows, never as Message rows: they are not recipients, so they count in no metric, frequency
cap or run progress. A copy is rendered with the profile of a real recipient of that variant (what people see),
but its links carry no contact: a seed who clicks unsubscribe unsubscribes nobody.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audiences.adapters import AdapterError, template_profile
from audiences.models import Contact
from campaigns.content.preview import SAMPLE_PROFILE, message_context
from campaigns.content.render import render_message
from campaigns.content.templates import TemplateProblem
from campaigns.models import Campaign, CampaignType, Variant
from delivery.backends import ChannelBackend, Outcome, Outgoing, backend_for
from delivery.models import Message, Run, SeedSend
from delivery.sandbox import sandbox_profile

logger = logging.getLogger(__name__)

SEED_CHANNELS = {"email": "seed_emails", "sms": "seed_phones", "whatsapp": "seed_phones"}
# A copy is due again this long after it was written (its task should have sent it by then: the task was lost)
# or after a transient failure, with backoff.
STALE_AFTER = timedelta(seconds=60)
RETRY_BASE = timedelta(seconds=30)
MAX_ATTEMPTS = 5


def _outgoing(seed: SeedSend, campaign: Campaign, variant: Variant, run_id: str, payload: dict[str, Any]) -> Outgoing:
    # Negative ids: a seed is never confused with a message row when outcomes or receipts come back.
    return Outgoing(
        message_id=-seed.pk,
        idempotency_key=seed.idempotency_key,
        channel=seed.channel,
        run_id=run_id,
        campaign_id=str(campaign.pk),
        organisation_id=str(campaign.organisation_id),
        variant_id=str(variant.pk),
        variant_name=variant.name,
        contact_id=0,
        address=seed.address,
        payload=payload,
    )


def _hand_off(
    campaign: Campaign, channel: str, outgoing: Sequence[Outgoing], *, backend: ChannelBackend | None = None
) -> dict[int, Outcome]:
    profile = sandbox_profile(campaign.sandbox_profile)
    try:
        outcomes = (backend or backend_for(channel)).send_batch(list(outgoing), profile=profile)
    except Exception as exc:  # a backend that raises is a transient failure, as for real sends
        logger.warning("seed hand-off on %s failed: %s", channel, exc)
        outcomes = [Outcome(m.message_id, "retry", "", f"backend error: {exc}"[:500]) for m in outgoing]
    return {-outcome.message_id: outcome for outcome in outcomes}


def _settle(seed: SeedSend, outcome: Outcome | None) -> None:
    seed.attempts += 1
    if outcome is None or outcome.status == "retry":
        seed.error = (outcome.error if outcome else "no answer from the backend")[:500]
        seed.next_attempt_at = timezone.now() + RETRY_BASE * 2 ** (seed.attempts - 1)
        if seed.attempts >= MAX_ATTEMPTS:
            seed.status = SeedSend.Status.FAILED
    else:
        seed.status = outcome.status if outcome.status in SeedSend.Status.values else SeedSend.Status.SENT
        seed.provider_message_id = outcome.provider_message_id[:200]
        seed.error = outcome.error[:500]
        seed.sent_at = timezone.now()
    seed.save(update_fields=["attempts", "status", "error", "provider_message_id", "sent_at", "next_attempt_at"])


def seed_test_send(
    *,
    campaign: Campaign,
    variant: Variant,
    channel: str,
    payload: dict[str, Any],
    addresses: Sequence[str],
    backend: ChannelBackend | None = None,
) -> list[dict[str, Any]]:
    """A test message to each address now, through the channel's backend (registered with campaigns' test send)."""
    run_id = str(uuid.uuid4())  # a test send is its own little run in the provider's books
    seeds = [
        SeedSend.objects.create(
            idempotency_key=f"test:{run_id}:{channel}:{address}",
            organisation_id=campaign.organisation_id,
            campaign=campaign,
            variant=variant,
            kind=SeedSend.Kind.TEST,
            channel=channel,
            address=address,
        )
        for address in addresses
    ]
    outgoing = [_outgoing(s, campaign, variant, run_id, payload) for s in seeds]
    outcomes = _hand_off(campaign, channel, outgoing, backend=backend)
    for seed in seeds:
        _settle(seed, outcomes.get(seed.pk))
        if seed.status == SeedSend.Status.QUEUED:
            seed.status = SeedSend.Status.FAILED  # a test send is not retried later: the marketer sees the answer
            seed.save(update_fields=["status"])
    return [{"address": s.address, "status": s.status, "error": s.error} for s in seeds]


def run_seed_copies_plan(run: Run) -> int:
    """Write the run's seed copies (one per variant, channel and seed address) as queued rows; idempotent. Called
    when a scheduled or sent-now run starts sending; triggered campaigns' standing runs have no copies."""
    campaign = run.campaign
    if not campaign.seed_copy_every_send or run.trigger == Run.Trigger.EVENT or campaign.type == CampaignType.TRIGGERED:
        return 0
    variants = [v for v in campaign.variants.all() if not v.is_control]
    due = timezone.now() + STALE_AFTER
    rows = [
        SeedSend(
            idempotency_key=f"copy:{run.pk}:{variant.pk}:{channel}:{address}",
            organisation_id=campaign.organisation_id,
            campaign=campaign,
            run=run,
            variant=variant,
            kind=SeedSend.Kind.COPY,
            channel=channel,
            address=address,
            next_attempt_at=due,
        )
        for variant in variants
        for channel in campaign.channels
        if channel in SEED_CHANNELS and channel in variant.content
        for address in getattr(campaign, SEED_CHANNELS[channel])
    ]
    SeedSend.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def _copy_profile(run: Run, variant: Variant, channel: str) -> dict[str, Any]:
    """A real recipient of this variant on this channel, else the sample profile."""
    contact_id = (
        Message.objects.filter(run_id=run.pk, variant_id=variant.pk, channel=channel)
        .exclude(status__in=[Message.Status.HOLDOUT, Message.Status.CONTROL])
        .order_by("id")
        .values_list("contact_id", flat=True)
        .first()
    )
    contact = Contact.objects.filter(pk=contact_id, organisation_id=run.organisation_id).first() if contact_id else None
    return template_profile(contact) if contact else dict(SAMPLE_PROFILE)  # what that recipient was sent


def run_seed_copies_send(run_id: Any, *, now: Any = None) -> int:
    """Send the run's queued seed copies that are due: all of them on the first pass (asked for when the run
    starts sending), later only those whose retry time has come. Rows are claimed with SKIP LOCKED, so two tasks
    never send one copy; a crash leaves them queued for the pump, and the idempotency key keeps a provider from
    sending twice."""
    sent = 0
    with transaction.atomic():
        seeds = list(
            SeedSend.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(run_id=run_id, kind=SeedSend.Kind.COPY, status=SeedSend.Status.QUEUED)
            .filter(Q(attempts=0) | Q(next_attempt_at__lte=now or timezone.now()))
            .select_related("campaign", "campaign__organisation", "variant", "run")
            .order_by("id")
        )
        groups: dict[tuple[Any, str], list[SeedSend]] = {}
        for seed in seeds:
            groups.setdefault((seed.variant_id, seed.channel), []).append(seed)
        for (_, channel), group in groups.items():
            first = group[0]
            campaign, variant, run = first.campaign, first.variant, first.run
            if variant is None:  # the variant was replaced since: nothing to copy any more
                for seed in group:
                    seed.status, seed.error = SeedSend.Status.FAILED, "the variant no longer exists"
                    seed.save(update_fields=["status", "error"])
                continue
            try:
                profile = _copy_profile(run, variant, channel)
            except AdapterError as exc:  # user_360 failing: each copy waits for a retry with the reason
                for seed in group:
                    _settle(seed, Outcome(-seed.pk, "retry", "", str(exc)))
                continue
            context = message_context(campaign, profile, "0", f"seed-{first.pk}")
            try:
                payload = render_message(channel, variant.content.get(channel, {}), context)
            except TemplateProblem as exc:
                for seed in group:
                    seed.status, seed.error = SeedSend.Status.FAILED, f"template: {exc}"[:500]
                    seed.save(update_fields=["status", "error"])
                continue
            if channel in ("sms", "whatsapp") and campaign.organisation.sms_sender_id:
                payload["sender_id"] = campaign.organisation.sms_sender_id
            outgoing = [_outgoing(s, campaign, variant, str(run.pk), payload) for s in group]
            outcomes = _hand_off(campaign, channel, outgoing)
            for seed in group:
                _settle(seed, outcomes.get(seed.pk))
                sent += seed.status != SeedSend.Status.QUEUED
    return sent


def due_seed_copy_runs(*, now: Any = None) -> list[Any]:
    """Runs with queued seed copies past their next attempt time (a lost task, or a retry): the pump asks again."""
    now = now or timezone.now()
    return list(
        SeedSend.objects.filter(kind=SeedSend.Kind.COPY, status=SeedSend.Status.QUEUED, next_attempt_at__lte=now)
        .values_list("run_id", flat=True)
        .distinct()[:100]
    )


def email_test_send(**kwargs: Any) -> list[dict[str, Any]]:
    """A test email is real mail whatever provider the campaign's sends use (the sandbox included): it goes out
    through the email channel's own path (delivery.channels.EmailBackend over Django's mail backend), so the seed
    sees what recipients get — the same wire bytes, headers and DKIM signature, one message per address."""
    from delivery.channels import EmailBackend

    return seed_test_send(**kwargs, backend=EmailBackend())


def register() -> None:
    from campaigns.content.preview import register_test_sender

    for channel in ("sms", "whatsapp"):
        register_test_sender(channel, seed_test_send)
    register_test_sender("email", email_test_send)
