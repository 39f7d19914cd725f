"""Rendering a message: content + contact + message id → what each channel sends. A pure function of its inputs
(no queries), so bulk sending can call it for every recipient with templates compiled once per run."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from html import escape
from html.parser import HTMLParser
from typing import Any

from campaigns.content import links
from campaigns.content.sms import sms_length
from campaigns.content.templates import TemplateProblem, compiled

SIGNATURE_HEADER = "X-Campaign-Signature"


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

    def template_context(self, unsubscribe: str, preferences: str) -> dict[str, Any]:
        return {
            "contact": dict(self.contact),
            "campaign": {"name": self.campaign_name},
            "organisation": {"name": self.organisation_name, "postal_address": self.postal_address},
            "unsubscribe_url": unsubscribe,
            "preferences_url": preferences,
            "message_id": self.message_id,
            **self.extra,
        }


class _TextFromHtml(HTMLParser):
    BLOCKS = {"p", "div", "br", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "table", "section"}
    VOID = {"br", "img", "hr", "meta", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.href: str | None = None
        self.skip = 0
        self.hidden_tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        hidden = "display:none" in (dict(attrs).get("style") or "").replace(" ", "")
        if tag in ("style", "script", "head", "title") or (hidden and tag not in self.VOID):
            self.skip += 1
            self.hidden_tags.append(tag)
        if tag in self.BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag == "a":
            self.href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if self.hidden_tags and self.hidden_tags[-1] == tag:
            self.hidden_tags.pop()
            self.skip = max(0, self.skip - 1)
        # Template code in an href (a tracked or personalised link) renders to the URL later.
        if tag == "a" and self.href and self.href.startswith(("http://", "https://", "{{", "{%")):
            self.parts.append(f" ({self.href})")
            self.href = None
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(body: str) -> str:
    parser = _TextFromHtml()
    parser.feed(body)
    text = "".join(parser.parts)
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


@lru_cache(maxsize=512)
def text_template_from_html(source: str, *, tracked: bool = False) -> str:
    """The text part's template when the marketer left it empty: the HTML template's source turned into text once
    (its template code passes through as text), then rendered per message like any template. Converting every
    rendered HTML body instead costs more than the rest of rendering together. Empty when the conversion does not
    leave a usable template (template code that looks like markup); rendering then converts each body."""
    derived = html_to_text(links.tracked_template_source(source) if tracked else source)
    try:
        compiled(derived, html=False)
    except TemplateProblem:
        return ""
    return derived


def _footer_html(unsubscribe: str, postal_address: str, organisation_name: str) -> str:
    address = escape(postal_address).replace("\n", "<br>")
    return (
        '<div class="cs-footer" style="margin-top:24px;font-size:12px;color:#667085;text-align:center">'
        f"<p>{escape(organisation_name)}<br>{address}</p>"
        f'<p><a href="{escape(unsubscribe, quote=True)}">Unsubscribe</a></p></div>'
    )


def render_email(content: Mapping[str, Any], ctx: MessageContext) -> dict[str, Any]:
    token = links.unsubscribe_token(ctx.organisation_id, ctx.contact_id, ctx.message_id)
    unsubscribe = links.unsubscribe_url(ctx.organisation_id, ctx.contact_id, ctx.message_id, token=token)
    preferences = links.preferences_url(ctx.organisation_id, ctx.contact_id)
    variables = ctx.template_context(unsubscribe, preferences)
    subject = compiled(content.get("subject", ""), html=False).render(variables).strip()
    preheader = compiled(content.get("preheader", ""), html=False).render(variables).strip()
    html_source = content.get("html", "")
    keep = frozenset({unsubscribe, preferences})
    if ctx.tracking:
        # Links are routed through click tracking inside the template (rewritten once per template).
        track = links.tracker(ctx.message_id, keep)
        body = compiled(links.tracked_template_source(html_source), html=True).render(
            {**variables, "cs_link": track, "cs_track": track}
        )
    else:
        body = compiled(html_source, html=True).render(variables)
    if "unsubscribe_url" not in html_source or (ctx.postal_address and ctx.postal_address not in body):
        # Every marketing email carries an unsubscribe link and the sender's postal address (CAN-SPAM, GDPR).
        footer = _footer_html(unsubscribe, ctx.postal_address, ctx.organisation_name)
        body = body.replace("</body>", footer + "</body>") if "</body>" in body else body + footer
    if preheader:
        # The preview text mail clients show after the subject: first in the body, hidden when opened.
        hidden = f'<div style="display:none;max-height:0;overflow:hidden">{escape(preheader)}</div>'
        opening = re.search(r"<body[^>]*>", body)
        body = body[: opening.end()] + hidden + body[opening.end() :] if opening else hidden + body
    if content.get("text"):
        text = compiled(content["text"], html=False).render(variables)
    elif derived := text_template_from_html(html_source, tracked=ctx.tracking):
        track_vars = {"cs_link": track, "cs_track": track} if ctx.tracking else {}
        text = compiled(derived, html=False).render({**variables, **track_vars})
    else:
        text = html_to_text(body)
    if "unsubscribe" not in text.lower() or unsubscribe not in text:
        text = f"{text}\n\n--\n{ctx.organisation_name}\n{ctx.postal_address}\nUnsubscribe: {unsubscribe}".strip()
    if ctx.tracking:
        pixel_url = escape(links.open_url(ctx.message_id), quote=True)
        pixel = f'<img src="{pixel_url}" width="1" height="1" alt="" style="display:none">'
        body = body.replace("</body>", pixel + "</body>") if "</body>" in body else body + pixel
    from_name = content.get("from_name") or ctx.sender_name
    from_email = content.get("from_email") or ctx.sender_email
    domain = (from_email.rsplit("@", 1)[-1] if "@" in from_email else "localhost").lower()
    headers = {
        # RFC 2369 + RFC 8058: one-click unsubscribe from the mail client, by HTTPS POST or by mail.
        "List-Unsubscribe": f"<{unsubscribe}>, <mailto:unsubscribe@{domain}?subject=unsubscribe%20{token}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "Message-ID": f"<{ctx.message_id}@{domain}>",
        "X-Campaign-Message-Id": ctx.message_id,
    }
    return {
        "subject": subject,
        "preheader": preheader,
        "html": body,
        "text": text,
        "from": f"{from_name} <{from_email}>" if from_name else from_email,
        "from_email": from_email,
        "reply_to": content.get("reply_to") or ctx.reply_to,
        "headers": headers,
    }


def render_sms(content: Mapping[str, Any], ctx: MessageContext) -> dict[str, Any]:
    variables = ctx.template_context("", links.preferences_url(ctx.organisation_id, ctx.contact_id))
    body = compiled(content.get("body", ""), html=False).render(variables).strip()
    return {"body": body, "length": sms_length(body).as_dict()}


def render_whatsapp(content: Mapping[str, Any], ctx: MessageContext) -> dict[str, Any]:
    variables = ctx.template_context("", "")
    body = compiled(content.get("body", ""), html=False).render(variables).strip()
    return {
        "body": body,
        "characters": len(body),
        "template_name": content.get("template_name", ""),
        "template_language": content.get("template_language", ""),
    }


def render_in_app(content: Mapping[str, Any], ctx: MessageContext) -> dict[str, Any]:
    variables = ctx.template_context("", "")
    return {
        "title": compiled(content.get("title", ""), html=False).render(variables).strip(),
        "body": compiled(content.get("body", ""), html=False).render(variables).strip(),
        "action_url": compiled(content.get("action_url", ""), html=False).render(variables).strip(),
        "icon_url": content.get("icon_url", ""),
    }


def webhook_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def render_webhook(content: Mapping[str, Any], ctx: MessageContext) -> dict[str, Any]:
    variables = ctx.template_context("", "")
    payload = compiled(content.get("payload_template", "") or "{}", html=False).render(variables)
    problems = []
    try:
        json.loads(payload)
    except ValueError as exc:
        problems.append(f"The rendered payload is not JSON: {exc}")
    body = payload.encode()
    headers = {"Content-Type": "application/json", **(content.get("headers") or {})}
    headers[SIGNATURE_HEADER] = webhook_signature(ctx.webhook_secret, body)
    headers["X-Campaign-Message-Id"] = ctx.message_id
    return {
        "method": content.get("method") or "POST",
        "url": content.get("url", ""),
        "headers": headers,
        "body": payload,
        "problems": problems,
    }


RENDERERS = {
    "email": render_email,
    "sms": render_sms,
    "whatsapp": render_whatsapp,
    "in_app": render_in_app,
    "webhook": render_webhook,
}


def render_message(channel: str, content: Mapping[str, Any], ctx: MessageContext) -> dict[str, Any]:
    return RENDERERS[channel](content, ctx)
