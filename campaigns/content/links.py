"""Signed links carried by every message: click tracking, open pixel, unsubscribe and preference centre.

Every signature is an HMAC-SHA256 truncated to 16 bytes, keyed from SECRET_KEY with one key per purpose.

A click token is two signed halves, `<message part>.<link part>`:
- the message part `<message id>.<scope>.<signature>` is signed once per message (it is also the open pixel's
  token);
- the link part `<target URL>.<signature>` is signed once per run for each target, over the scope and the target.
The scope (9 bytes) names the organisation and template the message was rendered from, and both signatures cover
it: a link part only pairs with message parts of the same scope. The redirect goes only to the URL inside a valid
link part, so the endpoint is not an open redirect. Tokens issued before this scheme (`<message id + target>.
<signature>`, one signature per link and message) still verify.

Unsubscribe and preference tokens carry their issue time and stay valid for 90 days (CAN-SPAM asks for 30).
Tokens are compact (no JSON, no compression) because bulk sending signs some for every message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
import time
from functools import lru_cache
from typing import Any

from django.conf import settings

from campaigns.content.templates import CLICK_PREFIX, TRACK_FILTER

TOKEN_DAYS = 90
_SIGNATURE_BYTES = 16
SCOPE_BYTES = 9


class BadToken(ValueError):
    pass


@lru_cache(maxsize=16)
def _key(purpose: str) -> bytes:
    return hmac.new(settings.SECRET_KEY.encode(), f"campaign-service.links.{purpose}".encode(), hashlib.sha256).digest()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # binascii directly: base64.urlsafe_b64encode's Python wrapper costs more than the encoding itself.
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_PADS: dict[str, tuple[Any, Any]] = {}


def _mac(purpose: str, payload: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) truncated, from the key's inner and outer hash states computed once per purpose:
    the same bytes as hmac.digest at a third of its cost, which sets the key up again on every call."""
    pads = _PADS.get(purpose)
    if pads is None:
        key = _key(purpose).ljust(64, b"\0")  # 32 bytes, under SHA-256's 64-byte block: padded, not hashed
        pads = _PADS[purpose] = (
            hashlib.sha256(bytes(b ^ 0x36 for b in key)),
            hashlib.sha256(bytes(b ^ 0x5C for b in key)),
        )
    inner = pads[0].copy()
    inner.update(payload)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()[:_SIGNATURE_BYTES]


def sign(purpose: str, *fields: str) -> str:
    payload = "\n".join(fields).encode()
    return f"{_b64(payload)}.{_b64(_mac(purpose, payload))}"


def unsign(purpose: str, token: str, *, count: int) -> list[str]:
    try:
        encoded, signature = token.split(".", 1)
        payload = _unb64(encoded)
        given = _unb64(signature)
    except (ValueError, TypeError) as exc:
        raise BadToken("malformed token") from exc
    if not hmac.compare_digest(given, _mac(purpose, payload)):
        raise BadToken("bad signature")
    fields = payload.decode("utf-8", "strict").split("\n")
    if len(fields) != count:
        raise BadToken("wrong shape")
    return fields


def site_base() -> str:
    return settings.SITE_URL.rstrip("/")


def link_scope(organisation_id: str, template: str) -> bytes:
    """What a message's click links are bound to: its organisation and template (a pure function of both, so a
    run's messages share it and rendering stays a pure function of its inputs)."""
    return hashlib.blake2b(f"{organisation_id}\n{template}".encode(), digest_size=SCOPE_BYTES).digest()


def message_token(message_id: str, scope: bytes, *, scope_part: str = "") -> str:
    """The message half of every click token of a message, and its open pixel's token (`scope_part`: the
    scope's encoding, when the caller keeps it for a run)."""
    payload = message_id.encode()
    return f"{_b64(payload)}.{scope_part or _b64(scope)}.{_b64(_mac('message', scope + payload))}"


def link_token(scope: bytes, target: str) -> str:
    """The link half of a click token: signed once per run for each target, whoever the message goes to."""
    payload = target.encode()
    return f"{_b64(payload)}.{_b64(_mac('click-link', scope + payload))}"


def click_url(message_id: str, target: str, *, scope: bytes = bytes(SCOPE_BYTES)) -> str:
    return f"{site_base()}/t/c/{message_token(message_id, scope)}.{link_token(scope, target)}"


def open_url(message_id: str, *, scope: bytes = bytes(SCOPE_BYTES)) -> str:
    return f"{site_base()}/t/o/{message_token(message_id, scope)}.gif"


def unsubscribe_token(organisation_id: str, contact_id: str, message_id: str = "") -> str:
    return sign("unsubscribe", organisation_id, contact_id, message_id, str(int(time.time())))


def unsubscribe_url(organisation_id: str, contact_id: str, message_id: str = "", *, token: str = "") -> str:
    return f"{site_base()}/u/{token or unsubscribe_token(organisation_id, contact_id, message_id)}"


def preferences_url(organisation_id: str, contact_id: str) -> str:
    return f"{site_base()}/p/{sign('preferences', organisation_id, contact_id, str(int(time.time())))}"


def _verified(purpose: str, scope: bytes, encoded: str, signature: str) -> str:
    try:
        payload, given = _unb64(encoded), _unb64(signature)
    except ValueError as exc:  # binascii.Error
        raise BadToken("malformed token") from exc
    if not hmac.compare_digest(given, _mac(purpose, scope + payload)):
        raise BadToken("bad signature")
    try:
        return payload.decode("utf-8", "strict")
    except UnicodeDecodeError as exc:
        raise BadToken("malformed token") from exc


def _read_message_part(parts: list[str]) -> tuple[str, bytes]:
    try:
        scope = _unb64(parts[1])
    except ValueError as exc:
        raise BadToken("malformed token") from exc
    if len(scope) != SCOPE_BYTES:
        raise BadToken("malformed token")
    return _verified("message", scope, parts[0], parts[2]), scope


def read_click(token: str) -> tuple[str, str]:
    """(message id, target) of a valid click token: both halves signed, for the same scope."""
    parts = token.split(".")
    if len(parts) == 2:  # issued before the two-part scheme: one signature over message id and target
        message_id, target = unsign("click", token, count=2)
        return message_id, target
    if len(parts) != 5:
        raise BadToken("malformed token")
    message_id, scope = _read_message_part(parts[:3])
    return message_id, _verified("click-link", scope, parts[3], parts[4])


def read_open(token: str) -> str:
    """The message id of a valid open pixel token."""
    parts = token.split(".")
    if len(parts) == 2:  # issued before the two-part scheme
        return unsign("open", token, count=1)[0]
    if len(parts) != 3:
        raise BadToken("malformed token")
    return _read_message_part(parts)[0]


def read_unsubscribe(token: str, *, now: float | None = None) -> tuple[str, str, str]:
    organisation_id, contact_id, message_id, issued = unsign("unsubscribe", token, count=4)
    if (now or time.time()) - int(issued) > TOKEN_DAYS * 86400:
        raise BadToken("expired")
    return organisation_id, contact_id, message_id


class LinkTable:
    """A run's signed link parts, one per target: the link half of every click token is signed once per run."""

    MAX_TARGETS = 2_000  # personalised targets differ per recipient: bound the memory, not the correctness

    def __init__(self, scope: bytes) -> None:
        self.scope = scope
        self.scope_part = _b64(scope)
        self.parts: dict[str, str] = {}

    def message_part(self, message_id: str) -> str:
        return message_token(message_id, self.scope, scope_part=self.scope_part)

    def part(self, target: str) -> str:
        part = self.parts.get(target)
        if part is None:
            if len(self.parts) >= self.MAX_TARGETS:
                self.parts.clear()
            part = self.parts[target] = link_token(self.scope, target)
        return part

    def url(self, prefix: str, keep: tuple[str, ...], target: str) -> str:
        """The click URL of `target` for the message whose click URLs start with `prefix`; our own links in
        `keep` (unsubscribe, preferences) and non-web links stay as they are."""
        target = target.strip()
        if target in keep or not target.lower().startswith(("http://", "https://")):
            return target
        return prefix + self.part(target)


_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_OWN_LINK = re.compile(r"\{\{\s*(?:unsubscribe_url|preferences_url)\s*\}\}")


def tracked_template_source(source: str, table: LinkTable) -> str:
    """The HTML template with every link routed through click tracking, rewritten once per run instead of once per
    message: a static http(s) href becomes `{{ <CLICK_PREFIX> }}<its signed link part>` (the message's own prefix,
    then the part signed now), an href built from template code is wrapped in `{% filter <TRACK_FILTER> %}…{%
    endfilter %}` (signed when it renders, once per target in the run); our own unsubscribe and preference links
    and anything else stay. Both names are campaigns.content.templates' unguessable internal ones: a marketer's
    template cannot reach them."""

    def replace(match: re.Match[str]) -> str:
        prefix, quote, raw = match.groups()
        if "{{" in raw or "{%" in raw:
            if _OWN_LINK.fullmatch(raw.strip()):
                return match.group(0)
            return f"{prefix}{quote}{{% filter {TRACK_FILTER} %}}{raw}{{% endfilter %}}{quote}"
        target = html.unescape(raw).strip()
        if not target.lower().startswith(("http://", "https://")):
            return match.group(0)
        # A link part is base64url and dots: nothing in it is template syntax or needs escaping in an attribute.
        return f"{prefix}{quote}{{{{ {CLICK_PREFIX} }}}}{table.part(target)}{quote}"

    return _HREF.sub(replace, source)
