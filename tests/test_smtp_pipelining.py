"""SMTP PIPELINING (RFC 2920) on the email channel's raw path: with a server that lists PIPELINING in its EHLO
answer, MAIL, RCPT and DATA go in one write, and each reply is matched to its command, so refusals, drops and 421s
mean for the message exactly what they mean step by step (tests/test_smtp_servers.py runs all of its cases against
both kinds of server). Observed at the server: what it read before it answered, what it received, the message rows."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from delivery.backends import Outgoing
from delivery.channels import EmailBackend
from delivery.mime import message_bytes
from tests.smtp_pipelining_server import AdvertisesPipelining
from tests.test_smtp_servers import (
    CountingServer,
    _by_contact,
    _campaign,
    _free_port,
    _prepared_run,
    _send_until_settled,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _email_over_smtp(settings) -> Iterator[None]:
    from delivery.backends import reset_backends

    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.DELIVERY_BACKENDS = {"default": "delivery.channels.EmailBackend"}
    reset_backends()
    yield
    reset_backends()


class RefusingDataCommand(SMTP):
    """aiosmtpd has no hook for the DATA command itself (handle_DATA comes after the content): this server refuses
    the command for the recipients its handler lists in `refuse_data_command`, and hangs up at it for those in
    `drop_at_data_command`."""

    async def smtp_DATA(self, arg: str) -> None:
        recipients = self.envelope.rcpt_tos
        if recipients and recipients[0] in getattr(self.event_handler, "refuse_data_command", ()):
            await self.push("554 5.7.1 Transaction refused at DATA")
            return
        if recipients and recipients[0] in getattr(self.event_handler, "drop_at_data_command", ()):
            self.event_handler.drop_at_data_command.discard(recipients[0])
            self.transport.abort()
            return
        await super().smtp_DATA(arg)


class PipeliningController(Controller):
    def factory(self) -> SMTP:
        return RefusingDataCommand(self.handler, **self.SMTP_kwargs)


@contextmanager
def _serving_pipelining(handler: object, settings) -> Iterator[None]:
    port = _free_port()
    controller = PipeliningController(AdvertisesPipelining(handler), hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    try:
        yield
    finally:
        controller.stop()


def _sent_through(server: object, settings, teammate, capture, count: int):
    with _serving_pipelining(server, settings):
        run = _prepared_run(teammate, _campaign(teammate.organisation, count), capture)
        _send_until_settled(run, capture, rounds=1)
    return _by_contact(run)


# --- one write for the envelope ----------------------------------------------------------------------------------


class _Reads:
    """What a test server reads from its connection, up to and including a marker; what came after it stays."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.connection.recv(65536)
            if not chunk:
                raise ConnectionError("client went away")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker


class ScriptedServer:
    """A plain socket server (not aiosmtpd) that offers PIPELINING and answers nothing of a transaction until it
    has read MAIL, RCPT and DATA: a client that waited for MAIL's reply before RCPT would never get one. It answers
    each group with the next of `script`'s (replies to the group, reply to the data) — by default all accepted —
    and keeps every line it read (`heard`), the data it read after a 354 included, undone of its dot-stuffing."""

    ACCEPTED = (b"250 sender ok\r\n250 recipient ok\r\n354 go ahead\r\n", b"250 2.0.0 queued\r\n")

    def __init__(self, script: list[tuple[bytes, bytes]] | None = None) -> None:
        self.script = list(script or [])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.envelopes: list[bytes] = []  # what the server had read when it first answered, per transaction
        self.heard: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(10)
            read_until = _Reads(connection).until

            connection.sendall(b"220 scripted ESMTP\r\n")
            read_until(b"\r\n")
            connection.sendall(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 10000000\r\n")
            while True:
                first = read_until(b"\r\n")
                command = first.upper()
                if command.startswith(b"QUIT"):
                    connection.sendall(b"221 bye\r\n")
                    return
                if command.startswith(b"RSET"):
                    self.heard.append(first)
                    connection.sendall(b"250 reset\r\n")
                    continue
                envelope = first + read_until(b"DATA\r\n")
                self.envelopes.append(envelope)
                self.heard.extend(line + b"\r\n" for line in envelope.split(b"\r\n")[:-1])
                to_group, to_data = self.script.pop(0) if self.script else self.ACCEPTED
                connection.sendall(to_group)
                if b"\r\n354 " in to_group:
                    data = read_until(b"\r\n")
                    if data != b".\r\n":  # not an empty data: the rest up to its end
                        data += read_until(b"\r\n.\r\n")
                    self.heard.append(data.replace(b"\r\n..", b"\r\n."))
                    connection.sendall(to_data)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def _sent_to_scripted(server: ScriptedServer, settings, teammate, capture, count: int):
    settings.EMAIL_TIMEOUT = 5
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
    try:
        run = _prepared_run(teammate, _campaign(teammate.organisation, count), capture)
        _send_until_settled(run, capture, rounds=1)
    finally:
        server.close()
    return _by_contact(run)


def test_mail_rcpt_and_data_go_in_one_write_and_each_reply_is_matched_to_its_command(
    settings, teammate, django_capture_on_commit_callbacks
):
    server = ScriptedServer()
    messages = _sent_to_scripted(server, settings, teammate, django_capture_on_commit_callbacks, 3)
    assert [envelope.split(b"\r\n")[1:] for envelope in server.envelopes] == [
        [f"RCPT TO:<k{i}@example.com>".encode(), b"DATA", b""] for i in range(3)
    ]
    assert all(envelope.startswith(b"MAIL FROM:<") for envelope in server.envelopes)
    assert {key: (m.status, m.attempts) for key, m in messages.items()} == {f"k{i}": ("sent", 1) for i in range(3)}


class AnswersDataWithTheNextGroup(ScriptedServer):
    """Answers a message's data only once it has also read the next message's MAIL, RCPT and DATA (all but the
    last of `count` messages): a client that waited for the data's reply before writing the next envelope would
    get no answer within EMAIL_TIMEOUT. Keeps what it read after each data, before it answered it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.read_after_data: list[bytes] = []
        super().__init__()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(10)
            read_until = _Reads(connection).until

            connection.sendall(b"220 scripted ESMTP\r\n")
            read_until(b"\r\n")
            connection.sendall(b"250-scripted\r\n250 PIPELINING\r\n")
            self.envelopes.append(read_until(b"DATA\r\n"))
            for number in range(1, self.count + 1):
                connection.sendall(b"250 sender ok\r\n250 recipient ok\r\n354 go ahead\r\n")
                read_until(b"\r\n.\r\n")
                if number < self.count:
                    self.envelopes.append(read_until(b"DATA\r\n"))
                    self.read_after_data.append(self.envelopes[-1])
                connection.sendall(b"250 2.0.0 queued\r\n")
            if read_until(b"\r\n").upper().startswith(b"QUIT"):
                connection.sendall(b"221 bye\r\n")


def test_a_messages_data_goes_in_one_write_with_the_next_messages_envelope(
    settings, teammate, django_capture_on_commit_callbacks
):
    """RFC 2920 §3.1: the message content may start a group, so the next MAIL, RCPT and DATA follow the data without
    waiting for its reply: one round trip a message."""
    server = AnswersDataWithTheNextGroup(4)
    messages = _sent_to_scripted(server, settings, teammate, django_capture_on_commit_callbacks, 4)
    assert [envelope.split(b"\r\n")[1:] for envelope in server.read_after_data] == [
        [f"RCPT TO:<k{i}@example.com>".encode(), b"DATA", b""] for i in range(1, 4)
    ]
    assert {key: (m.status, m.attempts) for key, m in messages.items()} == {f"k{i}": ("sent", 1) for i in range(4)}


def test_a_server_that_takes_data_after_refusing_the_recipient_gets_an_empty_data_and_the_refusal_stands(
    settings, teammate, django_capture_on_commit_callbacks
):
    """RFC 2920 §3.1: a server may answer DATA with 354 although it refused every RCPT; the client then ends the
    data at once. The message's outcome is the RCPT refusal, not the 554 its empty data gets."""
    server = ScriptedServer(
        [(b"250 sender ok\r\n550 5.1.1 No such user\r\n354 go ahead\r\n", b"554 5.5.1 No valid recipients\r\n")]
    )
    messages = _sent_to_scripted(server, settings, teammate, django_capture_on_commit_callbacks, 2)
    assert {key: (m.status, m.error) for key, m in messages.items()} == {
        "k0": ("bounced", "SMTP 550 5.1.1 No such user (at RCPT)"),
        "k1": ("sent", ""),
    }
    assert [line.split(b":")[0] if line.startswith((b"MAIL", b"RCPT")) else line for line in server.heard[:6]] == [
        b"MAIL FROM",
        b"RCPT TO",
        b"DATA\r\n",
        b".\r\n",  # the empty data
        b"rset\r\n",  # smtplib's, as step by step
        b"MAIL FROM",
    ]


# --- refusals in a group -----------------------------------------------------------------------------------------


class RefusesAt(CountingServer):
    def __init__(self, *, mail: dict[int, str] | None = None, rcpt: dict[str, str] | None = None) -> None:
        super().__init__()
        self.mail_answers = mail or {}  # by the MAIL command's number on the server, from 1
        self.rcpt_answers = rcpt or {}
        self.mails = 0
        self.refuse_data_command: set[str] = set()
        self.drop_at_data_command: set[str] = set()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mails += 1
        if self.mails in self.mail_answers:
            return self.mail_answers[self.mails]
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt_answers:
            answer = self.rcpt_answers[address]
            if answer.startswith("421"):
                self.rcpt_answers.pop(address)
                asyncio.get_running_loop().call_soon(server.transport.close)  # after the 421 has gone out
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_a_refused_rcpt_is_the_outcome_not_the_data_commands_503(
    settings, teammate, django_capture_on_commit_callbacks
):
    server = RefusesAt(rcpt={"k1@example.com": "550 5.1.1 <k1@example.com>: User unknown"})
    messages = _sent_through(server, settings, teammate, django_capture_on_commit_callbacks, 3)
    assert {key: (m.status, m.error) for key, m in messages.items()} == {
        "k0": ("sent", ""),
        "k1": ("bounced", "SMTP 550 5.1.1 <k1@example.com>: User unknown (at RCPT)"),
        "k2": ("sent", ""),
    }
    assert [rcpts for _from, rcpts, _data in server.received] == [["k0@example.com"], ["k2@example.com"]]
    assert server.connections == 1


def test_a_refused_mail_fails_that_message_and_the_next_goes_on(settings, teammate, django_capture_on_commit_callbacks):
    server = RefusesAt(mail={2: "550 5.7.1 Sender not allowed right now"})
    messages = _sent_through(server, settings, teammate, django_capture_on_commit_callbacks, 3)
    assert {key: (m.status, m.error) for key, m in messages.items()} == {
        "k0": ("sent", ""),
        "k1": ("failed", "SMTP 550 5.7.1 Sender not allowed right now (at MAIL)"),
        "k2": ("sent", ""),
    }
    assert [rcpts for _from, rcpts, _data in server.received] == [["k0@example.com"], ["k2@example.com"]]
    assert server.connections == 1


def test_a_refused_data_command_fails_that_message_and_the_next_goes_on(
    settings, teammate, django_capture_on_commit_callbacks
):
    server = RefusesAt()
    server.refuse_data_command.add("k1@example.com")
    messages = _sent_through(server, settings, teammate, django_capture_on_commit_callbacks, 3)
    assert {key: (m.status, m.error) for key, m in messages.items()} == {
        "k0": ("sent", ""),
        "k1": ("failed", "SMTP 554 5.7.1 Transaction refused at DATA (at DATA)"),
        "k2": ("sent", ""),
    }
    assert [rcpts for _from, rcpts, _data in server.received] == [["k0@example.com"], ["k2@example.com"]]


def test_a_421_in_the_group_retries_that_message_later_and_the_rest_go_on_a_new_connection(
    settings, teammate, django_capture_on_commit_callbacks
):
    server = RefusesAt(rcpt={"k1@example.com": "421 4.7.0 Too many connections, closing"})
    messages = _sent_through(server, settings, teammate, django_capture_on_commit_callbacks, 4)
    assert {key: (m.status, m.attempts, m.error) for key, m in messages.items()} == {
        "k0": ("sent", 1, ""),
        "k1": ("queued", 1, "SMTP 421 4.7.0 Too many connections, closing (at RCPT)"),
        "k2": ("sent", 1, ""),
        "k3": ("sent", 1, ""),
    }
    assert server.connections == 2


# --- drops -------------------------------------------------------------------------------------------------------


class DropsOnce(CountingServer):
    """Hangs up once at the stage named: `mail` (the group has arrived, no reply sent), `data` (the content has
    arrived, no reply sent)."""

    def __init__(self, at: str, address: str) -> None:
        super().__init__()
        self.at, self.address = at, address
        self.dropped = False
        self.refuse_data_command: set[str] = set()
        self.drop_at_data_command: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.at == "rcpt" and address == self.address and not self.dropped:
            self.dropped = True
            server.transport.abort()
            return "451 never sent"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.at == "data" and envelope.rcpt_tos[0] == self.address and not self.dropped:
            self.dropped = True
            server.transport.abort()
            return "451 never sent"
        return await super().handle_DATA(server, session, envelope)


def test_a_drop_after_the_group_was_written_resends_the_message_at_once_on_a_new_connection(
    settings, teammate, django_capture_on_commit_callbacks
):
    server = DropsOnce("rcpt", "k1@example.com")
    messages = _sent_through(server, settings, teammate, django_capture_on_commit_callbacks, 3)
    assert {key: (m.status, m.attempts) for key, m in messages.items()} == {f"k{i}": ("sent", 1) for i in range(3)}
    assert [rcpts[0] for _from, rcpts, _data in server.received] == [f"k{i}@example.com" for i in range(3)]
    assert server.connections == 2


def test_a_drop_during_the_data_retries_that_message_later_never_twice_now(
    settings, teammate, django_capture_on_commit_callbacks
):
    server = DropsOnce("data", "k1@example.com")
    messages = _sent_through(server, settings, teammate, django_capture_on_commit_callbacks, 3)
    assert {key: (m.status, m.attempts) for key, m in messages.items()} == {
        "k0": ("sent", 1),
        "k1": ("queued", 1),
        "k2": ("sent", 1),
    }
    assert messages["k1"].error.startswith("SMTP connection lost at DATA: ")
    assert [rcpts[0] for _from, rcpts, _data in server.received] == ["k0@example.com", "k2@example.com"]
    assert server.connections == 2


def test_a_drop_at_the_data_command_retries_that_message_later_as_step_by_step(
    settings, teammate, django_capture_on_commit_callbacks
):
    """Step by step, a break while DATA waits for its 354 counts as at DATA (retried later): the same here."""
    server = RefusesAt()
    server.drop_at_data_command.add("k1@example.com")
    messages = _sent_through(server, settings, teammate, django_capture_on_commit_callbacks, 3)
    assert {key: (m.status, m.attempts) for key, m in messages.items()} == {
        "k0": ("sent", 1),
        "k1": ("queued", 1),
        "k2": ("sent", 1),
    }
    assert messages["k1"].error.startswith("SMTP connection lost at DATA: ")
    assert server.connections == 2


# --- the data on the wire ----------------------------------------------------------------------------------------


def _outgoing(message_id: int, address: str, *, html: str, text: str) -> Outgoing:
    return Outgoing(
        message_id=message_id,
        idempotency_key=f"key-{message_id}",
        channel="email",
        run_id="run",
        campaign_id="campaign",
        organisation_id="organisation",
        variant_id="variant",
        variant_name="A",
        contact_id=message_id,
        address=address,
        payload={
            "subject": "Dots and size",
            "html": html,
            "text": text,
            "from_email": "news@acme.example",
            "headers": {
                "Date": "Mon, 07 Dec 2026 15:00:00 +0000",
                "Message-ID": f"<m{message_id}@acme.example>",
                "X-Campaign-Message-Id": str(message_id),
            },
        },
    )


@pytest.mark.parametrize(
    ("html", "text", "size_at_least"),
    [
        ("<pre>\n.one\n..two\n.\n</pre>", ".one\n..two\n.\nend", 0),
        (("<p>" + "A line of a long newsletter, repeated. " * 12 + "</p>\n") * 1_100, ("x" * 70 + "\n") * 7_000, 10**6),
    ],
    ids=["period-leading lines", "1 MB"],
)
def test_the_data_arrives_byte_for_byte(settings, html, text, size_at_least):
    server = RefusesAt()
    messages = [
        _outgoing(1, "k0@example.com", html=html, text=text),
        _outgoing(2, "k1@example.com", html=html, text=text),
    ]
    with _serving_pipelining(server, settings):
        outcomes = EmailBackend().send_batch(messages, profile={})
    assert [(outcome.message_id, outcome.status) for outcome in outcomes] == [(1, "sent"), (2, "sent")]
    assert [data for _from, _rcpts, data in server.received] == [message_bytes(message) for message in messages]
    assert len(server.received[0][2]) >= size_at_least
