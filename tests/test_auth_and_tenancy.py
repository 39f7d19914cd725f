"""Authentication, organisation scoping and role limits, for every API endpoint."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from audiences.models import ApiKey, Role
from campaigns.models import Campaign
from compliance.models import AuditLogEntry
from tests.factories import CampaignFactory, MembershipFactory, OrganisationFactory, issue_key

pytestmark = pytest.mark.django_db

# (method, path template, body). {id} is a campaign of the organisation under test.
CAMPAIGN_ENDPOINTS = [
    ("get", "/api/v1/campaigns/{id}/", None),
    ("patch", "/api/v1/campaigns/{id}/", {"name": "Hijacked"}),
    ("put", "/api/v1/campaigns/{id}/", {"name": "Hijacked"}),
    ("delete", "/api/v1/campaigns/{id}/", None),
    ("get", "/api/v1/campaigns/{id}/history/", None),
    ("post", "/api/v1/campaigns/{id}/clone/", None),
    ("post", "/api/v1/campaigns/{id}/restore/", None),
    ("post", "/api/v1/campaigns/{id}/schedule/", {"scheduled_at": "2099-01-01T00:00:00Z"}),
    ("post", "/api/v1/campaigns/{id}/unschedule/", None),
    ("post", "/api/v1/campaigns/{id}/activate/", None),
    ("post", "/api/v1/campaigns/{id}/pause/", None),
    ("post", "/api/v1/campaigns/{id}/resume/", None),
    ("post", "/api/v1/campaigns/{id}/complete/", None),
    ("post", "/api/v1/campaigns/{id}/cancel/", None),
    ("get", "/api/v1/campaigns/{id}/audience-estimate/", None),
    ("post", "/api/v1/campaigns/{id}/preview/", {"channel": "email"}),
    ("post", "/api/v1/campaigns/{id}/test-send/", {"recipients": ["a@example.com"]}),
    ("post", "/api/v1/campaigns/{id}/variants/clone/", {"variant": "A"}),
]
COLLECTION_ENDPOINTS = [
    ("get", "/api/v1/campaigns/", None),
    ("post", "/api/v1/campaigns/", {"name": "New"}),
    ("get", "/api/v1/organisation/", None),
    ("patch", "/api/v1/organisation/", {"name": "Renamed"}),
    ("get", "/api/v1/api-keys/", None),
    ("post", "/api/v1/api-keys/", {"name": "k"}),
    ("get", "/api/schema/", None),
    ("get", "/api/v1/contacts/", None),
    ("get", "/api/v1/segments/", None),
    ("get", "/api/v1/content-templates/", None),
]
READ_ONLY_POSTS = {"/api/v1/campaigns/{id}/preview/"}
WRITES = [e for e in CAMPAIGN_ENDPOINTS if e[0] != "get" and e[1] not in READ_ONLY_POSTS]


def _call(client, method, path, body):
    return getattr(client, method)(path, body, format="json") if body is not None else getattr(client, method)(path)


@pytest.fixture
def campaign(organisation):
    return CampaignFactory(organisation=organisation, name="Ours", status="running")


@pytest.mark.parametrize(("method", "path", "body"), CAMPAIGN_ENDPOINTS + COLLECTION_ENDPOINTS)
def test_every_endpoint_needs_authentication(anonymous, campaign, method, path, body):
    response = _call(anonymous, method, path.format(id=campaign.pk), body)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    campaign.refresh_from_db()
    assert campaign.name == "Ours"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer nope",
        "Bearer cs_000000000000_wrong",
        "Bearer ",
        "Token abc",
        "Basic dXNlcjpwYXNz",
        "Bearer cs_",
    ],
)
def test_bad_credentials_are_401(campaign, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert client.get("/api/v1/campaigns/").status_code == 401


def test_a_key_with_a_valid_prefix_but_wrong_secret_is_401(organisation):
    secret = issue_key(organisation)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret[:-4]}abcd")
    assert client.get("/api/v1/campaigns/").status_code == 401


@pytest.mark.parametrize(("method", "path", "body"), CAMPAIGN_ENDPOINTS)
@pytest.mark.parametrize("via", ["api", "client"])
def test_another_organisations_campaign_is_404(outsider, campaign, method, path, body, via):
    # The outsider is an admin of their own organisation: the most powerful stranger there is.
    response = _call(getattr(outsider, via), method, path.format(id=campaign.pk), body)
    assert response.status_code == 404
    campaign.refresh_from_db()
    assert (campaign.name, campaign.status, campaign.deleted_at) == ("Ours", "running", None)
    assert Campaign.objects.count() == 1
    assert not AuditLogEntry.objects.filter(target_id=str(campaign.pk)).exists()


def test_another_organisations_deleted_campaign_is_404_too(outsider, organisation):
    campaign = CampaignFactory(organisation=organisation)
    Campaign.objects.filter(pk=campaign.pk).update(deleted_at=timezone.now())
    assert outsider.api.get(f"/api/v1/campaigns/{campaign.pk}/").status_code == 404
    assert outsider.api.post(f"/api/v1/campaigns/{campaign.pk}/restore/").status_code == 404
    assert outsider.api.get("/api/v1/campaigns/?deleted=include").data["count"] == 0


def test_another_organisations_campaigns_never_appear_in_lists(outsider, campaign):
    assert outsider.api.get("/api/v1/campaigns/").data["count"] == 0
    assert outsider.api.get("/api/v1/campaigns/?search=Ours").data["count"] == 0


def test_another_organisations_api_key_cannot_be_revoked(outsider, organisation):
    secret = issue_key(organisation)
    key = ApiKey.objects.get(prefix=secret[:15])
    assert outsider.api.post(f"/api/v1/api-keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


@pytest.mark.parametrize(("method", "path", "body"), [*WRITES, ("post", "/api/v1/campaigns/", {"name": "New"})])
@pytest.mark.parametrize("via", ["api", "client"])
def test_analysts_cannot_change_campaigns(analyst, campaign, method, path, body, via):
    response = _call(getattr(analyst, via), method, path.format(id=campaign.pk), body)
    assert response.status_code == 403
    campaign.refresh_from_db()
    assert (campaign.name, campaign.status, campaign.deleted_at) == ("Ours", "running", None)
    assert Campaign.objects.count() == 1


def test_analysts_can_read(analyst, campaign):
    assert analyst.api.get("/api/v1/campaigns/").data["count"] == 1
    assert analyst.api.get(f"/api/v1/campaigns/{campaign.pk}/").status_code == 200
    assert analyst.api.get(f"/api/v1/campaigns/{campaign.pk}/history/").status_code == 200


def test_compliance_officers_cannot_change_campaigns(organisation, campaign):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_key(organisation, Role.COMPLIANCE)}")
    assert client.post(f"/api/v1/campaigns/{campaign.pk}/pause/").status_code == 403
    assert client.get(f"/api/v1/campaigns/{campaign.pk}/").status_code == 200


def test_only_admins_manage_keys_and_settings(teammate, owner):
    assert teammate.api.get("/api/v1/api-keys/").status_code == 403
    assert teammate.api.post("/api/v1/api-keys/", {"name": "x"}, format="json").status_code == 403
    assert teammate.api.patch("/api/v1/organisation/", {"name": "x"}, format="json").status_code == 403
    assert owner.api.patch("/api/v1/organisation/", {"name": "Acme Ltd"}, format="json").status_code == 200


def test_a_revoked_key_stops_working_at_once(owner):
    created = owner.api.post("/api/v1/api-keys/", {"name": "CI", "role": "marketer"}, format="json")
    assert created.status_code == 201
    secret = created.data["key"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/campaigns/").status_code == 200
    assert owner.api.post(f"/api/v1/api-keys/{created.data['id']}/revoke/").status_code == 200
    assert client.get("/api/v1/campaigns/").status_code == 401


def test_keys_are_stored_hashed_and_shown_once(owner):
    created = owner.api.post("/api/v1/api-keys/", {"name": "Once"}, format="json").data
    key = ApiKey.objects.get(pk=created["id"])
    assert created["key"].startswith(key.prefix + "_")
    assert created["key"] not in (key.key_hash, key.prefix)
    listed = owner.api.get("/api/v1/api-keys/").data["results"]
    assert all("key" not in row for row in listed)
    assert AuditLogEntry.objects.filter(action="api_key.create", target_id=str(key.pk)).exists()


def test_last_used_is_recorded(organisation):
    secret = issue_key(organisation)
    key = ApiKey.objects.get(prefix=secret[:15])
    assert key.last_used_at is None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.get("/api/v1/campaigns/")
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert timezone.now() - key.last_used_at < timedelta(seconds=10)


def test_a_user_in_two_organisations_sees_the_one_they_switched_to(teammate, other_organisation):
    MembershipFactory(user=teammate.membership.user, organisation=other_organisation, role=Role.ANALYST)
    mine = CampaignFactory(organisation=teammate.organisation, name="Mine")
    theirs = CampaignFactory(organisation=other_organisation, name="Theirs")
    client = teammate.client
    session = client.session
    session["organisation_id"] = str(other_organisation.pk)
    session.save()
    assert [r["name"] for r in client.get("/api/v1/campaigns/").data["results"]] == ["Theirs"]
    assert client.get(f"/api/v1/campaigns/{mine.pk}/").status_code == 404
    # Analyst there: reads yes, writes no.
    assert client.post(f"/api/v1/campaigns/{theirs.pk}/clone/").status_code == 403
    session["organisation_id"] = str(teammate.organisation.pk)
    session.save()
    assert [r["name"] for r in client.get("/api/v1/campaigns/").data["results"]] == ["Mine"]


def test_a_session_cannot_switch_into_an_organisation_it_does_not_belong_to(teammate, other_organisation):
    CampaignFactory(organisation=other_organisation, name="Secret")
    session = teammate.client.session
    session["organisation_id"] = str(other_organisation.pk)
    session.save()
    names = [r["name"] for r in teammate.client.get("/api/v1/campaigns/").data["results"]]
    assert "Secret" not in names


def test_a_signed_in_user_without_organisation_is_403(db):
    membership_less = MembershipFactory().user
    membership_less.memberships.all().delete()
    client = APIClient()
    client.force_login(membership_less)
    assert client.get("/api/v1/campaigns/").status_code == 403


def test_without_a_session_choice_a_user_lands_in_the_organisation_they_joined_first(teammate):
    later = OrganisationFactory(name="Aardvark Ltd")  # sorts before "Acme": the name must not decide
    MembershipFactory(user=teammate.membership.user, organisation=later, role=Role.ADMIN)
    CampaignFactory(organisation=teammate.organisation, name="Home")
    CampaignFactory(organisation=later, name="Joined later")
    names = [r["name"] for r in teammate.client.get("/api/v1/campaigns/").data["results"]]
    assert names == ["Home"]
