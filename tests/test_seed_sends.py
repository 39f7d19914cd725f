"""Seeds: SMS and WhatsApp test sends through the notification_service, seed phones on the campaign, and the copy
of every variant that each run sends to the seeds (once per variant, channel and seed, never counted as sends)."""

from __future__ import annotations

import email
from email import policy

import pytest

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Variant
from compliance.models import AuditLogEntry
from delivery import runs, seeds, sending, tasks
from delivery.backends import reset_backends
from delivery.models import Run, SandboxHandoff, SeedSend
from tests.factories import CampaignFactory, console_client
from tests.test_delivery_channels import Peer, peer  # noqa: F401 - the local notification_service fixture

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_backends():
    reset_backends()
    yield
    reset_backends()


def _contacts(organisation, count=4):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": f"s{i}", "email": f"s{i}@example.com", "phone": f"+4477009{i:05d}", "first_name": f"Sam{i}"}
            for i in range(count)
        ],
    )


def _sms_campaign(organisation, **fields):
    campaign = CampaignFactory(organisation=organisation, channels=["sms", "whatsapp"], variants=False, **fields)
    Variant.objects.create(
        campaign=campaign,
        name="A",
        allocation_percent=100,
        content={"sms": {"body": "Hi {{ contact.first_name | default('there') }}"}, "whatsapp": {"body": "Hola"}},
    )
    return campaign


# --- seed phones on the campaign -------------------------------------------------------------------------------------


def test_seed_phones_are_normalised_and_validated(teammate):
    payload = {
        "name": "Seeds",
        "channels": ["sms"],
        "seed_phones": ["+44 7700 900123", "+447700900123", "+33612345678"],
    }
    response = teammate.api.post("/api/v1/campaigns/", payload, format="json")
    assert response.status_code == 201, response.data
    assert response.data["seed_phones"] == ["+447700900123", "+33612345678"]
    bad = teammate.api.post("/api/v1/campaigns/", {**payload, "name": "Bad", "seed_phones": ["0770"]}, format="json")
    assert bad.status_code == 400
    assert "0770" in str(bad.data["seed_phones"])
    campaign_id = response.data["id"]
    changed = teammate.api.patch(
        f"/api/v1/campaigns/{campaign_id}/", {"seed_phones": ["+1 (415) 555-2671"]}, format="json"
    )
    assert changed.status_code == 200, changed.data
    assert changed.data["seed_phones"] == ["+14155552671"]
    too_many = [f"+4477009{i:05d}" for i in range(21)]
    assert (
        teammate.api.patch(f"/api/v1/campaigns/{campaign_id}/", {"seed_phones": too_many}, format="json").status_code
        == 400
    )


# --- SMS and WhatsApp test sends -------------------------------------------------------------------------------


def test_sms_test_send_goes_through_the_notification_service(settings, peer, teammate):  # noqa: F811
    settings.NOTIFICATION_SERVICE_URL = peer
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.NotificationServiceBackend"}
    _contacts(teammate.organisation, 1)
    campaign = _sms_campaign(teammate.organisation, seed_phones=["+447700900999", "+447700900998"])
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/test-send/", {"channel": "sms"}, format="json")
    assert response.status_code == 200, response.data
    assert response.data["sent_to"] == ["+447700900999", "+447700900998"]
    assert response.data["body"] == "Hi Sam0"  # rendered for the first contact of the audience
    assert sorted(r["json"]["to"] for r in Peer.requests) == ["+447700900998", "+447700900999"]
    assert all(r["json"]["channel"] == "sms" and r["json"]["body"] == "Hi Sam0" for r in Peer.requests)
    keys = {r["headers"]["Idempotency-Key"] for r in Peer.requests}
    assert len(keys) == 2 and all(key.startswith("test:") for key in keys)
    rows = SeedSend.objects.filter(campaign=campaign, kind="test")
    assert sorted(rows.values_list("status", flat=True)) == ["sent", "sent"]
    entry = AuditLogEntry.objects.get(action="campaign.test_send", target_id=str(campaign.pk))
    assert entry.details["channel"] == "sms"
    # Given phones replace the seed list; WhatsApp goes the same way.
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/test-send/",
        {"channel": "whatsapp", "recipients": ["+33 6 12 34 56 78"]},
        format="json",
    )
    assert response.status_code == 200, response.data
    assert Peer.requests[-1]["json"] == {**Peer.requests[-1]["json"], "channel": "whatsapp", "to": "+33612345678"}


def test_a_refused_test_send_is_a_409_with_the_reason(settings, peer, teammate):  # noqa: F811
    settings.NOTIFICATION_SERVICE_URL = peer
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.NotificationServiceBackend"}
    Peer.answers = {"+447700900999": 400}
    campaign = _sms_campaign(teammate.organisation, seed_phones=["+447700900999"])
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/test-send/", {"channel": "sms"}, format="json")
    assert response.status_code == 409
    assert "400" in response.data["detail"]
    assert SeedSend.objects.get(campaign=campaign).status == "failed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "sms"}, "recipients"),  # no seed phones
        ({"channel": "sms", "recipients": ["not-a-phone"]}, "recipients"),
        ({"channel": "email", "recipients": ["a@example.com"]}, "channel"),  # the campaign sends no email
        ({"channel": "fax"}, "channel"),
    ],
)
def test_test_send_validation_by_channel(teammate, body, field):
    campaign = _sms_campaign(teammate.organisation)
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/test-send/", body, format="json")
    assert response.status_code == 400
    assert field in response.data
    assert not SeedSend.objects.exists()


def test_test_sends_are_scoped_and_need_write_access(teammate, analyst, outsider):
    campaign = _sms_campaign(teammate.organisation, seed_phones=["+447700900999"])
    url = f"/api/v1/campaigns/{campaign.pk}/test-send/"
    assert outsider.api.post(url, {"channel": "sms"}, format="json").status_code == 404
    assert analyst.api.post(url, {"channel": "sms"}, format="json").status_code == 403
    assert not SeedSend.objects.exists()


def test_sms_test_send_from_the_console_uses_the_sandbox_by_default(teammate):
    campaign = _sms_campaign(teammate.organisation, seed_phones=["+447700900999"])
    client = console_client(teammate)
    page = client.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert 'name="channel"' in page and '<option value="sms">SMS</option>' in page
    response = client.post(f"/campaigns/{campaign.pk}/test-send/", {"channel": "sms", "variant": "A"}, follow=True)
    assert "Test SMS sent." in response.content.decode()
    seed = SeedSend.objects.get(campaign=campaign)
    assert seed.address == "+447700900999" and seed.status in ("delivered", "bounced", "failed", "sent")
    assert SandboxHandoff.objects.filter(idempotency_key=seed.idempotency_key).exists()


# --- seed copies of every run ----------------------------------------------------------------------------------------


def _email_campaign(organisation, **fields):
    organisation.sender_email, organisation.postal_address = "news@acme.example", "1 Main Street, London"
    organisation.save()
    campaign = CampaignFactory(organisation=organisation, channels=["email"], variants=False, **fields)
    for name, share, control in (("A", 40, False), ("B", 40, False), ("Control", 20, True)):
        Variant.objects.create(
            campaign=campaign,
            name=name,
            allocation_percent=share,
            is_control=control,
            content={}
            if control
            else {"email": {"subject": f"{name} for {{{{ contact.first_name }}}}", "html": "<p>Hi</p>"}},
        )
    return campaign


def _send_run(persona, campaign, django_capture_on_commit_callbacks) -> Run:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        sending.run_send_for(run.pk, seconds=30)
        runs.run_finish_if_done(run.pk)
    run.refresh_from_db()
    return run, callbacks


def test_every_run_sends_each_variant_once_to_each_seed(settings, smtp, teammate, django_capture_on_commit_callbacks):
    settings.DELIVERY_BACKENDS = {
        "default": "delivery.sandbox.SandboxBackend",
        "email": "delivery.channels.EmailBackend",
    }
    _contacts(teammate.organisation, 12)
    campaign = _email_campaign(
        teammate.organisation, seed_emails=["seed1@acme.example", "seed2@acme.example"], seed_copy_every_send=True
    )
    run, _ = _send_run(teammate, campaign, django_capture_on_commit_callbacks)
    real = [m for m in smtp.messages if not m[1][0].startswith("seed")]
    assert run.status == "completed" and len(real) == run.sent_count + run.delivered_count
    copies = SeedSend.objects.filter(run=run, kind="copy")
    assert copies.count() == 4  # variants A and B (not the control) x 2 seeds
    assert set(copies.values_list("status", flat=True)) == {"queued"}  # a task sends them, asked for on commit
    assert seeds.run_seed_copies_send(run.pk) == 4
    assert seeds.run_seed_copies_send(run.pk) == 0  # idempotent: nothing queued is left
    seed_mail = [m for m in smtp.messages if m[1][0].startswith("seed")]
    assert sorted(m[1][0] for m in seed_mail) == ["seed1@acme.example"] * 2 + ["seed2@acme.example"] * 2
    subjects = sorted(email.message_from_bytes(m[2], policy=policy.default)["Subject"] for m in seed_mail)
    assert [s[0] for s in subjects] == ["A", "A", "B", "B"] and all(" for Sam" in s for s in subjects)
    # The copy is the real thing (personalised, compliance headers), but its unsubscribe link names no contact.
    parsed = email.message_from_bytes(seed_mail[0][2], policy=policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    from campaigns.content import links

    token = parsed["List-Unsubscribe"].split("/u/", 1)[1].split(">", 1)[0]
    assert links.read_unsubscribe(token)[1] == "0"
    run.refresh_from_db()
    assert run.sent_count + run.delivered_count == len(real)  # seeds count in no metric
    # Planning again (a repeated task) adds nothing.
    assert seeds.run_seed_copies_plan(run) == 4 and copies.count() == 4


def test_seed_copies_are_asked_for_on_commit_and_recovered_by_the_pump(
    teammate, django_capture_on_commit_callbacks, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    _contacts(teammate.organisation, 3)
    campaign = _email_campaign(teammate.organisation, seed_emails=["seed@acme.example"], seed_copy_every_send=True)
    run, callbacks = _send_run(teammate, campaign, django_capture_on_commit_callbacks)
    asked: list[str] = []
    monkeypatch.setattr(tasks.run_seed_copies_task, "delay", asked.append)
    monkeypatch.setattr(tasks.run_send_task, "delay", lambda *args: None)
    monkeypatch.setattr(tasks.run_prepare_task, "delay", lambda run_id: None)
    for callback in callbacks:
        callback()
    assert asked == [str(run.pk)]
    assert SeedSend.objects.filter(run=run, status="queued").count() == 2
    # Lost task: nothing is due before its time, then the pump asks again.
    assert seeds.due_seed_copy_runs() == []
    later = timezone.now() + seeds.STALE_AFTER + timedelta(seconds=1)
    assert seeds.due_seed_copy_runs(now=later) == [run.pk]
    with django_capture_on_commit_callbacks(execute=True):
        assert runs.delivery_pump(now=later)["seed_copies"] == 1
    assert asked == [str(run.pk), str(run.pk)]
    assert seeds.run_seed_copies_send(run.pk, now=later) == 2
    assert SeedSend.objects.filter(run=run, status="queued").count() == 0
    assert SandboxHandoff.objects.filter(idempotency_key__startswith=f"copy:{run.pk}:").count() == 2


def test_no_copies_without_the_switch_or_for_triggered_campaigns(teammate, django_capture_on_commit_callbacks):
    _contacts(teammate.organisation, 2)
    campaign = _email_campaign(teammate.organisation, seed_emails=["seed@acme.example"])
    run, _ = _send_run(teammate, campaign, django_capture_on_commit_callbacks)
    assert run.status == "completed"
    assert not SeedSend.objects.exists()


def test_seed_copies_retry_transient_failures_with_backoff(settings, peer, teammate):  # noqa: F811
    from datetime import timedelta

    from django.utils import timezone

    settings.NOTIFICATION_SERVICE_URL = peer
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.NotificationServiceBackend"}
    Peer.answers = {"+447700900999": 503}
    _contacts(teammate.organisation, 1)
    campaign = _sms_campaign(teammate.organisation, seed_phones=["+447700900999"], seed_copy_every_send=True)
    run = Run.objects.create(organisation=teammate.organisation, campaign=campaign, number=1, status="sending")
    assert seeds.run_seed_copies_plan(run) == 2  # SMS and WhatsApp
    seeds.run_seed_copies_send(run.pk)
    seed = SeedSend.objects.get(run=run, channel="sms")
    assert seed.status == "queued" and seed.attempts == 1 and "503" in seed.error
    assert seed.next_attempt_at > timezone.now()
    assert SeedSend.objects.get(run=run, channel="whatsapp").status == "queued"  # same peer answer for the phone
    Peer.answers = {}
    seeds.run_seed_copies_send(run.pk, now=seed.next_attempt_at + timedelta(seconds=1))
    assert set(SeedSend.objects.filter(run=run).values_list("status", flat=True)) == {"sent"}


# --- multi-part SMS as a campaign setting ---------------------------------------------------------------------


def test_the_campaign_allows_multipart_sms_for_every_variant(teammate):
    long_body = "x" * 200  # GSM-7: two parts of 153
    payload = {
        "name": "Long SMS",
        "channels": ["sms"],
        "variants": [{"name": "A", "allocation_percent": 100, "content": {"sms": {"body": long_body}}}],
    }
    refused = teammate.api.post("/api/v1/campaigns/", payload, format="json")
    assert refused.status_code == 400
    assert "more than one SMS" in str(refused.data)
    allowed = teammate.api.post("/api/v1/campaigns/", {**payload, "sms_allow_multipart": True}, format="json")
    assert allowed.status_code == 201, allowed.data
    assert allowed.data["sms_allow_multipart"] is True
    # Switching it off again is refused while a variant needs it; seven parts are too many either way.
    url = f"/api/v1/campaigns/{allowed.data['id']}/"
    assert teammate.api.patch(url, {"sms_allow_multipart": False}, format="json").status_code == 400
    seven_parts = {"name": "A", "allocation_percent": 100, "content": {"sms": {"body": "x" * (153 * 6 + 1)}}}
    assert teammate.api.patch(url, {"variants": [seven_parts]}, format="json").status_code == 400


def test_marketing_email_cannot_launch_without_the_postal_address(teammate):
    organisation = teammate.organisation
    organisation.postal_address = ""
    organisation.save()
    campaign = CampaignFactory(organisation=organisation, channels=["email"])
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
    assert response.status_code == 400
    assert "postal address" in str(response.data["organisation"])
    transactional = CampaignFactory(organisation=organisation, channels=["email"], category="transactional")
    assert teammate.api.post(f"/api/v1/campaigns/{transactional.pk}/send-now/").status_code == 200


def test_fan_out_records_why_recipients_were_left_out(teammate, django_capture_on_commit_callbacks):
    from compliance.models import AuditLogEntry

    contacts_upsert_rows(
        organisation=teammate.organisation,
        rows=[{"external_id": "with", "email": "w@example.com"}, {"external_id": "without", "phone": "+447700900001"}],
    )
    campaign = CampaignFactory(organisation=teammate.organisation, channels=["email"], audience_rules=None)
    campaign.audience_rules = {"field": "external_id", "op": "in", "value": ["with", "without"]}
    campaign.save()
    run, _ = _send_run(teammate, campaign, django_capture_on_commit_callbacks)
    entry = AuditLogEntry.objects.get(action="run.fan_out", target_id=str(run.pk))
    assert entry.details["audience"] == 2 and entry.details["excluded"] == {"no_email": 1}


def test_an_sms_test_send_the_real_send_would_refuse_is_a_400_with_the_reason_and_sends_nothing(
    settings,
    peer,  # noqa: F811
    teammate,
):
    """Rendered for Zoë the text is UCS-2 and two parts; the campaign allows one, so a real send would fail it."""
    settings.NOTIFICATION_SERVICE_URL = peer
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.NotificationServiceBackend"}
    contacts_upsert_rows(
        organisation=teammate.organisation,
        rows=[{"external_id": "z", "email": "z@example.com", "phone": "+447700900001", "first_name": "Zoë"}],
    )
    campaign = CampaignFactory(organisation=teammate.organisation, channels=["sms"], variants=False)
    Variant.objects.create(
        campaign=campaign,
        name="A",
        allocation_percent=100,
        content={"sms": {"body": "Hi {{ contact.first_name }}, " + "a" * 70}},
    )
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/test-send/",
        {"channel": "sms", "recipients": ["+447700900999"]},
        format="json",
    )
    assert response.status_code == 400, response.data
    assert response.data["content"] == [
        "SMS is 2 parts (UCS-2, 'ë' is not GSM-7); the campaign allows 1: a real send would not send it."
    ]
    assert Peer.requests == [] and not SeedSend.objects.filter(campaign=campaign).exists()
