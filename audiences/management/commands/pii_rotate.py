"""Re-encrypt contacts' emails and phones under the active PII key (see audiences.pii and docs/security.md)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand

from audiences.access import system_actor
from audiences.models import Organisation
from audiences.pii import active_key_id, pii_reencrypt_column, pii_rotate
from compliance.audit import audit_record


class Command(BaseCommand):
    help = "Re-encrypt every email and phone not under PII_ENCRYPTION_KEY_ID; safe to stop and run again."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=5000)

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        stream = self.stderr

        def progress(done: int, remaining: int) -> None:
            total = done + remaining
            filled = int(30 * done / total) if total else 30
            rate = done / max(time.monotonic() - started, 1e-6)
            stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} contacts  {rate:,.0f}/s", ending="")
            stream.flush()

        per_organisation = pii_rotate(batch_size=options["batch_size"], progress=progress)
        if per_organisation:
            stream.write("")
        for organisation in Organisation.objects.filter(pk__in=list(per_organisation)):
            audit_record(
                actor=system_actor(organisation, "PII key rotation"),
                action="contact.pii_reencrypt",
                target=organisation,
                details={"contacts": per_organisation[str(organisation.pk)], "key_id": active_key_id()},
            )
        # Suppression lists hold addresses too (compliance.Suppression, and its history).
        suppressions = pii_reencrypt_column(
            "compliance_suppression", "id", "address", batch_size=options["batch_size"]
        ) + pii_reencrypt_column(
            "compliance_historicalsuppression", "history_id", "address", batch_size=options["batch_size"]
        )
        total = sum(per_organisation.values())
        self.stdout.write(
            f"{total} contacts and {suppressions} suppression entries re-encrypted under key {active_key_id()!r}."
        )
