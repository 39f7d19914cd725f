"""Console pages for contacts and segments. Thin: every change is a call into audiences.services."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from audiences import segments as engine
from audiences import services
from audiences.adapters import AdapterError
from audiences.decorators import member_required
from audiences.models import Contact, ContactAttribute, ContactImport, EventType, Segment, SegmentKind
from audiences.pii import contact_search
from audiences.rules import ENCRYPTED_FIELDS, ENCRYPTED_OPERATORS, OPERATORS, STANDARD_FIELDS, RuleError
from config.errors import Conflict


def _can_write(request: HttpRequest) -> bool:
    return request.actor.role in services.CONTACT_WRITERS


def _require_write(request: HttpRequest) -> None:
    if not _can_write(request):
        raise PermissionDenied


def _segment(request: HttpRequest, segment_id: Any) -> Segment:
    segment = Segment.objects.filter(organisation=request.actor.organisation, pk=segment_id).first()
    if segment is None:
        raise Http404("No such segment")
    return segment


class SegmentForm(forms.Form):
    name = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"class": "input"}))
    description = forms.CharField(
        max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2, "class": "input"})
    )
    kind = forms.ChoiceField(choices=SegmentKind.choices, initial=SegmentKind.RULES, widget=forms.RadioSelect)
    rules = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 10, "class": "input code", "spellcheck": "false"}),
        help_text="A rule tree; the size below updates as you type.",
    )
    external_query = forms.CharField(
        required=False,
        label="isA_Data query",
        widget=forms.Textarea(attrs={"rows": 3, "class": "input code"}),
    )
    external_ids = forms.CharField(
        required=False,
        label="Member ids (static lists)",
        help_text="External ids, one per line or comma-separated; they replace the current members.",
        widget=forms.Textarea(attrs={"rows": 4, "class": "input code"}),
    )

    def add_service_errors(self, errors: dict[str, list[str]]) -> None:
        for field, problems in errors.items():
            for problem in problems:
                self.add_error(field if field in self.fields else None, problem)


def _builder_context(request: HttpRequest) -> dict[str, Any]:
    attributes = list(ContactAttribute.objects.filter(organisation=request.actor.organisation))
    return {
        "standard_fields": STANDARD_FIELDS,
        "attributes": attributes,
        "operators": OPERATORS,
        # Email and phone are encrypted at rest: the builder offers only the operators that work on them.
        "field_types_json": json.dumps(
            {
                **STANDARD_FIELDS,
                **dict.fromkeys(ENCRYPTED_FIELDS, "encrypted"),
                **{f"attributes.{a.name}": a.type for a in attributes},
            }
        ),
        "operators_json": json.dumps({**OPERATORS, "encrypted": ENCRYPTED_OPERATORS}),
    }


@member_required
def segment_list_view(request: HttpRequest) -> HttpResponse:
    segments = Segment.objects.filter(organisation=request.actor.organisation).order_by("name")
    # The audience service's pre-built segments, to pick (the embedded one keeps none: the list stays empty).
    prebuilt: list[dict[str, Any]] = []
    prebuilt_problem = ""
    try:
        prebuilt = services.prebuilt_segments(request.actor.organisation)
    except AdapterError as exc:
        prebuilt_problem = f"The audience service is unavailable, so its pre-built segments cannot be listed: {exc}"
    context = {
        "segments": segments,
        "prebuilt": prebuilt,
        "prebuilt_problem": prebuilt_problem,
        "can_write": _can_write(request),
    }
    return render(request, "segments/list.html", context)


@require_POST
@member_required
def segment_prebuilt_pick_view(request: HttpRequest) -> HttpResponse:
    """Pick one of the audience service's pre-built segments: our segment referencing it, for campaigns."""
    _require_write(request)
    try:
        segment, created = services.segment_add_prebuilt(
            actor=request.actor, external_segment_id=(request.POST.get("id") or "").strip()[:200]
        )
    except AdapterError as exc:
        messages.error(request, f"The audience service is unavailable: {exc}")
        return redirect("segments:list")
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
        return redirect("segments:list")
    if created:
        messages.success(request, f"Segment “{segment.name}” added: campaigns can include it now.")
    return redirect("segments:detail", segment_id=segment.pk)


def _segment_save(request: HttpRequest, form: SegmentForm, segment: Segment | None) -> Segment | None:
    data = {k: v for k, v in form.cleaned_data.items() if k != "external_ids"}
    if segment is not None:
        data.pop("kind", None)
    try:
        if segment is None:
            saved = services.segment_create(actor=request.actor, data=data)
        else:
            saved = services.segment_update(actor=request.actor, segment=segment, data=data)
        ids = [x for x in form.cleaned_data.get("external_ids", "").replace(",", "\n").splitlines() if x.strip()]
        if saved.kind == SegmentKind.STATIC and ids:
            result = services.segment_set_members(actor=request.actor, segment=saved, external_ids=ids)
            if result.unknown_external_ids:
                messages.warning(
                    request,
                    f"{len(result.unknown_external_ids)} id(s) match no contact, e.g. "
                    + ", ".join(result.unknown_external_ids[:5]),
                )
        return saved
    except ValidationError as exc:
        form.add_service_errors(exc.message_dict)
    return None


@member_required
def segment_create_view(request: HttpRequest) -> HttpResponse:
    _require_write(request)
    form = SegmentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        saved = _segment_save(request, form, None)
        if saved:
            messages.success(request, f"Segment “{saved.name}” saved.")
            return redirect("segments:detail", segment_id=saved.pk)
    context = {"form": form, "segment": None, **_builder_context(request)}
    return render(request, "segments/form.html", context, status=400 if form.errors else 200)


@member_required
def segment_edit_view(request: HttpRequest, segment_id: Any) -> HttpResponse:
    _require_write(request)
    segment = _segment(request, segment_id)
    initial = {
        "name": segment.name,
        "description": segment.description,
        "kind": segment.kind,
        "rules": segment.rules,
        "external_query": segment.external_query,
    }
    form = SegmentForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        saved = _segment_save(request, form, segment)
        if saved:
            messages.success(request, "Segment saved.")
            return redirect("segments:detail", segment_id=saved.pk)
    context = {"form": form, "segment": segment, **_builder_context(request)}
    return render(request, "segments/form.html", context, status=400 if form.errors else 200)


@member_required
def segment_detail_view(request: HttpRequest, segment_id: Any) -> HttpResponse:
    segment = _segment(request, segment_id)
    exact = request.GET.get("exact") == "1"
    problems: list[str] = []
    estimate = preview = None
    service_problem = ""
    try:
        try:
            services.segment_refresh_external(segment=segment)
        except AdapterError as exc:
            # The last members stay: shown as they were, with why they may be out of date.
            when = segment.members_refreshed_at
            kept = f"as resolved {timezone.localtime(when):%d %b %H:%M}" if when else "none resolved yet"
            service_problem = f"The audience service is unavailable ({exc}); showing the last members, {kept}."
        condition = engine.segment_condition(segment)
        estimate = engine.estimate(request.actor.organisation, condition, exact=exact)
        preview = list(engine.matching_contacts(request.actor.organisation, condition).order_by("-id")[:20])
    except RuleError as exc:
        problems = exc.as_messages()
    context = {
        "segment": segment,
        "estimate": estimate,
        "preview": preview,
        "problems": problems,
        "service_problem": service_problem,
        "rules_json": json.dumps(segment.rules, indent=2) if segment.rules is not None else "",
        "campaigns": segment.campaigns.filter(deleted_at__isnull=True).distinct()[:20],
        "can_write": _can_write(request),
    }
    return render(request, "segments/detail.html", context)


@require_POST
@member_required
def segment_delete_view(request: HttpRequest, segment_id: Any) -> HttpResponse:
    segment = _segment(request, segment_id)
    try:
        services.segment_delete(actor=request.actor, segment=segment)
    except Conflict as exc:
        messages.error(request, exc.message)
        return redirect("segments:detail", segment_id=segment.pk)
    messages.success(request, f"Deleted segment “{segment.name}”.")
    return redirect("segments:list")


@require_POST
@member_required
def rules_estimate_view(request: HttpRequest) -> HttpResponse:
    """Live size of the rule tree being edited (htmx)."""
    problems: list[str] = []
    estimate = None
    try:
        tree = json.loads(request.POST.get("rules") or "null")
    except ValueError as exc:
        problems = [f"Not valid JSON: {exc}"]
    else:
        if tree is None:
            problems = ["Write a rule tree to see its size."]
        else:
            try:
                estimate = engine.estimate(
                    request.actor.organisation, engine.compile_rules(request.actor.organisation, tree)
                )
            except RuleError as exc:
                problems = exc.as_messages()
    return render(request, "segments/_estimate.html", {"estimate": estimate, "problems": problems})


# --- contacts ----------------------------------------------------------------------------------------------------


class ImportForm(forms.Form):
    file = forms.FileField(label="CSV file", widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}))


@member_required
def contact_list_view(request: HttpRequest) -> HttpResponse:
    contacts = Contact.objects.filter(organisation=request.actor.organisation).order_by("-id")
    term = request.GET.get("search", "").strip()
    if term:
        contacts = contacts.filter(contact_search(term))
    page = Paginator(contacts, 50).get_page(request.GET.get("page"))
    imports = ContactImport.objects.filter(organisation=request.actor.organisation)[:5]
    return render(
        request,
        "contacts/list.html",
        {
            "page": page,
            "search": term,
            "imports": imports,
            "form": ImportForm(),
            "can_write": _can_write(request),
            "attributes": ContactAttribute.objects.filter(organisation=request.actor.organisation),
        },
    )


@require_POST
@member_required
def contact_import_view(request: HttpRequest) -> HttpResponse:
    _require_write(request)
    form = ImportForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            job = services.contact_import_start(actor=request.actor, upload=form.cleaned_data["file"])
        except ValidationError as exc:
            for problems in exc.message_dict.values():
                for problem in problems:
                    messages.error(request, problem)
        else:
            return redirect("contacts:import", import_id=job.pk)
    else:
        messages.error(request, "Choose a CSV file to import.")
    return redirect("contacts:list")


def _import(request: HttpRequest, import_id: Any) -> ContactImport:
    job = ContactImport.objects.filter(organisation=request.actor.organisation, pk=import_id).first()
    if job is None:
        raise Http404("No such import")
    return job


@member_required
def contact_import_detail_view(request: HttpRequest, import_id: Any) -> HttpResponse:
    job = _import(request, import_id)
    template = "contacts/_import_progress.html" if request.headers.get("HX-Request") else "contacts/import.html"
    return render(request, template, {"job": job})


@member_required
def contact_import_report_view(request: HttpRequest, import_id: Any) -> HttpResponse:
    job = _import(request, import_id)
    response = HttpResponse("row,external_id,reasons\r\n" + job.rejected_report, content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="rejected-{job.pk}.csv"'
    return response


@member_required
def event_type_list_view(request: HttpRequest) -> HttpResponse:
    """Event types the organisation sends: observed properties, totals and recent volume."""
    organisation = request.actor.organisation
    now = timezone.now()
    with connection.cursor() as cursor:
        # Reads the (organisation, type, occurred_at) index: one range per type.
        cursor.execute(
            "SELECT type, count(*) FILTER (WHERE occurred_at >= %s), count(*) FROM audiences_event"
            " WHERE organisation_id = %s AND occurred_at >= %s GROUP BY type",
            [now - timedelta(hours=24), str(organisation.pk), now - timedelta(days=7)],
        )
        recent = {name: (day, week) for name, day, week in cursor.fetchall()}
    types = [
        {
            "type": event_type,
            "last_24h": recent.get(event_type.name, (0, 0))[0],
            "last_7d": recent.get(event_type.name, (0, 0))[1],
        }
        for event_type in EventType.objects.filter(organisation=organisation)
    ]
    return render(request, "events/list.html", {"types": types})
