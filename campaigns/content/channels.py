"""Per-channel content: what each channel's content holds, and the checks it must pass.

Drafts may be incomplete; syntax, limits and unsafe values are refused on every save, and required parts are
checked when the campaign is launched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email

from campaigns.content.media import is_own_media_url
from campaigns.content.sms import MAX_PARTS, describe_length, sms_length
from campaigns.content.templates import TemplateProblem, compiled, render_cost_problem, template_warnings
from campaigns.content.urls_check import UnsafeUrl, check_url_shape

WHATSAPP_MAX = 1600
HTTP_METHODS = ("POST", "PUT", "PATCH", "GET", "DELETE")
FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "x-campaign-signature"}
TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(?:_[A-Z]{2})?$")

# field -> (max length, is a template, rendered as HTML)
FIELDS: dict[str, dict[str, tuple[int, bool, bool]]] = {
    "email": {
        "subject": (998, True, False),
        "preheader": (255, True, False),
        "html": (500_000, True, True),
        "text": (200_000, True, False),
        "from_name": (200, False, False),
        "from_email": (254, False, False),
        "reply_to": (254, False, False),
    },
    "sms": {"body": (1600, True, False), "allow_multipart": (0, False, False)},
    "whatsapp": {
        "body": (4096, True, False),
        "template_name": (512, False, False),
        "template_language": (10, False, False),
    },
    "in_app": {
        "title": (200, True, False),
        "body": (2000, True, False),
        "action_url": (2048, True, False),
        "icon_url": (2048, False, False),
    },
    "webhook": {
        "url": (2048, False, False),
        "method": (10, False, False),
        "headers": (0, False, False),
        "payload_template": (100_000, True, False),
    },
}
REQUIRED = {
    "email": ("subject", "html"),
    "sms": ("body",),
    "whatsapp": (),  # body, or an approved template name
    "in_app": ("title", "body"),
    "webhook": ("url",),
}


def content_problems(
    channel: str,
    content: Mapping[str, Any],
    *,
    allowed_senders: Iterable[str] = (),
    for_launch: bool = False,
    sms_multipart: bool = False,
) -> list[str]:
    """Everything wrong with one channel's content, as "<field>: <problem>" strings."""
    problems: list[str] = []
    spec = FIELDS[channel]
    unknown = sorted(set(content) - set(spec))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; {channel} takes {', '.join(spec)}")
    for name, (limit, is_template, html) in spec.items():
        value = content.get(name)
        if value in (None, ""):
            continue
        if name in ("headers", "allow_multipart"):
            continue
        if not isinstance(value, str):
            problems.append(f"{name}: must be text")
            continue
        if len(value) > limit:
            problems.append(f"{name}: at most {limit:,} characters")
        if is_template:
            try:
                compiled(value, html=html)
            except TemplateProblem as exc:
                problems.append(f"{name}: {exc}")
            else:
                # Rendered once for a sample message: a template over the render budget is refused now, not at
                # every message it would fail.
                costly = render_cost_problem(value, html=html)
                if costly:
                    problems.append(f"{name}: {costly}")
    problems.extend(_channel_rules(channel, content, allowed_senders, sms_multipart=sms_multipart))
    if for_launch:
        missing = [name for name in REQUIRED[channel] if not content.get(name)]
        if channel == "whatsapp" and not (content.get("body") or content.get("template_name")):
            missing.append("body (or template_name)")
        problems.extend(f"{name}: required before launch" for name in missing)
    return problems


def _channel_rules(
    channel: str, content: Mapping[str, Any], allowed_senders: Iterable[str], *, sms_multipart: bool = False
) -> list[str]:
    problems: list[str] = []
    if channel == "email":
        for name in ("from_email", "reply_to"):
            value = content.get(name)
            if value:
                try:
                    validate_email(value)
                except DjangoValidationError:
                    problems.append(f"{name}: not an email address")
        sender = (content.get("from_email") or "").lower()
        senders = {s.lower() for s in allowed_senders if s}
        if sender and sender not in senders:
            problems.append(
                f"from_email: {sender} is not one of the organisation's verified senders"
                + (f" ({', '.join(sorted(senders))})" if senders else "")
            )
        html = content.get("html")
        if isinstance(html, str) and html:
            problems.extend(email_link_problems(html))
    elif channel == "sms":
        body = content.get("body") or ""
        multipart = content.get("allow_multipart", False)
        if not isinstance(multipart, bool):
            problems.append("allow_multipart: true or false")
        # The campaign's switch allows it for every variant; a variant's own flag for that variant only.
        multipart = multipart is True or sms_multipart
        # Counted exactly as a sender splits it (campaigns.content.sms); the send checks each rendered message
        # with the same rule, since personalised values can change the length and the encoding.
        length = sms_length(body)
        if length.segments > 1 and not multipart:
            problems.append(
                f"body: {length.units} {length.encoding} units is more than one SMS (160 GSM-7 or 70 UCS-2),"
                f" {describe_length(length.as_dict())}; shorten it or allow multi-part messages"
            )
        elif length.segments > MAX_PARTS:
            problems.append(f"body: {length.segments} parts; at most {MAX_PARTS} ({length.encoding})")
    elif channel == "whatsapp":
        body = content.get("body") or ""
        if len(body) > WHATSAPP_MAX:
            problems.append(f"body: {len(body)} characters; WhatsApp allows {WHATSAPP_MAX}")
        name, language = content.get("template_name"), content.get("template_language")
        if name and not TEMPLATE_NAME.match(name):
            problems.append("template_name: lowercase letters, digits and underscores")
        if name and not language:
            problems.append("template_language: required with a template, e.g. en or pt_BR")
        if language and not LANGUAGE.match(language):
            problems.append("template_language: a language code like en or pt_BR")
    elif channel == "in_app":
        for name in ("action_url", "icon_url"):
            value = content.get(name)
            if value and "{" not in value and not (name == "icon_url" and is_own_media_url(value)):
                try:
                    check_url_shape(value, schemes=("https", "http") if name == "action_url" else ("https",))
                except UnsafeUrl as exc:
                    problems.append(f"{name}: {exc}")
    elif channel == "webhook":
        problems.extend(_webhook_rules(content))
    return problems


LINK_SCHEMES = ("https", "http", "mailto", "tel")
IMAGE_SCHEMES = ("https", "http")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
# What a browser ignores in a URL (tabs and newlines anywhere, controls and spaces around it): "java\tscript:" is
# javascript:.
_URL_IGNORED = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(chr(code) for code in range(0x21))


class _UrlAttributes(HTMLParser):
    """Every link target (href) and image source (img src) of an HTML template, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "href" and tag in ("a", "area"):
                self.links.append(value or "")
            elif name == "src" and tag == "img":
                self.images.append(value or "")


def _url_problem(url: str, *, schemes: tuple[str, ...], image: bool) -> str | None:
    """What is wrong with one link target or image source, or None. Template code renders later (a personalised
    link is tracked, and so checked, when it renders), but a literal start before it must be a scheme we allow."""
    url = _URL_IGNORED.sub("", url).strip(_C0_AND_SPACE)
    code = min((i for i in (url.find("{{"), url.find("{%")) if i >= 0), default=-1)
    literal = url if code < 0 else url[:code]
    if not image and url.startswith("#"):
        return None  # a jump inside the email
    if code == 0:
        return None
    scheme_match = _SCHEME.match(literal)
    scheme = scheme_match.group(1).lower() if scheme_match else ""
    allowed = " or ".join(f"{s}:" if s in ("mailto", "tel") else f"{s}://" for s in schemes)
    if image and scheme in ("cid", "data") and (scheme == "cid" or literal.lower().startswith("data:image/")):
        return None  # an inline attachment, an inline picture
    if not scheme:
        if not url:
            return "is empty"
        return f"is relative: an email needs an absolute URL ({allowed})"
    if scheme not in schemes:
        return f"{scheme}: is not allowed; use {allowed}" + ("" if image else " (or #anchor)")
    if scheme in ("mailto", "tel"):
        return None if literal[len(scheme) + 1 :].strip() or code > 0 else f"{scheme}: with nothing after it"
    if code > 0:
        return None
    try:
        check_url_shape(url, schemes=(scheme,))
    except UnsafeUrl as exc:
        return str(exc)
    except ValueError:  # urlsplit's own refusal, e.g. an unclosed [IPv6 host
        return "is not a valid URL"
    return None


def email_url_problem(url: str, *, image: bool) -> str | None:
    """What is wrong with one rendered link target (or image source, `image`) of an email, or None: the rule of the
    save-time check's scheme rule, applied at send to URLs built from template code: what the recipient's mail
    client would run or open as something other than a web page, mail or phone link (javascript:, data:, file:…)
    fails the message. A URL that renders empty or relative (a contact without the attribute) is a broken link at
    worst; a web link's host is the recipient's browser's business, as a tracked link's redirect would be."""
    cleaned = _URL_IGNORED.sub("", url).strip(_C0_AND_SPACE)
    scheme_match = _SCHEME.match(cleaned)
    if not scheme_match:
        return None
    scheme = scheme_match.group(1).lower()
    if scheme in (IMAGE_SCHEMES if image else LINK_SCHEMES):
        return None
    if image and (scheme == "cid" or cleaned.lower().startswith("data:image/")):
        return None
    return _url_problem(url, schemes=IMAGE_SCHEMES if image else LINK_SCHEMES, image=image)


def email_link_problems(html: str) -> list[str]:
    """Every link (href) and image (src) of an email's HTML checked as in-app and webhook URLs are: absolute
    http(s) with a host and no credentials or internal address; links may also be mailto:, tel: or #anchors,
    images inline (cid:, data:image/). javascript:, data: and other schemes, relative and malformed URLs are refused,
    each named by its place in the HTML."""
    found = _UrlAttributes()
    found.feed(html)
    found.close()
    problems = []
    for kind, urls, schemes in (("link", found.links, LINK_SCHEMES), ("image", found.images, IMAGE_SCHEMES)):
        for number, url in enumerate(urls, 1):
            problem = _url_problem(url, schemes=schemes, image=kind == "image")
            if problem:
                shown = " ".join(url.split())
                shown = shown if len(shown) <= 60 else shown[:57] + "…"
                problems.append(f"html: {kind} {number} ({shown}) {problem}")
    return problems


def _webhook_rules(content: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    url = content.get("url")
    if url:
        try:
            check_url_shape(url)
        except UnsafeUrl as exc:
            problems.append(f"url: {exc}")
    method = content.get("method") or "POST"
    if method not in HTTP_METHODS:
        problems.append(f"method: one of {', '.join(HTTP_METHODS)}")
    headers = content.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        problems.append("headers: an object of header names to text values")
    else:
        for name, value in headers.items():
            if name.lower() in FORBIDDEN_HEADERS or not re.match(r"^[A-Za-z0-9-]{1,100}$", name):
                problems.append(f"headers: {name!r} cannot be set")
            if "\n" in value or "\r" in value or len(value) > 4000:
                problems.append(f"headers: {name!r} has an invalid value")
    return problems


def content_warnings(
    channel: str,
    content: Mapping[str, Any],
    *,
    attribute_names: frozenset[str],
    event_type: str = "",
    event_properties: frozenset[str] | None = None,
) -> list[str]:
    """Names the channel's templates use that no message will provide (campaigns.content.names gives a
    campaign's arguments)."""
    warnings: list[str] = []
    for name, (_, is_template, html) in FIELDS[channel].items():
        value = content.get(name)
        if is_template and isinstance(value, str) and value:
            try:
                warnings.extend(
                    f"{channel}.{name}: {w}"
                    for w in template_warnings(
                        value,
                        html=html,
                        attribute_names=attribute_names,
                        event_type=event_type,
                        event_properties=event_properties,
                    )
                )
            except TemplateProblem:
                continue  # reported as a problem elsewhere
    return warnings
