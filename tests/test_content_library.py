"""Reusable content templates: the embedded library, the isA_Creative HTTP adapter, and "start from template"."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

from audiences.adapters import AdapterError
from campaigns.content.library import HttpLibrary, template_library
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/content-templates/"


def test_create_list_retrieve_delete(teammate, outsider):
    created = teammate.api.post(
        URL,
        {
            "name": "Welcome",
            "channel": "email",
            "content": {"subject": "Welcome {{ contact.first_name }}", "html": "<p>Hi</p>"},
        },
        format="json",
    )
    assert created.status_code == 201, created.data
    assert created.data["source"] == "embedded"
    assert [t["name"] for t in teammate.api.get(URL).data] == ["Welcome"]
    assert teammate.api.get(f"{URL}?channel=sms").data == []
    assert teammate.api.get(f"{URL}?channel=fax").status_code == 400
    assert teammate.api.get(f"{URL}{created.data['id']}/").data["content"]["subject"].startswith("Welcome")
    # Another organisation sees nothing of it.
    assert outsider.api.get(URL).data == []
    assert outsider.api.get(f"{URL}{created.data['id']}/").status_code == 404
    assert outsider.api.delete(f"{URL}{created.data['id']}/").status_code == 404
    assert teammate.api.delete(f"{URL}{created.data['id']}/").status_code == 204
    assert teammate.api.get(URL).data == []


def test_invalid_templates_are_400(teammate):
    bad = teammate.api.post(URL, {"name": "Bad", "channel": "email", "content": {"subject": "{{ oops"}}, format="json")
    assert bad.status_code == 400
    assert "content" in bad.data
    teammate.api.post(URL, {"name": "Dup", "channel": "sms", "content": {"body": "x"}}, format="json")
    dup = teammate.api.post(URL, {"name": "dup", "channel": "sms", "content": {"body": "y"}}, format="json")
    assert dup.status_code == 400 and "name" in dup.data


def test_start_from_template_in_the_console(teammate):
    template = teammate.api.post(
        URL, {"name": "Flash sale", "channel": "sms", "content": {"body": "Flash sale!"}}, format="json"
    ).data
    campaign = CampaignFactory(organisation=teammate.organisation, channels=["sms"])
    client = Client()
    client.force_login(teammate.membership.user)
    page = client.post(
        f"/campaigns/{campaign.pk}/content/",
        {
            "v-0-name": "A",
            "v-0-allocation": "100",
            "v-0-sms-body": "old",
            "v-0-sms-template": template["id"],
            "use_template": "0:sms",
        },
    ).content.decode()
    assert ">Flash sale!</textarea>" in page


class FakeCreative(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer tok":
            body, code = {"detail": "no"}, 401
        elif self.path.startswith("/organisations/acme/templates/t1"):
            body, code = (
                {
                    "id": "t1",
                    "name": "Remote",
                    "channel": "email",
                    "content": {"subject": "From isA", "html": "<p>x</p>", "evil": "dropped"},
                },
                200,
            )
        elif self.path.startswith("/organisations/acme/templates"):
            body, code = (
                {
                    "templates": [
                        {"id": "t1", "name": "Remote", "channel": "email", "content": {}},
                        {"id": "t2", "name": "Odd", "channel": "carrier-pigeon"},
                    ]
                },
                200,
            )
        else:
            body, code = {"detail": "unknown"}, 404
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def creative():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCreative)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_isa_creative_http_library(creative, organisation, settings, teammate):
    library = HttpLibrary(creative, "tok", timeout=2)
    assert [t["name"] for t in library.list(organisation)] == ["Remote"]  # unknown channels are dropped
    remote = library.get(organisation, "t1")
    assert remote["content"] == {"subject": "From isA", "html": "<p>x</p>"}  # unknown fields are dropped
    assert library.get(organisation, "nope") is None
    with pytest.raises(AdapterError):
        HttpLibrary(creative, "wrong", timeout=2).list(organisation)
    settings.ISA_CREATIVE_URL, settings.ISA_CREATIVE_TOKEN = creative, "tok"
    assert not template_library().embedded
    assert [t["source"] for t in teammate.api.get(URL).data] == ["isA_Creative"]
    refused = teammate.api.post(URL, {"name": "x", "channel": "sms", "content": {"body": "x"}}, format="json")
    assert refused.status_code == 409
