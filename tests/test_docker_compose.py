"""docker-compose.yml is not run here (no Docker engine), so it is checked structurally against the README."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _readme_services() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- compose-services -->")[1].split("<!-- /compose-services -->")[0]
    return set(re.findall(r"`([a-z][a-z0-9-]*)`", section))


def test_every_service_the_readme_names_is_in_compose():
    named = _readme_services()
    assert {"postgres", "redis", "web", "worker", "beat", "mailcatcher"} <= named
    assert named <= set(_compose()["services"])


def test_long_running_services_have_healthchecks():
    services = _compose()["services"]
    for name in ["postgres", "redis", "web", "worker", "beat", "mailcatcher"]:
        assert "healthcheck" in services[name], name
        assert services[name]["healthcheck"]["test"], name


def test_web_worker_and_beat_share_one_image_and_differ_by_command():
    services = _compose()["services"]
    images = {services[name]["image"] for name in ("web", "worker", "beat")}
    assert len(images) == 1
    commands = [" ".join(services[name]["command"]) for name in ("web", "worker", "beat")]
    assert "gunicorn" in commands[0]
    assert "worker" in commands[1]
    assert "beat" in commands[2]
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://")
        assert env["EMAIL_HOST"] == "mailcatcher"
