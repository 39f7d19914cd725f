"""Unsubscribe links: the confirmation page (GET changes nothing), the page POST with a reason, RFC 8058 one-click
POSTs without cookie or CSRF, neutral answers to bad tokens, rate limiting, replay, an unsubscribe while a run is
sending, attribution to the message in the campaign's metrics, the audit log, and the per-campaign list."""

from __future__ import annotations

import csv
import io
import time

import pytest
from django.test import Client

from analytics.models import EngagementEvent
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.content import links
from campaigns.models import Variant
from compliance.models import AuditLogEntry, ContactPreference, Unsubscribe
from delivery import runs, sending
from delivery.models import Message, Run, SandboxHandoff
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db

N = 30
ONE_CLICK = "List-Unsubscribe=One-Click"


@pytest.fixture
def contacts(organisation):
    rows = [{"external_id": f"u{i}", "email": f"u{i}@example.com", "first_name": f"N{i}"} for i in range(N)]
    contacts_upsert_rows(organisation=organisation, rows=rows)
    return {c.external_id: c for c in Contact.objects.filter(organisation=organisation)}


@pytest.fixture
def campaign(organisation, contacts):
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "u"},
        sandbox_profile={"failed": 0, "bounced": 0, "engagement": {"open": 0, "click": 0, "machine_open": 0}},
    )
    content = {"email": {"subject": "Hi", "html": "<p>Hello {{ contact.first_name }}</p>"}}
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    return campaign


def _prepared_run(persona, campaign, capture) -> Run:
    with capture(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with capture(execute=False):
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    return run


def _drain(run: Run) -> None:
    sending.run_send_for(run.pk, seconds=60, batch_size=50)
    run.refresh_from_db()


def _token(contact, message_id: str = "") -> str:
    return links.unsubscribe_token(str(contact.organisation_id), str(contact.pk), message_id)


def _browser() -> Client:
    return Client(enforce_csrf_checks=True)


def _one_click(token: str, client: Client | None = None):
    return (client or _browser()).post(f"/u/{token}", data=ONE_CLICK, content_type="application/x-www-form-urlencoded")


def test_it_shows_a_confirmation_page_and_a_get_changes_nothing(contacts):
    contact = contacts["u1"]
    for _ in range(3):  # a link scanner fetching it repeatedly
        response = _browser().get(f"/u/{_token(contact)}")
        assert response.status_code == 200
    body = response.content.decode()
    assert "Stop all marketing messages from <strong>Acme</strong>" in body
    assert "u…@example.com" in body and "u1@example.com" not in body
    assert 'method="post"' in body
    assert not ContactPreference.objects.filter(contact=contact).exists()
    assert not Unsubscribe.objects.exists()
    assert not AuditLogEntry.objects.filter(action__startswith="contact.").exists()


def test_it_unsubscribes_from_the_page_with_a_reason_and_audits_it(contacts):
    contact = contacts["u2"]
    response = _browser().post(f"/u/{_token(contact)}", {"reason": "too_many"})
    assert response.status_code == 200
    assert "You're unsubscribed" in response.content.decode()
    assert "/p/" in response.content.decode()  # the preference centre is offered
    preference = ContactPreference.objects.get(contact=contact)
    assert preference.unsubscribed_at is not None
    record = Unsubscribe.objects.get()
    assert (record.contact_id, record.source, record.reason, record.campaign_id) == (
        contact.pk,
        "page",
        "Too many emails",
        None,
    )
    entry = AuditLogEntry.objects.get(action="contact.unsubscribe")
    assert entry.organisation_id == contact.organisation_id
    assert entry.target_type == "audiences.contact" and entry.target_id == str(contact.pk)
    assert entry.actor_label == "recipient (unsubscribe page)"
    assert entry.details["source"] == "page" and entry.details["reason"] == "Too many emails"


def test_an_other_reason_keeps_the_recipients_words(contacts):
    contact = contacts["u3"]
    _browser().post(f"/u/{_token(contact)}", {"reason": "other", "reason_detail": "moved abroad"})
    assert Unsubscribe.objects.get().reason == "Other: moved abroad"


def test_one_click_post_works_without_cookie_csrf_or_login_and_answers_200(contacts):
    contact = contacts["u4"]
    client = _browser()
    response = _one_click(_token(contact), client)
    assert response.status_code == 200
    assert "Location" not in response
    assert response.content == b"Unsubscribed."
    assert not client.cookies  # nothing set, nothing needed
    assert ContactPreference.objects.get(contact=contact).unsubscribed_at is not None
    assert Unsubscribe.objects.get().source == "one_click"
    assert AuditLogEntry.objects.get(action="contact.unsubscribe").actor_label == "recipient (one-click unsubscribe)"


def test_a_replayed_link_changes_nothing_more_and_a_later_reason_is_added(contacts):
    contact = contacts["u5"]
    token = _token(contact)
    assert _one_click(token).status_code == 200
    first = ContactPreference.objects.get(contact=contact).unsubscribed_at
    assert _one_click(token).status_code == 200
    assert _browser().post(f"/u/{token}", {}).status_code == 200
    assert ContactPreference.objects.get(contact=contact).unsubscribed_at == first
    assert Unsubscribe.objects.count() == 1
    assert AuditLogEntry.objects.filter(action="contact.unsubscribe").count() == 1
    # The page after a one-click POST may still say why.
    _browser().post(f"/u/{token}", {"reason": "not_relevant"})
    assert Unsubscribe.objects.get().reason == "Not relevant to me"
    assert AuditLogEntry.objects.filter(action="contact.unsubscribe_reason").count() == 1
    page = _browser().get(f"/u/{token}").content.decode()
    assert "already unsubscribed" in page


def test_bad_tokens_get_the_same_neutral_page_and_change_nothing(contacts, other_organisation, settings):
    settings.RECIPIENT_LINK_FAILURE_LIMIT = "100/600"
    contact = contacts["u6"]
    good = _token(contact)
    payload, signature = good.split(".")
    tampered = f"{payload}.{signature[:-2]}AA"
    other_org = links.unsubscribe_token(str(other_organisation.pk), str(contact.pk))
    seed = links.unsubscribe_token(str(contact.organisation_id), "0")
    unknown = links.unsubscribe_token(str(contact.organisation_id), "999999999")
    not_uuid = links.sign("unsubscribe", "not-a-uuid", str(contact.pk), "", str(int(time.time())))
    expired = links.sign(
        "unsubscribe", str(contact.organisation_id), str(contact.pk), "", str(int(time.time()) - 91 * 86400)
    )
    preference_token = links.preferences_url(str(contact.organisation_id), str(contact.pk)).rsplit("/", 1)[1]
    bodies = set()
    for token in [tampered, other_org, seed, unknown, not_uuid, expired, preference_token, "garbage", "a.b"]:
        for response in (_browser().get(f"/u/{token}"), _one_click(token)):
            assert response.status_code == 200
            bodies.add(response.content)
    assert len(bodies) == 1
    assert b"This link can't be used" in bodies.pop()
    assert not ContactPreference.objects.exists()
    assert not Unsubscribe.objects.exists()
    assert not AuditLogEntry.objects.filter(action__startswith="contact.").exists()


def test_tokens_stay_valid_for_at_least_sixty_days(contacts):
    contact = contacts["u7"]
    token = links.sign(
        "unsubscribe", str(contact.organisation_id), str(contact.pk), "", str(int(time.time()) - 61 * 86400)
    )
    assert _one_click(token).status_code == 200
    assert ContactPreference.objects.get(contact=contact).unsubscribed_at is not None


def test_repeated_bad_tries_from_one_ip_are_refused_even_with_a_good_token(contacts, settings):
    settings.RECIPIENT_LINK_FAILURE_LIMIT = "3/600"
    for i in range(3):
        assert _browser().get(f"/u/bad-token-{i}").status_code == 200
    response = _browser().get(f"/u/{_token(contacts['u8'])}")
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert not ContactPreference.objects.exists()
    # Another client is not affected.
    assert _browser().get(f"/u/{_token(contacts['u8'])}", REMOTE_ADDR="10.1.2.3").status_code == 200


def test_all_requests_from_one_ip_are_rate_limited(contacts, settings):
    settings.RECIPIENT_LINK_RATE_LIMIT = "5/60"
    token = _token(contacts["u9"])
    codes = [_browser().get(f"/u/{token}").status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2


def test_an_unsubscribe_while_a_run_is_sending_stops_every_further_message(
    teammate, campaign, contacts, django_capture_on_commit_callbacks
):
    run = _prepared_run(teammate, campaign, django_capture_on_commit_callbacks)
    assert run.status == "sending"
    sending.run_send_batch(run.pk, batch_size=10)
    queued = Message.objects.filter(run=run, status="queued").select_related("contact")
    target = queued.first().contact
    assert _one_click(_token(target)).status_code == 200
    _drain(run)
    message = Message.objects.get(run=run, contact=target)
    assert (message.status, message.error) == ("skipped", "unsubscribed")
    assert not SandboxHandoff.objects.filter(idempotency_key=f"{run.pk}:{target.pk}:email").exists()
    assert run.sent_count == N - 1 and run.skipped_count == 1
    # The next campaign leaves them out at fan-out.
    second = CampaignFactory(
        organisation=campaign.organisation,
        channels=["email"],
        audience_rules={"field": "external_id", "op": "starts_with", "value": "u"},
    )
    second_run = _prepared_run(teammate, second, django_capture_on_commit_callbacks)
    assert second_run.excluded == {"unsubscribed": 1}
    assert not Message.objects.filter(run=second_run, contact=target).exists()


def test_an_unsubscribe_from_a_message_is_attributed_and_counted_once(
    teammate, campaign, contacts, django_capture_on_commit_callbacks
):
    run = _prepared_run(teammate, campaign, django_capture_on_commit_callbacks)
    _drain(run)
    message = Message.objects.get(run=run, contact=contacts["u10"])
    token = _token(contacts["u10"], str(message.pk))
    assert _one_click(token).status_code == 200
    assert _one_click(token).status_code == 200  # replayed: counted once
    event = EngagementEvent.objects.get(kind="unsubscribe")
    assert (event.message_id, event.run_id, event.campaign_id, event.variant_id, event.contact_id, event.channel) == (
        message.pk,
        run.pk,
        campaign.pk,
        message.variant_id,
        contacts["u10"].pk,
        "email",
    )
    assert event.dedupe_key == f"unsubscribe:{message.pk}"
    record = Unsubscribe.objects.get()
    assert (record.campaign_id, record.run_id, record.message_id, record.channel) == (
        campaign.pk,
        run.pk,
        message.pk,
        "email",
    )
    entry = AuditLogEntry.objects.get(action="contact.unsubscribe")
    assert entry.details["campaign_id"] == str(campaign.pk) and entry.details["message_id"] == str(message.pk)
    metrics = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/metrics/")
    assert metrics.status_code == 200
    assert metrics.data["counts"]["unsubscribed"] == 1


def test_a_message_id_of_another_contact_is_not_attributed(
    teammate, campaign, contacts, django_capture_on_commit_callbacks
):
    run = _prepared_run(teammate, campaign, django_capture_on_commit_callbacks)
    _drain(run)
    someone_else = Message.objects.get(run=run, contact=contacts["u11"])
    assert _one_click(_token(contacts["u12"], str(someone_else.pk))).status_code == 200
    assert ContactPreference.objects.get(contact=contacts["u12"]).unsubscribed_at is not None
    assert Unsubscribe.objects.get().campaign_id is None
    assert not EngagementEvent.objects.filter(kind="unsubscribe").exists()


# --- the per-campaign list -------------------------------------------------------------------------------------------


@pytest.fixture
def unsubscribed(teammate, campaign, contacts, django_capture_on_commit_callbacks):
    run = _prepared_run(teammate, campaign, django_capture_on_commit_callbacks)
    _drain(run)
    for name, reason in [("u13", "too_many"), ("u14", "other")]:
        message = Message.objects.get(run=run, contact=contacts[name])
        data = {"reason": reason, "reason_detail": '=HYPERLINK("http://evil")' if reason == "other" else ""}
        _browser().post(f"/u/{_token(contacts[name], str(message.pk))}", data)
    return campaign


def test_the_api_lists_a_campaigns_unsubscribes_with_reason_and_time(teammate, analyst, unsubscribed):
    for persona in (teammate, analyst):
        response = persona.api.get(f"/api/v1/campaigns/{unsubscribed.pk}/unsubscribes/")
        assert response.status_code == 200
        assert response.data["count"] == 2
        rows = response.data["results"]
        assert [r["contact"] for r in rows] == ["u14", "u13"]
        assert rows[1]["reason"] == "Too many emails" and rows[1]["email"] == "u13@example.com"
        assert rows[1]["channel"] == "email" and rows[1]["source"] == "page" and rows[1]["unsubscribed_at"]
    paged = teammate.api.get(f"/api/v1/campaigns/{unsubscribed.pk}/unsubscribes/?page_size=1&page=2")
    assert paged.data["results"][0]["contact"] == "u13"
    assert teammate.api.get(f"/api/v1/campaigns/{unsubscribed.pk}/unsubscribes/?page_size=0").status_code == 400


def test_another_organisations_campaign_unsubscribes_are_not_found(outsider, anonymous, unsubscribed):
    assert outsider.api.get(f"/api/v1/campaigns/{unsubscribed.pk}/unsubscribes/").status_code == 404
    assert console_client(outsider).get(f"/campaigns/{unsubscribed.pk}/unsubscribes/").status_code == 404
    assert console_client(outsider).get(f"/campaigns/{unsubscribed.pk}/unsubscribes.csv").status_code == 404
    assert anonymous.get(f"/api/v1/campaigns/{unsubscribed.pk}/unsubscribes/").status_code == 401
    assert Client().get(f"/campaigns/{unsubscribed.pk}/unsubscribes/").status_code == 302


def test_the_console_page_and_csv_list_them_safely(teammate, unsubscribed):
    client = console_client(teammate)
    page = client.get(f"/campaigns/{unsubscribed.pk}/unsubscribes/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "u13@example.com" in body and "Too many emails" in body
    detail = client.get(f"/campaigns/{unsubscribed.pk}/").content.decode()
    assert f"/campaigns/{unsubscribed.pk}/unsubscribes/" in detail
    response = client.get(f"/campaigns/{unsubscribed.pk}/unsubscribes.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:3] == ["unsubscribed_at", "contact", "email"]
    by_contact = {row[1]: row for row in rows[1:]}
    assert by_contact["u13"][6] == "Too many emails"
    # A recipient's words that a spreadsheet would run as a formula are quoted.
    assert by_contact["u14"][6] == 'Other: =HYPERLINK("http://evil")'
    from compliance.exports import safe_cell

    assert [safe_cell(v) for v in ["=1+1", "+1", "-1", "@x", "\tx", "\rx", "ok"]] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@x",
        "'\tx",
        "'\rx",
        "ok",
    ]


def test_unsubscribing_again_after_resubscribing_reuses_the_messages_record(
    teammate, campaign, contacts, django_capture_on_commit_callbacks
):
    run = _prepared_run(teammate, campaign, django_capture_on_commit_callbacks)
    _drain(run)
    contact = contacts["u15"]
    token = _token(contact, str(Message.objects.get(run=run, contact=contact).pk))
    assert _one_click(token).status_code == 200
    prefs = links.preferences_url(str(contact.organisation_id), str(contact.pk)).rsplit("/", 1)[1]
    _browser().post(f"/p/{prefs}", {"marketing": "on", "transactional": "on", "channels_on": ["email"]})
    assert ContactPreference.objects.get(contact=contact).unsubscribed_at is None
    assert _browser().post(f"/u/{token}", {"reason": "too_many"}).status_code == 200
    assert ContactPreference.objects.get(contact=contact).unsubscribed_at is not None
    assert Unsubscribe.objects.get().reason == "Too many emails"
    assert AuditLogEntry.objects.filter(action="contact.unsubscribe").count() == 2
    assert EngagementEvent.objects.filter(kind="unsubscribe").count() == 1
