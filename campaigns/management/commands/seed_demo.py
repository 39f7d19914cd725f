"""Seed a demo organisation for `make run`. Idempotent: a second run keeps everything and prints the same login."""

from __future__ import annotations

import hashlib
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from audiences import services as audience_services
from audiences.access import Actor, system_actor
from audiences.models import ApiKey, Contact, Organisation, Role, Segment
from audiences.services import api_key_create, membership_set, organisation_create, user_get_or_create
from campaigns import services
from campaigns.models import Campaign

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-campaigns"

DEMO_CAMPAIGNS: list[dict[str, Any]] = [
    {"name": "Spring sale announcement", "channels": ["email", "sms"], "then": ["schedule"]},
    {
        "name": "Welcome series",
        "type": "triggered",
        "channels": ["email", "in_app"],
        "trigger_event": "signup",
        "then": ["activate"],
    },
    {
        "name": "Cart abandonment reminder",
        "type": "triggered",
        "channels": ["email", "whatsapp"],
        "trigger_event": "cart_abandoned",
        "then": ["activate", "pause"],
    },
    {"name": "Product launch teaser", "channels": ["email"], "then": []},
    {
        "name": "Loyalty points expiry",
        "type": "triggered",
        "channels": ["sms"],
        "trigger_event": "points_expiring",
        "then": ["activate", "complete"],
    },
    {"name": "Webinar invitation", "channels": ["email", "webhook"], "then": ["schedule", "cancel"]},
    {
        "name": "Price drop alert",
        "type": "triggered",
        "channels": ["in_app", "sms"],
        "trigger_event": "price_dropped",
        "then": [],
    },
    {"name": "Black Friday early access", "channels": ["email", "sms", "in_app"], "then": ["schedule"]},
    # Sent while `make run` starts, so the console opens on a run with live progress and an A/B result; purchases
    # are its conversions (the sandbox simulates some), so its report shows conversions and revenue.
    {"name": "Weekend flash sale", "channels": ["email", "sms"], "conversion_event": "purchase", "then": ["start"]},
    {
        "name": "Monday digest",
        "channels": ["email"],
        "then": [],
        "schedule": {"recurrence": "weekly", "time": "09:00", "weekdays": ["mon"]},
    },
]
# The sandbox provider makes variant B the better one, so the demo's A/B comparison has something to show.
DEMO_SANDBOX_PROFILE = {"variants": {"B": {"open": 0.46, "click": 0.2, "conversion": 0.25}}}


DEMO_CONTENT: dict[str, dict[str, Any]] = {
    "email": {
        "subject": "{{ contact.first_name | default('Hello') }}, our spring sale starts now",
        "preheader": "Up to 40% off everything you love",
        "html": (
            "<h1>Hi {{ contact.first_name | default('there') }}!</h1>"
            "<p>Our spring sale is on. As a {{ contact.attributes.plan }} member you get early access.</p>"
            '<p><a href="https://demo-retail.example/sale">Shop the sale</a></p>'
        ),
        "from_name": "Demo Retail",
        "from_email": "news@demo-retail.example",
    },
    "sms": {
        "body": "Demo Retail: spring sale, up to 40% off. Shop: https://demo-retail.example/s Reply STOP to opt out"
    },
    "whatsapp": {"body": "Hi {{ contact.first_name }}, our spring sale is on: https://demo-retail.example/sale"},
    "in_app": {
        "title": "Spring sale",
        "body": "Up to 40% off, today only",
        "action_url": "https://demo-retail.example/sale",
    },
    "webhook": {
        "url": "https://hooks.demo-retail.example/campaigns",
        "method": "POST",
        "payload_template": '{"user": "{{ contact.external_id }}", "event": "spring_sale"}',
    },
}


def _variant_b(content: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    variant = {channel: dict(fields) for channel, fields in content.items()}
    if "email" in variant:
        variant["email"]["subject"] = "Spring sale: 40% off for {{ contact.first_name | default('you') }}"
    return variant


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
        if not Contact.objects.filter(organisation=organisation).exists():
            self._seed_contacts(actor)
        if not Segment.objects.filter(organisation=organisation).exists():
            self._seed_segments(actor)
        if not Campaign.objects.filter(organisation=organisation).exists():
            self._seed_campaigns(actor)
        self._seed_sending_domain(actor)

        key = self._demo_key(organisation, Path(options["key_file"]))
        self.stdout.write(f"Organisation: {organisation.name} (slug {organisation.slug})")
        self.stdout.write(f"Login:        {DEMO_EMAIL} / {DEMO_PASSWORD}")
        self.stdout.write(f"API key:      {key}")

    def _seed_sending_domain(self, actor: Actor) -> None:
        """A DKIM key for the demo sender's domain, so the demo's mail goes out signed (its TXT record is on
        Settings > Sending domains). The seed sets up the whole product, delivery included: the one place above
        the apps' layering, hence the import here."""
        from delivery.dkim import sending_domain_create
        from delivery.models import SendingDomain

        domain = actor.organisation.sender_email.rpartition("@")[2]
        if domain and not SendingDomain.objects.filter(organisation=actor.organisation, domain=domain).exists():
            sending_domain_create(actor=actor, domain=domain)

    def _seed_contacts(self, actor: Actor, count: int = 2000) -> None:
        rng = random.Random(2026)  # noqa: S311 - demo data, not security
        first_names = ["Ada", "Grace", "Alan", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Tim"]
        countries = ["GB", "FR", "DE", "US", "ES", "NL", "IE"]
        zones = {
            "GB": "Europe/London",
            "FR": "Europe/Paris",
            "DE": "Europe/Berlin",
            "US": "America/New_York",
            "ES": "Europe/Madrid",
            "NL": "Europe/Amsterdam",
            "IE": "Europe/Dublin",
        }
        today = timezone.now().date()
        rows = []
        for index in range(count):
            country = rng.choice(countries)
            first = rng.choice(first_names)
            rows.append(
                {
                    "external_id": f"user-{index:05d}",
                    "email": f"{first.lower()}.{index}@example.com",
                    "phone": f"+4477009{index:05d}" if rng.random() < 0.6 else "",
                    "first_name": first,
                    "timezone": zones[country],
                    "locale": {"FR": "fr-FR", "DE": "de-DE", "ES": "es-ES", "NL": "nl-NL"}.get(country, "en-GB"),
                    "attributes": {
                        "plan": rng.choices(["free", "pro", "enterprise"], [70, 25, 5])[0],
                        "country": country,
                        "lifetime_value": round(rng.expovariate(1 / 120), 2),
                        "orders": rng.randint(0, 40),
                        "newsletter": rng.random() < 0.7,
                        "signed_up": (today - timedelta(days=rng.randint(0, 900))).isoformat(),
                        "interests": rng.sample(
                            ["shoes", "bags", "outdoor", "kids", "sale", "beauty"], rng.randint(0, 3)
                        ),
                    },
                }
            )
        for start in range(0, len(rows), 1000):
            audience_services.contacts_upsert(actor=actor, rows=rows[start : start + 1000])

    def _seed_segments(self, actor: Actor) -> None:
        audience_services.segment_create(
            actor=actor,
            data={
                "name": "Paying customers",
                "description": "Pro and enterprise plans",
                "rules": {"field": "attributes.plan", "op": "in", "value": ["pro", "enterprise"]},
            },
        )
        audience_services.segment_create(
            actor=actor,
            data={
                "name": "UK and Ireland",
                "rules": {"field": "attributes.country", "op": "in", "value": ["GB", "IE"]},
            },
        )
        audience_services.segment_create(
            actor=actor,
            data={
                "name": "High value, recent",
                "description": "Spent over 200 and signed up in the last year",
                "rules": {
                    "and": [
                        {"field": "attributes.lifetime_value", "op": "gt", "value": 200},
                        {"field": "attributes.signed_up", "op": "within_last_days", "value": 365},
                    ]
                },
            },
        )
        vip = audience_services.segment_create(actor=actor, data={"name": "VIP list", "kind": "static"})
        audience_services.segment_set_members(
            actor=actor, segment=vip, external_ids=[f"user-{index:05d}" for index in range(0, 2000, 40)]
        )
        audience_services.segment_create(
            actor=actor,
            data={
                "name": "Unsubscribed from newsletter",
                "rules": {"field": "attributes.newsletter", "op": "eq", "value": False},
            },
        )

    def _seed_campaigns(self, actor: Actor) -> None:
        now = timezone.now()
        segments = {segment.name: segment.pk for segment in Segment.objects.filter(organisation=actor.organisation)}
        audiences = [
            {
                "include": [segments["Paying customers"]],
                "exclude": [segments["Unsubscribed from newsletter"]],
                "holdout_percent": 10,
            },
            {"rules": {"field": "created_at", "op": "within_last_days", "value": 30}},
            {"include": [segments["UK and Ireland"], segments["High value, recent"]], "combine": "and"},
            {"include": [segments["VIP list"]]},
        ]
        for index, spec in enumerate(DEMO_CAMPAIGNS):
            content = {channel: DEMO_CONTENT[channel] for channel in spec["channels"]}
            campaign = services.campaign_create(
                actor=actor,
                variants=[
                    {"name": "A", "allocation_percent": 50, "content": content},
                    {"name": "B", "allocation_percent": 50, "content": _variant_b(content)},
                ],
                audience=audiences[index % len(audiences)],
                name=spec["name"],
                description=f"Demo campaign #{index + 1}",
                type=spec.get("type", "scheduled"),
                channels=spec["channels"],
                scheduled_at=now + timedelta(days=index + 1) if spec.get("type", "scheduled") == "scheduled" else None,
                trigger_event=spec.get("trigger_event", ""),
                conversion_event=spec.get("conversion_event", ""),
            )
            Campaign.objects.filter(pk=campaign.pk).update(sandbox_profile=DEMO_SANDBOX_PROFILE)
            for step in spec["then"]:
                services.campaign_transition(actor=actor, campaign_id=campaign.pk, action=step)
            if "schedule" in spec:
                # A first run must be 5 minutes ahead: whatever the hour `make run` starts at, it is.
                schedule = {**spec["schedule"], "starts_at": now + timedelta(minutes=10)}
                services.campaign_transition(actor=actor, campaign_id=campaign.pk, action="schedule", schedule=schedule)

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
