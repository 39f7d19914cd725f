"""Channel backends: the one interface every way out of the engine implements.

A backend takes a batch of rendered messages, each with its idempotency key, and says what became of each: handed
over (`sent`), already confirmed (`delivered`, `bounced`: a provider that answers synchronously), `failed` for
good, or to be retried later. Providers that honour idempotency keys never send the same key twice, so a batch
repeated after a crash costs nothing at the far end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class Outgoing:
    message_id: int
    idempotency_key: str
    channel: str
    run_id: str
    campaign_id: str
    organisation_id: str
    variant_id: str
    variant_name: str
    contact_id: int
    address: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Engagement:
    """Something the recipient did, as a provider reports it (the sandbox invents them at configured rates)."""

    kind: str  # open, click, conversion, complaint
    seconds_after_send: float = 0.0
    value: float | None = None
    is_machine: bool = False


@dataclass(frozen=True)
class Outcome:
    message_id: int
    status: str  # sent, delivered, bounced, failed, retry
    provider_message_id: str = ""
    error: str = ""
    retry_after: float = 0.0
    engagement: Sequence[Engagement] = field(default_factory=tuple)
    # A bounce that says the address does not exist (an SMTP server refusing the mailbox for good): the engine puts
    # the address on the organisation's suppression list, as a hard-bounce receipt does.
    hard_bounce: bool = False
    # False for a retry of a message the backend never got to try (the server was unreachable, or the batch ended
    # when it went silent): it waits for its retry without using up one of its attempts, so an outage of the
    # provider, however long, fails nothing; it only delays.
    tried: bool = True


class ChannelBackend(Protocol):
    def send_batch(self, messages: Sequence[Outgoing], *, profile: dict[str, Any]) -> list[Outcome]: ...


_backends: dict[str, ChannelBackend] = {}


def backend_for(channel: str) -> ChannelBackend:
    """The backend configured for a channel (settings.DELIVERY_BACKENDS, dotted paths), built once per process."""
    path = settings.DELIVERY_BACKENDS.get(channel) or settings.DELIVERY_BACKENDS["default"]
    key = f"{channel}:{path}"
    if key not in _backends:
        _backends[key] = import_string(path)()
    return _backends[key]


def reset_backends() -> None:
    _backends.clear()
