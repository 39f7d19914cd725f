"""The engine's Prometheus counters (config.metrics): messages handed to providers per channel and send failures
by reason, counted from what a send batch records, once it has committed (a batch rolled back is claimed again and
counted then)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction

from config import metrics

SENT_STATUSES = frozenset({"sent", "delivered", "bounced"})


def failure_reason(status: str, error: str | None, attempts_used: int) -> str | None:
    """The `reason` label of a recorded outcome that did not go out, or None (it went out, or waits by rule)."""
    if status == "bounced":
        return "bounced"
    if status == "failed":
        return "gave_up" if (error or "").startswith("gave up after") else "permanent"
    if status == "queued" and error is not None:  # a retry (a deferral records no error)
        return "transient" if attempts_used else "unreachable"
    return None


def send_outcomes_count_on_commit(channels: Mapping[Any, str], updates: Sequence[Mapping[str, Any]]) -> None:
    """`updates` as the batch records them: message id "i", status "s", error "e", attempts used "a"."""
    tally: Counter[tuple[str, str, str]] = Counter()
    for update in updates:
        channel = channels.get(update["i"], "unknown")
        if update["s"] in SENT_STATUSES:
            tally["messages_sent", channel, ""] += 1
        reason = failure_reason(update["s"], update.get("e"), update.get("a", 1))
        if reason:
            tally["send_failures", channel, reason] += 1
    if not tally:
        return
    increments = [
        (name, {"channel": channel, **({"reason": reason} if reason else {})}, n)
        for (name, channel, reason), n in tally.items()
    ]
    transaction.on_commit(lambda: metrics.count_many(increments))
