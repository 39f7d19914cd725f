"""Preferences: the recipient's preference centre (signed link), the API and the console page, each audited with
its source; and every preference type honoured at fan-out and again at send time (category, channel, global
opt-out, marketing-only unsubscribes, personal quiet hours)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.test import Client
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.content import links
from campaigns.models import Campaign, Channel, Variant
from compliance import services
from compliance.models import AuditLogEntry, ContactPreference, RunExclusion
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def contacts(organisation):
    rows = [
        {"external_id": f"p{i}", "email": f"p{i}@example.com", "phone": f"+4477009{i:05d}", "timezone": "UTC"}
        for i in range(8)
    ]
    contacts_upsert_rows(organisation=organisation, rows=rows)
    return {c.external_id: c for c in Contact.objects.filter(organisation=organisation)}


def _prefs_token(contact) -> str:
    return links.preferences_url(str(contact.organisation_id), str(contact.pk)).rsplit("/", 1)[1]


def test_channel_and_category_lists_agree_with_campaigns():
    assert set(services.CHANNELS) == set(Channel.values)
    assert set(services.CATEGORIES) == {c for c, _ in Campaign._meta.get_field("category").choices}


# --- API ---------------------------------------------------------------------------------------------------------


def test_the_api_reads_and_changes_preferences_and_audits_the_source(teammate, contacts):
    contact = contacts["p0"]
    url = f"/api/v1/contacts/{contact.pk}/preferences/"
    response = teammate.api.get(url)
    assert response.status_code == 200
    assert response.data == {
        "global_opt_out": False,
        "unsubscribed": False,
        "unsubscribed_at": None,
        "disabled_channels": [],
        "disabled_categories": [],
        "quiet_hours_start": None,
        "quiet_hours_end": None,
    }
    response = teammate.api.patch(
        url, {"disabled_channels": ["sms"], "quiet_hours_start": "22:00", "quiet_hours_end": "07:30"}, format="json"
    )
    assert response.status_code == 200, response.data
    assert response.data["disabled_channels"] == ["sms"]
    assert response.data["quiet_hours_start"] == "22:00:00" and response.data["quiet_hours_end"] == "07:30:00"
    full = {
        "global_opt_out": False,
        "unsubscribed": True,
        "disabled_channels": ["sms"],
        "disabled_categories": ["transactional"],
        "quiet_hours_start": None,
        "quiet_hours_end": None,
    }
    response = teammate.api.put(url, full, format="json")
    assert response.status_code == 200
    assert response.data["unsubscribed"] is True and response.data["unsubscribed_at"]
    preference = ContactPreference.objects.get(contact=contact)
    assert preference.disabled_categories == ["transactional"] and preference.quiet_hours_start is None
    entries = list(AuditLogEntry.objects.filter(action="contact.preferences").order_by("id"))
    assert len(entries) == 2
    assert entries[0].details == {
        "source": "api",
        "changes": {
            "disabled_channels": [[], ["sms"]],
            "quiet_hours_start": [None, "22:00:00"],
            "quiet_hours_end": [None, "07:30:00"],
        },
    }
    assert entries[0].actor_label.startswith("API key")
    assert set(entries[1].details["changes"]) == {
        "unsubscribed",
        "disabled_categories",
        "quiet_hours_start",
        "quiet_hours_end",
    }
    # The same state again changes and audits nothing.
    assert teammate.api.put(url, full, format="json").status_code == 200
    assert AuditLogEntry.objects.filter(action="contact.preferences").count() == 2


def test_bad_preferences_are_400s_with_field_errors(teammate, contacts):
    url = f"/api/v1/contacts/{contacts['p1'].pk}/preferences/"
    response = teammate.api.patch(url, {"disabled_channels": ["fax"], "quiet_hours_start": "25:00"}, format="json")
    assert response.status_code == 400
    assert set(response.data) == {"disabled_channels", "quiet_hours_start"}
    response = teammate.api.patch(url, {"quiet_hours_start": "22:00"}, format="json")
    assert response.status_code == 400 and "quiet_hours_end" in response.data
    response = teammate.api.patch(url, {"quiet_hours_start": "22:00", "quiet_hours_end": "22:00"}, format="json")
    assert response.status_code == 400 and "quiet_hours_end" in response.data
    response = teammate.api.patch(url, {"global_opt_out": "maybe"}, format="json")
    assert response.status_code == 400 and "global_opt_out" in response.data
    assert not ContactPreference.objects.exists()


def test_preferences_are_scoped_and_role_checked(teammate, analyst, outsider, anonymous, contacts):
    url = f"/api/v1/contacts/{contacts['p2'].pk}/preferences/"
    assert outsider.api.get(url).status_code == 404
    assert outsider.api.patch(url, {"global_opt_out": True}, format="json").status_code == 404
    assert anonymous.get(url).status_code == 401
    assert teammate.api.get("/api/v1/contacts/999999999/preferences/").status_code == 404
    assert analyst.api.get(url).status_code == 200
    assert analyst.api.patch(url, {"global_opt_out": True}, format="json").status_code == 403
    assert not ContactPreference.objects.exists()


# --- the recipient's preference centre ------------------------------------------------------------------------------


def test_the_preference_centre_shows_preferences_and_a_get_changes_nothing(contacts):
    contact = contacts["p3"]
    response = Client().get(f"/p/{_prefs_token(contact)}")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Your preferences" in body and "p…@example.com" in body
    assert not ContactPreference.objects.exists()


def test_the_recipient_changes_preferences_without_login_or_csrf(contacts):
    contact = contacts["p4"]
    client = Client(enforce_csrf_checks=True)
    data = {
        "marketing": "on",
        "transactional": "on",
        "channels_on": ["email"],
        "quiet_hours_start": "21:00",
        "quiet_hours_end": "08:00",
    }
    response = client.post(f"/p/{_prefs_token(contact)}", data)
    assert response.status_code == 200
    assert "Saved" in response.content.decode()
    preference = ContactPreference.objects.get(contact=contact)
    assert sorted(preference.disabled_channels) == ["sms", "whatsapp"]
    assert preference.unsubscribed_at is None and preference.disabled_categories == []
    assert preference.quiet_hours_start == dt.time(21) and preference.quiet_hours_end == dt.time(8)
    entry = AuditLogEntry.objects.get(action="contact.preferences")
    assert entry.details["source"] == "recipient_page" and entry.actor_label == "recipient (preference centre)"
    # Unticking marketing unsubscribes; unticking everything else too.
    client.post(f"/p/{_prefs_token(contact)}", {"global_opt_out": "on"})
    preference.refresh_from_db()
    assert preference.global_opt_out and preference.unsubscribed_at is not None
    assert preference.disabled_categories == ["transactional"]


def test_the_preference_centre_keeps_channels_it_does_not_show(teammate, contacts):
    contact = contacts["p5"]
    teammate.api.patch(f"/api/v1/contacts/{contact.pk}/preferences/", {"disabled_channels": ["in_app"]}, format="json")
    Client().post(
        f"/p/{_prefs_token(contact)}",
        {"marketing": "on", "transactional": "on", "channels_on": ["email", "sms", "whatsapp"]},
    )
    assert ContactPreference.objects.get(contact=contact).disabled_channels == ["in_app"]


def test_bad_preference_input_on_the_page_is_a_400_and_changes_nothing(contacts):
    contact = contacts["p6"]
    response = Client().post(f"/p/{_prefs_token(contact)}", {"marketing": "on", "quiet_hours_start": "21:00"})
    assert response.status_code == 400
    assert "Quiet hours need both" in response.content.decode()
    assert not AuditLogEntry.objects.filter(action="contact.preferences").exists()


def test_bad_preference_tokens_get_the_neutral_page(contacts, other_organisation):
    contact = contacts["p7"]
    now = str(int(time.time()))
    tokens = [
        _prefs_token(contact)[:-3] + "AAA",
        links.sign("preferences", str(other_organisation.pk), str(contact.pk), now),
        links.sign("preferences", str(contact.organisation_id), "0", now),
        links.sign("preferences", str(contact.organisation_id), str(contact.pk), str(int(time.time()) - 91 * 86400)),
        links.unsubscribe_token(str(contact.organisation_id), str(contact.pk)),  # another purpose's token
    ]
    for token in tokens:
        response = Client().post(f"/p/{token}", {"global_opt_out": "on"})
        assert response.status_code == 200
        assert "This link can't be used" in response.content.decode()
    assert not ContactPreference.objects.exists()


# --- console ---------------------------------------------------------------------------------------------------------


def test_the_console_contact_page_changes_preferences(teammate, owner, outsider, contacts):
    contact = contacts["p0"]
    client = console_client(teammate)
    page = client.get(f"/compliance/contacts/{contact.pk}/")
    assert page.status_code == 200 and "Preferences" in page.content.decode()
    response = client.post(
        f"/compliance/contacts/{contact.pk}/",
        {"channels_on": ["email", "sms", "whatsapp", "in_app", "webhook"], "category_marketing": "on"},
    )
    assert response.status_code == 302
    preference = ContactPreference.objects.get(contact=contact)
    assert preference.disabled_categories == ["transactional"] and preference.disabled_channels == []
    entry = AuditLogEntry.objects.get(action="contact.preferences")
    assert entry.details["source"] == "console" and entry.actor_label == teammate.membership.user.username
    owner_page = console_client(owner).get(f"/compliance/contacts/{contact.pk}/").content.decode()
    assert "contact.preferences" in owner_page  # admins see the contact's audit trail
    assert console_client(outsider).get(f"/compliance/contacts/{contact.pk}/").status_code == 404
    assert Client().get(f"/compliance/contacts/{contact.pk}/").status_code == 302


def test_the_console_refuses_changes_from_read_only_roles(analyst, contacts):
    contact = contacts["p1"]
    client = console_client(analyst)
    assert client.get(f"/compliance/contacts/{contact.pk}/").status_code == 200
    assert client.post(f"/compliance/contacts/{contact.pk}/", {"global_opt_out": "on"}).status_code == 403
    assert not ContactPreference.objects.exists()


# --- at fan-out and at send time -------------------------------------------------------------------------------------


def _campaign(organisation, *, category="marketing", channels=("email", "sms")):
    campaign = CampaignFactory(
        organisation=organisation,
        channels=list(channels),
        category=category,
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "p"},
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    content = {"email": {"subject": "Hi", "html": "<p>Hello</p>"}, "sms": {"body": "Hi"}}
    content = {channel: content[channel] for channel in channels}
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    return campaign


def _run(persona, campaign, capture) -> Run:
    with capture(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with capture(execute=False):
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    return run


def _outcome(run) -> dict[tuple[str, str], tuple[str, str]]:
    return {
        (m.contact.external_id, m.channel): (m.status, m.error)
        for m in Message.objects.filter(run=run).select_related("contact")
    }


PREFERENCES = {
    "p1": {"global_opt_out": True},
    "p2": {"unsubscribed": True},
    "p3": {"disabled_channels": ["sms"]},
    "p4": {"disabled_categories": ["marketing"]},
    "p5": {"disabled_categories": ["transactional"]},
}


def _set(actor, contacts, which):
    for name, changes in which.items():
        services.preference_update(actor=actor, contact=contacts[name], changes=changes, source="api")


@pytest.mark.parametrize("category", ["marketing", "transactional"])
def test_each_preference_is_honoured_at_fan_out(teammate, contacts, category, django_capture_on_commit_callbacks):
    _set(teammate.actor, contacts, PREFERENCES)
    run = _run(teammate, _campaign(teammate.organisation, category=category), django_capture_on_commit_callbacks)
    keys = set(_outcome(run))
    assert not {("p1", "email"), ("p1", "sms"), ("p3", "sms")} & keys
    assert ("p3", "email") in keys
    # Every excluded recipient is on record with its reason (and channel when only one was left out).
    recorded = {
        (x.contact_id, x.channel, x.reason)
        for x in RunExclusion.objects.filter(run_id=run.pk, campaign_id=run.campaign_id)
    }
    if category == "marketing":
        assert run.excluded == {"opted_out": 1, "unsubscribed": 1, "category_disabled": 1, "channel_disabled": 1}
        assert not {("p2", "email"), ("p4", "email")} & keys and ("p5", "email") in keys
        assert recorded == {
            (contacts["p1"].pk, "", "opted_out"),
            (contacts["p2"].pk, "", "unsubscribed"),
            (contacts["p3"].pk, "sms", "channel_disabled"),
            (contacts["p4"].pk, "", "category_disabled"),
        }
    else:
        # Unsubscribing is from marketing: receipts and password resets still reach them.
        assert run.excluded == {"opted_out": 1, "category_disabled": 1, "channel_disabled": 1}
        assert {("p2", "email"), ("p4", "email")} <= keys and ("p5", "email") not in keys
        assert recorded == {
            (contacts["p1"].pk, "", "opted_out"),
            (contacts["p3"].pk, "sms", "channel_disabled"),
            (contacts["p5"].pk, "", "category_disabled"),
        }


@pytest.mark.parametrize("category", ["marketing", "transactional"])
def test_each_preference_is_honoured_at_send_time(teammate, contacts, category, django_capture_on_commit_callbacks):
    run = _run(teammate, _campaign(teammate.organisation, category=category), django_capture_on_commit_callbacks)
    assert run.excluded == {}
    _set(teammate.actor, contacts, PREFERENCES)  # after fan-out: queued messages must notice
    sending.run_send_for(run.pk, seconds=60, batch_size=50)
    outcome = _outcome(run)
    assert outcome[("p1", "email")] == outcome[("p1", "sms")] == ("skipped", "opted_out")
    assert outcome[("p3", "sms")] == ("skipped", "channel_disabled")
    assert outcome[("p3", "email")][0] == "delivered"
    if category == "marketing":
        assert outcome[("p2", "email")] == ("skipped", "unsubscribed")
        assert outcome[("p4", "email")] == ("skipped", "category_disabled")
        assert outcome[("p5", "email")][0] == "delivered"
    else:
        assert outcome[("p2", "email")][0] == "delivered"
        assert outcome[("p4", "email")][0] == "delivered"
        assert outcome[("p5", "email")] == ("skipped", "category_disabled")


def _quiet_around_now() -> dict[str, str]:
    now = timezone.now().astimezone(dt.UTC)
    start = (now - dt.timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (now + dt.timedelta(hours=2)).time().replace(second=0, microsecond=0)
    return {"quiet_hours_start": start.isoformat(), "quiet_hours_end": end.isoformat()}


def test_personal_quiet_hours_defer_marketing_until_they_end(teammate, contacts, django_capture_on_commit_callbacks):
    run = _run(teammate, _campaign(teammate.organisation, channels=("email",)), django_capture_on_commit_callbacks)
    _set(teammate.actor, contacts, {"p6": _quiet_around_now()})
    sending.run_send_for(run.pk, seconds=60, batch_size=50)
    message = Message.objects.get(run=run, contact=contacts["p6"])
    assert message.status == "queued" and message.attempts == 0
    wait = (message.due_at - timezone.now()).total_seconds()
    assert 3600 < wait <= 2 * 3600 + 60
    assert Message.objects.get(run=run, contact=contacts["p7"]).status == "delivered"


def test_personal_quiet_hours_do_not_hold_transactional_messages(
    teammate, contacts, django_capture_on_commit_callbacks
):
    campaign = _campaign(teammate.organisation, category="transactional", channels=("email",))
    run = _run(teammate, campaign, django_capture_on_commit_callbacks)
    _set(teammate.actor, contacts, {"p6": _quiet_around_now()})
    sending.run_send_for(run.pk, seconds=60, batch_size=50)
    assert Message.objects.get(run=run, contact=contacts["p6"]).status == "delivered"


def test_quiet_hours_across_midnight_in_the_contacts_timezone(db):
    from django.db import connection

    at = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)  # 01:30 CET, just before the clocks go forward
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT cs_quiet_hours_end(%s, 'Europe/Paris', '22:00', '07:00'),"
            " cs_quiet_hours_end(%s, 'Europe/Paris', '22:00', '07:00'),"
            " cs_quiet_hours_end(%s, 'Europe/Paris', '09:00', '17:00'),"
            " cs_quiet_hours_end(%s, 'UTC', NULL, NULL)",
            [at, at + dt.timedelta(hours=12), at + dt.timedelta(hours=9), at],
        )
        overnight, midday, working_hours, none = cursor.fetchone()
    assert overnight == dt.datetime(2026, 3, 29, 5, 0, tzinfo=dt.UTC)  # 07:00 CEST, after the clocks went forward
    assert midday is None
    assert working_hours == dt.datetime(2026, 3, 29, 15, 0, tzinfo=dt.UTC)  # 17:00 CEST
    assert none is None
