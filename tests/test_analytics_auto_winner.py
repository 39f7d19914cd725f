"""Auto-winner end to end with the sandbox provider's per-variant rates: blocked while the sample is small, then
mid-run the winner gets 100 % (allocations, the queued messages of the other variant in one UPDATE, the rest of the
run), the decision recorded with an audit entry, the owner notified in the console and by email; idempotent; a
sample-ratio mismatch blocks; settings over the API with field errors and roles; the beat task."""

from __future__ import annotations

import pytest

from analytics import autowinner
from analytics.models import ExperimentDecision, MetricDelta, Notice
from analytics.selectors import campaign_metrics
from analytics.tasks import auto_winner_evaluate_task
from audiences.contacts import contacts_upsert_rows
from campaigns.models import Campaign, Variant
from compliance.models import AuditLogEntry
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db

HTML = "<p>Hi <a href='https://acme.example/x'>x</a></p>"


def _started(persona, django_capture_on_commit_callbacks, *, contacts=600, **fields):
    contacts_upsert_rows(
        organisation=persona.organisation,
        rows=[{"external_id": f"w{i}", "email": f"w{i}@example.com"} for i in range(contacts)],
    )
    persona.organisation.sender_email, persona.organisation.postal_address = "news@acme.example", "1 Main St"
    persona.organisation.save()
    user = persona.membership.user
    user.email = "owner@acme.example"
    user.save()
    campaign = CampaignFactory(
        organisation=persona.organisation,
        owner=user,
        variants=False,
        sandbox_profile={
            "bounced": 0,
            "failed": 0,
            "engagement": {"open": 1.0, "machine_open": 0, "click": 0.05, "conversion": 0},
            "variants": {"B": {"click": 0.6}},
        },
        **fields,
    )
    for position, name in enumerate(("A", "B")):
        Variant.objects.create(
            campaign=campaign,
            name=name,
            position=position,
            allocation_percent=50,
            content={"email": {"subject": name, "html": HTML}},
        )
    with django_capture_on_commit_callbacks(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
    return campaign, run


def _send(run, messages):
    while messages > 0:
        messages -= sending.run_send_batch(run.pk, batch_size=min(100, messages)).claimed


def test_it_switches_to_the_winner_mid_run(teammate, django_capture_on_commit_callbacks, mailoutbox):
    campaign, run = _started(
        teammate,
        django_capture_on_commit_callbacks,
        contacts=900,
        auto_winner_enabled=True,
        auto_winner_metric="click",
        auto_winner_level=95,
        auto_winner_min_sample=100,
    )
    a, b = (campaign.variants.get(name=n) for n in ("A", "B"))
    _send(run, 100)
    small = autowinner.auto_winner_evaluate(campaign.pk)
    assert small.decided is False and small.reason.startswith("Too small a sample: every variant needs 100")
    assert not ExperimentDecision.objects.exists()

    # 5 % against 60 %: with ~250 per variant the sequential test decides whatever the draws (~150 decided it
    # in most runs, not all).
    _send(run, 400)
    queued_a = Message.objects.filter(run=run, variant=a, status="queued").count()
    queued_b = Message.objects.filter(run=run, variant=b, status="queued").count()
    assert queued_a > 100 and queued_b > 100
    with django_capture_on_commit_callbacks(execute=True):
        decided = autowinner.auto_winner_evaluate(campaign.pk)
    assert decided.decided and decided.winner_id == str(b.pk) and decided.messages_switched == queued_a
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.allocation_percent, b.allocation_percent) == (0, 100)
    assert Message.objects.filter(run=run, variant=a, status="queued").count() == 0
    assert Message.objects.filter(run=run, variant=b, status="queued").count() == queued_a + queued_b
    # The metric trigger moved the queued counts with the messages.
    by_variant = campaign_metrics(campaign)["by_variant"]
    assert by_variant[str(a.pk)]["counts"]["queued"] == 0
    assert by_variant[str(b.pk)]["counts"]["queued"] == queued_a + queued_b

    decision = ExperimentDecision.objects.get(campaign=campaign)
    assert decision.winner_id == b.pk and decision.metric == "click" and str(decision.level) == "0.95"
    assert decision.messages_switched == queued_a
    assert [v["name"] for v in decision.numbers["variants"]] == ["A", "B"]
    assert decision.numbers["lambdas"][0] >= decision.numbers["threshold"] == pytest.approx(20)
    entry = AuditLogEntry.objects.get(action="campaign.auto_winner_decided", target_id=str(campaign.pk))
    assert entry.details["winner_name"] == "B" and entry.actor_label == "auto-winner"
    notice = Notice.objects.get(user=teammate.membership.user, campaign=campaign)
    assert notice.text.startswith(f"{campaign.name}: variant B won on click rate (people) at 95%")
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["owner@acme.example"]
    assert "variant B won" in mailoutbox[0].body

    # The rest of the run goes to the winner only.
    sending.run_send_for(run.pk, seconds=30)
    runs.run_finish_if_done(run.pk)
    later = Message.objects.filter(run=run, variant=b, status="delivered").count()
    assert later == Message.objects.filter(run=run).count() - Message.objects.filter(run=run, variant=a).count()
    assert Message.objects.filter(run=run, status="queued").count() == 0
    assert MetricDelta.objects.filter(campaign_id=campaign.pk, variant_id=a.pk, metric="st:queued").exists()

    # Looking again changes nothing; the console shows the notice.
    again = autowinner.auto_winner_evaluate(campaign.pk)
    assert again.decided is False and ExperimentDecision.objects.count() == 1 and len(mailoutbox) == 1
    html = console_client(teammate).get("/analytics/").content.decode()
    assert "variant B won" in html


def test_it_blocks_on_a_sample_ratio_mismatch(teammate, django_capture_on_commit_callbacks):
    campaign, run = _started(
        teammate, django_capture_on_commit_callbacks, contacts=600, auto_winner_enabled=True, auto_winner_min_sample=100
    )
    # The variants were given 50/50 but the books say 90/10: the assignment cannot be trusted.
    Variant.objects.filter(campaign=campaign, name="A").update(allocation_percent=90)
    Variant.objects.filter(campaign=campaign, name="B").update(allocation_percent=10)
    _send(run, 400)
    result = autowinner.auto_winner_evaluate(campaign.pk)
    assert result.decided is False and result.reason.startswith("Sample ratio mismatch")
    assert not ExperimentDecision.objects.exists() and not Notice.objects.exists()


def test_the_beat_task_evaluates_only_enabled_running_campaigns(teammate, django_capture_on_commit_callbacks):
    campaign, run = _started(
        teammate,
        django_capture_on_commit_callbacks,
        contacts=400,
        auto_winner_enabled=False,
        auto_winner_min_sample=100,
    )
    _send(run, 400)
    assert auto_winner_evaluate_task() == 0
    Campaign.objects.filter(pk=campaign.pk).update(auto_winner_enabled=True)
    assert autowinner.auto_winner_candidates() == [campaign.pk]
    with django_capture_on_commit_callbacks(execute=True):
        assert auto_winner_evaluate_task() == 1
    assert autowinner.auto_winner_candidates() == []


def test_it_updates_the_settings_over_the_api(teammate, analyst, outsider, django_capture_on_commit_callbacks):
    campaign, _run = _started(teammate, django_capture_on_commit_callbacks, contacts=4)
    url = f"/api/v1/campaigns/{campaign.pk}/auto-winner/"
    assert teammate.api.get(url).json() == {
        "enabled": False,
        "metric": "click",
        "level": 95,
        "min_sample": 1000,
        "decision": None,
        "metric_advice": autowinner.METRIC_WARNING,
    }
    bad = teammate.api.put(url, {"enabled": True, "metric": "bounce", "level": 80, "min_sample": 5}, format="json")
    assert bad.status_code == 400 and set(bad.data) == {"metric", "level", "min_sample"}
    ok = teammate.api.put(url, {"enabled": True, "metric": "conversion", "level": 99, "min_sample": 500}, format="json")
    assert ok.status_code == 200 and ok.json()["level"] == 99
    campaign.refresh_from_db()
    assert (campaign.auto_winner_enabled, campaign.auto_winner_metric, campaign.auto_winner_level) == (
        True,
        "conversion",
        99,
    )
    assert campaign.auto_winner_min_sample == 500
    assert AuditLogEntry.objects.filter(action="campaign.auto_winner_updated", target_id=str(campaign.pk)).count() == 1
    assert analyst.api.put(url, {"enabled": False}, format="json").status_code == 403
    assert outsider.api.get(url).status_code == 404
    campaign.refresh_from_db()
    assert campaign.auto_winner_enabled is True


def test_the_report_page_edits_the_settings_and_explains_the_metric(
    teammate, analyst, django_capture_on_commit_callbacks
):
    campaign, _run = _started(teammate, django_capture_on_commit_callbacks, contacts=4)
    browser = console_client(teammate)
    page = browser.get(f"/analytics/campaigns/{campaign.pk}/").content.decode()
    assert 'data-testid="auto-winner-form"' in page and "clicks or conversions are the safer metric" in page
    url = f"/analytics/campaigns/{campaign.pk}/auto-winner/"
    response = browser.post(url, {"enabled": "on", "metric": "open", "level": "90", "min_sample": "2000"})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert (campaign.auto_winner_enabled, campaign.auto_winner_metric, campaign.auto_winner_level) == (True, "open", 90)
    assert campaign.auto_winner_min_sample == 2000
    console_client(analyst).post(url, {"metric": "click", "level": "99", "min_sample": "100"})
    campaign.refresh_from_db()
    assert (campaign.auto_winner_enabled, campaign.auto_winner_level) == (True, 90)


def test_the_campaign_api_and_form_take_the_settings(teammate):
    body = {"name": "Auto", "channels": ["email"], "auto_winner_enabled": True, "auto_winner_metric": "conversion",
            "auto_winner_level": 99, "auto_winner_min_sample": 2500}  # fmt: skip
    created = teammate.api.post("/api/v1/campaigns/", body, format="json")
    assert created.status_code == 201
    assert {k: created.json()[k] for k in body if k.startswith("auto_winner")} == {
        k: v for k, v in body.items() if k.startswith("auto_winner")
    }
    bad = teammate.api.post(
        "/api/v1/campaigns/",
        {"name": "Bad", "auto_winner_metric": "bounce", "auto_winner_level": 80, "auto_winner_min_sample": 10},
        format="json",
    )
    assert bad.status_code == 400
    assert {"auto_winner_metric", "auto_winner_level", "auto_winner_min_sample"} <= set(bad.data)
    browser = console_client(teammate)
    form = browser.get("/campaigns/new/").content.decode()
    assert 'name="auto_winner_metric"' in form and "Clicks or conversions are the safer choice" in form
    response = browser.post(
        "/campaigns/new/",
        {"name": "Form auto", "type": "scheduled", "channels": ["email"], "auto_winner_enabled": "on",
         "auto_winner_metric": "click", "auto_winner_level": "90", "auto_winner_min_sample": "1500"},
    )  # fmt: skip
    assert response.status_code == 302
    campaign = Campaign.objects.get(name="Form auto")
    assert (campaign.auto_winner_enabled, campaign.auto_winner_metric, campaign.auto_winner_level) == (
        True,
        "click",
        90,
    )
    assert campaign.auto_winner_min_sample == 1500


def test_beat_runs_the_auto_winner_every_minute(settings):
    from config.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["auto-winner"]
    assert entry["task"] == "analytics.tasks.auto_winner_evaluate_task" and entry["schedule"].total_seconds() == 60
    assert entry["task"] in app.tasks
