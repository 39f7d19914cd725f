"""Compliance console: a contact's consent, the suppression list, the audit log. Thin callers of services."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from audiences.decorators import member_required
from audiences.models import Contact
from audiences.pii import pii_hash
from compliance import selectors, services
from compliance.api import MAX_IMPORT_BYTES, addresses_from_csv
from compliance.exports import csv_response
from compliance.models import AuditLogEntry, SendingHold, Suppression, Unsubscribe

CHANNEL_LABELS = [
    ("email", "Email"),
    ("sms", "SMS"),
    ("whatsapp", "WhatsApp"),
    ("in_app", "In-app"),
    ("webhook", "Webhook"),
]


def _contact(request: HttpRequest, contact_id: Any) -> Contact:
    try:
        return services.contact_get(request.actor, contact_id)
    except Contact.DoesNotExist as exc:
        raise Http404("No such contact") from exc


def _form_changes(request: HttpRequest) -> dict[str, Any]:
    posted = request.POST
    on = set(posted.getlist("channels_on"))
    return {
        "global_opt_out": posted.get("global_opt_out") == "on",
        "unsubscribed": posted.get("unsubscribed") == "on",
        "disabled_channels": [code for code, _ in CHANNEL_LABELS if code not in on],
        "disabled_categories": [c for c in services.CATEGORIES if posted.get(f"category_{c}") != "on"],
        "quiet_hours_start": posted.get("quiet_hours_start") or None,
        "quiet_hours_end": posted.get("quiet_hours_end") or None,
    }


@member_required
def contact_consent_view(request: HttpRequest, contact_id: Any) -> HttpResponse:
    contact = _contact(request, contact_id)
    can_write = request.actor.role in services.CONSENT_WRITERS
    errors: dict[str, list[str]] = {}
    status = 200
    if request.method == "POST":
        if not can_write:
            raise PermissionDenied
        try:
            _, diff = services.preference_update(
                actor=request.actor, contact=contact, changes=_form_changes(request), source="console"
            )
            messages.success(request, "Preferences saved." if diff else "Nothing changed.")
            return redirect("compliance:contact", contact_id=contact.pk)
        except ValidationError as exc:
            errors, status = exc.message_dict, 400
    preference = services.preference_for(contact)
    addresses = [a for a in (contact.email.lower(), contact.phone) if a]
    context = {
        "contact": contact,
        "preference": preference,
        "can_write": can_write,
        # GDPR export and erase (delivery.gdpr): the same roles that read the audit log.
        "can_gdpr": request.actor.role in selectors.AUDIT_READERS,
        "errors": errors,
        "channels": [(code, label, code not in preference.disabled_channels) for code, label in CHANNEL_LABELS],
        "categories": [(c, c not in preference.disabled_categories) for c in services.CATEGORIES],
        "unsubscribes": Unsubscribe.objects.filter(contact=contact).order_by("-created_at")[:50],
        "suppressions": Suppression.objects.filter(
            organisation=request.actor.organisation, address_hash__in=[pii_hash(a) for a in addresses]
        ),
        "audit": (
            AuditLogEntry.objects.filter(
                organisation=request.actor.organisation, target_type="audiences.contact", target_id=str(contact.pk)
            )[:50]
            if request.actor.role in selectors.AUDIT_READERS
            else None
        ),
    }
    return render(request, "compliance/contact.html", context, status=status)


@member_required
def suppression_list_view(request: HttpRequest) -> HttpResponse:
    try:
        queryset = selectors.suppression_list(
            request.actor.organisation, search=request.GET.get("search", ""), reason=request.GET.get("reason", "")
        )
    except ValidationError:
        queryset = selectors.suppression_list(request.actor.organisation)
    page = Paginator(queryset, 50).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "reasons": Suppression.Reason.choices,
        "can_write": request.actor.role in services.CONSENT_WRITERS,
        "holds": SendingHold.objects.filter(organisation=request.actor.organisation, released_at__isnull=True),
        "search": request.GET.get("search", ""),
        "reason": request.GET.get("reason", ""),
    }
    return render(request, "compliance/suppressions.html", context)


@member_required
@require_POST
def suppression_add_view(request: HttpRequest) -> HttpResponse:
    try:
        services.suppression_add(
            actor=request.actor, address=request.POST.get("address", ""), note=request.POST.get("note", "")
        )
        messages.success(request, "Address suppressed.")
    except ValidationError as exc:
        messages.error(request, " ".join(m for ms in exc.message_dict.values() for m in ms))
    return redirect("compliance:suppressions")


@member_required
@require_POST
def suppression_remove_view(request: HttpRequest, suppression_id: int) -> HttpResponse:
    suppression = Suppression.objects.filter(organisation=request.actor.organisation, pk=suppression_id).first()
    if suppression is None:
        raise Http404("No such suppression")
    services.suppression_remove(actor=request.actor, suppression=suppression)
    messages.success(request, f"{suppression.address} can be sent to again.")
    return redirect("compliance:suppressions")


@member_required
@require_POST
def suppression_import_view(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("file")
    if upload is None or upload.size > MAX_IMPORT_BYTES:
        messages.error(request, "Choose a CSV file of at most 5 MB.")
        return redirect("compliance:suppressions")
    try:
        text = upload.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        messages.error(request, "The file is not UTF-8 text.")
        return redirect("compliance:suppressions")
    result = services.suppressions_import(
        actor=request.actor, addresses=addresses_from_csv(text), note=request.POST.get("note", "")
    )
    messages.success(
        request,
        f"{result['added']} added, {result['already_suppressed']} already suppressed, "
        f"{len(result['rejected'])} rejected.",
    )
    for problem in result["rejected"][:20]:
        messages.warning(request, f"Line {problem['line']}: {problem['address']} — {' '.join(problem['errors'])}")
    return redirect("compliance:suppressions")


def _filtered(request: HttpRequest, parse: Any, select: Any) -> tuple[Any, dict[str, list[str]]]:
    """The selector's queryset for the request's filters, or everything and the filter errors."""
    try:
        filters = parse(request.GET)
        errors: dict[str, list[str]] = {}
    except ValidationError as exc:
        filters, errors = {}, exc.message_dict
    return select(request.actor, filters), errors


def _log_page(request: HttpRequest, template: str, parse: Any, select: Any) -> HttpResponse:
    queryset, errors = _filtered(request, parse, select)
    page = Paginator(queryset, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"page": page, "errors": errors, "filters": request.GET, "query": query.urlencode()}
    return render(request, template, context, status=400 if errors else 200)


def _log_csv(request: HttpRequest, filename: str, parse: Any, select: Any, header: Any, rows: Any) -> HttpResponse:
    queryset, errors = _filtered(request, parse, select)
    if errors:
        return HttpResponse("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()), status=400)
    return csv_response(filename, header, rows(queryset))


@member_required
def audit_log_view(request: HttpRequest) -> HttpResponse:
    return _log_page(request, "compliance/audit.html", selectors.audit_filters, selectors.audit_log)


@member_required
def audit_log_csv_view(request: HttpRequest) -> HttpResponse:
    return _log_csv(
        request, "audit-log.csv", selectors.audit_filters, selectors.audit_log, selectors.AUDIT_CSV_HEADER,
        selectors.audit_csv_rows,
    )  # fmt: skip


@member_required
def run_exclusions_view(request: HttpRequest) -> HttpResponse:
    return _log_page(request, "compliance/exclusions.html", selectors.exclusion_filters, selectors.run_exclusions)


@member_required
def run_exclusions_csv_view(request: HttpRequest) -> HttpResponse:
    return _log_csv(
        request, "run-exclusions.csv", selectors.exclusion_filters, selectors.run_exclusions,
        selectors.EXCLUSION_CSV_HEADER, selectors.exclusion_csv_rows,
    )  # fmt: skip


@member_required
@require_POST
def sending_hold_release_view(request: HttpRequest, hold_id: int) -> HttpResponse:
    hold = SendingHold.objects.filter(organisation=request.actor.organisation, pk=hold_id).first()
    if hold is None:
        raise Http404("No such hold")
    services.sending_hold_release(actor=request.actor, hold=hold)
    messages.success(request, "Hold released: queued marketing email goes out again.")
    return redirect("compliance:suppressions")
