"""Every write checks the role (audiences.permissions), probed over the whole URL conf: every non-GET API route
refuses an analyst key with 403 (except the two documented POSTs that change nothing); analyst and compliance keys
cannot post receipts or inbound messages nor read the inbox; a provider key can do exactly those, end to end, and
every other route refuses it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.converters import UUIDConverter
from rest_framework.test import APIClient

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Membership, Role
from campaigns.models import Variant
from compliance.models import ContactPreference, Suppression
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory, issue_key

pytestmark = pytest.mark.django_db

# Non-GET routes an analyst may call: they change nothing (README, "Roles").
ANALYST_MAY_POST = {"campaign-preview", "segment-estimate-rules"}
# What a provider key is for.
PROVIDER_ROUTES = {"api-receipts", "api-inbound", "inbox-list", "inbox-unread-count", "inbox-read"}
READ_METHODS = {"get", "head", "options", "trace"}


@dataclass(frozen=True)
class Route:
    name: str
    url: str
    methods: tuple[str, ...]


def _walk(patterns: list, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern


def _sample(pattern: URLPattern, name: str) -> str:
    """A value for a URL parameter: the permission check runs before any object is looked up."""
    converter = getattr(pattern.pattern, "converters", {}).get(name)
    regex = pattern.pattern.regex.pattern
    if isinstance(converter, UUIDConverter) or f"(?P<{name}>[0-9a-fA-F-]{{36}})" in regex:
        return str(uuid.uuid4())
    return "1"  # an int, or any other id


def api_routes() -> list[Route]:
    routes = []
    for text, pattern in _walk(get_resolver().url_patterns):
        view = getattr(pattern.callback, "cls", None)
        if not text.startswith("api/v1/") or view is None or "(?P<format>" in pattern.pattern.regex.pattern:
            continue
        actions = getattr(pattern.callback, "actions", None)
        methods = list(actions) if actions else [m for m in view.http_method_names if hasattr(view, m)]
        methods = [m for m in methods if m in view.http_method_names and m != "options"]
        params = set(pattern.pattern.regex.groupindex)
        url = reverse(pattern.name, kwargs={param: _sample(pattern, param) for param in params})
        routes.append(Route(pattern.name, url, tuple(methods)))
    return routes


ROUTES = api_routes()
WRITES = [(r.name, r.url, m) for r in ROUTES for m in r.methods if m not in READ_METHODS]
ANALYST_REFUSED = [(name, url, method) for name, url, method in WRITES if name not in ANALYST_MAY_POST]
EVERY = [(r.name, r.url, m) for r in ROUTES for m in r.methods]


def test_the_probe_sees_every_api_write():
    names = {name for name, _url, _method in WRITES}
    # A sample of each kind of route: a viewset's create and detail actions, a custom action, a plain APIView.
    assert {"campaign-list", "campaign-detail", "campaign-send-now", "api-receipts", "api-inbound"} <= names
    assert {"inbox-read", "contact-erase", "api-key-revoke", "sending-domain-rotate-key"} <= names
    assert len(WRITES) >= 50
    assert names >= ANALYST_MAY_POST


def _key(organisation, role: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_key(organisation, role)}")
    return client


def _call(client: APIClient, method: str, url: str):
    return getattr(client, method)(url, {}, format="json") if method not in READ_METHODS else client.get(url)


@pytest.mark.parametrize(("name", "url", "method"), ANALYST_REFUSED, ids=[f"{m} {n}" for n, _u, m in ANALYST_REFUSED])
def test_analyst_keys_cannot_write(organisation, name, url, method):
    response = _call(_key(organisation, Role.ANALYST), method, url)
    assert response.status_code == 403, response.content


def test_the_documented_analyst_posts_work(organisation, analyst):
    campaign = CampaignFactory(organisation=organisation, channels=["email"])
    preview = analyst.api.post(f"/api/v1/campaigns/{campaign.pk}/preview/", {"channel": "email"}, format="json")
    assert preview.status_code == 200
    rules = {"rules": {"field": "email", "op": "exists"}}
    assert analyst.api.post("/api/v1/segments/estimate/", rules, format="json").status_code == 200


@pytest.mark.parametrize("role", [Role.ANALYST, Role.COMPLIANCE])
def test_analyst_and_compliance_keys_cannot_post_receipts_or_inbound_or_read_inboxes(organisation, role):
    client = _key(organisation, role)
    probes = [(n, u, m) for n, u, m in EVERY if n in PROVIDER_ROUTES]
    assert sorted({n for n, _u, _m in probes}) == sorted(PROVIDER_ROUTES)
    assert [(n, _call(client, m, u).status_code) for n, u, m in probes] == [(n, 403) for n, _u, _m in probes]


def test_provider_keys_reach_nothing_else(organisation):
    provider = _key(organisation, Role.PROVIDER)
    others = [(n, u, m) for n, u, m in EVERY if n not in PROVIDER_ROUTES]
    assert [(n, m, _call(provider, m, u).status_code) for n, u, m in others] == [(n, m, 403) for n, _u, m in others]


@pytest.fixture
def sent(teammate, django_capture_on_commit_callbacks) -> dict[str, int]:
    """A campaign sent to two contacts through the sandbox provider: their message ids by external id."""
    organisation = teammate.organisation
    rows = [{"external_id": f"r{i}", "email": f"r{i}@example.com", "phone": f"+44770090{i:04d}"} for i in range(2)]
    contacts_upsert_rows(organisation=organisation, rows=rows)
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "r"},
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    content = {"email": {"subject": "s", "html": "<p>x</p>"}}
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=60)
    return {m.contact.external_id: m.pk for m in Message.objects.filter(run=run).select_related("contact")}


def test_a_complaint_receipt_takes_a_provider_key_not_an_analyst_or_compliance_key(organisation, sent):
    complaint = {"receipts": [{"message_id": sent["r0"], "status": "complained"}]}
    for role in (Role.ANALYST, Role.COMPLIANCE):
        refused = _key(organisation, role).post("/api/v1/receipts/", complaint, format="json")
        assert (refused.status_code, refused.data["detail"]) == (403, f"The {role} role cannot change this.")
    assert not Suppression.objects.exists()
    response = _key(organisation, Role.PROVIDER).post("/api/v1/receipts/", complaint, format="json")
    assert (response.status_code, response.data["applied"], response.data["suppressed"]) == (200, 1, 1)
    assert list(Suppression.objects.values_list("address", "reason")) == [("r0@example.com", "complaint")]


def test_an_inbound_stop_takes_a_provider_key(organisation, sent):
    stop = {"messages": [{"channel": "sms", "from": "+447700900001", "body": "STOP"}]}
    assert _key(organisation, Role.ANALYST).post("/api/v1/inbound/", stop, format="json").status_code == 403
    assert not ContactPreference.objects.exists()
    response = _key(organisation, Role.PROVIDER).post("/api/v1/inbound/", stop, format="json")
    assert (response.status_code, response.data["stopped"]) == (200, 1)
    contact = Contact.objects.get(organisation=organisation, external_id="r1")
    assert ContactPreference.objects.get(contact=contact).disabled_channels == ["sms"]


def test_provider_keys_can_be_issued_but_no_member_holds_the_role(owner):
    response = owner.api.post("/api/v1/api-keys/", {"name": "Mail provider", "role": "provider"}, format="json")
    assert (response.status_code, response.data["role"]) == (201, "provider")
    assert Role.PROVIDER not in {value for value, _label in Membership._meta.get_field("role").choices}
