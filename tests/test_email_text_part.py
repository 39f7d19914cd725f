"""The text part of an email whose marketer left it empty: converted from the HTML by inscriptis, once per
template — tables laid out in rows and columns, image alt text kept, links as "text (url)", template code kept as
it was so each message still renders its own values — and, where the layout would move template code, converted
per message instead. Checked on what the renderer produces and on the bytes a test send delivers over SMTP."""

from __future__ import annotations

import email
import re
from email import policy

import pytest

from audiences.contacts import contacts_upsert_rows
from campaigns.content import links
from campaigns.content.render import MessageContext, Renderer, render_message, text_template_from_html
from campaigns.models import Variant
from tests.factories import CampaignFactory

CONTACT = {
    "first_name": "Ada",
    "email": "ada@example.com",
    "attributes": {"plan": "pro", "orders": [{"name": "Trail shoes", "qty": 1}, {"name": "Socks", "qty": 3}]},
}
CTX = MessageContext(
    message_id="m-7",
    contact=CONTACT,
    contact_id="42",
    organisation_id="org-1",
    organisation_name="Acme Ltd",
    postal_address="1 Main Street, London",
    sender_name="Acme",
    sender_email="news@acme.example",
)

ORDER_EMAIL = (
    "<html><head><title>Your order</title><style>td { padding: 4px }</style></head><body>"
    "<p>Hi {{ contact.first_name }},</p>"
    '<img src="https://cdn.acme.example/spring.png" alt="Spring sale: 40% off">'
    "<table><tr><th>Item</th><th>Qty</th><th>Price</th></tr>"
    "<tr><td>Trail shoes</td><td>1</td><td>£89</td></tr>"
    "<tr><td>Socks</td><td>3</td><td>£12</td></tr>"
    "<tr><td>Your plan</td><td>{{ contact.attributes.plan }}</td><td></td></tr></table>"
    '<p><a href="https://shop.acme.example/sale">Shop the sale</a> or <a href="mailto:help@acme.example">write</a>'
    ' <a href="#top">top</a></p></body></html>'
)


def _text(html: str, ctx: MessageContext = CTX, **content: str) -> str:
    return render_message("email", {"subject": "s", "html": html, **content}, ctx)["text"]


def _untracked(ctx: MessageContext = CTX) -> MessageContext:
    return MessageContext(**{**ctx.__dict__, "tracking": False})


def test_a_table_is_laid_out_in_rows_and_columns_with_alt_text_and_links():
    text = _text(ORDER_EMAIL, _untracked())
    body = text.split("\n\n--\n")[0]
    assert body == (
        "Hi Ada,\n"
        "\n"
        "[Spring sale: 40% off]\n"
        "Item         Qty  Price\n"
        "Trail shoes  1    £89\n"
        "Socks        3    £12\n"
        "Your plan    pro\n"
        "\n"
        "Shop the sale (https://shop.acme.example/sale) or write top"
    )


def test_tracked_links_in_the_text_part_are_the_html_part_s_click_urls():
    email_parts = render_message("email", {"subject": "s", "html": ORDER_EMAIL}, CTX)
    [click] = re.findall(r"Shop the sale \((\S+)\)", email_parts["text"])
    assert links.read_click(click.rsplit("/", 1)[1]) == ("m-7", "https://shop.acme.example/sale")
    assert f'href="{click}"' in email_parts["html"]


def test_the_template_is_converted_once_and_every_message_renders_its_own_values():
    renderer = Renderer("email", {"subject": "s", "html": ORDER_EMAIL}, _untracked().sender())
    assert renderer.program.convert_text is False  # a text template, rendered like any other per message
    grace = {**CONTACT, "first_name": "Grace", "attributes": {"plan": "free"}}
    texts = [renderer.render(f"m-{i}", contact, str(i))["text"] for i, contact in enumerate([CONTACT, grace], 1)]
    assert texts[0].startswith("Hi Ada,\n") and "Your plan    pro\n" in texts[0]
    assert texts[1].startswith("Hi Grace,\n") and "Your plan    free\n" in texts[1]
    # Template code passes through the conversion exactly as written.
    derived = text_template_from_html(ORDER_EMAIL)
    assert "Hi {{ contact.first_name }},\n" in derived
    assert "Your plan    {{ contact.attributes.plan }}\n" in derived


def test_a_block_left_out_leaves_no_blank_lines():
    html = (
        "<p>Hi {{ contact.first_name }}</p>{% if contact.attributes.plan == 'pro' %}<p>Pro perks</p>{% endif %}"
        "<p>See you</p>"
    )
    assert _text(html, _untracked()).split("\n\n--\n")[0] == "Hi Ada\n\nPro perks\n\nSee you"
    free = MessageContext(**{**_untracked().__dict__, "contact": {**CONTACT, "attributes": {"plan": "free"}}})
    assert _text(html, free).split("\n\n--\n")[0] == "Hi Ada\n\nSee you"


def test_rows_from_a_loop_are_converted_per_message_and_come_out_right():
    # Text between table rows is moved before the table by the HTML parser, so the loop would lose its rows:
    # this template cannot be converted once, and every rendered body is converted instead.
    html = (
        "<table><tr><th>Item</th><th>Qty</th></tr>"
        "{% for order in contact.attributes.orders %}<tr><td>{{ order.name }}</td><td>{{ order.qty }}</td></tr>"
        "{% endfor %}</table>"
    )
    assert text_template_from_html(html) == ""
    assert Renderer("email", {"subject": "s", "html": html}, CTX.sender()).program.convert_text is True
    # The footer is converted with the body (the link's URL differs per message).
    footer = "\n\nAcme Ltd\n1 Main Street, London"
    converted = _text(html, _untracked()).split("\n\nUnsubscribe (")[0]
    assert converted == "Item         Qty\nTrail shoes  1\nSocks        3" + footer


def test_a_condition_in_a_cell_beside_another_is_not_spread_over_its_neighbour():
    # Side by side, the second cell's first line would land inside the first cell's {% if %}.
    html = (
        "<table><tr><td>{% if contact.attributes.plan == 'pro' %}Gold<br>member{% endif %}</td>"
        "<td>Line A<br>Line B</td></tr></table>"
    )
    assert text_template_from_html(html) == ""
    free = MessageContext(**{**_untracked().__dict__, "contact": {**CONTACT, "attributes": {"plan": "free"}}})
    footer = "\n\nAcme Ltd\n1 Main Street, London"
    assert _text(html, _untracked()).split("\n\nUnsubscribe (")[0] == "Gold    Line A\nmember  Line B" + footer
    # The first cell renders empty: its column is kept (no width, then the separator).
    assert _text(html, free).split("\n\nUnsubscribe (")[0] == "  Line A\n  Line B" + footer


def test_an_explicit_text_part_is_used_as_written():
    assert _text(ORDER_EMAIL, text="Hi {{ contact.first_name }}: {{ unsubscribe_url }}").startswith("Hi Ada: http")


@pytest.mark.django_db
def test_a_test_send_delivers_the_converted_text_part_over_smtp(teammate, smtp):
    organisation = teammate.organisation
    organisation.sender_email, organisation.sender_name = "news@acme.example", "Acme"
    organisation.postal_address = "Acme Ltd, 1 Main Street, London"
    organisation.save()
    contacts_upsert_rows(
        organisation=organisation,
        rows=[{"external_id": "c1", "first_name": "Ada", "email": "ada@example.com", "attributes": {"plan": "pro"}}],
    )
    campaign = CampaignFactory(organisation=organisation, channels=["email"], variants=False)
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={"email": {"subject": "Hi", "html": ORDER_EMAIL}}
    )
    response = teammate.api.post(
        f"/api/v1/campaigns/{campaign.pk}/test-send/", {"recipients": ["seed@example.com"]}, format="json"
    )
    assert response.status_code == 200, response.data
    [(_sender, _recipients, raw)] = smtp.messages
    text = email.message_from_bytes(raw, policy=policy.default).get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "[Spring sale: 40% off]\nItem         Qty  Price\nTrail shoes  1    £89\nSocks        3    £12\n" in text
    assert "Your plan    pro\n" in text
    assert re.search(r"Shop the sale \(http://\S+/t/c/\S+\) or write top", text)
