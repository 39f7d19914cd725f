from __future__ import annotations

from typing import Any

from django import forms

from campaigns.models import CampaignType, Channel


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            if isinstance(field.widget, (forms.TextInput, forms.Textarea, forms.NumberInput, forms.DateTimeInput)):
                field.widget.attrs.setdefault("class", "input")
            field.widget.attrs.setdefault("aria-describedby", f"{name}-help")

    def add_service_errors(self, errors: dict[str, list[str]]) -> None:
        for field, messages in errors.items():
            target = field if field in self.fields else None
            for message in messages:
                self.add_error(target, message if target else f"{field}: {message}")
