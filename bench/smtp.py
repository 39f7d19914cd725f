"""The SMTP path end to end: 50,000 personalised HTML emails through our engine and through django-post-office,
against the same local SMTP sink (aiosmtpd) and PostgreSQL, in one run.

    .venv/bin/python bench/smtp.py [--messages 50000] [--workers 2] [--peer-python /tmp/po-venv/bin/python]
        [--step-by-step | --replies-together]

The peer is installed in a virtualenv of its own, outside the repository, e.g.
    python3 -m venv /tmp/po-venv && /tmp/po-venv/bin/pip install django-post-office 'django>=5.2,<5.3' 'psycopg[binary]'
and this script writes its throwaway Django project under /tmp (none of it is part of the repository). Without
--peer-python only our engine runs.

Ours: the bench database (<DATABASE_URL name>_bench) gets an organisation "bench-smtp" with N contacts (made on the
first run, through the import path); a campaign with two personalised variants (bench/delivery.py's email content,
tracking on) is fanned out (not timed, like the peer's queueing), then real Celery worker processes (solo pool)
send it through delivery.channels.EmailBackend to the sink. Measured: wall time from the run's start to its
completion, and the CPU time (user + system) of the worker processes over it: claim, render, MIME bytes, SMTP,
record. The peer: `mail.send_many` queues N emails with a Django template (EmailTemplate) and each recipient's
context (timed apart), then `mail.send_queued(processes=N workers)` renders on delivery and sends them to the same
sink until none is left; its CPU is that process's and its children's (resource.getrusage). The sink runs in its
own process (its CPU is counted by neither) and counts what it received: every figure is checked against it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


# --- the sink -------------------------------------------------------------------------------------------------------


def run_sink(port: int, count_file: str, *, pipelining: bool, replies_together: bool = False) -> None:
    """An aiosmtpd server that accepts everything and writes how many messages it received to count_file. With
    `pipelining` its EHLO answer lists PIPELINING (RFC 2920), as Postfix's and most providers' do (aiosmtpd serves
    pipelined commands in order but does not advertise them). aiosmtpd writes every reply on its own, so a client
    reading a pipelined group's replies is woken for each; with `replies_together` the sink holds a reply while the
    client's next command is already read in, and writes the held replies together when it would wait for input,
    as Postfix's smtpd and Exim do (RFC 2920 §3.2: the server may buffer replies to pipelined commands)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    received = 0

    class Counting:
        async def handle_DATA(self, server, session, envelope):
            nonlocal received
            received += 1
            return "250 OK"

        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            session.host_name = hostname
            return [*responses[:-1], "250-PIPELINING", responses[-1]] if pipelining else responses

    class RepliesTogether(SMTP):
        held: list[bytes]

        async def push(self, status):
            response = status.encode("ascii") if isinstance(status, str) else status
            self.held = [*getattr(self, "held", []), response + b"\r\n"]
            if b"\n" in self._reader._buffer:  # the next command is here already: its reply can go with this one
                return
            self._writer.write(b"".join(self.held))
            self.held = []
            await self._writer.drain()

    class SinkController(Controller):
        def factory(self):
            return RepliesTogether(self.handler, **self.SMTP_kwargs) if replies_together else super().factory()

    controller = SinkController(Counting(), hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        Path(count_file).write_text(str(received))
    Path(count_file).write_text(str(received))
    controller.stop()


class Sink:
    def __init__(self, *, pipelining: bool, replies_together: bool = False) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.count_file = tempfile.mktemp(prefix="bench-smtp-sink-")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--sink", str(self.port), "--count-file", self.count_file]
            + ([] if pipelining else ["--step-by-step"])
            + (["--replies-together"] if replies_together else [])
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the SMTP sink did not start")

    def received(self) -> int:
        time.sleep(1.0)  # the sink writes its count every half second
        try:
            return int(Path(self.count_file).read_text() or 0)
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a connection the peer left open holds the server's loop
            self.process.kill()
            self.process.wait()
        Path(self.count_file).unlink(missing_ok=True)


# --- our engine -----------------------------------------------------------------------------------------------------


def seed_contacts(count: int):
    """The bench-smtp organisation with at least `count` contacts (bench/audiences.py's synthetic rows)."""
    from audiences import models
    from audiences.contacts import MAX_BATCH, contacts_upsert_stream
    from bench.audiences import synthetic

    organisation, _ = models.Organisation.objects.get_or_create(
        slug="bench-smtp",
        defaults={
            "name": "Bench SMTP",
            "sender_email": "news@bench-smtp.example",
            "sender_name": "Smith, Jones & Co",
            "postal_address": "1 Bench Street, London",
        },
    )
    existing = models.Contact.objects.filter(organisation=organisation).count()
    if existing < count:
        rng, today = random.Random(7), date.today()
        batches = [
            (start, synthetic(start, min(MAX_BATCH, count - start), rng, today))
            for start in range(existing, count, MAX_BATCH)
        ]
        started = time.perf_counter()
        contacts_upsert_stream(organisation=organisation, batches=batches)
        print(f"seeded {count - existing:,} contacts in {time.perf_counter() - started:.1f}s")
    return organisation


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


def run_ours(args, sink: Sink) -> dict:
    from django.db import connection

    from audiences.access import system_actor
    from audiences.models import Contact
    from bench.delivery import CONTENT
    from campaigns import services
    from delivery.fanout import run_create, run_fan_out
    from delivery.models import Run
    from delivery.runs import run_prepare

    organisation = seed_contacts(args.messages)
    last_id = (
        Contact.objects.filter(organisation=organisation).order_by("id").values_list("id", flat=True)[args.messages - 1]
    )
    campaign = services.campaign_create(
        actor=system_actor(organisation, "bench"),
        name=f"SMTP bench {time.time_ns()}",
        channels=["email"],
        audience={"rules": {"field": "email", "op": "exists"}},
        variants=[
            {"name": "A", "allocation_percent": 50, "content": {"email": CONTENT["email"]}},
            {"name": "B", "allocation_percent": 50, "content": {"email": CONTENT["email"]}},
        ],
    )
    run = run_create(campaign=campaign)
    run_fan_out(run.pk)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM delivery_message WHERE run_id = %s AND contact_id > %s", [str(run.pk), last_id])
        cursor.execute("SELECT count(*) FROM delivery_message WHERE run_id = %s AND status = 'queued'", [str(run.pk)])
        queued = cursor.fetchone()[0]
    Run.objects.filter(pk=run.pk).update(message_count=queued)
    connection.close()  # the workers need the connections more than this process does
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
                os.environ["CELERY_TASK_DEFAULT_QUEUE"],
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
                f"smtp{index}@%h",
            ],
            cwd=ROOT,
            env=dict(os.environ),
            start_new_session=True,
        )
        for index in range(args.workers)
    ]
    try:
        time.sleep(5)  # workers up (their start-up CPU is left out below)
        before_received = sink.received()
        cpu_before = cpu_seconds([w.pid for w in workers])
        started = time.perf_counter()
        run_prepare(run.pk)
        while Run.objects.get(pk=run.pk).status != Run.Status.COMPLETED:
            time.sleep(0.2)
            if time.perf_counter() - started > 1800:
                raise SystemExit("gave up after 30 minutes")
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds([w.pid for w in workers]) - cpu_before
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
    current = Run.objects.get(pk=run.pk)
    received = sink.received() - before_received
    with connection.cursor() as cursor:  # leave the bench database as it was
        cursor.execute("DELETE FROM delivery_message WHERE run_id = %s", [str(run.pk)])
        cursor.execute("DELETE FROM analytics_engagementevent WHERE run_id = %s", [str(run.pk)])
    Run.objects.filter(pk=run.pk).delete()
    return {
        "sent": current.sent_count,
        "failed": current.failed_count,
        "received": received,
        "seconds": elapsed,
        "cpu_seconds": cpu,
    }


# --- the peer: django-post-office in its own virtualenv -------------------------------------------------------------

PEER_SETTINGS = """
import os
SECRET_KEY = "bench"
INSTALLED_APPS = ["django.contrib.contenttypes", "post_office"]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": os.environ["PO_DB_NAME"],
             "HOST": os.environ["PO_DB_HOST"], "PORT": os.environ["PO_DB_PORT"], "USER": os.environ["PO_DB_USER"],
             "PASSWORD": os.environ["PO_DB_PASSWORD"]}}
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST, EMAIL_PORT = "127.0.0.1", int(os.environ["PO_SMTP_PORT"])
POST_OFFICE = {"BATCH_SIZE": 1000, "LOG_LEVEL": 0, "MAX_RETRIES": 0}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

# The same content as ours (bench/delivery.py's email), in Django's template language, with a text part.
PEER_RUN = """
import json, os, random, resource, sys, time
sys.path.insert(0, os.path.dirname(__file__))
os.environ["DJANGO_SETTINGS_MODULE"] = "po_settings"
import django
django.setup()
from django.core.management import call_command
from django.db import connection
from post_office import mail
from post_office.models import STATUS, Email, EmailTemplate, Log

call_command("migrate", verbosity=0)
Log.objects.all().delete()
Email.objects.all().delete()
template, _ = EmailTemplate.objects.update_or_create(name="bench", defaults=dict(
    subject="{{ first_name }}, your {{ plan }} offers",
    content="Hi {{ first_name }}\\n\\nNew in {{ country }}: see what is new "
            "(https://shop.example.com/new?plan={{ plan }}).\\n{% if orders >= 5 %}{{ orders }} orders: thank you\\n"
            "{% endif %}For you: {% for i in interests %}{{ i }} {% endfor %}\\n\\n{{ unsubscribe_url }}",
    html_content="<html><body><h1>Hi {{ first_name }}</h1><p>New in {{ country }}:"
                 " <a href=\\"https://shop.example.com/new?plan={{ plan }}\\">see what is new</a>.</p>"
                 "{% if orders >= 5 %}<p>{{ orders }} orders: thank you</p>{% endif %}"
                 "<p>For you: {% for i in interests %}{{ i }} {% endfor %}</p>"
                 "<p>{{ unsubscribe_url }}</p></body></html>"))
count, processes = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(7)
plans = ["free"] * 14 + ["pro"] * 5 + ["enterprise"]
countries = ["GB", "FR", "DE", "US", "ES", "NL", "IE", "IT", "SE", "PL"]
interests = ["shoes", "bags", "outdoor", "kids", "sale", "beauty", "home", "tech"]

def usage():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

cpu0, wall0 = usage(), time.perf_counter()
for start in range(0, count, 5000):
    mail.send_many([
        dict(recipients=[f"user{i}@example.com"], sender='"Smith, Jones & Co" <news@bench-smtp.example>',
             template=template, render_on_delivery=True,
             context={"first_name": "Alex", "plan": plans[i % len(plans)], "country": rng.choice(countries),
                      "orders": rng.randrange(0, 30), "interests": rng.sample(interests, rng.randrange(0, 4)),
                      "unsubscribe_url": f"https://bench.example/u/{i}"})
        for i in range(start, min(count, start + 5000))
    ])
cpu1, wall1 = usage(), time.perf_counter()
while Email.objects.filter(status=STATUS.queued).exists():
    mail.send_queued(processes=processes)
    # The forked senders close the connection they inherited, which ends it for this process too.
    connection.close()
cpu2, wall2 = usage(), time.perf_counter()
print(json.dumps({"queue_seconds": wall1 - wall0, "queue_cpu_seconds": cpu1 - cpu0,
                  "seconds": wall2 - wall1, "cpu_seconds": cpu2 - cpu1,
                  "sent": Email.objects.filter(status=STATUS.sent).count(),
                  "failed": Email.objects.filter(status=STATUS.failed).count()}))
"""


def run_peer(args, sink: Sink) -> dict:
    from urllib.parse import unquote, urlsplit

    from config.devstack import ensure_database

    base = urlsplit(os.environ["DATABASE_URL"])
    peer_url = base._replace(path=base.path.rstrip("/") + "_post_office").geturl()
    ensure_database(peer_url)
    project = Path(tempfile.mkdtemp(prefix="bench-post-office-"))
    (project / "po_settings.py").write_text(textwrap.dedent(PEER_SETTINGS))
    (project / "run.py").write_text(PEER_RUN)
    parts = urlsplit(peer_url)
    env = {
        **os.environ,
        "PO_DB_NAME": parts.path.lstrip("/"),
        "PO_DB_HOST": parts.hostname or "127.0.0.1",
        "PO_DB_PORT": str(parts.port or 5432),
        "PO_DB_USER": unquote(parts.username or "postgres"),
        "PO_DB_PASSWORD": unquote(parts.password or ""),
        "PO_SMTP_PORT": str(sink.port),
    }
    before = sink.received()
    output = subprocess.run(
        [args.peer_python, str(project / "run.py"), str(args.messages), str(args.workers)],
        env=env,
        capture_output=True,
        text=True,
        cwd=project,
    )
    if output.returncode:
        raise SystemExit(f"django-post-office failed:\n{output.stderr[-3000:]}")
    result = json.loads(output.stdout.strip().splitlines()[-1])
    result["received"] = sink.received() - before
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (ours) and send processes (peer)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--peer-python", help="the python of a virtualenv with django-post-office installed")
    parser.add_argument(
        "--step-by-step", action="store_true", help="the sink does not offer PIPELINING: MAIL, RCPT, DATA one by one"
    )
    parser.add_argument(
        "--replies-together",
        action="store_true",
        help="the sink writes the replies to a pipelined group together, as Postfix and Exim do",
    )
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink(args.sink, args.count_file, pipelining=not args.step_by_step, replies_together=args.replies_together)
        return

    sink = Sink(pipelining=not args.step_by_step, replies_together=args.replies_together)
    kind = "step by step" if args.step_by_step else "offers PIPELINING"
    print(f"sink: {kind}{', replies to a group written together' if args.replies_together else ''}")
    os.environ.update(
        {
            "DELIVERY_BACKEND_EMAIL": "delivery.channels.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(sink.port),
            "CELERY_TASK_DEFAULT_QUEUE": f"bench-smtp-{uuid.uuid4().hex[:8]}",
            "DELIVERY_BATCH_SIZE": str(args.batch),
            "DELIVERY_PARALLELISM": str(args.workers * 2),
        }
    )
    from benchdb import setup_django

    setup_django()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    try:
        ours = run_ours(args, sink)
        report("ours (delivery.channels.EmailBackend)", ours, args.messages)
        if args.peer_python:
            peer = run_peer(args, sink)
            report("django-post-office (send_queued)", peer, args.messages)
            print(
                f"  queueing (send_many, not in the figure above): {peer['queue_seconds']:.1f}s, "
                f"{1000 * peer['queue_cpu_seconds'] / args.messages:.3f} CPU-ms per message"
            )
            ratio_wall = peer["seconds"] / ours["seconds"]
            ratio_cpu = peer["cpu_seconds"] / ours["cpu_seconds"]
            print(f"ours vs django-post-office: {ratio_wall:.1f}x the rate, {ratio_cpu:.1f}x less CPU per message")
    finally:
        sink.stop()
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def report(name: str, result: dict, wanted: int) -> None:
    sent = result["sent"]
    print(
        f"{name}: {sent:,} sent ({result['failed']:,} failed, {result['received']:,} received by the sink) in "
        f"{result['seconds']:.1f}s = {60 * sent / result['seconds']:,.0f}/min; "
        f"{1000 * result['cpu_seconds'] / max(sent, 1):.3f} CPU-ms per message"
    )
    if result["received"] != wanted or sent != wanted:
        print(f"  WARNING: {wanted:,} wanted")


if __name__ == "__main__":
    main()
