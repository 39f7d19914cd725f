"""Reading a campaign's metrics: sums over its metric deltas (analytics_metricdelta), never over message rows, so
a campaign with 10M messages reads a few thousand rows at most.

Counts: queued, sent (handed to a provider), delivered, bounced, failed, cancelled, skipped, held out, opened
(unique and total, and the same for people only), clicked (likewise), converted (unique, total and value),
unsubscribed, complained. Rates, each over the count that could have done it:

    delivered = sent - bounced (accepted by the provider and not bounced; `delivery_confirmed` counts the
                                explicit delivery receipts, which SMTP and webhooks never send)
    delivery = delivered / (sent + failed)     bounce = bounced / sent
    open = unique opens / delivered       click = unique clicks / delivered
    click-to-open = unique clicks / unique opens
    conversion = converted recipients / delivered
    unsubscribe = unsubscribes / delivered     complaint = complaints / delivered

Defining delivered by the absence of a bounce (as Braze and most ESPs do) keeps the rates meaningful on channels
whose providers confirm nothing, and keeps the delivery-rate alert from firing while receipts are still on their way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.utils import timezone

STATUS_METRICS = {
    "queued": "st:queued",
    "delivered": "st:delivered",
    "bounced": "st:bounced",
    "failed": "st:failed",
    "cancelled": "st:cancelled",
    "skipped": "st:skipped",
    "holdout": "st:holdout",
    "control": "st:control",
}
ENGAGEMENT_METRICS = (
    "open",
    "open_unique",
    "open_human",
    "open_human_unique",
    "click",
    "click_unique",
    "click_human",
    "click_human_unique",
    "conversion",
    "conversion_unique",
    "unsubscribe",
    "complaint",
)
DELIVERY_ALERT_BELOW = 0.95
DELIVERY_ALERT_MIN_SENT = 10  # fewer messages say too little to raise an alert
INTERVALS = {"minute": "minute", "hour": "hour", "day": "day"}


@dataclass(frozen=True)
class MetricFilter:
    run_id: Any = None
    variant_id: Any = None
    channel: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def sql(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column, value in (("run_id", self.run_id), ("variant_id", self.variant_id), ("channel", self.channel)):
            if value:
                clauses.append(f"{column} = %s")
                params.append(str(value))
        if self.since:
            clauses.append("bucket >= %s")
            params.append(self.since)
        if self.until:
            clauses.append("bucket < %s")
            params.append(self.until)
        return "".join(f" AND {c}" for c in clauses), params


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def metrics_from_sums(sums: Mapping[str, Any], channel: str | None = None) -> dict[str, Any]:
    """Counts and rates from summed metrics ({metric: (count, amount)} or {metric: count})."""

    def count(metric: str) -> int:
        value = sums.get(metric, 0)
        return int(value[0] if isinstance(value, tuple) else value)

    def amount(metric: str) -> Decimal:
        value = sums.get(metric, (0, 0))
        return Decimal(value[1]) if isinstance(value, tuple) else Decimal(0)

    sent = count("sent")
    delivered = max(sent - count("st:bounced"), 0)
    counts = {
        "queued": count("st:queued"),
        "sent": sent,
        "delivered": delivered,
        "delivery_confirmed": count("st:delivered"),
        "bounced": count("st:bounced"),
        "failed": count("st:failed"),
        "cancelled": count("st:cancelled"),
        "skipped": count("st:skipped"),
        "held_out": count("st:holdout") + count("st:control"),
        "held_out_holdout": count("st:holdout"),
        "held_out_converted": count("holdout_conversion_unique"),
        "opened_unique": count("open_unique"),
        "opened_total": count("open"),
        "opened_human_unique": count("open_human_unique"),
        "opened_human_total": count("open_human"),
        "clicked_unique": count("click_unique"),
        "clicked_total": count("click"),
        "clicked_human_unique": count("click_human_unique"),
        "clicked_human_total": count("click_human"),
        "converted": count("conversion_unique"),
        "conversions_total": count("conversion"),
        "unsubscribed": count("unsubscribe"),
        "complained": count("complaint"),
    }
    rates = {
        "delivery_rate": _ratio(delivered, sent + counts["failed"]),
        "bounce_rate": _ratio(counts["bounced"], sent),
        "open_rate": _ratio(counts["opened_unique"], delivered),
        "human_open_rate": _ratio(counts["opened_human_unique"], delivered),
        "click_rate": _ratio(counts["clicked_unique"], delivered),
        "human_click_rate": _ratio(counts["clicked_human_unique"], delivered),
        "click_to_open_rate": _ratio(counts["clicked_unique"], counts["opened_unique"]),
        "conversion_rate": _ratio(counts["converted"], delivered),
        "unsubscribe_rate": _ratio(counts["unsubscribed"], delivered),
        "complaint_rate": _ratio(counts["complained"], delivered),
    }
    return {"counts": counts, "rates": rates, "revenue": str(amount("conversion").quantize(Decimal("0.01")))}


def _rows(campaign_id: Any, group: Iterable[str], flt: MetricFilter, bucket: str | None = None) -> list[tuple]:
    columns = list(group)
    select = [*columns]
    if bucket:
        select.append(f"date_trunc('{INTERVALS[bucket]}', bucket AT TIME ZONE 'UTC') AS b")
    where, params = flt.sql()
    group_sql = ", ".join([*columns, "b" if bucket else "", "metric"]).replace(", ,", ",").strip(", ")
    sql = (
        f"SELECT {', '.join([*select, 'metric', 'sum(count)', 'sum(amount)'])}"  # noqa: S608 - fixed columns
        f" FROM analytics_metricdelta WHERE campaign_id = %s{where} GROUP BY {group_sql}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [str(campaign_id), *params])
        return cursor.fetchall()


def _grouped(rows: list[tuple], width: int) -> dict[tuple, dict[str, tuple[int, Decimal]]]:
    out: dict[tuple, dict[str, tuple[int, Decimal]]] = defaultdict(dict)
    for row in rows:
        out[tuple(row[:width])][row[width]] = (int(row[width + 1]), row[width + 2])
    return out


def campaign_metrics(
    campaign: Any, *, flt: MetricFilter | None = None, interval: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Totals, rates, breakdowns by channel, variant and run, and (with `interval`) a series over time."""
    flt = flt or MetricFilter()
    by_key = _grouped(_rows(campaign.pk, ["channel", "variant_id", "run_id"], flt), 3)
    variants = {str(v.pk): v for v in campaign.variants.all()}
    # Counts are computed per key first, then added up per breakdown.
    computed = {
        (channel, str(variant_id), str(run_id)): metrics_from_sums(sums, channel)
        for (channel, variant_id, run_id), sums in by_key.items()
    }

    def summed(keys: Iterable[tuple]) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        revenue = Decimal(0)
        for key in keys:
            for name, value in computed[key]["counts"].items():
                counts[name] += value
            revenue += Decimal(computed[key]["revenue"])
        return _with_rates(dict(counts), revenue)

    all_keys = list(computed)
    result = summed(all_keys)
    result["by_channel"] = {
        channel: summed([k for k in all_keys if k[0] == channel]) for channel in sorted({k[0] for k in all_keys})
    }
    result["by_variant"] = {}
    for variant_id in sorted({k[1] for k in all_keys}, key=lambda v: variants[v].name if v in variants else v):
        entry = summed([k for k in all_keys if k[1] == variant_id])
        variant = variants.get(variant_id)
        entry["name"] = variant.name if variant else "(removed variant)"
        entry["is_control"] = bool(variant and variant.is_control)
        result["by_variant"][variant_id] = entry
    result["by_run"] = {
        run_id: summed([k for k in all_keys if k[2] == run_id]) for run_id in sorted({k[2] for k in all_keys})
    }
    if interval:
        result["series"] = campaign_series(campaign, flt=flt, interval=interval)
    result["last_updated"] = metrics_last_updated(campaign.pk)
    result["generated_at"] = (now or timezone.now()).isoformat()
    rate = result["rates"]["delivery_rate"]
    result["alert"] = (
        f"Delivery rate {rate:.1%} is below {DELIVERY_ALERT_BELOW:.0%}: check bounces and the provider."
        if rate is not None and rate < DELIVERY_ALERT_BELOW and result["counts"]["sent"] >= DELIVERY_ALERT_MIN_SENT
        else None
    )
    return result


def _with_rates(counts: dict[str, int], revenue: Decimal) -> dict[str, Any]:
    sums = {
        "sent": counts.get("sent", 0),
        "st:delivered": counts.get("delivery_confirmed", 0),
        "st:queued": counts.get("queued", 0),
        "st:bounced": counts.get("bounced", 0),
        "st:failed": counts.get("failed", 0),
        "st:cancelled": counts.get("cancelled", 0),
        "st:skipped": counts.get("skipped", 0),
        "st:holdout": counts.get("held_out_holdout", 0),
        "st:control": counts.get("held_out", 0) - counts.get("held_out_holdout", 0),
        "holdout_conversion_unique": counts.get("held_out_converted", 0),
        "open_unique": counts.get("opened_unique", 0),
        "open": counts.get("opened_total", 0),
        "open_human_unique": counts.get("opened_human_unique", 0),
        "open_human": counts.get("opened_human_total", 0),
        "click_unique": counts.get("clicked_unique", 0),
        "click": counts.get("clicked_total", 0),
        "click_human_unique": counts.get("clicked_human_unique", 0),
        "click_human": counts.get("clicked_human_total", 0),
        "conversion_unique": counts.get("converted", 0),
        "conversion": (counts.get("conversions_total", 0), revenue),
        "unsubscribe": counts.get("unsubscribed", 0),
        "complaint": counts.get("complained", 0),
    }
    return metrics_from_sums(sums)


def campaign_series(campaign: Any, *, flt: MetricFilter, interval: str) -> list[dict[str, Any]]:
    """Per bucket (UTC): what was sent, delivered, opened, clicked, converted, unsubscribed and bounced then."""
    if interval not in INTERVALS:
        raise ValueError(f"interval is one of {', '.join(INTERVALS)}")
    rows = _rows(campaign.pk, ["channel"], flt, bucket=interval)
    points: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    names = {
        "sent": "sent",
        "st:bounced": "bounced",
        "st:failed": "failed",
        "open_unique": "opened",
        "open_human_unique": "opened_human",
        "click_unique": "clicked",
        "click_human_unique": "clicked_human",
        "conversion_unique": "converted",
        "unsubscribe": "unsubscribed",
        "complaint": "complained",
    }
    for _channel, bucket, metric, count, _amount in rows:
        name = names.get(metric)
        if name:
            points[bucket][name] += int(count)
        if metric in ("sent", "st:bounced"):  # delivered = sent - bounced, per bucket
            points[bucket]["delivered"] += int(count) if metric == "sent" else -int(count)
    return [
        {
            "at": bucket.replace(tzinfo=UTC).isoformat(),
            "delivered": points[bucket].get("delivered", 0),
            **{n: points[bucket].get(n, 0) for n in names.values()},
        }
        for bucket in sorted(points)
    ]


def metrics_last_updated(campaign_id: Any) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(created_at) FROM analytics_metricdelta WHERE campaign_id = %s", [str(campaign_id)])
        value = cursor.fetchone()[0]
    return value.isoformat() if value else None


def organisation_overview(organisation: Any, *, limit: int = 50, days: int = 90) -> list[dict[str, Any]]:
    """Recent campaigns with their key counts and rates: one grouped query over the deltas of all of them."""
    from campaigns.models import Campaign

    since = timezone.now() - timedelta(days=days)
    campaigns = list(
        Campaign.objects.filter(organisation=organisation, deleted_at__isnull=True, created_at__gte=since)
        .order_by("-created_at")
        .only("id", "name", "status", "type", "channels", "created_at")[:limit]
    )
    if not campaigns:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT campaign_id, channel, metric, sum(count), sum(amount) FROM analytics_metricdelta"
            " WHERE campaign_id = ANY(%s) GROUP BY 1, 2, 3",
            [[c.pk for c in campaigns]],
        )
        rows = cursor.fetchall()
    sums: dict[tuple, dict[str, tuple[int, Decimal]]] = defaultdict(dict)
    for campaign_id, channel, metric, count, amount in rows:
        sums[(str(campaign_id), channel)][metric] = (int(count), amount)
    overview = []
    for campaign in campaigns:
        counts: dict[str, int] = defaultdict(int)
        revenue = Decimal(0)
        for (campaign_id, channel), metric_sums in sums.items():
            if campaign_id == str(campaign.pk):
                computed = metrics_from_sums(metric_sums, channel)
                for name, value in computed["counts"].items():
                    counts[name] += value
                revenue += Decimal(computed["revenue"])
        overview.append({"campaign": campaign, **_with_rates(dict(counts), revenue)})
    return overview
