"""Preview and test send over the API; the test send goes through a real SMTP server (aiosmtpd) in the test."""

from __future__ import annotations

import email
from collections import Counter
from email import policy

import pytest
from scipy import stats

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.content.assignment import assign_variant, variant_bucket
from campaigns.models import Variant
from compliance.models import AuditLogEntry
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(organisation):
    organisation.postal_address = "Acme Ltd, 1 Main Street, London"
    organisation.sender_email = "news@acme.example"
    organisation.sender_name = "Acme"
    organisation.save()
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "c1", "first_name": "Ada", "email": "ada@example.com", "attributes": {"plan": "pro"}},
        ],
    )
    campaign = CampaignFactory(organisation=organisation, channels=["email", "sms", "webhook"], variants=False)
    Variant.objects.create(
        campaign=campaign,
        name="A",
        allocation_percent=90,
        content={
            "email": {
                "subject": "Hi {{ contact.first_name }}",
                "html": "<p>Plan {{ contact.attributes.plan }} "
                '{{ contact.nickname }}</p><a href="https://shop.example/">Shop</a>',
            },
            "sms": {"body": "Hi {{ contact.first_name }}"},
            "webhook": {"url": "https://hooks.example/x", "payload_template": '{"u": "{{ contact.external_id }}"}'},
        },
    )
    Variant.objects.create(campaign=campaign, name="Control", allocation_percent=10, is_control=True)
    return campaign


def test_preview_each_channel(teammate, campaign):
    url = f"/api/v1/campaigns/{campaign.pk}/preview/"
    ada = Contact.objects.get(external_id="c1")
    mail = teammate.api.post(url, {"channel": "email", "contact_id": ada.pk}, format="json")
    assert mail.status_code == 200, mail.data
    assert mail.data["rendered"]["subject"] == "Hi Ada"
    assert "Plan pro" in mail.data["rendered"]["html"]
    assert "Acme Ltd, 1 Main Street, London" in mail.data["rendered"]["html"]
    assert mail.data["warnings"] == ["email.html: Unknown contact field 'contact.nickname'."]
    sms = teammate.api.post(url, {"channel": "sms"}, format="json").data  # first contact of the audience
    assert sms["rendered"]["body"] == "Hi Ada"
    hook = teammate.api.post(url, {"channel": "webhook", "variant": "A"}, format="json").data
    assert hook["rendered"]["body"] == '{"u": "c1"}'
    assert hook["rendered"]["headers"]["X-Campaign-Signature"].startswith("sha256=")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "whatsapp"}, "channel"),
        ({"channel": "fax"}, "channel"),
        ({"channel": "email", "variant": "Z"}, "variant"),
        ({"channel": "email", "variant": "Control"}, "variant"),
        ({"channel": "email", "contact_id": 999999}, "contact_id"),
    ],
)
def test_preview_errors_are_400(teammate, campaign, body, field):
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/preview/", body, format="json")
    assert response.status_code == 400
    assert field in response.data


def test_preview_cannot_use_another_organisations_contact_or_campaign(teammate, outsider, campaign):
    contacts_upsert_rows(organisation=outsider.organisation, rows=[{"external_id": "theirs"}])
    theirs = Contact.objects.get(external_id="theirs")
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/preview/", {"channel": "email", "contact_id": theirs.pk}, format="json"
    )
    assert response.status_code == 400
    assert (
        outsider.api.post(f"/api/v1/campaigns/{campaign.pk}/preview/", {"channel": "email"}, format="json").status_code
        == 404
    )
    assert (
        outsider.api.post(
            f"/api/v1/campaigns/{campaign.pk}/test-send/", {"recipients": ["x@example.com"]}, format="json"
        ).status_code
        == 404
    )


def test_test_send_arrives_with_rfc8058_headers(teammate, campaign, smtp):
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/test-send/",
        {"recipients": ["seed@example.com", "qa@example.com"]},
        format="json",
    )
    assert response.status_code == 200, response.data
    assert response.data["sent_to"] == ["seed@example.com", "qa@example.com"]
    # One message per seed, as a send goes to each recipient on its own (seeds do not see each other's address).
    assert [(mail_from, rcpt_tos) for mail_from, rcpt_tos, _raw in smtp.messages] == [
        ("news@acme.example", ["seed@example.com"]),
        ("news@acme.example", ["qa@example.com"]),
    ]
    raw = smtp.messages[0][2]
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["To"] == "seed@example.com"
    assert message["Subject"] == "[Test] Hi Ada"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The mailto only where inbound mail is configured (tests/test_inbound_unsubscribe.py).
    [https] = [part.strip() for part in message["List-Unsubscribe"].split(",")]
    assert https.startswith("<http") and "/u/" in https and https.endswith(">")
    assert message.get_content_type() == "multipart/alternative"
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "Acme Ltd, 1 Main Street, London" in html and "Acme Ltd, 1 Main Street, London" in text
    assert "/t/c/" in html  # the shop link is click-tracked
    assert AuditLogEntry.objects.filter(action="campaign.test_send", target_id=str(campaign.pk)).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipients": ["not-an-address"]}, "recipients"),
        ({}, "recipients"),
        ({"recipients": [f"r{i}@example.com" for i in range(21)]}, "recipients"),
    ],
)
def test_test_send_validation(teammate, campaign, smtp, body, field):
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/test-send/", body, format="json")
    assert response.status_code == 400
    assert field in response.data
    assert smtp.messages == []


def test_analysts_cannot_test_send(analyst, campaign, smtp):
    response = analyst.api.post(
        f"/api/v1/campaigns/{campaign.pk}/test-send/", {"recipients": ["a@example.com"]}, format="json"
    )
    assert response.status_code == 403
    assert smtp.messages == []


def test_variant_assignment_is_deterministic_and_follows_the_allocation():
    allocations = [("A", 50), ("B", 30), ("C", 20)]
    first = [assign_variant("campaign-1", contact_id, allocations) for contact_id in range(20_000)]
    again = [assign_variant("campaign-1", contact_id, allocations) for contact_id in range(20_000)]
    assert first == again
    counts = Counter(first)
    expected = [20_000 * share / 100 for _, share in allocations]
    assert stats.chisquare([counts[k] for k, _ in allocations], expected).pvalue > 0.001
    other = [assign_variant("campaign-2", contact_id, allocations) for contact_id in range(1000)]
    assert other != first[:1000]  # another campaign draws independently
    assert variant_bucket("campaign-1", 7) == variant_bucket("campaign-1", 7)


def test_the_from_address_must_be_a_verified_sender(teammate, campaign):
    response = teammate.api.patch(
        f"/api/v1/campaigns/{campaign.pk}/",
        {
            "variants": [
                {
                    "name": "A",
                    "allocation_percent": 100,
                    "content": {"email": {"subject": "s", "html": "h", "from_email": "ceo@elsewhere.example"}},
                },
            ]
        },
        format="json",
    )
    assert response.status_code == 400
    assert "verified senders" in " ".join(response.data["variants"])


def test_clone_a_variant(teammate, campaign):
    url = f"/api/v1/campaigns/{campaign.pk}/variants/clone/"
    response = teammate.api.post(url, {"variant": "A"}, format="json")
    assert response.status_code == 201, response.data
    variants = {v["name"]: v for v in response.data["variants"]}
    assert variants["A copy"]["allocation_percent"] == 0
    assert variants["A copy"]["content"] == variants["A"]["content"]
    again = teammate.api.post(url, {"variant": "A"}, format="json").data
    assert "A copy 2" in {v["name"] for v in again["variants"]}
    assert teammate.api.post(url, {"variant": "Nope"}, format="json").status_code == 400
    teammate.api.post(url, {"variant": "A"}, format="json")
    assert teammate.api.post(url, {"variant": "A"}, format="json").status_code == 400  # five is the maximum


PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)


def test_in_app_icon_upload(teammate, outsider, organisation, settings, tmp_path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.MEDIA_ROOT = str(tmp_path)
    campaign = CampaignFactory(organisation=organisation, channels=["in_app"])
    url = f"/api/v1/campaigns/{campaign.pk}/in-app-icon/"
    ok = teammate.api.post(url, {"icon": SimpleUploadedFile("i.png", PNG, "image/png")}, format="multipart")
    assert ok.status_code == 201, ok.data
    assert ok.data["icon_url"].endswith(".png") and "/media/icons/" in ok.data["icon_url"]
    stored = list(tmp_path.rglob("*.png"))
    assert len(stored) == 1 and stored[0].read_bytes() == PNG
    # The returned URL is accepted as icon_url.
    patched = teammate.api.patch(
        f"/api/v1/campaigns/{campaign.pk}/",
        {
            "variants": [
                {
                    "name": "A",
                    "allocation_percent": 100,
                    "content": {"in_app": {"title": "t", "body": "b", "icon_url": ok.data["icon_url"]}},
                }
            ]
        },
        format="json",
    )
    assert patched.status_code == 200, patched.data
    fake = teammate.api.post(
        url, {"icon": SimpleUploadedFile("x.png", b"<svg onload=alert(1)>", "image/png")}, format="multipart"
    )
    assert fake.status_code == 400 and "icon" in fake.data
    huge = teammate.api.post(
        url, {"icon": SimpleUploadedFile("h.png", PNG + b"0" * 300_000, "image/png")}, format="multipart"
    )
    assert huge.status_code == 400
    assert (
        outsider.api.post(url, {"icon": SimpleUploadedFile("i.png", PNG, "image/png")}, format="multipart").status_code
        == 404
    )


def test_saving_returns_template_warnings(teammate, campaign):
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/")
    assert response.data["content_warnings"] == ["Variant A: email.html: Unknown contact field 'contact.nickname'."]
    assert teammate.api.get("/api/v1/campaigns/").data["results"][0]["content_warnings"] == []  # lists stay cheap
