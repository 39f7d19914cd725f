"""Email rendering throughput on one core: content + contact + message id -> subject, HTML, text, headers.

    .venv/bin/python bench/render.py [--messages 20000] [--per-message] [--parse-attributes]

A typical 3 KB marketing email (5 links, personalised greeting, a loop over the contact's picks, a block shown only
above 100 points, explicit text part) rendered the way the delivery engine does (campaigns.content.render.Renderer,
made once per run, then called per message) with tracking on: every link rewritten to a signed click URL, an open
pixel, signed unsubscribe and preference links and List-Unsubscribe headers. Each message gets its own contact and
message id; the 1,000 contacts differ in plan (one of them non-ASCII), points and picks, and a sample of the
rendered messages is checked for its contact's values after the clock stops (the bench fails if one is blank).
No database is touched. `--per-message` renders through render_message instead (a Renderer per message, as a
preview does); `--parse-attributes` parses each contact's attributes from jsonb text per message inside the clock,
as a real send does after its claim (audiences.jsonb.jsonb_loads).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HTML = """<html><body style="font-family:Arial,sans-serif;background:#f4f4f4">
<table width="100%" cellpadding="0" cellspacing="0"><tr><td align="center">
<table width="600" style="background:#ffffff;padding:24px">
<tr><td><img src="https://cdn.demo-retail.example/logo.png" alt="Demo Retail" width="120"></td></tr>
<tr><td><h1 style="color:#1d2330">Hi {{ contact.first_name | default("there") }}, spring is here</h1>
<p>As a {{ contact.attributes.plan }} member you get early access to our spring sale: up to 40% off shoes, bags
and outdoor gear, with free delivery on orders over 50 pounds. The sale runs until Sunday at midnight, so there is
plenty of time to find something you love before everyone else does.</p>
{% if contact.attributes.points > 100 %}<p>You have {{ contact.attributes.points }} points: that is
{{ (contact.attributes.points / 100) | round(1) }} pounds off your next order.</p>{% endif %}
<h2>Picked for you</h2>
<ul>{% for item in contact.attributes.picks %}
<li><a href="https://demo-retail.example/p/{{ item }}">{{ item | title }}</a></li>{% endfor %}</ul>
<p><a href="https://demo-retail.example/sale?utm_source=email&amp;utm_campaign=spring"
 style="background:#3b5bdb;color:#fff;padding:12px 20px;border-radius:6px;text-decoration:none">Shop the sale</a></p>
<p>Every item in the sale ships from our own warehouse within 24 hours. If your size is gone, sign up for a restock
alert on the product page and we will tell you the moment it is back. Members also get double points on every sale
purchase this week, and points never expire while your membership is active. See the full terms on our website.</p>
<p>New this season: recycled-fabric outdoor jackets, handmade leather bags from small workshops in Portugal and Spain,
and our first range of trail shoes designed with a local running club. Each product page tells you where and how it
was made, and what it is made of, so you can choose with confidence.</p>
<p>Questions? <a href="https://demo-retail.example/help">Visit our help centre</a> or reply to this email.
Our team answers within a day, seven days a week, and every order comes with 60-day free returns.</p>
<p style="font-size:12px;color:#667085">You receive this because you subscribed at demo-retail.example.
<a href="{{ unsubscribe_url }}">Unsubscribe</a> or <a href="{{ preferences_url }}">manage your preferences</a>.
{{ organisation.postal_address }}</p>
</td></tr></table></td></tr></table></body></html>"""

TEXT = """Hi {{ contact.first_name | default("there") }}, spring is here.
As a {{ contact.attributes.plan }} member you get early access to our spring sale.
Shop: https://demo-retail.example/sale
Unsubscribe: {{ unsubscribe_url }}
{{ organisation.postal_address }}"""


PLANS = ("free", "pro", "enterprise", "Prämie ✓")
PICKS = ("shoes", "bags", "tents", "jackets", "boots", "socks", "caps")


def bench_contacts(count: int) -> list[dict]:
    """Contacts whose attributes differ from one to the next (plan, points, picks), so every rendered message
    carries its own values: a blank or shared value is a rendering bug the checks below catch."""
    import orjson

    contacts = []
    for i in range(count):
        attributes = {
            "plan": PLANS[i % len(PLANS)],
            "points": 90 + i % 50,  # below and above the template's 100 threshold
            "picks": [PICKS[(i + k) % len(PICKS)] for k in range(1 + i % 3)],
        }
        # Through JSON, as stored. Dicts built in Python are why this bench never saw real sends' blank attributes
        # (the claim reads jsonb as text); --parse-attributes parses them per message as the claim's reader does.
        contacts.append(
            {
                "first_name": f"Alex{i}",
                "email": f"alex{i}@example.com",
                "attributes": orjson.loads(orjson.dumps(attributes)),
            }
        )
    return contacts


def expected_parts(contact: dict) -> list[str]:
    """What the rendered HTML must contain for this contact (escaped as the template escapes it)."""
    from html import escape

    attributes = contact["attributes"]
    parts = [f"Hi {contact['first_name']}, spring is here", f"As a {escape(attributes['plan'])} member"]
    parts += [f">{pick.title()}</a>" for pick in attributes["picks"]]
    if attributes["points"] > 100:
        parts.append(f"You have {attributes['points']} points")
    return parts


def check_rendered(contact: dict, rendered: dict) -> None:
    """Fail loudly when a message lacks its contact's values (blank personalisation)."""
    missing = [part for part in expected_parts(contact) if part not in rendered["html"]]
    subject = f"{contact['first_name']}, our spring sale starts now"
    if rendered["subject"] != subject:
        missing.append(f"subject {subject!r} (got {rendered['subject']!r})")
    if f"As a {contact['attributes']['plan']} member" not in rendered["text"]:
        missing.append("the plan in the text part")
    if missing:
        raise SystemExit(f"blank or wrong personalisation for {contact['first_name']}: missing {missing}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--per-message", action="store_true", help="render_message for every message")
    parser.add_argument(
        "--parse-attributes",
        action="store_true",
        help="parse each contact's attributes from jsonb text per message, inside the clock, as a real send does",
    )
    args = parser.parse_args()
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import orjson

    from audiences.jsonb import jsonb_loads
    from campaigns.content.render import MessageContext, Renderer, Sender, render_message

    content = {
        "subject": "{{ contact.first_name }}, our spring sale starts now",
        "preheader": "Up to 40% off",
        "html": HTML,
        "text": TEXT,
        "from_name": "Demo Retail",
        "from_email": "news@demo-retail.example",
    }
    contacts = bench_contacts(1000)
    print(f"template: {len(HTML):,} bytes of HTML + {len(TEXT):,} bytes of text")
    base = dict(
        organisation_id="org",
        organisation_name="Demo Retail",
        postal_address="1 High Street, London EC1A 1AA",
    )
    # Warm up: compile the templates once, as a run does.
    render_message("email", content, MessageContext(message_id="warm", contact=contacts[0], contact_id="1", **base))
    started = time.process_time()
    wall = time.perf_counter()
    size = 0
    samples = []  # every 499th message (a prime: it walks through the 1,000 contacts), checked after the clock
    if args.per_message:
        for index in range(args.messages):
            ctx = MessageContext(message_id=f"m-{index}", contact=contacts[index % 1000], contact_id=str(index), **base)
            rendered = render_message("email", content, ctx)
            size += len(rendered["html"])
            if not index % 499:
                samples.append((contacts[index % 1000], rendered))
    else:
        render = Renderer("email", content, Sender(**base)).render  # once per run (delivery: once per batch)
        texts = [orjson.dumps(contact["attributes"]).decode() for contact in contacts]
        for index in range(args.messages):
            contact = contacts[index % 1000]
            if args.parse_attributes:
                contact = {**contact, "attributes": jsonb_loads(texts[index % 1000])}
            rendered = render(f"m-{index}", contact, str(index))
            size += len(rendered["html"])
            if not index % 499:
                samples.append((contacts[index % 1000], rendered))
    cpu = time.process_time() - started
    elapsed = time.perf_counter() - wall
    for contact, rendered in samples:
        check_rendered(contact, rendered)
    plans = {contact["attributes"]["plan"] for contact, _ in samples}
    print(f"checked {len(samples)} sampled messages: each has its contact's name, plan, picks and points ({plans})")
    print(
        f"rendered {args.messages:,} emails in {elapsed:.2f}s wall, {cpu:.2f}s CPU: "
        f"{args.messages / cpu:,.0f} emails/s per core (average HTML {size // args.messages:,} bytes)"
    )


if __name__ == "__main__":
    main()
