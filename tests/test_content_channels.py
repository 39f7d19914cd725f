"""Each channel's validation and limits."""

from __future__ import annotations

import pytest

from campaigns.content.channels import content_problems
from campaigns.content.urls_check import UnsafeUrl, check_url_shape, check_url_target

SENDERS = ["news@acme.example"]


def problems(channel, content, launch=False):
    return content_problems(channel, content, allowed_senders=SENDERS, for_launch=launch)


@pytest.mark.parametrize(
    ("channel", "content", "expected"),
    [
        ("email", {"subject": "Hi {{ x }"}, "subject: line 1"),
        ("email", {"subject": "x" * 999}, "subject: at most 998"),
        ("email", {"from_email": "boss@other.example"}, "not one of the organisation's verified senders"),
        ("email", {"reply_to": "nope"}, "reply_to: not an email address"),
        ("email", {"subjet": "typo"}, "unknown field(s) subjet"),
        ("sms", {"body": "a" * 161}, "more than one SMS"),
        ("sms", {"body": "ç" * 71}, "more than one SMS"),
        ("sms", {"body": "a" * (153 * 6 + 1), "allow_multipart": True}, "7 parts; at most 6"),
        ("sms", {"body": "hi", "allow_multipart": "yes"}, "allow_multipart: true or false"),
        ("whatsapp", {"body": "x" * 1601}, "WhatsApp allows 1600"),
        ("whatsapp", {"template_name": "Bad Name"}, "template_name: lowercase"),
        ("whatsapp", {"template_name": "promo"}, "template_language: required"),
        ("in_app", {"title": "t", "body": "b", "action_url": "javascript:alert(1)"}, "action_url: The URL must start"),
        ("in_app", {"icon_url": "http://cdn.example/i.png"}, "icon_url: The URL must start with https://"),
        ("webhook", {"url": "http://169.254.169.254/latest/meta-data"}, "private, loopback or link-local"),
        ("webhook", {"url": "http://127.0.0.1:8000/admin"}, "private, loopback or link-local"),
        ("webhook", {"url": "http://[::1]/"}, "private, loopback or link-local"),
        ("webhook", {"url": "http://10.0.0.5/"}, "private, loopback or link-local"),
        ("webhook", {"url": "http://localhost/"}, "internal host"),
        ("webhook", {"url": "http://metadata.google.internal/"}, "internal host"),
        ("webhook", {"url": "https://user:pw@hooks.example/"}, "credentials"),
        ("webhook", {"url": "ftp://hooks.example/"}, "must start with"),
        ("webhook", {"url": "https://hooks.example/", "method": "TRACE"}, "method: one of"),
        ("webhook", {"url": "https://hooks.example/", "headers": {"Host": "evil"}}, "'Host' cannot be set"),
        ("webhook", {"url": "https://hooks.example/", "headers": {"X-A": "a\r\nB: c"}}, "invalid value"),
        ("webhook", {"url": "https://hooks.example/", "payload_template": "{% for %}"}, "payload_template: line 1"),
    ],
)
def test_invalid_content(channel, content, expected):
    found = problems(channel, content)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("channel", "content"),
    [
        ("email", {"subject": "Hi {{ contact.first_name }}", "html": "<p>x</p>", "from_email": "NEWS@acme.example"}),
        ("sms", {"body": "a" * 160}),
        ("sms", {"body": "€" * 80}),
        ("sms", {"body": "a" * (153 * 6), "allow_multipart": True}),
        ("whatsapp", {"body": "x" * 1600}),
        ("whatsapp", {"template_name": "spring_sale", "template_language": "pt_BR"}),
        (
            "in_app",
            {
                "title": "t",
                "body": "b",
                "action_url": "https://app.example/{{ contact.external_id }}",
                "icon_url": "https://cdn.example/i.png",
            },
        ),
        (
            "webhook",
            {
                "url": "https://hooks.example/x",
                "method": "PUT",
                "headers": {"X-Team": "growth"},
                "payload_template": '{"id": "{{ contact.external_id }}"}',
            },
        ),
    ],
)
def test_valid_content(channel, content):
    assert problems(channel, content, launch=True) == []


@pytest.mark.parametrize(
    ("channel", "missing"),
    [("email", "subject"), ("sms", "body"), ("in_app", "title"), ("webhook", "url"), ("whatsapp", "body (or")],
)
def test_required_parts_are_checked_at_launch_only(channel, missing):
    assert problems(channel, {}) == []
    assert any(p.startswith(missing) for p in problems(channel, {}, launch=True))


def test_targets_are_checked_after_dns_resolution(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [(2, 1, 6, "", ("10.1.2.3", port))])
    with pytest.raises(UnsafeUrl, match="internal address"):
        check_url_target("https://innocent-looking.example/hook")
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [(2, 1, 6, "", ("93.184.216.34", port))])
    assert check_url_target("https://public.example/hook") == ["93.184.216.34"]
    assert check_url_shape("https://hooks.example/x") == "https://hooks.example/x"
