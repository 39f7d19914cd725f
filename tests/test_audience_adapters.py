"""The intelligent_query HTTP adapter and the adapters' selection, against a local HTTP server the test starts
itself (user_360 in every failure mode: tests/test_adapter_user_360.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audiences import adapters
from audiences import segments as engine
from audiences.adapters import AdapterError, HttpSegmentQuery, HttpUserProfiles
from audiences.contacts import contacts_upsert_rows
from audiences.models import SegmentMember

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-token"


class FakeIsaData(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, dict, str]] = []
    pages: dict[str | None, tuple[list[str], str | None]] = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body, self.headers.get("Authorization", "")))
        if body.get("query") == "fail":
            return self._reply(503, {"detail": "down"})
        ids, cursor = self.pages[body.get("cursor")]
        return self._reply(200, {"user_ids": ids, "next_cursor": cursor})


@pytest.fixture
def server() -> Iterator[str]:
    FakeIsaData.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeIsaData)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_settings_choose_the_adapter(settings, server):
    settings.USER_360_URL = ""
    assert isinstance(adapters.user_profile_provider(), adapters.EmbeddedUserProfiles)
    settings.USER_360_URL = server
    assert isinstance(adapters.user_profile_provider(), HttpUserProfiles)
    settings.INTELLIGENT_QUERY_URL = ""
    assert adapters.segment_query_provider().embedded
    settings.INTELLIGENT_QUERY_URL = server
    assert not adapters.segment_query_provider().embedded


def test_embedded_user_360_reads_the_contact_store(organisation):
    contacts_upsert_rows(
        organisation=organisation, rows=[{"external_id": "me", "first_name": "Local", "attributes": {"plan": "pro"}}]
    )
    profiles = adapters.EmbeddedUserProfiles().profiles(organisation, ["me", "nobody"])
    assert [(key, p["first_name"], p["attributes"]) for key, p in profiles.items()] == [
        ("me", "Local", {"plan": "pro"})
    ]


def test_intelligent_query_follows_pages(server, organisation):
    FakeIsaData.pages = {None: (["a", "b"], "page2"), "page2": (["c"], None)}
    ids = list(HttpSegmentQuery(server, TOKEN, timeout=1.0).resolve(organisation, "buyers in the last week"))
    assert ids == ["a", "b", "c"]
    posts = [r for r in FakeIsaData.requests if r[0] == "POST"]
    assert [p[2]["cursor"] for p in posts] == [None, "page2"]
    assert posts[0][2] == {"organisation": "acme", "query": "buyers in the last week", "cursor": None}


def test_intelligent_query_errors(server, organisation):
    with pytest.raises(AdapterError):
        list(HttpSegmentQuery(server, TOKEN, timeout=1.0).resolve(organisation, "fail"))


def test_external_segment_resolves_through_the_service(server, settings, teammate, organisation):
    settings.INTELLIGENT_QUERY_URL = server
    settings.INTELLIGENT_QUERY_TOKEN = TOKEN
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": x} for x in ("a", "b", "c", "d")])
    FakeIsaData.pages = {None: (["a", "c", "unknown"], None)}
    created = teammate.api.post(
        "/api/v1/segments/",
        {"name": "Lookalikes", "kind": "external", "external_query": "people like our best buyers"},
        format="json",
    )
    assert created.status_code == 201, created.data
    estimate = teammate.api.get(f"/api/v1/segments/{created.data['id']}/estimate/").data
    assert estimate["count"] == 2
    assert set(SegmentMember.objects.values_list("contact__external_id", flat=True)) == {"a", "c"}
    # Fresh members are reused; a forced refresh asks again.
    FakeIsaData.pages = {None: (["b"], None)}
    assert teammate.api.get(f"/api/v1/segments/{created.data['id']}/estimate/").data["count"] == 2
    assert teammate.api.post(f"/api/v1/segments/{created.data['id']}/refresh/").data == {"member_count": 1}


def test_embedded_external_segment_runs_our_rules_engine(teammate, organisation):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "x", "attributes": {"plan": "pro"}},
            {"external_id": "y", "attributes": {"plan": "free"}},
        ],
    )
    query = json.dumps({"field": "attributes.plan", "op": "eq", "value": "pro"})
    created = teammate.api.post(
        "/api/v1/segments/", {"name": "Ext", "kind": "external", "external_query": query}, format="json"
    )
    assert created.status_code == 201, created.data
    assert teammate.api.get(f"/api/v1/segments/{created.data['id']}/estimate/").data["count"] == 1
    bad = teammate.api.post(
        "/api/v1/segments/", {"name": "Bad", "kind": "external", "external_query": "not json"}, format="json"
    )
    assert bad.status_code == 400
    assert list(adapters.EmbeddedSegmentQuery().resolve(organisation, query)) == ["x"]
    assert engine.count_exact(organisation, engine.compile_rules(organisation, json.loads(query))) == 1
