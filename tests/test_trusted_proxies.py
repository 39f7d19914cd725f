"""The client address behind a trusted proxy (config.client_ip), and the public unsubscribe page's limits per real
client through such a proxy: one client's bad tokens lock out that client only, and a valid RFC 8058 one-click
POST goes through even from a client over its bad-token limit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client, RequestFactory
from django.utils import timezone

from analytics.models import EngagementEvent
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.content import links
from campaigns.models import Variant
from compliance.models import AuditLogEntry, ContactPreference, Unsubscribe
from config.client_ip import client_ip, client_network
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory

PROXY = "10.0.0.2"
ALICE = "198.51.100.7"  # behind the proxy, trying bad tokens
BOB = "203.0.113.9"  # behind the same proxy, a recipient with a good link
ONE_CLICK = "List-Unsubscribe=One-Click"


@pytest.fixture
def proxied(settings) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/24", "fd00::/8"]


def _ip(remote_addr: str, forwarded_for: str | None = None) -> str:
    meta = {"REMOTE_ADDR": remote_addr}
    if forwarded_for is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return client_ip(RequestFactory().get("/", **meta))


@pytest.mark.parametrize(
    ("remote_addr", "forwarded_for", "expected"),
    [
        # Not from a trusted proxy: the header is the client's own word, ignored.
        ("192.0.2.50", "198.51.100.7", "192.0.2.50"),
        # From the proxy: the address it appended.
        (PROXY, ALICE, ALICE),
        # A client that sends its own X-Forwarded-For cannot choose its address: the proxy's entry is the last.
        (PROXY, f"1.2.3.4, {ALICE}", ALICE),
        # Two trusted hops (a load balancer in front of an nginx): both skipped.
        (PROXY, f"6.6.6.6, {ALICE}, 10.0.0.9", ALICE),
        # Ports and IPv6 as proxies write them; an IPv4 peer seen by a dual-stack listener.
        (PROXY, "198.51.100.7:51234", ALICE),
        ("fd00::1", "[2001:db8::5]:443", "2001:db8::5"),
        ("::ffff:10.0.0.2", ALICE, ALICE),
        # Garbage left of the trusted chain: the hop after it is the client.
        (PROXY, f"not-an-ip, {ALICE}", ALICE),
        (PROXY, "not-an-ip", PROXY),
        # From the proxy without the header (its own health check): the proxy.
        (PROXY, None, PROXY),
        ("", ALICE, "unknown"),
    ],
)
def test_client_ip(proxied, remote_addr, forwarded_for, expected):
    assert _ip(remote_addr, forwarded_for) == expected


def test_limits_count_an_ipv6_client_by_its_slash_64(proxied):
    def network(forwarded_for: str) -> str:
        return client_network(RequestFactory().get("/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=forwarded_for))

    assert network("2001:db8:1:2::5") == network("2001:db8:1:2:ffff::9") == "2001:db8:1:2::"
    assert network("2001:db8:1:3::5") == "2001:db8:1:3::"
    assert network(ALICE) == ALICE


@pytest.mark.django_db
def test_rotating_ipv6_addresses_within_a_slash_64_does_not_reset_the_bad_token_count(proxied, settings, contacts):
    settings.RECIPIENT_LINK_FAILURE_LIMIT = "3/600"
    for i in range(3):
        assert _via_proxy(f"2001:db8:1:2::{i + 1}").get(f"/u/bad-token-{i}").status_code == 200
    assert _via_proxy("2001:db8:1:2::99").get(f"/u/{_token(contacts['p0'])}").status_code == 429
    assert _via_proxy("2001:db8:1:3::1").get(f"/u/{_token(contacts['p0'])}").status_code == 200


def test_without_trusted_proxies_the_header_is_never_believed(settings):
    settings.TRUSTED_PROXIES = []
    assert _ip(PROXY, ALICE) == PROXY


@pytest.fixture
def contacts(organisation) -> dict[str, Contact]:
    rows = [{"external_id": f"p{i}", "email": f"p{i}@example.com"} for i in range(3)]
    contacts_upsert_rows(organisation=organisation, rows=rows)
    return {c.external_id: c for c in Contact.objects.filter(organisation=organisation)}


def _via_proxy(client_address: str) -> Client:
    """A browser (or mail provider) whose requests reach us through the trusted proxy."""
    return Client(enforce_csrf_checks=True, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=client_address)


def _token(contact: Contact) -> str:
    return links.unsubscribe_token(str(contact.organisation_id), str(contact.pk), "")


def _one_click(client: Client, token: str):
    return client.post(f"/u/{token}", data=ONE_CLICK, content_type="application/x-www-form-urlencoded")


@pytest.mark.django_db
def test_bad_tokens_through_the_proxy_lock_out_only_their_client(proxied, settings, contacts):
    settings.RECIPIENT_LINK_FAILURE_LIMIT = "3/600"
    alice, bob = _via_proxy(ALICE), _via_proxy(BOB)
    assert [alice.get(f"/u/bad-token-{i}").status_code for i in range(3)] == [200, 200, 200]
    refused = alice.get(f"/u/{_token(contacts['p0'])}")
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    # Alice's spoofed header does not make her someone else.
    spoofed = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=f"{BOB}, {ALICE}")
    assert spoofed.get(f"/u/{_token(contacts['p0'])}").status_code == 429
    # Bob, behind the same proxy, is not affected: his page shows and his unsubscribe is recorded.
    assert bob.get(f"/u/{_token(contacts['p1'])}").status_code == 200
    assert bob.post(f"/u/{_token(contacts['p1'])}", {"reason": "too_many"}).status_code == 200
    assert ContactPreference.objects.get(contact=contacts["p1"]).unsubscribed_at is not None


@pytest.mark.django_db
def test_a_valid_one_click_post_is_never_refused(proxied, settings, contacts):
    settings.RECIPIENT_LINK_FAILURE_LIMIT = "3/600"
    settings.RECIPIENT_LINK_RATE_LIMIT = "3/60"
    alice = _via_proxy(ALICE)
    assert [_one_click(alice, f"bad-token-{i}").status_code for i in range(3)] == [200, 200, 200]
    # Over both limits now: a bad token and the confirmation page are refused…
    assert _one_click(alice, "bad-token-3").status_code == 429
    assert alice.get(f"/u/{_token(contacts['p0'])}").status_code == 429
    # …a mailbox provider's one-click POST with a valid token is not.
    response = _one_click(alice, _token(contacts["p2"]))
    assert (response.status_code, response.content) == (200, b"Unsubscribed.")
    assert Unsubscribe.objects.get(contact=contacts["p2"]).source == Unsubscribe.Source.ONE_CLICK
    assert ContactPreference.objects.get(contact=contacts["p2"]).unsubscribed_at is not None


@pytest.mark.django_db
def test_without_a_trusted_proxy_every_client_behind_it_is_one_client(settings, contacts):
    settings.TRUSTED_PROXIES = []
    settings.RECIPIENT_LINK_FAILURE_LIMIT = "3/600"
    for i in range(3):
        _via_proxy(ALICE).get(f"/u/bad-token-{i}")
    # The proxy is not trusted, so Bob shares Alice's address: the reason TRUSTED_PROXIES exists.
    assert _via_proxy(BOB).get(f"/u/{_token(contacts['p1'])}").status_code == 429


@pytest.mark.django_db
def test_the_audit_log_records_the_real_client_of_api_and_console_writes(proxied, teammate, owner):
    via_alice = {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": ALICE}
    added = teammate.api.post("/api/v1/suppressions/", {"address": "a@example.com"}, format="json", **via_alice)
    assert added.status_code == 201
    console = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=BOB)
    console.force_login(teammate.membership.user)
    assert console.post("/compliance/suppressions/add/", {"address": "b@example.com"}).status_code == 302
    entries = AuditLogEntry.objects.filter(action="suppression.add").order_by("id")
    assert [e.ip_address for e in entries] == [ALICE, BOB]
    listed = owner.api.get("/api/v1/audit-log/?action=suppression.add").data["results"]
    assert [row["ip_address"] for row in listed] == [BOB, ALICE]


@pytest.mark.django_db
def test_opens_are_classified_by_the_real_client(proxied, teammate, contacts, django_capture_on_commit_callbacks):
    """Apple Mail Privacy Protection prefetches pixels from 17.0.0.0/8: seen through our proxy, that is still an
    Apple prefetch (a machine open), not a person."""
    campaign = CampaignFactory(
        organisation=teammate.organisation,
        channels=["email"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "p"},
        sandbox_profile={"failed": 0, "bounced": 0, "engagement": {"open": 0, "click": 0, "machine_open": 0}},
    )
    content = {"email": {"subject": "s", "html": "<p>x</p>"}}
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=content)
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
    run = Run.objects.get(campaign=campaign)
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    sending.run_send_for(run.pk, seconds=60)
    apple, person = Message.objects.filter(run=run).order_by("pk")[:2]
    Message.objects.filter(run=run).update(sent_at=timezone.now() - timedelta(hours=1))
    chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"
    for message, address in ((apple, "17.58.1.2"), (person, BOB)):
        pixel = links.open_url(str(message.pk)).rsplit("/t/o/", 1)[1]
        assert _via_proxy(address).get(f"/t/o/{pixel}", HTTP_USER_AGENT=chrome).status_code == 200
    opens = EngagementEvent.objects.filter(kind="open").order_by("message_id")
    assert [(e.message_id, e.is_machine) for e in opens] == [(apple.pk, True), (person.pk, False)]
