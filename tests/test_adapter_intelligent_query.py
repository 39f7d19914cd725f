"""intelligent_query answering, 503, hanging, refusing and answering nonsense (a local fake, tests/fake_isa.py):
the adapter names each failure; a segment refresh is a 503 that keeps the last members; a run whose audience
service fails at its start waits and retries, starts when it answers, and gives up after the configured time with
the campaign back to draft; pre-built segments are listed, picked, and resolved when the campaign runs."""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest
from django.test import Client
from django.utils import timezone

from audiences.adapters import AdapterError, HttpSegmentQuery
from audiences.contacts import contacts_upsert_rows
from campaigns.models import Campaign, Variant
from compliance.models import AuditLogEntry
from delivery import runs
from delivery.models import Message, Run
from tests.factories import CampaignFactory
from tests.fake_isa import FakeService

pytestmark = pytest.mark.django_db

REASONS = {
    "503": 'intelligent_query answered 503: {"detail": "intelligent_query is down for maintenance"}',
    "hang": "intelligent_query timed out: timed out",
    "refused": "intelligent_query unreachable: ",
    "malformed": "intelligent_query answered something other than JSON",
}
MODES = list(REASONS)


@pytest.fixture
def service(settings) -> Iterator[FakeService]:
    with FakeService("intelligent_query") as fake:
        fake.query_ids = ["a", "b"]
        fake.segments = {"vip": {"name": "VIP buyers", "members": ["b", "c"], "updated_at": "2026-12-01T09:00:00Z"}}
        settings.INTELLIGENT_QUERY_URL = fake.url
        settings.EXTERNAL_HTTP_TIMEOUT = 0.3
        yield fake


@pytest.fixture
def contacts(organisation) -> None:
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": x, "email": f"{x}@example.com"} for x in "abcd"]
    )


def _break(fake: FakeService, mode: str) -> None:
    if mode == "refused":
        fake.stop()
    else:
        fake.mode = mode


def _mend(fake: FakeService, mode: str) -> None:
    if mode == "refused":
        fake.start()
    fake.mode = "ok"


def _external_segment(persona) -> str:
    created = persona.api.post(
        "/api/v1/segments/",
        {"name": "Lookalikes", "kind": "external", "external_query": "like our best"},
        format="json",
    )
    assert created.status_code == 201, created.data
    return created.data["id"]


# --- the adapter ------------------------------------------------------------------------------------------------


def test_ok_follows_pages_and_lists_segments(service, organisation):
    service.query_ids, service.page_size = ["a", "b", "c"], 2
    client = HttpSegmentQuery(service.url, timeout=0.3)
    assert list(client.resolve(organisation, "q")) == ["a", "b", "c"]
    assert list(client.resolve_segment(organisation, "vip")) == ["b", "c"]
    assert [s.as_dict() for s in client.segments(organisation)] == [
        {"id": "vip", "name": "VIP buyers", "size": 2, "updated_at": "2026-12-01T09:00:00Z"}
    ]
    assert [body.get("cursor") for method, _, body in service.requests if method == "POST"][:2] == [None, "2"]


@pytest.mark.parametrize("mode", MODES)
def test_each_failure_is_an_adapter_error_saying_which(service, organisation, mode):
    _break(service, mode)
    client = HttpSegmentQuery(service.url, timeout=0.3)
    for call in (lambda: list(client.resolve(organisation, "q")), lambda: client.segments(organisation)):
        with pytest.raises(AdapterError) as failure:
            call()
        assert str(failure.value).startswith(REASONS[mode])
        assert failure.value.transient is (mode != "malformed")


# --- segment refresh --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_refresh_with_the_service_down_is_a_503_and_keeps_the_last_members(service, teammate, contacts, mode):
    segment = _external_segment(teammate)
    refresh = f"/api/v1/segments/{segment}/refresh/"
    assert teammate.api.post(refresh).data == {"member_count": 2}
    _break(service, mode)
    down = teammate.api.post(refresh)
    assert down.status_code == 503
    assert down.data["detail"].startswith(f"The audience service is unavailable: {REASONS[mode]}")
    assert down.data["member_count"] == 2 and down.data["members_refreshed_at"] is not None
    assert teammate.api.get(f"/api/v1/segments/{segment}/estimate/?exact=true").data["count"] == 2
    client = Client()
    client.force_login(teammate.membership.user)
    from audiences.models import Segment

    Segment.objects.filter(pk=segment).update(members_refreshed_at=timezone.now() - timezone.timedelta(hours=1))
    page = html.unescape(client.get(f"/segments/{segment}/").content.decode())
    assert 'data-testid="segment-service-problem"' in page
    assert f"The audience service is unavailable ({REASONS[mode]}" in page
    _mend(service, mode)
    service.query_ids = ["a", "b", "c"]
    assert teammate.api.post(refresh).data == {"member_count": 3}


# --- a run waiting for its audience service ----------------------------------------------------------------------


def _campaign_on(persona, segment_id: str) -> Campaign:
    campaign = CampaignFactory(
        organisation=persona.organisation, channels=["email"], variants=False, sandbox_profile={"failed": 0}
    )
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={"email": {"subject": "s", "html": "<p>x</p>"}}
    )
    saved = persona.api.patch(
        f"/api/v1/campaigns/{campaign.pk}/", {"audience": {"include": [segment_id]}}, format="json"
    )
    assert saved.status_code == 200, saved.data
    return campaign


def _send_now(persona, campaign: Campaign, capture) -> Run:
    with capture(execute=False):
        response = persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
    assert response.status_code == 200, response.data
    return Run.objects.get(campaign=campaign)


@pytest.mark.parametrize("mode", MODES)
def test_a_run_waits_for_the_audience_service_and_starts_when_it_answers(
    service, teammate, contacts, django_capture_on_commit_callbacks, mode
):
    campaign = _campaign_on(teammate, _external_segment(teammate))
    _break(service, mode)
    run = _send_now(teammate, campaign, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    assert run.status == "pending" and run.waiting_since is not None and run.wait_attempts == 1
    assert run.status_reason.startswith(f"Waiting for the audience service: {REASONS[mode]}")
    assert 4 <= (run.retry_at - timezone.now()).total_seconds() <= 5
    api = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/runs/").data
    rows = api["results"] if isinstance(api, dict) else api
    assert rows[0]["status_reason"] == run.status_reason and rows[0]["retry_at"] is not None
    client = Client()
    client.force_login(teammate.membership.user)
    # The campaign page's runs panel (htmx, every second while a run is open).
    panel = client.get(f"/delivery/campaigns/{campaign.pk}/runs/").content.decode()
    assert 'data-testid="run-waiting"' in panel
    assert f"Waiting for the audience service: {html.escape(REASONS[mode])}" in panel
    assert Campaign.objects.get(pk=campaign.pk).status == "running"
    # Still down at the next try: the wait doubles.
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    assert run.wait_attempts == 2 and 9 <= (run.retry_at - timezone.now()).total_seconds() <= 10
    # Not yet due: the pump leaves it; due, the pump prepares it again, and with the service back it starts.
    assert runs.delivery_pump(now=run.retry_at - timezone.timedelta(seconds=1))["prepared"] == 0
    assert runs.delivery_pump(now=run.retry_at)["prepared"] == 1
    _mend(service, mode)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    assert (run.status, run.status_reason, run.waiting_since, run.retry_at) == ("sending", "", None, None)
    assert sorted(Message.objects.filter(run=run).values_list("contact__external_id", flat=True)) == ["a", "b"]


def test_after_the_configured_wait_the_run_fails_and_the_campaign_is_a_draft_again(
    service, settings, teammate, contacts, django_capture_on_commit_callbacks
):
    settings.AUDIENCE_SERVICE_WAIT_SECONDS = 60
    campaign = _campaign_on(teammate, _external_segment(teammate))
    service.mode = "503"
    run = _send_now(teammate, campaign, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    Run.objects.filter(pk=run.pk).update(waiting_since=timezone.now() - timezone.timedelta(seconds=61))
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.status_reason == (
        "The audience service did not answer for 1 min, so the run was given up: "
        'intelligent_query answered 503: {"detail": "intelligent_query is down for maintenance"}'
    )
    campaign.refresh_from_db()
    assert campaign.status == "draft"
    entry = AuditLogEntry.objects.get(action="campaign.back_to_draft")
    assert entry.details["from"] == "running" and entry.details["to"] == "draft"
    # The marketer can act on it: send it again once the service is back.
    service.mode = "ok"
    again = _send_now_again(teammate, campaign, django_capture_on_commit_callbacks)
    assert again.status == "sending"


def _send_now_again(persona, campaign: Campaign, capture) -> Run:
    with capture(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.filter(campaign=campaign).order_by("-number").first()
    with capture(execute=False):
        runs.run_prepare(run.pk)
    run.refresh_from_db()
    return run


# --- pre-built segments -----------------------------------------------------------------------------------------


def test_pre_built_segments_are_listed_picked_and_resolved_when_the_campaign_runs(
    service, teammate, analyst, outsider, contacts, django_capture_on_commit_callbacks
):
    listed = teammate.api.get("/api/v1/segments/prebuilt/")
    assert listed.status_code == 200
    assert listed.data == {
        "results": [
            {"id": "vip", "name": "VIP buyers", "size": 2, "updated_at": "2026-12-01T09:00:00Z", "segment": None}
        ]
    }
    assert analyst.api.post("/api/v1/segments/prebuilt/", {"id": "vip"}, format="json").status_code == 403
    assert teammate.api.post("/api/v1/segments/prebuilt/", {"id": "nope"}, format="json").status_code == 400
    picked = teammate.api.post("/api/v1/segments/prebuilt/", {"id": "vip"}, format="json")
    assert picked.status_code == 201, picked.data
    assert (picked.data["name"], picked.data["kind"], picked.data["external_segment_id"]) == (
        "VIP buyers",
        "external",
        "vip",
    )
    again = teammate.api.post("/api/v1/segments/prebuilt/", {"id": "vip"}, format="json")
    assert again.status_code == 200 and again.data["id"] == picked.data["id"]
    assert teammate.api.get("/api/v1/segments/prebuilt/").data["results"][0]["segment"] == picked.data["id"]
    assert outsider.api.get(f"/api/v1/segments/{picked.data['id']}/").status_code == 404
    assert AuditLogEntry.objects.filter(action="segment.create", details__prebuilt="vip").count() == 1
    # Included by reference: the members are the service's when the campaign runs, not when it was picked.
    campaign = _campaign_on(teammate, picked.data["id"])
    service.segments["vip"]["members"] = ["c", "d"]
    run = _send_now(teammate, campaign, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    assert sorted(Message.objects.filter(run=run).values_list("contact__external_id", flat=True)) == ["c", "d"]
    assert ("POST", "/query", {"organisation": "acme", "segment": "vip", "cursor": None}) in service.requests


@pytest.mark.parametrize("mode", MODES)
def test_the_pre_built_list_with_the_service_down(service, teammate, mode):
    _break(service, mode)
    down = teammate.api.get("/api/v1/segments/prebuilt/")
    assert down.status_code == 503
    assert down.data["detail"].startswith(f"The audience service is unavailable: {REASONS[mode]}")
    client = Client()
    client.force_login(teammate.membership.user)
    page = client.get("/segments/").content.decode()
    assert 'data-testid="prebuilt-problem"' in page
    assert "its pre-built segments cannot be listed: " + REASONS[mode].split(":")[0] in page


def test_the_campaign_forms_segment_picker_offers_and_picks_pre_built_segments(service, teammate, contacts):
    client = Client()
    client.force_login(teammate.membership.user)
    form = client.get("/campaigns/new/").content.decode()
    assert '<optgroup label="isA_Data pre-built segments">' in form
    assert '<option value="isa:vip">VIP buyers (isA_Data: 2 contacts, updated 2026-12-01)</option>' in form
    created = client.post(
        "/campaigns/new/",
        {"name": "VIPs", "type": "scheduled", "channels": ["email"], "include_segments": ["isa:vip"]},
    )
    assert created.status_code == 302, created.content.decode()[:2000]
    campaign = Campaign.objects.get(name="VIPs")
    (link,) = campaign.segment_links.select_related("segment")
    assert (link.role, link.segment.external_segment_id, link.segment.name) == ("include", "vip", "VIP buyers")
    # Picked, it is one of our segments now; with the service down the form says so and still works.
    service.mode = "503"
    down = client.get("/campaigns/new/")
    assert down.status_code == 200
    page = html.unescape(down.content.decode())
    assert 'data-testid="prebuilt-problem"' in page
    assert f"pre-built segments cannot be listed now: {REASONS['503']}" in page
    assert f'<option value="{link.segment_id}">VIP buyers</option>' in page
