"""Reusable content templates behind an isA_Creative adapter.

Embedded default: the organisation's own ContentTemplate rows. With ISA_CREATIVE_URL set, an HTTP client reads the
external library: GET {base}/organisations/{slug}/templates?channel=… → {"templates": [{id, name, channel,
content, description}]} and GET …/templates/{id} → one template. Both return the same dict shape. isA_Creative
failing (503, timing out, refusing, answering nonsense) is an AdapterError; its last answers are cached for then
(library_outage, library_template_fallback).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audiences.access import Actor, require_campaign_write
from audiences.adapters import AdapterError, http_failure, status_failure
from audiences.models import Organisation
from campaigns.content.channels import FIELDS, content_problems
from campaigns.models import Channel, ContentTemplate
from compliance.audit import audit_record

logger = logging.getLogger(__name__)


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
            raise http_failure("isA_Creative", exc) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise status_failure("isA_Creative", response)
        try:
            return response.json()
        except ValueError as exc:
            raise AdapterError("isA_Creative answered something other than JSON", transient=False) from exc

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
        items = data.get("templates") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise AdapterError('isA_Creative answered something other than a {"templates": [...]} document')
        templates = [clean for item in items if (clean := self._clean(item))]
        _remember(organisation, channel, templates)
        return templates

    def get(self, organisation: Organisation, template_id: str) -> dict[str, Any] | None:
        data = self._get(f"/organisations/{quote(organisation.slug)}/templates/{quote(template_id, safe='')}")
        if data is not None and not isinstance(data, dict):
            raise AdapterError("isA_Creative answered a template that is not an object", transient=False)
        found = self._clean(data) if data else None
        if found:
            _remember_one(organisation, found)
        return found


def template_library() -> TemplateLibrary:
    if settings.ISA_CREATIVE_URL:
        return HttpLibrary(settings.ISA_CREATIVE_URL, settings.ISA_CREATIVE_TOKEN, settings.EXTERNAL_HTTP_TIMEOUT)
    return EmbeddedLibrary()


# --- isA_Creative down: the last fetched templates, and our own library -----------------------------------------
#
# Every list or template isA_Creative answers is kept in the cache (Redis) for ISA_CREATIVE_CACHE_SECONDS; when it
# fails, the API answers 503 with the reason and these copies, and the console offers them beside the
# organisation's embedded templates, which never depend on the service.


def _list_key(organisation: Organisation, channel: str | None) -> str:
    return f"isa-creative:{organisation.pk}:list:{channel or ''}"


def _template_key(organisation: Organisation, template_id: str) -> str:
    return f"isa-creative:{organisation.pk}:template:{template_id}"


def _remember(organisation: Organisation, channel: str | None, templates: list[dict[str, Any]]) -> None:
    entries = {_template_key(organisation, t["id"]): t for t in templates}
    entries[_list_key(organisation, channel)] = {"templates": templates, "fetched_at": timezone.now().isoformat()}
    try:
        cache.set_many(entries, settings.ISA_CREATIVE_CACHE_SECONDS)
    except Exception as exc:  # Redis down is not the library down (config.outage): no copy kept this time
        logger.warning("isA_Creative templates not cached: %s", exc)


def _remember_one(organisation: Organisation, template: dict[str, Any]) -> None:
    try:
        cache.set(_template_key(organisation, template["id"]), template, settings.ISA_CREATIVE_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("isA_Creative template not cached: %s", exc)


def _cached(key: str) -> Any:
    try:
        return cache.get(key)
    except Exception as exc:
        logger.warning("isA_Creative cache unreadable: %s", exc)
        return None


@dataclass(frozen=True)
class LibraryOutage:
    """isA_Creative could not be read: why, its templates as last fetched (and when), and our embedded ones."""

    reason: str
    cached: list[dict[str, Any]]
    cached_at: str | None
    embedded: list[dict[str, Any]]

    @property
    def message(self) -> str:
        kept = f"the templates fetched at {self.cached_at}" if self.cached_at else "no earlier copy"
        return f"isA_Creative is unavailable ({self.reason}); showing {kept} and this organisation's own templates."

    def as_dict(self) -> dict[str, Any]:
        return {
            "detail": f"isA_Creative is unavailable: {self.reason}",
            "code": "isa_creative_unavailable",
            "cached": self.cached,
            "cached_at": self.cached_at,
            "embedded": self.embedded,
        }


def library_outage(organisation: Organisation, channel: str | None, exc: AdapterError) -> LibraryOutage:
    kept = _cached(_list_key(organisation, channel)) or {}
    return LibraryOutage(
        reason=str(exc),
        cached=list(kept.get("templates", [])),
        cached_at=kept.get("fetched_at"),
        embedded=EmbeddedLibrary().list(organisation, channel),
    )


def library_template_fallback(organisation: Organisation, template_id: str) -> dict[str, Any] | None:
    """With isA_Creative failing: the template as last fetched from it, else the organisation's own of that id."""
    return _cached(_template_key(organisation, template_id)) or EmbeddedLibrary().get(organisation, template_id)


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
