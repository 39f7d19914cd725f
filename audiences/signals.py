"""Hooks for apps above audiences, which never imports them (STYLE.md §11)."""

from django.dispatch import Signal

# Sent inside the transaction with `organisation_id` and `contact_ids` just before those contacts are deleted.
contacts_deleting = Signal()

# Sent inside the ingestion transaction with `organisation` and `events` (dicts: event_id, type, contact_id,
# properties, occurred_at) for the events just stored (repeats excluded). Delivery matches them to triggers.
events_received = Signal()
