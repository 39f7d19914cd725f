"""Message rows reference runs and contacts without database foreign keys (fan-out speed), so their cleanup
follows the deletions that would otherwise have cascaded."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.dispatch import receiver

from audiences.signals import contacts_deleting, events_received
from campaigns.signals import campaign_transitioned, campaigns_purging
from delivery import runs, triggers
from delivery.models import Run
from delivery.task_service import beat_alarms_prune, task_service, task_service_is_external


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


# Every action into or out of "scheduled" (delete cancels first, so it is one of these too).
ALARM_ACTIONS = frozenset({"schedule", "reschedule", "await_next", "unschedule", "start", "cancel", "complete"})


@receiver(campaign_transitioned)
def follow_campaign_transition(
    sender: Any, campaign: Any, action: str, previous: str, actor: Any, occurrence: Any = None, **kwargs: Any
) -> None:
    """Keep runs and the schedule alarm in step with the campaign's status (inside its transaction)."""
    if action == "start":
        runs.runs_on_campaign_start(campaign, occurrence=occurrence)
    elif action == "activate":
        triggers.trigger_run_open(campaign)
    elif action == "pause":
        runs.runs_pause(campaign, actor=actor)
    elif action == "resume":
        runs.runs_resume(campaign)
    elif action == "cancel":
        runs.runs_cancel(campaign, reason=f"cancelled by {actor.label}")
    elif action == "complete" and campaign.type == "triggered":
        # Deactivating a triggered campaign cancels the sends still waiting (delays, quiet hours).
        runs.runs_cancel(campaign, reason=f"campaign completed by {actor.label}", final_status=Run.Status.COMPLETED)
    if action in ALARM_ACTIONS:
        # After the runs: the alarm follows the status the campaign ends this transaction with (set for a schedule,
        # a reschedule or the next occurrence; removed otherwise). The HTTP task_service is called after commit.
        task_service().follow(campaign)


@receiver(campaigns_purging)
def prune_schedule_alarms(sender: Any, campaign_ids: list[Any], **kwargs: Any) -> None:
    """Purged campaigns lose any alarm left behind, and so does every campaign no longer waiting for one."""
    if not task_service_is_external():
        beat_alarms_prune()


@receiver(events_received)
def match_events_to_triggers(sender: Any, organisation: Any, events: list[dict[str, Any]], **kwargs: Any) -> None:
    """Inside the ingestion transaction: decide and queue; workers are asked once it commits."""
    if triggers.triggers_on_events(organisation, events):
        runs.trigger_sweep_kick(organisation.pk)
