"""Event batches posted at the same moment from many clients, through the real API (live server, real PostgreSQL):
overlapping batches in different orders, shared and brand-new event types, new contacts and repeated event ids.
Every request is answered 2xx, every event is stored exactly once and the catalogue counts each stored event once."""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Event, EventType
from delivery.models import Message
from delivery.triggers import trigger_decisions
from tests.factories import CampaignFactory, issue_key

URL = "/api/v1/events/"


def _contact(number: int, *, newcomers: bool) -> str:
    # The 37 people the organisation knows; with newcomers, every third event is of someone new, shared by the
    # neighbouring batches (who all try to create that contact).
    return f"newcomer-{number // 40}" if newcomers and number % 3 == 0 else f"person-{number % 37}"


def _event(number: int, *, types: list[str], newcomers: bool) -> dict[str, Any]:
    """Event number n always has the same type, contact and properties, whichever batch carries it."""
    return {
        "id": f"evt-{number}",
        "type": types[number % len(types)],
        "contact": _contact(number, newcomers=newcomers),
        "properties": {"n": number, "even": number % 2 == 0},
    }


def _post_together(base_url: str, key: str, batches: list[list[dict[str, Any]]]) -> list[httpx.Response]:
    """Each batch from its own client thread, all released at the same instant."""
    start = threading.Barrier(len(batches))

    def post(batch: list[dict[str, Any]]) -> httpx.Response:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            start.wait()
            return client.post(URL, json={"events": batch} if len(batch) > 1 else batch[0])

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        return list(pool.map(post, batches))


@pytest.fixture
def api_key(transactional_db, teammate) -> str:
    return issue_key(teammate.organisation, "marketer")


@pytest.mark.parametrize("newcomers", [False, True], ids=["known-contacts", "new-contacts"])
def test_overlapping_batches_from_twenty_clients_store_every_event_once(
    live_server, api_key, teammate, settings, newcomers
):
    settings.API_RATE_LIMIT = "10000/60"
    organisation = teammate.organisation
    # Two types the organisation already has, three it has never sent: every batch carries all five.
    seed = [{"id": f"seed-{n}", "type": ["page_view", "purchase"][n % 2], "contact": f"person-{n}"} for n in range(37)]
    assert httpx.post(
        live_server.url + URL, json={"events": seed}, headers={"Authorization": f"Bearer {api_key}"}
    ).is_success
    types = ["page_view", "purchase", "cart_opened", "coupon_used", "wishlist_added"]
    shuffle = random.Random(17)
    batches = []
    for client_number in range(20):
        # Client i sends events 40·i … 40·i + 119: each event id is in up to three batches, in a different order
        # in each (the order that used to deadlock), and every batch repeats one of its own events.
        numbers = list(range(40 * client_number, 40 * client_number + 120))
        shuffle.shuffle(numbers)
        batch = [_event(n, types=types, newcomers=newcomers) for n in numbers]
        batch.append(dict(batch[0]))
        batches.append(batch)

    responses = _post_together(live_server.url, api_key, batches)

    assert [r.status_code for r in responses] == [202] * 20, [r.text[:300] for r in responses if r.status_code != 202]
    unique = {n for client_number in range(20) for n in range(40 * client_number, 40 * client_number + 120)}
    assert len(unique) == 880
    assert sum(r.json()["accepted"] for r in responses) == 880
    assert sum(r.json()["duplicates"] for r in responses) == 20 * 121 - 880
    assert all(r.json()["errors"] == [] for r in responses)
    stored = Event.objects.filter(organisation=organisation).exclude(event_id__startswith="seed-")
    assert stored.count() == 880
    assert set(stored.values_list("event_id", flat=True)) == {f"evt-{n}" for n in unique}
    created = {_contact(n, newcomers=newcomers) for n in unique} - {f"person-{n}" for n in range(37)}
    assert len(created) == (22 if newcomers else 0)
    assert Contact.objects.filter(organisation=organisation).count() == 37 + len(created)
    assert sum(r.json()["contacts_created"] for r in responses) == len(created)
    expected_per_type = Counter(types[n % len(types)] for n in unique) + Counter(e["type"] for e in seed)
    catalogue = dict(EventType.objects.filter(organisation=organisation).values_list("name", "total_count"))
    assert catalogue == dict(expected_per_type)
    # Each type's properties were merged from every batch into one entry: five examples at most, no duplicates.
    for entry in EventType.objects.filter(organisation=organisation, name__in=types):
        assert entry.properties["n"]["type"] == "number" and len(set(entry.properties["n"]["examples"])) == 5
        assert entry.properties["even"] == {"type": "boolean", "examples": entry.properties["even"]["examples"]}
        assert sorted(entry.properties["even"]["examples"]) == [False, True]


def test_the_first_events_of_a_new_type_from_ten_clients_at_once_are_all_stored(live_server, api_key, teammate):
    organisation = teammate.organisation
    for attempt in range(5):  # five rounds, each with a type nobody has sent yet, to give the race every chance
        name = f"brand_new_{attempt}"
        batches = [[{"id": f"{name}-{i}", "type": name, "contact": f"fresh-{attempt}-{i}"}] for i in range(10)]

        responses = _post_together(live_server.url, api_key, batches)

        assert [r.status_code for r in responses] == [202] * 10, [r.text[:300] for r in responses]
        assert [r.json()["accepted"] for r in responses] == [1] * 10
        assert Event.objects.filter(organisation=organisation, type=name).count() == 10
        entry = EventType.objects.get(organisation=organisation, name=name)
        assert entry.total_count == 10
        assert entry.properties == {}


def test_concurrent_batches_are_matched_once_each_by_the_triggered_campaigns(live_server, api_key, teammate, settings):
    settings.API_RATE_LIMIT = "10000/60"
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"person-{n}", "email": f"person-{n}@example.com"} for n in range(37)],
    )
    campaigns = {}
    for event_type in ("purchase", "cart_opened"):
        campaign = CampaignFactory(organisation=organisation, type="triggered", trigger_event=event_type)
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/activate/").status_code == 200
        campaigns[event_type] = campaign
    types = ["page_view", "purchase", "cart_opened"]
    shuffle = random.Random(29)
    batches = []
    for client_number in range(12):
        numbers = list(range(30 * client_number, 30 * client_number + 90))
        shuffle.shuffle(numbers)
        batches.append([_event(n, types=types, newcomers=False) for n in numbers])

    responses = _post_together(live_server.url, api_key, batches)

    assert [r.status_code for r in responses] == [202] * 12, [r.text[:300] for r in responses if r.status_code != 202]
    unique = {n for client_number in range(12) for n in range(30 * client_number, 30 * client_number + 90)}
    assert Event.objects.filter(organisation=organisation).count() == len(unique) == 420
    for event_type, campaign in campaigns.items():
        stored = sum(1 for n in unique if types[n % 3] == event_type)
        # Every stored event of the type was matched once, and (no frequency limit) became one message.
        assert trigger_decisions(campaign)["matched"] == stored == 140
        assert Message.objects.filter(run__campaign=campaign).count() == stored
