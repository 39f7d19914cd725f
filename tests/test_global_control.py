"""The global control group: a stable share of an organisation's contacts gets no marketing campaign on any
channel, scheduled or triggered; transactional campaigns ignore it; raising or lowering the share moves only the
margin. Membership is recomputed here from its documented formula (the holdout's md5 bucket, seeded with
"global-control:<organisation id>"), independently of the code under test."""

from __future__ import annotations

import hashlib

import pytest

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Organisation
from campaigns.models import Variant
from compliance.models import AuditLogEntry
from delivery.fanout import run_create, run_fan_out
from delivery.models import Message, Run
from delivery.triggers import trigger_decisions
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db

N = 400
CONTENT = {
    "email": {"subject": "Hi", "html": "<p>Hi</p>"},
    "sms": {"body": "Hi"},
}


def expected_control(organisation: Organisation, percent: float) -> set[int]:
    """The documented formula, by hand: first 32 bits of md5("global-control:<org>:<contact>") mod 10,000."""
    ids = Contact.objects.filter(organisation=organisation).values_list("pk", flat=True)
    seed = f"global-control:{organisation.pk}"
    return {
        contact_id
        for contact_id in ids
        if int(hashlib.md5(f"{seed}:{contact_id}".encode()).hexdigest()[:8], 16) % 10_000 < percent * 100
    }


@pytest.fixture
def contacts(organisation) -> set[int]:
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"g{i}", "email": f"g{i}@example.com", "phone": f"+4477009{i:05d}"} for i in range(N)],
    )
    return set(Contact.objects.filter(organisation=organisation).values_list("pk", flat=True))


def _campaign(organisation, **fields):
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email", "sms"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "g"},
        sandbox_profile={"failed": 0, "bounced": 0},
        **fields,
    )
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=CONTENT)
    return campaign


def _set_percent(persona, percent) -> None:
    response = persona.api.patch("/api/v1/organisation/", {"global_control_percent": percent}, format="json")
    assert response.status_code == 200, response.data


def _fanned_out(campaign) -> tuple[Run, set[int]]:
    run = run_fan_out(run_create(campaign=campaign).pk)
    return run, set(Message.objects.filter(run=run).values_list("contact_id", flat=True))


def test_marketing_fan_out_leaves_the_control_group_out_on_every_channel_and_transactional_does_not(owner, contacts):
    _set_percent(owner, "10")
    control = expected_control(owner.organisation, 10)
    assert 20 < len(control) < 60  # 10 % of 400, give or take the hash

    run, messaged = _fanned_out(_campaign(owner.organisation))
    assert messaged == contacts - control
    assert Message.objects.filter(run=run, channel="email").count() == N - len(control)
    assert Message.objects.filter(run=run, channel="sms").count() == N - len(control)
    assert run.excluded == {"global_control": len(control)}
    assert run.audience_count == N and run.message_count == 2 * (N - len(control))
    entry = AuditLogEntry.objects.get(action="run.fan_out", target_id=str(run.pk))
    assert entry.details["excluded"] == {"global_control": len(control)}

    transactional, messaged = _fanned_out(_campaign(owner.organisation, category="transactional"))
    assert messaged == contacts
    assert transactional.excluded == {}


def test_changing_the_share_redraws_only_the_margin(owner, contacts):
    campaign = _campaign(owner.organisation)
    left_out = {}
    for percent in ("5", "10", "3", "0"):
        _set_percent(owner, percent)
        _run, messaged = _fanned_out(campaign)
        left_out[percent] = contacts - messaged
        assert left_out[percent] == expected_control(owner.organisation, float(percent))
    # Raising 5 -> 10 keeps every contact of the 5 % and adds the next 5 %; lowering keeps a subset.
    assert left_out["5"] < left_out["10"]
    assert left_out["3"] < left_out["5"]
    assert left_out["0"] == set()
    assert len(left_out["10"] - left_out["5"]) == len(expected_control(owner.organisation, 10)) - len(
        expected_control(owner.organisation, 5)
    )


def test_the_control_group_skips_consent_exclusions_it_cannot_explain(owner, contacts):
    """A contact who opted out is counted as opted out, whichever group it is in; the compliance exclusions list
    only consent and suppression reasons."""
    from compliance import services as compliance_services

    _set_percent(owner, "10")
    control = expected_control(owner.organisation, 10)
    opted_out = Contact.objects.get(pk=min(control))
    compliance_services.preference_update(
        actor=owner.actor, contact=opted_out, changes={"global_opt_out": True}, source="api"
    )
    run, messaged = _fanned_out(_campaign(owner.organisation))
    assert messaged == contacts - control
    assert run.excluded == {"global_control": len(control) - 1, "opted_out": 1}
    from compliance.models import RunExclusion

    assert list(RunExclusion.objects.filter(run_id=run.pk).values_list("contact_id", "reason")) == [
        (opted_out.pk, "opted_out")
    ]


EVENTS = "/api/v1/events/"


def test_triggered_marketing_skips_the_control_group_and_transactional_does_not(
    owner, contacts, django_capture_on_commit_callbacks
):
    _set_percent(owner, "10")
    control = expected_control(owner.organisation, 10)
    by_id = dict(Contact.objects.filter(organisation=owner.organisation).values_list("pk", "external_id"))
    held, treated = by_id[min(control)], by_id[min(contacts - control)]
    campaigns = {}
    for category in ("marketing", "transactional"):
        campaign = _campaign(owner.organisation, type="triggered", trigger_event="order_completed", category=category)
        with django_capture_on_commit_callbacks(execute=False):
            assert owner.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/").status_code == 200
        campaigns[category] = campaign
    events = [{"id": f"o-{x}", "type": "order_completed", "contact": x} for x in (held, treated)]
    with django_capture_on_commit_callbacks(execute=False):
        assert owner.api.post(EVENTS, {"events": events}, format="json").status_code == 202

    def sent_to(campaign) -> set[str]:
        return set(
            Message.objects.filter(run__campaign=campaign).values_list("contact__external_id", flat=True).distinct()
        )

    assert sent_to(campaigns["marketing"]) == {treated}
    assert Message.objects.filter(run__campaign=campaigns["marketing"]).count() == 2  # email and SMS
    decisions = trigger_decisions(campaigns["marketing"])
    assert (decisions["matched"], decisions["global_control"], decisions["queued"]) == (2, 1, 1)
    assert sent_to(campaigns["transactional"]) == {held, treated}
    assert "global_control" not in trigger_decisions(campaigns["transactional"])


def test_the_share_is_an_audited_admin_setting_with_bounds(owner, teammate, analyst):
    assert teammate.api.patch("/api/v1/organisation/", {"global_control_percent": 5}, format="json").status_code == 403
    assert analyst.api.patch("/api/v1/organisation/", {"global_control_percent": 5}, format="json").status_code == 403
    for bad in (25, -1, "ten", "1.234"):
        response = owner.api.patch("/api/v1/organisation/", {"global_control_percent": bad}, format="json")
        assert response.status_code == 400 and "global_control_percent" in response.data, (bad, response.data)
    assert not AuditLogEntry.objects.filter(action="organisation.update").exists()

    _set_percent(owner, 7.5)
    assert owner.api.get("/api/v1/organisation/").data["global_control_percent"] == "7.50"
    entry = AuditLogEntry.objects.get(action="organisation.update")
    assert entry.details == {"global_control_percent": {"from": "0.00", "to": "7.50"}}
    assert entry.actor_label


def test_admins_set_the_share_in_the_console_settings(owner, teammate):
    browser = console_client(owner)
    page = browser.get("/settings/organisation/")
    assert page.status_code == 200 and 'name="global_control_percent"' in page.content.decode()
    form = {"name": "Acme", "timezone": "Europe/London", "global_control_percent": "12.5"}
    assert console_client(teammate).post("/settings/organisation/", form).status_code == 403
    assert browser.post("/settings/organisation/", form).status_code == 302
    assert str(Organisation.objects.get(pk=owner.organisation.pk).global_control_percent) == "12.50"
    bad = browser.post("/settings/organisation/", {**form, "global_control_percent": "21"})
    assert bad.status_code == 400 and "Ensure this value is less than or equal to 20." in bad.content.decode()
    assert str(Organisation.objects.get(pk=owner.organisation.pk).global_control_percent) == "12.50"


def test_a_share_raised_after_fan_out_holds_back_what_is_still_queued(owner, contacts):
    """Messages queued before the share went up are checked again at the send: the new margin gets nothing."""
    from delivery import sending
    from delivery.models import SandboxHandoff

    campaign = _campaign(owner.organisation)
    run, messaged = _fanned_out(campaign)
    assert messaged == contacts
    Run.objects.filter(pk=run.pk).update(status="sending")
    _set_percent(owner, "10")
    control = expected_control(owner.organisation, 10)
    sending.run_send_for(run.pk, seconds=60)
    skipped = Message.objects.filter(run=run, status="skipped")
    assert set(skipped.values_list("contact_id", flat=True)) == control
    assert set(skipped.values_list("error", flat=True)) == {"global_control"}
    assert skipped.count() == 2 * len(control)  # email and SMS
    handed = {key.split(":")[1] for key in SandboxHandoff.objects.filter(run_id=run.pk).values_list("pk", flat=True)}
    assert handed == {str(contact_id) for contact_id in contacts - control}
