"""Segment and contact console pages."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from audiences.contacts import contacts_upsert_rows
from audiences.models import Segment, SegmentMember
from tests.factories import console_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(organisation):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": f"k{i}", "email": f"k{i}@example.com", "attributes": {"plan": "pro" if i < 3 else "free"}}
            for i in range(8)
        ],
    )


@pytest.fixture
def segment(organisation, people):
    return Segment.objects.create(
        organisation=organisation, name="Pros", rules={"field": "attributes.plan", "op": "eq", "value": "pro"}
    )


@pytest.mark.parametrize("path", ["/segments/", "/segments/new/", "/contacts/"])
def test_pages_need_sign_in(path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@pytest.mark.parametrize(("method", "suffix"), [("get", ""), ("get", "edit/"), ("post", "delete/")])
def test_another_organisations_segment_pages_are_404(outsider, segment, method, suffix):
    assert getattr(console_client(outsider), method)(f"/segments/{segment.pk}/{suffix}").status_code == 404
    assert Segment.objects.filter(pk=segment.pk).exists()


def test_detail_shows_size_and_first_contacts(teammate, segment):
    page = console_client(teammate).get(f"/segments/{segment.pk}/").content.decode()
    assert 'data-testid="segment-size">3<' in page
    assert "k2" in page and "k5" not in page


def test_create_with_inline_rule_errors(teammate, people):
    client = console_client(teammate)
    bad = client.post(
        "/segments/new/",
        {"name": "Bad", "kind": "rules", "rules": json.dumps({"field": "attributes.plan", "op": "gt", "value": 1})},
    )
    assert bad.status_code == 400
    assert "/op: &#x27;gt&#x27; does not apply to string field" in bad.content.decode()
    good = client.post(
        "/segments/new/",
        {
            "name": "Free",
            "kind": "rules",
            "rules": json.dumps({"field": "attributes.plan", "op": "eq", "value": "free"}),
        },
    )
    segment = Segment.objects.get(name="Free")
    assert good["Location"] == f"/segments/{segment.pk}/"


def test_live_estimate_fragment(teammate, people):
    client = console_client(teammate)
    ok = client.post(
        "/segments/estimate/", {"rules": json.dumps({"field": "attributes.plan", "op": "eq", "value": "free"})}
    ).content.decode()
    assert 'data-testid="estimate-count">5<' in ok
    bad = client.post("/segments/estimate/", {"rules": "{nope"}).content.decode()
    assert "Not valid JSON" in bad


def test_static_list_from_the_console(teammate, people):
    client = console_client(teammate)
    client.post(
        "/segments/new/", {"name": "Hand picked", "kind": "static", "external_ids": "k1, k4\nk7\nghost"}, follow=True
    )
    segment = Segment.objects.get(name="Hand picked")
    assert set(SegmentMember.objects.filter(segment=segment).values_list("contact__external_id", flat=True)) == {
        "k1",
        "k4",
        "k7",
    }


def test_contacts_page_lists_and_searches(teammate, people):
    client = console_client(teammate)
    page = client.get("/contacts/").content.decode()
    assert "k0@example.com" in page and "plan" in page
    searched = client.get("/contacts/?search=k7").content.decode()
    assert "k7@example.com" in searched and "k6@example.com" not in searched


def test_campaign_audience_estimate_fragment(teammate, segment):
    response = console_client(teammate).post(
        "/campaigns/audience/estimate/",
        {
            "include_segments": [str(segment.pk)],
            "holdout_percent": "0",
        },
    )
    assert 'data-testid="estimate-count">3<' in response.content.decode()
    bad = console_client(teammate).post(
        "/campaigns/audience/estimate/", {"audience_rules": '{"field": "x", "op": "eq"}'}
    )
    assert "Unknown field" in bad.content.decode()
