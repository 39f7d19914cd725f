"""user_360 enriches a contact, never replaces it: against a local fake (tests/fake_isa.py) in every failure mode,
through the adapter, a real send (in this process, the real sending code) and the preview."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from django.utils import timezone

from audiences.adapters import AdapterError, HttpUserProfiles, enriched_profile
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.models import Campaign
from delivery import runs, seeds, sending
from delivery.backends import Outcome, reset_backends
from delivery.models import Message, Run, SeedSend
from tests.fake_isa import FakeService, default_profile

pytestmark = pytest.mark.django_db

TEMPLATE = "{{ contact.first_name }} {{ contact.loyalty.tier }} {{ contact.attributes.plan }} {{ contact.email }}"


class RecordingProvider:
    """A channel provider that takes everything and remembers what it was asked to send, and where."""

    sent: ClassVar[list[tuple[str, str, dict[str, Any]]]] = []

    def send_batch(self, messages, *, profile):
        RecordingProvider.sent.extend((m.channel, m.address, m.payload) for m in messages)
        return [Outcome(m.message_id, "sent", f"p-{m.message_id}") for m in messages]


@pytest.fixture
def user_360(settings) -> Iterator[FakeService]:
    with FakeService("user_360") as fake:
        settings.USER_360_URL = fake.url
        settings.EXTERNAL_HTTP_TIMEOUT = 0.3
        yield fake


@pytest.fixture
def provider(settings) -> Iterator[type[RecordingProvider]]:
    RecordingProvider.sent = []
    settings.DELIVERY_BACKENDS = {"default": "tests.test_adapter_user_360.RecordingProvider"}
    settings.DELIVERY_AUTO_PAUSE_MIN = 10**6
    reset_backends()
    yield RecordingProvider
    reset_backends()


def _contacts(organisation) -> None:
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "ann", "email": "ann@example.com", "phone": "+447700900201", "first_name": "Ann"},
            {"external_id": "bob", "email": "bob@example.com", "phone": "+447700900202", "first_name": "Bob"},
            {"external_id": "cy", "email": "cy@example.com", "phone": "+447700900203", "attributes": {"plan": "pro"}},
        ],
    )


def _send(teammate, django_capture_on_commit_callbacks) -> Run:
    body = {
        "name": "Enriched",
        "channels": ["email", "sms"],
        "audience": {"rules": {"field": "email", "op": "exists"}},
        "variants": [
            {
                "name": "A",
                "allocation_percent": 100,
                "content": {"email": {"subject": TEMPLATE, "html": f"<p>{TEMPLATE}</p>"}, "sms": {"body": TEMPLATE}},
            }
        ],
    }
    created = teammate.api.post("/api/v1/campaigns/", body, format="json")
    assert created.status_code == 201, created.data
    with django_capture_on_commit_callbacks(execute=False):
        assert teammate.api.post(f"/api/v1/campaigns/{created.data['id']}/send-now/").status_code == 200
    run = Run.objects.get(campaign_id=created.data["id"])
    with django_capture_on_commit_callbacks(execute=False):
        runs.run_prepare(run.pk)
    return run


# --- the adapter in each mode -----------------------------------------------------------------------------------


def test_ok_is_one_request_for_a_batch_and_unknown_users_are_left_out(user_360, organisation):
    user_360.profiles = {"u/1": {"external_id": "u/1", "loyalty": {"tier": "gold"}}}
    client = HttpUserProfiles(user_360.url, timeout=0.3)
    assert client.profiles(organisation, ["u/1", "nobody", "u/1"]) == {
        "u/1": {"external_id": "u/1", "loyalty": {"tier": "gold"}}
    }
    assert user_360.requests == [("POST", "/organisations/acme/users/batch", {"external_ids": ["u/1", "nobody"]})]


@pytest.mark.parametrize(
    ("mode", "message", "transient"),
    [
        ("503", 'user_360 answered 503: {"detail": "user_360 is down for maintenance"}', True),
        ("hang", "user_360 timed out: timed out", True),
        ("malformed", 'user_360 answered something other than a {"users": [...]} document', False),
    ],
)
def test_failures_are_adapter_errors_saying_what_happened(user_360, organisation, mode, message, transient):
    user_360.mode = mode
    with pytest.raises(AdapterError) as failure:
        HttpUserProfiles(user_360.url, timeout=0.3).profiles(organisation, ["ann"])
    assert (str(failure.value), failure.value.transient) == (message, transient)


def test_refused_is_a_transient_adapter_error(user_360, organisation):
    user_360.stop()
    with pytest.raises(AdapterError) as failure:
        HttpUserProfiles(user_360.url, timeout=0.3).profiles(organisation, ["ann"])
    assert str(failure.value).startswith("user_360 unreachable: ") and failure.value.transient


def test_the_merge_keeps_our_identity_and_addresses():
    ours = {"external_id": "a", "email": "a@x.example", "phone": "+1", "first_name": "", "attributes": {"k": 1, "j": 2}}
    theirs = {"external_id": "b", "email": "b@y.example", "first_name": "A", "vip": True, "attributes": {"k": 9}}
    assert enriched_profile(ours, theirs) == {
        "external_id": "a",
        "email": "a@x.example",
        "phone": "+1",
        "first_name": "A",
        "vip": True,
        "attributes": {"k": 9, "j": 2},
    }
    assert enriched_profile(ours, None) == ours


# --- a real send --------------------------------------------------------------------------------------------------


def test_a_send_renders_the_profile_and_goes_to_our_checked_addresses(
    user_360, provider, teammate, organisation, django_capture_on_commit_callbacks
):
    _contacts(organisation)
    # bob's address is suppressed; user_360 gives everyone another address and no phone, and does not know cy.
    assert teammate.api.post("/api/v1/suppressions/", {"address": "bob@example.com"}).status_code == 201
    # user_360's address for ann is suppressed, ours is not: ann is mailed, at ours.
    assert teammate.api.post("/api/v1/suppressions/", {"address": "elsewhere-ann@user360.example"}).status_code == 201
    user_360.profiles = {key: default_profile(key) for key in ("ann", "bob")}
    run = _send(teammate, django_capture_on_commit_callbacks)
    sending.run_send_for(run.pk, seconds=30)
    sent = {(channel, address): payload for channel, address, payload in provider.sent}
    assert sorted(sent) == [("email", "ann@example.com"), ("sms", "+447700900201"), ("sms", "+447700900202")]
    assert sent["email", "ann@example.com"]["subject"] == "Profiled gold from user_360 ann@example.com"
    assert sent["sms", "+447700900202"]["body"] == "Profiled gold from user_360 bob@example.com"
    # user_360 does not know cy: our contact as it is, which has no `loyalty` for this template to print.
    cy = Message.objects.filter(run=run, contact__external_id="cy")
    assert list(cy.values_list("status", "error").distinct()) == [
        ("failed", "template: The template failed to render: 'dict object' has no attribute 'loyalty'")
    ]
    # Suppressed, bob's address was left out at fan-out; user_360's address for him was never a candidate.
    assert not Message.objects.filter(run=run, channel="email", contact__external_id="bob").exists()
    # One request for the batch (both channels claimed together), never one per message.
    assert len(user_360.requests) == 1


@pytest.mark.parametrize("mode", ["503", "hang", "refused", "malformed"])
def test_a_failing_user_360_delays_each_message_with_its_reason_then_they_go(
    user_360, provider, teammate, organisation, django_capture_on_commit_callbacks, mode
):
    _contacts(organisation)
    if mode == "refused":
        user_360.stop()
    else:
        user_360.mode = mode
    run = _send(teammate, django_capture_on_commit_callbacks)
    sending.run_send_for(run.pk, seconds=30)
    messages = list(Message.objects.filter(run=run))
    assert provider.sent == []
    assert {m.status for m in messages} == {"queued"}
    expected = {
        "503": "user_360 answered 503",
        "hang": "user_360 timed out",
        "refused": "user_360 unreachable",
        "malformed": "user_360 answered something other than",
    }[mode]
    assert all(m.error.startswith(expected) for m in messages), [m.error for m in messages]
    # A transient failure costs no attempt; an answer we cannot use does (so it fails for good eventually).
    assert {m.attempts for m in messages} == {1 if mode == "malformed" else 0}
    # The service is back: the retries go out, enriched.
    if mode == "refused":
        user_360.start()
    user_360.mode = "ok"
    Message.objects.filter(run=run).update(due_at=timezone.now())
    sending.run_send_for(run.pk, seconds=30)
    assert sorted(Message.objects.filter(run=run).values_list("status", flat=True)) == ["sent"] * 6
    assert {payload["body"] for channel, _, payload in provider.sent if channel == "sms"} == {
        "Profiled gold from user_360 ann@example.com",
        "Profiled gold from user_360 bob@example.com",
        "Profiled gold from user_360 cy@example.com",
    }


def test_the_preview_calls_user_360_like_a_send(user_360, teammate, organisation):
    _contacts(organisation)
    created = teammate.api.post(
        "/api/v1/campaigns/",
        {
            "name": "Preview",
            "channels": ["sms"],
            "audience": {"rules": {"field": "email", "op": "exists"}},
            "variants": [{"name": "A", "allocation_percent": 100, "content": {"sms": {"body": TEMPLATE}}}],
        },
        format="json",
    )
    assert created.status_code == 201, created.data
    ann = Contact.objects.get(organisation=organisation, external_id="ann").pk
    url = f"/api/v1/campaigns/{created.data['id']}/preview/"
    preview = teammate.api.post(url, {"channel": "sms", "contact_id": ann}, format="json")
    assert preview.status_code == 200, preview.data
    assert preview.data["rendered"]["body"] == "Profiled gold from user_360 ann@example.com"
    assert user_360.requests == [("POST", "/organisations/acme/users/batch", {"external_ids": ["ann"]})]
    user_360.mode = "503"
    failed = teammate.api.post(url, {"channel": "sms", "contact_id": ann}, format="json")
    assert failed.status_code == 400
    assert failed.data["contact"] == [
        "The contact's user_360 profile could not be read: user_360 answered 503: "
        '{"detail": "user_360 is down for maintenance"}'
    ]


def test_seed_copies_wait_for_user_360_with_the_reason(
    user_360, provider, teammate, organisation, django_capture_on_commit_callbacks
):
    _contacts(organisation)
    run = _send(teammate, django_capture_on_commit_callbacks)
    Campaign.objects.filter(pk=run.campaign_id).update(seed_emails=["seed@acme.example"], seed_copy_every_send=True)
    run.refresh_from_db()
    assert seeds.run_seed_copies_plan(run) == 1
    user_360.mode = "503"
    assert seeds.run_seed_copies_send(run.pk) == 0
    (copy,) = SeedSend.objects.filter(run=run, kind="copy")
    assert (copy.status, copy.attempts) == ("queued", 1)
    assert copy.error == 'user_360 answered 503: {"detail": "user_360 is down for maintenance"}'
    user_360.mode = "ok"
    SeedSend.objects.filter(pk=copy.pk).update(next_attempt_at=timezone.now())
    assert seeds.run_seed_copies_send(run.pk) == 1
    assert [(c, a) for c, a, _ in provider.sent if a == "seed@acme.example"] == [("email", "seed@acme.example")]
