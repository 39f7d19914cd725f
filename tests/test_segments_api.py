"""Segments over the API: CRUD, validation with node paths, estimate, preview, static members, scoping."""

from __future__ import annotations

import pytest

from audiences.contacts import contacts_upsert_rows
from audiences.models import Segment, SegmentMember
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/segments/"


@pytest.fixture
def contacts(organisation):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": f"c{i}", "attributes": {"plan": "pro" if i % 3 == 0 else "free", "n": i}} for i in range(30)
        ],
    )


def test_create_estimate_and_preview_a_rules_segment(teammate, contacts):
    created = teammate.api.post(
        URL, {"name": "Pros", "rules": {"field": "attributes.plan", "op": "eq", "value": "pro"}}, format="json"
    )
    assert created.status_code == 201, created.data
    segment_id = created.data["id"]
    estimate = teammate.api.get(f"{URL}{segment_id}/estimate/").data
    assert (estimate["count"], estimate["exact"]) == (10, True)
    assert teammate.api.get(f"{URL}{segment_id}/estimate/?exact=true").data["count"] == 10
    preview = teammate.api.get(f"{URL}{segment_id}/preview/?limit=3").data
    assert [row["external_id"] for row in preview] == ["c27", "c24", "c21"]
    assert teammate.api.get(f"{URL}{segment_id}/preview/?limit=x").status_code == 400


def test_invalid_rules_are_a_400_naming_the_node(teammate, contacts):
    response = teammate.api.post(
        URL,
        {
            "name": "Broken",
            "rules": {
                "and": [
                    {"field": "attributes.plan", "op": "eq", "value": "pro"},
                    {"field": "attributes.n", "op": "gt", "value": "many"},
                ]
            },
        },
        format="json",
    )
    assert response.status_code == 400
    assert response.data["rules"] == ["/and/1/value: Expected a number, got 'many'."]
    assert not Segment.objects.exists()


def test_estimate_unsaved_rules(teammate, contacts):
    ok = teammate.api.post(
        f"{URL}estimate/", {"rules": {"field": "attributes.n", "op": "lt", "value": 5}}, format="json"
    )
    assert (ok.status_code, ok.data["count"]) == (200, 5)
    bad = teammate.api.post(f"{URL}estimate/", {"rules": {"field": "nope", "op": "eq", "value": 1}}, format="json")
    assert bad.status_code == 400
    assert bad.data["rules"][0].startswith("/field: Unknown field 'nope'")


def test_segment_names_are_unique_per_organisation(teammate, outsider):
    rules = {"field": "email", "op": "exists"}
    assert teammate.api.post(URL, {"name": "All", "rules": rules}, format="json").status_code == 201
    duplicate = teammate.api.post(URL, {"name": "all", "rules": rules}, format="json")
    assert duplicate.status_code == 400
    assert "name" in duplicate.data
    assert outsider.api.post(URL, {"name": "All", "rules": rules}, format="json").status_code == 201


def test_update_and_kind_is_fixed(teammate, contacts):
    created = teammate.api.post(URL, {"name": "S", "rules": {"field": "email", "op": "exists"}}, format="json").data
    patched = teammate.api.patch(
        f"{URL}{created['id']}/", {"rules": {"field": "attributes.n", "op": "gte", "value": 25}}, format="json"
    )
    assert patched.status_code == 200
    assert teammate.api.get(f"{URL}{created['id']}/estimate/").data["count"] == 5
    assert teammate.api.patch(f"{URL}{created['id']}/", {"kind": "static"}, format="json").status_code == 400


def test_static_segment_members(teammate, contacts):
    created = teammate.api.post(URL, {"name": "List", "kind": "static"}, format="json").data
    url = f"{URL}{created['id']}/members/"
    first = teammate.api.post(url, {"external_ids": ["c1", "c2", "c3", "ghost"]}, format="json").data
    assert (first["added"], first["total"], first["unknown_external_ids"]) == (3, 3, ["ghost"])
    added = teammate.api.post(url, {"external_ids": ["c4"], "mode": "add"}, format="json").data
    assert added["total"] == 4
    removed = teammate.api.post(url, {"external_ids": ["c1"], "mode": "remove"}, format="json").data
    assert (removed["removed"], removed["total"]) == (1, 3)
    replaced = teammate.api.post(url, {"external_ids": ["c9"]}, format="json").data
    assert (replaced["removed"], replaced["added"], replaced["total"]) == (3, 1, 1)
    assert teammate.api.get(f"{URL}{created['id']}/").data["member_count"] == 1
    assert teammate.api.get(f"{URL}{created['id']}/estimate/").data["count"] == 1
    rules_segment = teammate.api.post(
        URL, {"name": "R", "rules": {"field": "email", "op": "exists"}}, format="json"
    ).data
    assert (
        teammate.api.post(f"{URL}{rules_segment['id']}/members/", {"external_ids": ["c1"]}, format="json").status_code
        == 409
    )


def test_a_segment_in_use_cannot_be_deleted(teammate, contacts):
    segment = teammate.api.post(URL, {"name": "Used", "rules": {"field": "email", "op": "exists"}}, format="json").data
    other = teammate.api.post(URL, {"name": "Uses it", "rules": {"segment": segment["id"]}}, format="json").data
    response = teammate.api.delete(f"{URL}{segment['id']}/")
    assert response.status_code == 409
    assert response.data["used_by"] == ["Uses it"]
    teammate.api.delete(f"{URL}{other['id']}/")
    campaign = CampaignFactory(organisation=teammate.organisation)
    teammate.api.patch(f"/api/v1/campaigns/{campaign.pk}/", {"audience": {"include": [segment["id"]]}}, format="json")
    in_campaign = teammate.api.delete(f"{URL}{segment['id']}/")
    assert in_campaign.status_code == 409
    assert "audience of a campaign" in in_campaign.data["detail"]
    assert Segment.objects.filter(pk=segment["id"]).exists()


def test_segments_are_scoped(teammate, outsider, contacts):
    segment = teammate.api.post(URL, {"name": "Mine", "rules": {"field": "email", "op": "exists"}}, format="json").data
    for method, suffix in [
        ("get", ""),
        ("patch", ""),
        ("delete", ""),
        ("get", "estimate/"),
        ("get", "preview/"),
        ("post", "members/"),
        ("post", "refresh/"),
    ]:
        response = getattr(outsider.api, method)(f"{URL}{segment['id']}/{suffix}", {}, format="json")
        assert response.status_code == 404, (method, suffix)
    assert outsider.api.get(URL).data["count"] == 0
    # Referencing a foreign segment in rules is a validation error, not a data leak.
    response = outsider.api.post(f"{URL}estimate/", {"rules": {"segment": segment["id"]}}, format="json")
    assert response.status_code == 400
    assert Segment.objects.filter(pk=segment["id"]).exists()


def test_analysts_read_segments_but_cannot_change_them(analyst, teammate, contacts):
    segment = teammate.api.post(URL, {"name": "S", "rules": {"field": "email", "op": "exists"}}, format="json").data
    assert analyst.api.get(f"{URL}{segment['id']}/estimate/").status_code == 200
    assert (
        analyst.api.post(URL, {"name": "T", "rules": {"field": "email", "op": "exists"}}, format="json").status_code
        == 403
    )
    assert analyst.api.delete(f"{URL}{segment['id']}/").status_code == 403
    assert SegmentMember.objects.count() == 0
