"""Console pages for sending domains: their DKIM keys, the DNS record to publish, and the record check."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_POST

from audiences.access import ORGANISATION_ADMINS
from audiences.decorators import member_required
from delivery import dkim
from delivery.models import SendingDomain


class SendingDomainForm(forms.Form):
    domain = forms.CharField(
        max_length=253,
        widget=forms.TextInput(attrs={"class": "input", "placeholder": "news.example.com", "autocomplete": "off"}),
        help_text="The domain of your From addresses. A key for example.com also signs mail from its subdomains.",
    )


def _domain_rows(organisation_id: Any) -> list[dict[str, Any]]:
    return [
        {
            "domain": sending_domain,
            "display": dkim.display_domain(sending_domain.domain),
            "value": dkim.dns_record_value(sending_domain.public_key),
            "strings": dkim.dns_record_strings(sending_domain.public_key),
            "zone_form": dkim.dns_record_zone_form(sending_domain.public_key),
        }
        for sending_domain in SendingDomain.objects.filter(organisation_id=organisation_id)
    ]


@member_required
def sending_domain_list_view(request: HttpRequest) -> HttpResponse:
    """Everyone in the organisation sees the domains and their records; admins add, rotate and delete keys."""
    can_edit = request.actor.role in ORGANISATION_ADMINS
    form = SendingDomainForm(request.POST or None)
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied
        if form.is_valid():
            try:
                sending_domain = dkim.sending_domain_create(actor=request.actor, domain=form.cleaned_data["domain"])
            except ValidationError as exc:
                for error in exc.message_dict.get("domain", exc.messages):
                    form.add_error("domain", error)
            else:
                messages.success(
                    request, f"Key created for {sending_domain.domain}: publish the record below, then check it."
                )
                return redirect("sending-domains")
    context = {"form": form, "can_edit": can_edit, "rows": _domain_rows(request.actor.organisation.pk)}
    return render(request, "settings/sending_domains.html", context, status=400 if form.errors else 200)


def _own_domain(request: HttpRequest, sending_domain_id: Any) -> SendingDomain:
    try:
        return dkim.sending_domain_get_for_actor(actor=request.actor, sending_domain_id=sending_domain_id)
    except SendingDomain.DoesNotExist as exc:
        raise Http404("No such sending domain") from exc


@require_POST
@member_required
def sending_domain_check_view(request: HttpRequest, sending_domain_id: Any) -> HttpResponse:
    sending_domain = dkim.sending_domain_check(sending_domain=_own_domain(request, sending_domain_id))
    level = messages.SUCCESS if sending_domain.check_status == SendingDomain.CheckStatus.VERIFIED else messages.WARNING
    messages.add_message(request, level, f"{sending_domain.domain}: {sending_domain.check_message}")
    return redirect("sending-domains")


@require_POST
@member_required
def sending_domain_rotate_view(request: HttpRequest, sending_domain_id: Any) -> HttpResponse:
    sending_domain = dkim.sending_domain_rotate_key(
        actor=request.actor, sending_domain=_own_domain(request, sending_domain_id)
    )
    messages.success(
        request, f"New key for {sending_domain.domain} under selector {sending_domain.selector}: publish its record."
    )
    return redirect("sending-domains")


@require_POST
@member_required
def sending_domain_delete_view(request: HttpRequest, sending_domain_id: Any) -> HttpResponse:
    sending_domain = _own_domain(request, sending_domain_id)
    dkim.sending_domain_delete(actor=request.actor, sending_domain=sending_domain)
    messages.success(request, f"Removed {sending_domain.domain}: its mail is no longer signed.")
    return redirect("sending-domains")


urlpatterns = [
    path("", sending_domain_list_view, name="sending-domains"),
    path("<uuid:sending_domain_id>/check/", sending_domain_check_view, name="sending-domain-check"),
    path("<uuid:sending_domain_id>/rotate/", sending_domain_rotate_view, name="sending-domain-rotate"),
    path("<uuid:sending_domain_id>/delete/", sending_domain_delete_view, name="sending-domain-delete"),
]
