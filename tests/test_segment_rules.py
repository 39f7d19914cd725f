"""Every operator and group combination against hand-computed expected sets, and every kind of invalid rule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audiences import segments as engine
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Segment, SegmentKind, SegmentMember
from audiences.rules import RuleError
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(organisation):
    recent = (timezone.now() - timedelta(days=5)).date().isoformat()
    rows = [
        {
            "external_id": "a1",
            "email": "ada@example.com",
            "phone": "+447700900001",
            "first_name": "Ada",
            "timezone": "Europe/London",
            "locale": "en-GB",
            "attributes": {
                "plan": "pro",
                "age": 36,
                "vip": True,
                "signed_up": "2026-01-15",
                "tags": ["shoes", "sale"],
                "city": "London",
            },
        },
        {
            "external_id": "a2",
            "email": "bob@test.org",
            "first_name": "Bob",
            "timezone": "America/New_York",
            "locale": "en-US",
            "attributes": {
                "plan": "free",
                "age": 17,
                "vip": False,
                "signed_up": "2025-06-01",
                "tags": ["bags"],
                "city": "New York",
            },
        },
        {
            "external_id": "a3",
            "email": "cy@example.com",
            "phone": "+33612345678",
            "first_name": "Cy",
            "timezone": "Europe/Paris",
            "locale": "fr-FR",
            "attributes": {"plan": "enterprise", "age": 52.5, "signed_up": recent},
        },
        {
            "external_id": "a4",
            "phone": "+12025550123",
            "first_name": "Dee",
            # Values of the wrong type for their attribute: they must simply not match, never break the query.
            "attributes": {"plan": "pro", "age": "unknown", "tags": "not-a-list", "city": "london"},
        },
        {"external_id": "a5", "email": "eve@example.com"},
        {
            "external_id": "a6",
            "email": "fay@example.com",
            "first_name": "Fay",
            "attributes": {"age": 0, "vip": True, "signed_up": "2026-99-99", "plan": None},
        },
    ]
    result = contacts_upsert_rows(organisation=organisation, rows=rows)
    assert (result.created, result.rejected) == (6, [])
    return {c.external_id: c for c in Contact.objects.filter(organisation=organisation)}


def matches(organisation, tree) -> set[str]:
    condition = engine.compile_rules(organisation, tree)
    found = set(engine.matching_contacts(organisation, condition).values_list("external_id", flat=True))
    assert engine.count_exact(organisation, condition) == len(found)
    return found


ALL = {"a1", "a2", "a3", "a4", "a5", "a6"}


def cond(field, op, value=None):
    node = {"field": field, "op": op}
    if value is not None:
        node["value"] = value
    return node


CASES = [
    # string attribute
    (cond("attributes.plan", "eq", "pro"), {"a1", "a4"}),
    (cond("attributes.plan", "neq", "pro"), {"a2", "a3", "a5", "a6"}),
    (cond("attributes.city", "contains", "O"), {"a1", "a2", "a4"}),
    (cond("attributes.city", "starts_with", "lon"), {"a1", "a4"}),
    (cond("attributes.plan", "in", ["free", "enterprise"]), {"a2", "a3"}),
    (cond("attributes.plan", "not_in", ["pro"]), {"a2", "a3", "a5", "a6"}),
    (cond("attributes.plan", "exists"), {"a1", "a2", "a3", "a4"}),
    (cond("attributes.plan", "not_exists"), {"a5", "a6"}),
    (cond("attributes.city", "contains", "%"), set()),  # a literal %, not a wildcard
    # number attribute
    (cond("attributes.age", "gt", 36), {"a3"}),
    (cond("attributes.age", "gte", 36), {"a1", "a3"}),
    (cond("attributes.age", "lt", 18), {"a2", "a6"}),
    (cond("attributes.age", "lte", 17), {"a2", "a6"}),
    (cond("attributes.age", "between", [17, 36]), {"a1", "a2"}),
    (cond("attributes.age", "eq", 36), {"a1"}),
    (cond("attributes.age", "eq", 36.0), {"a1"}),
    (cond("attributes.age", "neq", 36), {"a2", "a3", "a4", "a5", "a6"}),
    (cond("attributes.age", "in", [0, 52.5]), {"a3", "a6"}),
    (cond("attributes.age", "not_in", [0]), {"a1", "a2", "a3", "a4", "a5"}),
    (cond("attributes.age", "exists"), {"a1", "a2", "a3", "a4", "a6"}),
    # boolean attribute
    (cond("attributes.vip", "eq", True), {"a1", "a6"}),
    (cond("attributes.vip", "eq", False), {"a2"}),
    (cond("attributes.vip", "neq", True), {"a2", "a3", "a4", "a5"}),
    (cond("attributes.vip", "not_exists"), {"a3", "a4", "a5"}),
    # date attribute (a6's "2026-99-99" looks like a date but is not one: it never matches a comparison)
    (cond("attributes.signed_up", "before", "2026-01-01"), {"a2"}),
    (cond("attributes.signed_up", "lt", "2026-01-01"), {"a2"}),
    (cond("attributes.signed_up", "after", "2026-01-01"), {"a1", "a3"}),
    (cond("attributes.signed_up", "gte", "2026-01-15"), {"a1", "a3"}),
    (cond("attributes.signed_up", "lte", "2026-01-15"), {"a1", "a2"}),
    (cond("attributes.signed_up", "between", ["2025-01-01", "2026-02-01"]), {"a1", "a2"}),
    (cond("attributes.signed_up", "within_last_days", 30), {"a3"}),
    (cond("attributes.signed_up", "eq", "2026-01-15"), {"a1"}),
    (cond("attributes.signed_up", "exists"), {"a1", "a2", "a3", "a6"}),
    (cond("attributes.signed_up", "not_exists"), {"a4", "a5"}),
    # list attribute
    (cond("attributes.tags", "contains", "sale"), {"a1"}),
    (cond("attributes.tags", "contains", "bags"), {"a2"}),
    (cond("attributes.tags", "contains", "not-a-list"), set()),
    (cond("attributes.tags", "exists"), {"a1", "a2", "a4"}),
    # standard fields
    (cond("email", "eq", "ADA@example.com"), {"a1"}),
    (cond("email", "neq", "ada@example.com"), {"a2", "a3", "a4", "a5", "a6"}),
    (cond("email", "in", ["BOB@test.org", "cy@example.com", "nobody@example.com"]), {"a2", "a3"}),
    (cond("email", "not_in", ["bob@test.org"]), {"a1", "a3", "a4", "a5", "a6"}),
    (cond("email_domain", "eq", "Example.com"), {"a1", "a3", "a5", "a6"}),
    (cond("email_domain", "contains", "test"), {"a2"}),
    (cond("email_domain", "not_exists"), {"a4"}),
    (cond("email", "exists"), {"a1", "a2", "a3", "a5", "a6"}),
    (cond("email", "not_exists"), {"a4"}),
    (cond("phone", "exists"), {"a1", "a3", "a4"}),
    (cond("phone", "eq", "+447700900001"), {"a1"}),
    (cond("phone", "in", ["+33612345678", "+12025550123"]), {"a3", "a4"}),
    (cond("timezone", "in", ["Europe/London", "Europe/Paris"]), {"a1", "a3"}),
    (cond("locale", "starts_with", "en"), {"a1", "a2"}),
    (cond("first_name", "not_in", ["Ada", "Bob"]), {"a3", "a4", "a5", "a6"}),
    (cond("external_id", "eq", "a5"), {"a5"}),
    (cond("created_at", "within_last_days", 1), ALL),
    (cond("created_at", "before", "2000-01-01"), set()),
    (cond("created_at", "after", "2000-01-01T00:00:00Z"), ALL),
    (cond("updated_at", "exists"), ALL),
    (cond("updated_at", "not_exists"), set()),
    # groups
    ({"and": [cond("attributes.plan", "eq", "pro"), cond("attributes.city", "starts_with", "lon")]}, {"a1", "a4"}),
    ({"or": [cond("attributes.vip", "eq", True), cond("attributes.age", "lt", 18)]}, {"a1", "a2", "a6"}),
    ({"not": cond("attributes.plan", "eq", "pro")}, {"a2", "a3", "a5", "a6"}),
    ({"not": cond("attributes.age", "gt", 20)}, {"a2", "a4", "a5", "a6"}),  # NOT is an exact complement
    (
        {
            "and": [
                {"or": [cond("attributes.plan", "eq", "pro"), cond("attributes.plan", "eq", "enterprise")]},
                {"not": cond("attributes.age", "gt", 50)},
            ]
        },
        {"a1", "a4"},
    ),
    (
        {"or": [{"and": [cond("email", "exists"), cond("phone", "exists")]}, cond("external_id", "eq", "a5")]},
        {"a1", "a3", "a5"},
    ),
    ({"not": {"or": [cond("email", "exists"), cond("phone", "exists")]}}, set()),
    ({"and": [cond("email", "exists")]}, {"a1", "a2", "a3", "a5", "a6"}),
]


@pytest.mark.parametrize(("tree", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_rule_matches_the_hand_computed_set(organisation, people, tree, expected):
    assert matches(organisation, tree) == expected


@pytest.mark.parametrize(("tree", "expected"), CASES[:25], ids=[str(i) for i in range(25)])
def test_not_is_the_exact_complement(organisation, people, tree, expected):
    assert matches(organisation, {"not": tree}) == ALL - expected


def test_segment_references_and_static_lists(organisation, people, teammate):
    pros = Segment.objects.create(organisation=organisation, name="Pros", rules=cond("attributes.plan", "eq", "pro"))
    listed = Segment.objects.create(organisation=organisation, name="Listed", kind=SegmentKind.STATIC)
    SegmentMember.objects.bulk_create(
        [SegmentMember(segment=listed, contact=people["a2"]), SegmentMember(segment=listed, contact=people["a5"])]
    )
    assert matches(organisation, {"and": [{"segment": str(pros.pk)}, cond("phone", "exists")]}) == {"a1", "a4"}
    assert matches(organisation, {"segment": str(listed.pk)}) == {"a2", "a5"}
    assert matches(organisation, {"or": [{"segment": str(listed.pk)}, {"segment": str(pros.pk)}]}) == {
        "a1",
        "a2",
        "a4",
        "a5",
    }
    assert matches(organisation, {"not": {"segment": str(listed.pk)}}) == {"a1", "a3", "a4", "a6"}


def test_other_organisations_are_never_matched(organisation, people):
    other = OrganisationFactory()
    contacts_upsert_rows(organisation=other, rows=[{"external_id": "a1", "attributes": {"plan": "pro"}}])
    assert matches(organisation, cond("attributes.plan", "eq", "pro")) == {"a1", "a4"}
    assert matches(other, cond("attributes.plan", "eq", "pro")) == {"a1"}
    assert Contact.objects.filter(external_id="a1").count() == 2


def test_is_member_agrees_with_the_set(organisation, people):
    condition = engine.compile_rules(organisation, cond("attributes.age", "between", [17, 36]))
    assert {x for x, c in people.items() if engine.is_member(organisation, condition, c.pk)} == {"a1", "a2"}


def test_a_contact_of_another_organisation_is_never_a_member(organisation, people):
    other = OrganisationFactory()
    contacts_upsert_rows(organisation=other, rows=[{"external_id": "x", "attributes": {}}])
    stranger = Contact.objects.get(organisation=other)
    condition = engine.compile_rules(organisation, cond("email", "not_exists"))
    assert not engine.is_member(organisation, condition, stranger.pk)


INVALID = [
    ("not a dict", "", "Each rule must be an object."),
    ({"field": "shoe_size", "op": "eq", "value": 1}, "/field", "Unknown field 'shoe_size'"),
    ({"field": "attributes.shoe_size", "op": "eq", "value": 1}, "/field", "Unknown attribute 'shoe_size'"),
    ({"field": "attributes.bad name", "op": "eq", "value": 1}, "/field", "Invalid attribute name"),
    ({"field": "email", "op": "resembles", "value": "x"}, "/op", "Unknown operator 'resembles'"),
    ({"field": "email", "op": "gt", "value": "x"}, "/op", "'gt' does not apply to string field 'email'"),
    ({"field": "attributes.vip", "op": "contains", "value": "x"}, "/op", "does not apply to boolean"),
    ({"field": "attributes.age", "op": "gt", "value": "old"}, "/value", "Expected a number"),
    ({"field": "attributes.age", "op": "gt", "value": True}, "/value", "Expected a number"),
    ({"field": "attributes.age", "op": "gt"}, "/value", "'gt' needs a value"),
    ({"field": "attributes.age", "op": "between", "value": [40, 10]}, "/value", "low bound is above"),
    ({"field": "attributes.age", "op": "between", "value": [1]}, "/value", "needs [low, high]"),
    ({"field": "attributes.plan", "op": "in", "value": []}, "/value", "needs a list of 1"),
    ({"field": "attributes.plan", "op": "in", "value": ["pro", 3]}, "/value", "Every value must be a string"),
    ({"field": "attributes.signed_up", "op": "before", "value": "yesterday"}, "/value", "Expected a date"),
    ({"field": "attributes.signed_up", "op": "within_last_days", "value": 0}, "/value", "between 1 and 3650"),
    ({"field": "attributes.plan", "op": "exists", "value": "x"}, "/value", "takes no value"),
    ({"field": "email_domain", "op": "contains", "value": ""}, "/value", "empty string"),
    # Emails and phones are encrypted at rest: substrings cannot be matched, and the error says what can.
    ({"field": "email", "op": "contains", "value": "example"}, "/op", "encrypted at rest"),
    ({"field": "phone", "op": "starts_with", "value": "+44"}, "/op", "only eq, neq, in, not_in, exists, not_exists"),
    ({"field": "email", "op": "eq", "value": "a", "extra": 1}, "", "Unknown key(s)"),
    ({"and": []}, "/and", "non-empty list"),
    ({"or": "x"}, "/or", "non-empty list"),
    ({"and": [cond("email", "exists")], "or": []}, "", "no other keys"),
    ({"xor": []}, "", "Unknown rule"),
    ({"segment": "nope"}, "/segment", "Not a segment id"),
    ({"segment": "00000000-0000-0000-0000-000000000000"}, "/segment", "No such segment"),
    ({"and": [cond("email", "exists"), {"or": [cond("email", "gt", 1)]}]}, "/and/1/or/0/op", "does not apply"),
]


@pytest.mark.parametrize(("tree", "path", "message"), INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_rules_point_at_the_offending_node(organisation, people, tree, path, message):
    with pytest.raises(RuleError) as caught:
        engine.compile_rules(organisation, tree)
    problem = caught.value.problems[0]
    assert problem.path == path
    assert message in problem.message


def test_every_problem_is_reported_at_once(organisation, people):
    with pytest.raises(RuleError) as caught:
        engine.compile_rules(organisation, {"and": [cond("nope", "eq", 1), cond("email", "gt", 1)]})
    assert [p.path for p in caught.value.problems] == ["/and/0/field", "/and/1/op"]


def test_depth_and_size_limits(organisation, people):
    tree = cond("email", "exists")
    for _ in range(12):
        tree = {"not": tree}
    with pytest.raises(RuleError) as caught:
        engine.compile_rules(organisation, tree)
    assert "levels deep" in caught.value.problems[0].message
    with pytest.raises(RuleError):
        engine.compile_rules(organisation, {"or": [cond("email", "exists")] * 51})


def test_another_organisations_segment_cannot_be_referenced(organisation, people):
    other = OrganisationFactory()
    foreign = Segment.objects.create(organisation=other, name="Theirs", rules=cond("email", "exists"))
    with pytest.raises(RuleError) as caught:
        engine.compile_rules(organisation, {"segment": str(foreign.pk)})
    assert caught.value.problems[0].message == "No such segment in this organisation."


def test_a_segment_cannot_include_itself_through_others(organisation, people):
    first = Segment.objects.create(organisation=organisation, name="First", rules=cond("email", "exists"))
    second = Segment.objects.create(organisation=organisation, name="Second", rules={"segment": str(first.pk)})
    Segment.objects.filter(pk=first.pk).update(rules={"segment": str(second.pk)})
    with pytest.raises(RuleError) as caught:
        engine.compile_rules(organisation, {"segment": str(first.pk)})
    assert "cannot include itself" in caught.value.problems[0].message
