"""Message rows reference runs and contacts without database foreign keys (fan-out speed), so their cleanup
follows the deletions that would otherwise have cascaded."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.dispatch import receiver

from audiences.signals import contacts_deleting
from campaigns.signals import campaigns_purging


@receiver(campaigns_purging)
def delete_runs_of_purged_campaigns(sender: Any, campaign_ids: list[Any], **kwargs: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM delivery_message WHERE run_id IN (SELECT id FROM delivery_run WHERE campaign_id = ANY(%s))",
            [[str(pk) for pk in campaign_ids]],
        )
        cursor.execute("DELETE FROM delivery_run WHERE campaign_id = ANY(%s)", [[str(pk) for pk in campaign_ids]])


@receiver(contacts_deleting)
def delete_messages_of_deleted_contacts(sender: Any, contact_ids: list[int], **kwargs: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM delivery_message WHERE contact_id = ANY(%s)", [list(contact_ids)])
