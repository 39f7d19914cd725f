"""The real ways out of the engine, one ChannelBackend each (delivery.backends).

- EmailBackend: Django's email backend (SMTP by default; django-anymail providers plug in the same way), real
  MIME with text and HTML parts, the compliance headers from rendering and a Message-ID that ties receipts back.
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
import email.utils
import smtplib
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import connection as db_connection
from django.utils import timezone

from campaigns.content.urls_check import UnsafeUrl, check_url_target
from delivery.backends import Outcome, Outgoing

RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, min(3600.0, float(value)))
    except ValueError:
        return 0.0


# --- email -------------------------------------------------------------------------------------------------------


class EmailBackend:
    """One SMTP connection per batch; each message is its own transaction with the server, so one refused
    recipient does not fail the rest."""

    def send_batch(self, messages: Sequence[Outgoing], *, profile: dict[str, Any]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            connection = get_connection(fail_silently=False)
            connection.open()
        except (OSError, smtplib.SMTPException) as exc:
            return [Outcome(m.message_id, "retry", "", f"mail server unreachable: {exc}"[:500]) for m in messages]
        try:
            for message in messages:
                outcomes.append(self._send_one(connection, message))
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                connection.close()
        return outcomes

    @staticmethod
    def _mime(message: Outgoing) -> EmailMultiAlternatives:
        payload = message.payload
        headers = dict(payload.get("headers") or {})
        headers.setdefault("Date", email.utils.formatdate(localtime=False))
        mime = EmailMultiAlternatives(
            subject=payload.get("subject", ""),
            body=payload.get("text", ""),
            from_email=payload.get("from") or settings.DEFAULT_FROM_EMAIL,
            to=[message.address],
            reply_to=[payload["reply_to"]] if payload.get("reply_to") else None,
            headers=headers,
        )
        mime.attach_alternative(payload.get("html", ""), "text/html")
        return mime

    def _send_one(self, connection: Any, message: Outgoing) -> Outcome:
        mime = self._mime(message)
        message_id = mime.extra_headers.get("Message-ID", "")
        try:
            connection.send_messages([mime])
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()), (550, b""))
            text = f"SMTP {code}: {reason.decode(errors='replace') if isinstance(reason, bytes) else reason}"[:500]
            status = "bounced" if 500 <= code < 600 else "retry"
            return Outcome(message.message_id, status, message_id, text)
        except smtplib.SMTPResponseException as exc:
            text = f"SMTP {exc.smtp_code}: {exc.smtp_error.decode(errors='replace')}"[:500]
            return Outcome(message.message_id, "failed" if exc.smtp_code >= 500 else "retry", message_id, text)
        except (OSError, smtplib.SMTPException) as exc:
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
