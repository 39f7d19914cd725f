"""Log lines an operator can follow: JSON, one object a line, each carrying the request id of the request (or the
run, campaign and task of the Celery task) it was written for.

- `RequestIdMiddleware` takes the caller's `X-Request-ID` (a proxy's or a client's, when it looks like an id) or makes
  one, returns it in the response header and keeps it in a context variable for the request's log lines; API error
  bodies carry it too (config.api), so a client's bug report names the lines to look at.
- Celery tasks bind their ids (`run_id`, `campaign_id`, `organisation_id`, task name and id) from the task's
  arguments before they run (`bind_task_context`, connected in config/celery.py).
- `QuietPeriodicTasks` demotes the received / succeeded / "sending due task" lines of the beat's frequent tasks
  (the pump every 2 s) to DEBUG: at INFO they were most of a quiet system's log.
- `sentry_init` turns on error tracking when SENTRY_DSN is set, and only then.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse

# Ids of what the current request or task is about; the filter copies them onto every record.
_log_context: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("log_context", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# What a caller's id may look like: a proxy's (hex, uuid, "req-…") fits; anything longer or stranger is replaced,
# so a header cannot put arbitrary text on our log lines.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def log_context() -> Mapping[str, str]:
    return _log_context.get() or {}


def request_id() -> str | None:
    return log_context().get("request_id")


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.request_id = rid  # type: ignore[attr-defined]
        # Left bound when the middleware returns: Django logs a 4xx/5xx response ("Not Found: …") after the whole
        # middleware chain, and the request id belongs on that line too. Cleared when the response is closed.
        _log_context.set({"request_id": rid})
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = rid
        return response


def _request_finished(**kwargs: Any) -> None:
    _log_context.set(None)


request_finished.connect(_request_finished, dispatch_uid="config.logs.request_finished")


class ContextFilter(logging.Filter):
    """Copies the bound ids onto the record (as attributes the JSON formatter prints)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in log_context().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _quiet_task_names() -> frozenset[str]:
    from django.conf import settings

    # Every task the beat runs more often than once a minute: their per-tick lines say nothing new.
    return frozenset(
        entry["task"]
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
        if getattr(entry["schedule"], "total_seconds", lambda: 3600)() < 60
    )


class QuietPeriodicTasks(logging.Filter):
    """Celery's INFO lines about the beat's frequent tasks ("received", "succeeded", beat's "Sending due task")
    become DEBUG lines: printed only when the logger is at DEBUG."""

    _loggers = frozenset({"celery.app.trace", "celery.worker.strategy", "celery.beat", "celery.worker.request"})

    def __init__(self) -> None:
        super().__init__()
        self._names: frozenset[str] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.name not in self._loggers:
            return True
        if self._names is None:
            self._names = _quiet_task_names()
        args = record.args
        values = args.values() if isinstance(args, Mapping) else args if isinstance(args, tuple) else ()
        if not any(isinstance(value, str) and value in self._names for value in values):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


# Task arguments that name what a task works on, by task: the ids its log lines carry.
_TASK_ID_ARGUMENTS = {
    "delivery.tasks.run_prepare_task": "run_id",
    "delivery.tasks.run_send_task": "run_id",
    "delivery.tasks.run_seed_copies_task": "run_id",
    "delivery.tasks.campaign_schedule_fire_task": "campaign_id",
    "delivery.tasks.trigger_sweep_task": "organisation_id",
    "audiences.tasks.contacts_import_task": "import_id",
}
_run_campaigns: dict[str, str] = {}  # a run's campaign never changes: looked up once per process
_task_tokens: dict[str, contextvars.Token[Mapping[str, str] | None]] = {}


def _campaign_of_run(run_id: str) -> str | None:
    if run_id not in _run_campaigns:
        from delivery.models import Run

        campaign_id = Run.objects.filter(pk=run_id).values_list("campaign_id", flat=True).first()
        if campaign_id is None:
            return None
        if len(_run_campaigns) > 10_000:
            _run_campaigns.clear()
        _run_campaigns[run_id] = str(campaign_id)
    return _run_campaigns[run_id]


def bind_task_context(task_id: str, task: Any, args: tuple[Any, ...] | None = None, **kwargs: Any) -> None:
    """celery `task_prerun`: the task's log lines carry its name, id and the run / campaign it works on."""
    ids: dict[str, Any] = {"task": task.name, "task_id": task_id}
    argument = _TASK_ID_ARGUMENTS.get(task.name)
    if argument and args:
        ids[argument] = args[0]
        if argument == "run_id":
            try:
                ids["campaign_id"] = _campaign_of_run(str(args[0]))
            except Exception:  # a log label never fails the task (a malformed id fails it where it is used)
                logging.getLogger(__name__).debug("no campaign for run %s", args[0], exc_info=True)
    merged = {**log_context(), **{key: str(value) for key, value in ids.items() if value is not None}}
    _task_tokens[task_id] = _log_context.set(merged)


def unbind_task_context(task_id: str, **kwargs: Any) -> None:
    """celery `task_postrun`."""
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        try:
            _log_context.reset(token)
        except ValueError:  # set in another context (an eager task called from a thread): just clear
            _log_context.set(None)


_ID_FIELDS = ("request_id", "task", "task_id", "run_id", "campaign_id", "organisation_id", "import_id")


class TextFormatter(logging.Formatter):
    """A terminal's line: time, level, logger, message, then the bound ids (`run_id=…`)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{key}={getattr(record, key)}" for key in _ID_FIELDS if hasattr(record, key))
        return f"{line} [{ids}]" if ids else line


def logging_config(*, level: str, fmt: str) -> dict[str, Any]:
    """settings.LOGGING: JSON lines (fmt "json") or plain text ("text", for a terminal), with the bound ids."""
    formatters = {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601 in UTC, to the microsecond
        },
        "text": {"()": "config.logs.TextFormatter", "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "config.logs.ContextFilter"},
            "quiet_periodic_tasks": {"()": "config.logs.QuietPeriodicTasks"},
        },
        "formatters": {fmt: formatters[fmt]},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": fmt,
                "filters": ["context", "quiet_periodic_tasks"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        # httpx logs every request at INFO: far too much at thousands of sends a second.
        "loggers": {"django.db.backends": {"level": "INFO"}, "httpx": {"level": "WARNING"}},
    }


def sentry_init(dsn: str, *, environment: str, traces_sample_rate: float) -> None:
    """Error tracking (sentry-sdk's Django, Celery and logging integrations, found by the SDK itself): unhandled
    exceptions and ERROR log lines, with the request id as a tag. Never contacts' personal data."""
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    def tag_request_id(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        ids = log_context()
        if ids:
            event.setdefault("tags", {}).update(ids)
        return event

    sentry_sdk.init(
        dsn=dsn,
        environment=environment or None,
        traces_sample_rate=traces_sample_rate,
        # No user details (emails, IPs) and no request bodies (contacts' data, API keys in payloads).
        data_collection={"user_info": False, "http_bodies": []},
        before_send=tag_request_id,
        # ERROR lines are events (the engine logs what it recovers from at WARNING); INFO lines are breadcrumbs.
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
    )
