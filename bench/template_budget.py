"""What the render budget costs: the email template pass of bench/render.py (subject, preheader, text and HTML
compiled into one, rendered per contact) with this tree's campaigns.content.templates against another commit's,
in one process, alternating rounds, best round of each (the machine's load moves both alike).

    .venv/bin/python bench/template_budget.py [--against b0b1abd~1] [--rounds 30] [--messages 3000]

The other commit's templates.py is loaded from `git show` as a module of its own (it imports nothing of ours but
what is in both); its environments and caches are separate from this tree's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", default="b0b1abd~1", help="the commit whose templates.py is the 'before'")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    sys.path.append(str(ROOT / "bench"))
    from render import HTML, TEXT, bench_contacts

    import campaigns.content.templates as after

    source = subprocess.run(
        ["git", "show", f"{args.against}:campaigns/content/templates.py"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "templates_before.py"
        path.write_bytes(source)
        spec = importlib.util.spec_from_file_location("templates_before", path)
        assert spec and spec.loader
        before = importlib.util.module_from_spec(spec)
        sys.modules["templates_before"] = before  # dataclasses look their module up
        spec.loader.exec_module(before)

    contacts = bench_contacts(1000)
    sources = (
        ("{{ contact.first_name }}, our spring sale starts now", False),
        ("Up to 40% off", False),
        (TEXT, False),
        (HTML, True),
    )
    best: dict[str, float] = {}
    outputs: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, module in (("before", before), ("after", after)):
            parts = module.compiled_parts(sources)
            prototype = {
                **module.render_globals(),
                "campaign": {"name": "Spring"},
                "organisation": {"name": "Demo Retail", "postal_address": "1 High Street"},
            }
            started = time.process_time()
            for i in range(args.messages):
                variables = {
                    **prototype,
                    "contact": contacts[i % 1000],
                    "unsubscribe_url": "https://example.com/u/t",
                    "preferences_url": "https://example.com/p/t",
                    "message_id": str(i),
                }
                rendered = parts.render_variables(variables)
            best[name] = min(best.get(name, float("inf")), (time.process_time() - started) / args.messages)
            outputs[name] = rendered[-1]
    if outputs["before"] != outputs["after"]:
        raise SystemExit("the two versions render different HTML")
    for name, seconds in best.items():
        print(f"{name}: {seconds * 1e6:.1f} µs CPU per email's template pass ({1 / seconds:,.0f}/s)")
    extra = best["after"] - best["before"]
    print(f"the budget costs {extra / best['before']:+.1%} ({extra * 1e6:.1f} µs per message)")


if __name__ == "__main__":
    main()
