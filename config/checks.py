"""What production (DEBUG off) must not run without: `manage.py check --deploy` reports it, and the web service
(config.wsgi) refuses to start."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from config.devstack import DEV_SECRET_KEY


def production_problems() -> list[str]:
    """Settings that are fine for development and tests but unsafe for real contacts' data."""
    problems = []
    if settings.SECRET_KEY == DEV_SECRET_KEY:
        problems.append("SECRET_KEY is the public development key of `make run` / `make test`.")
    if not settings.PII_ENCRYPTION_KEYS:
        problems.append(
            "PII_ENCRYPTION_KEYS is not set: contacts' emails and phones would be encrypted with a key derived from "
            "SECRET_KEY (rotating SECRET_KEY would make them unreadable). See .env.example."
        )
    if not settings.PII_HASH_KEY:
        problems.append("PII_HASH_KEY is not set: address look-up hashes would derive from SECRET_KEY.")
    return problems


@checks.register(checks.Tags.security, deploy=True)
def check_production_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [checks.Error(problem, id="campaign_service.E001") for problem in production_problems()]


def refuse_unsafe_production() -> None:
    if settings.DEBUG:
        return
    problems = production_problems()
    if problems:
        raise ImproperlyConfigured("Refusing to serve with DEBUG off: " + " ".join(problems))
