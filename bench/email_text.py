"""The text part derived from an email's HTML (no text template), per message on one core.

    .venv/bin/python bench/email_text.py [--messages 20000]

bench/render.py's 3 KB marketing email, with its explicit text part left empty: the text part is then the HTML
template converted to a text template once (campaigns.content.render.text_template_from_html) and rendered per
message. Prints the one-time conversion's cost and the per-message rendering rate, beside the same email with its
explicit text part (bench/render.py's figure) for comparison in the same process.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _render_bench():  # bench/ is not a package: bench/render.py's email and contacts, loaded from its file
    spec = importlib.util.spec_from_file_location("bench_render", ROOT / "bench" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rate(renderer, contacts: list[dict], messages: int) -> tuple[float, dict]:
    started = time.process_time()
    rendered: dict = {}
    for index in range(messages):
        rendered = renderer.render(f"m-{index}", contacts[index % len(contacts)], str(index))
    return messages / (time.process_time() - started), rendered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from campaigns.content import render

    bench = _render_bench()
    contacts = bench.bench_contacts(1000)
    sender = render.Sender(organisation_id="org", organisation_name="Demo Retail", postal_address="1 High Street")
    base = {"subject": "{{ contact.first_name }}, our spring sale", "html": bench.HTML, "from_email": "n@demo.example"}

    started = time.process_time()
    derived = render.text_template_from_html(bench.HTML)
    print(f"conversion of the {len(bench.HTML):,}-byte template, once: {(time.process_time() - started) * 1000:.1f} ms")
    if not derived:
        raise SystemExit("the template fell back to converting every message")
    for label, content in (
        ("derived text part", {**base, "text": ""}),
        ("explicit text part", {**base, "text": bench.TEXT}),
    ):
        renderer = render.Renderer("email", content, sender)
        renderer.render("warm", contacts[0], "1")
        if renderer.program.convert_text:
            raise SystemExit(f"{label}: the tracked template fell back to converting every message")
        rate, last = _rate(renderer, contacts, args.messages)
        print(f"{label}: {rate:,.0f} emails/s per core ({len(last['text']):,} characters of text)")


if __name__ == "__main__":
    main()
