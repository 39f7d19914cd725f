from __future__ import annotations

import pytest

from audiences.models import Organisation
from compliance.models import AuditLogEntry

pytestmark = pytest.mark.django_db


def test_members_read_their_organisation(teammate):
    response = teammate.api.get("/api/v1/organisation/")
    assert response.status_code == 200
    assert (response.data["slug"], response.data["timezone"]) == ("acme", "Europe/London")


def test_admins_update_defaults_and_it_is_audited(owner):
    response = owner.api.patch(
        "/api/v1/organisation/",
        {
            "default_messages_per_minute": 500,
            "default_quiet_hours_start": "21:00",
            "default_quiet_hours_end": "08:00",
            "postal_address": "1 Main St",
            "timezone": "Europe/Paris",
        },
        format="json",
    )
    assert response.status_code == 200, response.data
    organisation = Organisation.objects.get(pk=owner.organisation.pk)
    assert organisation.default_messages_per_minute == 500
    assert str(organisation.timezone) == "Europe/Paris"
    entry = AuditLogEntry.objects.get(action="organisation.update")
    assert entry.details["timezone"] == {"from": "Europe/London", "to": "Europe/Paris"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"sender_email": "not-an-email"}, "sender_email"),
        ({"default_messages_per_minute": 0}, "default_messages_per_minute"),
        ({"default_quiet_hours_start": "21:00"}, "non_field_errors"),
        ({"default_quiet_hours_end": "25:00"}, "default_quiet_hours_end"),
    ],
)
def test_bad_settings_are_400_with_field_errors(owner, payload, field):
    response = owner.api.patch("/api/v1/organisation/", payload, format="json")
    assert response.status_code == 400
    assert field in response.data, response.data
    assert not AuditLogEntry.objects.filter(action="organisation.update").exists()


def test_admins_see_and_rotate_the_webhook_secret(owner, teammate):
    secret = owner.api.get("/api/v1/organisation/").data["webhook_secret"]
    assert len(secret) >= 32
    assert "webhook_secret" not in teammate.api.get("/api/v1/organisation/").data
    assert teammate.api.post("/api/v1/organisation/webhook-secret/rotate/").status_code == 403
    rotated = owner.api.post("/api/v1/organisation/webhook-secret/rotate/").data["webhook_secret"]
    assert rotated != secret
    assert owner.api.get("/api/v1/organisation/").data["webhook_secret"] == rotated
    assert AuditLogEntry.objects.filter(action="organisation.rotate_webhook_secret").count() == 1


def test_admins_set_verified_senders_that_campaigns_may_use(owner, teammate):
    response = owner.api.patch("/api/v1/organisation/", {"verified_senders": ["promo@acme.example"]}, format="json")
    assert response.status_code == 200, response.data
    assert response.data["verified_senders"] == ["promo@acme.example"]
    assert owner.api.patch("/api/v1/organisation/", {"verified_senders": ["nope"]}, format="json").status_code == 400
    created = teammate.api.post(
        "/api/v1/campaigns/",
        {
            "name": "From promo",
            "channels": ["email"],
            "variants": [
                {
                    "name": "A",
                    "allocation_percent": 100,
                    "content": {"email": {"subject": "s", "html": "h", "from_email": "promo@acme.example"}},
                }
            ],
        },
        format="json",
    )
    assert created.status_code == 201, created.data


def test_admins_set_channel_limits_and_defaults_in_the_console(owner, teammate):
    from tests.factories import console_client

    browser = console_client(owner)
    page = browser.get("/settings/organisation/")
    assert page.status_code == 200 and "SMS provider limit" in page.content.decode()
    data = {
        "name": "Acme",
        "timezone": "Europe/London",
        "default_messages_per_minute": "500",
        "limit_email": "6000",
        "limit_sms": "",
        "sender_email": "news@acme.example",
    }
    assert browser.post("/settings/organisation/", data).status_code == 302
    owner.organisation.refresh_from_db()
    assert owner.organisation.channel_limits_per_minute == {"email": 6000}
    assert owner.organisation.default_messages_per_minute == 500
    bad = browser.post("/settings/organisation/", {**data, "timezone": "Nowhere/Special", "limit_sms": "0"})
    assert bad.status_code == 400
    body = bad.content.decode()
    assert "Ensure this value is greater than or equal to 1." in body
    # Others may look but not change.
    viewer = console_client(teammate)
    assert viewer.get("/settings/organisation/").status_code == 200
    assert viewer.post("/settings/organisation/", data).status_code == 403


def test_channel_limits_through_the_api_are_validated(owner):
    ok = owner.api.patch("/api/v1/organisation/", {"channel_limits_per_minute": {"sms": 600}}, format="json")
    assert ok.status_code == 200
    bad = owner.api.patch("/api/v1/organisation/", {"channel_limits_per_minute": {"fax": 1}}, format="json")
    assert bad.status_code == 400 and "channel_limits_per_minute" in bad.data
    zero = owner.api.patch("/api/v1/organisation/", {"channel_limits_per_minute": {"sms": 0}}, format="json")
    assert zero.status_code == 400
