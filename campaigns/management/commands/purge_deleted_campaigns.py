from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from campaigns.services import campaigns_purge_deleted


class Command(BaseCommand):
    help = "Hard-delete campaigns soft-deleted longer ago than the restore window (celery-beat does this hourly)."

    def handle(self, *args: Any, **options: Any) -> None:
        purged = campaigns_purge_deleted()
        self.stdout.write(f"Purged {purged} campaign(s).")
