"""Re-encrypt sending domains' DKIM private keys under the active PII key (see docs/security.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audiences.pii import active_key_id
from delivery.dkim import sending_domain_keys_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt every DKIM private key not under PII_ENCRYPTION_KEY_ID; safe to run again."

    def handle(self, *args: Any, **options: Any) -> None:
        done = sending_domain_keys_reencrypt()
        self.stdout.write(f"{done} DKIM private keys re-encrypted under key {active_key_id()!r}.")
