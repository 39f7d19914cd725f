"""Console pages through Django's test client: sign-in, scoping, forms with inline errors, actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audiences.models import ApiKey, Role
from campaigns.models import Campaign
from tests.factories import CampaignFactory, MembershipFactory, console_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(organisation):
    return CampaignFactory(
        organisation=organisation, name="Console campaign", status="draft", channels=["email", "sms"]
    )


PAGES = [
    ("get", "/campaigns/"),
    ("get", "/campaigns/deleted/"),
    ("get", "/campaigns/new/"),
    ("get", "/campaigns/{id}/"),
    ("get", "/campaigns/{id}/edit/"),
    ("post", "/campaigns/{id}/clone/"),
    ("post", "/campaigns/{id}/delete/"),
    ("post", "/campaigns/{id}/restore/"),
    ("post", "/campaigns/{id}/cancel/"),
    ("get", "/settings/api-keys/"),
]


@pytest.mark.parametrize(("method", "path"), PAGES)
def test_every_page_redirects_to_login_when_signed_out(campaign, method, path):
    response = getattr(Client(), method)(path.format(id=campaign.pk))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_root_goes_to_the_campaign_list(teammate):
    response = console_client(teammate).get("/")
    assert response.status_code == 302
    assert response["Location"] == "/campaigns/"


OBJECT_PAGES = [p for p in PAGES if "{id}" in p[1]]


@pytest.mark.parametrize(("method", "path"), OBJECT_PAGES)
def test_another_organisations_campaign_pages_are_404(outsider, campaign, method, path):
    response = getattr(console_client(outsider), method)(path.format(id=campaign.pk))
    assert response.status_code == 404
    campaign.refresh_from_db()
    assert (campaign.status, campaign.deleted_at) == ("draft", None)
    assert Campaign.objects.count() == 1


def test_login_page_signs_in(teammate):
    client = Client()
    page = client.get("/login/")
    assert page.status_code == 200
    response = client.post(
        "/login/", {"username": teammate.membership.user.username, "password": "correct-horse-battery"}
    )
    assert response.status_code == 302
    assert client.get("/campaigns/").status_code == 200


def test_login_with_a_wrong_password_shows_an_error(teammate):
    response = Client().post("/login/", {"username": teammate.membership.user.username, "password": "nope"})
    assert response.status_code == 200
    assert b"correct username and password" in response.content


def test_list_shows_campaigns_with_filters(teammate, campaign):
    CampaignFactory(organisation=teammate.organisation, name="Other one", type="triggered", channels=["in_app"])
    client = console_client(teammate)
    page = client.get("/campaigns/").content.decode()
    assert "Console campaign" in page and "Other one" in page
    filtered = client.get("/campaigns/?type=triggered").content.decode()
    assert "Other one" in filtered and "Console campaign" not in filtered
    searched = client.get("/campaigns/?search=cons").content.decode()
    assert "Console campaign" in searched and "Other one" not in searched


def test_list_shows_filter_errors_inline_rather_than_failing(teammate, campaign):
    response = console_client(teammate).get("/campaigns/?created_after=yesterday&status=sent")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-testid="filter-errors"' in page
    assert "Use a date" in page


def test_htmx_requests_get_just_the_results(teammate, campaign):
    response = console_client(teammate).get(
        "/campaigns/?search=Con", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="campaign-results"
    )
    page = response.content.decode()
    assert page.strip().startswith('<div id="campaign-results">')
    assert "Console campaign" in page


def test_create_shows_inline_errors_and_keeps_input(teammate, campaign):
    client = console_client(teammate)
    response = client.post("/campaigns/new/", {"name": "", "type": "scheduled", "description": "kept text"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "This field is required." in page
    assert "kept text" in page
    duplicate = client.post("/campaigns/new/", {"name": "console CAMPAIGN", "type": "scheduled"})
    assert duplicate.status_code == 400
    assert "A campaign with this name already exists." in duplicate.content.decode()
    assert Campaign.objects.count() == 1


def test_create_makes_a_draft_and_goes_to_it(teammate):
    response = console_client(teammate).post(
        "/campaigns/new/",
        {
            "name": "From console",
            "type": "triggered",
            "channels": ["email", "whatsapp"],
            "description": "d",
        },
    )
    campaign = Campaign.objects.get(name="From console")
    assert response.status_code == 302
    assert response["Location"] == f"/campaigns/{campaign.pk}/"
    assert (campaign.status, campaign.type, campaign.channels) == (
        "draft",
        "triggered",
        ["email", "whatsapp"],
    )
    assert campaign.owner == teammate.membership.user


def test_scheduled_at_is_read_in_the_organisations_timezone(teammate):
    # Acme is in Europe/London: 2099-07-01 10:00 local is 09:00 UTC (BST).
    console_client(teammate).post(
        "/campaigns/new/", {"name": "Local time", "type": "scheduled", "scheduled_at": "2099-07-01T10:00"}
    )
    campaign = Campaign.objects.get(name="Local time")
    assert campaign.scheduled_at.isoformat() == "2099-07-01T09:00:00+00:00"


def test_edit_saves_and_refuses_when_live(teammate, campaign):
    client = console_client(teammate)
    assert client.get(f"/campaigns/{campaign.pk}/edit/").status_code == 200
    response = client.post(
        f"/campaigns/{campaign.pk}/edit/", {"name": "Renamed", "type": "scheduled", "channels": ["sms", "email"]}
    )
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert (campaign.name, campaign.channels) == ("Renamed", ["sms", "email"])
    dropped = client.post(
        f"/campaigns/{campaign.pk}/edit/", {"name": "Renamed", "type": "scheduled", "channels": ["email"]}
    )
    assert dropped.status_code == 400  # the variant still has SMS content: say so rather than drop it silently
    assert "channel(s) the campaign does not use: sms" in dropped.content.decode()
    Campaign.objects.filter(pk=campaign.pk).update(status="running")
    response = client.post(f"/campaigns/{campaign.pk}/edit/", {"name": "Again", "type": "scheduled"}, follow=True)
    assert "cannot be changed" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.name == "Renamed"


def test_detail_page_shows_configuration_actions_and_history(teammate, campaign):
    page = console_client(teammate).get(f"/campaigns/{campaign.pk}/").content.decode()
    assert "Console campaign" in page
    assert 'data-testid="action-schedule"' in page
    assert 'data-testid="history"' in page
    assert "created" in page


def test_schedule_from_the_console(teammate, campaign):
    client = console_client(teammate)
    at = timezone.localtime(timezone.now() + timedelta(days=2), timezone=teammate.organisation.timezone)
    response = client.post(
        f"/campaigns/{campaign.pk}/schedule/", {"scheduled_at": at.strftime("%Y-%m-%dT%H:%M")}, follow=True
    )
    assert "Campaign is now scheduled." in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == "scheduled"


def test_illegal_action_from_the_console_shows_why(teammate, campaign):
    response = console_client(teammate).post(f"/campaigns/{campaign.pk}/pause/", follow=True)
    assert "Cannot pause a scheduled campaign that is draft." in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == "draft"


def test_unknown_action_is_404(teammate, campaign):
    assert console_client(teammate).post(f"/campaigns/{campaign.pk}/explode/").status_code == 404


def test_clone_delete_and_restore_from_the_console(teammate, campaign):
    client = console_client(teammate)
    response = client.post(f"/campaigns/{campaign.pk}/clone/")
    clone = Campaign.objects.get(name="Copy of Console campaign")
    assert response["Location"] == f"/campaigns/{clone.pk}/"
    response = client.post(f"/campaigns/{campaign.pk}/delete/")
    assert response["Location"] == "/campaigns/"
    assert "Console campaign" in client.get("/campaigns/deleted/").content.decode()
    client.post(f"/campaigns/{campaign.pk}/restore/")
    campaign.refresh_from_db()
    assert campaign.deleted_at is None


def test_analysts_see_no_write_controls_and_cannot_post(analyst, campaign):
    client = console_client(analyst)
    list_page = client.get("/campaigns/").content.decode()
    assert 'data-testid="new-campaign"' not in list_page
    detail = client.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert 'data-testid="delete"' not in detail
    assert client.get("/campaigns/new/").status_code == 403
    assert client.post(f"/campaigns/{campaign.pk}/delete/").status_code == 403
    assert client.post(f"/campaigns/{campaign.pk}/clone/").status_code == 403
    campaign.refresh_from_db()
    assert campaign.deleted_at is None


def test_organisation_switcher(teammate, other_organisation):
    MembershipFactory(user=teammate.membership.user, organisation=other_organisation, role=Role.MARKETER)
    CampaignFactory(organisation=teammate.organisation, name="In Acme")
    CampaignFactory(organisation=other_organisation, name="In Globex")
    client = console_client(teammate)
    page = client.get("/campaigns/").content.decode()
    assert "In Acme" in page and "In Globex" not in page
    assert 'data-testid="org-switcher"' in page
    client.post("/organisation/switch/", {"organisation_id": str(other_organisation.pk)})
    page = client.get("/campaigns/").content.decode()
    assert "In Globex" in page and "In Acme" not in page


def test_switching_to_a_foreign_organisation_is_404(teammate, other_organisation):
    client = console_client(teammate)
    assert client.post("/organisation/switch/", {"organisation_id": str(other_organisation.pk)}).status_code == 404
    assert client.post("/organisation/switch/", {"organisation_id": "garbage"}).status_code == 404


def test_api_key_page_issues_a_key_once_and_revokes(owner, teammate):
    client = console_client(owner)
    response = client.post("/settings/api-keys/", {"name": "Console key", "role": "analyst"})
    page = response.content.decode()
    key = ApiKey.objects.get(name="Console key")
    assert 'data-testid="issued-key"' in page
    assert f"{key.prefix}_" in page
    again = client.get("/settings/api-keys/").content.decode()
    assert 'data-testid="issued-key"' not in again
    client.post(f"/settings/api-keys/{key.pk}/revoke/")
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert console_client(teammate).get("/settings/api-keys/").status_code == 403


def test_a_user_without_organisation_sees_an_explanation(db):
    user = MembershipFactory().user
    user.memberships.all().delete()
    client = Client()
    client.force_login(user)
    response = client.get("/campaigns/")
    assert response.status_code == 403
    assert b"not in an organisation" in response.content


def test_tracking_switch_and_seed_list(teammate, campaign):
    client = console_client(teammate)
    bad = client.post(
        f"/campaigns/{campaign.pk}/edit/",
        {"name": "S", "type": "scheduled", "channels": ["email", "sms"], "seed_emails": "a@x.com, nope"},
    )
    assert bad.status_code == 400
    assert "Not email addresses: nope." in bad.content.decode()
    ok = client.post(
        f"/campaigns/{campaign.pk}/edit/",
        {"name": "S", "type": "scheduled", "channels": ["email", "sms"], "seed_emails": "a@example.com\nb@example.com"},
    )
    assert ok.status_code == 302
    campaign.refresh_from_db()
    assert campaign.seed_emails == ["a@example.com", "b@example.com"]
    assert campaign.tracking_enabled is False  # the box was not ticked


def test_campaign_page_shows_the_audience_and_its_size(teammate, campaign):
    client = console_client(teammate)
    page = client.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert 'data-testid="audience-summary"' in page
    fragment = client.get(f"/campaigns/{campaign.pk}/audience/").content.decode()
    assert 'data-testid="estimate-count">0<' in fragment


def test_test_send_from_the_console(teammate, campaign, smtp):
    campaign.organisation.sender_email = "news@acme.example"
    campaign.organisation.save()
    response = console_client(teammate).post(
        f"/campaigns/{campaign.pk}/test-send/", {"recipients": "qa@example.com", "variant": "A"}, follow=True
    )
    assert "Test email sent." in response.content.decode()
    assert [m[1] for m in smtp.messages] == [["qa@example.com"]]
    bad = console_client(teammate).post(f"/campaigns/{campaign.pk}/test-send/", {"recipients": "nope"}, follow=True)
    assert "Not email addresses: nope." in bad.content.decode()


def test_a_mail_server_that_refuses_is_a_message_not_a_500(teammate, campaign, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    campaign.organisation.sender_email = "news@acme.example"
    campaign.organisation.save()
    response = console_client(teammate).post(
        f"/campaigns/{campaign.pk}/test-send/", {"recipients": "a@example.com"}, follow=True
    )
    assert response.status_code == 200
    assert "The mail server did not take the message" in response.content.decode()


@pytest.mark.parametrize(("method", "suffix"), [("get", "audience/"), ("post", "test-send/"), ("get", "content/")])
def test_new_campaign_pages_are_scoped(outsider, campaign, method, suffix):
    assert getattr(console_client(outsider), method)(f"/campaigns/{campaign.pk}/{suffix}").status_code == 404
