from __future__ import annotations

import secrets
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audiences.models import Organisation
from audiences.services import organisation_create


class Command(BaseCommand):
    help = "Create an organisation with an admin user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", help="Display name (default: the slug, capitalised)")
        parser.add_argument("--admin-email", required=True)
        parser.add_argument("--admin-password", help="Default: a random one, printed once")
        parser.add_argument("--timezone", default="UTC")

    def handle(self, *args: Any, **options: Any) -> None:
        if Organisation.objects.filter(slug=options["slug"]).exists():
            raise CommandError(f"Organisation {options['slug']!r} already exists.")
        password = options["admin_password"] or secrets.token_urlsafe(12)
        try:
            organisation = organisation_create(
                slug=options["slug"],
                name=options["name"] or options["slug"].replace("-", " ").title(),
                admin_email=options["admin_email"],
                admin_password=password,
                timezone_name=options["timezone"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        self.stdout.write(self.style.SUCCESS(f"Created organisation {organisation.slug} ({organisation.pk})"))
        self.stdout.write(f"Admin: {options['admin_email']}")
        if not options["admin_password"]:
            self.stdout.write(f"Password: {password}")
