"""An outgoing email as what goes on the wire: the RFC 5322 message bytes an SMTP server receives.

`message_bytes(message)` is used by the SMTP path (delivery.channels.EmailBackend); `email_message(message)` builds
the same email as a Django EmailMessage for the other Django mail backends (django-anymail providers, locmem in
tests), which build their own wire format or API call from it.
"""

from __future__ import annotations

import email.utils

from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from delivery.backends import Outgoing


def email_message(message: Outgoing) -> EmailMultiAlternatives:
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


def envelope_sender(message: Outgoing) -> str:
    """The SMTP MAIL FROM (where bounces go): the sender's address."""
    return message.payload.get("from_email") or settings.DEFAULT_FROM_EMAIL


def message_bytes(message: Outgoing) -> bytes:
    return email_message(message).message().as_bytes(linesep="\r\n")
