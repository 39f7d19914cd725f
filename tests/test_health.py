"""/healthz and /readyz as an orchestrator sees them: the production web command (gunicorn) and a real celery-beat,
against a Redis server this test starts and stops on a spare port (never the machine's) and PostgreSQL reached
through a TCP relay the test can cut."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.support import database_url, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of this test's own, on a spare port, without persistence."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for(self._answers, 30), "redis-server did not start"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


class Relay:
    """A TCP relay from a local port to PostgreSQL; `cut()` closes it and every connection through it (the
    database as the web process sees it is down), `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() first: a bare close() leaves the accept() blocked in the other thread listening.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _through(url: str, port: int) -> str:
    """The database URL with the relay's address instead of PostgreSQL's."""
    parsed = urlsplit(url)
    credentials = parsed.netloc.rsplit("@", 1)[0]
    return urlunsplit(parsed._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def stack(settings) -> Iterator[dict]:
    """gunicorn (DEBUG off) and celery-beat, both on this test's Redis, the web one reaching PostgreSQL through
    the relay."""
    from django.db import connection

    redis_server = RedisServer()
    redis_server.start()
    db = connection.settings_dict
    relay = Relay((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    relay.restore()
    web_port = _free_port()
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": f"test-{uuid.uuid4().hex}",
        # DEBUG off wants keys of its own for personal data at rest (config.checks).
        "PII_ENCRYPTION_KEYS": f"k1:{base64.b64encode(os.urandom(32)).decode()}",
        "PII_HASH_KEY": uuid.uuid4().hex,
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "CELERY_TASK_DEFAULT_QUEUE": f"test-health-{uuid.uuid4().hex[:8]}",
        "CACHE_KEY_PREFIX": f"test-health-{uuid.uuid4().hex[:8]}",
        "REDIS_CONNECT_TIMEOUT": "0.5",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    web = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{web_port}"),
            *("--workers", "1", "--timeout", "30"),
        ],
        cwd=ROOT,
        env={**env, "DATABASE_URL": _through(database_url(), relay.port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # The scheduler is the configured one (config.health.HeartbeatScheduler), as compose and make run start beat.
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "warning"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": database_url(), "DB_CONN_MAX_AGE": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield {"url": f"http://127.0.0.1:{web_port}", "redis": redis_server, "relay": relay}
    finally:
        _stop(web)
        _stop(beat)
        redis_server.stop()
        relay.cut()


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=10)
    except httpx.HTTPError:
        return None


def _ready(base: str, status: int, down: list[str]) -> bool:
    response = _get(f"{base}/readyz")
    try:
        return response is not None and response.status_code == status and response.json()["down"] == down
    except ValueError:  # not JSON: not the answer waited for
        return False


# Transactional: beat (another process) writes its schedule into the test database, and the flush after this test
# takes it out again, as after the other tests that start beat.
@pytest.mark.django_db(transaction=True)
def test_readyz_names_redis_then_the_database_when_down_and_is_200_again_after(stack):
    base = stack["url"]
    # All up once beat has written its first heartbeat.
    assert wait_for(lambda: _ready(base, 200, []), 90), _get(f"{base}/readyz")
    body = _get(f"{base}/readyz").json()
    assert body == {
        "status": "ok",
        "down": [],
        "checks": {"database": "ok", "redis": "ok", "broker": "ok", "beat": "ok"},
    }

    stack["redis"].stop()
    assert wait_for(lambda: _ready(base, 503, ["redis", "broker", "beat"]), 30), _get(f"{base}/readyz")
    body = _get(f"{base}/readyz").json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("down (")
    assert body["checks"]["beat"] == "unknown (the heartbeat is kept in Redis)"
    # Liveness does not depend on Redis: the process answers, so nobody restarts it for an outage elsewhere.
    healthz = _get(f"{base}/healthz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})

    # Redis back (empty: a restart without persistence): beat writes its heartbeat again and all is ready.
    stack["redis"].start()
    assert wait_for(lambda: _ready(base, 200, []), 60), _get(f"{base}/readyz")

    stack["relay"].cut()
    assert wait_for(lambda: _ready(base, 503, ["database"]), 30), _get(f"{base}/readyz")
    assert _get(f"{base}/readyz").json()["checks"]["database"].startswith("down (")
    healthz = _get(f"{base}/healthz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})

    stack["relay"].restore()
    assert wait_for(lambda: _ready(base, 200, []), 60), _get(f"{base}/readyz")


def test_readyz_says_beat_is_down_when_its_heartbeat_is_stale(client, settings):
    from config.health import beat_heartbeat_write

    settings.BEAT_HEARTBEAT_MAX_AGE = 60
    written = time.time() - 120
    beat_heartbeat_write(now=written)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["beat"]
    # The age as the view saw it: from 120 s to however long the request itself took.
    age = int(re.fullmatch(r"down \(last heartbeat (\d+) s ago\)", response.json()["checks"]["beat"])[1])
    assert 120 <= age <= round(time.time() - written)

    beat_heartbeat_write()
    response = client.get("/readyz")
    assert (response.status_code, response.json()["down"]) == (200, [])
