"""Links in email HTML are checked when the content is saved, like in-app and webhook URLs: every href (and every
image's src) must be absolute http(s) with a host and nothing internal, or mailto:, tel:, an #anchor (images: cid:
or data:image/). Template code may build a link (it is tracked, and so checked, when it renders), but a literal
start that is a bad scheme is refused. Each problem names the link by its place; the API answers 400 with the
field, the console shows it inline and saves nothing."""

from __future__ import annotations

from html import escape

import pytest

from campaigns.content.channels import email_link_problems
from campaigns.models import Campaign, Variant
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db

ALLOWED = "https:// or http:// or mailto: or tel: (or #anchor)"


@pytest.mark.parametrize(
    ("href", "problem"),
    [
        ("javascript:alert(1)", f"javascript: is not allowed; use {ALLOWED}"),
        ("JavaScript:alert(1)", f"javascript: is not allowed; use {ALLOWED}"),
        ("java&#x09;script:alert(1)", f"javascript: is not allowed; use {ALLOWED}"),  # a browser drops the tab
        ("  javascript:alert(1)", f"javascript: is not allowed; use {ALLOWED}"),
        ("data:text/html;base64,PHNjcmlwdD4=", f"data: is not allowed; use {ALLOWED}"),
        ("vbscript:msgbox", f"vbscript: is not allowed; use {ALLOWED}"),
        ("javascript:{{ contact.attributes.code }}", f"javascript: is not allowed; use {ALLOWED}"),
        ("/account", "is relative: an email needs an absolute URL (https:// or http:// or mailto: or tel:)"),
        ("shop.example/sale", "is relative: an email needs an absolute URL (https:// or http:// or mailto: or tel:)"),
        ("//cdn.example/x", "is relative: an email needs an absolute URL (https:// or http:// or mailto: or tel:)"),
        ("", "is empty"),
        ("http://", "The URL has no host."),
        ("https://[::1", "is not a valid URL"),
        ("https://user:secret@shop.example/", "URLs with credentials in them are not allowed."),
        ("http://127.0.0.1/admin", "The URL points at a private, loopback or link-local address."),
        ("https://metadata.google.internal/", "The URL points at an internal host."),
        ("mailto:", "mailto: with nothing after it"),
    ],
)
def test_a_bad_link_is_named_with_its_place_and_why(href, problem):
    html = f'<p><a href="https://shop.example/">Shop</a> and <a href="{href}">this</a></p>'
    shown = " ".join(href.replace("&#x09;", "\t").split())
    assert email_link_problems(html) == [f"html: link 2 ({shown}) {problem}"]


@pytest.mark.parametrize(
    "href",
    [
        "https://shop.example/sale?a=1&amp;b=2",
        "http://shop.example",
        "mailto:help@acme.example?subject=Question",
        "tel:+442071234567",
        "#top",
        "{{ unsubscribe_url }}",
        "{{ preferences_url }}",
        "{{ contact.attributes.referral_link }}",
        "https://shop.example/p/{{ item }}",
        "mailto:{{ contact.attributes.manager_email }}",
        "{% if contact.attributes.plan == 'pro' %}https://pro.example{% else %}https://shop.example{% endif %}",
    ],
)
def test_good_links_pass(href):
    assert email_link_problems(f'<a href="{href}">x</a>') == []


def test_images_are_checked_too():
    html = (
        '<img src="https://cdn.example/logo.png" alt="logo"><img src="cid:banner"><img src="data:image/png;base64,AA">'
        '<img src="{{ contact.attributes.avatar }}"><img src="logo.png"><img src="javascript:alert(1)">'
        '<img src="data:text/html,x">'
    )
    assert email_link_problems(html) == [
        "html: image 5 (logo.png) is relative: an email needs an absolute URL (https:// or http://)",
        "html: image 6 (javascript:alert(1)) javascript: is not allowed; use https:// or http://",
        "html: image 7 (data:text/html,x) data: is not allowed; use https:// or http://",
    ]


@pytest.fixture
def campaign(organisation):
    return CampaignFactory(organisation=organisation, channels=["email"], variants=False)


BAD_HTML = (
    '<p>Hi {{ contact.first_name }}</p><a href="https://shop.example/">Shop</a>'
    '<a href="javascript:alert(document.cookie)">Win</a><a href="/login">Log in</a>'
)


def test_the_api_answers_400_naming_each_link_and_saves_nothing(teammate, campaign):
    response = teammate.api.patch(
        f"/api/v1/campaigns/{campaign.pk}/",
        {
            "variants": [
                {"name": "A", "allocation_percent": 100, "content": {"email": {"subject": "Hi", "html": BAD_HTML}}}
            ]
        },
        format="json",
    )
    assert response.status_code == 400
    assert response.data["variants"] == [
        f"Variant A: email.html: link 2 (javascript:alert(document.cookie)) javascript: is not allowed; use {ALLOWED}.",
        "Variant A: email.html: link 3 (/login) is relative: an email needs an absolute URL "
        "(https:// or http:// or mailto: or tel:).",
    ]
    assert not Variant.objects.filter(campaign=campaign).exists()


def test_the_api_saves_good_links(teammate, campaign):
    html = (
        '<a href="https://shop.example/">Shop</a><a href="mailto:help@acme.example">Help</a><a href="#top">Top</a>'
        '<a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    )
    response = teammate.api.patch(
        f"/api/v1/campaigns/{campaign.pk}/",
        {"variants": [{"name": "A", "allocation_percent": 100, "content": {"email": {"subject": "Hi", "html": html}}}]},
        format="json",
    )
    assert response.status_code == 200, response.data
    assert Variant.objects.get(campaign=campaign).content["email"]["html"] == html


def test_a_template_in_the_library_is_checked_the_same(teammate):
    response = teammate.api.post(
        "/api/v1/content-templates/",
        {"name": "Bad links", "channel": "email", "content": {"subject": "s", "html": BAD_HTML}},
        format="json",
    )
    assert response.status_code == 400
    assert response.data["content"] == [
        f"html: link 2 (javascript:alert(document.cookie)) javascript: is not allowed; use {ALLOWED}",
        "html: link 3 (/login) is relative: an email needs an absolute URL (https:// or http:// or mailto: or tel:)",
    ]


def test_the_console_shows_the_bad_links_inline_and_saves_nothing(teammate, campaign):
    form = {
        "v-0-name": "A",
        "v-0-allocation": "100",
        "v-0-email-subject": "Hi",
        "v-0-email-html": BAD_HTML,
        "save": "1",
    }
    response = console_client(teammate).post(f"/campaigns/{campaign.pk}/content/", form)
    assert response.status_code == 400
    page = response.content.decode()
    first = f"email.html: link 2 (javascript:alert(document.cookie)) javascript: is not allowed; use {ALLOWED}"
    assert escape(first) in page
    assert escape("email.html: link 3 (/login) is relative") in page
    assert not Campaign.objects.get(pk=campaign.pk).variants.exists()
