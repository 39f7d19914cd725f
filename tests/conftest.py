from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiosmtpd.controller import Controller
from django.core.cache import cache
from rest_framework.test import APIClient

from audiences.access import Actor
from audiences.models import Membership, Organisation, Role
from tests.factories import MembershipFactory, OrganisationFactory, actor_for, issue_key


@pytest.fixture(autouse=True, scope="session")
def _private_task_queue() -> Iterator[None]:
    """Tasks the code under test enqueues go to a queue of this session, never to a shared one where a developer's
    running worker would pick them up; it is deleted at the end. Integration tests start workers on their own."""
    from config.celery import app

    queue = f"test-session-{uuid.uuid4().hex}"
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    yield
    app.conf.task_default_queue = previous
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.client.delete(queue)
    except Exception:  # cleanup of a scratch key; a missing Redis is reported by the tests themselves
        pass


@pytest.fixture(autouse=True)
def _isolated_cache(settings) -> Iterator[None]:
    """Each test counts rate limits under its own Redis key prefix (the Redis server may be shared)."""
    # Fast hashing: PBKDF2's deliberate slowness would dominate the suite's run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    prefix = f"test-{uuid.uuid4().hex}"
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "KEY_PREFIX": prefix}}
    cache.close()
    yield
    cache.close()


@pytest.fixture(autouse=True)
def _sms_at_any_hour(settings) -> None:
    """Tests run at any hour of the day: the marketing SMS window (08:00-21:00 local) would defer SMS sent at
    night. tests/test_compliance_channel_rules.py turns it back on."""
    settings.MARKETING_SMS_WINDOW = ""
    # Likewise the WhatsApp 24-hour session rule: most tests send free-form WhatsApp to contacts who never wrote.
    settings.WHATSAPP_SESSION_RULE = False


@pytest.fixture(autouse=True)
def _sandbox_engagement_at_the_send(settings) -> None:
    """Tests that look at engagement right after a send see it at once: the sandbox reports it at the send instead
    of over the following hours. tests/test_sandbox_engagement.py turns time back on per campaign."""
    settings.SANDBOX_PROVIDER = {**settings.SANDBOX_PROVIDER, "engagement_over_time": False}


@dataclass
class Persona:
    """A member of an organisation, with a session client and an API-key client of the same role."""

    membership: Membership
    client: APIClient  # session-authenticated, as the console's browser would be
    api: APIClient  # bearer API key of the same role

    @property
    def organisation(self) -> Organisation:
        return self.membership.organisation

    @property
    def actor(self) -> Actor:
        return actor_for(self.membership)


def _persona(organisation: Organisation, role: str) -> Persona:
    membership = MembershipFactory(organisation=organisation, role=role)
    session = APIClient()
    session.force_login(membership.user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_key(organisation, role)}")
    return Persona(membership=membership, client=session, api=api)


@pytest.fixture
def organisation(db) -> Organisation:
    return OrganisationFactory(name="Acme", slug="acme", timezone="Europe/London")


@pytest.fixture
def other_organisation(db) -> Organisation:
    return OrganisationFactory(name="Globex", slug="globex")


@pytest.fixture
def owner(organisation) -> Persona:
    return _persona(organisation, Role.ADMIN)


@pytest.fixture
def teammate(organisation) -> Persona:
    return _persona(organisation, Role.MARKETER)


@pytest.fixture
def analyst(organisation) -> Persona:
    return _persona(organisation, Role.ANALYST)


@pytest.fixture
def outsider(other_organisation) -> Persona:
    return _persona(other_organisation, Role.ADMIN)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp(settings):
    """A real SMTP server (aiosmtpd) on a free port, with Django pointed at it; yields its inbox."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    yield inbox
    controller.stop()
