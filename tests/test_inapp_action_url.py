"""An in-app message's action URL is checked as rendered, at send: only http(s), never an internal target. A URL
built from a contact's data (javascript:, data:, a private address, a name resolving inside) fails that message
with the reason and never reaches the inbox API; the others are delivered."""

from __future__ import annotations

import socket

import pytest

from audiences.contacts import contacts_upsert_rows
from campaigns.content import urls_check
from campaigns.models import Variant
from delivery import runs, sending
from delivery.backends import reset_backends
from delivery.models import InboxMessage, Message, Run
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

LINKS = {
    "good": "https://shop.example/spring?c=1",
    "script": "javascript:alert(1)",
    "data": "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "loopback": "http://127.0.0.1:8000/admin/",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "inside": "https://intranet.shop.example/payroll",
    "unresolved": "https://unknown.example/x",
    "malformed": "https://[::1/x",
    "port": "https://shop.example:http/x",
}


@pytest.fixture
def resolver(monkeypatch):
    """A resolver stub: intranet.shop.example resolves to a private address, shop.example to a public one, and
    nothing else resolves (as on a machine without DNS). Counts lookups per host."""
    lookups: dict[str, int] = {}
    answers = {"intranet.shop.example": "10.20.30.40", "shop.example": "93.184.216.34"}

    def getaddrinfo(host, port, *args, **kwargs):
        lookups[host] = lookups.get(host, 0) + 1
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    urls_check._RESOLVED.clear()
    yield lookups
    urls_check._RESOLVED.clear()


def test_it_fails_unsafe_rendered_action_urls_and_delivers_the_rest(
    settings, teammate, resolver, django_capture_on_commit_callbacks
):
    reset_backends()
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.InAppBackend"}
    organisation = teammate.organisation
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": name, "email": f"{name}@example.com", "first_name": name, "attributes": {"link": link}}
            for name, link in LINKS.items()
        ]
        + [{"external_id": "good2", "email": "good2@example.com", "attributes": {"link": LINKS["good"]}}],
    )
    campaign = CampaignFactory(organisation=organisation, channels=["in_app"], variants=False)
    content = {
        "in_app": {
            "title": "Hi {{ contact.first_name }}",
            "body": "Sale",
            "action_url": "{{ contact.attributes.link }}",
        }
    }
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    with django_capture_on_commit_callbacks(execute=False):
        response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        assert response.status_code == 200, response.data
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        sending.run_send_for(run.pk, seconds=30)
        runs.run_finish_if_done(run.pk)
    run.refresh_from_db()
    assert run.status == "completed"
    outcomes = {
        m.contact.external_id: (m.status, m.error) for m in Message.objects.filter(run=run).select_related("contact")
    }
    assert outcomes == {
        "good": ("delivered", ""),
        "good2": ("delivered", ""),
        "unresolved": ("delivered", ""),
        "script": ("failed", "template: action_url: The URL must start with https:// or http://."),
        "data": ("failed", "template: action_url: The URL must start with https:// or http://."),
        "loopback": ("failed", "template: action_url: The URL points at a private, loopback or link-local address."),
        "metadata": ("failed", "template: action_url: The URL points at a private, loopback or link-local address."),
        "malformed": ("failed", "template: action_url: The URL is malformed."),
        "port": ("failed", "template: action_url: The URL is malformed."),
        "inside": (
            "failed",
            "template: action_url: The host 'intranet.shop.example' resolves to an internal address (10.20.30.40).",
        ),
    }
    # Where the user looks: the inbox API lists the delivered message and nothing for the refused ones.
    for name in ("script", "data", "loopback", "metadata", "inside", "malformed", "port"):
        listed = teammate.api.get(f"/api/v1/inbox/?contact={name}")
        assert listed.status_code == 200
        assert listed.data["results"] == []
    [good] = teammate.api.get("/api/v1/inbox/?contact=good").data["results"]
    assert good["title"] == "Hi good"
    assert InboxMessage.objects.count() == 3
    # Two messages to shop.example, one lookup.
    assert resolver["shop.example"] == 1
    reset_backends()
