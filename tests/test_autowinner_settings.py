"""The test share's settings: over the campaign API (field errors for each bad value, a test share only with the
auto-winner on, a chosen fallback needs its variant), in the console form, and the auto-winner cannot be turned
off once the test share has gone out (the rest of the audience waits for its decision)."""

from __future__ import annotations

import pytest

from campaigns.models import Campaign
from compliance.models import AuditLogEntry
from delivery.models import Run
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db

EXPERIMENT = {
    "auto_winner_enabled": True,
    "experiment_test_percent": 20,
    "experiment_window_hours": 6,
    "experiment_decide": "window_end",
    "experiment_fallback": "variant",
    "experiment_fallback_variant": "B",
}


def test_the_api_takes_and_returns_the_settings(teammate):
    created = teammate.api.post(
        "/api/v1/campaigns/", {"name": "Split", "channels": ["email"], **EXPERIMENT}, format="json"
    )
    assert created.status_code == 201
    assert {k: created.json()[k] for k in EXPERIMENT} == EXPERIMENT
    url = f"/api/v1/campaigns/{created.json()['id']}/"
    changed = teammate.api.patch(
        url, {"experiment_test_percent": 10, "experiment_fallback": "best_observed"}, format="json"
    )
    assert changed.status_code == 200
    campaign = Campaign.objects.get(pk=created.json()["id"])
    assert (campaign.experiment_test_percent, campaign.experiment_fallback, campaign.experiment_window_hours) == (
        10,
        "best_observed",
        6,
    )
    update = AuditLogEntry.objects.get(action="campaign.update", target_id=str(campaign.pk))
    assert update.details["changed"]["experiment"]["to"]["test_percent"] == 10
    assert update.details["changed"]["experiment"]["from"]["fallback"] == ["variant", "B"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"experiment_test_percent": 91}, "experiment_test_percent"),
        ({"experiment_test_percent": -1}, "experiment_test_percent"),
        ({"experiment_window_hours": 0}, "experiment_window_hours"),
        ({"experiment_window_hours": 721}, "experiment_window_hours"),
        ({"experiment_decide": "whenever"}, "experiment_decide"),
        ({"experiment_fallback": "random"}, "experiment_fallback"),
        ({"auto_winner_enabled": False}, "experiment_test_percent"),
        ({"experiment_fallback_variant": "  "}, "experiment_fallback_variant"),
    ],
)
def test_the_api_refuses_bad_settings_by_field(teammate, change, field):
    response = teammate.api.post(
        "/api/v1/campaigns/", {"name": "Bad", "channels": ["email"], **EXPERIMENT, **change}, format="json"
    )
    assert response.status_code == 400 and field in response.data
    assert not Campaign.objects.filter(name="Bad").exists()


def test_the_console_form_takes_the_settings(teammate):
    browser = console_client(teammate)
    form = browser.get("/campaigns/new/").content.decode()
    assert 'name="experiment_test_percent"' in form and 'name="experiment_fallback_variant"' in form
    response = browser.post(
        "/campaigns/new/",
        {"name": "Form split", "type": "scheduled", "channels": ["email"], "auto_winner_enabled": "on",
         "auto_winner_metric": "click", "auto_winner_level": "95", "auto_winner_min_sample": "1000",
         "experiment_test_percent": "25", "experiment_window_hours": "12", "experiment_decide": "sequential",
         "experiment_fallback": "best_observed"},
    )  # fmt: skip
    assert response.status_code == 302
    campaign = Campaign.objects.get(name="Form split")
    assert (campaign.experiment_test_percent, campaign.experiment_window_hours, campaign.experiment_decide) == (
        25,
        12,
        "sequential",
    )


def test_the_auto_winner_stays_on_once_the_test_share_is_out(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, status="running", **EXPERIMENT)
    url = f"/api/v1/campaigns/{campaign.pk}/auto-winner/"
    Run.objects.create(organisation=campaign.organisation, campaign=campaign, number=1, phase="test")
    response = teammate.api.put(url, {"enabled": False}, format="json")
    assert response.status_code == 400 and "enabled" in response.data
    campaign.refresh_from_db()
    assert campaign.auto_winner_enabled is True


def test_a_paused_campaign_cannot_drop_the_auto_winner_its_test_share_waits_for(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, status="paused", **EXPERIMENT)
    url = f"/api/v1/campaigns/{campaign.pk}/"
    assert (
        teammate.api.patch(url, {"auto_winner_enabled": False, "experiment_test_percent": 0}, format="json").status_code
        == 200
    )
    Campaign.objects.filter(pk=campaign.pk).update(auto_winner_enabled=True, experiment_test_percent=20)
    Run.objects.create(organisation=campaign.organisation, campaign=campaign, number=1, phase="test")
    response = teammate.api.patch(url, {"auto_winner_enabled": False, "experiment_test_percent": 0}, format="json")
    assert response.status_code == 400 and "auto_winner_enabled" in response.data
    campaign.refresh_from_db()
    assert (campaign.auto_winner_enabled, campaign.experiment_test_percent) == (True, 20)
