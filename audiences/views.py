from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from audiences import services
from audiences.access import ORGANISATION_ADMINS
from audiences.currencies import currency_codes
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


# audiences sits below campaigns, so the channel names are spelled out here (the same as campaigns.models.Channel).
CHANNEL_LABELS = [
    ("email", "Email"),
    ("sms", "SMS"),
    ("whatsapp", "WhatsApp"),
    ("in_app", "In-app"),
    ("webhook", "Webhook"),
]


class OrganisationSettingsForm(forms.Form):
    """The organisation's defaults; what campaigns inherit when they set nothing themselves."""

    name = forms.CharField(max_length=200)
    timezone = forms.CharField(max_length=64, help_text="IANA name, e.g. Europe/London.")
    default_messages_per_minute = forms.IntegerField(min_value=1, required=False, help_text="Empty: unlimited.")
    default_messages_per_hour = forms.IntegerField(min_value=1, required=False, help_text="Empty: unlimited.")
    default_quiet_hours_start = forms.TimeField(required=False, widget=forms.TimeInput(attrs={"type": "time"}))
    default_quiet_hours_end = forms.TimeField(required=False, widget=forms.TimeInput(attrs={"type": "time"}))
    sender_name = forms.CharField(max_length=200, required=False)
    sender_email = forms.EmailField(required=False)
    reply_to_email = forms.EmailField(required=False)
    sms_sender_id = forms.CharField(max_length=20, required=False)
    postal_address = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    currency = forms.ChoiceField(
        choices=[(code, code) for code in currency_codes()],
        required=False,
        help_text="ISO 4217: the currency conversion values are in, shown beside every amount in reports.",
    )
    global_control_percent = forms.DecimalField(
        min_value=0,
        max_value=20,
        max_digits=4,
        decimal_places=2,
        required=False,
        label="Global control group (%)",
        help_text="This share of contacts receives no marketing campaign, so the lift of all of them shows. 0: off.",
    )

    LIMIT_PREFIX = "limit_"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for channel, label in CHANNEL_LABELS:
            self.fields[f"{self.LIMIT_PREFIX}{channel}"] = forms.IntegerField(
                min_value=1,
                required=False,
                label=f"{label} provider limit (per minute)",
                help_text="Shared by every campaign. Empty: unlimited.",
            )

    def changes(self) -> dict[str, Any]:
        data = {k: v for k, v in self.cleaned_data.items() if not k.startswith(self.LIMIT_PREFIX)}
        for key in ("sender_name", "sender_email", "reply_to_email", "sms_sender_id", "postal_address"):
            data[key] = data.get(key) or ""
        data["global_control_percent"] = data.get("global_control_percent") or 0
        if not data.get("currency"):  # a form posted without it (older pages) keeps the current one
            data.pop("currency", None)
        data["channel_limits_per_minute"] = {
            k.removeprefix(self.LIMIT_PREFIX): v
            for k, v in self.cleaned_data.items()
            if k.startswith(self.LIMIT_PREFIX) and v
        }
        return data


@member_required
def organisation_settings_view(request: HttpRequest) -> HttpResponse:
    """Admins change the organisation's defaults; everyone else may look."""
    organisation = request.actor.organisation
    can_edit = request.actor.role in ORGANISATION_ADMINS
    initial = {
        field: getattr(organisation, field)
        for field in services.ORGANISATION_SETTINGS
        if field not in ("verified_senders", "channel_limits_per_minute")
    }
    initial["timezone"] = str(organisation.timezone)
    initial.update(
        {f"{OrganisationSettingsForm.LIMIT_PREFIX}{k}": v for k, v in organisation.channel_limits_per_minute.items()}
    )
    form = OrganisationSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied
        if form.is_valid():
            try:
                services.organisation_update(actor=request.actor, changes=form.changes())
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    for error in errors:
                        form.add_error(field if field in form.fields else None, error)
            else:
                messages.success(request, "Settings saved.")
                return redirect("organisation-settings")
    return render(
        request,
        "settings/organisation.html",
        {"form": form, "can_edit": can_edit},
        status=400 if form.errors else 200,
    )
