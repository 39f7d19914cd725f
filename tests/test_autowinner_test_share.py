"""The auto-winner as marketers use it: a two-variant email campaign created over the API sends a 20 % test share
split across the variants, the campaign keeps running once that is out, engagement makes B win, and the beat task's
look sends B — and only B — to exactly the other 80 %: counted per variant in the database and as mails at a real
SMTP server, nobody getting two. The owner (the API key's creator) gets the decision by email and in the console,
and it is audited. Then the fallback: nothing significant by the window's end sends the chosen variant to the rest,
and a campaign without an owner notifies the organisation's admins."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from email import policy
from email.parser import BytesParser

import pytest

from analytics import autowinner, services
from analytics.models import ExperimentDecision, Notice
from analytics.tasks import auto_winner_evaluate_task
from audiences.contacts import contacts_upsert_rows
from audiences.services import api_key_create
from campaigns.models import Campaign, CampaignStatus
from compliance.models import AuditLogEntry
from delivery import runs, sending
from delivery.backends import reset_backends
from delivery.models import Message, Run
from tests.factories import console_client

pytestmark = pytest.mark.django_db

HTML = "<p>Hi <a href='https://acme.example/offer'>the offer</a></p>"


@pytest.fixture
def _email_over_smtp(settings):
    settings.DELIVERY_BACKENDS = {
        "default": "delivery.sandbox.SandboxBackend",
        "email": "delivery.channels.EmailBackend",
    }
    reset_backends()
    yield
    reset_backends()


def _api_client(persona, *, key_creator=None):
    """An API client whose key was issued by `key_creator` (a persona) or by nobody (a system-issued key)."""
    from rest_framework.test import APIClient

    from tests.factories import issue_key

    client = APIClient()
    if key_creator is None:
        secret = issue_key(persona.organisation, "marketer", name="integration")
    else:
        secret = api_key_create(actor=key_creator.actor, name="integration", role="marketer").secret
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def _campaign_over_the_api(api, persona, *, contacts, **experiment):
    organisation = persona.organisation
    organisation.sender_email, organisation.postal_address = "news@acme.example", "1 Main St"
    organisation.save()
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"t{i}", "email": f"t{i}@example.com"} for i in range(contacts)],
    )
    body = {
        "name": "Spring test",
        "channels": ["email"],
        "audience": {"rules": {"field": "email", "op": "exists"}},
        "variants": [
            {"name": name, "allocation_percent": 50, "content": {"email": {"subject": f"Offer {name}", "html": HTML}}}
            for name in ("A", "B")
        ],
        "sandbox_profile": {"bounced": 0, "failed": 0,
                            "engagement": {"open": 0, "machine_open": 0, "click": 0, "conversion": 0}},
        "auto_winner_enabled": True,
        "auto_winner_metric": "click",
        "auto_winner_level": 95,
        "auto_winner_min_sample": 100,
        **experiment,
    }  # fmt: skip
    created = api.post("/api/v1/campaigns/", body, format="json")
    assert created.status_code == 201, created.data
    return Campaign.objects.get(pk=created.json()["id"])


def _send_run(run_id):
    runs.run_prepare(run_id)
    while Message.objects.filter(run_id=run_id, status="queued").exists():
        assert sending.run_send_for(run_id, seconds=30).claimed  # every spell makes progress, however slow the box
    runs.run_finish_if_done(run_id)
    return Run.objects.get(pk=run_id)


def _per_variant(run):
    return dict(Counter(Message.objects.filter(run=run).values_list("variant__name", flat=True)))


def test_the_winner_goes_to_exactly_the_other_80_percent(
    smtp, owner, django_capture_on_commit_callbacks, _email_over_smtp
):
    owner.membership.user.email = "owner@acme.example"
    owner.membership.user.save()
    api = _api_client(owner, key_creator=owner)
    campaign = _campaign_over_the_api(api, owner, contacts=1500, experiment_test_percent=20)
    assert campaign.owner == owner.membership.user  # the API key's creator
    with django_capture_on_commit_callbacks(execute=False):
        assert api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        test_run = _send_run(Run.objects.get(campaign=campaign).pk)

    # The test share: 20 % of 1,500, split across A and B, all out — and the campaign still running.
    assert (test_run.phase, test_run.status, test_run.audience_count, test_run.sent_count) == (
        "test",
        "completed",
        300,
        300,
    )
    first = _per_variant(test_run)
    assert sum(first.values()) == 300 and first["A"] > 100 and first["B"] > 100
    assert len(smtp.messages) == 300
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.RUNNING

    # Recipients click: 80 % of B's, 5 % of A's (the engagement webhook path).
    clicks = []
    for name, share in (("A", 0.05), ("B", 0.8)):
        messages = list(Message.objects.filter(run=test_run, variant__name=name).order_by("id"))
        clicks += [
            {"message_id": m.pk, "kind": "click", "url": "https://acme.example/offer", "dedupe": f"click:{m.pk}"}
            for m in messages[: int(len(messages) * share)]
        ]
    assert services.engagement_record_many(clicks) == len(clicks)

    # celery-beat's look, with nothing sending any more.
    with django_capture_on_commit_callbacks(execute=True):
        assert auto_winner_evaluate_task() == 1
    decision = ExperimentDecision.objects.get(campaign=campaign)
    b = campaign.variants.get(name="B")
    assert decision.winner_id == b.pk and decision.method.startswith("mixture SPRT")
    winner_run = Run.objects.get(campaign=campaign, phase="winner")
    with django_capture_on_commit_callbacks(execute=False):
        winner_run = _send_run(winner_run.pk)

    # Exactly the other 1,200 got B; nobody got A in the second phase; nobody got two messages.
    assert (winner_run.status, winner_run.audience_count, winner_run.sent_count) == ("completed", 1200, 1200)
    assert _per_variant(winner_run) == {"B": 1200}
    per_contact = Counter(Message.objects.filter(run__campaign=campaign).values_list("contact_id", flat=True))
    assert len(per_contact) == 1500 and set(per_contact.values()) == {1}
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.COMPLETED
    listed = api.get(f"/api/v1/runs/?campaign={campaign.pk}").json()["results"]
    assert sorted((r["number"], r["phase"], r["audience_count"]) for r in listed) == [
        (1, "test", 300),
        (2, "winner", 1200),
    ]

    # At the SMTP server: 1,500 campaign mails to 1,500 addresses, A only to A's test share, and one decision mail.
    parsed = [(rcpt, BytesParser(policy=policy.default).parsebytes(raw)) for _f, rcpt, raw in smtp.messages]
    campaign_mails = [(rcpt[0], str(mail["Subject"])) for rcpt, mail in parsed if "Offer" in str(mail["Subject"])]
    assert Counter(subject for _to, subject in campaign_mails) == {"Offer A": first["A"], "Offer B": first["B"] + 1200}
    assert len({to for to, _subject in campaign_mails}) == 1500
    decision_mails = [(rcpt, mail) for rcpt, mail in parsed if str(mail["Subject"]).startswith("Auto-winner chosen")]
    assert [rcpt for rcpt, _mail in decision_mails] == [["owner@acme.example"]]
    assert "variant B won on click rate (people) at 95%" in decision_mails[0][1].get_content()
    assert "the rest of the audience now gets it" in decision_mails[0][1].get_content()

    # In the console (dashboard and campaign page) and in the audit log.
    notice = Notice.objects.get(campaign=campaign)
    assert notice.user == owner.membership.user and notice.text.startswith("Spring test: variant B won")
    browser = console_client(owner)
    assert "Spring test: variant B won" in browser.get("/analytics/").content.decode()
    assert "Spring test: variant B won" in browser.get(f"/campaigns/{campaign.pk}/").content.decode()
    entry = AuditLogEntry.objects.get(action="campaign.auto_winner_decided", target_id=str(campaign.pk))
    assert entry.details["winner_name"] == "B" and entry.details["fallback"] is False
    assert entry.details["notified"] == [owner.membership.user.get_username()]
    assert entry.details["winner_run"] == str(winner_run.pk)


def test_nothing_significant_by_the_windows_end_sends_the_chosen_fallback(
    smtp, owner, teammate, django_capture_on_commit_callbacks
):
    owner.membership.user.email = "admin@acme.example"
    owner.membership.user.save()
    api = _api_client(teammate)  # a key nobody in particular issued: the campaign has no owner
    campaign = _campaign_over_the_api(
        api,
        teammate,
        contacts=400,
        experiment_test_percent=50,
        experiment_window_hours=2,
        experiment_fallback="variant",
        experiment_fallback_variant="B",
    )
    assert campaign.owner is None
    with django_capture_on_commit_callbacks(execute=False):
        assert api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        test_run = _send_run(Run.objects.get(campaign=campaign).pk)
    assert (test_run.phase, test_run.sent_count) == ("test", 200)
    first = _per_variant(test_run)
    # No clicks at all: A, first by position, is the best observed; the chosen fallback is B.
    deadline = test_run.started_sending_at + timedelta(hours=2)

    before = autowinner.auto_winner_evaluate(campaign.pk, now=deadline - timedelta(seconds=1))
    assert before.decided is False and not ExperimentDecision.objects.exists()
    assert not Run.objects.filter(campaign=campaign, phase="winner").exists()

    with django_capture_on_commit_callbacks(execute=True):
        decided = autowinner.auto_winner_evaluate(campaign.pk, now=deadline)
    assert decided.decided and decided.winner_id == str(campaign.variants.get(name="B").pk)
    decision = ExperimentDecision.objects.get(campaign=campaign)
    assert decision.method == "fallback: the chosen variant"
    with django_capture_on_commit_callbacks(execute=False):
        winner_run = _send_run(decided.winner_run_id)
    assert _per_variant(winner_run) == {"B": 200}
    assert _per_variant(test_run) == first  # the test share's messages keep their variants
    per_contact = Counter(Message.objects.filter(run__campaign=campaign).values_list("contact_id", flat=True))
    assert len(per_contact) == 400 and set(per_contact.values()) == {1}

    # No owner: the admins are told (the marketer who made it over the API is not an admin).
    assert [n.user for n in Notice.objects.filter(campaign=campaign)] == [owner.membership.user]
    mails = [BytesParser(policy=policy.default).parsebytes(raw) for _f, _rcpt, raw in smtp.messages]
    assert [(m["To"], m["Subject"]) for m in mails] == [("admin@acme.example", "Auto-winner chosen: Spring test")]
    assert "no variant was significantly better on click rate (people) by the end of the 2 h window" in (
        mails[0].get_content()
    )
    entry = AuditLogEntry.objects.get(action="campaign.auto_winner_decided", target_id=str(campaign.pk))
    assert entry.details["fallback"] is True and entry.details["winner_name"] == "B"

    # Looking again decides nothing more.
    assert autowinner.auto_winner_evaluate(campaign.pk, now=deadline).decided is False
    assert Run.objects.filter(campaign=campaign, phase="winner").count() == 1


def test_the_one_look_at_the_windows_end_waits_for_it_then_names_the_significant_winner(
    owner, django_capture_on_commit_callbacks
):
    api = _api_client(owner, key_creator=owner)
    campaign = _campaign_over_the_api(
        api, owner, contacts=600, experiment_test_percent=50, experiment_window_hours=1, experiment_decide="window_end"
    )
    with django_capture_on_commit_callbacks(execute=False):
        assert api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        test_run = _send_run(Run.objects.get(campaign=campaign).pk)
    assert test_run.sent_count == 300
    clicks = []
    for name, share in (("A", 0.05), ("B", 0.8)):
        messages = list(Message.objects.filter(run=test_run, variant__name=name).order_by("id"))
        clicks += [
            {"message_id": m.pk, "kind": "click", "dedupe": f"click:{m.pk}"}
            for m in messages[: int(len(messages) * share)]
        ]
    services.engagement_record_many(clicks)
    deadline = test_run.started_sending_at + timedelta(hours=1)

    # B is far ahead, but this campaign looks once, at the window's end.
    early = autowinner.auto_winner_evaluate(campaign.pk, now=deadline - timedelta(seconds=1))
    assert early.decided is False and early.reason.startswith("One look at the window's end")
    with django_capture_on_commit_callbacks(execute=False):
        decided = autowinner.auto_winner_evaluate(campaign.pk, now=deadline)
        assert decided.decided and decided.winner_id == str(campaign.variants.get(name="B").pk)
        decision = ExperimentDecision.objects.get(campaign=campaign)
        assert decision.method.startswith("chi-square 2x2") and decision.numbers["p_adjusted"][1] < 0.05
        winner_run = _send_run(decided.winner_run_id)
    assert _per_variant(winner_run) == {"B": 300}


def test_a_decision_while_the_test_share_still_sends_moves_its_queue_and_waits_for_both_runs(
    owner, django_capture_on_commit_callbacks
):
    api = _api_client(owner, key_creator=owner)
    campaign = _campaign_over_the_api(api, owner, contacts=1000, experiment_test_percent=40)
    with django_capture_on_commit_callbacks(execute=False):
        assert api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        test_run = Run.objects.get(campaign=campaign)
        runs.run_prepare(test_run.pk)
        sent = 0
        while sent < 320:  # of 400: a throttled test share, still sending at the decision
            sent += sending.run_send_batch(test_run.pk, batch_size=40).claimed
    clicks = []
    for name, share in (("A", 0.05), ("B", 0.8)):
        messages = list(Message.objects.filter(run=test_run, variant__name=name, status="delivered").order_by("id"))
        clicks += [
            {"message_id": m.pk, "kind": "click", "dedupe": f"click:{m.pk}"}
            for m in messages[: int(len(messages) * share)]
        ]
    services.engagement_record_many(clicks)
    queued_a = Message.objects.filter(run=test_run, variant__name="A", status="queued").count()
    delivered_a = Message.objects.filter(run=test_run, variant__name="A", status="delivered").count()
    assert queued_a > 10

    with django_capture_on_commit_callbacks(execute=False):
        decided = autowinner.auto_winner_evaluate(campaign.pk)
        assert decided.decided and decided.messages_switched == queued_a
        winner_run = _send_run(decided.winner_run_id)
        campaign.refresh_from_db()
        assert campaign.status == CampaignStatus.RUNNING  # the test share is still sending
        test_run = _send_run(test_run.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.COMPLETED
    assert _per_variant(winner_run) == {"B": 600}
    # A went only to those it had reached before the decision; the rest of the test share got B.
    assert _per_variant(test_run) == {"A": delivered_a, "B": 400 - delivered_a}
    per_contact = Counter(Message.objects.filter(run__campaign=campaign).values_list("contact_id", flat=True))
    assert len(per_contact) == 1000 and set(per_contact.values()) == {1}
