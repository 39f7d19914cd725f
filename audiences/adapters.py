"""Adapters for the isA_Data services the PRD names, each behind a small interface.

- user_360: a contact's profile for templates. Embedded default: our contact store. HTTP: USER_360_URL.
- intelligent_query: resolves external segments. Embedded default: our own rules engine (the query is a JSON rule
  tree). HTTP: INTELLIGENT_QUERY_URL.

Settings pick the implementation; both HTTP clients use explicit timeouts and a bearer token, and are tested
against a local HTTP server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from django.conf import settings

from audiences.models import Contact, Organisation


class AdapterError(RuntimeError):
    """The external service failed or answered something we cannot use."""


# --- user_360 -------------------------------------------------------------------------------------------------


class UserProfileProvider(Protocol):
    def profile(self, organisation: Organisation, external_id: str) -> dict[str, Any] | None: ...


def contact_profile(contact: Contact) -> dict[str, Any]:
    return {
        "external_id": contact.external_id,
        "email": contact.email,
        "phone": contact.phone,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "timezone": contact.timezone,
        "locale": contact.locale,
        "attributes": dict(contact.attributes),
        "created_at": contact.created_at.isoformat() if contact.created_at else None,
    }


class EmbeddedUserProfiles:
    embedded = True

    def profile(self, organisation: Organisation, external_id: str) -> dict[str, Any] | None:
        contact = Contact.objects.filter(organisation=organisation, external_id=external_id).first()
        return contact_profile(contact) if contact else None


class HttpUserProfiles:
    """GET {base}/organisations/{slug}/users/{external_id} → a profile object (404: unknown user)."""

    embedded = False

    def __init__(self, base_url: str, token: str = "", timeout: float = 5.0, client: httpx.Client | None = None):
        self.client = client or httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout),
            headers={"Authorization": f"Bearer {token}"} if token else {},
            follow_redirects=False,
        )

    def profile(self, organisation: Organisation, external_id: str) -> dict[str, Any] | None:
        try:
            response = self.client.get(f"/organisations/{quote(organisation.slug)}/users/{quote(external_id, safe='')}")
        except httpx.HTTPError as exc:
            raise AdapterError(f"user_360 unreachable: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise AdapterError(f"user_360 answered {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise AdapterError("user_360 answered something other than JSON") from exc
        if not isinstance(data, dict):
            raise AdapterError("user_360 profile is not an object")
        data.setdefault("attributes", {})
        return data


def user_profile_provider() -> UserProfileProvider:
    if settings.USER_360_URL:
        return HttpUserProfiles(settings.USER_360_URL, settings.USER_360_TOKEN, settings.EXTERNAL_HTTP_TIMEOUT)
    return EmbeddedUserProfiles()


def template_profile(contact: Contact) -> dict[str, Any]:
    """The profile a contact's messages are rendered with: the external user_360's when one is configured (our row
    when it does not know them), else our own. Real sends read it so (delivery.sending); previews, test sends and
    seed copies read it here, so they show what the contact will get. AdapterError when user_360 fails."""
    provider = user_profile_provider()
    if not getattr(provider, "embedded", True):
        external = provider.profile(contact.organisation, contact.external_id)
        if external is not None:
            return external
    return contact_profile(contact)


# --- intelligent_query ------------------------------------------------------------------------------------------


class SegmentQueryProvider(Protocol):
    embedded: bool

    def resolve(self, organisation: Organisation, query: str) -> Iterator[str]: ...


class EmbeddedSegmentQuery:
    """Our own rules engine: the segment engine compiles the query itself, nothing is fetched."""

    embedded = True

    def resolve(self, organisation: Organisation, query: str) -> Iterator[str]:
        from audiences.segments import compile_rules, matching_contacts, parse_external_query

        condition = compile_rules(organisation, parse_external_query(query))
        yield from matching_contacts(organisation, condition).values_list("external_id", flat=True).iterator(5000)


class HttpSegmentQuery:
    """POST {base}/query {"organisation": slug, "query": q, "cursor": c} → {"user_ids": [...], "next_cursor": c|null}.

    Pages are followed until next_cursor is null (at most MAX_PAGES, a guard against a looping server)."""

    embedded = False
    MAX_PAGES = 10_000

    def __init__(self, base_url: str, token: str = "", timeout: float = 30.0, client: httpx.Client | None = None):
        self.client = client or httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout),
            headers={"Authorization": f"Bearer {token}"} if token else {},
            follow_redirects=False,
        )

    def resolve(self, organisation: Organisation, query: str) -> Iterator[str]:
        cursor: str | None = None
        for _ in range(self.MAX_PAGES):
            try:
                response = self.client.post(
                    "/query", json={"organisation": organisation.slug, "query": query, "cursor": cursor}
                )
            except httpx.HTTPError as exc:
                raise AdapterError(f"intelligent_query unreachable: {exc}") from exc
            if response.status_code != 200:
                raise AdapterError(f"intelligent_query answered {response.status_code}: {response.text[:200]}")
            try:
                page = response.json()
                user_ids = page["user_ids"]
                cursor = page.get("next_cursor")
            except (ValueError, KeyError, TypeError) as exc:
                raise AdapterError("intelligent_query answered an unexpected document") from exc
            if not isinstance(user_ids, list):
                raise AdapterError("intelligent_query user_ids is not a list")
            yield from (str(user_id) for user_id in user_ids)
            if not cursor:
                return
        raise AdapterError("intelligent_query kept paging past the limit")


def segment_query_provider() -> SegmentQueryProvider:
    if settings.INTELLIGENT_QUERY_URL:
        return HttpSegmentQuery(
            settings.INTELLIGENT_QUERY_URL, settings.INTELLIGENT_QUERY_TOKEN, settings.EXTERNAL_HTTP_TIMEOUT
        )
    return EmbeddedSegmentQuery()
