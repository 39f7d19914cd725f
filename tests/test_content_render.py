"""Rendering per channel: personalisation, compliance in every marketing email, signed links, webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import replace
from urllib.parse import unquote

import pytest
from django.test import Client

from campaigns.content import links
from campaigns.content.render import MessageContext, Renderer, html_to_text, render_message

CTX = MessageContext(
    message_id="m-123",
    contact={"first_name": "Ada", "email": "ada@example.com", "attributes": {"plan": "pro"}},
    contact_id="42",
    organisation_id="org-1",
    organisation_name="Acme Ltd",
    postal_address="1 Main Street, London",
    sender_name="Acme",
    sender_email="news@acme.example",
    campaign_name="Spring",
    webhook_secret="whsec",
)

EMAIL = {
    "subject": "Hi {{ contact.first_name }}",
    "preheader": "Deals for {{ contact.attributes.plan }}",
    "html": '<html><body><p>Hello {{ contact.first_name }}</p><a href="https://shop.example/sale?a=1&amp;b=2">Sale</a>'
    '<a href="mailto:help@acme.example">Help</a><a href="#top">Top</a></body></html>',
}


def test_email_is_personalised_and_compliant():
    email = render_message("email", EMAIL, CTX)
    assert email["subject"] == "Hi Ada"
    assert email["from"] == "Acme <news@acme.example>"
    assert "Hello Ada" in email["html"]
    assert "Deals for pro" in email["html"]  # hidden preheader
    assert "1 Main Street, London" in email["html"] and "1 Main Street, London" in email["text"]
    assert ">Unsubscribe</a>" in email["html"]
    unsubscribe_link = re.search(r'href="([^"]+/u/[^"]+)"', email["html"]).group(1)
    assert unsubscribe_link in email["text"]
    assert "Deals for pro" not in email["text"]  # the hidden preheader is not part of the text body
    headers = email["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The mailto only where inbound mail is configured (tests/test_inbound_unsubscribe.py).
    [https] = [part.strip("<> ") for part in headers["List-Unsubscribe"].split(",")]
    assert https.startswith("https://") or https.startswith("http://")
    assert links.read_unsubscribe(https.rsplit("/", 1)[1]) == ("org-1", "42", "m-123")
    assert re.fullmatch(r"<m-123\.[0-9a-f]{16}@acme\.example>", headers["Message-ID"])


def test_links_are_rewritten_and_signed_except_ours_and_non_web():
    email = render_message("email", EMAIL, CTX)
    hrefs = re.findall(r'href="([^"]+)"', email["html"])
    tracked = [h for h in hrefs if "/t/c/" in h]
    assert len(tracked) == 1
    token = tracked[0].replace("&amp;", "&").rsplit("/", 1)[1]
    assert links.read_click(token) == ("m-123", "https://shop.example/sale?a=1&b=2")
    assert "mailto:help@acme.example" in hrefs and "#top" in hrefs
    assert any("/u/" in h for h in hrefs)  # the unsubscribe link is not click-tracked
    assert re.search(r'<img src="[^"]+/t/o/[^"]+\.gif"', email["html"])


def test_tracking_can_be_switched_off():
    email = render_message("email", EMAIL, replace(CTX, tracking=False))
    assert "/t/c/" not in email["html"] and "/t/o/" not in email["html"]
    assert 'href="https://shop.example/sale?a=1&amp;b=2"' in email["html"]


def test_the_template_unsubscribe_link_is_used_and_not_duplicated():
    content = {
        "subject": "s",
        "html": '<p>Bye: <a href="{{ unsubscribe_url }}">leave</a></p><p>{{ organisation.postal_address }}</p>',
    }
    email = render_message("email", content, CTX)
    assert email["html"].count("/u/") == 1


def test_text_part_is_generated_from_html():
    assert (
        html_to_text(
            "<h1>Title</h1><p>Hello <b>you</b></p><ul><li>One</li></ul><a href='https://x.example'>Go</a>"
            "<style>p{}</style>"
        )
        == "Title\n\nHello you\n\n  * One\nGo (https://x.example)"
    )


def test_sms_whatsapp_in_app():
    sms = render_message("sms", {"body": "Hi {{ contact.first_name }} <3 €"}, CTX)
    assert sms["body"] == "Hi Ada <3 €"  # not HTML-escaped
    assert (sms["length"]["encoding"], sms["length"]["units"]) == ("GSM-7", 12)
    whatsapp = render_message(
        "whatsapp", {"body": "Hola {{ contact.first_name }}", "template_name": "promo", "template_language": "es"}, CTX
    )
    assert (whatsapp["body"], whatsapp["template_name"]) == ("Hola Ada", "promo")
    in_app = render_message(
        "in_app",
        {
            "title": "Hi {{ contact.first_name }}",
            "body": "b",
            "action_url": "https://app.example/{{ contact.attributes.plan }}",
        },
        CTX,
    )
    assert (in_app["title"], in_app["action_url"]) == ("Hi Ada", "https://app.example/pro")


def test_webhook_is_signed_with_the_organisation_secret():
    hook = render_message(
        "webhook",
        {
            "url": "https://hooks.example/x",
            "payload_template": '{"user": "{{ contact.first_name }}", "plan": "{{ contact.attributes.plan }}"}',
            "headers": {"X-Team": "growth"},
        },
        CTX,
    )
    assert json.loads(hook["body"]) == {"user": "Ada", "plan": "pro"}
    expected = "sha256=" + hmac.new(b"whsec", hook["body"].encode(), hashlib.sha256).hexdigest()
    assert hook["headers"]["X-Campaign-Signature"] == expected
    assert hook["headers"]["X-Team"] == "growth"
    broken = render_message("webhook", {"url": "https://hooks.example/x", "payload_template": "{oops"}, CTX)
    assert broken["problems"]


def test_tampered_tokens_are_refused():
    token = links.sign("click", "m-1", "https://good.example/")
    payload, signature = token.split(".")
    forged_payload = links._b64(b"m-1\nhttps://evil.example/")
    for bad in [
        f"{forged_payload}.{signature}",
        f"{payload}.{signature[:-2]}AA",
        f"{payload}x.{signature}",
        "garbage",
        "",
        f"{payload}",
    ]:
        with pytest.raises(links.BadToken):
            links.read_click(bad)
    open_token = links.sign("open", "m-1")
    with pytest.raises(links.BadToken):
        links.read_click(open_token)  # a token for another purpose


def test_unsubscribe_tokens_expire_after_90_days():
    token = links.unsubscribe_token("o", "c", "m")
    issued = int(links.unsign("unsubscribe", token, count=4)[3])
    assert links.read_unsubscribe(token, now=issued + 89 * 86400) == ("o", "c", "m")
    with pytest.raises(links.BadToken):
        links.read_unsubscribe(token, now=issued + 91 * 86400)


@pytest.mark.django_db
def test_click_endpoint_redirects_only_to_the_signed_target():
    client = Client()
    url = links.click_url("m-9", "https://shop.example/a?b=c")
    response = client.get(unquote(url.split("://", 1)[1].split("/", 1)[1]).join(["/", ""]))
    assert response.status_code == 302
    assert response["Location"] == "https://shop.example/a?b=c"
    token = url.rsplit("/", 1)[1]
    message_part, _target, signature = token.rsplit(".", 2)
    forged = links._b64(b"https://evil.example/")
    assert client.get(f"/t/c/{message_part}.{forged}.{signature}").status_code == 404
    assert client.get("/t/c/nonsense?next=https://evil.example").status_code == 404
    assert client.get(f"/t/c/{message_part}?next=https://evil.example").status_code == 404
    # A token in the format issued before the two-part scheme still redirects.
    old = client.get(f"/t/c/{links.sign('click', 'm-9', 'https://shop.example/old')}")
    assert (old.status_code, old["Location"]) == (302, "https://shop.example/old")
    pixel = client.get(f"/t/o/{links.sign('open', 'm-9')}.gif")
    assert (pixel.status_code, pixel["Content-Type"]) == (200, "image/gif")


def test_personalised_links_are_tracked_with_their_rendered_target():
    content = {
        "subject": "s",
        "html": '<a href="https://shop.example/u/{{ contact.first_name }}?x=1&amp;y=2">Me</a>'
        '<a href="{{ unsubscribe_url }}">Leave</a>',
    }
    email = render_message("email", content, CTX)
    hrefs = re.findall(r'href="([^"]+)"', email["html"])
    token = hrefs[0].replace("&amp;", "&").rsplit("/", 1)[1]
    assert links.read_click(token) == ("m-123", "https://shop.example/u/Ada?x=1&y=2")
    assert "/u/" in hrefs[1] and "/t/c/" not in hrefs[1]


def test_generated_text_part_is_personalised_and_its_links_tracked():
    from campaigns.content import links

    content = {
        "subject": "s",
        "html": "<p>Hi {{ contact.first_name }}</p>{% if contact.attributes.plan == 'pro' %}<p>Pro perks</p>{% endif %}"
        '<p><a href="https://shop.example/sale">Sale</a> <a href="https://shop.example/{{ contact.attributes.plan }}">'
        "Yours</a></p>",
    }
    email = render_message("email", content, CTX)
    text = email["text"]
    assert text.startswith("Hi Ada\n\nPro perks")
    sale, yours = re.findall(r"(?:Sale|Yours) \((\S+)\)", text)
    assert links.read_click(sale.rsplit("/", 1)[1]) == ("m-123", "https://shop.example/sale")
    assert links.read_click(yours.rsplit("/", 1)[1]) == ("m-123", "https://shop.example/pro")
    assert f'href="{sale}"' in email["html"] and f'href="{yours}"' in email["html"]  # the same links as the HTML
    untracked = render_message("email", content, MessageContext(**{**CTX.__dict__, "tracking": False}))["text"]
    assert "Sale (https://shop.example/sale)" in untracked and "Yours (https://shop.example/pro)" in untracked
    # Template code that looks like markup cannot be converted once; each rendered body is converted instead.
    odd = {"subject": "s", "html": "<p>{% if 1 < 2 %}small{% endif %} <b>bold</b></p>"}
    assert render_message("email", odd, CTX)["text"].startswith("small bold")


def _click_token(html: str, index: int = 0) -> str:
    return [h for h in re.findall(r'href="([^"]+)"', html) if "/t/c/" in h][index].rsplit("/", 1)[1]


def test_a_message_signs_once_and_its_links_share_the_run_signed_parts():
    content = {
        "subject": "s",
        "html": '<a href="https://shop.example/a">A</a>'
        '<a href="https://shop.example/{{ contact.attributes.plan }}">B</a>',
    }
    first = render_message("email", content, CTX)["html"]
    other = render_message("email", content, replace(CTX, message_id="m-456", contact_id="43"))["html"]
    a1, b1, a2 = _click_token(first, 0), _click_token(first, 1), _click_token(other, 0)
    message_part = a1.rsplit(".", 2)[0]
    assert b1.startswith(message_part + ".")  # one message signature for all of the message's links
    assert a1.rsplit(".", 2)[1:] == a2.rsplit(".", 2)[1:]  # the link part: signed once for the run
    assert links.read_click(a2) == ("m-456", "https://shop.example/a")
    assert links.read_click(b1) == ("m-123", "https://shop.example/pro")
    assert f"/t/o/{message_part}.gif" in first  # the open pixel carries the same message part
    assert links.read_open(f"{message_part}") == "m-123"
    assert links.read_open(links.sign("open", "m-1")) == "m-1"  # pixels issued in the old format


def test_tampered_or_mismatched_click_tokens_are_refused():
    scope, other_scope = links.link_scope("org-1", "<a>"), links.link_scope("org-2", "<a>")
    message = links.message_token("m-1", scope)
    link = links.link_token(scope, "https://good.example/")
    assert links.read_click(f"{message}.{link}") == ("m-1", "https://good.example/")
    m_id, m_scope, m_sig = message.split(".")
    target, t_sig = link.split(".")
    evil = links._b64(b"https://evil.example/")
    for bad in [
        f"{message}.{evil}.{t_sig}",  # another target under this link's signature
        f"{message}.{links.link_token(other_scope, 'https://good.example/')}",  # a link part of another scope
        f"{links.message_token('m-1', other_scope)}.{link}",  # a message part of another scope
        f"{links._b64(b'm-2')}.{m_scope}.{m_sig}.{link}",  # another message id
        f"{m_id}.{links._b64(other_scope)}.{m_sig}.{link}",  # the scope swapped in the message part
        f"{m_id}.{m_scope}.{t_sig}.{target}.{m_sig}",  # signatures swapped between the halves
        f"{m_id}.{m_scope}.{m_sig}.{target}.{t_sig[:-2]}AA",
        f"{m_id}.{m_scope[:-1]}.{m_sig}.{link}",  # a short scope
        f"{message}.{target}",
        f"{message}.{link}.x",
        f"{message}.{links.link_token(scope, 'https://good.example/').replace('.', '')}",
        f"{link}",  # a link part alone reads as an old-format token with the wrong key
        f"{message}",
        "a.b.c.d.e",
        "....",
    ]:
        with pytest.raises(links.BadToken):
            links.read_click(bad)
    with pytest.raises(links.BadToken):  # a message part is not a link part: separate keys
        links.read_click(f"{message}.{m_id}.{m_sig}")


def test_the_fast_signature_is_hmac_sha256():
    payload = b"org\n42\nm-1\n1700000000"
    expected = hmac.digest(links._key("unsubscribe"), payload, "sha256")[:16]
    assert links._mac("unsubscribe", payload) == expected
    assert (
        links.sign("unsubscribe", "org", "42", "m-1", "1700000000") == f"{links._b64(payload)}.{links._b64(expected)}"
    )


def test_a_run_renderer_renders_what_render_message_does():
    content = {**EMAIL, "text": "Hi {{ contact.first_name }} {{ unsubscribe_url }}"}
    renderer = Renderer("email", content, CTX.sender())
    by_renderer = renderer.render("m-123", CTX.contact, "42")
    by_message = render_message("email", content, CTX)
    # These carry their issue second, and a Message-ID its random part.
    unsubscribe = re.compile(r"/u/[\w.-]+|/p/[\w.-]+|unsubscribe%20[\w.-]+|\.[0-9a-f]{16}@")
    assert {k: unsubscribe.sub("", str(v)) for k, v in by_renderer.items()} == {
        k: unsubscribe.sub("", str(v)) for k, v in by_message.items()
    }
    sms = Renderer("sms", {"body": "Hi {{ contact.first_name }}"}, CTX.sender())
    assert sms.render("m-1", {"first_name": "Bo"}, "7")["body"] == "Hi Bo"
    assert sms.render("m-2", {"first_name": "Cy"}, "8")["body"] == "Hi Cy"


def test_parts_rendered_in_one_pass_keep_their_own_scope_and_escaping():
    content = {
        "subject": "{% set plan = 'secret' %}<b>{{ contact.first_name }}</b> & co",
        "preheader": "{{ plan }}<i>",
        "text": "Plan: {{ plan }} {{ contact.attributes.plan }} <{{ contact.first_name }}>",
        "html": "<html><body><p>{{ plan }}|{{ contact.first_name }}</p>{{ unsubscribe_url }}</body></html>",
    }
    ctx = replace(CTX, contact={"first_name": "<Ada>", "attributes": {"plan": "pro"}})
    email = render_message("email", content, ctx)
    assert email["subject"] == "<b><Ada></b> & co"  # text parts are not escaped
    assert email["preheader"] == "<i>"  # a `set` in the subject is not seen by the next part
    assert email["text"].startswith("Plan:  pro <<Ada>>")
    assert "<p>|&lt;Ada&gt;</p>" in email["html"]  # the HTML autoescapes
    assert ">&lt;i&gt;</div>" in email["html"]  # the preheader is escaped once where it enters the HTML


def test_the_sandbox_deadline_and_bounds_hold_in_the_combined_pass():
    from campaigns.content.templates import TemplateProblem

    for field, source in [
        ("subject", "{{ ''.__class__.__mro__ }}"),
        ("text", "{{ contact.attributes.update({'plan': 'free'}) }}"),
        ("html", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    ]:
        try:
            email = render_message("email", {**EMAIL, field: source}, CTX)
        except TemplateProblem:
            continue
        assert "<class" not in email[field] and "&lt;class" not in email[field]
    with pytest.raises(TemplateProblem, match="KB"):
        render_message("email", {**EMAIL, "text": "{% for i in range(600) %}{{ 'x' * 1000 }}{% endfor %}"}, CTX)
    slow = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{{ c * 1 }}{% endfor %}"
    with pytest.raises(TemplateProblem, match="too long"):
        render_message("email", {**EMAIL, "preheader": slow + "{% endfor %}{% endfor %}"}, CTX)
    assert CTX.contact["attributes"] == {"plan": "pro"}


def test_a_full_link_table_starts_over_and_its_links_still_verify():
    table = links.LinkTable(links.link_scope("org-1", "<a>"))
    table.MAX_TARGETS = 2
    message = table.message_part("m-1")
    urls = [table.url("", (), f"https://shop.example/{n}") for n in range(5)]
    assert len(table.parts) <= 2
    assert [links.read_click(f"{message}.{url}")[1] for url in urls] == [f"https://shop.example/{n}" for n in range(5)]
