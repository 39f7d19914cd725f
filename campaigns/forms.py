from __future__ import annotations

from typing import Any
from uuid import UUID

from django import forms
from django.core.exceptions import PermissionDenied, ValidationError

from audiences.access import Actor
from audiences.adapters import AdapterError
from audiences.models import Organisation, Segment
from audiences.services import prebuilt_segments, segment_add_prebuilt
from campaigns.models import AudienceCombine, CampaignType, Channel
from campaigns.services import validate_seed_phones

PREBUILT_PREFIX = "isa:"


def prebuilt_label(item: dict[str, Any]) -> str:
    size = f"{item['size']:,} contacts" if item.get("size") is not None else "size unknown"
    updated = f", updated {str(item['updated_at'])[:10]}" if item.get("updated_at") else ""
    return f"{item['name']} (isA_Data: {size}{updated})"


class CampaignForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(max_length=5000, required=False, widget=forms.Textarea(attrs={"rows": 3}))
    type = forms.ChoiceField(choices=CampaignType.choices, initial=CampaignType.SCHEDULED, widget=forms.RadioSelect)
    channels = forms.MultipleChoiceField(choices=Channel.choices, required=False, widget=forms.CheckboxSelectMultiple)
    scheduled_at = forms.DateTimeField(
        required=False,
        label="Send at",
        help_text="In the organisation's timezone. Needed to schedule; at least 5 minutes ahead.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    messages_per_minute = forms.IntegerField(min_value=1, required=False, help_text="Empty: the organisation default.")
    messages_per_hour = forms.IntegerField(min_value=1, required=False, help_text="Empty: the organisation default.")
    send_window_start = forms.TimeField(
        required=False,
        label="Send only from",
        help_text="Daily window in each recipient's own timezone (may cross midnight). Empty: any time.",
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
    )
    send_window_end = forms.TimeField(
        required=False, label="Until", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M")
    )
    skip_weekends = forms.BooleanField(required=False, label="Not on Saturdays and Sundays (recipient's time)")
    local_send_time = forms.TimeField(
        required=False,
        label="Deliver at local time",
        help_text="e.g. 09:00 wherever each recipient is (the organisation's timezone for contacts without one).",
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
    )

    category = forms.ChoiceField(
        choices=[("marketing", "Marketing"), ("transactional", "Transactional")],
        initial="marketing",
        required=False,
        help_text="Transactional messages (receipts, password resets) never count against frequency caps.",
    )
    bypass_frequency_cap = forms.BooleanField(required=False, label="Ignore the organisation's frequency caps")
    conversion_event = forms.CharField(
        required=False,
        max_length=100,
        label="Conversion event",
        help_text="An event of this type within the attribution window after a message counts as a conversion.",
        widget=forms.TextInput(attrs={"list": "event-types"}),
    )
    attribution_days = forms.IntegerField(
        required=False, min_value=1, max_value=30, initial=7, label="Attribution window (days)"
    )
    attribution_model = forms.ChoiceField(
        choices=[("last_touch", "Last touch"), ("first_touch", "First touch"), ("linear", "Linear")],
        initial="last_touch",
        required=False,
        label="Attribution model",
        help_text="Which of the contact's messages in the window get the credit (linear: all, value split evenly).",
    )
    auto_winner_enabled = forms.BooleanField(required=False, label="Pick the winning variant automatically")
    auto_winner_metric = forms.ChoiceField(
        choices=[("click", "Click rate (people)"), ("conversion", "Conversion rate"), ("open", "Open rate (people)")],
        initial="click",
        required=False,
        label="Auto-winner metric",
        help_text="Clicks or conversions are the safer choice: privacy proxies open on people's behalf and image "
        "blocking hides real opens.",
    )
    auto_winner_level = forms.TypedChoiceField(
        choices=[(90, "90 %"), (95, "95 %"), (99, "99 %")],
        coerce=int,
        initial=95,
        required=False,
        empty_value=95,
        label="Auto-winner significance level",
    )
    auto_winner_min_sample = forms.IntegerField(
        required=False, min_value=100, initial=1000, label="Auto-winner minimum delivered per variant"
    )
    experiment_test_percent = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=90,
        initial=0,
        label="Test share (% of the audience)",
        help_text="Sent first, split across the variants; the winner then goes to the rest. 0: no test share.",
    )
    experiment_window_hours = forms.IntegerField(
        required=False, min_value=1, max_value=720, initial=4, label="Test window (hours)"
    )
    experiment_decide = forms.ChoiceField(
        choices=[
            ("sequential", "As soon as a winner is significant"),
            ("window_end", "Once, at the end of the window"),
        ],
        initial="sequential",
        required=False,
        label="Decide",
    )
    experiment_fallback = forms.ChoiceField(
        choices=[("best_observed", "The best observed variant"), ("variant", "A chosen variant")],
        initial="best_observed",
        required=False,
        label="If nothing wins by the window's end, send",
    )
    experiment_fallback_variant = forms.CharField(max_length=100, required=False, label="Chosen variant (name)")
    trigger_event = forms.CharField(
        max_length=100,
        required=False,
        label="Triggered by event",
        help_text="Triggered campaigns: the event type (see Events).",
        widget=forms.TextInput(attrs={"list": "event-types"}),
    )
    trigger_conditions = forms.JSONField(
        required=False,
        label="When the event's properties match",
        help_text='Optional, e.g. {"and": [{"property": "total", "op": "gt", "value": 50}]}.',
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "input code"}),
    )
    trigger_delay_seconds = forms.IntegerField(
        min_value=0,
        max_value=30 * 24 * 3600,
        required=False,
        initial=0,
        label="Delay (seconds)",
        help_text="0 sends at once; at most 30 days (2,592,000).",
    )
    quiet_hours_start = forms.TimeField(
        required=False,
        label="Quiet hours from",
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
        help_text="In the recipient's timezone. Empty: the organisation's default.",
    )
    quiet_hours_end = forms.TimeField(
        required=False, label="Quiet hours until", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M")
    )
    quiet_hours_policy = forms.ChoiceField(
        choices=[("defer", "Send when quiet hours end"), ("skip", "Skip the send")],
        initial="defer",
        label="During quiet hours",
        required=False,
    )
    frequency_limit = forms.ChoiceField(
        choices=[
            ("none", "No limit"),
            ("1h", "Once per hour"),
            ("24h", "Once per 24 hours"),
            ("7d", "Once per 7 days"),
            ("30d", "Once per 30 days"),
            ("ever", "Once ever"),
        ],
        initial="none",
        label="Per contact",
        required=False,
    )

    tracking_enabled = forms.BooleanField(
        required=False,
        initial=True,
        label="Track opens and clicks",
        help_text="Off: links are not rewritten and no open pixel is added (privacy-sensitive campaigns).",
    )
    seed_emails = forms.CharField(
        required=False,
        label="Seed list",
        help_text="Addresses that receive test sends, comma or newline separated (at most 20).",
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    seed_phones = forms.CharField(
        required=False,
        label="Seed phones",
        help_text="Phones (E.164, e.g. +447700900123) that receive SMS and WhatsApp test sends (at most 20).",
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    sms_allow_multipart = forms.BooleanField(
        required=False,
        label="Allow multi-part SMS",
        help_text="Up to 6 parts (153 GSM-7 or 67 UCS-2 characters each); otherwise one SMS of 160 / 70.",
    )
    seed_copy_every_send = forms.BooleanField(
        required=False,
        label="Seeds get a copy of every send",
        help_text="Each run also sends every variant once to the seed list and phones, as the recipients see it.",
    )

    include_segments = forms.MultipleChoiceField(
        required=False, label="Send to members of", widget=forms.SelectMultiple(attrs={"size": 5})
    )
    audience_combine = forms.ChoiceField(
        choices=AudienceCombine.choices,
        initial=AudienceCombine.OR,
        required=False,
        label="Combine segments",
        widget=forms.RadioSelect,
    )
    audience_rules = forms.JSONField(
        required=False,
        label="And who match these rules",
        help_text='Optional rule tree, e.g. {"field": "attributes.plan", "op": "eq", "value": "pro"}.',
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "input code"}),
    )
    exclude_segments = forms.MultipleChoiceField(
        required=False, label="Except members of", widget=forms.SelectMultiple(attrs={"size": 4})
    )
    holdout_percent = forms.DecimalField(
        min_value=0,
        max_value=20,
        decimal_places=2,
        required=False,
        initial=0,
        label="Holdout %",
        help_text="0-20 % of the audience kept as a control group: measured, sent nothing.",
    )

    AUDIENCE_FIELDS = ("include_segments", "audience_combine", "audience_rules", "exclude_segments", "holdout_percent")

    def __init__(
        self,
        *args: Any,
        organisation: Organisation,
        actor: Actor | None = None,
        prebuilt: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.actor = actor
        choices: list[Any] = [
            (str(pk), name)
            for pk, name in Segment.objects.filter(organisation=organisation).order_by("name").values_list("pk", "name")
        ]
        self.fields["exclude_segments"].choices = list(choices)
        # The audience service's pre-built segments not picked yet (AC-003.1), offered beside ours on the form's
        # page ("isa:<id>"); one chosen is picked when the form is cleaned (audiences.services.segment_add_prebuilt).
        self.prebuilt_problem = ""
        offered: list[tuple[str, str]] = []
        if prebuilt:
            try:
                offered = [
                    (f"{PREBUILT_PREFIX}{item['id']}", prebuilt_label(item))
                    for item in prebuilt_segments(organisation)
                    if item["segment"] is None
                ]
            except AdapterError as exc:
                self.prebuilt_problem = f"The audience service's pre-built segments cannot be listed now: {exc}"
        posted = self.data.getlist(self.add_prefix("include_segments")) if hasattr(self.data, "getlist") else []
        known = {value for value, _ in offered}
        offered += [
            (v, v.removeprefix(PREBUILT_PREFIX)) for v in posted if v.startswith(PREBUILT_PREFIX) and v not in known
        ]
        self.fields["include_segments"].choices = (
            [*choices, ("isA_Data pre-built segments", offered)] if offered else choices
        )
        for name, field in self.fields.items():
            if isinstance(field.widget, (forms.TextInput, forms.Textarea, forms.NumberInput, forms.DateTimeInput)):
                field.widget.attrs.setdefault("class", "input")
            field.widget.attrs.setdefault("aria-describedby", f"{name}-help")

    def clean_include_segments(self) -> list[str]:
        chosen = []
        for value in self.cleaned_data.get("include_segments") or []:
            if not value.startswith(PREBUILT_PREFIX):
                chosen.append(value)
                continue
            if self.actor is None:
                raise ValidationError("Pre-built segments are picked on the campaign's page.")
            try:
                segment, _ = segment_add_prebuilt(actor=self.actor, external_segment_id=value[len(PREBUILT_PREFIX) :])
            except AdapterError as exc:
                raise ValidationError(f"The audience service is unavailable: {exc}") from exc
            except PermissionDenied as exc:
                raise ValidationError("Your role cannot add segments.") from exc
            chosen.append(str(segment.pk))
        return chosen

    def clean_seed_emails(self) -> list[str]:
        raw = self.cleaned_data.get("seed_emails") or ""
        addresses = [a.strip() for a in raw.replace(",", "\n").splitlines() if a.strip()]
        if len(addresses) > 20:
            raise forms.ValidationError("At most 20 addresses.")
        field = forms.EmailField()
        bad = []
        for address in addresses:
            try:
                field.clean(address)
            except forms.ValidationError:
                bad.append(address)
        if bad:
            raise forms.ValidationError(f"Not email addresses: {', '.join(bad)}.")
        return addresses

    def clean_seed_phones(self) -> list[str]:
        raw = self.cleaned_data.get("seed_phones") or ""
        phones = [p.strip() for p in raw.replace(",", "\n").splitlines() if p.strip()]
        try:
            return validate_seed_phones(phones)
        except ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["seed_phones"]) from exc

    def clean_trigger_delay_seconds(self) -> int:
        return self.cleaned_data.get("trigger_delay_seconds") or 0

    def clean_category(self) -> str:
        return self.cleaned_data.get("category") or "marketing"

    def clean_quiet_hours_policy(self) -> str:
        return self.cleaned_data.get("quiet_hours_policy") or "defer"

    def clean_frequency_limit(self) -> str:
        return self.cleaned_data.get("frequency_limit") or "none"

    def clean_attribution_days(self) -> int:
        return self.cleaned_data.get("attribution_days") or 7

    def clean_attribution_model(self) -> str:
        return self.cleaned_data.get("attribution_model") or "last_touch"

    def clean_auto_winner_metric(self) -> str:
        return self.cleaned_data.get("auto_winner_metric") or "click"

    def clean_auto_winner_min_sample(self) -> int:
        return self.cleaned_data.get("auto_winner_min_sample") or 1000

    def clean_experiment_test_percent(self) -> int:
        return self.cleaned_data.get("experiment_test_percent") or 0

    def clean_experiment_window_hours(self) -> int:
        return self.cleaned_data.get("experiment_window_hours") or 4

    def clean_experiment_decide(self) -> str:
        return self.cleaned_data.get("experiment_decide") or "sequential"

    def clean_experiment_fallback(self) -> str:
        return self.cleaned_data.get("experiment_fallback") or "best_observed"

    def campaign_data(self) -> dict[str, Any]:
        """cleaned_data split into the campaign fields and its audience, as the services take them."""
        data = {k: v for k, v in self.cleaned_data.items() if k not in self.AUDIENCE_FIELDS}
        data["audience"] = {
            "include": [UUID(x) for x in self.cleaned_data.get("include_segments") or []],
            "exclude": [UUID(x) for x in self.cleaned_data.get("exclude_segments") or []],
            "combine": self.cleaned_data.get("audience_combine") or AudienceCombine.OR,
            "rules": self.cleaned_data.get("audience_rules") or None,
            "holdout_percent": self.cleaned_data.get("holdout_percent") or 0,
        }
        return data

    SERVICE_FIELD_MAP = {
        "audience.include": "include_segments",
        "audience.exclude": "exclude_segments",
        "audience.combine": "audience_combine",
        "audience.rules": "audience_rules",
        "audience.holdout_percent": "holdout_percent",
    }

    def add_service_errors(self, errors: dict[str, list[Any]]) -> None:
        for field, messages in errors.items():
            target = self.SERVICE_FIELD_MAP.get(field, field)
            target = target if target in self.fields else None
            for message in messages:
                self.add_error(target, message if target else f"{field}: {message}")
