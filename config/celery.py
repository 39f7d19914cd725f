"""The Celery app: queues by kind of work, time limits, worker recycling, and the log and metric hooks.

Queues (docs/operations.md, "Scale workers"):
- `sending`: fan-out, send lanes, trigger sweeps, schedule alarms, seed copies — what the throttles pace and
  providers slow down; scale these workers with the send volume.
- `ingestion`: CSV contact imports and the event feed pull — long, heavy database writes that must not hold up
  sending.
- `housekeeping`: the beat's periodic tasks (the pump, metric compaction, outbox retries, complaint checks, purge):
  short, and never behind a queue of sends, so the pump's 2-second safety net keeps its pace.
- the default queue (`celery`): anything not listed.

A worker started without `-Q` consumes all of them. Renaming the default queue (CELERY_TASK_DEFAULT_QUEUE) without
naming the others (CELERY_QUEUE_SENDING, …) puts every task on that one queue: tests and benches isolate
themselves that way on a shared Redis, with one worker on their private queue.
"""

import os
from functools import partial

from celery import Celery
from celery.signals import task_postrun, task_prerun
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.env import envint, envstr

app = Celery("campaign_service")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

CELERY_DEFAULT_QUEUE = "celery"  # Celery's own default, which the split is named against
QUEUE_KINDS = ("sending", "ingestion", "housekeeping")
_NAMED_QUEUES = {kind: envstr(f"CELERY_QUEUE_{kind.upper()}", "") for kind in QUEUE_KINDS}

TASK_QUEUE_KINDS = {
    "delivery.tasks.run_prepare_task": "sending",
    "delivery.tasks.run_send_task": "sending",
    "delivery.tasks.trigger_sweep_task": "sending",
    "delivery.tasks.campaign_schedule_fire_task": "sending",
    "delivery.tasks.run_seed_copies_task": "sending",
    "audiences.tasks.contacts_import_task": "ingestion",
    "audiences.tasks.event_feed_pull_task": "ingestion",
    "delivery.tasks.delivery_pump_task": "housekeeping",
    "audiences.tasks.contact_imports_pump_task": "housekeeping",
    "analytics.tasks.metrics_compact_task": "housekeeping",
    "analytics.tasks.auto_winner_evaluate_task": "housekeeping",
    "compliance.tasks.compliance_outbox_push_task": "housekeeping",
    "delivery.tasks.complaint_rate_check_task": "housekeeping",
    "campaigns.tasks.campaigns_purge_deleted_task": "housekeeping",
}


def queue_name(kind: str) -> str:
    """The queue a kind of work goes to, as this process is configured now (the default queue may be renamed at
    run time: the test session does)."""
    if _NAMED_QUEUES[kind]:
        return _NAMED_QUEUES[kind]
    default = app.conf.task_default_queue
    return kind if default == CELERY_DEFAULT_QUEUE else default


def route_task(name: str, args: object, kwargs: object, options: object, task: object = None, **kw: object) -> dict:
    kind = TASK_QUEUE_KINDS.get(name)
    return {"queue": queue_name(kind)} if kind else {}


@app.on_after_configure.connect
def _declare_queues(sender: Celery, **kwargs: object) -> None:
    # What a worker without -Q consumes: every queue this configuration routes to. (Once the settings are read:
    # this module is imported while they are.)
    names = [sender.conf.task_default_queue, *(queue_name(kind) for kind in QUEUE_KINDS)]
    sender.conf.task_queues = [Queue(name, Exchange(name), routing_key=name) for name in dict.fromkeys(names)]


app.conf.task_routes = (route_task,)

# A task past its soft limit gets SoftTimeLimitExceeded (its transaction rolls back; the pump or the import's own
# pump asks again), past the hard limit its process is killed. Send lanes hand over every DELIVERY_TASK_SECONDS and
# a batch waits at most EMAIL_TIMEOUT per SMTP step, so minutes are generous; a fan-out of millions of recipients
# and a large CSV import get an hour.
app.conf.task_soft_time_limit = envint("CELERY_TASK_SOFT_TIME_LIMIT", 300)
app.conf.task_time_limit = envint("CELERY_TASK_TIME_LIMIT", 360)
_LONG_SOFT = envint("CELERY_LONG_TASK_SOFT_TIME_LIMIT", 3600)
app.conf.task_annotations = {
    name: {"soft_time_limit": _LONG_SOFT, "time_limit": _LONG_SOFT + 60}
    for name in ("delivery.tasks.run_prepare_task", "audiences.tasks.contacts_import_task")
}
# A worker process is replaced after this many tasks, so memory a long-lived process accumulates (caches,
# fragmentation) is given back.
app.conf.worker_max_tasks_per_child = envint("CELERY_WORKER_MAX_TASKS_PER_CHILD", 1000)


@task_prerun.connect
def _bind_task_log_context(task_id: str, task: object, args: tuple | None = None, **kwargs: object) -> None:
    from config.logs import bind_task_context

    bind_task_context(task_id, task, args)


@task_postrun.connect
def _unbind_task_log_context(task_id: str, **kwargs: object) -> None:
    from config.logs import unbind_task_context

    unbind_task_context(task_id)


def _count_events(sender: object, organisation: object, events: list, **kwargs: object) -> None:
    from django.db import transaction

    from config.metrics import count

    transaction.on_commit(partial(count, "events_ingested", len(events)))


# Every process that stores events (web for the API, workers for the feed) imports this module (config/__init__).
def _connect_receivers() -> None:
    from audiences.signals import events_received

    events_received.connect(_count_events, dispatch_uid="config.metrics.events_ingested")


_connect_receivers()
