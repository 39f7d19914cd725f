"""Hooks for apps above campaigns. Campaigns never import delivery (STYLE.md §11); delivery listens instead."""

from django.dispatch import Signal

# Sent inside the purge transaction with `campaign_ids` just before those campaigns are hard-deleted.
campaigns_purging = Signal()

# Sent inside the transition's transaction after a campaign changed status (or schedule, action "reschedule"),
# with `campaign`, `action`, `previous` (status), `actor` and `occurrence` (the schedule time an engine start is for).
# Delivery creates, pauses, resumes and cancels runs and keeps the task_service alarm in step.
campaign_transitioned = Signal()
