from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from audiences.models import ApiKey, Membership, Organisation
from campaigns.models import Campaign

pytestmark = pytest.mark.django_db


def run(*args, **kwargs) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **kwargs)
    return out.getvalue()


def test_create_org_makes_an_organisation_with_an_admin():
    output = run("create_org", "initech", "--admin-email", "Boss@Initech.example", "--admin-password", "pw-123456")
    organisation = Organisation.objects.get(slug="initech")
    assert organisation.name == "Initech"
    membership = Membership.objects.get(organisation=organisation)
    assert membership.role == "admin"
    assert membership.user.username == "boss@initech.example"
    assert membership.user.check_password("pw-123456")
    assert "Created organisation initech" in output


def test_create_org_refuses_duplicates_and_bad_slugs():
    run("create_org", "dupe", "--admin-email", "a@example.com")
    with pytest.raises(CommandError):
        run("create_org", "dupe", "--admin-email", "b@example.com")
    with pytest.raises(CommandError):
        run("create_org", "Not A Slug!", "--admin-email", "c@example.com")
    with pytest.raises(CommandError):
        run("create_org", "tz", "--admin-email", "d@example.com", "--timezone", "Mars/Olympus")


def test_create_api_key_prints_a_working_key():
    run("create_org", "keys", "--admin-email", "k@example.com")
    secret = run("create_api_key", "keys", "--name", "Deploy").strip()
    key = ApiKey.objects.get(name="Deploy")
    assert secret.startswith(key.prefix)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/campaigns/").status_code == 200
    with pytest.raises(CommandError):
        run("create_api_key", "nope")


def test_seed_demo_is_idempotent(tmp_path):
    key_file = tmp_path / "demo-key"
    first = run("seed_demo", "--key-file", str(key_file))
    counts = (
        Organisation.objects.count(),
        Campaign.objects.count(),
        ApiKey.objects.count(),
        get_user_model().objects.count(),
    )
    second = run("seed_demo", "--key-file", str(key_file))
    assert counts == (
        Organisation.objects.count(),
        Campaign.objects.count(),
        ApiKey.objects.count(),
        get_user_model().objects.count(),
    )
    assert first == second
    assert "demo@example.com" in first
    secret = first.split("API key:")[1].strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert (
        client.get("/api/v1/campaigns/").data["count"] == Campaign.objects.filter(organisation__slug="demo").count() > 0
    )
    statuses = set(Campaign.objects.values_list("status", flat=True))
    assert {"draft", "scheduled", "active", "paused", "completed", "cancelled"} <= statuses
    # The demo sender's domain has its DKIM key (once), so the demo's mail goes out signed.
    from delivery.models import SendingDomain

    assert list(SendingDomain.objects.values_list("organisation__slug", "domain")) == [("demo", "demo-retail.example")]
