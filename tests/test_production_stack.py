"""The production command as docker-compose.yml runs it (gunicorn, DEBUG off, real secrets and PII keys, hashed
static files collected first) serves what a user and a client app load; the documented production environment
passes `manage.py check --deploy`; the web service refuses to start on public or missing secrets."""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.db import connection

from audiences.models import Role
from config.devstack import DEV_SECRET_KEY
from tests.factories import CampaignFactory, issue_key

ROOT = Path(__file__).resolve().parent.parent
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)
HASHED = "[0-9a-f]{12}"
IMMUTABLE = "max-age=315360000, public, immutable"  # whitenoise's header for content-hashed names


def _secrets() -> dict[str, str]:
    return {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "PII_ENCRYPTION_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "PII_HASH_KEY": secrets.token_urlsafe(50),
    }


def _database_url() -> str:
    """The test database, which the server process must see (the test's data is committed: transaction=True)."""
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DEBUG", "PII_", "SECURE_"))}
    env.update(values)
    return env


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def production_server(transactional_db, settings, tmp_path) -> Iterator[Server]:
    # collectstatic as the image runs it, in this process (a second Django boot costs more than the copy), minus
    # the gzip/brotli copies (a minute of CPU; STATIC_COMPRESS): the hashed names and the manifest are the same.
    settings.STATIC_ROOT = str(tmp_path / "static")
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
    }
    call_command("collectstatic", interactive=False, verbosity=0)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env(
        **_secrets(),
        DEBUG="false",
        DATABASE_URL=_database_url(),
        DB_CONN_MAX_AGE="0",
        ALLOWED_HOSTS="127.0.0.1",
        SITE_URL=url,
        STATIC_MANIFEST="true",
        STATIC_COMPRESS="false",
        STATIC_ROOT=str(tmp_path / "static"),
        MEDIA_ROOT=str(tmp_path / "media"),
        PRIVATE_MEDIA_ROOT=str(tmp_path / "private"),
        CACHE_KEY_PREFIX=f"test-prod-{secrets.token_hex(4)}",
    )
    # docker-compose.yml's web command, on a free port with one worker.
    command = [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", "1", "--timeout", "60"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "gunicorn exited"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer within 60 s"
            time.sleep(0.2)
        yield Server(url=url, process=process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def _asset(page: str, pattern: str) -> str:
    found = re.search(pattern, page)
    assert found, pattern
    return found.group(0)


def test_gunicorn_serves_the_console_its_assets_the_admin_swagger_ui_an_uploaded_icon_and_a_report(production_server):
    base = production_server.url
    with httpx.Client(base_url=base, timeout=30) as client:
        login = client.get("/login/")
        assert login.status_code == 200
        assert "frame-ancestors 'none'" in login.headers["Content-Security-Policy"]
        assert "camera=()" in login.headers["Permissions-Policy"]
        for pattern in (rf"/static/css/app\.{HASHED}\.css", rf"/static/js/htmx\.min\.{HASHED}\.js"):
            asset = client.get(_asset(login.text, pattern))
            assert (asset.status_code, asset.headers["Cache-Control"]) == (200, IMMUTABLE), pattern
        assert "htmx" in client.get(_asset(login.text, rf"/static/js/htmx\.min\.{HASHED}\.js")).text[:2000]

        admin = client.get("/admin/login/")
        assert admin.status_code == 200
        assert client.get(_asset(admin.text, rf"/static/admin/css/base\.{HASHED}\.css")).status_code == 200

        campaign = CampaignFactory(channels=["in_app"])
        key = {"Authorization": f"Bearer {issue_key(campaign.organisation, Role.MARKETER)}"}
        docs = client.get("/api/docs/", headers=key)
        assert docs.status_code == 200
        bundle = rf"/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle\.{HASHED}\.js"
        assert client.get(_asset(docs.text, bundle)).status_code == 200

        upload = client.post(
            f"/api/v1/campaigns/{campaign.pk}/in-app-icon/", headers=key, files={"icon": ("i.png", PNG, "image/png")}
        )
        assert upload.status_code == 201, upload.text
        icon_url = upload.json()["icon_url"]
        assert icon_url.startswith(f"{base}/media/icons/")

        report = client.get(f"/api/v1/campaigns/{campaign.pk}/report.csv", headers=key)
        assert report.status_code == 200
        report_link = report.headers["Content-Location"]
        assert report_link.startswith(f"{base}/files/")
    icon = httpx.get(icon_url)  # as the recipient's app loads it: no key, no session
    assert (icon.status_code, icon.content, icon.headers["Content-Type"]) == (200, PNG, "image/png")
    stored = httpx.get(report_link)  # the stored report, by its expiring link, without the key
    assert (stored.status_code, stored.content) == (200, report.content)


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name] = value
    return values


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=120
    )


def test_the_documented_production_environment_passes_check_deploy():
    documented = {name: value for name, value in _env_example().items() if value}
    # The secrets .env.example leaves blank, filled as it says to generate them; this machine's services.
    environment = {
        **documented,
        **_secrets(),
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "REDIS_URL": os.environ["REDIS_URL"],
    }
    assert environment["DEBUG"] == "false"
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **environment)
    # The last line: log lines of apps starting may come first.
    last = result.stdout.strip().splitlines()[-1]
    assert (result.returncode, last) == (0, "System check identified no issues (0 silenced)."), result.stderr


def test_the_web_service_refuses_public_or_missing_secrets():
    public_key = subprocess.run(
        [sys.executable, "-c", "import config.wsgi"],
        cwd=ROOT,
        env=_env(**{**_secrets(), "SECRET_KEY": "change-me-in-production", "DEBUG": "false"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert public_key.returncode == 1
    assert "SECRET_KEY must be set to a secret value when DEBUG is off" in public_key.stderr

    # `make test`'s key (settings.py lets the suite run on it) and no PII keys: the web service will not serve.
    missing = subprocess.run(
        [sys.executable, "-c", "import config.wsgi"],
        cwd=ROOT,
        env=_env(SECRET_KEY=DEV_SECRET_KEY, DEBUG="false"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1
    assert (
        "Refusing to serve with DEBUG off: SECRET_KEY is the public development key of `make run` / `make test`. "
        "PII_ENCRYPTION_KEYS is not set"
    ) in missing.stderr
