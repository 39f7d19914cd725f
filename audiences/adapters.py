"""Adapters for the isA_Data services the PRD names, each behind a small interface.

- user_360: enriches a contact's template variables (enriched_profile documents the merge; our contact's identity
  and addresses stay the delivery truth). Embedded default: our contact store. HTTP: USER_360_URL.
- intelligent_query: resolves external segments, by query or by reference to one of its pre-built segments (which it
  lists). Embedded default: our own rules engine (the query is a JSON rule tree). HTTP: INTELLIGENT_QUERY_URL.

Settings pick the implementation; the HTTP clients use explicit timeouts and a bearer token, and every failure
(refused, timed out, 5xx, an answer that is not the documented document) is an AdapterError saying which, with
`transient` telling callers whether waiting may help. Tested against local fakes (tests/fake_isa.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from django.conf import settings

from audiences.models import Contact, Organisation


class AdapterError(RuntimeError):
    """The external service failed or answered something we cannot use. `transient`: it may well answer next time
    (unreachable, timed out, 429 or 5xx), so whatever waits on it retries instead of failing."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


def http_failure(service: str, exc: httpx.HTTPError) -> AdapterError:
    """An httpx error as the adapter error callers show: "timed out" or "unreachable" with the cause."""
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
    return AdapterError(f"{service} {what}: {str(exc) or type(exc).__name__}")


def status_failure(service: str, response: httpx.Response) -> AdapterError:
    """A non-2xx answer: transient for 429 and 5xx, permanent for any other status."""
    detail = response.text[:200].strip()
    transient = response.status_code == 429 or response.status_code >= 500
    return AdapterError(
        f"{service} answered {response.status_code}" + (f": {detail}" if detail else ""), transient=transient
    )


def _http_client(base_url: str, token: str, timeout: float) -> httpx.Client:
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        timeout=httpx.Timeout(timeout),
        headers={"Authorization": f"Bearer {token}"} if token else {},
        follow_redirects=False,
    )


# --- user_360 -------------------------------------------------------------------------------------------------

# Our contact's identity and addresses: the delivery truth. A user_360 profile never changes them (the address a
# message goes to is the one consent and suppression were checked against).
DELIVERY_FIELDS = ("external_id", "email", "phone")


class UserProfileProvider(Protocol):
    embedded: bool

    def profiles(self, organisation: Organisation, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...


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


def enriched_profile(ours: Mapping[str, Any], external: Mapping[str, Any] | None) -> dict[str, Any]:
    """The documented merge of our contact and its user_360 profile, the `contact` templates see.

    Every field of the profile is added under its own name (first_name, a `loyalty` object…), over ours, except
    the delivery fields (external_id, email, phone), which are always our contact's; `attributes` merge key by
    key, the profile's keys over ours. No profile (user_360 does not know the contact): our contact as it is."""
    merged = dict(ours)
    if not external:
        return merged
    for name, value in external.items():
        if name in DELIVERY_FIELDS:
            continue
        if name == "attributes" and isinstance(value, Mapping):
            merged["attributes"] = {**(ours.get("attributes") or {}), **value}
        elif name != "attributes":
            merged[name] = value
    return merged


class EmbeddedUserProfiles:
    """Our contact store is the profile: nothing to add."""

    embedded = True

    def profiles(self, organisation: Organisation, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        contacts = Contact.objects.filter(organisation=organisation, external_id__in=list(external_ids))
        return {contact.external_id: contact_profile(contact) for contact in contacts}


class HttpUserProfiles:
    """POST {base}/organisations/{slug}/users/batch {"external_ids": [...]} → {"users": [profile, ...]}, each
    profile an object with its `external_id`; users it does not know are left out. One request per
    BATCH_SIZE contacts, so a claimed batch of messages costs one or two requests, never one per message."""

    embedded = False
    BATCH_SIZE = 500

    def __init__(self, base_url: str, token: str = "", timeout: float = 5.0, client: httpx.Client | None = None):
        self.client = client or _http_client(base_url, token, timeout)

    def profiles(self, organisation: Organisation, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(external_ids))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), self.BATCH_SIZE):
            found.update(self._batch(organisation, wanted[start : start + self.BATCH_SIZE]))
        return found

    def _batch(self, organisation: Organisation, external_ids: list[str]) -> dict[str, dict[str, Any]]:
        try:
            response = self.client.post(
                f"/organisations/{quote(organisation.slug)}/users/batch", json={"external_ids": external_ids}
            )
        except httpx.HTTPError as exc:
            raise http_failure("user_360", exc) from exc
        if response.status_code != 200:
            raise status_failure("user_360", response)
        try:
            users = response.json()["users"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AdapterError(
                'user_360 answered something other than a {"users": [...]} document', transient=False
            ) from exc
        if not isinstance(users, list) or not all(
            isinstance(user, dict) and isinstance(user.get("external_id"), str) for user in users
        ):
            raise AdapterError("user_360 answered users that are not profiles with an external_id", transient=False)
        asked = set(external_ids)
        return {user["external_id"]: user for user in users if user["external_id"] in asked}


def user_profile_provider() -> UserProfileProvider:
    if settings.USER_360_URL:
        return HttpUserProfiles(settings.USER_360_URL, settings.USER_360_TOKEN, settings.EXTERNAL_HTTP_TIMEOUT)
    return EmbeddedUserProfiles()


def template_profiles(organisation: Organisation, ours: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The `contact` each of these contacts' messages are rendered with (enriched_profile), in their order: one
    user_360 request for all of them when one is configured, our own profiles otherwise. Real sends
    (delivery.sending), previews, test sends and seed copies all read it here. AdapterError when user_360 fails."""
    provider = user_profile_provider()
    if provider.embedded or not ours:
        return [dict(profile) for profile in ours]
    external = provider.profiles(organisation, [profile["external_id"] for profile in ours])
    return [enriched_profile(profile, external.get(profile["external_id"])) for profile in ours]


def template_profile(contact: Contact) -> dict[str, Any]:
    """One contact's template profile (template_profiles)."""
    return template_profiles(contact.organisation, [contact_profile(contact)])[0]


# --- intelligent_query ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrebuiltSegment:
    """A segment the service keeps itself (AC-003.1): picked by reference, resolved when a campaign runs."""

    id: str
    name: str
    size: int | None
    updated_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "size": self.size, "updated_at": self.updated_at}


class SegmentQueryProvider(Protocol):
    embedded: bool

    def resolve(self, organisation: Organisation, query: str) -> Iterator[str]: ...

    def resolve_segment(self, organisation: Organisation, segment_id: str) -> Iterator[str]: ...

    def segments(self, organisation: Organisation) -> list[PrebuiltSegment]: ...


class EmbeddedSegmentQuery:
    """Our own rules engine: the segment engine compiles the query itself, nothing is fetched. It keeps no
    pre-built segments of its own (our segments are the organisation's Segment rows)."""

    embedded = True

    def resolve(self, organisation: Organisation, query: str) -> Iterator[str]:
        from audiences.segments import compile_rules, matching_contacts, parse_external_query

        condition = compile_rules(organisation, parse_external_query(query))
        yield from matching_contacts(organisation, condition).values_list("external_id", flat=True).iterator(5000)

    def resolve_segment(self, organisation: Organisation, segment_id: str) -> Iterator[str]:
        raise AdapterError("The embedded audience service keeps no pre-built segments", transient=False)

    def segments(self, organisation: Organisation) -> list[PrebuiltSegment]:
        return []


class HttpSegmentQuery:
    """POST {base}/query {"organisation": slug, "query": q, "cursor": c} → {"user_ids": [...], "next_cursor": c|null};
    a pre-built segment the same way with {"segment": id} in place of the query. GET {base}/segments?organisation=slug
    → {"segments": [{"id", "name", "size", "updated_at"}]}.

    Pages are followed until next_cursor is null (at most MAX_PAGES, a guard against a looping server)."""

    embedded = False
    MAX_PAGES = 10_000
    SERVICE = "intelligent_query"

    def __init__(self, base_url: str, token: str = "", timeout: float = 30.0, client: httpx.Client | None = None):
        self.client = client or _http_client(base_url, token, timeout)

    def _answer(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise http_failure(self.SERVICE, exc) from exc
        if response.status_code != 200:
            raise status_failure(self.SERVICE, response)
        try:
            return response.json()
        except ValueError as exc:
            raise AdapterError(f"{self.SERVICE} answered something other than JSON", transient=False) from exc

    def _pages(self, organisation: Organisation, what: dict[str, str]) -> Iterator[str]:
        cursor: str | None = None
        for _ in range(self.MAX_PAGES):
            page = self._answer("POST", "/query", json={"organisation": organisation.slug, **what, "cursor": cursor})
            user_ids = page.get("user_ids") if isinstance(page, dict) else None
            if not isinstance(user_ids, list):
                raise AdapterError(f"{self.SERVICE} answered a page without a user_ids list", transient=False)
            cursor = page.get("next_cursor")
            yield from (str(user_id) for user_id in user_ids)
            if not cursor:
                return
        raise AdapterError(f"{self.SERVICE} kept paging past the limit", transient=False)

    def resolve(self, organisation: Organisation, query: str) -> Iterator[str]:
        return self._pages(organisation, {"query": query})

    def resolve_segment(self, organisation: Organisation, segment_id: str) -> Iterator[str]:
        return self._pages(organisation, {"segment": segment_id})

    def segments(self, organisation: Organisation) -> list[PrebuiltSegment]:
        data = self._answer("GET", "/segments", params={"organisation": organisation.slug})
        items = data.get("segments") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("id") for i in items):
            raise AdapterError(
                f"{self.SERVICE} answered segments that are not a list of objects with ids", transient=False
            )
        return [
            PrebuiltSegment(
                id=str(item["id"])[:200],
                name=str(item.get("name") or item["id"])[:200],
                size=item["size"] if isinstance(item.get("size"), int) else None,
                updated_at=str(item["updated_at"]) if item.get("updated_at") else None,
            )
            for item in items
        ]


def segment_query_provider() -> SegmentQueryProvider:
    if settings.INTELLIGENT_QUERY_URL:
        return HttpSegmentQuery(
            settings.INTELLIGENT_QUERY_URL, settings.INTELLIGENT_QUERY_TOKEN, settings.EXTERNAL_HTTP_TIMEOUT
        )
    return EmbeddedSegmentQuery()
