"""Shared start of the benchmarks that work on a database of their own.

from benchdb import setup_django
setup_django()  # before any Django import
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit


def setup_django(**environment: str) -> str:
    """Point DATABASE_URL at `<its database name>_bench` (created if missing), set the given environment, start
    Django and migrate. Returns the bench database's URL."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/campaign_service")
    parts = urlsplit(base)
    bench_url = parts._replace(path=(parts.path.rstrip("/") or "/campaign_service") + "_bench").geturl()
    from config.devstack import ensure_database

    ensure_database(bench_url)
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.update(environment)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return bench_url
