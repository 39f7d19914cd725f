"""Event ingestion, the embedded event_service: one event or a batch of up to 1,000, validated per item, written
set-based. A repeated event id is accepted and ignored; bad items are reported by index and the good ones kept."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from audiences.access import Actor
from audiences.models import Event
from audiences.services import require_contact_write
from audiences.signals import events_received
from compliance.audit import audit_record

MAX_BATCH = 1000
MAX_PROPERTIES_BYTES = 16_000
EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
# Clocks differ; an event from much further in the future than this is a bug at the sender.
MAX_FUTURE = timedelta(hours=24)
EXAMPLES = 5


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    contacts_created: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "contacts_created": self.contacts_created,
            "errors": self.errors,
        }


def _validate(item: Any, now: datetime) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    if not isinstance(item, Mapping):
        return None, {"non_field_errors": ["An event is an object."]}
    errors: dict[str, list[str]] = {}
    event_id = item.get("id")
    if not isinstance(event_id, str | int) or not str(event_id).strip() or len(str(event_id)) > 200:
        errors["id"] = ["Give the event's id (a string of at most 200 characters)."]
    event_type = item.get("type")
    if not isinstance(event_type, str) or not EVENT_TYPE.match(event_type):
        errors["type"] = ["Give the event type: letters, digits and _ . : - (at most 100)."]
    contact = item.get("contact")
    if not isinstance(contact, str | int) or not str(contact).strip() or len(str(contact)) > 255:
        errors["contact"] = ["Give the contact's external id."]
    properties = item.get("properties", {})
    if properties is None:
        properties = {}
    if not isinstance(properties, Mapping):
        errors["properties"] = ["Properties are an object."]
    elif len(json.dumps(properties, default=str)) > MAX_PROPERTIES_BYTES:
        errors["properties"] = [f"Properties are at most {MAX_PROPERTIES_BYTES // 1000} KB."]
    occurred_at: datetime | None = now
    if item.get("occurred_at") not in (None, ""):
        try:
            occurred_at = parse_datetime(str(item["occurred_at"]))
        except ValueError:
            occurred_at = None
        if occurred_at is None:
            errors["occurred_at"] = ["An ISO 8601 date and time, e.g. 2026-11-25T10:00:00Z."]
        else:
            if timezone.is_naive(occurred_at):
                occurred_at = timezone.make_aware(occurred_at, timezone.get_fixed_timezone(0))
            if occurred_at > now + MAX_FUTURE:
                errors["occurred_at"] = ["More than a day in the future."]
    unknown = sorted(set(item) - {"id", "type", "contact", "properties", "occurred_at"})
    if unknown:
        errors.update({key: ["Unknown field."] for key in unknown})
    if errors:
        return None, errors
    return {
        "event_id": str(event_id).strip(),
        "type": event_type,
        "contact": str(contact).strip(),
        "properties": dict(properties),
        "occurred_at": occurred_at,
    }, {}


def _property_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}", value):
        return "date"
    return "string"


def _contacts(actor: Actor, external_ids: set[str], *, create: bool) -> tuple[dict[str, int], int]:
    """External id → contact id for the batch, creating missing contacts when the organisation wants that."""
    organisation = actor.organisation
    with connection.cursor() as cursor:
        if create:
            now = timezone.now()
            cursor.execute(
                "INSERT INTO audiences_contact (organisation_id, external_id, email, phone, first_name, last_name,"
                " timezone, locale, attributes, created_at, updated_at)"
                " SELECT %s, x, '', '', '', '', '', '', '{}'::jsonb, %s, %s FROM unnest(%s::text[]) AS x ORDER BY x"
                " ON CONFLICT (organisation_id, external_id) DO NOTHING",
                [str(organisation.pk), now, now, sorted(external_ids)],
            )
            created = cursor.rowcount
        else:
            created = 0
        cursor.execute(
            "SELECT external_id, id FROM audiences_contact WHERE organisation_id = %s AND external_id = ANY(%s)",
            [str(organisation.pk), sorted(external_ids)],
        )
        return dict(cursor.fetchall()), created


def _merged_properties(known: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    catalogue = {name: {"type": entry["type"], "examples": list(entry["examples"])} for name, entry in known.items()}
    for item in items:
        for key, value in item["properties"].items():
            entry = catalogue.setdefault(str(key)[:100], {"type": _property_type(value), "examples": []})
            example = value if isinstance(value, str | int | float | bool) else None
            if example is not None and example not in entry["examples"] and len(entry["examples"]) < EXAMPLES:
                entry["examples"].append(example)
    return catalogue


def _update_catalogue(actor: Actor, events: Sequence[Mapping[str, Any]], now: datetime) -> None:
    """Count the stored events into their types' catalogue entries, creating the types seen for the first time.

    Batches of the same types arrive concurrently, so every batch takes the type rows in one order (by name):
    a missing type is inserted with ON CONFLICT DO NOTHING (the loser of a race waits for the winner's commit and
    then finds its row, instead of a unique violation), then the rows are locked in that same order, merged and
    written back in one statement. It runs last in the ingestion transaction, to hold these locks briefly."""
    by_type: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        by_type[event["type"]].append(event)
    if not by_type:
        return
    organisation_id = str(actor.organisation.pk)
    names = sorted(by_type)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_eventtype (organisation_id, name, total_count, first_seen_at, last_seen_at,"
            " properties)"
            " SELECT %s, n, 0, %s, %s, '{}'::jsonb FROM unnest(%s::text[]) AS n ORDER BY n"
            " ON CONFLICT (organisation_id, name) DO NOTHING",
            [organisation_id, now, now, names],
        )
        cursor.execute(
            "SELECT id, name, total_count, last_seen_at, properties FROM audiences_eventtype"
            " WHERE organisation_id = %s AND name = ANY(%s) ORDER BY name FOR UPDATE",
            [organisation_id, names],
        )
        updates = []
        for type_id, name, total_count, last_seen_at, properties in cursor.fetchall():
            items = by_type[name]
            if isinstance(properties, str):  # psycopg 3 hands jsonb to a raw cursor as text
                properties = json.loads(properties)
            updates.append(
                {
                    "id": type_id,
                    "total_count": total_count + len(items),
                    "last_seen_at": max(last_seen_at, *(i["occurred_at"] for i in items)).isoformat(),
                    "properties": _merged_properties(properties or {}, items),
                }
            )
        cursor.execute(
            "UPDATE audiences_eventtype AS t"
            " SET total_count = u.total_count, last_seen_at = u.last_seen_at, properties = u.properties"
            " FROM json_to_recordset(%s::json) AS u(id bigint, total_count bigint, last_seen_at timestamptz,"
            " properties jsonb)"
            " WHERE t.id = u.id",
            [json.dumps(updates, default=str)],
        )


def events_ingest(*, actor: Actor, items: Sequence[Any]) -> IngestResult:
    """Validate every item, then write the good ones in one statement. Idempotent on (organisation, event id)."""
    require_contact_write(actor)
    now = timezone.now()
    result = IngestResult()
    valid: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(items):
        event, errors = _validate(item, now)
        if errors:
            result.errors.append({"index": index, "errors": errors})
        else:
            valid.append((index, event))  # type: ignore[arg-type]
    if not valid:
        return result
    create = actor.organisation.unknown_event_contacts == "create"
    # Concurrent batches overlap (the same new contacts, event ids retried by a sender, the same types), and an
    # insert that meets another transaction's uncommitted row waits for it. Every batch therefore takes its rows in
    # one global order, phase by phase — contacts by external id, events by event id, event types by name — so
    # no two batches can each wait for the other: the later one waits, then skips what the earlier one stored.
    with transaction.atomic():
        contact_ids, result.contacts_created = _contacts(actor, {e["contact"] for _, e in valid}, create=create)
        rows = []
        seen: set[str] = set()
        for index, event in valid:
            if event["event_id"] in seen:  # the same id twice in one batch: the first one counts
                result.duplicates += 1
                continue
            seen.add(event["event_id"])
            contact_id = contact_ids.get(event["contact"])
            if contact_id is None:
                result.errors.append(
                    {
                        "index": index,
                        "errors": {
                            "contact": [
                                "No contact with this external id (this organisation "
                                "rejects events for unknown contacts)."
                            ]
                        },
                    }
                )
                continue
            rows.append({**event, "contact_id": contact_id})
        if rows:
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO audiences_event (organisation_id, event_id, type, contact_id, properties,"
                    " occurred_at, received_at)"
                    " SELECT %s, u.event_id, u.type, u.contact_id, u.properties, u.occurred_at, %s"
                    " FROM json_to_recordset(%s::json) AS u(event_id text, type text, contact_id bigint,"
                    " properties jsonb, occurred_at timestamptz)"
                    " ORDER BY u.event_id"
                    " ON CONFLICT (organisation_id, event_id) DO NOTHING"
                    " RETURNING event_id",
                    [
                        str(actor.organisation.pk),
                        now,
                        json.dumps(
                            [
                                {
                                    "event_id": r["event_id"],
                                    "type": r["type"],
                                    "contact_id": r["contact_id"],
                                    "properties": r["properties"],
                                    "occurred_at": r["occurred_at"].isoformat(),
                                }
                                for r in rows
                            ],
                            default=str,
                        ),
                    ],
                )
                inserted = {row[0] for row in cursor.fetchall()}
            result.accepted = len(inserted)
            result.duplicates += len(rows) - len(inserted)
            stored = [r for r in rows if r["event_id"] in inserted]
            events_received.send(sender=Event, organisation=actor.organisation, events=stored)
            _update_catalogue(actor, stored, now)
        audit_record(
            actor=actor,
            action="events.ingest",
            target=actor.organisation,
            details={
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "rejected": len(result.errors),
                "contacts_created": result.contacts_created,
            },
        )
    result.errors.sort(key=lambda error: error["index"])
    return result
