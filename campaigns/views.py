"""Console pages for campaigns. Thin: every change is a call into campaigns.services."""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from audiences.access import can_write_campaigns
from audiences.adapters import AdapterError
from audiences.decorators import member_required
from audiences.models import EventType, Segment
from audiences.rules import RuleError
from campaigns import selectors, services
from campaigns.audience import audience_estimate, campaign_audience_spec, spec_estimate, validate_audience
from campaigns.content.preview import campaign_test_send
from campaigns.filters import CampaignFilter
from campaigns.forms import CampaignForm
from campaigns.models import Campaign, CampaignStatus, CampaignType, Channel, Recurrence
from campaigns.scheduling import campaign_timezone, describe_schedule
from config.errors import Conflict

PAGE_SIZES = (20, 50, 100)


def get_campaign_or_404(request: HttpRequest, campaign_id: Any, *, include_deleted: bool = False) -> Campaign:
    try:
        return selectors.campaign_get(request.actor, campaign_id, include_deleted=include_deleted)
    except Campaign.DoesNotExist as exc:
        raise Http404("No such campaign") from exc


def _page_size(request: HttpRequest) -> int:
    try:
        value = int(request.GET.get("page_size", PAGE_SIZES[0]))
    except ValueError:
        return PAGE_SIZES[0]
    return min(max(value, 1), 100)


def _list(request: HttpRequest, *, deleted: str, template: str) -> HttpResponse:
    filterset = CampaignFilter(request.GET or None, queryset=selectors.campaign_list(request.actor, deleted=deleted))
    queryset = Campaign.objects.none() if filterset.is_bound and not filterset.is_valid() else filterset.qs
    page = Paginator(queryset, _page_size(request)).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "filterset": filterset,
        "page": page,
        "query": query.urlencode(),
        "statuses": CampaignStatus.choices,
        "types": CampaignType.choices,
        "channels": Channel.choices,
        "page_sizes": PAGE_SIZES,
        "can_write": can_write_campaigns(request.actor),
        "deleted": deleted,
    }
    if request.headers.get("HX-Request") and request.headers.get("HX-Target") == "campaign-results":
        return render(request, "campaigns/_results.html", context)
    return render(request, template, context)


@member_required
def campaign_list_view(request: HttpRequest) -> HttpResponse:
    return _list(request, deleted="exclude", template="campaigns/list.html")


@member_required
def campaign_deleted_view(request: HttpRequest) -> HttpResponse:
    return _list(request, deleted="only", template="campaigns/deleted.html")


def _form_initial(campaign: Campaign) -> dict[str, Any]:
    links = list(campaign.segment_links.all())
    return {
        "tracking_enabled": campaign.tracking_enabled,
        "seed_emails": "\n".join(campaign.seed_emails),
        "seed_phones": "\n".join(campaign.seed_phones),
        "seed_copy_every_send": campaign.seed_copy_every_send,
        "sms_allow_multipart": campaign.sms_allow_multipart,
        "include_segments": [str(link.segment_id) for link in links if link.role == "include"],
        "exclude_segments": [str(link.segment_id) for link in links if link.role == "exclude"],
        "audience_combine": campaign.audience_combine,
        "audience_rules": campaign.audience_rules,
        "holdout_percent": campaign.holdout_percent,
        "name": campaign.name,
        "description": campaign.description,
        "type": campaign.type,
        "channels": campaign.channels,
        "scheduled_at": campaign.scheduled_at,
        "messages_per_minute": campaign.messages_per_minute,
        "messages_per_hour": campaign.messages_per_hour,
        "send_window_start": campaign.send_window_start,
        "send_window_end": campaign.send_window_end,
        "skip_weekends": campaign.skip_weekends,
        "local_send_time": campaign.local_send_time,
        "category": campaign.category,
        "bypass_frequency_cap": campaign.bypass_frequency_cap,
        "conversion_event": campaign.conversion_event,
        "attribution_days": campaign.attribution_days,
        "attribution_model": campaign.attribution_model,
        "auto_winner_enabled": campaign.auto_winner_enabled,
        "auto_winner_metric": campaign.auto_winner_metric,
        "auto_winner_level": campaign.auto_winner_level,
        "auto_winner_min_sample": campaign.auto_winner_min_sample,
        "experiment_test_percent": campaign.experiment_test_percent,
        "experiment_window_hours": campaign.experiment_window_hours,
        "experiment_decide": campaign.experiment_decide,
        "experiment_fallback": campaign.experiment_fallback,
        "experiment_fallback_variant": campaign.experiment_fallback_variant,
        "trigger_event": campaign.trigger_event,
        "trigger_conditions": campaign.trigger_conditions,
        "trigger_delay_seconds": campaign.trigger_delay_seconds,
        "quiet_hours_start": campaign.quiet_hours_start,
        "quiet_hours_end": campaign.quiet_hours_end,
        "quiet_hours_policy": campaign.quiet_hours_policy,
        "frequency_limit": campaign.frequency_limit,
    }


def _event_types(request: HttpRequest) -> list[str]:
    return list(EventType.objects.filter(organisation=request.actor.organisation).values_list("name", flat=True))


@member_required
def campaign_create_view(request: HttpRequest) -> HttpResponse:
    if not can_write_campaigns(request.actor):
        raise PermissionDenied
    form = CampaignForm(
        request.POST or None, organisation=request.actor.organisation, actor=request.actor, prebuilt=True
    )
    if request.method == "POST" and form.is_valid():
        try:
            campaign = services.campaign_create(actor=request.actor, **form.campaign_data())
        except ValidationError as exc:
            form.add_service_errors(exc.message_dict)
        else:
            messages.success(request, f"Draft “{campaign.name}” created.")
            return redirect("campaigns:detail", campaign_id=campaign.pk)
    return render(
        request,
        "campaigns/form.html",
        {"form": form, "campaign": None, "event_types": _event_types(request)},
        status=400 if form.errors else 200,
    )


@member_required
def campaign_edit_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    campaign = get_campaign_or_404(request, campaign_id)
    if not can_write_campaigns(request.actor):
        raise PermissionDenied
    form = CampaignForm(
        request.POST or None,
        initial=_form_initial(campaign),
        organisation=request.actor.organisation,
        actor=request.actor,
        prebuilt=True,
    )
    if request.method == "POST" and form.is_valid():
        data = form.campaign_data()
        audience = data.pop("audience")
        try:
            services.campaign_update(actor=request.actor, campaign_id=campaign.pk, changes=data, audience=audience)
        except ValidationError as exc:
            form.add_service_errors(exc.message_dict)
        except Conflict as exc:
            messages.error(request, exc.message)
            return redirect("campaigns:detail", campaign_id=campaign.pk)
        else:
            messages.success(request, "Campaign saved.")
            return redirect("campaigns:detail", campaign_id=campaign.pk)
    return render(
        request,
        "campaigns/form.html",
        {"form": form, "campaign": campaign, "event_types": _event_types(request)},
        status=400 if form.errors else 200,
    )


@member_required
def campaign_detail_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    campaign = get_campaign_or_404(request, campaign_id, include_deleted=True)
    spec = campaign_audience_spec(campaign)
    segment_names = dict(Segment.objects.filter(pk__in=[*spec["include"], *spec["exclude"]]).values_list("pk", "name"))
    context = {
        "audience": {
            "include": [segment_names.get(pk, "?") for pk in spec["include"]],
            "exclude": [segment_names.get(pk, "?") for pk in spec["exclude"]],
            "combine": spec["combine"],
            "rules": json.dumps(spec["rules"], indent=2) if spec["rules"] else "",
            "holdout_percent": spec["holdout_percent"],
        },
        "campaign": campaign,
        "variants": list(campaign.variants.all()),
        "transitions": [] if campaign.deleted_at else services.allowed_transitions(campaign),
        "action_labels": {name: t.description for name, t in services.TRANSITIONS.items()},
        "history": selectors.campaign_history(campaign, limit=50),
        "restore_deadline": services.campaign_restore_deadline(campaign),
        "can_write": can_write_campaigns(request.actor),
        "editable": campaign.status in services.EDITABLE_STATUSES and not campaign.deleted_at,
        "min_schedule": services.MIN_SCHEDULE_LEAD,
        "schedule_description": describe_schedule(campaign) if campaign.scheduled_at else "",
        "schedule_timezone": campaign_timezone(campaign),
        "schedule_local": campaign.scheduled_at.astimezone(ZoneInfo(campaign_timezone(campaign)))
        if campaign.scheduled_at
        else None,
        "timezones": COMMON_TIMEZONES,
        "weekdays": [
            ("mon", "Mon"),
            ("tue", "Tue"),
            ("wed", "Wed"),
            ("thu", "Thu"),
            ("fri", "Fri"),
            ("sat", "Sat"),
            ("sun", "Sun"),
        ],
        "recurrences": Recurrence.choices,
        **_test_share_context(campaign),
    }
    return render(request, "campaigns/detail.html", context)


def _test_share_context(campaign: Campaign) -> dict[str, Any]:
    """The auto-winner's test share on the campaign page: waiting for the decision until when, or the decision."""
    test_run = (
        campaign.runs.filter(phase="test").order_by("number").first() if campaign.experiment_test_percent else None
    )
    started = test_run.started_sending_at if test_run else None
    return {"test_share_run": test_run, "test_window_end": campaign.test_window_end(started) if started else None}


def _run(request: HttpRequest, campaign_id: Any, call: Any, success: str) -> Campaign | None:
    try:
        campaign = call()
    except Campaign.DoesNotExist as exc:
        raise Http404("No such campaign") from exc
    except Conflict as exc:
        messages.error(request, exc.message)
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            for error in errors:
                messages.error(request, error if field == "__all__" else f"{field.replace('_', ' ')}: {error}")
    else:
        messages.success(request, success.format(campaign=campaign))
        return campaign
    return None


# Offered first in the schedule editor; any IANA name can be typed.
COMMON_TIMEZONES = [
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Madrid",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Asia/Shanghai",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Africa/Johannesburg",
]


def _schedule_from_post(post: Any) -> dict[str, Any]:
    """The schedule editor's fields as campaigns.scheduling reads them (it validates them)."""
    recurrence = post.get("recurrence") or "none"
    schedule: dict[str, Any] = {"recurrence": recurrence, "timezone": post.get("timezone", "")}
    if recurrence == "none":
        schedule["scheduled_at"] = post.get("scheduled_at", "")
    else:
        schedule.update(
            time=post.get("time", ""),
            weekdays=post.getlist("weekdays"),
            day_of_month=post.get("day_of_month") or None,
            cron=post.get("cron", ""),
            ends_at=post.get("ends_at") or None,
        )
    return schedule


@require_POST
@member_required
def campaign_transition_view(request: HttpRequest, campaign_id: Any, action: str) -> HttpResponse:
    if action not in services.USER_ACTIONS:
        raise Http404("No such action")
    schedule = _schedule_from_post(request.POST) if action in ("schedule", "reschedule") else None
    _run(
        request,
        campaign_id,
        lambda: services.campaign_transition(
            actor=request.actor, campaign_id=campaign_id, action=action, schedule=schedule
        ),
        "Campaign is now {campaign.status}.",
    )
    return redirect("campaigns:detail", campaign_id=campaign_id)


@member_required
def campaign_audience_estimate_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    """The saved audience's size right now (htmx, on the campaign page)."""
    campaign = get_campaign_or_404(request, campaign_id)
    exact = request.GET.get("exact") == "1"
    try:
        result = audience_estimate(campaign, exact=exact)
        problems: list[str] = []
    except (ValidationError, RuleError) as exc:
        result, problems = None, [str(exc)]
    return render(request, "campaigns/_estimate.html", {"estimate": result, "problems": problems, "saved": campaign})


@require_POST
@member_required
def campaign_test_send_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    recipients = [a.strip() for a in request.POST.get("recipients", "").replace(",", "\n").splitlines() if a.strip()]
    channel = request.POST.get("channel") or "email"
    label = {"email": "Test email sent.", "sms": "Test SMS sent.", "whatsapp": "Test WhatsApp message sent."}
    _run(
        request,
        campaign_id,
        lambda: campaign_test_send(
            actor=request.actor,
            campaign_id=campaign_id,
            recipients=recipients or None,
            variant=request.POST.get("variant") or None,
            channel=channel,
        ),
        label.get(channel, "Test sent."),
    )
    return redirect("campaigns:detail", campaign_id=campaign_id)


@require_POST
@member_required
def campaign_clone_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    clone = _run(
        request,
        campaign_id,
        lambda: services.campaign_clone(actor=request.actor, campaign_id=campaign_id),
        "Created “{campaign.name}”, a draft you can edit.",
    )
    return redirect("campaigns:detail", campaign_id=clone.pk if clone else campaign_id)


@require_POST
@member_required
def campaign_delete_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    deleted = _run(
        request,
        campaign_id,
        lambda: services.campaign_delete(actor=request.actor, campaign_id=campaign_id),
        "Deleted “{campaign.name}”. You can restore it from Deleted campaigns for 30 days.",
    )
    return redirect(
        "campaigns:list" if deleted else "campaigns:detail",
        **({} if deleted else {"campaign_id": campaign_id}),
    )


@require_POST
@member_required
def campaign_restore_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    _run(
        request,
        campaign_id,
        lambda: services.campaign_restore(actor=request.actor, campaign_id=campaign_id),
        "Restored “{campaign.name}”.",
    )
    return redirect("campaigns:detail", campaign_id=campaign_id)


@require_POST
@member_required
def audience_estimate_view(request: HttpRequest) -> HttpResponse:
    """Live size of the audience being edited in the campaign form (htmx, as the marketer changes it)."""
    form = CampaignForm(request.POST, organisation=request.actor.organisation, actor=request.actor)
    form.is_valid()  # only the audience fields matter here; others may still be incomplete
    problems: list[str] = []
    result = None
    audience_errors = {name: form.errors[name] for name in CampaignForm.AUDIENCE_FIELDS if name in form.errors}
    if audience_errors:
        problems = [f"{form.fields[name].label}: {' '.join(errors)}" for name, errors in audience_errors.items()]
    else:
        try:
            spec = validate_audience(request.actor.organisation, form.campaign_data()["audience"])
            result = spec_estimate(request.actor.organisation, spec, exact=request.POST.get("exact") == "1")
        except ValidationError as exc:
            for errors in exc.message_dict.values():
                problems.extend(errors)
        except AdapterError as exc:  # an external segment's service is down: say so, not a 500
            problems.append(f"The audience service is unavailable: {exc}")
    return render(request, "campaigns/_estimate.html", {"estimate": result, "problems": problems})
