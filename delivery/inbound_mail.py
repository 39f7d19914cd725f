"""Unsubscribe by mail: the `mailto:` of every email's List-Unsubscribe (RFC 2369), read where it arrives.

Mail to `unsubscribe@<INBOUND_MAIL_DOMAIN>` reaches us through a provider's inbound webhook (django-anymail
parses SES, Mailgun, Postmark, SendGrid… into one message type and sends its `inbound` signal) or, locally,
through the compose mail catcher's webhook (Mailpit posts a summary of every message it catches). The signed
unsubscribe token is read from the subject we advertise (`unsubscribe <token>`) or from the address
(`unsubscribe+<token>@…`), verified exactly as the one-click link verifies it, and the contact is unsubscribed
through the same service as the one-click POST, audited as "email (mailto)".

A message that is not an unsubscribe, or whose token is tampered with, expired or names nobody, is logged and
answered 200 like any other: providers retry what fails, and a retry would not make it valid. A failure of ours
(the database down) is a 500, so the provider tries again later.

In delivery for the reason given in delivery/consent.py (the token and the message it names are below
compliance's reach).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from anymail.exceptions import AnymailError
from anymail.inbound import AnymailInboundMessage
from anymail.signals import AnymailInboundEvent, EventType, inbound
from anymail.webhooks.base import AnymailBaseWebhookView
from django.conf import settings
from django.dispatch import receiver
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from compliance.models import Unsubscribe
from delivery import consent

logger = logging.getLogger(__name__)

MAILBOX = "unsubscribe"
# A token is two base64url fields joined by a dot (campaigns.content.links.sign).
_TOKEN = r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
_SUBJECT = re.compile(rf"(?i:\bunsubscribe)\s+({_TOKEN})(?![A-Za-z0-9_.-])")
_TAGGED = re.compile(rf"{MAILBOX}\+({_TOKEN})", re.IGNORECASE)


def _addresses(message: AnymailInboundMessage) -> list[str]:
    """Where the message went: the envelope recipient the provider reports, then To and Cc."""
    found = [message.envelope_recipient] if message.envelope_recipient else []
    for header in ("To", "Cc"):
        try:
            found += [address.addr_spec for address in message.get_address_header(header)]
        except (AnymailError, ValueError):  # an unparsable header names nobody we know
            continue
    return found


def unsubscribe_token(message: AnymailInboundMessage) -> str | None:
    """The unsubscribe token of mail sent to our unsubscribe mailbox at INBOUND_MAIL_DOMAIN (None for any other
    mail): the token in the address if it carries one, else the one in the subject."""
    domain = settings.INBOUND_MAIL_DOMAIN
    ours = []
    for address in _addresses(message):
        local, at, address_domain = address.strip().rpartition("@")
        if at and address_domain.lower() == domain and local.lower().split("+", 1)[0] == MAILBOX:
            ours.append(local)
    if not ours:
        return None
    for local in ours:
        tagged = _TAGGED.fullmatch(local)
        if tagged:
            return tagged.group(1)
    found = _SUBJECT.search(message.get("Subject") or "")
    return found.group(1) if found else None


def mail_unsubscribe(*, message: AnymailInboundMessage, provider: str) -> bool:
    """Unsubscribe the contact named by the token in an inbound message; whether anyone was unsubscribed (False
    for mail that is not an unsubscribe or carries an invalid token, logged)."""
    token = unsubscribe_token(message)
    if token is None:
        logger.info("inbound mail from %s: not to the unsubscribe mailbox or no token in it; ignored", provider)
        return False
    recipient = consent.resolve_unsubscribe(token)
    if recipient is None:
        logger.warning("inbound unsubscribe from %s: tampered, expired or unknown token; ignored", provider)
        return False
    consent.recipient_unsubscribe(recipient=recipient, source=Unsubscribe.Source.MAIL)
    logger.info("inbound unsubscribe from %s: contact %s unsubscribed", provider, recipient.contact.pk)
    return True


@receiver(inbound, dispatch_uid="delivery.inbound_mail.unsubscribe")
def _on_inbound_mail(sender: Any, event: AnymailInboundEvent, esp_name: str, **kwargs: Any) -> None:
    mail_unsubscribe(message=event.message, provider=esp_name)


class MailpitWebhookView(AnymailBaseWebhookView):
    """Compose's mail catcher as an inbound provider: Mailpit posts a JSON summary of each message it catches
    (MP_WEBHOOK_URL, with the webhook secret as the URL's user:password). The summary has the addresses and the
    subject, which is all an unsubscribe needs. The catcher also catches everything we send: those summaries go
    to other mailboxes and are ignored."""

    esp_name = "Mailpit"
    signal = inbound

    def parse_events(self, request: HttpRequest) -> list[AnymailInboundEvent]:
        try:
            summary = json.loads(request.body)
        except ValueError:
            summary = None
        if not isinstance(summary, dict):
            logger.warning("Mailpit webhook: the body is not a message summary; ignored")
            return []

        def addresses(field: str) -> str:
            entries = summary.get(field) or []
            return ", ".join(str(e.get("Address") or "") for e in entries if isinstance(e, dict) and e.get("Address"))

        message = AnymailInboundMessage.construct(
            to=addresses("To"), cc=addresses("Cc"), subject=str(summary.get("Subject") or "")
        )
        return [
            AnymailInboundEvent(
                event_type=EventType.INBOUND,
                timestamp=None,
                event_id=summary.get("ID"),
                esp_event=summary,
                message=message,
            )
        ]


def when_configured(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The inbound endpoints exist only where inbound mail is configured (INBOUND_MAIL_DOMAIN): elsewhere no
    mailto is advertised, so nothing legitimate posts there."""

    @wraps(view)
    def configured_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.INBOUND_MAIL_DOMAIN:
            raise Http404
        return view(request, *args, **kwargs)

    return csrf_exempt(configured_view)
