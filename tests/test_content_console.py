"""The console content editor: variants, per-channel fields, counters, validation shown inline."""

from __future__ import annotations

import pytest

from campaigns.models import Campaign
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(organisation):
    return CampaignFactory(organisation=organisation, channels=["email", "sms"], variants=False)


def base_form(**extra):
    data = {
        "v-0-name": "A",
        "v-0-allocation": "100",
        "v-0-email-subject": "Hi {{ contact.first_name }}",
        "v-0-email-html": "<p>Hello</p>",
        "v-0-sms-body": "Short and sweet",
    }
    data.update(extra)
    return data


def test_saving_content(teammate, campaign):
    response = console_client(teammate).post(f"/campaigns/{campaign.pk}/content/", base_form(save="1"))
    assert response.status_code == 302
    variant = Campaign.objects.get(pk=campaign.pk).variants.get()
    assert variant.content == {
        "email": {"subject": "Hi {{ contact.first_name }}", "html": "<p>Hello</p>"},
        "sms": {"body": "Short and sweet", "allow_multipart": False},
    }


def test_problems_are_shown_and_nothing_is_saved(teammate, campaign):
    response = console_client(teammate).post(
        f"/campaigns/{campaign.pk}/content/",
        base_form(save="1", **{"v-0-email-subject": "Hi {{ contact.first_name }", "v-0-sms-body": "ç" * 71}),
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "email.subject: line 1" in page
    assert "more than one SMS" in page
    assert not Campaign.objects.get(pk=campaign.pk).variants.exists()


def test_add_and_clone_variants_then_split_allocation(teammate, campaign):
    client = console_client(teammate)
    added = client.post(f"/campaigns/{campaign.pk}/content/", base_form(add_variant="1"))
    assert 'data-testid="variant-1"' in added.content.decode()
    cloned = client.post(f"/campaigns/{campaign.pk}/content/", base_form(**{"v-0-clone": "1"}))
    page = cloned.content.decode()
    assert 'value="A copy"' in page
    saved = client.post(
        f"/campaigns/{campaign.pk}/content/",
        base_form(
            save="1",
            **{
                "v-0-allocation": "50",
                "v-1-name": "B",
                "v-1-allocation": "50",
                "v-1-email-subject": "Other",
                "v-1-email-html": "<p>B</p>",
                "v-1-sms-body": "B",
            },
        ),
    )
    assert saved.status_code == 302
    assert [v.name for v in Campaign.objects.get(pk=campaign.pk).variants.all()] == ["A", "B"]


def test_sms_counter_is_shown(teammate, campaign):
    page = console_client(teammate).post(f"/campaigns/{campaign.pk}/content/", base_form(**{"v-0-sms-body": "€" * 81}))
    assert "81 characters · GSM-7 · 2 SMS" in page.content.decode()


def test_another_organisations_campaign_is_404_and_analysts_403(outsider, analyst, campaign):
    assert console_client(outsider).get(f"/campaigns/{campaign.pk}/content/").status_code == 404
    assert console_client(analyst).get(f"/campaigns/{campaign.pk}/content/").status_code == 403


def test_preview_renders_the_unsaved_form(teammate, campaign):
    client = console_client(teammate)
    url = f"/campaigns/{campaign.pk}/content/preview/"
    mail = client.post(
        url, base_form(preview_channel="email", **{"v-0-email-subject": "Fresh {{ contact.first_name }}"})
    )
    page = mail.content.decode()
    assert "Fresh Alex" in page  # nobody in the audience yet: the sample contact
    assert 'sandbox title="Email preview"' in page
    sms = client.post(url, base_form(preview_channel="sms", **{"v-0-sms-body": "€uro deal"})).content.decode()
    assert "€uro deal" in sms and "9 characters · GSM-7 · 1 SMS · 150 left in this part" in sms  # € counts twice
    broken = client.post(url, base_form(preview_channel="email", **{"v-0-email-subject": "{{ oops"})).content.decode()
    assert "subject: line 1" in broken
    assert console_client(teammate).post(url, {"preview_channel": "fax"}).status_code == 200
