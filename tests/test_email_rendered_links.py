"""A link built from a contact's data is checked when it renders (issue 18): the save-time check sees only the
template, so a contact attribute `javascript:…` must not become a link in a real email."""

from __future__ import annotations

import email
from email import policy

import pytest

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Variant
from delivery import runs, sending
from delivery.backends import reset_backends
from delivery.models import Message, Run
from tests.factories import CampaignFactory

HTML = (
    '<p>Hi {{ contact.first_name }}</p><p><a href="{{ contact.attributes.link }}">your page</a></p>'
    '<p><img src="{{ contact.attributes.photo }}" alt="you"></p>'
)


@pytest.fixture(autouse=True)
def _email_over_smtp(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.EmailBackend"}
    reset_backends()
    yield
    reset_backends()


@pytest.mark.parametrize("tracking", [True, False])
def test_a_link_that_renders_to_a_script_or_an_internal_target_fails_its_message_and_the_rest_go(
    teammate, smtp, django_capture_on_commit_callbacks, tracking
):
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {
                "external_id": "ok",
                "email": "ok@example.com",
                "first_name": "Ada",
                "attributes": {"link": "https://shop.example.com/ada", "photo": "https://cdn.example.com/a.png"},
            },
            {"external_id": "empty", "email": "empty@example.com", "first_name": "Bo", "attributes": {}},
            {
                "external_id": "js",
                "email": "js@example.com",
                "first_name": "Cy",
                "attributes": {"link": "java\tscript:alert(1)", "photo": "https://cdn.example.com/c.png"},
            },
            {
                "external_id": "data",
                "email": "data@example.com",
                "first_name": "Di",
                "attributes": {"link": "https://shop.example.com/di", "photo": "data:text/html,<script>x</script>"},
            },
            {
                "external_id": "internal",
                "email": "internal@example.com",
                "first_name": "Ed",
                "attributes": {"link": "http://169.254.169.254/latest/meta-data", "photo": ""},
            },
        ],
    )
    campaign = CampaignFactory(
        organisation=organisation, name="Links", channels=["email"], variants=False, tracking_enabled=tracking
    )
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={"email": {"subject": "Hi", "html": HTML}}
    )
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        Message.objects.filter(run=run).update(due_at=run.created_at)
        sending.run_send_for(run.pk, seconds=60)

    outcome = {
        m.contact.external_id: (m.status, m.error) for m in Message.objects.filter(run=run).select_related("contact")
    }
    assert outcome == {
        "ok": ("sent", ""),
        "empty": ("sent", ""),
        "js": (
            "failed",
            "template: link 1 renders to 'javascript:alert(1)', which javascript: is not allowed; use https:// or"
            " http:// or mailto: or tel: (or #anchor)",
        ),
        "data": (
            "failed",
            "template: image 1 renders to 'data:text/html,<script>x</script>', which data: is not allowed; use"
            " https:// or http://",
        ),
        # A web link's host is the recipient's browser's business (tracked or not): only what is not a web, mail or
        # phone link fails.
        "internal": ("sent", ""),
    }
    assert sorted(rcpt for _from, (rcpt,), _raw in smtp.messages) == [
        "empty@example.com",
        "internal@example.com",
        "ok@example.com",
    ]
    ada = next(raw for _from, (rcpt,), raw in smtp.messages if rcpt == "ok@example.com")
    html = email.message_from_bytes(ada, policy=policy.default).get_body(("html",)).get_content()
    assert ("/t/c/" in html) is tracking and ("https://shop.example.com/ada" in html) is not tracking
