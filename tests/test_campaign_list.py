"""The campaign list: pagination, every filter, every sort, and a constant number of queries."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns.models import Campaign
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/campaigns/"


def at(day: int, hour: int = 12):
    from datetime import UTC as utc

    return datetime(2026, 3, day, hour, 0, tzinfo=utc)


@pytest.fixture
def catalogue(teammate, outsider):
    """Six campaigns of Acme with known attributes, one deleted, and a decoy in another organisation."""
    org = teammate.organisation
    specs = [
        # name, type, status, channels, created day, scheduled day
        ("Spring sale", "scheduled", "scheduled", ["email", "sms"], 1, 20),
        ("spring teaser", "scheduled", "draft", ["email"], 2, None),
        ("Welcome flow", "triggered", "active", ["in_app"], 3, None),
        ("Winback", "triggered", "paused", ["whatsapp", "sms"], 4, None),
        ("Autumn recap", "scheduled", "completed", ["webhook"], 5, 10),
        ("Black Friday", "scheduled", "cancelled", ["email"], 6, 28),
    ]
    made = {}
    for name, campaign_type, status, channels, created, scheduled in specs:
        campaign = CampaignFactory(
            organisation=org,
            name=name,
            type=campaign_type,
            status=status,
            channels=channels,
            scheduled_at=at(scheduled) if scheduled else None,
        )
        Campaign.objects.filter(pk=campaign.pk).update(created_at=at(created))
        made[name] = campaign
    deleted = CampaignFactory(organisation=org, name="Spring old", status="draft")
    Campaign.objects.filter(pk=deleted.pk).update(created_at=at(7), deleted_at=at(8))
    made["Spring old"] = deleted
    CampaignFactory(organisation=outsider.organisation, name="Spring elsewhere", channels=["email"])
    return made


def names(response):
    assert response.status_code == 200, response.data
    return [row["name"] for row in response.data["results"]]


def test_default_list_is_newest_first_and_excludes_deleted(teammate, catalogue):
    response = teammate.api.get(URL)
    assert names(response) == [
        "Black Friday",
        "Autumn recap",
        "Winback",
        "Welcome flow",
        "spring teaser",
        "Spring sale",
    ]
    assert response.data["count"] == 6
    assert response.data["page_size"] == 20


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=draft", {"spring teaser"}),
        ("status=active", {"Welcome flow"}),
        ("status=paused,completed", {"Winback", "Autumn recap"}),
        ("status=running", set()),
        ("type=triggered", {"Welcome flow", "Winback"}),
        ("type=scheduled", {"Spring sale", "spring teaser", "Autumn recap", "Black Friday"}),
        ("channel=sms", {"Spring sale", "Winback"}),
        ("channel=webhook,in_app", {"Autumn recap", "Welcome flow"}),
        ("channel=email&status=draft", {"spring teaser"}),
        ("search=spring", {"Spring sale", "spring teaser"}),
        ("search=SPRING%20s", {"Spring sale"}),
        ("search=sale", set()),  # prefix, not substring
        ("search=%25", set()),  # a literal %, not a wildcard
        ("created_after=2026-03-03", {"Welcome flow", "Winback", "Autumn recap", "Black Friday"}),
        ("created_before=2026-03-02", {"Spring sale", "spring teaser"}),
        ("created_after=2026-03-02&created_before=2026-03-04", {"spring teaser", "Welcome flow", "Winback"}),
        ("created_after=2026-03-03T13:00:00Z", {"Winback", "Autumn recap", "Black Friday"}),
        (
            "created_after=2026-03-03T13:00:00%2B02:00",
            {"Welcome flow", "Winback", "Autumn recap", "Black Friday"},
        ),
        (
            "created_after=2026-03-03T13:00:00+02:00",
            {"Welcome flow", "Winback", "Autumn recap", "Black Friday"},
        ),
        ("scheduled_after=2026-03-15", {"Spring sale", "Black Friday"}),
        ("scheduled_before=2026-03-20", {"Spring sale", "Autumn recap"}),
        ("scheduled_after=2026-03-11&scheduled_before=2026-03-27", {"Spring sale"}),
        ("deleted=only", {"Spring old"}),
        ("deleted=include&search=spring", {"Spring sale", "spring teaser", "Spring old"}),
    ],
)
def test_filters(teammate, catalogue, query, expected):
    assert set(names(teammate.api.get(f"{URL}?{query}"))) == expected


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        (
            "created",
            ["Spring sale", "spring teaser", "Welcome flow", "Winback", "Autumn recap", "Black Friday"],
        ),
        (
            "-created",
            ["Black Friday", "Autumn recap", "Winback", "Welcome flow", "spring teaser", "Spring sale"],
        ),
        ("name", ["Autumn recap", "Black Friday", "Spring sale", "Welcome flow", "Winback", "spring teaser"]),
        (
            "-name",
            ["spring teaser", "Winback", "Welcome flow", "Spring sale", "Black Friday", "Autumn recap"],
        ),
        # Unscheduled campaigns sort last in both directions, newest-created-first among themselves by id.
        ("scheduled", ["Autumn recap", "Spring sale", "Black Friday"]),
        ("scheduled_at", ["Autumn recap", "Spring sale", "Black Friday"]),
        ("-created_at", ["Black Friday", "Autumn recap", "Winback", "Welcome flow", "spring teaser", "Spring sale"]),
        ("-scheduled", ["Black Friday", "Spring sale", "Autumn recap"]),
    ],
)
def test_sorts(teammate, catalogue, ordering, expected):
    result = names(teammate.api.get(f"{URL}?ordering={ordering}"))
    assert result[: len(expected)] == expected
    assert len(result) == 6


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=sent", "status"),
        ("type=weekly", "type"),
        ("channel=fax", "channel"),
        ("ordering=popularity", "ordering"),
        ("created_after=yesterday", "created_after"),
        ("scheduled_before=2026-02-30", "scheduled_before"),
        ("deleted=maybe", "deleted"),
        ("page_size=0", "page_size"),
        ("page_size=-3", "page_size"),
        ("page_size=lots", "page_size"),
    ],
)
def test_bad_parameters_are_field_level_400s(teammate, catalogue, query, field):
    response = teammate.api.get(f"{URL}?{query}")
    assert response.status_code == 400
    assert field in response.data, response.data


def test_pagination_walks_every_campaign_once(teammate):
    for index in range(45):
        CampaignFactory(organisation=teammate.organisation, name=f"Bulk {index:02d}")
    seen = []
    url = f"{URL}?ordering=name&page_size=20"
    pages = 0
    while url:
        response = teammate.api.get(url)
        assert response.status_code == 200
        seen += [row["name"] for row in response.data["results"]]
        url = response.data["next"]
        pages += 1
    assert pages == 3
    assert seen == [f"Bulk {index:02d}" for index in range(45)]


def test_page_size_above_100_is_clamped(teammate):
    for index in range(105):
        CampaignFactory(organisation=teammate.organisation, name=f"Many {index}", variants=False)
    response = teammate.api.get(f"{URL}?page_size=500")
    assert response.status_code == 200
    assert len(response.data["results"]) == 100
    assert response.data["page_size"] == 100
    assert response.data["count"] == 105


def test_a_page_past_the_end_is_404(teammate, catalogue):
    assert teammate.api.get(f"{URL}?page=99").status_code == 404


def test_query_count_does_not_grow_with_the_page(teammate):
    def count_queries(n):
        Campaign.objects.filter(organisation=teammate.organisation).delete()
        for index in range(n):
            CampaignFactory(organisation=teammate.organisation, name=f"Q{n}-{index}")
        with CaptureQueriesContext(connection) as ctx:
            response = teammate.api.get(f"{URL}?page_size=100")
        assert response.status_code == 200
        assert len(response.data["results"]) == n
        return len(ctx.captured_queries)

    teammate.api.get(URL)  # first use of the key records last_used_at: one extra UPDATE, once a minute at most
    small, large = count_queries(2), count_queries(40)
    assert small == large
    assert large <= 5  # key lookup, count, page (owners joined), variants


def test_session_clients_list_the_same_way(teammate, catalogue):
    assert set(names(teammate.client.get(f"{URL}?type=triggered"))) == {"Welcome flow", "Winback"}
