from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from audiences import services
from audiences.access import ORGANISATION_ADMINS
from audiences.decorators import member_required
from audiences.models import ApiKey, Membership, Role


@require_POST
@login_required
def organisation_switch_view(request: HttpRequest) -> HttpResponse:
    organisation_id = request.POST.get("organisation_id", "")
    membership = Membership.objects.filter(user=request.user, organisation_id__in=_valid_uuid(organisation_id)).first()
    if membership is None:
        raise Http404("No such organisation")
    request.session["organisation_id"] = str(membership.organisation_id)
    messages.info(request, f"Now working in {membership.organisation.name}.")
    # Always land on the campaign list: the page we came from belongs to the previous organisation.
    return redirect("campaigns:list")


def _valid_uuid(value: str) -> list[str]:
    import uuid

    try:
        return [str(uuid.UUID(value))]
    except ValueError:
        return []


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"class": "input", "placeholder": "CI deploy"}))
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MARKETER)


@member_required
def api_key_list_view(request: HttpRequest) -> HttpResponse:
    if request.actor.role not in ORGANISATION_ADMINS:
        raise PermissionDenied
    form = ApiKeyForm(request.POST or None)
    issued = None
    if request.method == "POST" and form.is_valid():
        issued = services.api_key_create(actor=request.actor, **form.cleaned_data)
        form = ApiKeyForm()
    keys = ApiKey.objects.filter(organisation=request.actor.organisation).select_related("created_by")
    return render(request, "settings/api_keys.html", {"form": form, "keys": keys, "issued": issued})


@require_POST
@member_required
def api_key_revoke_view(request: HttpRequest, api_key_id: Any) -> HttpResponse:
    api_key = ApiKey.objects.filter(organisation=request.actor.organisation, pk=api_key_id).first()
    if api_key is None:
        raise Http404("No such key")
    services.api_key_revoke(actor=request.actor, api_key=api_key)
    messages.success(request, f"Revoked {api_key.name}.")
    return redirect("api-keys")
