"""Contacts over the API: bulk upsert semantics, validation, the attribute catalogue, single CRUD, scoping."""

from __future__ import annotations

import pytest

from audiences.models import Contact, ContactAttribute
from compliance.models import AuditLogEntry

pytestmark = pytest.mark.django_db

BULK = "/api/v1/contacts/bulk/"


def test_bulk_creates_then_updates_and_merges_attributes(teammate):
    first = teammate.api.post(
        BULK,
        {
            "contacts": [
                {
                    "external_id": "u1",
                    "email": "U1@Example.com",
                    "phone": "+44 7700 900123",
                    "first_name": "Una",
                    "timezone": "Europe/London",
                    "locale": "en_GB",
                    "attributes": {"plan": "pro", "score": 3, "old": "x"},
                },
                {"external_id": 42, "attributes": {"plan": "free"}},
            ]
        },
        format="json",
    )
    assert first.status_code == 200, first.data
    assert first.data == {"created": 2, "updated": 0, "rejected": []}
    contact = Contact.objects.get(organisation=teammate.organisation, external_id="u1")
    assert (contact.email, contact.phone, contact.locale) == ("u1@example.com", "+447700900123", "en-GB")

    second = teammate.api.post(
        BULK,
        {
            "contacts": [
                {"external_id": "u1", "last_name": "Lee", "attributes": {"score": 4, "old": None, "new": True}},
            ]
        },
        format="json",
    )
    assert second.data == {"created": 0, "updated": 1, "rejected": []}
    contact.refresh_from_db()
    # Fields left out are kept, given ones replaced, attributes merged and null removes one.
    assert (contact.first_name, contact.last_name, contact.email) == ("Una", "Lee", "u1@example.com")
    assert contact.attributes == {"plan": "pro", "score": 4, "new": True}


def test_empty_string_clears_a_field(teammate):
    teammate.api.post(BULK, {"contacts": [{"external_id": "c", "email": "c@example.com"}]}, format="json")
    teammate.api.post(BULK, {"contacts": [{"external_id": "c", "email": ""}]}, format="json")
    assert Contact.objects.get(external_id="c").email == ""


@pytest.mark.parametrize(
    ("contact", "field"),
    [
        ({}, "external_id"),
        ({"external_id": ""}, "external_id"),
        ({"external_id": "x" * 256}, "external_id"),
        ({"external_id": "e", "email": "not-an-email"}, "email"),
        ({"external_id": "p", "phone": "07700900123"}, "phone"),
        ({"external_id": "p", "phone": "+999123456789"}, "phone"),
        ({"external_id": "p", "phone": "+44abc"}, "phone"),
        ({"external_id": "t", "timezone": "Mars/Olympus"}, "timezone"),
        ({"external_id": "l", "locale": "english please"}, "locale"),
        ({"external_id": "a", "attributes": {"nested": {"a": 1}}}, "attributes"),
        ({"external_id": "a", "attributes": {"bad key": 1}}, "attributes"),
        ({"external_id": "a", "attributes": "plan=pro"}, "attributes"),
        ({"external_id": "k", "shoe": 9}, "non_field_errors"),
        ("just a string", "non_field_errors"),
    ],
)
def test_bad_rows_are_reported_by_index_and_good_rows_saved(teammate, contact, field):
    response = teammate.api.post(BULK, {"contacts": [{"external_id": "good"}, contact]}, format="json")
    assert response.status_code == 200
    assert response.data["created"] == 1
    [rejected] = response.data["rejected"]
    assert rejected["index"] == 1
    assert field in rejected["errors"], rejected
    assert list(Contact.objects.values_list("external_id", flat=True)) == ["good"]


def test_a_repeated_external_id_uses_the_last_row_and_reports_the_earlier(teammate):
    response = teammate.api.post(
        BULK,
        {
            "contacts": [
                {"external_id": "dup", "first_name": "First"},
                {"external_id": "dup", "first_name": "Second"},
            ]
        },
        format="json",
    )
    assert response.data["created"] == 1
    assert response.data["rejected"][0]["index"] == 0
    assert Contact.objects.get(external_id="dup").first_name == "Second"


def test_bulk_limits(teammate):
    assert teammate.api.post(BULK, {"contacts": []}, format="json").status_code == 400
    too_many = [{"external_id": str(i)} for i in range(10_001)]
    response = teammate.api.post(BULK, {"contacts": too_many}, format="json")
    assert response.status_code == 400
    assert "contacts" in response.data
    assert Contact.objects.count() == 0


def test_ten_thousand_contacts_in_one_call(teammate):
    rows = [{"external_id": f"bulk-{i}", "attributes": {"n": i}} for i in range(10_000)]
    response = teammate.api.post(BULK, {"contacts": rows}, format="json")
    assert response.data["created"] == 10_000
    assert Contact.objects.filter(organisation=teammate.organisation).count() == 10_000
    assert AuditLogEntry.objects.filter(action="contacts.upsert").count() == 1


def test_the_attribute_catalogue_infers_types_and_examples(teammate):
    teammate.api.post(
        BULK,
        {
            "contacts": [
                {
                    "external_id": "1",
                    "attributes": {"plan": "pro", "ltv": 10.5, "vip": True, "joined": "2026-01-02", "tags": ["a"]},
                },
                {
                    "external_id": "2",
                    "attributes": {"plan": "free", "ltv": 3, "vip": False, "joined": "2025-05-05T10:00:00Z"},
                },
                {"external_id": "3", "attributes": {"plan": "pro", "ltv": "n/a"}},
            ]
        },
        format="json",
    )
    catalogue = {row["name"]: row for row in teammate.api.get("/api/v1/contacts/attributes/").data}
    assert {name: row["type"] for name, row in catalogue.items()} == {
        "plan": "string",
        "ltv": "number",
        "vip": "boolean",
        "joined": "date",
        "tags": "list",
    }
    assert sorted(catalogue["plan"]["examples"]) == ["free", "pro"]
    assert len(catalogue["ltv"]["examples"]) <= 5
    # A later batch adds examples but keeps the type.
    teammate.api.post(BULK, {"contacts": [{"external_id": "4", "attributes": {"plan": "team"}}]}, format="json")
    plan = ContactAttribute.objects.get(organisation=teammate.organisation, name="plan")
    assert (plan.type, sorted(plan.examples)) == ("string", ["free", "pro", "team"])


def test_single_contact_crud(teammate):
    created = teammate.api.post(
        "/api/v1/contacts/",
        {"external_id": "solo", "email": "Solo@Example.com", "attributes": {"plan": "pro"}},
        format="json",
    )
    assert created.status_code == 201, created.data
    assert created.data["email"] == "solo@example.com"
    url = f"/api/v1/contacts/{created.data['id']}/"
    assert teammate.api.post("/api/v1/contacts/", {"external_id": "solo"}, format="json").status_code == 400
    patched = teammate.api.patch(url, {"first_name": "Sol", "attributes": {"plan": None, "x": 1}}, format="json")
    assert patched.status_code == 200
    assert (patched.data["first_name"], patched.data["attributes"]) == ("Sol", {"x": 1})
    assert teammate.api.patch(url, {"phone": "123"}, format="json").status_code == 400
    assert teammate.api.patch(url, {"external_id": "other"}, format="json").status_code == 400
    assert teammate.api.get(url).data["external_id"] == "solo"
    assert teammate.api.get("/api/v1/contacts/?external_id=solo").data["count"] == 1
    assert teammate.api.get("/api/v1/contacts/?search=sol").data["count"] == 1
    profile = teammate.api.get(f"{url}profile/").data
    assert profile["first_name"] == "Sol"
    assert teammate.api.delete(url).status_code == 204
    assert not Contact.objects.exists()


def test_contacts_are_scoped_to_the_organisation(teammate, outsider):
    created = teammate.api.post("/api/v1/contacts/", {"external_id": "mine"}, format="json").data
    url = f"/api/v1/contacts/{created['id']}/"
    assert outsider.api.get(url).status_code == 404
    assert outsider.api.patch(url, {"first_name": "x"}, format="json").status_code == 404
    assert outsider.api.delete(url).status_code == 404
    assert outsider.api.get(f"{url}profile/").status_code == 404
    assert outsider.api.get("/api/v1/contacts/").data["count"] == 0
    # The same external id in another organisation is another contact.
    outsider.api.post(BULK, {"contacts": [{"external_id": "mine", "first_name": "Theirs"}]}, format="json")
    assert Contact.objects.get(organisation=teammate.organisation).first_name == ""


def test_analysts_cannot_write_contacts(analyst):
    assert analyst.api.post(BULK, {"contacts": [{"external_id": "x"}]}, format="json").status_code == 403
    assert analyst.api.post("/api/v1/contacts/", {"external_id": "x"}, format="json").status_code == 403
    assert analyst.api.get("/api/v1/contacts/").status_code == 200
    assert not Contact.objects.exists()


def test_contacts_need_authentication(anonymous):
    assert anonymous.get("/api/v1/contacts/").status_code == 401
    assert anonymous.post(BULK, {"contacts": [{"external_id": "x"}]}, format="json").status_code == 401


def test_awkward_text_round_trips_exactly(teammate):
    awkward = 'tab\there, new\nline, back\\slash, "quotes", \\N, émoji 🎉, \u2028'
    response = teammate.api.post(
        BULK,
        {
            "contacts": [
                {
                    "external_id": "weird\\id\t1",
                    "first_name": awkward,
                    "attributes": {"note": awkward, "list": [awkward]},
                },
            ]
        },
        format="json",
    )
    assert response.data["created"] == 1, response.data
    contact = Contact.objects.get(organisation=teammate.organisation)
    assert contact.external_id == "weird\\id\t1"
    assert contact.first_name == awkward.strip()
    assert contact.attributes == {"note": awkward, "list": [awkward]}


@pytest.mark.parametrize(
    "contact",
    [
        {"external_id": "nul\x00"},
        {"external_id": "n", "first_name": "a\x00b"},
        {"external_id": "n", "attributes": {"x": "a\x00b"}},
        {"external_id": "n", "attributes": {"x": ["a\x00b"]}},
    ],
)
def test_nul_characters_are_rejected_not_a_500(teammate, contact):
    response = teammate.api.post(BULK, {"contacts": [contact]}, format="json")
    assert response.status_code == 200
    assert response.data["created"] == 0
    assert len(response.data["rejected"]) == 1


def test_non_finite_numbers_are_rejected(teammate):
    from audiences.contacts import validate_contact

    for value in (float("inf"), float("-inf"), float("nan")):
        _, errors = validate_contact({"external_id": "x", "attributes": {"n": value}})
        assert "attributes" in errors
