"""The event API (embedded event_service): single and batch ingestion, idempotent ids, per-item errors, unknown
contacts created or rejected, the event-type catalogue and console page, and behaviour rules in segments."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audiences import segments as engine
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Event, EventType
from audiences.rules import RuleError
from compliance.models import AuditLogEntry
from tests.factories import console_client

pytestmark = pytest.mark.django_db

URL = "/api/v1/events/"


def test_a_single_event_is_accepted_and_a_repeat_ignored(teammate):
    contacts_upsert_rows(organisation=teammate.organisation, rows=[{"external_id": "u1"}])
    event = {"id": "e-1", "type": "order_completed", "contact": "u1", "properties": {"value": 59.9}}
    first = teammate.api.post(URL, event, format="json")
    assert first.status_code == 202, first.data
    assert first.data == {"accepted": 1, "duplicates": 0, "contacts_created": 0, "errors": []}
    again = teammate.api.post(URL, event, format="json")
    assert again.status_code == 202 and again.data["accepted"] == 0 and again.data["duplicates"] == 1
    stored = Event.objects.get(organisation=teammate.organisation, event_id="e-1")
    assert stored.properties == {"value": 59.9}
    assert stored.contact_id == Contact.objects.get(external_id="u1").pk
    assert timezone.now() - stored.occurred_at < timedelta(minutes=1)


def test_a_batch_keeps_the_good_items_and_reports_each_bad_one_by_index(teammate):
    batch = {
        "events": [
            {"id": "b-1", "type": "page_view", "contact": "new-1", "occurred_at": "2026-11-20T10:00:00Z"},
            {"id": "b-2", "type": "bad type!", "contact": "new-1"},
            {"type": "page_view", "contact": "new-2"},
            {"id": "b-3", "type": "page_view", "contact": "new-2", "properties": [1, 2]},
            "not an object",
            {"id": "b-4", "type": "page_view", "contact": "new-2", "occurred_at": "yesterday"},
            {"id": "b-1", "type": "page_view", "contact": "new-1"},  # same id again in the batch
            {"id": "b-5", "type": "page_view", "contact": "new-2", "colour": "red"},
            {"id": "b-6", "type": "signup", "contact": "new-2", "properties": {"plan": "pro", "trial": True}},
        ]
    }
    response = teammate.api.post(URL, batch, format="json")
    assert response.status_code == 202
    assert response.data["accepted"] == 2 and response.data["duplicates"] == 1
    assert response.data["contacts_created"] == 2  # unknown contacts are created (the organisation's default)
    errors = {e["index"]: e["errors"] for e in response.data["errors"]}
    assert set(errors) == {1, 2, 3, 4, 5, 7}
    assert "type" in errors[1] and "id" in errors[2] and "properties" in errors[3]
    assert "non_field_errors" in errors[4] and "occurred_at" in errors[5] and "colour" in errors[7]
    assert Event.objects.filter(organisation=teammate.organisation).count() == 2
    entry = AuditLogEntry.objects.get(action="events.ingest")
    assert entry.details["accepted"] == 2 and entry.details["rejected"] == 6


def test_an_organisation_may_reject_events_for_unknown_contacts(teammate):
    teammate.organisation.unknown_event_contacts = "reject"
    teammate.organisation.save()
    contacts_upsert_rows(organisation=teammate.organisation, rows=[{"external_id": "known"}])
    batch = {"events": [{"id": "r1", "type": "x", "contact": "known"}, {"id": "r2", "type": "x", "contact": "ghost"}]}
    response = teammate.api.post(URL, batch, format="json")
    assert response.status_code == 202 and response.data["accepted"] == 1
    assert response.data["errors"][0]["index"] == 1 and "contact" in response.data["errors"][0]["errors"]
    assert not Contact.objects.filter(external_id="ghost").exists()
    nothing = teammate.api.post(URL, {"id": "r3", "type": "x", "contact": "ghost"}, format="json")
    assert nothing.status_code == 400


def test_limits_roles_and_organisations(teammate, analyst, outsider):
    assert teammate.api.post(URL, {"events": []}, format="json").status_code == 400
    too_many = [{"id": f"t{i}", "type": "x", "contact": "c"} for i in range(1001)]
    assert teammate.api.post(URL, {"events": too_many}, format="json").status_code == 400
    assert analyst.api.post(URL, {"id": "a", "type": "x", "contact": "c"}, format="json").status_code == 403
    # Event ids are per organisation: the same id elsewhere is a different event.
    assert teammate.api.post(URL, {"id": "same", "type": "x", "contact": "c"}, format="json").data["accepted"] == 1
    assert outsider.api.post(URL, {"id": "same", "type": "x", "contact": "c"}, format="json").data["accepted"] == 1
    assert outsider.api.get("/api/v1/event-types/").data["results"][0]["total_count"] == 1


def test_the_catalogue_lists_types_with_properties_and_recent_volume(teammate):
    events = [
        {"id": f"o{i}", "type": "order_completed", "contact": "u", "properties": {"value": 10 + i, "currency": "EUR"}}
        for i in range(3)
    ]
    events.append({"id": "old", "type": "order_completed", "contact": "u", "occurred_at": "2026-01-01T00:00:00Z"})
    teammate.api.post(URL, {"events": events}, format="json")
    [entry] = teammate.api.get("/api/v1/event-types/").data["results"]
    assert entry["name"] == "order_completed" and entry["total_count"] == 4
    assert entry["properties"]["value"] == {"type": "number", "examples": [10, 11, 12]}
    assert entry["properties"]["currency"]["type"] == "string"
    assert EventType.objects.get(name="order_completed").first_seen_at <= timezone.now()
    page = console_client(teammate).get("/events/").content.decode()
    assert "order_completed" in page and "currency" in page
    assert "<td>3</td><td>3</td><td>4</td>" in page.replace("\n", "").replace("        ", "")


def test_segments_select_by_behaviour(teammate):
    org = teammate.organisation
    contacts_upsert_rows(organisation=org, rows=[{"external_id": x} for x in ("buyer", "once", "lapsed", "never")])
    now = timezone.now()
    events = [
        *(
            {
                "id": f"b{i}",
                "type": "purchase",
                "contact": "buyer",
                "occurred_at": (now - timedelta(days=i)).isoformat(),
            }
            for i in range(3)
        ),
        {"id": "o1", "type": "purchase", "contact": "once", "occurred_at": (now - timedelta(days=2)).isoformat()},
        {"id": "l1", "type": "purchase", "contact": "lapsed", "occurred_at": (now - timedelta(days=90)).isoformat()},
        {"id": "v1", "type": "page_view", "contact": "never"},
    ]
    assert teammate.api.post(URL, {"events": events}, format="json").data["accepted"] == 6

    def members(rules):
        condition = engine.compile_rules(org, rules)
        return set(engine.matching_contacts(org, condition).values_list("external_id", flat=True))

    assert members({"event": "purchase"}) == {"buyer", "once", "lapsed"}
    assert members({"event": "purchase", "within_days": 30}) == {"buyer", "once"}
    assert members({"event": "purchase", "min_count": 2, "within_days": 30}) == {"buyer"}
    assert members({"not": {"event": "purchase", "within_days": 30}}) == {"lapsed", "never"}
    with pytest.raises(RuleError) as caught:
        engine.compile_rules(org, {"and": [{"event": "purchase", "min_count": 0}, {"event": "x", "days": 3}]})
    paths = {p.path for p in caught.value.problems}
    assert paths == {"/and/0/min_count", "/and/1/days"}
    # Through the API, a bad node is a 400 that points at it.
    bad = teammate.api.post(
        "/api/v1/segments/", {"name": "B", "rules": {"event": "purchase", "within_days": 0}}, format="json"
    )
    assert bad.status_code == 400 and "/within_days" in str(bad.data)


def test_deleting_a_contact_deletes_its_events(teammate):
    teammate.api.post(URL, {"id": "d1", "type": "x", "contact": "gone"}, format="json")
    contact = Contact.objects.get(external_id="gone")
    assert teammate.api.delete(f"/api/v1/contacts/{contact.pk}/").status_code in (200, 204)
    assert not Event.objects.filter(event_id="d1").exists()


# --- the external event_service feed ----------------------------------------------------------------------------


def test_events_are_pulled_from_an_external_event_service(settings, teammate):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    from audiences.adapters import AdapterError
    from audiences.event_feed import HttpEventFeed, event_feed_pull
    from audiences.models import EventFeedCursor
    from audiences.tasks import event_feed_pull_task

    pages = {
        "": ([{"id": "x1", "type": "login", "contact": "f1"}, {"id": "x2", "type": "login", "contact": "f2"}], "p2"),
        "p2": ([{"id": "x2", "type": "login", "contact": "f2"}, {"id": "x3", "type": "bad type"}], "p3"),
        "p3": ([], "p3"),
    }
    seen = []

    class Feed(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            parts = urlsplit(self.path)
            seen.append((parts.path, self.headers.get("Authorization")))
            if "broken" in parts.path:
                self.send_response(500)
                self.end_headers()
                return
            after = parse_qs(parts.query).get("after", [""])[0]
            events, following = pages[after]
            body = json.dumps({"events": events, "next": following}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Feed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        settings.EVENT_SERVICE_URL, settings.EVENT_SERVICE_TOKEN = url, "feed-token"
        result = event_feed_pull_task()
        assert result["accepted"] == 2 and result["errors"] == 0  # x2 repeated on page 2, x3 invalid
        assert seen[0] == (f"/organisations/{teammate.organisation.slug}/events", "Bearer feed-token")
        stored = set(Event.objects.filter(organisation=teammate.organisation).values_list("event_id", flat=True))
        assert stored == {"x1", "x2"}
        assert EventFeedCursor.objects.get(organisation=teammate.organisation).position == "p3"
        # Read again from the same cursor: nothing new, nothing doubled.
        again = event_feed_pull(teammate.organisation, feed=HttpEventFeed(url))
        assert again["accepted"] == 0 and Event.objects.filter(organisation=teammate.organisation).count() == 2
        teammate.organisation.slug = "broken"
        with pytest.raises(AdapterError):
            HttpEventFeed(url).page(teammate.organisation, "")
    finally:
        server.shutdown()
    settings.EVENT_SERVICE_URL = ""
    assert event_feed_pull_task() == {"organisations": 0, "accepted": 0, "errors": 0}
