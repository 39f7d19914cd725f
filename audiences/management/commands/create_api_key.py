from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audiences.access import system_actor
from audiences.models import Organisation, Role
from audiences.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for an organisation and print it (shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("org_slug")
        parser.add_argument("--name", default="CLI key")
        parser.add_argument("--role", choices=Role.values, default=Role.MARKETER)

    def handle(self, *args: Any, **options: Any) -> None:
        organisation = Organisation.objects.filter(slug=options["org_slug"]).first()
        if organisation is None:
            raise CommandError(f"No organisation with slug {options['org_slug']!r}.")
        issued = api_key_create(
            actor=system_actor(organisation, "create_api_key command"),
            name=options["name"],
            role=options["role"],
        )
        self.stdout.write(issued.secret)
