"""The email channel against real SMTP servers that misbehave (aiosmtpd in this process, or a socket that never
answers): the raw SMTP path, dropped connections, a server that goes silent, and how refusals are classified and
suppressed. Everything is observed where the user would see it: what the server received, the message rows, the
suppression list and the audit log."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from django.core import mail
from django.db import connection
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Variant
from compliance.models import AuditLogEntry, RunExclusion, Suppression
from delivery import runs, sending
from delivery.backends import reset_backends
from delivery.models import Message, Run
from tests.factories import CampaignFactory
from tests.smtp_pipelining_server import AdvertisesPipelining

pytestmark = pytest.mark.django_db

CONTENT = {"email": {"subject": "Hello {{ contact.first_name }}", "html": "<p>Hi {{ contact.first_name }}</p>"}}
MESSAGE_ID = re.compile(rb"^X-Campaign-Message-Id: (\d+)\r$", re.MULTILINE)


@pytest.fixture(autouse=True)
def _email_over_smtp(settings) -> Iterator[None]:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.EmailBackend"}
    reset_backends()
    yield
    reset_backends()


# Every test here runs against a server that offers PIPELINING (the channel then sends MAIL, RCPT and DATA in one
# write) and one that does not (smtplib step by step): each expectation holds for both.
_SERVER_OFFERS_PIPELINING = False


@pytest.fixture(autouse=True, params=[False, True], ids=["step-by-step", "pipelining"])
def _server_pipelining(request) -> Iterator[None]:
    global _SERVER_OFFERS_PIPELINING
    _SERVER_OFFERS_PIPELINING = request.param
    yield
    _SERVER_OFFERS_PIPELINING = False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def _serving(handler: object, settings, **server_options: object) -> Iterator[None]:
    """An aiosmtpd server with `handler`'s hooks, Django's EMAIL_HOST/PORT pointed at it."""
    port = _free_port()
    if _SERVER_OFFERS_PIPELINING:
        handler = AdvertisesPipelining(handler)
    controller = Controller(handler, hostname="127.0.0.1", port=port, **server_options)
    controller.start()
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    try:
        yield
    finally:
        controller.stop()


def _message_id(content: bytes) -> int:
    match = MESSAGE_ID.search(content)
    assert match, content[:400]
    return int(match.group(1))


def _campaign(organisation, count: int, *, name: str = "News"):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": f"k{i}", "email": f"k{i}@example.com", "first_name": f"N{i}"} for i in range(count)],
    )
    campaign = CampaignFactory(organisation=organisation, name=name, channels=["email"], variants=False)
    Variant.objects.create(campaign=campaign, name="A", allocation_percent=100, content=CONTENT)
    return campaign


def _prepared_run(persona, campaign, django_capture_on_commit_callbacks) -> Run:
    """The run of a send-now, fanned out; its messages due one after the other in contact order (k0 first), so a
    batch hands them to the server in that order."""
    with django_capture_on_commit_callbacks(execute=False):
        response = persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        assert response.status_code == 200, response.data
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE delivery_message m SET due_at = %s + substring(c.external_id from 2)::int * interval '1 ms'"
            " FROM audiences_contact c WHERE c.id = m.contact_id AND m.run_id = %s",
            [timezone.now() - timedelta(hours=1), str(run.pk)],
        )
    return run


def _send_until_settled(run: Run, django_capture_on_commit_callbacks, *, rounds: int = 10) -> int:
    """Send the run; whatever comes back for a retry is made due at once and sent again, until nothing is queued.
    Returns how many rounds it took."""
    for number in range(1, rounds + 1):
        with django_capture_on_commit_callbacks(execute=False):
            sending.run_send_for(run.pk, seconds=300)
        queued = Message.objects.filter(run=run, status="queued")
        if not queued.exists():
            with django_capture_on_commit_callbacks(execute=False):
                runs.run_finish_if_done(run.pk)
            return number
        queued.update(due_at=timezone.now() - timedelta(seconds=1))
    return rounds + 1


def _by_contact(run: Run) -> dict[str, Message]:
    return {m.contact.external_id: m for m in Message.objects.filter(run=run).select_related("contact")}


class CountingServer:
    """Accepts everything; counts connections (EHLO) and keeps what each DATA carried."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 OK"


# --- the raw path ------------------------------------------------------------------------------------------------


def test_it_sends_each_message_raw_over_one_connection_per_batch(
    settings, teammate, django_capture_on_commit_callbacks
):
    organisation = teammate.organisation
    organisation.sender_email, organisation.sender_name = "news@acme.example", "Acme"
    organisation.save()
    server = CountingServer()
    with _serving(server, settings):
        run = _prepared_run(teammate, _campaign(organisation, 5), django_capture_on_commit_callbacks)
        assert _send_until_settled(run, django_capture_on_commit_callbacks) == 1
    messages = _by_contact(run)
    assert server.connections == 1
    assert [(sender, rcpts) for sender, rcpts, _raw in server.received] == [
        ("news@acme.example", [f"k{i}@example.com"]) for i in range(5)
    ]
    assert [_message_id(raw) for _s, _r, raw in server.received] == [messages[f"k{i}"].pk for i in range(5)]
    assert {m.status for m in messages.values()} == {"sent"}
    run.refresh_from_db()
    assert run.status == "completed" and run.sent_count == 5


class LoginServer(CountingServer):
    """Wants AUTH (PLAIN or LOGIN) as mailer / s3cret before any mail; keeps who sent each message."""

    def __init__(self) -> None:
        super().__init__()
        self.senders: list[str] = []

    @staticmethod
    def authenticate(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=(auth_data.login, auth_data.password) == (b"mailer", b"s3cret"), auth_data=auth_data)

    async def handle_DATA(self, server, session, envelope):
        self.senders.append(session.auth_data.login.decode())
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback, a test's own server
def test_it_logs_in_with_the_email_host_user_and_password(settings, teammate, django_capture_on_commit_callbacks):
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "mailer", "s3cret"
    server = LoginServer()
    with _serving(server, settings, authenticator=server.authenticate, auth_required=True, auth_require_tls=False):
        run = _prepared_run(teammate, _campaign(teammate.organisation, 3), django_capture_on_commit_callbacks)
        assert _send_until_settled(run, django_capture_on_commit_callbacks) == 1
    assert server.senders == ["mailer"] * 3 and server.connections == 1
    assert {m.status for m in _by_contact(run).values()} == {"sent"}


def test_it_sends_django_email_messages_through_any_other_mail_backend(
    settings, teammate, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    run = _prepared_run(teammate, _campaign(teammate.organisation, 3), django_capture_on_commit_callbacks)
    assert _send_until_settled(run, django_capture_on_commit_callbacks) == 1
    assert sorted(message.to[0] for message in mail.outbox) == [f"k{i}@example.com" for i in range(3)]
    assert {alternative.mimetype for message in mail.outbox for alternative in message.alternatives} == {"text/html"}
    assert {m.status for m in _by_contact(run).values()} == {"sent"}


# --- dropped connections -----------------------------------------------------------------------------------------


class DroppingServer(CountingServer):
    """Hangs up three ways: right after accepting the first message (its 250 sent), in the middle of k1's RCPT
    (the first time), and after k3's data without answering (the first time)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped_rcpt: set[str] = set()
        self.dropped_data: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == "k1@example.com" and address not in self.dropped_rcpt:
            self.dropped_rcpt.add(address)
            server.transport.abort()
            return "451 never sent"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        address = envelope.rcpt_tos[0]
        if address == "k3@example.com" and address not in self.dropped_data:
            self.dropped_data.add(address)
            server.transport.abort()
            return "451 never sent"
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if len(self.received) == 1:
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the 250 below has gone out
        return "250 2.0.0 OK"


def test_it_reconnects_after_a_drop_and_retries_only_the_message_whose_data_was_in_flight(
    settings, teammate, django_capture_on_commit_callbacks
):
    server = DroppingServer()
    with _serving(server, settings):
        run = _prepared_run(teammate, _campaign(teammate.organisation, 6), django_capture_on_commit_callbacks)
        with django_capture_on_commit_callbacks(execute=False):
            result = sending.run_send_batch(run.pk)
    assert result.claimed == 6
    messages = _by_contact(run)
    # k0 accepted, then hung up: k1 goes on a new connection, where its RCPT is cut off, so on a third; k3's data
    # went out unanswered: it waits for its retry, and k4, k5 go on a fourth connection. Pipelined, k1's MAIL,
    # RCPT and DATA went out in one write with k0's data, so the server reads k1's RCPT (and hangs up at it) before
    # its own close after k0's 250 comes round: one connection fewer, the same outcome for every message.
    assert server.connections == (3 if _SERVER_OFFERS_PIPELINING else 4)
    assert [rcpts[0] for _s, rcpts, _raw in server.received] == [f"k{i}@example.com" for i in (0, 1, 2, 4, 5)]
    assert {key: (m.status, m.attempts) for key, m in messages.items()} == {
        "k0": ("sent", 1),
        "k1": ("sent", 1),
        "k2": ("sent", 1),
        "k3": ("queued", 1),
        "k4": ("sent", 1),
        "k5": ("sent", 1),
    }
    assert messages["k3"].error.startswith("SMTP connection lost at DATA: ")


class AlwaysDroppingServer(CountingServer):
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        server.transport.abort()
        return "451 never sent"


def test_a_server_that_keeps_dropping_costs_three_connections_then_the_batch_waits(
    settings, teammate, django_capture_on_commit_callbacks
):
    server = AlwaysDroppingServer()
    with _serving(server, settings):
        run = _prepared_run(teammate, _campaign(teammate.organisation, 6), django_capture_on_commit_callbacks)
        with django_capture_on_commit_callbacks(execute=False):
            sending.run_send_batch(run.pk)
    assert server.connections == 3 and server.received == []
    assert {(m.status, m.attempts, m.error) for m in _by_contact(run).values()} == {
        ("queued", 0, "not tried: the mail server dropped the connection 3 times in a row")
    }


def _draw(*parts: object) -> float:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _unknown_address(address: str) -> bool:
    return _draw("unknown", address) < 0.02


class FlakyServer:
    """The issue's misbehaving server, decided per message and attempt (hashes, so the run is exact): 2 % of the
    addresses unknown (550 5.1.1 at RCPT); of each delivery, 0.5 % cut off after the data without an answer and
    20 % deferred (451); and every 200th MAIL FROM cut off (right after the previous message's 250)."""

    DROP, DEFER = 0.005, 0.205

    def __init__(self) -> None:
        self.mails = 0
        self.connections = 0
        self.deliveries: Counter[str] = Counter()  # DATA received, by recipient
        self.accepted: Counter[int] = Counter()  # 250 answered, by X-Campaign-Message-Id

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mails += 1
        if self.mails % 200 == 0:
            server.transport.abort()
            return "451 never sent"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if _unknown_address(address):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        address = envelope.rcpt_tos[0]
        self.deliveries[address] += 1
        draw = _draw("delivery", address, self.deliveries[address])
        if draw < self.DROP:
            server.transport.abort()
            return "451 never sent"
        if draw < self.DEFER:
            return "451 4.3.0 Temporary failure, try again later"
        self.accepted[_message_id(envelope.content)] += 1
        return "250 2.0.0 OK"


def _expected(address: str, max_attempts: int) -> tuple[str, int]:
    """What becomes of a message to `address` under FlakyServer: its status and the attempts it takes."""
    if _unknown_address(address):
        return "bounced", 1
    for attempt in range(1, max_attempts + 1):
        if _draw("delivery", address, attempt) >= FlakyServer.DEFER:
            return "sent", attempt
    return "failed", max_attempts


def test_ten_thousand_emails_through_a_flaky_server_lose_nothing_and_record_what_it_accepted(
    settings, teammate, django_capture_on_commit_callbacks
):
    """10,000 emails, ~12,300 deliveries and ~150 connections, the server in this process: 43 s here on a quieter
    machine, 104 s at a load average of 6 on 2 cores. The issue's 10,000 against a server that pipelines, as real
    ones do; 2,000 step by step (the same code past the exchange, a fifth of the suite's time)."""
    settings.DELIVERY_AUTO_PAUSE_RATE = 0.5  # the 2 % bounces and 451s are the server's, not a broken list
    count = 10_000 if _SERVER_OFFERS_PIPELINING else 2_000
    server = FlakyServer()
    with _serving(server, settings):
        run = _prepared_run(teammate, _campaign(teammate.organisation, count), django_capture_on_commit_callbacks)
        rounds = _send_until_settled(run, django_capture_on_commit_callbacks)
    messages = list(Message.objects.filter(run=run).select_related("contact"))
    assert len(messages) == count and rounds <= settings.DELIVERY_MAX_ATTEMPTS
    statuses = Counter(m.status for m in messages)
    # Nothing lost: every message ended sent, bounced or failed for good — and exactly as the server decided.
    assert {m.pk: (m.status, m.attempts) for m in messages} == {
        m.pk: _expected(m.contact.email, settings.DELIVERY_MAX_ATTEMPTS) for m in messages
    }
    assert statuses["failed"] < count * 0.001
    assert statuses["bounced"] == sum(_unknown_address(f"k{i}@example.com") for i in range(count))
    # What the server accepted is what is recorded sent, each once.
    assert set(server.accepted) == {m.pk for m in messages if m.status == "sent"}
    assert set(server.accepted.values()) == {1}
    # The drops happened (dozens of reconnects) and the unknown addresses were suppressed on the way.
    assert server.connections > server.mails // 200 >= count // 200  # a new connection after every forced drop
    assert (
        Suppression.objects.filter(organisation=teammate.organisation, reason="hard_bounce").count()
        == (statuses["bounced"])
    )
    run.refresh_from_db()
    assert run.status == "completed"
    assert (run.sent_count, run.bounced_count, run.failed_count) == (
        statuses["sent"] + statuses["bounced"],
        statuses["bounced"],
        statuses["failed"],
    )


# --- a server that stops answering -------------------------------------------------------------------------------


class SilentAfterData(CountingServer):
    """Takes the data, then never answers."""

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        await asyncio.sleep(60)
        return "250 too late"


def test_a_server_silent_after_data_costs_one_timeout_and_the_batch_waits_for_its_retry(
    settings, teammate, django_capture_on_commit_callbacks
):
    settings.EMAIL_TIMEOUT = 1
    server = SilentAfterData()
    with _serving(server, settings):
        run = _prepared_run(teammate, _campaign(teammate.organisation, 5), django_capture_on_commit_callbacks)
        began = time.monotonic()
        with django_capture_on_commit_callbacks(execute=False):
            sending.run_send_batch(run.pk)
        took = time.monotonic() - began
    assert took < 4  # one EMAIL_TIMEOUT, not five
    assert len(server.received) == 1
    messages = _by_contact(run)
    assert {key: (m.status, m.attempts, m.error) for key, m in messages.items()} == {
        "k0": ("queued", 1, "SMTP: no answer at DATA within EMAIL_TIMEOUT (1 s)"),
        # Never tried: no attempt used up (a long outage delays them, it does not fail them).
        **{f"k{i}": ("queued", 0, "not tried: the mail server stopped answering") for i in range(1, 5)},
    }


def test_a_server_that_never_greets_costs_one_timeout(settings, teammate, django_capture_on_commit_callbacks):
    settings.EMAIL_TIMEOUT = 1
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        settings.EMAIL_HOST, settings.EMAIL_PORT = listener.getsockname()
        run = _prepared_run(teammate, _campaign(teammate.organisation, 3), django_capture_on_commit_callbacks)
        began = time.monotonic()
        with django_capture_on_commit_callbacks(execute=False):
            sending.run_send_batch(run.pk)
        took = time.monotonic() - began
    assert took < 4
    assert {(m.status, m.attempts, m.error) for m in _by_contact(run).values()} == {
        ("queued", 0, "mail server unreachable: no answer within EMAIL_TIMEOUT (1 s)")
    }


# --- refusals: bounce, fail, retry -------------------------------------------------------------------------------


class RefusingServer(CountingServer):
    """Answers each address as the table says, at RCPT or after the data."""

    AT_RCPT = {
        "k1@example.com": "550 5.1.1 <k1@example.com>: Recipient address rejected: User unknown",
        "k2@example.com": "550 5.7.1 Rejected by local policy",
        "k3@example.com": "550 Requested action not taken: mailbox unavailable",
        "k4@example.com": "552 5.2.2 Mailbox full",
        "k5@example.com": "451 4.3.0 Try again later",
        "k6@example.com": "553 5.1.3 Bad destination mailbox address syntax",
        "k9@example.com": "550 5.1.8 Bad sender's system address",
    }
    AT_DATA = {
        "k7@example.com": "554 5.7.1 Message content rejected",
        "k8@example.com": "550 5.1.1 Mailbox does not exist",
    }

    def __init__(self) -> None:
        super().__init__()
        self.rcpts: list[str] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpts.append(address)
        if address in self.AT_RCPT:
            return self.AT_RCPT[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        answer = self.AT_DATA.get(envelope.rcpt_tos[0])
        if answer:
            return answer
        return await super().handle_DATA(server, session, envelope)


def test_refusals_are_classified_by_their_codes_and_hard_bounces_suppress_the_address(
    settings, teammate, django_capture_on_commit_callbacks
):
    organisation = teammate.organisation
    server = RefusingServer()
    with _serving(server, settings):
        run = _prepared_run(teammate, _campaign(organisation, 11), django_capture_on_commit_callbacks)
        with django_capture_on_commit_callbacks(execute=False):
            sending.run_send_batch(run.pk)
    assert {key: m.status for key, m in _by_contact(run).items()} == {
        "k0": "sent",
        "k1": "bounced",  # 5.1.1 mailbox unknown
        "k2": "failed",  # policy: the address may be fine
        "k3": "bounced",  # a plain 550
        "k4": "failed",  # mailbox full is not a bad address
        "k5": "queued",  # 4xx: later
        "k6": "bounced",  # 5.1.3 bad address
        "k7": "failed",  # content
        "k8": "bounced",  # 5.1.1 after the data
        "k9": "failed",  # 5.1.8 is about the sender
        "k10": "sent",
    }
    assert _by_contact(run)["k1"].error == (
        "SMTP 550 5.1.1 <k1@example.com>: Recipient address rejected: User unknown (at RCPT)"
    )
    suppressed = Suppression.objects.filter(organisation=organisation)
    assert sorted((s.address, s.reason) for s in suppressed) == [
        (f"k{i}@example.com", "hard_bounce") for i in (1, 3, 6, 8)
    ]
    assert sorted(
        AuditLogEntry.objects.filter(organisation=organisation, action="suppression.auto").values_list(
            "target_repr", "actor_label"
        )
    ) == [(f"k{i}@example.com (hard_bounce)", "mail server refusal") for i in (1, 3, 6, 8)]


def test_a_hard_bounced_address_is_not_mailed_by_the_next_campaign(
    settings, teammate, django_capture_on_commit_callbacks
):
    organisation = teammate.organisation
    server = RefusingServer()
    server.AT_RCPT = {"k1@example.com": "550 5.1.1 <k1@example.com>: Recipient address rejected: User unknown"}
    with _serving(server, settings):
        first = _prepared_run(teammate, _campaign(organisation, 3), django_capture_on_commit_callbacks)
        _send_until_settled(first, django_capture_on_commit_callbacks)
        [suppression] = Suppression.objects.filter(organisation=organisation)
        assert (suppression.address, suppression.reason) == ("k1@example.com", "hard_bounce")
        assert suppression.note == "SMTP 550 5.1.1 <k1@example.com>: Recipient address rejected: User unknown (at RCPT)"
        assert AuditLogEntry.objects.filter(
            organisation=organisation, action="suppression.auto", target_id=str(suppression.pk)
        ).exists()
        second_campaign = CampaignFactory(organisation=organisation, name="Again", channels=["email"], variants=False)
        Variant.objects.create(campaign=second_campaign, name="A", allocation_percent=100, content=CONTENT)
        second = _prepared_run(teammate, second_campaign, django_capture_on_commit_callbacks)
        _send_until_settled(second, django_capture_on_commit_callbacks)
    # The server heard of k1 once, from the first campaign; the second left it out at fan-out, as any suppression.
    assert server.rcpts.count("k1@example.com") == 1
    assert sorted(rcpts[0] for _s, rcpts, _raw in server.received) == [
        "k0@example.com",
        "k0@example.com",
        "k2@example.com",
        "k2@example.com",
    ]
    assert sorted(_by_contact(second)) == ["k0", "k2"]
    assert list(RunExclusion.objects.filter(run_id=second.pk).values_list("contact_id", "channel", "reason")) == [
        (_by_contact(first)["k1"].contact_id, "email", "suppressed")
    ]


def test_a_mail_server_down_for_longer_than_every_retry_fails_nothing_and_sends_all_when_it_is_back(
    settings, teammate, django_capture_on_commit_callbacks
):
    """Nothing listens on the port for more batches than a message has attempts: messages that were never tried do
    not use up their attempts, so when the server is back every one of them is sent (faults delay, never lose)."""
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", _free_port()  # refused: nothing listens there
    run = _prepared_run(teammate, _campaign(teammate.organisation, 5), django_capture_on_commit_callbacks)
    for _ in range(settings.DELIVERY_MAX_ATTEMPTS + 2):
        with django_capture_on_commit_callbacks(execute=False):
            sending.run_send_batch(run.pk)
        Message.objects.filter(run=run, status="queued").update(due_at=timezone.now() - timedelta(seconds=1))
    assert (
        sorted((m.status, m.attempts, m.error.split(":")[0]) for m in _by_contact(run).values())
        == [("queued", 0, "mail server unreachable")] * 5
    )

    server = CountingServer()
    with _serving(server, settings):
        _send_until_settled(run, django_capture_on_commit_callbacks)
    assert sorted((m.status, m.attempts) for m in _by_contact(run).values()) == [("sent", 1)] * 5
    assert sorted(rcpt for _from, (rcpt,), _data in server.received) == [f"k{i}@example.com" for i in range(5)]
