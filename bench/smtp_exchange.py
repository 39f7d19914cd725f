"""The email channel's raw SMTP path alone, in this process: N prebuilt messages (bench/delivery.py-sized HTML and
text, List-Unsubscribe, a display name with a comma) through delivery.channels' batch sender to bench/smtp.py's
aiosmtpd sink in its own process, 1,000 a batch as the engine sends them. No database work, no rendering: the MIME
bytes (delivery.mime) and the SMTP exchange. Prints CPU-ms per message (user + system of this process).

    .venv/bin/python bench/smtp_exchange.py [--messages 10000] [--step-by-step | --replies-together]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")

HTML = (
    '<html><body><h1>Hi Ann</h1><p>New in GB: <a href="https://t.example/c/abcdefgh1234567">see what is new</a>.</p>'
    "<p>7 orders: thank you</p><p>For you: shoes hats bags </p><p>https://t.example/u/abcdefghijkl</p></body></html>"
)
TEXT = "Hi Ann\nNew in GB: see what is new [https://t.example/c/abcdefgh1234567].\n7 orders: thank you\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--step-by-step", action="store_true", help="a sink that does not offer PIPELINING")
    parser.add_argument("--replies-together", action="store_true", help="a sink that writes a group's replies at once")
    args = parser.parse_args()

    import django

    django.setup()
    import smtp as bench_smtp
    from django.conf import settings

    from delivery.backends import Outgoing
    from delivery.channels import EmailBackend

    sink = bench_smtp.Sink(pipelining=not args.step_by_step, replies_together=args.replies_together)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", sink.port

    def outgoing(number: int) -> Outgoing:
        headers = {
            "Message-ID": f"<{number}.bench@bench-smtp.example>",
            "List-Unsubscribe": "<https://t.example/u/abcdefghijkl>",
            "X-Campaign-Message-Id": str(number),
        }
        payload = {
            "subject": f"Ann, your plan {number} offers",
            "from": '"Smith, Jones & Co" <news@bench-smtp.example>',
            "from_email": "news@bench-smtp.example",
            "html": HTML,
            "text": TEXT,
            "headers": headers,
        }
        return Outgoing(number, f"k{number}", "email", "", "", "", "", "A", number, f"u{number}@example.com", payload)

    messages = [outgoing(number) for number in range(args.messages)]
    backend = EmailBackend()
    backend.send_batch(messages[:200], profile={})  # connections and caches warm
    before, started = os.times(), time.perf_counter()
    sent = 0
    for start in range(0, len(messages), 1000):
        outcomes = backend.send_batch(messages[start : start + 1000], profile={})
        sent += sum(outcome.status == "sent" for outcome in outcomes)
    after, wall = os.times(), time.perf_counter() - started
    sink.stop()
    cpu = (after.user - before.user) + (after.system - before.system)
    load = os.getloadavg()
    print(
        f"{sent:,} of {len(messages):,} sent in {wall:.1f}s: {1000 * cpu / len(messages):.3f} CPU-ms per message"
        f" (user {1000 * (after.user - before.user) / len(messages):.3f}); load average at the end {load[0]:.2f}"
    )


if __name__ == "__main__":
    main()
