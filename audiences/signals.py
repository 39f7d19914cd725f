"""Hooks for apps above audiences, which never imports them (STYLE.md §11)."""

from django.dispatch import Signal

# Sent inside the transaction with `organisation_id` and `contact_ids` just before those contacts are deleted.
contacts_deleting = Signal()
