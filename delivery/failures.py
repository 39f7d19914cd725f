"""Why a run's messages did not arrive: its failed and bounced messages grouped by the reason recorded on them
(a template error, the provider's answer, "gave up after 5 attempts: …"), with counts, for the campaign page and
the runs API. The reason is on every message row; without this it could only be read in the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from django.db import connection

from delivery.models import Run

TOP_REASONS = 10

# One statement for all the runs asked about. There is no index on failed rows: a run's rows are read through the
# (run, …) idempotency key, so only runs whose counters show failures are asked about at all.
REASONS_SQL = """
SELECT run_id, status, error, n, total FROM (
    SELECT run_id, status, error, count(*) AS n,
           sum(count(*)) OVER (PARTITION BY run_id) AS total,
           row_number() OVER (PARTITION BY run_id ORDER BY count(*) DESC, status, error) AS rank
    FROM delivery_message
    WHERE run_id = ANY(%s::uuid[]) AND status IN ('failed', 'bounced')
    GROUP BY run_id, status, error
) grouped
WHERE rank <= %s
ORDER BY run_id, n DESC, status, error
"""

# The runs panel polls every second while a run is active: a run's breakdown is read again only when its failure
# counters changed, and at most every few seconds while it is sending (per process; nothing shared to go stale).
_ACTIVE_REFRESH_SECONDS = 5.0
_MEMO_LIMIT = 512
_memo: dict[Any, tuple[tuple[int, int], float, dict[str, Any]]] = {}
_memo_lock = threading.Lock()


def _empty() -> dict[str, Any]:
    return {"total": 0, "reasons": [], "more": 0}


def run_failure_reasons(runs: Sequence[Run]) -> dict[Any, dict[str, Any]]:
    """Per run id: {"total": failed + bounced messages, "reasons": [{"status", "reason", "count"}] (the
    TOP_REASONS commonest, commonest first), "more": messages with other reasons}."""
    now = time.monotonic()
    result: dict[Any, dict[str, Any]] = {}
    wanted: dict[Any, tuple[int, int]] = {}
    with _memo_lock:
        for run in runs:
            counters = (run.failed_count, run.bounced_count)
            if not any(counters):
                result[run.pk] = _empty()
                continue
            cached = _memo.get(run.pk)
            fresh = cached is not None and (
                cached[0] == counters
                or (run.status == Run.Status.SENDING and now - cached[1] < _ACTIVE_REFRESH_SECONDS)
            )
            if fresh:
                result[run.pk] = cached[2]  # type: ignore[index]
            else:
                wanted[run.pk] = counters
    if not wanted:
        return result
    with connection.cursor() as cursor:
        cursor.execute(REASONS_SQL, [[str(run_id) for run_id in wanted], TOP_REASONS])
        rows = cursor.fetchall()
    computed = {run_id: _empty() for run_id in wanted}
    by_text = {str(run_id): run_id for run_id in wanted}
    for run_id, status, error, count, total in rows:
        summary = computed[by_text[str(run_id)]]
        summary["total"] = int(total)
        summary["reasons"].append({"status": status, "reason": error or "no reason recorded", "count": count})
    for summary in computed.values():
        summary["more"] = summary["total"] - sum(reason["count"] for reason in summary["reasons"])
    with _memo_lock:
        if len(_memo) > _MEMO_LIMIT:
            _memo.clear()
        for run_id, summary in computed.items():
            _memo[run_id] = (wanted[run_id], now, summary)
    result.update(computed)
    return result
