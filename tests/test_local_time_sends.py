""" "Send at 09:00 in each recipient's time zone", end to end: a campaign with a local send time and contacts from
UTC-11 to UTC+14 is sent through the API by a real Celery worker and celery-beat to a real SMTP server. The local
time is the next minute in Honolulu (-10), which is the same instant in Kiritimati (+14): those recipients' mail
must arrive within the PRD's 60 s of it and not before; everyone else's message waits for their own next local
time, tomorrow's where today's has passed (exact due times asserted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.utils import timezone

from audiences.contacts import contacts_upsert_rows
from campaigns.models import Variant
from delivery.models import Message, Run
from tests.factories import CampaignFactory
from tests.support import database_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
DELIVERY_LIMIT = timedelta(seconds=60)  # PRD: a message leaves within 60 s of its due time
ZONES = (
    "Pacific/Pago_Pago",  # -11
    "Pacific/Honolulu",  # -10
    "Pacific/Marquesas",  # -9:30
    "America/Anchorage",  # -9
    "America/New_York",  # -5
    "America/Sao_Paulo",  # -3
    "Europe/London",  # 0
    "Asia/Kolkata",  # +5:30
    "Asia/Tokyo",  # +9
    "Australia/Lord_Howe",  # +10:30 / +11
    "Pacific/Tongatapu",  # +13
    "Pacific/Kiritimati",  # +14
)
NO_ZONE = ""  # the contact without a timezone is read in the organisation's (Europe/London)


@contextmanager
def engine(tmp_path: Path, queue: str) -> Iterator[None]:
    """A Celery worker and celery-beat (the delivery pump) on the test database and this session's task queue,
    sending email to the test's SMTP server."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CELERY_TASK_DEFAULT_QUEUE=queue,
        SECRET_KEY=settings.SECRET_KEY,  # the worker decrypts the addresses this process encrypted
        DB_CONN_MAX_AGE="0",
        DELIVERY_BACKEND_EMAIL="delivery.channels.EmailBackend",
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST=settings.EMAIL_HOST,
        EMAIL_PORT=str(settings.EMAIL_PORT),
        DELIVERY_PUMP_SECONDS="1",
    )
    log = (tmp_path / "celery.log").open("wb")  # left in pytest's tmp dir for a failure's post-mortem
    common = {"cwd": ROOT, "env": env, "stdout": log, "stderr": subprocess.STDOUT}
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    processes = [
        subprocess.Popen(
            [*celery, "worker", "-Q", queue, "--concurrency", "2", "-l", "warning", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            start_new_session=True,  # its own process group, so a kill reaches the pool's children
            **common,
        ),
        subprocess.Popen(
            [*celery, "beat", "-l", "warning", "-s", str(tmp_path / "beat-schedule"),
             "--scheduler", "celery.beat:PersistentScheduler"],
            start_new_session=True,
            **common,
        ),
    ]  # fmt: skip
    try:
        yield
    finally:
        for process in processes:
            process.terminate()  # a warm shutdown: the worker finishes its task
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def wait_for(predicate, *, until: float) -> bool:
    while time.time() < until:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _worker_ready() -> bool:
    from config.celery import app

    return bool(app.control.ping(timeout=0.5))


def _next_local(zone: str, local_time, after: datetime) -> datetime:
    """Independently of the SQL: the first instant from `after` on at which the zone's clock shows local_time."""
    tz = ZoneInfo(zone)
    today = after.astimezone(tz).date()
    moments = [datetime.combine(today + timedelta(days=d), local_time, tzinfo=tz).astimezone(UTC) for d in (-1, 0, 1)]
    return min(moment for moment in moments if moment >= after)


def test_each_recipient_gets_the_message_at_the_local_time_wherever_they_are(teammate, smtp, tmp_path):
    from config.celery import app

    arrivals: dict[str, float] = {}
    receive = smtp.handle_DATA

    async def handle_data_timed(server, session, envelope):  # aiosmtpd looks the hook up on each message
        for recipient in envelope.rcpt_tos:
            arrivals.setdefault(recipient, time.time())
        return await receive(server, session, envelope)

    smtp.handle_DATA = handle_data_timed
    organisation = teammate.organisation
    zone_of = {f"lt{i}-{n}@example.com": zone for i, zone in enumerate((*ZONES, NO_ZONE)) for n in range(2)}
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": address.split("@")[0], "email": address, "timezone": zone}
            for address, zone in zone_of.items()
        ],
    )
    campaign = CampaignFactory(
        organisation=organisation,
        channels=["email"],
        variants=False,
        audience_rules={"field": "external_id", "op": "starts_with", "value": "lt"},
    )
    Variant.objects.create(
        campaign=campaign,
        name="A",
        allocation_percent=100,
        content={"email": {"subject": "Good morning", "html": "<p>Good morning {{ contact.external_id }}</p>"}},
    )
    queue = app.conf.task_default_queue  # this session's: the API's on-commit tasks go there
    with engine(tmp_path, queue):
        assert wait_for(_worker_ready, until=time.time() + 60), "the worker did not start"
        # The local time: Honolulu's next whole minute at least 30 s ahead (room for the fan-out); Kiritimati's
        # clock shows the same time then, on the next date. At 23:xx in Honolulu the zones an hour or two east are
        # past midnight and none has passed it today, so Pago Pago (-11) and Tonga (+13) are the pair instead,
        # with Honolulu an hour east of them.
        due = (timezone.now() + timedelta(seconds=90)).replace(second=0, microsecond=0)
        pair = ("Pacific/Honolulu", "Pacific/Kiritimati")
        if due.astimezone(ZoneInfo(pair[0])).hour == 23:
            pair = ("Pacific/Pago_Pago", "Pacific/Tongatapu")
        local_time = due.astimezone(ZoneInfo(pair[0])).time()
        url = f"/api/v1/campaigns/{campaign.pk}/"
        for bad in ({"local_send_time": "25:00"}, {"local_send_time": "nine"}):
            response = teammate.api.patch(url, bad, format="json")
            assert response.status_code == 400 and set(response.data) == {"local_send_time"}, response.data
        response = teammate.api.patch(url, {"local_send_time": local_time.strftime("%H:%M")}, format="json")
        assert response.status_code == 200, response.data
        response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        assert response.status_code == 200, response.data
        run = Run.objects.get(campaign=campaign)
        assert wait_for(
            lambda: Run.objects.filter(pk=run.pk, fanned_out_at__isnull=False).exists(),
            until=time.time() + DELIVERY_LIMIT.total_seconds(),
        ), "no fan-out"
        run.refresh_from_db()
        fanned_out_at = run.fanned_out_at
        assert fanned_out_at < due, "the fan-out came after the local time; the test needs a later one"

        messages = list(Message.objects.filter(run=run).select_related("contact"))
        due_at = {f"{m.contact.external_id}@example.com": m.due_at for m in messages}
        assert len(messages) == len(zone_of)
        expected = {
            address: _next_local(zone or "Europe/London", local_time, fanned_out_at)
            for address, zone in zone_of.items()
        }
        assert due_at == expected
        due_now = {address for address, zone in zone_of.items() if zone in pair}
        assert {address for address, at in expected.items() if at == due} == due_now
        # Where the local time had passed today at fan-out (Anchorage, an hour east of Honolulu, at least), the
        # message is tomorrow's at that local time.
        passed = set()
        for address, zone in zone_of.items():
            tz = ZoneInfo(zone or "Europe/London")
            local_fan_out = fanned_out_at.astimezone(tz)
            if local_fan_out.time() > local_time:
                passed.add(zone)
                local_due = due_at[address].astimezone(tz)
                assert (local_due.date(), local_due.time()) == (local_fan_out.date() + timedelta(days=1), local_time)
        assert ("Pacific/Honolulu" if pair[0] == "Pacific/Pago_Pago" else "America/Anchorage") in passed

        deadline = due + DELIVERY_LIMIT
        assert wait_for(lambda: due_now <= set(arrivals), until=deadline.timestamp()), (
            f"arrived by {deadline:%H:%M:%S}: {sorted(arrivals)}"
        )
        # Nothing before its time: every arrival in [due, due + 60 s], and only the recipients due now.
        assert set(arrivals) == due_now
        late = {address: round(arrivals[address] - due.timestamp(), 3) for address in due_now}
        print(f"seconds after the local time: {late}")
        assert all(0 <= seconds <= DELIVERY_LIMIT.total_seconds() for seconds in late.values()), late
        # The batch's outcomes are committed just after the hand-off.
        sent = Message.objects.filter(run=run, status="sent").select_related("contact")
        assert wait_for(lambda: sent.count() == len(due_now), until=deadline.timestamp() + 10)
        assert {f"{m.contact.external_id}@example.com" for m in sent} == due_now
        assert all(due <= m.sent_at <= deadline for m in sent)
        assert Message.objects.filter(run=run, status="queued").count() == len(zone_of) - len(due_now)
