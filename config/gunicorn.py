"""gunicorn's settings for the web service (Dockerfile and docker-compose.yml run
`gunicorn --config config/gunicorn.py config.wsgi:application`); the environment can change each."""

from __future__ import annotations

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Sync workers: every request holds one; gunicorn reads WEB_CONCURRENCY the same way when no config sets workers.
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
# A worker silent this long is killed and its request logged as a timeout (a large campaign's PDF report is the
# slowest page, a few seconds); a proxy in front should wait a little longer than this.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# On SIGTERM (a deploy), requests in flight get this long to finish.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Each worker is replaced after this many requests (jittered so they do not all restart at once): slow memory growth
# in a long-lived process never accumulates.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "1000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "100"))
accesslog = "-"
# The workers' heartbeat files in memory, not on the container's overlay filesystem (which can stall them).
SHARED_MEMORY = "/dev/shm"  # noqa: S108 - gunicorn's own files, one per worker, in the container's own tmpfs
worker_tmp_dir = SHARED_MEMORY if os.path.isdir(SHARED_MEMORY) else None
# No runtime control socket (gunicorn >= 25 makes one under $HOME): the container is managed by its orchestrator, and
# the image's non-root user has no writable home.
control_socket_disable = True
