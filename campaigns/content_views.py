"""Console editor for a campaign's variants and their per-channel content."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from audiences.access import can_write_campaigns
from audiences.adapters import AdapterError
from audiences.decorators import member_required
from audiences.models import Contact
from campaigns import services
from campaigns.content.channels import FIELDS, content_problems, content_warnings
from campaigns.content.library import library_outage, library_template_fallback, template_library
from campaigns.content.media import store_icon
from campaigns.content.names import campaign_content_warnings, template_names
from campaigns.content.preview import preview_render
from campaigns.content.sms import sms_length
from campaigns.content.sms_longest import sms_length_for_longest_values
from campaigns.models import Campaign, Channel
from campaigns.views import get_campaign_or_404
from config.errors import Conflict

LONG_FIELDS = {"html", "text", "body", "payload_template", "headers"}
MAX_VARIANTS = services.MAX_VARIANTS


def _variants_from_post(campaign: Campaign, data: Any) -> list[dict[str, Any]]:
    variants = []
    for index in range(MAX_VARIANTS + 1):
        prefix = f"v-{index}-"
        if f"{prefix}name" not in data or data.get(f"{prefix}delete"):
            continue
        try:
            allocation = int(data.get(f"{prefix}allocation") or 0)
        except ValueError:
            allocation = -1
        content: dict[str, dict[str, Any]] = {}
        for channel in campaign.channels:
            fields: dict[str, Any] = {}
            for name in FIELDS[channel]:
                key = f"{prefix}{channel}-{name}"
                if name == "allow_multipart":
                    fields[name] = bool(data.get(key))
                elif name == "headers":
                    raw = (data.get(key) or "").strip()
                    try:
                        fields[name] = json.loads(raw) if raw else {}
                    except ValueError:
                        fields[name] = raw  # reported by validation as "an object of header names…"
                elif data.get(key):
                    fields[name] = data[key]
            if any(value not in ("", {}, False) for value in fields.values()):
                content[channel] = fields
        variants.append(
            {
                "name": (data.get(f"{prefix}name") or "").strip(),
                "allocation_percent": allocation,
                "is_control": bool(data.get(f"{prefix}control")),
                "content": content,
            }
        )
        if data.get(f"{prefix}clone") and len(variants) < MAX_VARIANTS:
            copy = json.loads(json.dumps(variants[-1]))
            copy["name"] = f"{copy['name']} copy"
            copy["allocation_percent"] = 0
            copy["is_control"] = False
            variants.append(copy)
    use = data.get("use_template", "")
    if ":" in use:
        index_text, channel = use.split(":", 1)
        template_id = data.get(f"v-{index_text}-{channel}-template", "")
        found = _library_template(campaign, template_id) if template_id else None
        if found and found["channel"] == channel and index_text.isdigit() and int(index_text) < len(variants):
            variants[int(index_text)]["content"][channel] = dict(found["content"])
    if data.get("add_variant") and len(variants) < MAX_VARIANTS:
        variants.append(
            {"name": f"Variant {len(variants) + 1}", "allocation_percent": 0, "is_control": False, "content": {}}
        )
    return variants


def _library_template(campaign: Campaign, template_id: str) -> dict[str, Any] | None:
    """A template to start from; with isA_Creative down, its copy as last fetched, or one of our own."""
    try:
        return template_library().get(campaign.organisation, template_id)
    except AdapterError:
        return library_template_fallback(campaign.organisation, template_id)


def _library(campaign: Campaign) -> tuple[list[dict[str, Any]], str]:
    """The templates the editor offers, and why they are not isA_Creative's current ones ("" when they are)."""
    try:
        return template_library().list(campaign.organisation), ""
    except AdapterError as exc:
        outage = library_outage(campaign.organisation, None, exc)
        known = {item["id"] for item in outage.cached}
        return [*outage.cached, *(t for t in outage.embedded if t["id"] not in known)], outage.message


def _editor_rows(
    campaign: Campaign, variants: list[dict[str, Any]], library: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    if library is None:
        library, _ = _library(campaign)
    templates: dict[str, list[dict[str, Any]]] = {}
    for item in library:
        templates.setdefault(item["channel"], []).append(item)
    rows = []
    for index, variant in enumerate(variants):
        channels = []
        for channel in campaign.channels:
            content = variant["content"].get(channel, {})
            fields = []
            for name, (limit, is_template, _html) in FIELDS[channel].items():
                value = content.get(name, "")
                if name == "headers":
                    value = json.dumps(value) if value else ""
                fields.append(
                    {
                        "name": name,
                        "label": name.replace("_", " ").capitalize(),
                        "key": f"v-{index}-{channel}-{name}",
                        "value": value,
                        "long": name in LONG_FIELDS,
                        "checkbox": name == "allow_multipart",
                        "template": is_template,
                        "limit": limit,
                    }
                )
            extra = {}
            if channel == Channel.SMS:
                extra["sms"] = sms_length(content.get("body", ""))
            if channel == Channel.WHATSAPP:
                extra["characters"] = len(content.get("body", ""))
            channels.append(
                {
                    "channel": channel,
                    "label": Channel(channel).label,
                    "fields": fields,
                    "templates": templates.get(channel, []),
                    **extra,
                }
            )
        rows.append({"index": index, **variant, "channels": channels})
    return rows


@member_required
def campaign_content_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    campaign = get_campaign_or_404(request, campaign_id)
    if not can_write_campaigns(request.actor):
        raise PermissionDenied
    problems: list[str] = []
    variants = services._variant_dicts(campaign)
    status = 200
    if request.method == "POST":
        variants = _variants_from_post(campaign, request.POST)
        if request.POST.get("save"):
            try:
                for index, variant in enumerate(variants):
                    upload = request.FILES.get(f"v-{index}-in_app-icon_file")
                    if upload is not None and Channel.IN_APP in campaign.channels:
                        url = store_icon(organisation_id=campaign.organisation_id, upload=upload)
                        variant["content"].setdefault(Channel.IN_APP, {})["icon_url"] = url
                services.campaign_update(actor=request.actor, campaign_id=campaign.pk, changes={}, variants=variants)
            except ValidationError as exc:
                problems = [m for messages_ in exc.message_dict.values() for m in messages_]
                status = 400
            except Conflict as exc:
                problems = [exc.message]
                status = 409
            else:
                messages.success(request, "Content saved.")
                # Saved all the same: a name no message provides is worth a look, not a refusal.
                saved = [(variant["name"], variant["content"]) for variant in variants]
                for warning in campaign_content_warnings(campaign, saved):
                    messages.warning(request, f"Warning: {warning}")
                return redirect("campaigns:content", campaign_id=campaign.pk)
    library, library_problem = _library(campaign)
    context = {
        "campaign": campaign,
        "variants": _editor_rows(campaign, variants, library),
        "library_problem": library_problem,
        "problems": problems,
        "can_add": len(variants) < MAX_VARIANTS,
        "editable": campaign.status in services.EDITABLE_STATUSES,
    }
    return render(request, "campaigns/content.html", context, status=status)


@member_required
def campaign_content_preview_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    """Live preview of the content being edited (htmx): the unsaved form rendered for a real or sample contact."""
    campaign = get_campaign_or_404(request, campaign_id)
    variants = _variants_from_post(campaign, request.POST)
    try:
        index = int(request.POST.get("preview_variant") or 0)
    except ValueError:
        index = 0
    channel = request.POST.get("preview_channel") or (campaign.channels[0] if campaign.channels else "")
    context: dict[str, Any] = {"channel": channel, "problems": []}
    if not variants or channel not in campaign.channels:
        context["problems"] = ["Nothing to preview yet."]
        return render(request, "campaigns/_preview.html", context)
    variant = variants[min(max(index, 0), len(variants) - 1)]
    content = variant["content"].get(channel, {})
    problems = content_problems(
        channel,
        content,
        allowed_senders=services.allowed_senders(campaign.organisation),
        sms_multipart=campaign.sms_allow_multipart,
    )
    contact_id = None
    external_id = (request.POST.get("preview_contact") or "").strip()
    if external_id:
        contact = Contact.objects.filter(organisation=campaign.organisation, external_id=external_id).first()
        if contact is None:
            problems.append(f"No contact with external id {external_id!r}; showing a sample contact.")
        else:
            contact_id = contact.pk
    preview = None
    try:
        event_id = (request.POST.get("preview_event") or "").strip() or None
        preview = preview_render(
            campaign, channel, content, contact_id=contact_id, message_id="preview", event_id=event_id
        )
    except ValidationError as exc:
        problems.extend(m for messages_ in exc.message_dict.values() for m in messages_)
    if preview is not None and channel == Channel.SMS:
        context["sms_longest"] = sms_length_for_longest_values(
            campaign, content, profile=preview.contact, event=preview.sample.event if preview.sample else None
        )
    context.update(
        {
            "variant": variant["name"],
            "rendered": preview.rendered if preview else None,
            "problems": problems,
            "contact": preview.contact if preview else None,
            "sample_event": preview.sample if preview else None,
            "warnings": content_warnings(channel, content, **template_names(campaign)),
            "is_control": variant["is_control"],
        }
    )
    return render(request, "campaigns/_preview.html", context)
