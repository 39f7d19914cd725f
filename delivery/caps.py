"""Organisation-wide frequency caps: at most N marketing messages per contact per channel in D days, days counted
in the contact's timezone (the organisation's for contacts without one). Checked in the same transaction that
claims a batch, so concurrent runs cannot both take a contact's last slot unnoticed for long (a slot taken twice in
the same instant is possible across workers; the count is exact afterwards). Transactional campaigns and campaigns
that opt out neither count nor are counted."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import connection


def caps_for(campaign: Any) -> dict[str, tuple[int, int]]:
    """{channel: (count, days)} that apply to this campaign's sends (empty when none do)."""
    if campaign.category != "marketing" or campaign.bypass_frequency_cap:
        return {}
    caps = {}
    for channel, rule in (campaign.organisation.frequency_caps or {}).items():
        if isinstance(rule, dict) and channel in campaign.channels and rule.get("count"):
            caps[channel] = (int(rule["count"]), max(1, int(rule.get("days") or 1)))
    return caps


def _zone(name: str, fallback: str) -> ZoneInfo:
    for candidate in (name, fallback, "UTC"):
        try:
            return ZoneInfo(candidate) if candidate else ZoneInfo("UTC")
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")


def local_day(now: datetime, contact_timezone: str, organisation_timezone: str) -> date:
    return now.astimezone(_zone(contact_timezone, organisation_timezone)).date()


def over_cap(campaign: Any, rows: Sequence[Sequence[Any]], caps: dict[str, tuple[int, int]], now: datetime) -> set[int]:
    """Message ids in this claimed batch that would exceed a cap (rows: claim rows; 0 id, 1 contact, 2 channel,
    10 contact timezone)."""
    relevant = [row for row in rows if row[2] in caps]
    if not relevant:
        return set()
    org_tz = str(campaign.organisation.timezone)
    longest = max(days for _count, days in caps.values())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT contact_id, channel, day, count FROM delivery_contactsendcount"
            " WHERE contact_id = ANY(%s) AND channel = ANY(%s) AND day >= %s",
            [sorted({row[1] for row in relevant}), sorted(caps), (now - timedelta(days=longest + 1)).date()],
        )
        history = cursor.fetchall()
    used: Counter[tuple[int, str]] = Counter()
    first_day: dict[tuple[int, str], date] = {}
    for row in relevant:
        today = local_day(now, row[10] or "", org_tz)
        first_day[(row[1], row[2])] = today - timedelta(days=caps[row[2]][1] - 1)
    for contact_id, channel, day, count in history:
        start = first_day.get((contact_id, channel))
        if start is not None and day >= start:
            used[(contact_id, channel)] += count
    refused = set()
    for row in relevant:
        key = (row[1], row[2])
        if used[key] >= caps[row[2]][0]:
            refused.add(row[0])
        else:
            used[key] += 1  # a second message to the same contact in this batch counts too
    return refused


def count_sends(campaign: Any, rows: Sequence[Sequence[Any]], sent_ids: set[int], now: datetime) -> None:
    """Add the batch's sent marketing messages to the per-day counts (one statement)."""
    caps = caps_for(campaign)
    org_tz = str(campaign.organisation.timezone)
    tally: Counter[tuple[int, str, str]] = Counter(
        (row[1], row[2], local_day(now, row[10] or "", org_tz).isoformat())
        for row in rows
        if row[0] in sent_ids and row[2] in caps
    )
    if not tally:
        return
    payload = [{"c": c, "ch": ch, "d": d, "n": n} for (c, ch, d), n in tally.items()]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO delivery_contactsendcount (organisation_id, contact_id, channel, day, count)"
            " SELECT %s, u.c, u.ch, u.d, u.n FROM json_to_recordset(%s::json) AS u(c bigint, ch text, d date, n int)"
            " ON CONFLICT (contact_id, channel, day) DO UPDATE"
            " SET count = delivery_contactsendcount.count + EXCLUDED.count",
            [str(campaign.organisation_id), json.dumps(payload)],
        )
