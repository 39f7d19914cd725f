"""Each rendered SMS is measured when it is sent: its parts are recorded on the message, and one over the campaign's
limit is failed with the reason and never reaches the notification_service (a local HTTP receiver). WhatsApp's
character limit holds at send as at save. The preview shows the parts for the previewed contact and for the longest
values the organisation's contacts hold."""

from __future__ import annotations

import pytest

from audiences.contacts import contacts_upsert_rows
from delivery.backends import reset_backends
from delivery.models import Message
from tests.factories import console_client
from tests.test_delivery_channels import Peer, _run, peer  # noqa: F401 - the local notification_service fixture

pytestmark = pytest.mark.django_db

# GSM-7 as written: 30 septets before the name (the braces count two each) + 99 after, one SMS. Rendered for "Zoe"
# it is 106 septets, one SMS; for "Zoë" it is UCS-2, 106 code units: 67 + 39, two parts.
BODY = "Hi {{ contact.first_name }}, " + "your parcel is ready to collect. " * 3


def rendered_for(name: str) -> str:
    return (f"Hi {name}, " + "your parcel is ready to collect. " * 3).strip()  # the send strips the rendered text


@pytest.fixture(autouse=True)
def _fresh_backends():
    reset_backends()
    yield
    reset_backends()


@pytest.fixture
def receiver(settings, peer):  # noqa: F811
    settings.NOTIFICATION_SERVICE_URL = peer
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.NotificationServiceBackend"}
    return peer


def _contacts(organisation, *rows):
    result = contacts_upsert_rows(organisation=organisation, rows=list(rows))
    assert not result.rejected, result.rejected


def _sms_campaign(persona, body, *, multipart=False, channels=("sms",), content=None):
    response = persona.api.post(
        "/api/v1/campaigns/",
        {
            "name": "Parcel",
            "channels": list(channels),
            "audience": {"rules": {"field": "phone", "op": "exists"}},
            "sms_allow_multipart": multipart,
            "variants": [{"name": "A", "allocation_percent": 100, "content": content or {"sms": {"body": body}}}],
        },
        format="json",
    )
    assert response.status_code == 201, response.data
    from campaigns.models import Campaign

    return Campaign.objects.get(pk=response.data["id"])


def _zoe_and_zoe(organisation):
    _contacts(
        organisation,
        {"external_id": "zoe-umlaut", "phone": "+447700900001", "first_name": "Zoë"},
        {"external_id": "zoe-plain", "phone": "+447700900002", "first_name": "Zoe"},
    )


def _message(run, external_id, channel="sms"):
    return Message.objects.get(run=run, contact__external_id=external_id, channel=channel)


def test_an_sms_over_the_single_part_limit_is_failed_with_its_reason_and_not_sent(
    receiver, teammate, django_capture_on_commit_callbacks
):
    _zoe_and_zoe(teammate.organisation)
    campaign = _sms_campaign(teammate, BODY)
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    refused = _message(run, "zoe-umlaut")
    assert (refused.status, refused.error, refused.parts) == (
        "failed",
        "SMS is 2 parts (UCS-2, 'ë' is not GSM-7); the campaign allows 1",
        2,
    )
    sent = _message(run, "zoe-plain")
    assert (sent.status, sent.error, sent.parts) == ("sent", "", 1)
    assert [(r["json"]["to"], r["json"]["body"]) for r in Peer.requests] == [("+447700900002", rendered_for("Zoe"))]
    run.refresh_from_db()
    assert (run.sent_count, run.failed_count) == (1, 1)


def test_with_multipart_allowed_the_two_part_sms_is_sent_and_its_parts_recorded(
    receiver, teammate, django_capture_on_commit_callbacks
):
    _zoe_and_zoe(teammate.organisation)
    campaign = _sms_campaign(teammate, BODY, multipart=True)
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    assert {m.contact.external_id: (m.status, m.parts) for m in Message.objects.filter(run=run)} == {
        "zoe-umlaut": ("sent", 2),
        "zoe-plain": ("sent", 1),
    }
    bodies = {r["json"]["to"]: r["json"]["body"] for r in Peer.requests}
    assert bodies["+447700900001"] == rendered_for("Zoë")


def test_a_variant_that_allows_multipart_allows_it_at_send_too(receiver, teammate, django_capture_on_commit_callbacks):
    _zoe_and_zoe(teammate.organisation)
    campaign = _sms_campaign(teammate, BODY, content={"sms": {"body": BODY, "allow_multipart": True}})
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    assert (_message(run, "zoe-umlaut").status, _message(run, "zoe-umlaut").parts) == ("sent", 2)


def test_the_six_part_cap_holds_at_send_for_escapes_that_do_not_split(
    receiver, teammate, django_capture_on_commit_callbacks
):
    # 459 euro signs are 918 septets, 6 x 153 by division; but a pair never splits, so 76 fit a part: 7 parts.
    _contacts(
        teammate.organisation,
        {"external_id": "euros", "phone": "+447700900003", "attributes": {"note": "€" * 459}},
        {"external_id": "short", "phone": "+447700900004", "attributes": {"note": "€" * 456}},
    )
    campaign = _sms_campaign(teammate, "{{ contact.attributes.note }}", multipart=True)
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    refused, sent = _message(run, "euros"), _message(run, "short")
    assert (refused.status, refused.error, refused.parts) == (
        "failed",
        "SMS is 7 parts (GSM-7); the campaign allows 6",
        7,
    )
    assert (sent.status, sent.parts) == ("sent", 6)
    assert [r["json"]["to"] for r in Peer.requests] == ["+447700900004"]


def test_the_save_check_counts_the_same_way(teammate):
    response = teammate.api.post(
        "/api/v1/campaigns/",
        {
            "name": "Euros",
            "channels": ["sms"],
            "sms_allow_multipart": True,
            "variants": [{"name": "A", "allocation_percent": 100, "content": {"sms": {"body": "€" * 459}}}],
        },
        format="json",
    )
    assert response.status_code == 400
    assert "body: 7 parts; at most 6 (GSM-7)" in str(response.data)


def test_whatsapp_over_its_limit_is_failed_at_send_as_at_save(receiver, teammate, django_capture_on_commit_callbacks):
    _contacts(
        teammate.organisation,
        {"external_id": "long", "phone": "+447700900005", "attributes": {"note": "x" * 1601}},
        {"external_id": "fits", "phone": "+447700900006", "attributes": {"note": "x" * 1600}},
    )
    campaign = _sms_campaign(
        teammate, "", channels=("whatsapp",), content={"whatsapp": {"body": "{{ contact.attributes.note }}"}}
    )
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    refused, sent = _message(run, "long", "whatsapp"), _message(run, "fits", "whatsapp")
    assert (refused.status, refused.error, refused.parts) == (
        "failed",
        "WhatsApp message is 1,601 characters; WhatsApp allows 1,600",
        None,
    )
    assert (sent.status, sent.parts) == ("sent", None)
    assert [r["json"]["to"] for r in Peer.requests] == ["+447700900006"]


# --- preview ----------------------------------------------------------------------------------------------------


def test_the_preview_api_shows_the_parts_for_the_longest_values_seen(teammate):
    _contacts(
        teammate.organisation,
        {"external_id": "a", "phone": "+447700900011", "first_name": "Al"},
        {"external_id": "b", "phone": "+447700900012", "first_name": "Zoë"},
        {"external_id": "c", "phone": "+447700900013", "first_name": "Maximiliane"},
    )
    campaign = _sms_campaign(teammate, BODY, multipart=True)
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/preview/", {"channel": "sms"}, format="json")
    assert response.status_code == 200, response.data
    data = response.data
    # The previewed contact is the audience's first: "Al", 105 septets, one SMS.
    assert (data["rendered"]["length"]["encoding"], data["rendered"]["length"]["segments"]) == ("GSM-7", 1)
    longest = data["longest_values"]
    assert longest["fields"] == ["first_name"]
    assert longest["longest"] == {"first_name": {"septets": 11, "units": 11, "non_gsm": True}}  # "Maximiliane", "Zoë"
    # "Hi Maximiliane, " + 98 = 114 septets: one SMS; as UCS-2, 114 units: two parts.
    assert (longest["gsm"]["encoding"], longest["gsm"]["units"], longest["gsm"]["segments"]) == ("GSM-7", 114, 1)
    assert (longest["worst"]["encoding"], longest["worst"]["units"], longest["worst"]["segments"]) == (
        "UCS-2",
        114,
        2,
    )
    assert longest["non_gsm_example"] == {"field": "first_name", "value": "Zoë", "characters": ["ë"]}
    assert longest["summary"] == "up to 1 part (GSM-7); up to 2 parts (UCS-2 when a first name like 'Zoë' is used)"
    assert longest["refusal"] == ""  # multi-part allowed


def test_the_console_preview_warns_when_some_contacts_messages_would_not_be_sent(teammate):
    _contacts(
        teammate.organisation,
        {"external_id": "a", "phone": "+447700900021", "first_name": "Zoe"},
        {"external_id": "b", "phone": "+447700900022", "first_name": "Zoë"},
    )
    campaign = _sms_campaign(teammate, BODY)
    page = (
        console_client(teammate)
        .post(
            f"/campaigns/{campaign.pk}/content/preview/",
            {"v-0-name": "A", "v-0-allocation": "100", "v-0-sms-body": BODY, "preview_channel": "sms"},
        )
        .content.decode()
    )
    assert "106 characters · GSM-7 · 1 SMS · 54 left in this part" in page  # the previewed contact, Zoe
    assert (
        "Longest values seen: up to 1 part (GSM-7); up to 2 parts (UCS-2 when a first name like &#x27;Zoë&#x27; is"
        " used) · 106 characters at most" in page
    )
    assert "first_name: up to 3 characters, some not GSM-7" in page
    assert (
        "Some messages would not be sent: SMS is 2 parts (UCS-2, &#x27;ë&#x27; is not GSM-7); the campaign allows 1."
        in page
    )


def test_the_longest_values_are_measured_in_septets_and_attributes_too(teammate):
    # Eight euro signs are 16 septets, more than the 12 letters: the GSM-7 count takes the euros.
    _contacts(
        teammate.organisation,
        {"external_id": "a", "phone": "+447700900031", "attributes": {"city": "Londonderrys"}},
        {"external_id": "b", "phone": "+447700900032", "attributes": {"city": "€€€€€€€€"}},
        {"external_id": "c", "phone": "+447700900033", "attributes": {"city": 7}},
    )
    campaign = _sms_campaign(teammate, "{% set a = contact.attributes %}See you in {{ a.city }}!")  # through an alias
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/preview/", {"channel": "sms"}, format="json")
    longest = response.data["longest_values"]
    assert longest["fields"] == ["attributes.city"]
    assert longest["longest"] == {"attributes.city": {"septets": 16, "units": 12, "non_gsm": False}}
    assert longest["gsm"]["units"] == len("See you in !") + 16
    assert longest["non_gsm_example"] is None
    assert longest["summary"] == "up to 1 part (GSM-7)"


def test_the_parts_show_in_the_contact_export_and_the_admin(receiver, owner, django_capture_on_commit_callbacks):
    from django.contrib.auth import get_user_model
    from django.test import Client

    _zoe_and_zoe(owner.organisation)
    run = _run(owner, _sms_campaign(owner, BODY), django_capture_on_commit_callbacks)
    refused = _message(run, "zoe-umlaut")
    exported = owner.api.get(f"/api/v1/contacts/{refused.contact_id}/export/").json()["messages"]
    assert [(m["status"], m["parts"], m["error"]) for m in exported] == [
        ("failed", 2, "SMS is 2 parts (UCS-2, 'ë' is not GSM-7); the campaign allows 1")
    ]
    superuser = get_user_model().objects.create_superuser("root@example.com", "root@example.com", "pw-123456789")
    admin = Client()
    admin.force_login(superuser)
    page = admin.get(f"/admin/delivery/message/?id__exact={refused.pk}")
    assert page.status_code == 200
    assert '<td class="field-parts">2</td>' in page.content.decode()


def test_the_longest_values_scan_counts_as_the_standard_does(teammate):
    from campaigns.content.sms_longest import FieldLongest, longest_values

    _contacts(
        teammate.organisation,
        {"external_id": "a", "phone": "+447700900041", "first_name": "Ann", "attributes": {"nick": "😀😀"}},
        {"external_id": "b", "phone": "+447700900042", "first_name": "B`ob", "attributes": {"nick": "{brace}"}},
        {"external_id": "c", "phone": "+447700900043", "first_name": "Élodie", "attributes": {"nick": "ab"}},
    )
    seen = longest_values(teammate.organisation.pk, ["first_name", "attributes.nick"])
    # first_name: "Élodie" is GSM-7 (É is in the alphabet), 6 septets; "B`ob" needs UCS-2 (the backtick).
    # nick: "{brace}" is 9 septets; "😀😀" is 4 UTF-16 units and needs UCS-2.
    assert seen.fields == {
        "first_name": FieldLongest(septets=6, units=6, non_gsm=True),
        "attributes.nick": FieldLongest(septets=9, units=7, non_gsm=True),
    }
    assert seen.example == ("first_name", "B`ob")
