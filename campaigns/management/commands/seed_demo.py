"""Seed a demo organisation for `make run`. Idempotent: a second run keeps everything and prints the same login."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from audiences.access import Actor, system_actor
from audiences.models import ApiKey, Organisation, Role
from audiences.services import api_key_create, membership_set, organisation_create, user_get_or_create
from campaigns import services
from campaigns.models import Campaign

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-campaigns"

DEMO_CAMPAIGNS: list[dict[str, Any]] = [
    {"name": "Spring sale announcement", "channels": ["email", "sms"], "then": ["schedule"]},
    {"name": "Welcome series", "type": "triggered", "channels": ["email", "in_app"], "then": ["activate"]},
    {
        "name": "Cart abandonment reminder",
        "type": "triggered",
        "channels": ["email", "whatsapp"],
        "then": ["activate", "pause"],
    },
    {"name": "Product launch teaser", "channels": ["email"], "then": []},
    {
        "name": "Loyalty points expiry",
        "type": "triggered",
        "channels": ["sms"],
        "then": ["activate", "complete"],
    },
    {"name": "Webinar invitation", "channels": ["email", "webhook"], "then": ["schedule", "cancel"]},
    {"name": "Price drop alert", "type": "triggered", "channels": ["in_app", "sms"], "then": []},
    {"name": "Black Friday early access", "channels": ["email", "sms", "in_app"], "then": ["schedule"]},
]


class Command(BaseCommand):
    help = "Create (or keep) the demo organisation, its admin login, an API key and sample campaigns."

    def add_arguments(self, parser: CommandParser) -> None:
        # One file per database, so switching between embedded and external services keeps each key printable.
        database = hashlib.sha256(settings.DATABASE_URL.encode()).hexdigest()[:10]
        parser.add_argument("--key-file", default=str(Path(settings.BASE_DIR) / ".data" / f"demo-api-key-{database}"))

    def handle(self, *args: Any, **options: Any) -> None:
        organisation = Organisation.objects.filter(slug="demo").first()
        if organisation is None:
            organisation = organisation_create(
                slug="demo",
                name="Demo Retail",
                admin_email=DEMO_EMAIL,
                admin_password=DEMO_PASSWORD,
                timezone_name="Europe/London",
            )
            organisation.postal_address = "Demo Retail Ltd, 1 High Street, London EC1A 1AA, United Kingdom"
            organisation.sender_name = "Demo Retail"
            organisation.sender_email = "news@demo-retail.example"
            organisation.default_messages_per_minute = 10_000
            organisation.save()
        user = user_get_or_create(email=DEMO_EMAIL, password=DEMO_PASSWORD)
        second = Organisation.objects.filter(slug="acme-travel").first()
        if second is None:
            second = organisation_create(slug="acme-travel", name="Acme Travel", timezone_name="America/New_York")
            membership_set(organisation=second, user=user, role=Role.MARKETER, actor=system_actor(second, "seed_demo"))

        actor = Actor(organisation=organisation, role=Role.ADMIN, user=user)
        if not Campaign.objects.filter(organisation=organisation).exists():
            self._seed_campaigns(actor)

        key = self._demo_key(organisation, Path(options["key_file"]))
        self.stdout.write(f"Organisation: {organisation.name} (slug {organisation.slug})")
        self.stdout.write(f"Login:        {DEMO_EMAIL} / {DEMO_PASSWORD}")
        self.stdout.write(f"API key:      {key}")

    def _seed_campaigns(self, actor: Actor) -> None:
        now = timezone.now()
        for index, spec in enumerate(DEMO_CAMPAIGNS):
            campaign = services.campaign_create(
                actor=actor,
                name=spec["name"],
                description=f"Demo campaign #{index + 1}",
                type=spec.get("type", "scheduled"),
                channels=spec["channels"],
                scheduled_at=now + timedelta(days=index + 1) if spec.get("type", "scheduled") == "scheduled" else None,
            )
            for step in spec["then"]:
                services.campaign_transition(actor=actor, campaign_id=campaign.pk, action=step)

    def _demo_key(self, organisation: Organisation, key_file: Path) -> str:
        """The secret is only known at creation, so it is kept in .data/ for later runs to print again."""
        if key_file.exists():
            secret = key_file.read_text().strip()
            prefix = secret[: len("cs_") + 12]
            if ApiKey.objects.filter(organisation=organisation, prefix=prefix, revoked_at__isnull=True).exists():
                return secret
        issued = api_key_create(actor=system_actor(organisation, "seed_demo"), name="Demo key", role=Role.ADMIN)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(issued.secret + "\n")
        key_file.chmod(0o600)
        return issued.secret
