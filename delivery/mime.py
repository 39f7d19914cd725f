"""An outgoing email as what goes on the wire: the RFC 5322 / MIME message bytes an SMTP server receives.

`message_bytes(message)` is used by the SMTP path (delivery.channels.EmailBackend); `email_message(message)` builds
the same email as a Django EmailMessage for the other Django mail backends (django-anymail providers, locmem in
tests), which build their own wire format or API call from it.

A run sends one content to many recipients, so `message_bytes` builds each variant's skeleton once (From, Reply-To,
the run's constant headers, the multipart boundary and the parts' headers, all encoded and folded) and per message
fills in only what changes: To, Subject, Date, Message-ID, List-Unsubscribe, X-Campaign-Message-Id and the two
bodies. Building the message with Django's EmailMultiAlternatives and the email package costs ~0.46 ms a message,
eleven times rendering it; this costs a few microseconds.
"""

from __future__ import annotations

import binascii
import email.policy
import email.utils
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.headerregistry import Address

from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from delivery import dkim
from delivery.backends import Outgoing

# Headers whose value differs between the messages of one run; every other header of a payload is the run's.
PER_MESSAGE_HEADERS = frozenset({"List-Unsubscribe", "Message-ID", "X-Campaign-Message-Id", "Date"})
# RFC 5322 2.1.1: lines SHOULD stay within 78 characters and MUST within 998 (without the CRLF).
FOLD_AT = 78
LINE_LIMIT = 998
_SMTP_POLICY = email.policy.SMTP  # CRLF line ends, 78-character folding, RFC 2047 for non-ASCII
_SEVEN_BIT = b"7bit"
_QUOTED_PRINTABLE = b"quoted-printable"


def email_message(message: Outgoing) -> EmailMultiAlternatives:
    payload = message.payload
    headers = dict(payload.get("headers") or {})
    # Django's own Date (email.utils.formatdate) says -0000, "no information about the local time zone".
    headers.setdefault("Date", email.utils.format_datetime(datetime.now(UTC)))
    mime = EmailMultiAlternatives(
        subject=_one_line(payload.get("subject", "")),
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
    return _from_address(message.payload)


def message_bytes(message: Outgoing) -> bytes:
    """The message as it goes out after DATA: CRLF line ends, no line over 998 octets, headers folded at 78 and
    RFC 2047 encoded where not ASCII, each body 7bit when it can be and quoted-printable otherwise. smtplib
    dot-stuffs it on the way out."""
    payload = message.payload
    headers: Mapping[str, str] = payload.get("headers") or {}
    skeleton = _skeleton_for(message.organisation_id, payload, headers)
    text_encoding, text = _body(payload.get("text", ""), skeleton.boundary)
    html_encoding, html = _body(payload.get("html", ""), skeleton.boundary)
    wire = b"".join(
        (
            skeleton.head,
            b"To: ",
            _to(message.address),
            b"\r\nSubject: ",
            _subject(payload.get("subject", "")),
            _header_bytes("Date", headers["Date"]) if "Date" in headers else b"\r\nDate: " + _date_now(),
            *(
                _header_bytes(name, headers[name])
                for name in ("Message-ID", "List-Unsubscribe", "X-Campaign-Message-Id")
                if name in headers
            ),
            skeleton.text_open,
            text_encoding,
            b"\r\n\r\n",
            text,
            skeleton.html_open,
            html_encoding,
            b"\r\n\r\n",
            html,
            skeleton.close,
        )
    )
    return skeleton.sign(wire)


# --- the run's constant part ----------------------------------------------------------------------------------------


@dataclass
class _Skeleton:
    head: bytes  # the constant headers, each line ending in CRLF
    boundary: bytes
    text_open: bytes  # end of the message headers, the boundary and the text part's headers up to its encoding
    html_open: bytes
    close: bytes
    organisation_id: str
    domain: str  # of the From address
    # The organisation's DKIM signer for the sending domain, if it has one, looked up again after a while: a key
    # set up while a worker runs signs its mail from then on without a restart.
    signer: Callable[[bytes], bytes] | None = None
    signer_until: float = 0.0

    def sign(self, wire: bytes) -> bytes:
        now = time.monotonic()
        if now >= self.signer_until:
            self.signer = _signer(self.organisation_id, self.domain)
            self.signer_until = now + SIGNER_REFRESH_SECONDS
        return self.signer(wire) if self.signer else wire


SIGNER_REFRESH_SECONDS = 60.0


_skeletons: dict[tuple, _Skeleton] = {}
MAX_SKELETONS = 256  # a worker sends a handful of variants at a time; the bound only stops growth over weeks


def _skeleton_for(organisation_id: str, payload: Mapping, headers: Mapping[str, str]) -> _Skeleton:
    """The skeleton for what a message shares with the rest of its run: the sender, the constant headers and the
    organisation (whose DKIM key signs it)."""
    constant = tuple(item for item in headers.items() if item[0] not in PER_MESSAGE_HEADERS)
    key = (organisation_id, payload.get("from"), payload.get("from_email"), payload.get("reply_to"), constant)
    skeleton = _skeletons.get(key)
    if skeleton is None:
        if len(_skeletons) >= MAX_SKELETONS:
            _skeletons.clear()
        skeleton = _skeletons[key] = _build_skeleton(organisation_id, payload, constant)
    return skeleton


def _build_skeleton(organisation_id: str, payload: Mapping, constant: tuple[tuple[str, str], ...]) -> _Skeleton:
    from_email = _from_address(payload)
    lines = [_address_header("From", payload.get("from") or from_email)]
    if payload.get("reply_to"):
        lines.append(_address_header("Reply-To", payload["reply_to"]))
    lines.append(b"MIME-Version: 1.0\r\n")
    lines.extend(_header_bytes(name, value)[2:] + b"\r\n" for name, value in constant)
    # "=_" never occurs in quoted-printable output (every "=" there is "=3D" or a soft break), and a 7bit body that
    # contains the boundary goes out quoted-printable instead: the boundary cannot appear inside a part.
    boundary = f"=_cs_{secrets.token_hex(16)}".encode("ascii")
    part = b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: '
    return _Skeleton(
        head=b"".join(lines),
        boundary=boundary,
        text_open=b'\r\nContent-Type: multipart/alternative;\r\n boundary="'
        + boundary
        + b'"\r\n\r\n--'
        + boundary
        + b"\r\n"
        + part % b"plain",
        html_open=b"\r\n--" + boundary + b"\r\n" + part % b"html",
        close=b"\r\n--" + boundary + b"--\r\n",
        organisation_id=organisation_id,
        domain=from_email.rsplit("@", 1)[-1].lower() if "@" in from_email else "",
    )


def _from_address(payload: Mapping) -> str:
    return _one_line(payload.get("from_email") or settings.DEFAULT_FROM_EMAIL).strip()


def _signer(organisation_id: str, domain: str) -> Callable[[bytes], bytes] | None:
    """The DKIM signer of the organisation for the sending domain (delivery.dkim)."""
    if not organisation_id or not domain:
        return None
    return dkim.signer_for(organisation_id, domain)


def _address_header(name: str, value: str) -> bytes:
    """A From or Reply-To header from "Name <address>" or an address: the display name quoted when it holds
    specials ("Smith, Jones & Co"), RFC 2047 encoded when not ASCII, never a CR or LF."""
    display_name, address = email.utils.parseaddr(_one_line(value))
    if not address:
        raise ValueError(f"{name} has no address: {value!r}")
    # A name that arrives already encoded (formataddr's output for non-ASCII) is decoded, then encoded once.
    display_name = str(make_header(decode_header(display_name))) if "=?" in display_name else display_name
    header = _SMTP_POLICY.header_factory(name, Address(display_name=display_name, addr_spec=address))
    return header.fold(policy=_SMTP_POLICY).encode("ascii")


# --- what changes per message ---------------------------------------------------------------------------------------


def _one_line(value: str) -> str:
    """The value with each line break (CRLF, CR, LF) a space: a header value never ends its line early."""
    return " ".join(value.splitlines()) if ("\r" in value or "\n" in value) else value


def _header_bytes(name: str, value: str) -> bytes:
    """b"\\r\\n" + the header line(s), folded at whitespace to 78 characters where the value allows it."""
    value = _one_line(value)
    if value.isascii() and len(name) + len(value) + 2 <= FOLD_AT:
        return f"\r\n{name}: {value}".encode("ascii")
    return b"\r\n" + _folded(name, value)


def _folded(name: str, value: str) -> bytes:
    if value.isascii():
        # Folding puts a CRLF before one of the value's own spaces, so unfolding gives back exactly the value.
        pieces = f"{name}: {value}".split(" ")
        lines, line = [], pieces[0]
        for piece in pieces[1:]:
            if piece and len(line) + 1 + len(piece) > FOLD_AT and line != pieces[0]:
                lines.append(line)
                line = " " + piece
            else:
                line = f"{line} {piece}"
        lines.append(line)
        if all(len(line) <= LINE_LIMIT for line in lines):
            return "\r\n".join(lines).encode("ascii")
    # Not ASCII, or a word too long for any line: the email package encodes it (RFC 2047) in lines that fit.
    return _SMTP_POLICY.header_factory(name, value).fold(policy=_SMTP_POLICY).rstrip("\r\n").encode("ascii")


def _subject(subject: str) -> bytes:
    subject = _one_line(subject)
    if subject.isascii():
        if len(subject) <= FOLD_AT - len("Subject: "):
            return subject.encode("ascii")
        return _folded("Subject", subject)[len("Subject: ") :]
    return _encoded_words(subject)


# An encoded word "=?utf-8?b?…?=" is 12 characters around its base64; 42 bytes make 56 base64 characters, so
# "Subject: " and one word fit in 78, as does a continuation line (a space and one word).
_WORD_BYTES = 42


def _encoded_words(value: str) -> bytes:
    """RFC 2047 base64 encoded words, each whole characters (a UTF-8 sequence is never split between two), one a
    line: decoders join adjacent encoded words and drop the folding between them (RFC 2047 6.2)."""
    data = value.encode("utf-8")
    words, start = [], 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte: the character goes on
            end -= 1
        words.append(b"=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False) + b"?=")
        start = end
    return b"\r\n ".join(words)


_PLAIN_ADDRESS = re.compile(r"[^\s\"(),:;<>\[\]\\@]+@[^\s\"(),:;<>\[\]\\@]+")


def _to(address: str) -> bytes:
    address = _one_line(address).strip()
    if address.isascii() and _PLAIN_ADDRESS.fullmatch(address):
        return address.encode("ascii")
    return _address_header("To", address)[len("To: ") : -2]


_date_cache: list = [0, b""]


def _date_now() -> bytes:
    """RFC 5322 Date in UTC with its real offset (+0000), worked out once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.format_datetime(datetime.fromtimestamp(now, UTC)).encode("ascii")]
    return _date_cache[1]


def _body(body: str, boundary: bytes) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, encoded body): CR, LF and CRLF all become CRLF; 7bit when the body is ASCII
    without NUL, with no line over 998 octets and without the boundary, else quoted-printable (lines of at most 76,
    every non-ASCII octet and trailing whitespace encoded)."""
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    if body.isascii() and "\0" not in body and not _has_long_line(body):
        data = body.encode("ascii")
        if boundary not in data:
            return _SEVEN_BIT, data.replace(b"\n", b"\r\n")
    return _QUOTED_PRINTABLE, binascii.b2a_qp(body.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def _has_long_line(body: str) -> bool:
    if len(body) <= LINE_LIMIT:
        return False
    start = 0
    while True:
        end = body.find("\n", start)
        if end == -1:
            return len(body) - start > LINE_LIMIT
        if end - start > LINE_LIMIT:
            return True
        start = end + 1
