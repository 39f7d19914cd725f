"""The real ways out of the engine, one ChannelBackend each (delivery.backends).

- EmailBackend: over SMTP (Django's SMTP backend configured), each message's wire bytes (delivery.mime) on one
  connection per batch that survives drops and a silent server (EMAIL_TIMEOUT); with any other Django mail backend
  (django-anymail providers), Django EmailMessages. Text and HTML parts, the compliance headers from rendering and
  a Message-ID that ties receipts back.
- NotificationServiceBackend: SMS and WhatsApp through the notification_service (HTTP, idempotency keys).
- WebhookBackend: signed HTTP requests to user-given URLs, SSRF-checked after DNS resolution and pinned to the
  checked address, no redirects.
- InAppBackend: writes the message into the contact's inbox (delivery.models.InboxMessage).

Each sorts failures the same way: transient (timeouts, connection errors, 429, 5xx, SMTP 4xx) are retried with
backoff by the engine; permanent ones (4xx, SMTP 5xx, refused targets) fail or bounce the message with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx
from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.backends.smtp import EmailBackend as DjangoSmtpBackend
from django.core.mail.message import sanitize_address
from django.db import connection as db_connection
from django.utils import timezone

from campaigns.content.urls_check import UnsafeUrl, check_url_target
from delivery.backends import Outcome, Outgoing
from delivery.mime import email_message, envelope_sender, message_bytes
from delivery.smtp_wire import PLAIN_ADDRESS, ReplyReader, dot_stuffed, envelope_group, offers_pipelining

RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, min(3600.0, float(value)))
    except ValueError:
        return 0.0


# --- email -------------------------------------------------------------------------------------------------------

SMTP_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"

# A server that drops the connection (or answers 421) this many times in a row, with no message answered in
# between, is not coming back within this batch: the rest of the batch waits for its retry instead of reconnecting
# on and on. Drops with progress in between (a server that closes every few hundred messages) cost a reconnect each.
SMTP_DROPS_IN_A_ROW = 3

# RFC 3463 enhanced status code at the start of a reply's text: class.subject.detail.
ENHANCED_STATUS = re.compile(rb"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")


def smtp_refusal_status(code: int, reply: bytes, *, stage: str) -> str:
    """What a refused SMTP step means for the message (RFC 5321 reply codes, RFC 3463 enhanced codes): 4xx is
    transient (`retry`); a 5xx at RCPT or DATA that says the recipient's address is bad (5.1.x, or a plain
    550/551/553 with no enhanced code) is a hard bounce (`bounced`, which suppresses the address); any other 5xx —
    policy (5.7.x), content, size, a refused sender at MAIL — fails this message only (`failed`): the address may
    be fine."""
    if code < 500:
        return "retry"
    if stage not in ("RCPT", "DATA"):
        return "failed"
    enhanced = ENHANCED_STATUS.match(reply)
    if enhanced:
        # X.1.x is about addresses; X.1.7 and X.1.8 are the sender's, not the recipient's.
        recipient_address = enhanced[2] == b"1" and enhanced[3] not in (b"7", b"8")
        return "bounced" if enhanced[1] == b"5" and recipient_address else "failed"
    return "bounced" if code in (550, 551, 553) else "failed"


def _refused(message: Outgoing, message_id: str, code: int, reply: bytes, *, stage: str) -> Outcome:
    status = smtp_refusal_status(code, reply, stage=stage)
    text = f"SMTP {code} {reply.decode(errors='replace')} (at {stage})"[:500]
    return Outcome(message.message_id, status, message_id, text, hard_bounce=status == "bounced")


class _ConnectionLost(Exception):
    """The SMTP connection broke (or the server said 421, closing) during a message. `resend_now`: the server cannot
    have the message (the break came before its data went out), so it goes again on a new connection; otherwise it
    is retried later (at-least-once: the data may have reached the server). `timed_out`: the server went silent."""

    def __init__(self, reason: str, *, resend_now: bool, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.resend_now = resend_now
        self.timed_out = timed_out


def _timed_out(exc: BaseException) -> bool:
    # smtplib reports a socket timeout as SMTPServerDisconnected, raised while handling the TimeoutError.
    return isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)


class _SmtpSession:
    """One batch's connection to the mail server, opened by Django's own SMTP backend (EMAIL_HOST, EMAIL_PORT,
    EMAIL_USE_TLS / EMAIL_USE_SSL, EMAIL_HOST_USER / EMAIL_HOST_PASSWORD, EMAIL_TIMEOUT), so every EMAIL_* setting
    means what Django documents; the messages themselves go out raw."""

    def __init__(self) -> None:
        self._django = DjangoSmtpBackend(fail_silently=False)

    @property
    def smtp(self) -> smtplib.SMTP | None:
        return self._django.connection

    def open(self) -> smtplib.SMTP:
        self._django.open()
        smtp = self._django.connection
        smtp.ehlo_or_helo_if_needed()
        return smtp

    def discard(self) -> None:
        """Drop a broken or silent connection without QUIT: a hanging server would make QUIT wait a timeout too."""
        smtp, self._django.connection = self._django.connection, None
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # smtplib's exceptions are OSErrors
            self._django.close()


def _connection_lost(stage: str, exc: OSError) -> _ConnectionLost:
    """A broken or silent connection while the reply to `stage` was awaited: the message goes again at once unless
    its data (or the DATA command, as step by step) may have reached the server."""
    if _timed_out(exc):
        reason = f"SMTP: no answer at {stage} within EMAIL_TIMEOUT ({settings.EMAIL_TIMEOUT:g} s)"
    else:
        reason = f"SMTP connection lost at {stage}: {exc}"
    return _ConnectionLost(reason, resend_now=stage != "DATA", timed_out=_timed_out(exc))


def _size_option(smtp: smtplib.SMTP, data: bytes) -> list[str]:
    return [f"SIZE={len(data)}"] if smtp.does_esmtp and smtp.has_extn("size") else []


def _transaction(smtp: smtplib.SMTP, message: Outgoing, envelope: tuple[str, str], data: bytes) -> Outcome:
    """One message as one SMTP mail transaction (MAIL, RCPT, DATA) step by step through smtplib, each step's answer
    classified where it comes (a server without PIPELINING)."""
    message_id = _message_id_header(message)
    sender, recipient = envelope
    stage, answered = "MAIL", False
    try:
        code, reply = smtp.mail(sender, _size_option(smtp, data))
        if code == 250:
            stage = "RCPT"
            code, reply = smtp.rcpt(recipient)
        if code in (250, 251):
            stage = "DATA"
            code, reply = smtp.data(data)
            answered = True
    except smtplib.SMTPDataError as exc:  # the DATA command itself refused: the content never went out
        code, reply = exc.smtp_code, exc.smtp_error
    except OSError as exc:  # smtplib's disconnects are OSErrors too
        raise _connection_lost(stage, exc) from exc
    if code == 421:  # the server is closing the connection: this message later, the next on a new connection
        raise _ConnectionLost(f"SMTP 421 {reply.decode(errors='replace')} (at {stage})", resend_now=False)
    if answered and code == 250:
        return Outcome(message.message_id, "sent", message_id)
    if not answered:
        # A refused MAIL, RCPT or DATA command leaves the transaction open: end it so the next message starts clean
        # (a connection that breaks here breaks for the next message, which then reconnects).
        with contextlib.suppress(OSError):
            smtp.rset()
    return _refused(message, message_id, code, reply, stage=stage)


def _envelope_address(address: str) -> str:
    # A plain ASCII address (delivery.smtp_wire.PLAIN_ADDRESS) needs nothing done for the envelope; anything else
    # goes through Django's sanitize_address (IDNA for the domain, refusal of what cannot be written), ~0.1 ms.
    return address if PLAIN_ADDRESS.fullmatch(address) else sanitize_address(address, "utf-8")


def _message_id_header(message: Outgoing) -> str:
    return (message.payload.get("headers") or {}).get("Message-ID", "")


@dataclass(frozen=True)
class _Wire:
    """A message ready for the server: its envelope (MAIL FROM, RCPT TO) and its bytes (delivery.mime)."""

    message: Outgoing
    sender: str
    recipient: str
    data: bytes
    message_id: str


def _wire(message: Outgoing) -> _Wire | Outcome:
    """The message ready for the server, or its failure when an address or header cannot be written."""
    try:
        return _Wire(
            message,
            _envelope_address(envelope_sender(message)),
            _envelope_address(message.address),
            message_bytes(message),
            _message_id_header(message),
        )
    except (ValueError, TypeError) as exc:
        return Outcome(message.message_id, "failed", _message_id_header(message), f"email: {exc}"[:500])


class _RawBatch:
    """Each message's wire bytes (delivery.mime) over one SMTP connection, reconnecting when the server drops it.
    A message whose data may have reached the server before the drop is retried later, never sent twice now; a
    server that stops answering (EMAIL_TIMEOUT) or keeps dropping ends the batch at once, the rest retried later.

    With a server that offers PIPELINING, a message's data goes out in one write with the next message's MAIL,
    RCPT and DATA (delivery.smtp_wire), so at any time one message may be "in flight": its data written, its final
    reply not yet read. That reply is the first the server sends after the data, so it is read before the next
    message's, and a connection lost while it is awaited retries the in-flight message later (its data may have
    arrived) and sends the next again at once (its DATA was never answered)."""

    def __init__(self, messages: Sequence[Outgoing]) -> None:
        self.messages = messages
        self.outcomes: list[Outcome] = []
        self.session = _SmtpSession()
        self.drops_in_a_row = 0
        self.index = 0
        self.ahead: tuple[int, _Wire | Outcome] | None = None  # a message prepared before its turn
        self.wire: ReplyReader | None = None  # the connection's reply reader when the server offers PIPELINING
        self.size_offered = False
        self.in_flight: _Wire | None = None
        self.group_written = False  # messages[index]'s MAIL, RCPT and DATA went out with the previous data

    def send(self) -> list[Outcome]:
        try:
            while self.index < len(self.messages) and self._next():
                pass
            if self.in_flight is not None:
                try:
                    self._settle_in_flight()
                except _ConnectionLost:
                    self.session.discard()
        finally:
            self.session.close()
        return self.outcomes

    def _prepared(self, index: int) -> _Wire | Outcome:
        if self.ahead is not None and self.ahead[0] == index:
            return self.ahead[1]
        prepared = _wire(self.messages[index])
        self.ahead = (index, prepared)
        return prepared

    def _next(self) -> bool:
        """Send messages[index]; False when the rest of the batch waits for its retry."""
        try:
            prepared = self._prepared(self.index)
            if isinstance(prepared, Outcome):
                if self.in_flight is not None:
                    self._settle_in_flight()
                self.outcomes.append(prepared)
                self.index += 1
                return True
            smtp = self.session.smtp
            if smtp is None:
                try:
                    smtp = self.session.open()
                except OSError as exc:
                    self.session.discard()
                    why = f"no answer within EMAIL_TIMEOUT ({settings.EMAIL_TIMEOUT:g} s)" if _timed_out(exc) else exc
                    self._rest_later(f"mail server unreachable: {why}")
                    return False
                self.wire = ReplyReader(smtp.sock) if offers_pipelining(smtp) else None
                self.size_offered = bool(smtp.does_esmtp and smtp.has_extn("size"))
            if self.wire is None:
                self.outcomes.append(
                    _transaction(smtp, prepared.message, (prepared.sender, prepared.recipient), prepared.data)
                )
                self.drops_in_a_row = 0
                self.index += 1
            else:
                self._pipelined(smtp, self.wire, prepared)
        except _ConnectionLost as lost:
            return self._lost(lost)
        return True

    def _group(self, prepared: _Wire) -> bytes:
        options = [f"SIZE={len(prepared.data)}"] if self.size_offered else []
        return envelope_group(prepared.sender, prepared.recipient, options)

    def _pipelined(self, smtp: smtplib.SMTP, wire: ReplyReader, prepared: _Wire) -> None:
        stage = "MAIL"
        try:
            if not self.group_written:
                if self.in_flight is not None:  # the message before this one could not be written
                    self._settle_in_flight()
                wire.write(self._group(prepared))
            if self.in_flight is not None:
                self._settle_in_flight()
            code, reply = wire.reply()
            if code != 250:
                self._refused_in_group(smtp, wire, prepared, code, reply, stage, owed=2)
                return
            stage = "RCPT"
            code, reply = wire.reply()
            if code not in (250, 251):
                self._refused_in_group(smtp, wire, prepared, code, reply, stage, owed=1)
                return
            stage = "DATA"
            code, reply = wire.reply()
            if code != 354:  # the DATA command refused (or 421): the content never went out
                self._refused_in_group(smtp, wire, prepared, code, reply, stage, owed=0)
                return
            following = self._prepared(self.index + 1) if self.index + 1 < len(self.messages) else None
            ahead = following if isinstance(following, _Wire) else None
            wire.write(dot_stuffed(prepared.data) + (self._group(ahead) if ahead is not None else b""))
        except OSError as exc:  # smtplib's disconnects are OSErrors too
            raise _connection_lost(stage, exc) from exc
        self.in_flight, self.group_written = prepared, ahead is not None
        self.drops_in_a_row = 0
        self.index += 1

    def _refused_in_group(
        self, smtp: smtplib.SMTP, wire: ReplyReader, prepared: _Wire, code: int, reply: bytes, stage: str, *, owed: int
    ) -> None:
        """A refused MAIL, RCPT or DATA command: the first refusal is the message's outcome (never the 503/554 that
        DATA then gets for having no valid recipient). The replies still owed to the group are read so the next
        transaction's stay matched to it; a server that took DATA anyway (354 with no valid recipient) gets an empty
        data ending it; then RSET, so the next message starts clean. A break while doing so breaks the connection
        for the next message (which reconnects), not this outcome."""
        if code == 421:  # the server is closing the connection: this message later, the next on a new connection
            raise _ConnectionLost(f"SMTP 421 {reply.decode(errors='replace')} (at {stage})", resend_now=False)
        with contextlib.suppress(OSError):
            last = 0
            for _ in range(owed):
                last, _reply = wire.reply()
            if last == 354:
                wire.write(b".\r\n")
                wire.reply()
            smtp.rset()
        self.outcomes.append(_refused(prepared.message, prepared.message_id, code, reply, stage=stage))
        self.group_written = False
        self.drops_in_a_row = 0
        self.index += 1

    def _settle_in_flight(self) -> None:
        """The in-flight message's final reply. When the connection is lost instead, that message is retried later
        and messages[index] goes again at once (its MAIL, RCPT and DATA may have been written, never answered)."""
        assert self.wire is not None and self.in_flight is not None
        sent, self.in_flight = self.in_flight, None
        try:
            code, reply = self.wire.reply()
        except OSError as exc:
            lost = _connection_lost("DATA", exc)
            self.outcomes.append(Outcome(sent.message.message_id, "retry", sent.message_id, str(lost)[:500]))
            raise _ConnectionLost(str(lost), resend_now=True, timed_out=lost.timed_out) from exc
        if code == 421:
            reason = f"SMTP 421 {reply.decode(errors='replace')} (at DATA)"
            self.outcomes.append(Outcome(sent.message.message_id, "retry", sent.message_id, reason[:500]))
            raise _ConnectionLost(reason, resend_now=True)
        if code == 250:
            self.outcomes.append(Outcome(sent.message.message_id, "sent", sent.message_id))
        else:
            self.outcomes.append(_refused(sent.message, sent.message_id, code, reply, stage="DATA"))

    def _lost(self, lost: _ConnectionLost) -> bool:
        self.session.discard()
        self.wire, self.in_flight, self.group_written = None, None, False
        self.drops_in_a_row += 1
        if not lost.resend_now and self.index < len(self.messages):
            message = self.messages[self.index]
            self.outcomes.append(Outcome(message.message_id, "retry", _message_id_header(message), str(lost)[:500]))
            self.index += 1
        if lost.timed_out:
            self._rest_later("not tried: the mail server stopped answering")
            return False
        if self.drops_in_a_row >= SMTP_DROPS_IN_A_ROW:
            self._rest_later(f"not tried: the mail server dropped the connection {self.drops_in_a_row} times in a row")
            return False
        return True

    def _rest_later(self, reason: str) -> None:
        self.outcomes.extend(
            Outcome(m.message_id, "retry", "", reason[:500], tried=False) for m in self.messages[self.index :]
        )
        self.index = len(self.messages)


def _send_raw(messages: Sequence[Outgoing]) -> list[Outcome]:
    return _RawBatch(messages).send()


class EmailBackend:
    """With Django's SMTP backend configured (EMAIL_BACKEND), the messages' own bytes over one SMTP connection per
    batch (`_send_raw`); with any other Django mail backend (django-anymail providers, locmem in tests), Django
    EmailMessages through `get_connection()`. Each message is its own transaction with the server, so one refused
    recipient does not fail the rest."""

    def send_batch(self, messages: Sequence[Outgoing], *, profile: dict[str, Any]) -> list[Outcome]:
        if settings.EMAIL_BACKEND == SMTP_EMAIL_BACKEND:
            return _send_raw(messages)
        return self._send_through_django(messages)

    def _send_through_django(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            connection = get_connection(fail_silently=False)
            connection.open()
        except OSError as exc:
            return [Outcome(m.message_id, "retry", "", f"mail server unreachable: {exc}"[:500]) for m in messages]
        try:
            for message in messages:
                outcomes.append(self._send_one(connection, message))
        finally:
            with contextlib.suppress(OSError):
                connection.close()
        return outcomes

    @staticmethod
    def _send_one(connection: Any, message: Outgoing) -> Outcome:
        mime = email_message(message)
        message_id = mime.extra_headers.get("Message-ID", "")
        try:
            connection.send_messages([mime])
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()), (550, b""))
            reply = reason if isinstance(reason, bytes) else str(reason).encode()
            return _refused(message, message_id, code, reply, stage="RCPT")
        except smtplib.SMTPSenderRefused as exc:
            return _refused(message, message_id, exc.smtp_code, exc.smtp_error, stage="MAIL")
        except smtplib.SMTPResponseException as exc:
            return _refused(message, message_id, exc.smtp_code, exc.smtp_error, stage="DATA")
        except OSError as exc:
            return Outcome(message.message_id, "retry", message_id, f"SMTP: {exc}"[:500])
        return Outcome(message.message_id, "sent", message_id)


# --- HTTP-based channels -------------------------------------------------------------------------------------------


# httpcore's connection pool scans every connection for every waiting request (quadratic in concurrency), so one
# client with 100 connections spends its time in the pool; many small clients keep each scan short.
CONNECTIONS_PER_CLIENT = 5


_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process: loading the CA bundle costs ~20 ms, too much for every client."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context(cafile=certifi.where())
    return _SSL_CONTEXT


async def _send_sharded(
    messages: Sequence[Outgoing], send: Any, *, concurrency: int, **client_options: Any
) -> list[Outcome]:
    """Send every message with `send(client, message)`, at most `concurrency` at once over small clients."""
    shards = max(1, concurrency // CONNECTIONS_PER_CLIENT)
    limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT)
    clients = [httpx.AsyncClient(limits=limits, verify=_ssl_context(), **client_options) for _ in range(shards)]
    gates = [asyncio.Semaphore(CONNECTIONS_PER_CLIENT) for _ in range(shards)]

    async def one(index: int, message: Outgoing) -> Outcome:
        async with gates[index % shards]:
            return await send(clients[index % shards], message)

    try:
        return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(messages))))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


class NotificationServiceBackend:
    """`POST {NOTIFICATION_SERVICE_URL}/v1/notifications` per message, with the message's idempotency key in the
    `Idempotency-Key` header (a repeat is answered 409 or with the original, never sent twice). Answers: 2xx
    accepted (`id` in the body is the provider's message id), 409 already accepted, 4xx refused for good,
    408/425/429/5xx and network errors retried (Retry-After honoured). Requests in a batch run concurrently."""

    def send_batch(self, messages: Sequence[Outgoing], *, profile: dict[str, Any]) -> list[Outcome]:
        return asyncio.run(self._send_all(messages))

    async def _send_all(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        headers = {"Authorization": f"Bearer {settings.NOTIFICATION_SERVICE_TOKEN}"}
        return await _send_sharded(
            messages,
            self._send_one,
            concurrency=settings.HTTP_SEND_CONCURRENCY,
            base_url=settings.NOTIFICATION_SERVICE_URL.rstrip("/"),
            timeout=httpx.Timeout(settings.EXTERNAL_HTTP_TIMEOUT),
            headers=headers if settings.NOTIFICATION_SERVICE_TOKEN else {},
            follow_redirects=False,
        )

    @staticmethod
    def _body(message: Outgoing) -> dict[str, Any]:
        payload = message.payload
        body: dict[str, Any] = {
            "channel": message.channel,
            "to": message.address,
            "body": payload.get("body", ""),
            "metadata": {
                "message_id": message.message_id,
                "run_id": message.run_id,
                "campaign_id": message.campaign_id,
                "organisation_id": message.organisation_id,
            },
            "receipt_url": settings.SITE_URL.rstrip("/") + "/api/v1/receipts/",
        }
        if payload.get("template_name"):
            body["template"] = {"name": payload["template_name"], "language": payload.get("template_language", "")}
        if payload.get("sender_id"):
            body["sender_id"] = payload["sender_id"]
        return body

    async def _send_one(self, client: httpx.AsyncClient, message: Outgoing) -> Outcome:
        try:
            response = await client.post(
                "/v1/notifications", json=self._body(message), headers={"Idempotency-Key": message.idempotency_key}
            )
        except httpx.HTTPError as exc:
            return Outcome(message.message_id, "retry", "", f"notification_service: {type(exc).__name__} {exc}"[:500])
        provider_id = ""
        with contextlib.suppress(ValueError):
            provider_id = str((response.json() or {}).get("id", ""))[:200]
        if response.status_code in (200, 201, 202, 409):
            return Outcome(message.message_id, "sent", provider_id)
        text = f"notification_service answered {response.status_code}: {response.text[:300]}"
        if response.status_code in RETRYABLE_HTTP:
            return Outcome(message.message_id, "retry", provider_id, text, retry_after=_retry_after(response))
        return Outcome(message.message_id, "failed", provider_id, text)


def _pinned_request(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Resolve and check the target right before connecting, then connect to that checked address (a DNS answer
    that changes between check and connect cannot redirect us): the URL's host is replaced by the address, the
    Host header and TLS server name keep the original name, so certificates are still verified against it."""
    addresses = check_url_target(url)
    parts = urlsplit(url)
    address = next((a for a in addresses if ":" not in a), addresses[0])
    host_in_url = f"[{address}]" if ":" in address else address
    netloc = host_in_url + (f":{parts.port}" if parts.port else "")
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = parts.hostname + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return pinned, {"Host": host_header}, extensions


class WebhookBackend:
    """The rendered request (method, URL, headers incl. the HMAC signature, JSON body), sent with httpx: timeouts,
    no redirects, the target re-checked after DNS resolution. The response code is recorded; 2xx is delivered."""

    def send_batch(self, messages: Sequence[Outgoing], *, profile: dict[str, Any]) -> list[Outcome]:
        return asyncio.run(self._send_all(messages))

    async def _send_all(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        # Each distinct URL is resolved and checked once per batch, right before its requests go out.
        checked: dict[str, Any] = {}
        for url in {m.payload.get("url", "") for m in messages}:
            try:
                checked[url] = await asyncio.to_thread(_pinned_request, url)
            except UnsafeUrl as exc:
                checked[url] = exc

        async def send(client: httpx.AsyncClient, message: Outgoing) -> Outcome:
            return await self._send_one(client, message, checked[message.payload.get("url", "")])

        return await _send_sharded(
            messages,
            send,
            concurrency=settings.HTTP_SEND_CONCURRENCY,
            timeout=httpx.Timeout(settings.WEBHOOK_TIMEOUT_SECONDS),
            follow_redirects=False,
        )

    async def _send_one(self, client: httpx.AsyncClient, message: Outgoing, target: Any) -> Outcome:
        payload = message.payload
        if isinstance(target, UnsafeUrl):
            return Outcome(message.message_id, "failed", "", f"webhook refused: {target}"[:500])
        pinned, host, extensions = target
        headers = {**(payload.get("headers") or {}), **host, "Idempotency-Key": message.idempotency_key}
        try:
            response = await client.request(
                payload.get("method") or "POST",
                pinned,
                content=payload.get("body", "").encode(),
                headers=headers,
                extensions=extensions,
            )
        except httpx.HTTPError as exc:
            return Outcome(message.message_id, "retry", "", f"webhook: {type(exc).__name__} {exc}"[:500])
        code = f"HTTP {response.status_code}"
        if 200 <= response.status_code < 300:
            return Outcome(message.message_id, "delivered", code)
        if response.status_code in RETRYABLE_HTTP:
            return Outcome(message.message_id, "retry", code, f"webhook answered {code}", _retry_after(response))
        reason = "redirects are not followed" if 300 <= response.status_code < 400 else f"webhook answered {code}"
        return Outcome(message.message_id, "failed", code, reason)


# --- in-app --------------------------------------------------------------------------------------------------------


class InAppBackend:
    """Messages land in the contact's inbox (one set-based insert per batch); a client app lists them, marks them
    read and counts unread through /api/v1/inbox/. Idempotent on the message id."""

    def send_batch(self, messages: Sequence[Outgoing], *, profile: dict[str, Any]) -> list[Outcome]:
        import json

        rows = [
            {
                "m": m.message_id,
                "o": m.organisation_id,
                "c": m.contact_id,
                "r": m.run_id,
                "cp": m.campaign_id,
                "v": m.variant_id,
                "t": m.payload.get("title", ""),
                "b": m.payload.get("body", ""),
                "u": m.payload.get("action_url", ""),
                "i": m.payload.get("icon_url", ""),
            }
            for m in messages
        ]
        with db_connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO delivery_inboxmessage (message_id, organisation_id, contact_id, run_id, campaign_id,"
                " variant_id, title, body, action_url, icon_url, created_at)"
                " SELECT u.m, u.o, u.c, u.r, u.cp, u.v, u.t, u.b, u.u, u.i, %s"
                " FROM json_to_recordset(%s::json) AS u(m bigint, o uuid, c bigint, r uuid, cp uuid, v uuid, t text,"
                " b text, u text, i text)"
                " ON CONFLICT (message_id) DO NOTHING",
                [timezone.now(), json.dumps(rows)],
            )
        return [Outcome(m.message_id, "delivered", f"inbox-{m.message_id}") for m in messages]
