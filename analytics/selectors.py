"""Reading a campaign's metrics: sums over its metric deltas (analytics_metricdelta), never over message rows, so
a campaign with 10M messages reads a few thousand rows at most.

Counts: queued, sent (handed to a provider), delivered, bounced, failed, cancelled, skipped, held out, opened
(unique and total, and the same for people only), clicked (likewise), converted (unique, total and value),
unsubscribed, complained. Rates, each over the count that could have done it:

    delivered = sent - bounced (accepted by the provider and not bounced; `delivery_confirmed` counts the
                                explicit delivery receipts, which SMTP and webhooks never send)
    delivery = delivered / (sent + failed)     bounce = bounced / sent
    open = unique opens / delivered on channels that report opens (email, in-app; an SMS has none)
    click = unique clicks / delivered on channels with tracked links
    click-to-open = unique clicks / unique opens
    conversion = converted / delivered

Conversions are sums of attribution credit (analytics.services): each conversion event counts once whatever the
model, split 1/n over n touches under linear attribution. `conversions_total` counts the events, `converted` the
messages' shares of their first conversion (so at most one per message), `conversion_touches` the credited
messages.
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
# The channels whose messages can report an open (a tracking pixel, an in-app view) or a click (tracked links): a
# rate is over what was delivered on those only, and an "open" on another channel is not counted.
OPEN_CHANNELS = frozenset({"email", "in_app"})
CLICK_CHANNELS = frozenset({"email", "sms", "whatsapp", "in_app"})
COUNT_NAMES = (
    "queued", "sent", "delivered", "delivery_confirmed", "bounced", "failed", "cancelled", "skipped", "held_out",
    "held_out_holdout", "held_out_converted", "delivered_with_opens", "delivered_with_clicks", "opened_unique",
    "opened_total", "opened_human_unique", "opened_human_total", "clicked_unique", "clicked_total",
    "clicked_human_unique", "clicked_human_total", "converted", "conversions_total", "conversion_touches",
    "unsubscribed", "complained",
)  # fmt: skip
# Counts of conversions are sums of attribution credit, so fractions under the linear model.
CREDIT_COUNTS = ("held_out_converted", "converted", "conversions_total")


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


def _credit(value: Any) -> float:
    # Conversions are sums of credits (1/3 for each of three linear touches): six decimals as stored, as a number.
    return round(float(value or 0), 6)


def metrics_from_sums(sums: Mapping[str, Any], channel: str | None = None) -> dict[str, Any]:
    """Counts and rates from one channel's summed metrics ({metric: (count, amount, credit)} or {metric: count}).
    Opens count only on channels that report them (`OPEN_CHANNELS`): an SMS "open" is no open."""

    def part(metric: str, index: int) -> Any:
        value = sums.get(metric, 0)
        if isinstance(value, tuple):
            return value[index] if index < len(value) else 0
        return value if index == 0 else 0

    def count(metric: str) -> int:
        return int(part(metric, 0))

    sent = count("sent")
    delivered = max(sent - count("st:bounced"), 0)
    opens = channel is None or channel in OPEN_CHANNELS
    clicks = channel is None or channel in CLICK_CHANNELS
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
        "held_out_converted": _credit(part("holdout_conversion_unique", 2)),
        "delivered_with_opens": delivered if opens else 0,
        "delivered_with_clicks": delivered if clicks else 0,
        "opened_unique": count("open_unique") if opens else 0,
        "opened_total": count("open") if opens else 0,
        "opened_human_unique": count("open_human_unique") if opens else 0,
        "opened_human_total": count("open_human") if opens else 0,
        "clicked_unique": count("click_unique") if clicks else 0,
        "clicked_total": count("click") if clicks else 0,
        "clicked_human_unique": count("click_human_unique") if clicks else 0,
        "clicked_human_total": count("click_human") if clicks else 0,
        "converted": _credit(part("conversion_unique", 2)),
        "conversions_total": _credit(part("conversion", 2)),
        "conversion_touches": count("conversion"),
        "unsubscribed": count("unsubscribe"),
        "complained": count("complaint"),
    }
    return _with_rates(counts, Decimal(part("conversion", 1) or 0))


def _with_rates(counts: dict[str, Any], revenue: Decimal) -> dict[str, Any]:
    """Rates over the counts that could have done it: opens over what was delivered on channels that report opens,
    clicks over what was delivered on channels with links."""
    delivered, sent = counts["delivered"], counts["sent"]
    with_opens, with_clicks = counts["delivered_with_opens"], counts["delivered_with_clicks"]
    rates = {
        "delivery_rate": _ratio(delivered, sent + counts["failed"]),
        "bounce_rate": _ratio(counts["bounced"], sent),
        "open_rate": _ratio(counts["opened_unique"], with_opens),
        "human_open_rate": _ratio(counts["opened_human_unique"], with_opens),
        "click_rate": _ratio(counts["clicked_unique"], with_clicks),
        "human_click_rate": _ratio(counts["clicked_human_unique"], with_clicks),
        "click_to_open_rate": _ratio(counts["clicked_unique"], counts["opened_unique"]),
        "conversion_rate": _ratio(counts["converted"], delivered),
        "unsubscribe_rate": _ratio(counts["unsubscribed"], delivered),
        "complaint_rate": _ratio(counts["complained"], delivered),
    }
    return {"counts": counts, "rates": rates, "revenue": str(revenue.quantize(Decimal("0.01")))}


def _added(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, Any] = defaultdict(int)
    revenue = Decimal(0)
    for entry in entries:
        for name, value in entry["counts"].items():
            counts[name] += value
        revenue += Decimal(entry["revenue"])
    for name in CREDIT_COUNTS:
        counts[name] = round(counts[name], 6)
    return _with_rates({name: counts[name] for name in COUNT_NAMES}, revenue)


def _rows(campaign_id: Any, group: Iterable[str], flt: MetricFilter, bucket: str | None = None) -> list[tuple]:
    columns = list(group)
    select = [*columns]
    if bucket:
        select.append(f"date_trunc('{INTERVALS[bucket]}', bucket AT TIME ZONE 'UTC') AS b")
    where, params = flt.sql()
    group_sql = ", ".join([*columns, "b" if bucket else "", "metric"]).replace(", ,", ",").strip(", ")
    sql = (
        f"SELECT {', '.join([*select, 'metric', 'sum(count)', 'sum(amount)', 'sum(credit)'])}"  # noqa: S608
        f" FROM analytics_metricdelta WHERE campaign_id = %s{where} GROUP BY {group_sql}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [str(campaign_id), *params])
        return cursor.fetchall()


def _grouped(rows: list[tuple], width: int) -> dict[tuple, dict[str, tuple[int, Decimal, Decimal]]]:
    out: dict[tuple, dict[str, tuple[int, Decimal, Decimal]]] = defaultdict(dict)
    for row in rows:
        out[tuple(row[:width])][row[width]] = (int(row[width + 1]), row[width + 2], row[width + 3])
    return out


def attribution(campaign: Any) -> dict[str, Any]:
    """What the report's conversions mean: the event, the window and the model that credits them."""
    return {
        "conversion_event": campaign.conversion_event or None,
        "window_days": campaign.attribution_days,
        "model": campaign.attribution_model,
        "model_label": campaign.get_attribution_model_display(),
    }


def campaign_metrics(
    campaign: Any, *, flt: MetricFilter | None = None, interval: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Totals, rates, breakdowns by channel, variant and run, and (with `interval`) a series over time; the
    attribution behind the conversions and the currency of the revenue."""
    flt = flt or MetricFilter()
    by_key = _grouped(_rows(campaign.pk, ["channel", "variant_id", "run_id"], flt), 3)
    variants = {str(v.pk): v for v in campaign.variants.all()}
    # Counts are computed per key (so per channel) first, then added up per breakdown.
    computed = {
        (channel, str(variant_id), str(run_id)): metrics_from_sums(sums, channel)
        for (channel, variant_id, run_id), sums in by_key.items()
    }

    def summed(keys: Iterable[tuple]) -> dict[str, Any]:
        return _added(computed[key] for key in keys)

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
    result["attribution"] = attribution(campaign)
    result["currency"] = campaign.organisation.currency
    result["last_updated"] = metrics_last_updated(campaign.pk)
    result["generated_at"] = (now or timezone.now()).isoformat()
    rate = result["rates"]["delivery_rate"]
    result["alert"] = (
        f"Delivery rate {rate:.1%} is below {DELIVERY_ALERT_BELOW:.0%}: check bounces and the provider."
        if rate is not None and rate < DELIVERY_ALERT_BELOW and result["counts"]["sent"] >= DELIVERY_ALERT_MIN_SENT
        else None
    )
    return result


def campaign_series(campaign: Any, *, flt: MetricFilter, interval: str) -> list[dict[str, Any]]:
    """Per bucket (UTC): what was sent, delivered, opened, clicked, converted, unsubscribed and bounced then."""
    if interval not in INTERVALS:
        raise ValueError(f"interval is one of {', '.join(INTERVALS)}")
    rows = _rows(campaign.pk, ["channel"], flt, bucket=interval)
    points: dict[datetime, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
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
    for channel, bucket, metric, count, _amount, credit in rows:
        name = names.get(metric)
        if name and metric.startswith("open") and channel not in OPEN_CHANNELS:
            continue
        if name == "converted":
            points[bucket][name] += _credit(credit)
        elif name:
            points[bucket][name] += int(count)
        if metric in ("sent", "st:bounced"):  # delivered = sent - bounced, per bucket
            points[bucket]["delivered"] += int(count) if metric == "sent" else -int(count)
    return [
        {
            "at": bucket.replace(tzinfo=UTC).isoformat(),
            "delivered": points[bucket].get("delivered", 0),
            **{n: points[bucket].get(n, 0) for n in names.values()},
            "converted": _credit(points[bucket].get("converted", 0)),
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
        .only("id", "name", "status", "type", "channels", "created_at", "conversion_event")[:limit]
    )
    if not campaigns:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT campaign_id, channel, metric, sum(count), sum(amount), sum(credit) FROM analytics_metricdelta"
            " WHERE campaign_id = ANY(%s) GROUP BY 1, 2, 3",
            [[c.pk for c in campaigns]],
        )
        rows = cursor.fetchall()
    sums: dict[tuple, dict[str, tuple[int, Decimal, Decimal]]] = defaultdict(dict)
    for campaign_id, channel, metric, count, amount, credit in rows:
        sums[(str(campaign_id), channel)][metric] = (int(count), amount, credit)
    overview = []
    for campaign in campaigns:
        per_channel = [
            metrics_from_sums(metric_sums, channel)
            for (campaign_id, channel), metric_sums in sums.items()
            if campaign_id == str(campaign.pk)
        ]
        row = _added(per_channel)
        overview.append({"campaign": campaign, **(row if campaign.conversion_event else without_conversions(row))})
    return overview


CONVERSION_COUNTS = ("held_out_converted", "converted", "conversions_total", "conversion_touches")


def without_conversions(metrics: dict[str, Any]) -> dict[str, Any]:
    """A campaign with no conversion event has no conversions: whatever engagement was stored as one (a provider's
    simulated purchases) is not shown as conversions or revenue. The figures are None, which reports print as
    "no conversion event"."""
    entries = [metrics, *(e for key in ("by_channel", "by_variant", "by_run") for e in metrics.get(key, {}).values())]
    for entry in entries:
        for name in CONVERSION_COUNTS:
            entry["counts"][name] = None
        entry["rates"]["conversion_rate"] = None
        entry["revenue"] = None
    for point in metrics.get("series", []):
        point["converted"] = None
    return metrics


def reported_metrics(campaign: Any, **kwargs: Any) -> dict[str, Any]:
    """campaign_metrics as reports and the API show them: without conversions when there is no conversion event."""
    metrics = campaign_metrics(campaign, **kwargs)
    return metrics if campaign.conversion_event else without_conversions(metrics)
