"""Per-recipient exclusion records: fan-out writes why each excluded audience member got nothing; the API, CSV and
console list them for admins and compliance officers of the same organisation only; erasure unlinks them."""

from __future__ import annotations

import csv
import io

import pytest

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from compliance import services
from compliance.models import AuditLogEntry, RunExclusion
from delivery import gdpr
from delivery.fanout import run_create, run_fan_out
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def fanned_out(owner):
    organisation = owner.organisation
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "x-ok", "email": "ok@example.com", "phone": "+447700900001"},
            {"external_id": "x-out", "email": "out@example.com", "phone": "+447700900002"},
            {"external_id": "x-sup", "email": "sup@example.com", "phone": "+447700900003"},
            {"external_id": "x-nophone", "email": "np@example.com"},
        ],
    )
    contacts = {c.external_id: c for c in Contact.objects.filter(organisation=organisation)}
    services.preference_update(
        actor=owner.actor, contact=contacts["x-out"], changes={"global_opt_out": True}, source="api"
    )
    services.suppression_add(actor=owner.actor, address="sup@example.com")
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email", "sms"],
        audience_rules={"field": "external_id", "op": "starts_with", "value": "x-"},
    )
    run = run_fan_out(run_create(campaign=campaign).pk)
    return run, contacts


def test_fan_out_records_each_excluded_recipient(fanned_out):
    run, contacts = fanned_out
    rows = {(x.contact_id, x.channel, x.reason) for x in RunExclusion.objects.filter(run_id=run.pk)}
    assert rows == {(contacts["x-out"].pk, "", "opted_out"), (contacts["x-sup"].pk, "email", "suppressed")}
    assert run.excluded == {"opted_out": 1, "suppressed": 1, "no_phone": 1}
    entry = AuditLogEntry.objects.get(action="run.fan_out", target_id=str(run.pk))
    assert entry.details["excluded"] == run.excluded
    # A resumed fan-out writes nothing twice.
    assert run_fan_out(run.pk) is None
    assert RunExclusion.objects.filter(run_id=run.pk).count() == 2


def test_api_lists_filters_and_exports_them(owner, outsider, teammate, fanned_out):
    run, contacts = fanned_out
    response = owner.api.get("/api/v1/run-exclusions/", {"run": str(run.pk), "reason": "suppressed"})
    assert response.status_code == 200
    assert [(r["contact_id"], r["channel"], r["reason"]) for r in response.data["results"]] == [
        (contacts["x-sup"].pk, "email", "suppressed")
    ]
    response = owner.api.get("/api/v1/run-exclusions/export/", {"campaign": str(run.campaign_id)})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert sorted(r["reason"] for r in table) == ["opted_out", "suppressed"]
    assert {r["channel"] for r in table} == {"all", "email"}

    bad = owner.api.get("/api/v1/run-exclusions/", {"run": "nope", "contact": "x"})
    assert bad.status_code == 400 and set(bad.data) >= {"run", "contact"}
    # Another organisation sees none of them; a marketer may not read the audit trail.
    assert outsider.api.get("/api/v1/run-exclusions/", {"run": str(run.pk)}).data["count"] == 0
    assert teammate.api.get("/api/v1/run-exclusions/").status_code == 403
    assert owner.api.post("/api/v1/run-exclusions/", {}).status_code == 405


def test_console_page_and_csv(owner, fanned_out):
    run, contacts = fanned_out
    client = console_client(owner)
    page = client.get("/compliance/exclusions/", {"run": str(run.pk)})
    assert page.status_code == 200
    html = page.content.decode()
    assert "opted_out" in html and "suppressed" in html and str(contacts["x-sup"].pk) in html
    assert client.get("/compliance/exclusions/", {"run": "bad"}).status_code == 400
    download = client.get("/compliance/exclusions.csv", {"reason": "opted_out"})
    assert download.status_code == 200
    assert len(list(csv.DictReader(io.StringIO(download.content.decode())))) == 1


def test_erasure_keeps_the_reason_but_not_the_contact(owner, fanned_out):
    run, contacts = fanned_out
    counts = gdpr.contact_erase(actor=owner.actor, contact_id=contacts["x-out"].pk)
    assert counts["run_exclusions"] == 1
    assert set(RunExclusion.objects.filter(run_id=run.pk).values_list("contact_id", "reason")) == {
        (None, "opted_out"),
        (contacts["x-sup"].pk, "suppressed"),
    }
