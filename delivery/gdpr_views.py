"""Console GDPR actions on a contact's consent page: download the export, erase the contact."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from audiences.decorators import member_required
from audiences.models import Contact
from delivery import gdpr


@member_required
def contact_export_view(request: HttpRequest, contact_id: int) -> HttpResponse:
    try:
        data = gdpr.contact_export(actor=request.actor, contact_id=contact_id)
    except Contact.DoesNotExist as exc:
        raise Http404("No such contact") from exc
    response = HttpResponse(json.dumps(data, cls=DjangoJSONEncoder, indent=2), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="contact-{contact_id}.json"'
    return response


@member_required
@require_POST
def contact_erase_view(request: HttpRequest, contact_id: int) -> HttpResponse:
    if request.POST.get("confirm") != "erase":
        messages.error(request, "Type “erase” to confirm.")
        return redirect("compliance:contact", contact_id=contact_id)
    try:
        counts: dict[str, Any] = gdpr.contact_erase(actor=request.actor, contact_id=contact_id)
    except Contact.DoesNotExist as exc:
        raise Http404("No such contact") from exc
    messages.success(request, f"Contact erased; {counts['messages']} messages anonymised, metrics unchanged.")
    return redirect("contacts:list")
