"""Reusable content templates behind an isA_Creative adapter.

Embedded default: the organisation's own ContentTemplate rows. With ISA_CREATIVE_URL set, an HTTP client reads the
external library: GET {base}/organisations/{slug}/templates?channel=… → {"templates": [{id, name, channel,
content, description}]} and GET …/templates/{id} → one template. Both return the same dict shape.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from audiences.access import Actor, require_campaign_write
from audiences.adapters import AdapterError
from audiences.models import Organisation
from campaigns.content.channels import FIELDS, content_problems
from campaigns.models import Channel, ContentTemplate
from compliance.audit import audit_record


def template_dict(template: ContentTemplate) -> dict[str, Any]:
    return {
        "id": str(template.pk),
        "name": template.name,
        "channel": template.channel,
        "description": template.description,
        "content": template.content,
        "source": "embedded",
    }


class TemplateLibrary(Protocol):
    embedded: bool

    def list(self, organisation: Organisation, channel: str | None = None) -> list[dict[str, Any]]: ...

    def get(self, organisation: Organisation, template_id: str) -> dict[str, Any] | None: ...


class EmbeddedLibrary:
    embedded = True

    def list(self, organisation: Organisation, channel: str | None = None) -> list[dict[str, Any]]:
        rows = ContentTemplate.objects.filter(organisation=organisation)
        if channel:
            rows = rows.filter(channel=channel)
        return [template_dict(row) for row in rows]

    def get(self, organisation: Organisation, template_id: str) -> dict[str, Any] | None:
        try:
            row = ContentTemplate.objects.filter(organisation=organisation, pk=template_id).first()
        except ValidationError:
            return None
        return template_dict(row) if row else None


class HttpLibrary:
    embedded = False

    def __init__(self, base_url: str, token: str = "", timeout: float = 5.0) -> None:
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )

    def _get(self, path: str, **params: str) -> Any:
        try:
            response = self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise AdapterError(f"isA_Creative unreachable: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise AdapterError(f"isA_Creative answered {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise AdapterError("isA_Creative answered something other than JSON") from exc

    @staticmethod
    def _clean(item: Any) -> dict[str, Any] | None:
        if not isinstance(item, dict) or item.get("channel") not in Channel.values:
            return None
        content = item.get("content") if isinstance(item.get("content"), dict) else {}
        # Only fields our channels know; anything else from the library is dropped, not trusted.
        content = {k: v for k, v in content.items() if k in FIELDS[item["channel"]]}
        return {
            "id": str(item.get("id", "")),
            "name": str(item.get("name", ""))[:200],
            "channel": item["channel"],
            "description": str(item.get("description", ""))[:2000],
            "content": content,
            "source": "isA_Creative",
        }

    def list(self, organisation: Organisation, channel: str | None = None) -> list[dict[str, Any]]:
        data = self._get(
            f"/organisations/{quote(organisation.slug)}/templates", **({"channel": channel} if channel else {})
        )
        items = (data or {}).get("templates", []) if isinstance(data, dict) else []
        return [clean for item in items if (clean := self._clean(item))]

    def get(self, organisation: Organisation, template_id: str) -> dict[str, Any] | None:
        data = self._get(f"/organisations/{quote(organisation.slug)}/templates/{quote(template_id, safe='')}")
        return self._clean(data) if data else None


def template_library() -> TemplateLibrary:
    if settings.ISA_CREATIVE_URL:
        return HttpLibrary(settings.ISA_CREATIVE_URL, settings.ISA_CREATIVE_TOKEN, settings.EXTERNAL_HTTP_TIMEOUT)
    return EmbeddedLibrary()


@transaction.atomic
def content_template_create(
    *, actor: Actor, name: str, channel: str, content: dict[str, Any], description: str = ""
) -> ContentTemplate:
    require_campaign_write(actor)
    errors: dict[str, list[str]] = {}
    if not name.strip():
        errors["name"] = ["This field may not be blank."]
    elif ContentTemplate.objects.filter(
        organisation=actor.organisation, channel=channel, name__iexact=name.strip()
    ).exists():
        errors["name"] = ["A template with this name already exists for this channel."]
    if channel not in Channel.values:
        errors["channel"] = ["Unknown channel."]
    else:
        problems = content_problems(
            channel, content, allowed_senders=[actor.organisation.sender_email, *actor.organisation.verified_senders]
        )
        if problems:
            errors["content"] = problems
    if errors:
        raise ValidationError(errors)
    template = ContentTemplate(
        organisation=actor.organisation,
        name=name.strip(),
        channel=channel,
        content=content,
        description=description,
        created_by=actor.user,
    )
    actor.stamp(template, "created")
    template.save()
    audit_record(actor=actor, action="content_template.create", target=template, details={"channel": channel})
    return template


@transaction.atomic
def content_template_delete(*, actor: Actor, template: ContentTemplate) -> None:
    require_campaign_write(actor)
    actor.stamp(template, "deleted")
    audit_record(actor=actor, action="content_template.delete", target=template)
    template.delete()
