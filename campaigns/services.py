"""Every change to a campaign goes through one of these functions: atomic, permission-checked, audited."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils import timezone

from audiences.access import Actor, require_campaign_write
from audiences.contacts import normalise_phone
from campaigns import scheduling
from campaigns.audience import campaign_audience_spec, validate_audience
from campaigns.content.channels import content_problems
from campaigns.models import (
    Campaign,
    CampaignSegment,
    CampaignStatus,
    CampaignType,
    Channel,
    Recurrence,
    SegmentRole,
    Variant,
)
from campaigns.selectors import campaign_get_for_update
from campaigns.signals import campaign_transitioned, campaigns_purging
from compliance.audit import audit_record
from compliance.models import AuditLogEntry
from config.errors import Conflict

S = CampaignStatus

MAX_VARIANTS = 5
MIN_SCHEDULE_LEAD = scheduling.MIN_SCHEDULE_LEAD
EDITABLE_STATUSES = frozenset({S.DRAFT, S.PAUSED})
DELETABLE_STATUSES = frozenset({S.DRAFT, S.PAUSED, S.COMPLETED, S.CANCELLED})
# Deleting these first cancels them, so nothing deleted is still waiting to send.
CANCEL_ON_DELETE_STATUSES = frozenset({S.SCHEDULED, S.ACTIVE})


@dataclass(frozen=True)
class Transition:
    action: str
    sources: frozenset[str]
    target: str | None  # None: depends on the campaign type (resume)
    campaign_type: str | None = None  # only for campaigns of this type
    description: str = ""

    def target_for(self, campaign: Campaign) -> str:
        if self.target is not None:
            return self.target
        return S.ACTIVE if campaign.type == CampaignType.TRIGGERED else S.RUNNING


# The campaign state machine. Anything not listed here is refused with 409 and the list of what is allowed.
TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("schedule", frozenset({S.DRAFT}), S.SCHEDULED, CampaignType.SCHEDULED, "Schedule to send"),
        Transition("unschedule", frozenset({S.SCHEDULED}), S.DRAFT, CampaignType.SCHEDULED, "Back to draft"),
        Transition("activate", frozenset({S.DRAFT}), S.ACTIVE, CampaignType.TRIGGERED, "Start listening for events"),
        Transition("reschedule", frozenset({S.SCHEDULED}), S.SCHEDULED, CampaignType.SCHEDULED, "Change the schedule"),
        Transition("start", frozenset({S.DRAFT, S.SCHEDULED}), S.RUNNING, CampaignType.SCHEDULED, "Send now"),
        # The engine puts a recurring campaign back to wait for its next occurrence after a run.
        Transition("await_next", frozenset({S.RUNNING}), S.SCHEDULED, CampaignType.SCHEDULED, "Wait for next run"),
        # The engine gives a run up when its audience service did not answer in time (delivery.runs): the
        # campaign is a draft again, to check and send or schedule.
        Transition("back_to_draft", frozenset({S.RUNNING}), S.DRAFT, CampaignType.SCHEDULED, "Back to draft"),
        Transition("pause", frozenset({S.RUNNING, S.ACTIVE}), S.PAUSED, None, "Pause sending"),
        Transition("resume", frozenset({S.PAUSED}), None, None, "Resume sending"),
        Transition("complete", frozenset({S.RUNNING, S.ACTIVE}), S.COMPLETED, None, "Finish"),
        Transition(
            "cancel",
            frozenset({S.SCHEDULED, S.ACTIVE, S.RUNNING, S.PAUSED}),
            S.CANCELLED,
            None,
            "Cancel for good",
        ),
    )
}
# Actions people may take through the API and console. `start` and `complete` of scheduled runs belong to
# the execution engine, which calls `campaign_transition` itself.
USER_ACTIONS = ("schedule", "reschedule", "unschedule", "start", "activate", "pause", "resume", "complete", "cancel")
ENGINE_ONLY_ACTIONS = frozenset({"await_next", "back_to_draft"})


def allowed_transitions(campaign: Campaign, *, actions: Iterable[str] = USER_ACTIONS) -> list[dict[str, str]]:
    result = []
    for action in actions:
        transition = TRANSITIONS[action]
        if campaign.status not in transition.sources:
            continue
        if transition.campaign_type and transition.campaign_type != campaign.type:
            continue
        if action == "complete" and campaign.type == CampaignType.SCHEDULED and actions is USER_ACTIONS:
            continue  # a scheduled run completes when its last message is sent, not on request
        if action in ENGINE_ONLY_ACTIONS and actions is USER_ACTIONS:
            continue
        result.append({"action": action, "status": transition.target_for(campaign)})
    return result


def _invalid_transition(campaign: Campaign, action: str) -> Conflict:
    allowed = allowed_transitions(campaign)
    return Conflict(
        f"Cannot {action} a {campaign.type} campaign that is {campaign.status}.",
        code="invalid_transition",
        status=campaign.status,
        allowed_actions=[item["action"] for item in allowed],
        allowed_statuses=sorted({item["status"] for item in allowed}),
    )


# --- validation ---------------------------------------------------------------------------------------------


MAX_SEEDS = 20


def validate_seed_phones(phones: Iterable[str]) -> list[str]:
    """The seed phones in E.164 (spaces and dashes dropped), each once, at most MAX_SEEDS."""
    clean: list[str] = []
    bad: list[str] = []
    for raw in phones:
        try:
            phone = normalise_phone(str(raw))
        except ValidationError:
            bad.append(str(raw))
            continue
        if phone not in clean:
            clean.append(phone)
    if bad:
        raise ValidationError({"seed_phones": [f"Not phone numbers in E.164 form (+447700900123): {', '.join(bad)}."]})
    if len(clean) > MAX_SEEDS:
        raise ValidationError({"seed_phones": [f"At most {MAX_SEEDS} phones."]})
    return clean


def _validate_channels(channels: Sequence[str]) -> list[str]:
    unknown = [c for c in channels if c not in Channel.values]
    if unknown:
        raise ValidationError({"channels": [f"Unknown channel(s): {', '.join(map(str, unknown))}."]})
    # Keep the order the marketer chose, without repeats.
    return list(dict.fromkeys(channels))


def allowed_senders(organisation: Any) -> list[str]:
    return [address for address in [organisation.sender_email, *organisation.verified_senders] if address]


def _validate_variants(
    variants: Sequence[Mapping[str, Any]],
    channels: Sequence[str],
    *,
    organisation: Any = None,
    for_launch: bool = False,
    sms_multipart: bool = False,
) -> None:
    errors: list[str] = []
    if not 1 <= len(variants) <= MAX_VARIANTS:
        errors.append(f"A campaign has between 1 and {MAX_VARIANTS} variants.")
    names = [str(v.get("name", "")).strip() for v in variants]
    if any(not n for n in names):
        errors.append("Every variant needs a name.")
    duplicates = sorted({n for n in names if n and names.count(n) > 1})
    if duplicates:
        errors.append(f"Variant names must be unique: {', '.join(duplicates)}.")
    total = sum(int(v.get("allocation_percent", 0)) for v in variants)
    if variants and total != 100:
        errors.append(f"Variant allocations must add up to 100% (they add up to {total}%).")
    controls = [v for v in variants if v.get("is_control")]
    if len(controls) > 1:
        errors.append("Only one variant can be the control.")
    if controls and len(controls) == len(variants):
        errors.append("A campaign needs at least one variant that sends a message.")
    for name, variant in zip(names, variants, strict=True):
        content = variant.get("content") or {}
        if not isinstance(content, Mapping):
            errors.append(f"Variant {name}: content must be an object keyed by channel.")
            continue
        extra = sorted(set(content) - set(channels))
        if extra:
            errors.append(f"Variant {name}: content for channel(s) the campaign does not use: {', '.join(extra)}.")
        for channel, channel_content in content.items():
            if not isinstance(channel_content, Mapping):
                errors.append(f"Variant {name}: {channel} content must be an object.")
            elif channel in channels:
                senders = allowed_senders(organisation) if organisation is not None else []
                for problem in content_problems(
                    channel,
                    channel_content,
                    allowed_senders=senders,
                    for_launch=for_launch,
                    sms_multipart=sms_multipart,
                ):
                    errors.append(f"Variant {name}: {channel}.{problem}.")
        if for_launch and not variant.get("is_control"):
            for channel in channels:
                if channel not in content:
                    errors.append(f"Variant {name}: no {channel} content yet.")
    if errors:
        raise ValidationError({"variants": errors})


def _name_taken(organisation_id: Any, name: str, *, exclude_id: Any = None) -> bool:
    queryset = (
        Campaign.objects.filter(organisation_id=organisation_id, deleted_at__isnull=True)
        .annotate(lower_name=Lower("name"))
        .filter(lower_name=name.lower())
    )
    if exclude_id is not None:
        queryset = queryset.exclude(pk=exclude_id)
    return queryset.exists()


def _unique_name(organisation_id: Any, base: str, *, exclude_id: Any = None) -> str:
    """`base`, or `base (2)`, `base (3)`… whichever is free among live campaigns."""
    base = base[:190]
    if not _name_taken(organisation_id, base, exclude_id=exclude_id):
        return base
    counter = 2
    while _name_taken(organisation_id, f"{base} ({counter})", exclude_id=exclude_id):
        counter += 1
    return f"{base} ({counter})"


def _save_campaign(campaign: Campaign, **kwargs: Any) -> None:
    """Save, turning the live-name uniqueness race into the same field error the pre-check gives."""
    try:
        with transaction.atomic():
            campaign.save(**kwargs)
    except IntegrityError as exc:
        if "campaign_unique_live_name" in str(exc):
            raise ValidationError({"name": ["A campaign with this name already exists."]}) from exc
        raise


def _snapshot(campaign: Campaign) -> dict[str, Any]:
    spec = campaign_audience_spec(campaign)
    return {
        "audience": {
            "include": [str(x) for x in spec["include"]],
            "exclude": [str(x) for x in spec["exclude"]],
            "combine": spec["combine"],
            "rules": spec["rules"],
            "holdout_percent": str(spec["holdout_percent"]),
        },
        "name": campaign.name,
        "description": campaign.description,
        "type": campaign.type,
        "status": campaign.status,
        "channels": list(campaign.channels),
        "scheduled_at": campaign.scheduled_at.isoformat() if campaign.scheduled_at else None,
        "messages_per_minute": campaign.messages_per_minute,
        "messages_per_hour": campaign.messages_per_hour,
        "send_window_start": campaign.send_window_start.isoformat() if campaign.send_window_start else None,
        "send_window_end": campaign.send_window_end.isoformat() if campaign.send_window_end else None,
        "skip_weekends": campaign.skip_weekends,
        "local_send_time": campaign.local_send_time.isoformat() if campaign.local_send_time else None,
        "sandbox_profile": campaign.sandbox_profile,
        "trigger_event": campaign.trigger_event,
        "trigger_conditions": campaign.trigger_conditions,
        "trigger_delay_seconds": campaign.trigger_delay_seconds,
        "quiet_hours": [
            campaign.quiet_hours_start.isoformat() if campaign.quiet_hours_start else None,
            campaign.quiet_hours_end.isoformat() if campaign.quiet_hours_end else None,
            campaign.quiet_hours_policy,
        ],
        "frequency_limit": campaign.frequency_limit,
        "experiment": {
            "auto_winner": [
                campaign.auto_winner_enabled,
                campaign.auto_winner_metric,
                campaign.auto_winner_level,
                campaign.auto_winner_min_sample,
            ],
            "test_percent": campaign.experiment_test_percent,
            "window_hours": campaign.experiment_window_hours,
            "decide": campaign.experiment_decide,
            "fallback": [campaign.experiment_fallback, campaign.experiment_fallback_variant],
        },
    }


def _allocation(campaign: Campaign) -> dict[str, int]:
    return {str(v.pk): v.allocation_percent for v in campaign.variants.all()}


def _record_allocation_change(campaign: Campaign, before: dict[str, int]) -> None:
    """Once a campaign has sent, a change of allocations starts a new period: contacts already assigned keep their
    variant from then on (delivery.assignment), and the sample-ratio check needs each period's allocation."""
    after = _allocation(campaign)
    if after == before or not campaign.runs.exists():
        return
    history = list(campaign.allocation_history or [])
    if not history:
        first_run = campaign.runs.order_by("created_at").values_list("created_at", flat=True).first()
        history.append({"at": first_run.isoformat(), "allocation": before})
    history.append({"at": timezone.now().isoformat(), "allocation": after})
    campaign.allocation_history = history
    campaign.save(update_fields=["allocation_history"])


def _replace_variants(campaign: Campaign, variants: Sequence[Mapping[str, Any]], *, actor: Actor) -> None:
    before = _allocation(campaign)
    existing = {v.name: v for v in campaign.variants.all()}
    keep: set[str] = set()
    for position, data in enumerate(variants):
        name = str(data["name"]).strip()
        variant = existing.get(name) or Variant(campaign=campaign, name=name)
        variant.position = position
        variant.allocation_percent = int(data.get("allocation_percent", 0))
        variant.is_control = bool(data.get("is_control", False))
        variant.content = copy.deepcopy(dict(data.get("content") or {}))
        actor.stamp(variant)
        variant.save()
        keep.add(name)
    for name, variant in existing.items():
        if name not in keep:
            actor.stamp(variant, "removed")
            variant.delete()
    _record_allocation_change(campaign, before)


def _set_audience_fields(campaign: Campaign, audience: Mapping[str, Any]) -> None:
    campaign.audience_combine = audience["combine"]
    campaign.audience_rules = audience["rules"]
    campaign.holdout_percent = Decimal(str(audience["holdout_percent"]))


def _set_audience_segments(campaign: Campaign, audience: Mapping[str, Any], *, actor: Actor) -> None:
    """Make the campaign's segment links match the (validated) audience; the campaign must be saved."""
    wanted = {
        **{sid: SegmentRole.INCLUDE for sid in audience["include"]},
        **{sid: SegmentRole.EXCLUDE for sid in audience["exclude"]},
    }
    existing = {link.segment_id: link for link in campaign.segment_links.all()}
    for segment_id, link in existing.items():
        if wanted.get(segment_id) != link.role:
            actor.stamp(link, "removed")
            link.delete()
    for segment_id, role in wanted.items():
        if segment_id not in existing or existing[segment_id].role != role:
            link = CampaignSegment(campaign=campaign, segment_id=segment_id, role=role)
            actor.stamp(link, "added")
            link.save()


def _require_editable(campaign: Campaign) -> None:
    if campaign.status not in EDITABLE_STATUSES:
        raise Conflict(
            f"A {campaign.status} campaign cannot be changed; only draft and paused campaigns can.",
            code="not_editable",
            status=campaign.status,
            editable_statuses=sorted(EDITABLE_STATUSES),
            allowed_actions=[t["action"] for t in allowed_transitions(campaign)],
        )


def _variant_dicts(campaign: Campaign) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "allocation_percent": v.allocation_percent, "is_control": v.is_control, "content": v.content}
        for v in campaign.variants.all()
    ]


DEFAULT_VARIANTS: list[dict[str, Any]] = [{"name": "A", "allocation_percent": 100, "is_control": False, "content": {}}]

UPDATABLE_FIELDS = (
    "tracking_enabled",
    "seed_emails",
    "seed_phones",
    "seed_copy_every_send",
    "sms_allow_multipart",
    "name",
    "description",
    "type",
    "channels",
    "scheduled_at",
    "messages_per_minute",
    "messages_per_hour",
    "send_window_start",
    "send_window_end",
    "skip_weekends",
    "local_send_time",
    "sandbox_profile",
    "category",
    "bypass_frequency_cap",
    "conversion_event",
    "attribution_days",
    "attribution_model",
    "auto_winner_enabled",
    "auto_winner_metric",
    "auto_winner_level",
    "auto_winner_min_sample",
    "experiment_test_percent",
    "experiment_window_hours",
    "experiment_decide",
    "experiment_fallback",
    "experiment_fallback_variant",
    "trigger_event",
    "trigger_conditions",
    "trigger_delay_seconds",
    "quiet_hours_start",
    "quiet_hours_end",
    "quiet_hours_policy",
    "frequency_limit",
)
TRIGGER_FIELDS = UPDATABLE_FIELDS[-7:]


def _validate_trigger(campaign: Campaign, *, for_launch: bool = False) -> None:
    from campaigns.trigger_conditions import compile_conditions

    compile_conditions(campaign.trigger_conditions)
    if (campaign.quiet_hours_start is None) != (campaign.quiet_hours_end is None):
        raise ValidationError({"quiet_hours_end": ["Give both ends of the quiet hours."]})
    if campaign.trigger_event and not re.match(r"^[A-Za-z0-9_.:\-]{1,100}$", campaign.trigger_event):
        raise ValidationError({"trigger_event": ["An event type: letters, digits and _ . : - (at most 100)."]})
    if for_launch and campaign.type == CampaignType.TRIGGERED and not campaign.trigger_event:
        raise ValidationError({"trigger_event": ["Choose the event that triggers the campaign."]})


def _validate_experiment(campaign: Campaign) -> None:
    if campaign.experiment_test_percent and not campaign.auto_winner_enabled:
        raise ValidationError({"experiment_test_percent": ["A test share needs the auto-winner on."]})
    waiting = not campaign._state.adding and not hasattr(campaign, "experiment_decision")
    if not campaign.auto_winner_enabled and waiting and campaign.runs.filter(phase="test").exists():
        # The rest of the audience is sent only by the auto-winner's decision.
        raise ValidationError(
            {"auto_winner_enabled": ["The test share has gone out: the rest waits for the decision."]}
        )
    if campaign.experiment_fallback == "variant" and not campaign.experiment_fallback_variant.strip():
        raise ValidationError({"experiment_fallback_variant": ["Name the variant to send if nothing wins."]})


def _validate_send_rules(campaign: Campaign) -> None:
    start, end, local = campaign.send_window_start, campaign.send_window_end, campaign.local_send_time
    if (start is None) != (end is None):
        raise ValidationError(
            {"send_window_end" if end is None else "send_window_start": ["Give both ends of the window."]}
        )
    if start is not None and start == end:
        raise ValidationError({"send_window_end": ["The window must not start and end at the same time."]})
    if local is not None and start is not None:
        inside = start <= local < end if start < end else (local >= start or local < end)
        if not inside:
            raise ValidationError({"local_send_time": ["The local send time must fall inside the send window."]})


# --- actions ------------------------------------------------------------------------------------------------


@transaction.atomic
def campaign_create(
    *,
    actor: Actor,
    name: str,
    description: str = "",
    type: str = CampaignType.SCHEDULED,
    channels: Sequence[str] = (),
    scheduled_at: datetime | None = None,
    messages_per_minute: int | None = None,
    messages_per_hour: int | None = None,
    variants: Sequence[Mapping[str, Any]] | None = None,
    audience: Mapping[str, Any] | None = None,
    tracking_enabled: bool = True,
    seed_emails: Sequence[str] = (),
    seed_phones: Sequence[str] = (),
    seed_copy_every_send: bool = False,
    sms_allow_multipart: bool = False,
    send_window_start: Any = None,
    send_window_end: Any = None,
    skip_weekends: bool = False,
    local_send_time: Any = None,
    sandbox_profile: Mapping[str, Any] | None = None,
    category: str = "marketing",
    bypass_frequency_cap: bool = False,
    conversion_event: str = "",
    attribution_days: int = 7,
    attribution_model: str = "last_touch",
    auto_winner_enabled: bool = False,
    auto_winner_metric: str = "click",
    auto_winner_level: int = 95,
    auto_winner_min_sample: int = 1000,
    experiment_test_percent: int = 0,
    experiment_window_hours: int = 4,
    experiment_decide: str = "sequential",
    experiment_fallback: str = "best_observed",
    experiment_fallback_variant: str = "",
    **trigger: Any,
) -> Campaign:
    """A new draft. Nothing is sent until it is explicitly scheduled or activated. `trigger` holds the
    TRIGGER_FIELDS of a triggered campaign."""
    unknown_trigger = sorted(set(trigger) - set(TRIGGER_FIELDS))
    if unknown_trigger:
        raise TypeError(f"campaign_create() got unexpected arguments: {', '.join(unknown_trigger)}")
    require_campaign_write(actor)
    name = name.strip()
    channels = _validate_channels(channels)
    variants = list(variants) if variants else copy.deepcopy(DEFAULT_VARIANTS)
    _validate_variants(variants, channels, organisation=actor.organisation, sms_multipart=sms_allow_multipart)
    clean_audience = validate_audience(actor.organisation, audience or {})
    if name and _name_taken(actor.organisation.pk, name):
        raise ValidationError({"name": ["A campaign with this name already exists."]})
    campaign = Campaign(
        organisation=actor.organisation,
        name=name,
        description=description,
        type=type,
        status=S.DRAFT,
        channels=channels,
        # Over the API, the key's creator owns what it creates (the auto-winner's decision goes to them).
        owner=actor.user or (actor.api_key.created_by if actor.api_key else None),
        scheduled_at=scheduled_at,
        messages_per_minute=messages_per_minute,
        messages_per_hour=messages_per_hour,
        tracking_enabled=tracking_enabled,
        seed_emails=list(seed_emails),
        seed_phones=validate_seed_phones(seed_phones),
        seed_copy_every_send=seed_copy_every_send,
        sms_allow_multipart=sms_allow_multipart,
        send_window_start=send_window_start,
        send_window_end=send_window_end,
        skip_weekends=skip_weekends,
        local_send_time=local_send_time,
        sandbox_profile=dict(sandbox_profile or {}),
        category=category,
        bypass_frequency_cap=bypass_frequency_cap,
        conversion_event=conversion_event.strip(),
        attribution_days=attribution_days,
        attribution_model=attribution_model,
        auto_winner_enabled=auto_winner_enabled,
        auto_winner_metric=auto_winner_metric,
        auto_winner_level=auto_winner_level,
        auto_winner_min_sample=auto_winner_min_sample,
        experiment_test_percent=experiment_test_percent,
        experiment_window_hours=experiment_window_hours,
        experiment_decide=experiment_decide,
        experiment_fallback=experiment_fallback,
        experiment_fallback_variant=experiment_fallback_variant.strip(),
        status_changed_at=timezone.now(),
        **{key: value for key, value in trigger.items() if value is not None or key == "trigger_conditions"},
    )
    _set_audience_fields(campaign, clean_audience)
    _validate_send_rules(campaign)
    _validate_trigger(campaign)
    _validate_experiment(campaign)
    campaign.full_clean(validate_constraints=False)
    actor.stamp(campaign, "created")
    _save_campaign(campaign)
    _set_audience_segments(campaign, clean_audience, actor=actor)
    _replace_variants(campaign, variants, actor=actor)
    audit_record(actor=actor, action="campaign.create", target=campaign, details=_snapshot(campaign))
    return campaign


@transaction.atomic
def campaign_update(
    *,
    actor: Actor,
    campaign_id: Any,
    changes: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]] | None = None,
    audience: Mapping[str, Any] | None = None,
) -> Campaign:
    """Change a draft or paused campaign. Anything else is refused: a live campaign must be paused first."""
    require_campaign_write(actor)
    campaign = campaign_get_for_update(actor, campaign_id)
    _require_editable(campaign)
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise ValidationError({field: ["This field cannot be changed."] for field in sorted(unknown)})
    before = _snapshot(campaign)
    if "type" in changes and changes["type"] != campaign.type and campaign.status != S.DRAFT:
        raise ValidationError({"type": ["The type can only change while the campaign is a draft."]})
    for field, value in changes.items():
        if field == "channels":
            value = _validate_channels(value)
        if field == "seed_phones":
            value = validate_seed_phones(value)
        if field == "name":
            value = value.strip()
        setattr(campaign, field, value)
    if "name" in changes and _name_taken(campaign.organisation_id, campaign.name, exclude_id=campaign.pk):
        raise ValidationError({"name": ["A campaign with this name already exists."]})
    current_variants = [
        {
            "name": v.name,
            "allocation_percent": v.allocation_percent,
            "is_control": v.is_control,
            "content": v.content,
        }
        for v in campaign.variants.all()
    ]
    _validate_variants(
        variants if variants is not None else current_variants,
        campaign.channels,
        organisation=campaign.organisation,
        sms_multipart=campaign.sms_allow_multipart,
    )
    if audience is not None:
        # A partial audience keeps the parts not given.
        clean_audience = validate_audience(campaign.organisation, {**campaign_audience_spec(campaign), **audience})
        _set_audience_fields(campaign, clean_audience)
        _set_audience_segments(campaign, clean_audience, actor=actor)
    _validate_send_rules(campaign)
    _validate_trigger(campaign)
    _validate_experiment(campaign)
    campaign.full_clean(validate_constraints=False)
    actor.stamp(campaign, "updated")
    _save_campaign(campaign)
    if variants is not None:
        _replace_variants(campaign, variants, actor=actor)
    after = _snapshot(campaign)
    audit_record(
        actor=actor,
        action="campaign.update",
        target=campaign,
        details={
            "changed": {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]},
            "variants_replaced": variants is not None,
        },
    )
    return campaign


@transaction.atomic
def campaign_transition(
    *,
    actor: Actor,
    campaign_id: Any,
    action: str,
    scheduled_at: datetime | None = None,
    schedule: Mapping[str, Any] | None = None,
    by_engine: bool = False,
    occurrence: datetime | None = None,
) -> Campaign:
    """Move a campaign through its state machine (schedule, send now, pause, resume, cancel…).

    People may take the USER_ACTIONS; the execution engine (`by_engine=True`) also starts scheduled occurrences,
    completes runs and puts recurring campaigns back to wait. `schedule` is what the marketer asked for (see
    campaigns.scheduling.schedule_from_input); `scheduled_at` alone is a one-time schedule.
    """
    if not by_engine:
        require_campaign_write(actor)
    if action not in TRANSITIONS:
        raise ValidationError({"action": [f"Unknown action. Choose one of: {', '.join(USER_ACTIONS)}."]})
    campaign = campaign_get_for_update(actor, campaign_id)
    transition = TRANSITIONS[action]
    permitted = allowed_transitions(campaign, actions=TRANSITIONS if by_engine else USER_ACTIONS)
    if action not in {item["action"] for item in permitted}:
        raise _invalid_transition(campaign, action)
    now = timezone.now()
    if action in ("schedule", "activate", "start"):
        if not campaign.channels:
            raise ValidationError({"channels": ["Choose at least one channel before launching."]})
        spec = campaign_audience_spec(campaign)
        if not spec["include"] and not spec["rules"]:
            raise ValidationError({"audience": ["Choose who receives it (segments or rules) before launching."]})
        _validate_variants(
            _variant_dicts(campaign),
            campaign.channels,
            organisation=campaign.organisation,
            for_launch=True,
            sms_multipart=campaign.sms_allow_multipart,
        )
        _validate_trigger(campaign, for_launch=True)
        if (
            Channel.EMAIL in campaign.channels
            and campaign.category == "marketing"
            and not campaign.organisation.postal_address.strip()
        ):
            # CAN-SPAM and the GDPR's transparency rules: every marketing email names the sender's postal address.
            raise ValidationError(
                {"organisation": ["Set the organisation's postal address before launching marketing email."]}
            )
    if action in ("schedule", "reschedule"):
        _apply_schedule(campaign, schedule, scheduled_at, now=now)
    if action == "start" and not by_engine and campaign.status == S.SCHEDULED:
        # "Send now" on a scheduled campaign replaces its schedule.
        _clear_schedule(campaign)
    if action in ("unschedule", "back_to_draft"):
        _clear_schedule(campaign)
    previous = campaign.status
    campaign.status = transition.target_for(campaign)
    campaign.status_changed_at = now
    if action == "pause":
        campaign.paused_at = now
        campaign.paused_by = actor.label
    if action == "resume":
        campaign.paused_at = None
        campaign.paused_by = ""
    if action == "await_next":
        following = scheduling.following_occurrence(campaign, max(now, occurrence or now))
        if following is None:
            raise _invalid_transition(campaign, action)
        campaign.scheduled_at = following
    actor.stamp(campaign, f"{action}: {previous} → {campaign.status}")
    campaign.save()
    audit_record(
        actor=actor,
        action=f"campaign.{action}",
        target=campaign,
        details={
            "from": previous,
            "to": campaign.status,
            "scheduled_at": campaign.scheduled_at.isoformat() if campaign.scheduled_at else None,
            "schedule": scheduling.describe_schedule(campaign) if campaign.scheduled_at else None,
            **({"occurrence": occurrence.isoformat()} if occurrence else {}),
        },
    )
    campaign_transitioned.send(
        sender=Campaign, campaign=campaign, action=action, previous=previous, actor=actor, occurrence=occurrence
    )
    return campaign


def _apply_schedule(
    campaign: Campaign, schedule: Mapping[str, Any] | None, scheduled_at: datetime | None, *, now: datetime
) -> None:
    data: dict[str, Any] = dict(schedule or {})
    if scheduled_at is not None:
        data.setdefault("scheduled_at", scheduled_at)
    if not data:
        # Scheduling with nothing new: the campaign's own time (one-time, as set on the campaign).
        data = {"scheduled_at": campaign.scheduled_at, "timezone": campaign.schedule_timezone}
    if not data.get("recurrence") and not data.get("scheduled_at"):
        raise ValidationError({"scheduled_at": ["Choose when the campaign should be sent."]})
    plan = scheduling.schedule_from_input(data, default_timezone=str(campaign.organisation.timezone), now=now)
    campaign.scheduled_at = plan.scheduled_at
    campaign.schedule_timezone = plan.timezone
    campaign.recurrence = plan.recurrence
    campaign.cron_expression = plan.cron_expression
    campaign.recurrence_ends_at = plan.ends_at


def _clear_schedule(campaign: Campaign) -> None:
    campaign.recurrence = Recurrence.NONE
    campaign.cron_expression = ""
    campaign.recurrence_ends_at = None


@transaction.atomic
def campaign_clone(*, actor: Actor, campaign_id: Any) -> Campaign:
    """An independent draft copy of any campaign, in any status, named "Copy of …"."""
    require_campaign_write(actor)
    origin = campaign_get_for_update(actor, campaign_id, include_deleted=True)
    clone = Campaign(
        organisation=origin.organisation,
        name=_unique_name(origin.organisation_id, f"Copy of {origin.name}"),
        description=origin.description,
        type=origin.type,
        status=S.DRAFT,
        channels=list(origin.channels),
        owner=actor.user or origin.owner,
        scheduled_at=origin.scheduled_at,
        messages_per_minute=origin.messages_per_minute,
        messages_per_hour=origin.messages_per_hour,
        send_window_start=origin.send_window_start,
        send_window_end=origin.send_window_end,
        skip_weekends=origin.skip_weekends,
        local_send_time=origin.local_send_time,
        sandbox_profile=copy.deepcopy(origin.sandbox_profile),
        category=origin.category,
        bypass_frequency_cap=origin.bypass_frequency_cap,
        conversion_event=origin.conversion_event,
        attribution_days=origin.attribution_days,
        attribution_model=origin.attribution_model,
        auto_winner_enabled=origin.auto_winner_enabled,
        auto_winner_metric=origin.auto_winner_metric,
        auto_winner_level=origin.auto_winner_level,
        auto_winner_min_sample=origin.auto_winner_min_sample,
        experiment_test_percent=origin.experiment_test_percent,
        experiment_window_hours=origin.experiment_window_hours,
        experiment_decide=origin.experiment_decide,
        experiment_fallback=origin.experiment_fallback,
        experiment_fallback_variant=origin.experiment_fallback_variant,
        **{field: copy.deepcopy(getattr(origin, field)) for field in TRIGGER_FIELDS},
        audience_combine=origin.audience_combine,
        audience_rules=copy.deepcopy(origin.audience_rules),
        holdout_percent=origin.holdout_percent,
        tracking_enabled=origin.tracking_enabled,
        seed_emails=list(origin.seed_emails),
        seed_phones=list(origin.seed_phones),
        sms_allow_multipart=origin.sms_allow_multipart,
        seed_copy_every_send=origin.seed_copy_every_send,
        status_changed_at=timezone.now(),
    )
    actor.stamp(clone, f"cloned from campaign {origin.pk} ({origin.name})")
    _save_campaign(clone)
    for link in origin.segment_links.all():
        copied = CampaignSegment(campaign=clone, segment_id=link.segment_id, role=link.role)
        actor.stamp(copied, "cloned")
        copied.save()
    for variant in origin.variants.all():
        copy_ = Variant(
            campaign=clone,
            name=variant.name,
            position=variant.position,
            allocation_percent=variant.allocation_percent,
            is_control=variant.is_control,
            content=copy.deepcopy(variant.content),
        )
        actor.stamp(copy_, f"cloned from variant {variant.pk}")
        copy_.save()
    audit_record(
        actor=actor,
        action="campaign.clone",
        target=clone,
        details={"origin_campaign_id": str(origin.pk), "origin_campaign_name": origin.name},
    )
    return clone


@transaction.atomic
def campaign_delete(*, actor: Actor, campaign_id: Any) -> Campaign:
    """Soft delete, restorable for the retention window. A running campaign must be paused first."""
    require_campaign_write(actor)
    campaign = campaign_get_for_update(actor, campaign_id)
    if campaign.status not in DELETABLE_STATUSES | CANCEL_ON_DELETE_STATUSES:
        raise Conflict(
            f"A {campaign.status} campaign cannot be deleted; pause it first.",
            code="not_deletable",
            status=campaign.status,
            allowed_actions=[t["action"] for t in allowed_transitions(campaign)],
        )
    now = timezone.now()
    if campaign.status in CANCEL_ON_DELETE_STATUSES:
        previous = campaign.status
        campaign.status = S.CANCELLED
        campaign.status_changed_at = now
        audit_record(
            actor=actor,
            action="campaign.cancel",
            target=campaign,
            details={"from": previous, "to": S.CANCELLED, "reason": "deleted"},
        )
        campaign.save()
        campaign_transitioned.send(
            sender=Campaign, campaign=campaign, action="cancel", previous=previous, actor=actor, occurrence=None
        )
    campaign.deleted_at = now
    campaign.deleted_by = actor.label
    actor.stamp(campaign, "deleted")
    campaign.save()
    audit_record(actor=actor, action="campaign.delete", target=campaign, details={"status": campaign.status})
    return campaign


def campaign_restore_deadline(campaign: Campaign) -> datetime | None:
    if campaign.deleted_at is None:
        return None
    return campaign.deleted_at + timedelta(days=settings.CAMPAIGN_RESTORE_WINDOW_DAYS)


@transaction.atomic
def campaign_restore(*, actor: Actor, campaign_id: Any) -> Campaign:
    """Undo a soft delete within the retention window. If the name was reused meanwhile, the restored campaign
    gets a free variant of it ("Spring sale (2)") rather than failing."""
    require_campaign_write(actor)
    campaign = campaign_get_for_update(actor, campaign_id, include_deleted=True)
    if campaign.deleted_at is None:
        raise Conflict("This campaign is not deleted.", code="not_deleted", status=campaign.status)
    deadline = campaign_restore_deadline(campaign)
    if deadline is not None and timezone.now() >= deadline:
        raise Conflict("The restore window for this campaign has passed.", code="restore_window_expired")
    original_name = campaign.name
    campaign.name = _unique_name(campaign.organisation_id, campaign.name, exclude_id=campaign.pk)
    campaign.deleted_at = None
    campaign.deleted_by = ""
    actor.stamp(campaign, "restored")
    _save_campaign(campaign)
    audit_record(
        actor=actor,
        action="campaign.restore",
        target=campaign,
        details={"renamed_from": original_name} if campaign.name != original_name else {},
    )
    return campaign


PURGE_BATCH_SIZE = 500


def campaigns_purge_deleted(*, now: datetime | None = None, batch_size: int = PURGE_BATCH_SIZE) -> int:
    """Hard-delete campaigns soft-deleted longer ago than the restore window, with their variants and history.

    Works in bounded batches, each its own transaction, so a large backlog neither holds one huge lock nor
    loses finished batches when interrupted. Safe to run concurrently: rows are claimed with SKIP LOCKED.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.CAMPAIGN_RESTORE_WINDOW_DAYS)
    purged = 0
    while True:
        with transaction.atomic():
            batch = list(
                Campaign.objects.filter(deleted_at__lt=cutoff)
                .select_for_update(skip_locked=True)
                .values_list("pk", "organisation_id", "name")[:batch_size]
            )
            if not batch:
                return purged
            ids = [pk for pk, _, _ in batch]
            variant_ids = list(Variant.objects.filter(campaign_id__in=ids).values_list("pk", flat=True))
            campaigns_purging.send(sender=Campaign, campaign_ids=ids)
            Campaign.objects.filter(pk__in=ids).delete()
            # Deleting makes simple_history write "deleted" rows; the whole history goes, as GDPR asks.
            Variant.history.model.objects.filter(id__in=variant_ids).delete()
            CampaignSegment.history.model.objects.filter(campaign_id__in=ids).delete()
            Campaign.history.model.objects.filter(id__in=ids).delete()
            AuditLogEntry.objects.bulk_create(
                AuditLogEntry(
                    organisation_id=organisation_id,
                    action="campaign.purge",
                    target_type=Campaign._meta.label_lower,
                    target_id=str(pk),
                    target_repr=name[:300],
                    actor_label="retention policy",
                    details={"restore_window_days": settings.CAMPAIGN_RESTORE_WINDOW_DAYS},
                )
                for pk, organisation_id, name in batch
            )
            purged += len(batch)


@transaction.atomic
def campaign_variant_clone(*, actor: Actor, campaign_id: Any, variant: str, name: str = "") -> Variant:
    """A copy of a variant's content for quick iteration. It starts at 0 % so the allocations still add up; give
    it a share when you are ready."""
    require_campaign_write(actor)
    campaign = campaign_get_for_update(actor, campaign_id)
    _require_editable(campaign)
    variants = list(campaign.variants.all())
    origin = next((v for v in variants if variant in (v.name, str(v.pk))), None)
    if origin is None:
        raise ValidationError({"variant": [f"No variant {variant!r}."]})
    if len(variants) >= MAX_VARIANTS:
        raise ValidationError({"variant": [f"A campaign has at most {MAX_VARIANTS} variants."]})
    taken = {v.name for v in variants}
    new_name = name.strip() or f"{origin.name} copy"
    if new_name in taken:
        counter = 2
        while f"{new_name} {counter}" in taken:
            counter += 1
        new_name = f"{new_name} {counter}"
    clone = Variant(
        campaign=campaign,
        name=new_name[:100],
        position=max(v.position for v in variants) + 1,
        allocation_percent=0,
        is_control=False,
        content=copy.deepcopy(origin.content),
    )
    actor.stamp(clone, f"cloned from variant {origin.name}")
    clone.save()
    audit_record(
        actor=actor, action="campaign.variant_clone", target=campaign, details={"from": origin.name, "to": clone.name}
    )
    return clone
