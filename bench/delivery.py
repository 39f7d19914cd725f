"""End-to-end sending: a fanned-out run handed to the sandbox provider (zero latency) by real Celery workers.

    .venv/bin/python bench/delivery.py [--channel email|sms|in_app] [--limit 1000000] [--workers 2]
                                       # after bench/audiences.py has loaded its contacts

Uses the bench database and the organisation bench/audiences.py fills, and the machine's Redis (REDIS_URL) on a
private queue. The campaign has two variants (50/50) with personalised content and open/click tracking; fan-out
is done first and not timed (bench/fanout.py measures it). The clock starts when the workers are asked to send
and stops when the run is completed: every message claimed (SELECT … FOR UPDATE SKIP LOCKED), rendered, handed
to the sandbox provider (which books every idempotency key in its own ledger and draws outcomes and engagement),
and recorded (message statuses, run counters, engagement events) in PostgreSQL.

The content uses the contacts' attributes (plan, country, orders in an `if`, interests in a loop; the webhook payload
their JSON), and the workers hand each batch over through SamplingBackend, which keeps the first message of every
batch: after the run the bench checks each kept message against its contact's attributes and fails if one is blank
or wrong, or if any message failed on its template.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONTENT = {
    "email": {
        "subject": "{{ contact.first_name }}, your {{ contact.attributes.plan }} offers",
        "html": "<html><body><h1>Hi {{ contact.first_name }}</h1><p>New in {{ contact.attributes.country }}:"
        ' <a href="https://shop.example.com/new?plan={{ contact.attributes.plan }}">see what is new</a>.</p>'
        "{% if contact.attributes.orders >= 5 %}<p>{{ contact.attributes.orders }} orders: thank you</p>{% endif %}"
        "<p>For you: {% for i in contact.attributes.interests %}{{ i }} {% endfor %}</p>"
        "<p>{{ unsubscribe_url }}</p></body></html>",
    },
    # SMS content is counted against the one-message limit as written (a brace is two GSM-7 units): written tight.
    "sms": {
        "body": "{%set a=contact.attributes%}Hi {{contact.first_name}}, {{a.plan}} offers"
        "{%if a.orders>=5%} ({{a.orders}} orders){%endif%}: https://ex.am/p"
    },
    "in_app": {
        "title": "Hi {{ contact.first_name }}",
        "body": "New {{ contact.attributes.plan }} offers in {{ contact.attributes.country }}",
    },
    "whatsapp": {
        "body": "Hi {{ contact.first_name }}, {{ contact.attributes.plan }} offers"
        "{% if contact.attributes.orders >= 5 %} ({{ contact.attributes.orders }} orders){% endif %} inside"
    },
    "webhook": {
        "url": "http://127.0.0.1:{port}/hooks/campaign",
        "payload_template": '{"user": "{{ contact.external_id }}", "plan": {{ contact.attributes.plan | tojson }},'
        ' "orders": {{ contact.attributes.orders }}, "interests": {{ contact.attributes.interests | tojson }}}',
    },
}


def expected_content(channel: str, contact) -> dict:
    """What CONTENT must render to for this contact: its own attribute values, never blanks."""
    name, attributes = contact.first_name, contact.attributes
    plan, orders = attributes["plan"], attributes["orders"]
    if channel == "email":
        thanks = f"<p>{orders} orders: thank you</p>" if orders >= 5 else ""
        picks = "".join(f"{i} " for i in attributes["interests"])
        return {
            "subject": f"{name}, your {plan} offers",
            "html": f"<h1>Hi {name}</h1><p>New in {attributes['country']}:",
            "html ": f".</p>{thanks}<p>For you: {picks}</p>",
        }
    if channel in ("sms", "whatsapp"):
        counted = f" ({orders} orders)" if orders >= 5 else ""
        tail = ": https://ex.am/p" if channel == "sms" else " inside"
        return {"body": f"Hi {name}, {plan} offers{counted}{tail}"}
    if channel == "in_app":
        return {"title": f"Hi {name}", "body": f"New {plan} offers in {attributes['country']}"}
    return {"body": {"user": contact.external_id, "plan": plan, "orders": orders, "interests": attributes["interests"]}}


class SamplingBackend:
    """The channel's real backend (BENCH_INNER_BACKEND), which first appends the first message of every batch to
    BENCH_SAMPLES_FILE: the bench checks afterwards that what was handed over carries each contact's values. One
    small write per batch, next to a provider call."""

    def __init__(self) -> None:
        from django.utils.module_loading import import_string

        self.inner = import_string(os.environ["BENCH_INNER_BACKEND"])()
        self.path = os.environ["BENCH_SAMPLES_FILE"]

    def send_batch(self, messages, *, profile):
        if messages:
            first = messages[0]
            with open(self.path, "a") as samples:
                samples.write(json.dumps({"contact_id": first.contact_id, "payload": first.payload}) + "\n")
        return self.inner.send_batch(messages, profile=profile)


def check_samples(channel: str, path: str, run) -> int:
    """Every sampled message must be exactly what its contact's attributes give; no message may have failed on
    its template. Fails loudly otherwise (a bench of blank messages measures nothing)."""
    from audiences.models import Contact
    from delivery.models import Message

    samples = [json.loads(line) for line in Path(path).read_text().splitlines()]
    if not samples:
        raise SystemExit("no message reached the provider: nothing to check")
    contacts = Contact.objects.in_bulk([s["contact_id"] for s in samples])
    wrong = []
    for sample in samples:
        payload, contact = sample["payload"], contacts[sample["contact_id"]]
        for field, want in expected_content(channel, contact).items():
            got = payload[field.strip()]
            if field == "body" and channel == "webhook":
                ok = json.loads(got) == want
            elif field.startswith("html"):
                ok = want in got
            else:
                ok = got == want
            if not ok:
                wrong.append((contact.external_id, field.strip(), want, got[:300] if isinstance(got, str) else got))
    if wrong:
        raise SystemExit(f"{len(wrong)} sampled messages lack their contact's values, e.g. {wrong[:3]}")
    failed = Message.objects.filter(run=run, error__startswith="template").count()
    if failed:
        raise SystemExit(f"{failed} messages failed on their template")
    return len(samples)


# --peer: the real backend for the channel, against bench/peer_server.py (a local provider answering after a delay).
REAL_BACKENDS = {
    "webhook": "delivery.channels.WebhookBackend",
    "sms": "delivery.channels.NotificationServiceBackend",
    "whatsapp": "delivery.channels.NotificationServiceBackend",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channel", choices=sorted(CONTENT), default="email")
    parser.add_argument("--limit", type=int, default=1_000_000, help="recipients (the first N contacts)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="worker processes")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--peer", action="store_true", help="webhook/sms/whatsapp: the real backend against a local peer server"
    )
    parser.add_argument("--peer-latency-ms", type=float, default=50)
    parser.add_argument("--per-minute", type=int, help="throttle the campaign to N messages a minute and measure it")
    parser.add_argument("--measure-minutes", type=int, default=5, help="with --per-minute: how long to measure")
    args = parser.parse_args()
    peer = None
    if args.peer:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        peer = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "peer_server.py"),
                "--port",
                str(port),
                "--latency-ms",
                str(args.peer_latency_ms),
            ]
        )
        os.environ["SSRF_ALLOWED_TARGETS"] = f"127.0.0.1:{port}"
        os.environ["NOTIFICATION_SERVICE_URL"] = f"http://127.0.0.1:{port}"
        CONTENT["webhook"]["url"] = CONTENT["webhook"]["url"].replace("{port}", str(port))

    # The workers hand every batch to the real backend through SamplingBackend, which keeps one message per batch.
    samples_file = Path(f"/tmp/bench-delivery-samples-{uuid.uuid4().hex[:8]}.jsonl")
    samples_file.touch()
    os.environ["BENCH_SAMPLES_FILE"] = str(samples_file)
    os.environ["BENCH_INNER_BACKEND"] = REAL_BACKENDS[args.channel] if args.peer else "delivery.sandbox.SandboxBackend"
    os.environ[f"DELIVERY_BACKEND_{args.channel.upper()}"] = "bench.delivery.SamplingBackend"
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/campaign_service")
    parts = urlsplit(base)
    os.environ["DATABASE_URL"] = parts._replace(
        path=(parts.path.rstrip("/") or "/campaign_service") + "_bench"
    ).geturl()
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    queue = f"bench-delivery-{uuid.uuid4().hex[:8]}"
    os.environ["CELERY_TASK_DEFAULT_QUEUE"] = queue
    os.environ["DELIVERY_BATCH_SIZE"] = str(args.batch)
    os.environ["DELIVERY_PARALLELISM"] = str(args.workers * 2)
    os.environ["SANDBOX_LATENCY_MS"] = "0"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from audiences.access import system_actor
    from audiences.models import Contact, Organisation
    from delivery.fanout import run_create, run_fan_out
    from delivery.models import Run
    from delivery.runs import run_prepare

    call_command("migrate", verbosity=0)
    organisation = Organisation.objects.get(slug="bench-audiences")
    if not organisation.postal_address:
        Organisation.objects.filter(pk=organisation.pk).update(postal_address="1 Bench Street, London")
    last_id = (
        Contact.objects.filter(organisation=organisation).order_by("id").values_list("id", flat=True)[args.limit - 1]
    )
    from campaigns import services

    actor = system_actor(organisation, "bench")
    campaign = services.campaign_create(
        actor=actor,
        name=f"Delivery bench {time.time_ns()}",
        channels=[args.channel],
        audience={"rules": {"field": "email", "op": "exists"}},
        messages_per_minute=args.per_minute,
        variants=[
            {"name": "A", "allocation_percent": 50, "content": {args.channel: CONTENT[args.channel]}},
            {"name": "B", "allocation_percent": 50, "content": {args.channel: CONTENT[args.channel]}},
        ],
    )
    # Everyone with an address is fanned out, then the run is cut down to the first N contacts (by id) so --limit
    # needs no segment import.
    run = run_create(campaign=campaign)
    started = time.perf_counter()
    run_fan_out(run.pk)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM delivery_message WHERE run_id = %s AND contact_id > %s", [str(run.pk), last_id])
        cursor.execute("SELECT count(*) FROM delivery_message WHERE run_id = %s AND status = 'queued'", [str(run.pk)])
        queued = cursor.fetchone()[0]
    Run.objects.filter(pk=run.pk).update(message_count=queued)
    print(f"fan-out of the bench audience (not timed here): {time.perf_counter() - started:.1f}s; {queued:,} queued")

    env = dict(os.environ)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queue,
                "--concurrency",
                "1",
                "--pool",
                "solo",
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"bench{index}@%h",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        for index in range(args.workers)
    ]
    try:
        time.sleep(4)  # workers up
        started = time.perf_counter()
        run_prepare(run.pk)  # READY → SENDING and one task per lane
        last_report = started
        while True:
            time.sleep(0.5)
            current = Run.objects.get(pk=run.pk)
            now = time.perf_counter()
            if now - last_report >= 5:
                done = current.sent_count + current.failed_count + current.skipped_count
                print(f"  {now - started:5.1f}s  {done:,} / {queued:,}", flush=True)
                last_report = now
            if current.status == Run.Status.COMPLETED:
                break
            if args.per_minute and now - started >= args.measure_minutes * 60 + 1:
                break
            if now - started > 1800:
                raise SystemExit("gave up after 30 minutes")
        elapsed = time.perf_counter() - started
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
    if peer is not None:
        import httpx

        stats = httpx.get(f"{os.environ['NOTIFICATION_SERVICE_URL']}/stats").json()
        print(
            f"peer ({args.peer_latency_ms:.0f} ms per request): {stats['requests']:,} requests, {stats['keys']:,} keys"
        )
        peer.terminate()
    if args.per_minute:
        report_throttle(run, args.per_minute, args.measure_minutes)
    current = Run.objects.get(pk=run.pk)
    handed = current.sent_count + current.failed_count
    backend = REAL_BACKENDS[args.channel] if args.peer else "sandbox"
    print(
        f"sending ({args.channel} via {backend}, {args.workers} worker processes, batches of {args.batch}): "
        f"{handed:,} messages "
        f"in {elapsed:.1f}s = {handed / elapsed:,.0f} messages/s = {60 * handed / elapsed:,.0f} messages/minute"
    )
    checked = check_samples(args.channel, str(samples_file), run)
    print(f"checked {checked} sampled messages (one per batch): each carries its own contact's attribute values")
    samples_file.unlink()
    with connection.cursor() as cursor:  # leave the bench database as it was
        cursor.execute("DELETE FROM delivery_message WHERE run_id = %s", [str(run.pk)])
        cursor.execute("DELETE FROM delivery_sandboxhandoff WHERE run_id = %s", [str(run.pk)])
        cursor.execute("DELETE FROM analytics_engagementevent WHERE run_id = %s", [str(run.pk)])
    Run.objects.filter(pk=run.pk).delete()


def report_throttle(run, per_minute: int, minutes: int) -> None:
    """Messages per minute over the measured period, and the busiest 60-second window anywhere in it."""
    from delivery.models import Message

    times = sorted(
        t.timestamp() for t in Message.objects.filter(run=run, sent_at__isnull=False).values_list("sent_at", flat=True)
    )
    if not times:
        print("nothing was sent")
        return
    first = times[0]
    measured = [t for t in times if t < first + minutes * 60]
    per = [sum(1 for t in measured if first + 60 * m <= t < first + 60 * (m + 1)) for m in range(minutes)]
    busiest, lo = 0, 0
    for hi, t in enumerate(measured):
        while measured[lo] <= t - 60:
            lo += 1
        busiest = max(busiest, hi - lo + 1)
    mean = sum(per) / len(per)
    print(f"throttle {per_minute:,}/min over {minutes} minutes: per minute {per}")
    print(
        f"  mean {mean:,.1f}/min ({100 * (mean - per_minute) / per_minute:+.2f} % of N); "
        f"busiest 60-second window {busiest:,} ({'within' if busiest <= per_minute else 'ABOVE'} N)"
    )


if __name__ == "__main__":
    main()
