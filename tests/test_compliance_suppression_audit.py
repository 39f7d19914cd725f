"""The suppression list (API and console: list, add, remove, CSV import; automatic suppressions from bounce and
complaint receipts, each audited) and the audit log (filters, CSV export, scoping, roles, read-only admin)."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from audiences.pii import pii_hash
from campaigns.models import Variant
from compliance import services
from compliance.models import AuditLogEntry, Suppression
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db


def test_the_api_adds_lists_and_removes_suppressions_with_audit(teammate, analyst):
    response = teammate.api.post("/api/v1/suppressions/", {"address": " Bob@Example.COM ", "note": "asked by phone"})
    assert response.status_code == 201
    assert response.data["address"] == "bob@example.com" and response.data["reason"] == "manual"
    assert teammate.api.post("/api/v1/suppressions/", {"address": "+44 7700 900123"}).data["address"] == "+447700900123"
    listed = analyst.api.get("/api/v1/suppressions/")
    assert listed.status_code == 200 and listed.data["count"] == 2
    # Addresses are encrypted at rest: search finds a whole address (by keyed hash), not a prefix.
    assert [r["address"] for r in teammate.api.get("/api/v1/suppressions/?search=BOB@example.com").data["results"]] == [
        "bob@example.com"
    ]
    assert teammate.api.get("/api/v1/suppressions/?search=bob").data["count"] == 0
    assert teammate.api.get("/api/v1/suppressions/?reason=bogus").status_code == 400
    suppression_id = response.data["id"]
    assert teammate.api.delete(f"/api/v1/suppressions/{suppression_id}/").status_code == 204
    assert not Suppression.objects.filter(pk=suppression_id).exists()
    actions = list(AuditLogEntry.objects.filter(action__startswith="suppression.").values_list("action", flat=True))
    assert sorted(actions) == ["suppression.add", "suppression.add", "suppression.remove"]
    removal = AuditLogEntry.objects.get(action="suppression.remove")
    assert removal.details == {"address": "bob@example.com", "reason": "manual"}


def test_bad_addresses_are_400s(teammate):
    for bad in ["", "not an address", "+1", "a@b"]:
        response = teammate.api.post("/api/v1/suppressions/", {"address": bad})
        assert response.status_code == 400, bad
        assert "address" in response.data
    assert not Suppression.objects.exists()


def test_suppressions_are_scoped_and_role_checked(teammate, analyst, outsider, anonymous):
    created = teammate.api.post("/api/v1/suppressions/", {"address": "x@example.com"}).data
    assert outsider.api.get("/api/v1/suppressions/").data["count"] == 0
    assert outsider.api.delete(f"/api/v1/suppressions/{created['id']}/").status_code == 404
    assert analyst.api.post("/api/v1/suppressions/", {"address": "y@example.com"}).status_code == 403
    assert analyst.api.delete(f"/api/v1/suppressions/{created['id']}/").status_code == 403
    assert anonymous.get("/api/v1/suppressions/").status_code == 401
    assert Suppression.objects.count() == 1


def test_a_csv_import_adds_addresses_set_based_and_reports_bad_lines(teammate):
    teammate.api.post("/api/v1/suppressions/", {"address": "old@example.com"})
    content = "address\nA@example.com\nold@example.com\nnonsense\n+447700900999\na@example.com\n"
    upload = SimpleUploadedFile("list.csv", content.encode(), content_type="text/csv")
    response = teammate.api.post("/api/v1/suppressions/import/", {"file": upload}, format="multipart")
    assert response.status_code == 200, response.data
    assert response.data["added"] == 2 and response.data["already_suppressed"] == 1
    assert [r["line"] for r in response.data["rejected"]] == [3]
    assert set(Suppression.objects.filter(reason="import").values_list("address", flat=True)) == {
        "a@example.com",
        "+447700900999",
    }
    entry = AuditLogEntry.objects.get(action="suppression.import")
    assert entry.details == {"added": 2, "already_suppressed": 1, "rejected": 1}
    as_json = teammate.api.post("/api/v1/suppressions/import/", {"addresses": ["b@example.com"]}, format="json")
    assert as_json.data["added"] == 1
    assert teammate.api.post("/api/v1/suppressions/import/", {}, format="json").status_code == 400


def test_the_console_manages_the_suppression_list(teammate, outsider):
    client = console_client(teammate)
    assert client.post("/compliance/suppressions/add/", {"address": "c@example.com"}).status_code == 302
    page = client.get("/compliance/suppressions/").content.decode()
    assert "c@example.com" in page
    upload = SimpleUploadedFile("s.csv", b"d@example.com\ne@example.com\n", content_type="text/csv")
    client.post("/compliance/suppressions/import/", {"file": upload})
    assert Suppression.objects.filter(organisation=teammate.organisation).count() == 3
    suppression = Suppression.objects.get(address_hash=pii_hash("c@example.com"))
    assert console_client(outsider).post(f"/compliance/suppressions/{suppression.pk}/remove/").status_code == 404
    assert client.post(f"/compliance/suppressions/{suppression.pk}/remove/").status_code == 302
    assert not Suppression.objects.filter(address_hash=pii_hash("c@example.com")).exists()
    assert Client().get("/compliance/suppressions/").status_code == 302


def test_bounce_and_complaint_receipts_suppress_and_each_is_audited(teammate, django_capture_on_commit_callbacks):
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": f"r{i}", "email": f"r{i}@example.com"} for i in range(3)]
    )
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "r"},
        sandbox_profile={"failed": 0, "bounced": 0},
    )
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={"email": {"subject": "s", "html": "<p>x</p>"}}
    )
    with django_capture_on_commit_callbacks(execute=False):
        teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
    run = Run.objects.get(campaign=campaign)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=60)
    by_contact = {m.contact.external_id: m.pk for m in Message.objects.filter(run=run).select_related("contact")}
    receipts = [
        {"message_id": by_contact["r0"], "status": "bounced", "reason": "550 no such user"},
        {"message_id": by_contact["r1"], "status": "complained"},
        {"message_id": by_contact["r2"], "status": "bounced", "reason": "soft bounce: mailbox full"},
    ]
    response = teammate.api.post("/api/v1/receipts/", {"receipts": receipts}, format="json")
    assert response.status_code == 200 and response.data["suppressed"] == 2
    assert dict(Suppression.objects.values_list("address", "reason")) == {
        "r0@example.com": "hard_bounce",
        "r1@example.com": "complaint",
    }
    entries = AuditLogEntry.objects.filter(action="suppression.auto").order_by("target_repr")
    assert [(e.target_repr, e.details["reason"], e.actor_label) for e in entries] == [
        ("r0@example.com (hard_bounce)", "hard_bounce", "provider receipt"),
        ("r1@example.com (complaint)", "complaint", "provider receipt"),
    ]
    assert {e.organisation_id for e in entries} == {organisation.pk}
    # Manual additions are audited by the service, once.
    services.suppression_add(actor=teammate.actor, address="m@example.com")
    assert AuditLogEntry.objects.filter(action="suppression.auto").count() == 2


# --- audit log -------------------------------------------------------------------------------------------------------


@pytest.fixture
def history(owner, teammate, organisation):
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "a1", "email": "a1@example.com"}])
    contact = Contact.objects.get(organisation=organisation, external_id="a1")
    services.preference_update(
        actor=teammate.actor, contact=contact, changes={"disabled_channels": ["sms"]}, source="console"
    )
    services.suppression_add(actor=owner.actor, address="=cmd@example.com")
    services.suppression_add(actor=teammate.actor, address="z@example.com", note="=SUM(A1)")
    return contact


def test_the_audit_log_api_filters_by_action_target_actor_and_dates(owner, teammate, history):
    everything = owner.api.get("/api/v1/audit-log/")
    assert everything.status_code == 200
    actions = [row["action"] for row in everything.data["results"]]
    assert "contact.preferences" in actions and actions.count("suppression.add") == 2
    only = owner.api.get("/api/v1/audit-log/?action=contact.preferences").data
    assert only["count"] == 1 and only["results"][0]["target_id"] == str(history.pk)
    assert owner.api.get("/api/v1/audit-log/?action=suppression.").data["count"] == 2
    target = owner.api.get(f"/api/v1/audit-log/?target_type=audiences.contact&target_id={history.pk}").data
    assert [r["action"] for r in target["results"]] == ["contact.preferences"]
    by_actor = owner.api.get(f"/api/v1/audit-log/?actor={teammate.membership.user.username}").data
    assert {r["action"] for r in by_actor["results"]} == {"contact.preferences", "suppression.add"}
    today = history.created_at.date().isoformat()
    assert owner.api.get(f"/api/v1/audit-log/?since={today}&until={today}").data["count"] == everything.data["count"]
    assert owner.api.get("/api/v1/audit-log/?until=2000-01-01").data["count"] == 0
    bad = owner.api.get("/api/v1/audit-log/?since=yesterday&until=2026-13-01")
    assert bad.status_code == 400 and set(bad.data) == {"since", "until"}


def test_the_audit_log_is_scoped_and_for_admins_and_compliance_only(owner, teammate, analyst, outsider, history):
    theirs = {row["action"] for row in outsider.api.get("/api/v1/audit-log/").data["results"]}
    assert not theirs & {"contact.preferences", "suppression.add"}
    assert teammate.api.get("/api/v1/audit-log/").status_code == 403
    assert analyst.api.get("/api/v1/audit-log/").status_code == 403
    assert console_client(teammate).get("/compliance/audit/").status_code == 403


def test_the_audit_log_exports_formula_safe_csv(owner, history):
    response = owner.api.get("/api/v1/audit-log/export/?action=suppression.add")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["occurred_at", "action", "target_type", "target_id", "target", "actor", "details", "ip"]
    assert len(rows) == 3
    targets = {row[4] for row in rows[1:]}
    assert "'=cmd@example.com (manual)" in targets  # a cell a spreadsheet would run is quoted
    console = console_client(owner).get("/compliance/audit.csv?action=contact.")
    assert console.status_code == 200 and len(list(csv.reader(io.StringIO(console.content.decode())))) == 2
    assert console_client(owner).get("/compliance/audit.csv?since=nope").status_code == 400


def test_the_console_audit_page_filters(owner, history):
    client = console_client(owner)
    page = client.get("/compliance/audit/?action=contact.preferences")
    assert page.status_code == 200
    body = page.content.decode()
    assert "contact.preferences" in body and "suppression.add" not in body
    assert client.get("/compliance/audit/?since=nope").status_code == 400


def test_the_admin_cannot_change_or_delete_audit_entries(history):
    from django.contrib.auth import get_user_model

    admin_user = get_user_model().objects.create_superuser("root@example.com", "root@example.com", "pw-123456789")
    client = Client()
    client.force_login(admin_user)
    entry = AuditLogEntry.objects.first()
    assert client.get("/admin/compliance/auditlogentry/").status_code == 200
    assert client.get("/admin/compliance/auditlogentry/add/").status_code == 403
    change = client.post(f"/admin/compliance/auditlogentry/{entry.pk}/change/", {"action": "tampered"})
    assert change.status_code in (200, 403)
    assert client.post(f"/admin/compliance/auditlogentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    entry.refresh_from_db()
    assert entry.action != "tampered"
