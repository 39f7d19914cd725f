"""Rendering a message: content + contact + message id (+ the triggering event) → what each channel sends. A pure
function of its inputs (no queries), so bulk sending can call it for every recipient: `Renderer(channel, content,
sender)` once per run (templates compiled, the run's constant parts built), then `.render(message_id, contact,
contact_id, event=…)` per message. `render_message` renders one message that way. The context is the same in
preview, test send and the real send: the contact as a user_360 profile, and for a triggered message the event
built by `trigger_event`."""

from __future__ import annotations

import email.header
import email.utils
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from html import escape, unescape
from typing import Any

import inscriptis
from django.conf import settings
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig
from inscriptis.model.html_document_state import HtmlDocumentState
from inscriptis.model.tag import CustomHtmlTagHandlerMapping
from inscriptis.model.tag.table_tag import table_start_handler

from campaigns.content import links
from campaigns.content.sms import sms_length
from campaigns.content.templates import (
    CLICK_PREFIX,
    TRACK_FUNCTION,
    CompiledParts,
    TemplateProblem,
    compiled,
    compiled_parts,
    event_data,
    render_globals,
)
from campaigns.content.urls_check import UnsafeUrl, check_link_target

SIGNATURE_HEADER = "X-Campaign-Signature"


def trigger_event(event_id: str, event_type: str, properties: Any, occurred_at: str | None) -> dict[str, Any]:
    """What a triggered message's templates see as `event`, in every channel, in preview and in the real send:
    the sender's event id, its type, its properties (keys win over dict methods: `event.properties.items` is the
    event's own list) and when it happened, as ISO 8601 in UTC (like `contact.created_at`)."""
    return {
        "id": event_id,
        "type": event_type,
        "properties": event_data(properties if isinstance(properties, dict) else {}),
        "occurred_at": occurred_at,
    }


@dataclass(frozen=True)
class MessageContext:
    """Everything rendering needs besides the content."""

    message_id: str
    contact: Mapping[str, Any]  # a user_360 profile
    contact_id: str
    organisation_id: str
    organisation_name: str
    postal_address: str
    sender_name: str = ""
    sender_email: str = ""
    reply_to: str = ""
    campaign_name: str = ""
    tracking: bool = True
    webhook_secret: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    event: Mapping[str, Any] | None = None  # a triggered message's event (trigger_event)
    campaign_id: str = ""
    category: str = "marketing"
    triggered: bool = False

    def sender(self) -> Sender:
        return Sender(
            organisation_id=self.organisation_id,
            organisation_name=self.organisation_name,
            postal_address=self.postal_address,
            sender_name=self.sender_name,
            sender_email=self.sender_email,
            reply_to=self.reply_to,
            campaign_name=self.campaign_name,
            tracking=self.tracking,
            webhook_secret=self.webhook_secret,
            campaign_id=self.campaign_id,
            category=self.category,
            triggered=self.triggered,
        )


def _link_start(state: HtmlDocumentState, attrs: dict) -> None:
    href = (attrs.get("href") or "").strip()
    # Template code in an href (a tracked or personalised link, or its stand-in while a template is converted)
    # renders to the URL later; mailto:, tel: and #anchors say nothing in a text part.
    shown = href.startswith(("http://", "https://", "{{", "{%")) or bool(_STAND_INS.match(href))
    state.link_target = href if shown else ""


def _table_start(state: HtmlDocumentState, attrs: dict) -> None:
    state.tags[-1].canvas.flush_inline()  # a table starts on a line of its own, not after an image's alt text
    table_start_handler(state, attrs)


def _link_end(state: HtmlDocumentState) -> None:
    if state.link_target:
        state.tags[-1].write(f" ({state.link_target})")
    state.link_target = ""


# inscriptis lays tables out as columns, keeps image alt text ("[alt]") and drops what is hidden (head, style,
# display:none); links are written "text (url)", as mail clients show them. Its strict profile spaces text as a
# browser does (the relaxed one indents every <div>, and email layouts nest them deep).
_TEXT_CONFIG = ParserConfig(
    css=CSS_PROFILES["strict"],
    display_images=True,
    display_links=True,
    custom_html_tag_handler_mapping=CustomHtmlTagHandlerMapping(
        start_tag_mapping={"a": _link_start, "table": _table_start}, end_tag_mapping={"a": _link_end}
    ),
)


def html_to_text(body: str) -> str:
    text = inscriptis.get_text(body, _TEXT_CONFIG)
    lines = [line.rstrip() for line in text.splitlines()]  # columns are padded with spaces
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


_CODE = re.compile(r"\{%.*?%\}|\{\{.*?\}\}|\{#.*?#\}", re.DOTALL)
_WORD = re.compile(r"[^\W\d_]+")
_LINK = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(["'])(.*?)\1[^>]*>(.*?)</a\s*>""", re.IGNORECASE | re.DOTALL)
_STATEMENT_LINE = re.compile(r"\n+[ \t]*((?:\{%(?:(?!%\}).)*%\}[ \t]*)+)(?=\n|$)")


# Template code stands in the HTML as one private-use character each while it is converted: a table's columns are
# as wide as the text around it (not as its code), and the converter's whitespace rules cannot touch it.
_STAND_IN = 0xF0000  # Supplementary Private Use Area-A (65,534 code points)
_STAND_INS = re.compile("[\U000f0000-\U000ffffd]")


def _without_code(source: str, code: list[str]) -> str | None:
    """The source with each piece of template code (appended to `code`) replaced by its stand-in; None for a
    template that writes such characters itself, or has more pieces than there are stand-ins."""
    if _STAND_INS.search(source):
        return None

    def stand_in(match: re.Match[str]) -> str:
        code.append(match.group(0))
        return chr(_STAND_IN + min(len(code) - 1, 0xFFFD))

    protected = _CODE.sub(stand_in, source)
    return protected if len(code) <= 0xFFFD else None


def _with_code(text: str, code: list[str]) -> str:
    return _STAND_INS.sub(lambda match: code[ord(match.group(0)) - _STAND_IN], text)


def _code_layout(text: str) -> tuple[list[str], list[Counter[str]]]:
    """A template's statements (`{% … %}`) in order, and for each stretch between two statements the expressions
    and words in it (counted, in any order)."""
    statements: list[str] = []
    stretches: list[Counter[str]] = [Counter()]
    end = 0
    for match in _CODE.finditer(text):
        stretches[-1].update(_WORD.findall(unescape(text[end : match.start()])))
        end = match.end()
        code = match.group(0)
        if code.startswith("{%"):
            statements.append(code)
            stretches.append(Counter())
        else:
            stretches[-1][code] += 1
    stretches[-1].update(_WORD.findall(unescape(text[end:])))
    return statements, stretches


def _same_template_logic(source: str, derived: str) -> bool:
    """Whether the text says what the HTML says under the same conditions: every statement kept, as written and in
    order, and nothing moved across one. A table's cells side by side can put one cell's line inside another's
    `{% if %}`, and loops between table rows end up before the table; those templates convert each message instead.
    A link's text comes before its URL in the text, so the source is compared with each link's href moved after
    its text. The source's stretches hold markup too (tag and attribute names): the check is that the text takes
    nothing from elsewhere, not that it keeps everything."""
    statements, stretches = _code_layout(_LINK.sub(r"\3 \2", source))
    derived_statements, derived_stretches = _code_layout(derived)
    return statements == derived_statements and all(
        not (found - given) for found, given in zip(derived_stretches, stretches, strict=True)
    )


@lru_cache(maxsize=512)
def text_template_from_html(source: str) -> str:
    """The text part's template when the marketer left it empty: the HTML template's source (tracked links
    already rewritten, if tracking) turned into text once (its template code passes through as text), then
    rendered per message like any template. Converting every rendered HTML body instead costs more than the rest of
    rendering together. Empty when the conversion does not leave the same template (statements hidden, or moved
    by the layout: _same_template_logic); rendering then converts each body."""
    code: list[str] = []
    protected = _without_code(source, code)
    if protected is None:
        return ""
    derived = _with_code(html_to_text(protected), code)
    if not _same_template_logic(source, derived):
        return ""
    # A statement on a line of its own joins the line before: a block left out leaves no blank lines behind.
    derived = _STATEMENT_LINE.sub(r"\1", derived)
    try:
        compiled(derived, html=False)
    except TemplateProblem:
        return ""
    return derived


_BODY_OPEN = re.compile(r"<body[^>]*>")
_PREHEADER = '<div style="display:none;max-height:0;overflow:hidden">{}</div>'
_PIXEL = '<img src="{}" width="1" height="1" alt="" style="display:none">'


@dataclass(frozen=True)
class Sender:
    """What rendering needs that is the same for every message of a run."""

    organisation_id: str
    organisation_name: str
    postal_address: str
    sender_name: str = ""
    sender_email: str = ""
    reply_to: str = ""
    campaign_name: str = ""
    tracking: bool = True
    webhook_secret: str = ""
    # The email headers mailbox providers group and filter by (List-Id, Feedback-ID, Precedence): none without a
    # campaign id (a render outside any campaign).
    campaign_id: str = ""
    category: str = "marketing"  # or transactional (Campaign.category)
    triggered: bool = False


@dataclass(frozen=True)
class _EmailProgram:
    """An email content compiled for one organisation: everything about it that does not depend on the recipient."""

    parts: CompiledParts  # subject, preheader, [text,] HTML: one render pass per message
    convert_text: bool  # no text template: each rendered body is converted (template code that looks like markup)
    table: links.LinkTable | None  # None without tracking
    footer_always: bool  # the HTML never links to unsubscribe_url itself
    body_open: int | None  # where every rendered body's <body> tag ends, or None: searched per message
    # Some link or image URL is built from template code: each rendered body's URLs are checked (a contact's data
    # must not turn a link into javascript:), the static ones having been checked at save.
    templated_urls: bool = False


# A link target or image source in rendered HTML (autoescaping keeps a value from opening a tag of its own).
_RENDERED_URL = re.compile(
    r"""<(a|area|img)\b[^>]*?(?<![\w-])(?:href|src)\s*=\s*(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL
)


def _rendered_url_problems(body: str, own_base: str) -> list[str]:
    """The rendered body's link and image URLs that the save-time rule refuses; our own (click tracking,
    unsubscribe, preferences, under `own_base`) are ours to trust."""
    from campaigns.content.channels import email_url_problem  # the save-time rule; channels imports templates

    problems = []
    numbers = Counter[str]()  # links and images numbered apart, as the save-time check names them
    for match in _RENDERED_URL.finditer(body):
        kind = "image" if match.group(1).lower() == "img" else "link"
        numbers[kind] += 1
        url = unescape(match.group(3))
        if url.startswith(own_base):
            continue
        problem = email_url_problem(url, image=kind == "image")
        if problem:
            shown = re.sub(r"[\t\n\r]", "", url)  # as a browser reads it ("java\tscript:" is javascript:)
            problems.append(f"{kind} {numbers[kind]} renders to {shown[:60]!r}, which {problem}")
    return problems


@lru_cache(maxsize=64)  # each holds its run's link table (at most LinkTable.MAX_TARGETS parts)
def _email_program(
    subject: str, preheader: str, html_source: str, text: str, tracking: bool, organisation_id: str
) -> _EmailProgram:
    table = links.LinkTable(links.link_scope(organisation_id, html_source)) if tracking else None
    # Links are routed through click tracking inside the template, and their link parts signed, once per run.
    html = links.tracked_template_source(html_source, table) if table else html_source
    compiled(html_source, html=True)  # problems are reported against the marketer's source, not the rewrite
    text = text or text_template_from_html(html)
    sources = ((subject, False), (preheader, False), *(((text, False),) if text else ()), (html, True))
    opening = _BODY_OPEN.search(html)
    # Data before the first <body> tag renders as itself (no template code, no newline to normalise): the tag
    # ends at the same offset in every rendered body.
    static_opening = opening and not re.search(r"[{}\r]", html[: opening.end()])
    return _EmailProgram(
        parts=compiled_parts(sources),
        convert_text=not text,
        table=table,
        footer_always="unsubscribe_url" not in html_source,
        body_open=opening.end() if static_opening else None,
        templated_urls=any("{{" in m.group(3) or "{%" in m.group(3) for m in _RENDERED_URL.finditer(html_source)),
    )


def _one_line(value: str) -> str:
    return " ".join(value.splitlines()).strip() if ("\r" in value or "\n" in value) else value.strip()


def _address_header(name: str, address: str) -> str:
    """The From header "Name <address>": the name quoted when it holds specials ("Smith, Jones & Co"), RFC 2047
    encoded when not ASCII."""
    if not name:
        return address
    try:
        return email.utils.formataddr((name, address), charset="utf-8")
    except UnicodeEncodeError:  # a non-ASCII address: the wire format (delivery.mime) decides how it can go out
        return f'"{email.utils.quote(name)}" <{address}>'


def _campaign_headers(sender: Sender, domain: str) -> dict[str, str]:
    """The headers a campaign's every email carries: List-Id (RFC 2919, one list per campaign), Feedback-ID as
    Gmail's feedback loop reads it (campaign:organisation:category:sender, the sender being the sending domain, whose
    DKIM key signs the mail) and, for marketing, Precedence: bulk (auto-responders do not answer it)."""
    if not sender.campaign_id:
        return {}
    kind = "triggered" if sender.triggered and sender.category == "marketing" else sender.category
    name = _one_line(sender.campaign_name) or sender.campaign_id
    phrase = (
        f'"{email.utils.quote(name)}"' if name.isascii() else email.header.Header(name, "utf-8").encode(maxlinelen=0)
    )
    headers = {
        "List-Id": f"{phrase} <{sender.campaign_id}.{domain}>",
        "Feedback-ID": f"{sender.campaign_id}:{sender.organisation_id}:{kind}:{domain}",
    }
    if sender.category == "marketing":
        headers["Precedence"] = "bulk"
    return headers


def _before_body_end(body: str, html: str) -> str:
    return body.replace("</body>", html + "</body>") if "</body>" in body else body + html


class Renderer:
    """One channel's content rendered for many recipients: templates compiled once (into one pass for an email),
    the context prototype, footer, headers and the signed link parts of the run worked out once, then
    `render(message_id, contact, contact_id, extra, event)` per message — a pure function of those and the
    content."""

    def __init__(self, channel: str, content: Mapping[str, Any], sender: Sender) -> None:
        self.channel = channel
        self.content = content
        self.sender = sender
        self.base = links.site_base()
        self.prototype = {
            **render_globals(),
            "campaign": {"name": sender.campaign_name},
            "organisation": {"name": sender.organisation_name, "postal_address": sender.postal_address},
        }
        self.render = getattr(self, f"_{channel}")
        if channel == "email":
            self._prepare_email()
        elif channel == "webhook":
            self.payload = compiled(content.get("payload_template", "") or "{}", html=False)
        else:
            fields = {"sms": ("body",), "whatsapp": ("body",), "in_app": ("title", "body", "action_url")}[channel]
            self.templates = {name: compiled(content.get(name, ""), html=False) for name in fields}

    def _variables(
        self,
        message_id: str,
        contact: Mapping[str, Any],
        unsubscribe: str,
        preferences: str,
        extra: Mapping | None,
        event: Mapping | None,
    ) -> dict[str, Any]:
        variables = {
            **self.prototype,
            # The sandbox is immutable: a dict profile is passed as is, anything else copied into one.
            "contact": contact if type(contact) is dict else dict(contact),
            "unsubscribe_url": unsubscribe,
            "preferences_url": preferences,
            "message_id": message_id,
        }
        if event is not None:
            variables["event"] = event
        if extra:
            variables.update(extra)
        return variables

    # Email

    def _prepare_email(self) -> None:
        content, sender = self.content, self.sender
        self.program = _email_program(
            content.get("subject", ""),
            content.get("preheader", ""),
            content.get("html", ""),
            content.get("text", ""),
            sender.tracking,
            sender.organisation_id,
        )
        escaped_base = escape(self.base, quote=True)
        self.unsubscribe_base = f"{self.base}/u/"
        self.preferences_base = f"{self.base}/p/"
        self.escaped_unsubscribe_base = f"{escaped_base}/u/"
        self.click_base = f"{self.base}/t/c/"
        self.own_base = f"{self.base}/"
        self.pixel_base = f"{escaped_base}/t/o/"
        address = escape(sender.postal_address).replace("\n", "<br>")
        self.footer_head = (
            '<div class="cs-footer" style="margin-top:24px;font-size:12px;color:#667085;text-align:center">'
            f'<p>{escape(sender.organisation_name)}<br>{address}</p><p><a href="'
        )
        self.footer_tail = '">Unsubscribe</a></p></div>'
        self.text_footer = f"\n\n--\n{sender.organisation_name}\n{sender.postal_address}\nUnsubscribe: "
        # A CR or LF in a name or address would start a header of the marketer's making.
        from_name = _one_line(content.get("from_name") or sender.sender_name)
        self.from_email = _one_line(content.get("from_email") or sender.sender_email)
        self.from_header = _address_header(from_name, self.from_email)
        self.reply_to = _one_line(content.get("reply_to") or sender.reply_to)
        self.domain = (self.from_email.rsplit("@", 1)[-1] if "@" in self.from_email else "localhost").lower()
        self.constant_headers = _campaign_headers(sender, self.domain)
        # RFC 2369's mailto only where mail to it is read (delivery.inbound_mail); the https URI alone is still
        # RFC 8058 one-click.
        inbound = settings.INBOUND_MAIL_DOMAIN
        self.mailto = f", <mailto:unsubscribe@{inbound}?subject=unsubscribe%20" if inbound else ""

    def _email(
        self,
        message_id: str,
        contact: Mapping[str, Any],
        contact_id: str,
        extra: Mapping | None = None,
        event: Mapping | None = None,
    ) -> dict[str, Any]:
        sender, program = self.sender, self.program
        issued = str(int(time.time()))
        token = links.sign("unsubscribe", sender.organisation_id, contact_id, message_id, issued)
        unsubscribe = self.unsubscribe_base + token
        preferences = self.preferences_base + links.sign("preferences", sender.organisation_id, contact_id, issued)
        variables = self._variables(message_id, contact, unsubscribe, preferences, extra, event)
        if program.table:
            # One signature per message: every click URL is this message part plus a link part signed per run.
            message_part = program.table.message_part(message_id)
            click_prefix = f"{self.click_base}{message_part}."
            variables[CLICK_PREFIX] = click_prefix
            variables[TRACK_FUNCTION] = partial(program.table.url, click_prefix, (unsubscribe, preferences))
        rendered = program.parts.render_variables(variables)
        subject, preheader, body = rendered[0].strip(), rendered[1].strip(), rendered[-1]
        if program.templated_urls:
            problems = _rendered_url_problems(body, self.own_base)
            if problems:
                raise TemplateProblem("; ".join(problems))
        footer = ""
        if program.footer_always or (sender.postal_address and sender.postal_address not in body):
            # Every marketing email carries an unsubscribe link and the sender's postal address (CAN-SPAM, GDPR).
            # The token is base64url: only the configured base needs escaping, once per run.
            footer = f"{self.footer_head}{self.escaped_unsubscribe_base}{token}{self.footer_tail}"
        if preheader:
            # The preview text mail clients show after the subject: first in the body, hidden when opened.
            hidden = _PREHEADER.format(escape(preheader))
            end = program.body_open
            if end is None:
                opening = _BODY_OPEN.search(body)
                end = opening.end() if opening else 0
            body = body[:end] + hidden + body[end:]
        if program.convert_text:
            if footer:
                body, footer = _before_body_end(body, footer), ""
            text = html_to_text(body)
        else:
            text = rendered[2]
        if "unsubscribe" not in text.lower() or unsubscribe not in text:
            text = f"{text}{self.text_footer}{unsubscribe}".strip()
        if program.table:
            footer += _PIXEL.format(f"{self.pixel_base}{message_part}.gif")
        if footer:
            body = _before_body_end(body, footer)
        return {
            "subject": subject,
            "preheader": preheader,
            "html": body,
            "text": text,
            "from": self.from_header,
            "from_email": self.from_email,
            "reply_to": self.reply_to,
            "headers": {
                # RFC 2369 + RFC 8058: one-click unsubscribe from the mail client, by HTTPS POST or by mail.
                "List-Unsubscribe": f"<{unsubscribe}>{self.mailto}{token}>" if self.mailto else f"<{unsubscribe}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                # Unique beyond this installation by its random part; receipts read the message id back from it.
                "Message-ID": f"<{message_id}.{secrets.token_hex(8)}@{self.domain}>",
                "X-Campaign-Message-Id": message_id,
                **self.constant_headers,
            },
        }

    # The other channels

    def _sms(
        self,
        message_id: str,
        contact: Mapping[str, Any],
        contact_id: str,
        extra: Mapping | None = None,
        event: Mapping | None = None,
    ) -> dict[str, Any]:
        preferences = links.preferences_url(self.sender.organisation_id, contact_id)
        variables = self._variables(message_id, contact, "", preferences, extra, event)
        body = self.templates["body"].render_variables(variables).strip()
        return {"body": body, "length": sms_length(body).as_dict()}

    def _whatsapp(
        self,
        message_id: str,
        contact: Mapping[str, Any],
        contact_id: str,
        extra: Mapping | None = None,
        event: Mapping | None = None,
    ) -> dict[str, Any]:
        variables = self._variables(message_id, contact, "", "", extra, event)
        body = self.templates["body"].render_variables(variables).strip()
        return {
            "body": body,
            "characters": len(body),
            "template_name": self.content.get("template_name", ""),
            "template_language": self.content.get("template_language", ""),
        }

    def _in_app(
        self,
        message_id: str,
        contact: Mapping[str, Any],
        contact_id: str,
        extra: Mapping | None = None,
        event: Mapping | None = None,
    ) -> dict[str, Any]:
        variables = self._variables(message_id, contact, "", "", extra, event)
        rendered = {name: template.render_variables(variables).strip() for name, template in self.templates.items()}
        if rendered.get("action_url"):
            # Checked as rendered: a template (or a contact's data) can make any URL, javascript: included.
            try:
                check_link_target(rendered["action_url"], schemes=("https", "http"))
            except UnsafeUrl as exc:
                raise TemplateProblem(f"action_url: {exc}") from exc
        return {**rendered, "icon_url": self.content.get("icon_url", "")}

    def _webhook(
        self,
        message_id: str,
        contact: Mapping[str, Any],
        contact_id: str,
        extra: Mapping | None = None,
        event: Mapping | None = None,
    ) -> dict[str, Any]:
        payload = self.payload.render_variables(self._variables(message_id, contact, "", "", extra, event))
        problems = []
        try:
            json.loads(payload)
        except ValueError as exc:
            problems.append(f"The rendered payload is not JSON: {exc}")
        body = payload.encode()
        headers = {"Content-Type": "application/json", **(self.content.get("headers") or {})}
        headers[SIGNATURE_HEADER] = webhook_signature(self.sender.webhook_secret, body)
        headers["X-Campaign-Message-Id"] = message_id
        return {
            "method": self.content.get("method") or "POST",
            "url": self.content.get("url", ""),
            "headers": headers,
            "body": payload,
            "problems": problems,
        }


def webhook_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


CHANNELS = ("email", "sms", "whatsapp", "in_app", "webhook")


def render_message(channel: str, content: Mapping[str, Any], ctx: MessageContext) -> dict[str, Any]:
    """One message. Bulk sending makes one Renderer per content and run instead and calls it per recipient."""
    if channel not in CHANNELS:
        raise KeyError(channel)
    renderer = Renderer(channel, content, ctx.sender())
    return renderer.render(ctx.message_id, ctx.contact, ctx.contact_id, ctx.extra, ctx.event)
