"""Hooks for apps above campaigns. Campaigns never import delivery (STYLE.md §11); delivery listens instead."""

from django.dispatch import Signal

# Sent inside the purge transaction with `campaign_ids` just before those campaigns are hard-deleted.
campaigns_purging = Signal()
