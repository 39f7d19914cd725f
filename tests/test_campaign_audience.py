"""A campaign's audience: include/exclude/AND/OR arithmetic, the holdout, estimates, membership, resolution."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection
from scipy import stats

from audiences import segments as engine
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Segment
from campaigns import audience
from campaigns.models import Campaign
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

N = 2000


@pytest.fixture
def crowd(organisation):
    rows = [
        {
            "external_id": f"p{i}",
            "attributes": {
                "plan": "pro" if i % 2 == 0 else "free",
                "country": "GB" if i % 3 == 0 else "FR",
                "churned": i % 5 == 0,
            },
        }
        for i in range(N)
    ]
    for start in range(0, N, 1000):
        contacts_upsert_rows(organisation=organisation, rows=rows[start : start + 1000])
    ids = {c.external_id: c.pk for c in Contact.objects.filter(organisation=organisation)}
    pro = Segment.objects.create(
        organisation=organisation, name="Pro", rules={"field": "attributes.plan", "op": "eq", "value": "pro"}
    )
    uk = Segment.objects.create(
        organisation=organisation, name="UK", rules={"field": "attributes.country", "op": "eq", "value": "GB"}
    )
    churned = Segment.objects.create(
        organisation=organisation, name="Churned", rules={"field": "attributes.churned", "op": "eq", "value": True}
    )
    return ids, pro, uk, churned


def expected(predicate) -> set[str]:
    return {f"p{i}" for i in range(N) if predicate(i)}


def resolved(campaign: Campaign) -> dict[str, bool]:
    select = audience.audience_resolution_select(campaign)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT c.external_id, r.is_holdout FROM ({select.sql}) AS r"
            " JOIN audiences_contact c ON c.id = r.contact_id",
            select.params,
        )
        return dict(cursor.fetchall())


def make(teammate, **spec) -> Campaign:
    body = {"name": f"Audience {Campaign.objects.count()}", "channels": ["email"], "audience": spec}
    response = teammate.api.post("/api/v1/campaigns/", body, format="json")
    assert response.status_code == 201, response.data
    return Campaign.objects.get(pk=response.data["id"])


@pytest.mark.parametrize(
    ("spec", "predicate"),
    [
        (lambda pro, uk, ch: {"include": [pro]}, lambda i: i % 2 == 0),
        (lambda pro, uk, ch: {"include": [pro, uk], "combine": "or"}, lambda i: i % 2 == 0 or i % 3 == 0),
        (lambda pro, uk, ch: {"include": [pro, uk], "combine": "and"}, lambda i: i % 6 == 0),
        (lambda pro, uk, ch: {"include": [pro], "exclude": [ch]}, lambda i: i % 2 == 0 and i % 5 != 0),
        (
            lambda pro, uk, ch: {"include": [pro, uk], "combine": "or", "exclude": [ch]},
            lambda i: (i % 2 == 0 or i % 3 == 0) and i % 5 != 0,
        ),
        (
            lambda pro, uk, ch: {"include": [uk], "rules": {"field": "attributes.plan", "op": "eq", "value": "free"}},
            lambda i: i % 3 == 0 and i % 2 == 1,
        ),
        (
            lambda pro, uk, ch: {"rules": {"field": "attributes.churned", "op": "eq", "value": False}, "exclude": [uk]},
            lambda i: i % 5 != 0 and i % 3 != 0,
        ),
    ],
)
def test_include_exclude_arithmetic(teammate, crowd, spec, predicate):
    _, pro, uk, churned = crowd
    definition = spec(str(pro.pk), str(uk.pk), str(churned.pk))
    campaign = make(teammate, **definition)
    want = expected(predicate)
    assert set(resolved(campaign)) == want
    estimate = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/audience-estimate/").data
    assert (estimate["count"], estimate["exact"]) == (len(want), True)
    ids = crowd[0]
    for external_id in ("p0", "p1", "p6", "p10", "p15"):
        assert audience.audience_is_member(campaign, ids[external_id]) is (external_id in want)


def test_holdout_is_deterministic_and_matches_its_documented_formula(teammate, crowd):
    ids, pro, _, _ = crowd
    campaign = make(teammate, include=[str(pro.pk)], holdout_percent=10)
    first, second = resolved(campaign), resolved(campaign)
    assert first == second  # stable across resolutions
    for external_id, is_holdout in first.items():
        # Same answer from the SQL resolution and from the Python formula (md5 of "<campaign id>:<contact id>").
        assert audience.audience_in_holdout(campaign, ids[external_id]) is is_holdout
    held = sum(first.values())
    assert held == sum(engine.holdout_bucket(str(campaign.pk), ids[x]) < 1000 for x in first)
    # About 10 % of 1000: a binomial 99.9 % interval.
    low, high = stats.binom.interval(0.999, len(first), 0.10)
    assert low <= held <= high
    estimate = audience.audience_estimate(campaign)
    assert (estimate["count"], estimate["holdout"], estimate["recipients"]) == (1000, 100, 900)


def test_holdout_differs_between_campaigns_and_zero_holds_nobody(teammate, crowd):
    _, pro, _, _ = crowd
    a = resolved(make(teammate, include=[str(pro.pk)], holdout_percent=20))
    b = resolved(make(teammate, include=[str(pro.pk)], holdout_percent=20))
    assert {x for x, h in a.items() if h} != {x for x, h in b.items() if h}
    none = resolved(make(teammate, include=[str(pro.pk)], holdout_percent=0))
    assert not any(none.values())


def test_holdout_buckets_are_uniform(organisation, crowd):
    ids = crowd[0]
    buckets = Counter(engine.holdout_bucket("seed", contact_id) // 1000 for contact_id in ids.values())
    chi2 = stats.chisquare([buckets[b] for b in range(10)])
    assert chi2.pvalue > 0.001


def test_audience_is_resolved_at_execution_time(teammate, crowd, organisation):
    _, pro, _, _ = crowd
    campaign = make(teammate, include=[str(pro.pk)])
    assert len(resolved(campaign)) == 1000
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "late", "attributes": {"plan": "pro"}}])
    assert "late" in resolved(campaign)


@pytest.mark.parametrize(
    ("audience_spec", "field"),
    [
        ({"holdout_percent": 21}, "audience"),
        ({"holdout_percent": -1}, "audience"),
        ({"combine": "xor"}, "audience"),
        ({"include": ["00000000-0000-0000-0000-000000000000"]}, "audience.include"),
        ({"rules": {"field": "nope", "op": "eq", "value": 1}}, "audience.rules"),
    ],
)
def test_bad_audiences_are_400(teammate, crowd, audience_spec, field):
    response = teammate.api.post("/api/v1/campaigns/", {"name": "Bad", "audience": audience_spec}, format="json")
    assert response.status_code == 400
    assert field in response.data, response.data
    assert not Campaign.objects.filter(name="Bad").exists()


def test_including_and_excluding_the_same_segment_is_400(teammate, crowd):
    _, pro, _, _ = crowd
    response = teammate.api.post(
        "/api/v1/campaigns/",
        {"name": "Both", "audience": {"include": [str(pro.pk)], "exclude": [str(pro.pk)]}},
        format="json",
    )
    assert response.status_code == 400
    assert response.data["audience.exclude"] == ["A segment cannot be both included and excluded."]


def test_another_organisations_segment_cannot_be_an_audience(teammate, outsider, crowd):
    _, pro, _, _ = crowd
    response = outsider.api.post(
        "/api/v1/campaigns/", {"name": "Steal", "audience": {"include": [str(pro.pk)]}}, format="json"
    )
    assert response.status_code == 400
    assert "audience.include" in response.data


def test_audience_round_trips_and_is_cloned(teammate, crowd):
    _, pro, uk, churned = crowd
    campaign = make(
        teammate,
        include=[str(pro.pk), str(uk.pk)],
        combine="and",
        exclude=[str(churned.pk)],
        holdout_percent=5,
        rules={"field": "email", "op": "not_exists"},
    )
    data = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/").data["audience"]
    assert data == {
        "include": sorted([str(pro.pk), str(uk.pk)], key=[str(pro.pk), str(uk.pk)].index),
        "combine": "and",
        "exclude": [str(churned.pk)],
        "rules": {"field": "email", "op": "not_exists"},
        "holdout_percent": "5.00",
    }
    clone = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/clone/").data
    assert {**clone["audience"], "include": sorted(clone["audience"]["include"])} == {
        **data,
        "include": sorted(data["include"]),
    }
    assert set(resolved(Campaign.objects.get(pk=clone["id"]))) == set(resolved(campaign))


def test_partial_audience_update_keeps_the_rest(teammate, crowd):
    _, pro, _, churned = crowd
    campaign = make(teammate, include=[str(pro.pk)], exclude=[str(churned.pk)])
    teammate.api.patch(f"/api/v1/campaigns/{campaign.pk}/", {"audience": {"holdout_percent": 15}}, format="json")
    data = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/").data["audience"]
    assert (data["include"], data["exclude"], data["holdout_percent"]) == ([str(pro.pk)], [str(churned.pk)], "15.00")


def test_launch_needs_an_audience(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, type="triggered", audience_rules=None)
    response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/")
    assert response.status_code == 400
    assert "audience" in response.data
