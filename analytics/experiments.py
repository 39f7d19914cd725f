"""A/B statistics for a campaign's variants: pure functions over counts (scipy), and `experiment_comparison`, which
feeds them a campaign's metrics.

Methods (each chosen so the numbers can be checked against published references):

- Rate per variant: unique people who did it / delivered. Open and click rates count people only (machine opens and
  link scanners excluded), so privacy proxies cannot pick a winner. Interval: Wilson score at the chosen level.
- Difference to the baseline (variant minus baseline): Newcombe's hybrid score interval (method 10 in Newcombe 1998,
  "Interval estimation for the difference between independent proportions"), built from the two Wilson intervals.
  These intervals are unadjusted; the significance flags use the Holm-adjusted p-values.
- Pairwise p-value against the baseline: the chi-square test of the 2x2 table without Yates' continuity correction
  (the same as the pooled two-proportion z-test, chi2 = z^2). Yates' correction is conservative and disagrees with
  the interval above; with a marketing-sized sample the two differ in the fourth decimal anyway.
- All variants together: chi-square test of independence (scipy.stats.chi2_contingency, correction=False; scipy
  applies the correction only to 2x2 tables, so passing False keeps 2x2 and larger tables the same test).
- More than two variants: the k-1 pairwise p-values against the baseline are Holm-Bonferroni adjusted.
- Sample-ratio mismatch: chi-square goodness of fit of the assigned counts against the allocation; p < 0.001 means
  the assignment is broken and the results cannot be trusted (no winner is named).
- Revenue per recipient: every delivered recipient counts, those without a conversion as 0. Each variant's mean and
  sum of squared deviations come from one SQL query, two-pass in exact numeric arithmetic (the converters' mean
  first, then their squared deviations from it), and the non-converters' zeros join by the pairwise update of Chan,
  Golub & LeVeque (Moments.combine). A variance from sums of squares (sum x^2 - (sum x)^2 / n) cancels
  catastrophically on large, tight values — 1e9 plus cents of noise leaves no correct digit in float. Compared with
  Welch's t-test (scipy.stats.ttest_ind_from_stats, equal_var=False — the same as ttest_ind(equal_var=False) on the
  raw values).
- Continuous monitoring (auto-winner): a mixture sequential probability ratio test (Johari, Pekelis & Walsh 2017,
  "Always valid inference"): with a normal mixture N(0, tau^2) over the difference, the likelihood ratio
  Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2))) is a martingale under no difference, so
  stopping at the first look with Lambda >= 1/alpha keeps the false-winner rate at or below alpha however often one
  looks (Ville's inequality). With k-1 comparisons each uses alpha / (k-1).

Control variants (sent nothing) are left out: no opens, clicks or attributed conversions can happen in them. The
baseline is the first other variant by position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from django.db import connection
from scipy import stats

from audiences.segments import wilson_interval

METRICS = {
    # metric: (numerator count, label)
    "open": ("opened_human_unique", "Open rate (people)"),
    "click": ("clicked_human_unique", "Click rate (people)"),
    "conversion": ("converted", "Conversion rate"),
}
LEVELS = (0.90, 0.95, 0.99)
SRM_ALPHA = 0.001
AUTO_WINNER_ADVICE = (
    "Opens are the least reliable signal — privacy proxies open on people's behalf and image blocking hides real "
    "opens — so clicks or conversions are the safer metric to pick a winner on."
)
# Mixture scale tau of the sequential test, per metric: about the size of difference worth detecting.
MSPRT_TAU = {"open": 0.02, "click": 0.01, "conversion": 0.005}


def z_for(level: float) -> float:
    return float(stats.norm.ppf(1 - (1 - level) / 2))


def wilson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for successes / trials."""
    return wilson_interval(successes, trials, z=z_for(level))


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """p1 - p2 and Newcombe's hybrid score interval for it."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, level)
    l2, u2 = wilson(x2, n2, level)
    d = p1 - p2
    return d, (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    p_value: float
    dof: int


def chi_square_independence(successes: Sequence[int], trials: Sequence[int]) -> ChiSquare | None:
    """Chi-square test of independence of the (success, failure) x variant table; None when a row or column is
    empty (the test is undefined)."""
    table = np.array([[x, n - x] for x, n in zip(successes, trials, strict=True)], dtype=float)
    if len(table) < 2 or (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return None
    result = stats.chi2_contingency(table, correction=False)
    return ChiSquare(float(result.statistic), float(result.pvalue), int(result.dof))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class SampleRatio:
    statistic: float
    p_value: float
    expected: list[float]
    mismatch: bool


def sample_ratio_check(assigned: Sequence[int], allocation: Sequence[float]) -> SampleRatio | None:
    """Chi-square goodness of fit of the assigned counts against the allocation (normalised to the total)."""
    total, weight = sum(assigned), sum(allocation)
    if total == 0 or weight <= 0 or len(assigned) < 2 or any(a <= 0 for a in allocation):
        return None
    expected = [total * a / weight for a in allocation]
    result = stats.chisquare(list(assigned), f_exp=expected)
    p_value = float(result.pvalue)
    return SampleRatio(float(result.statistic), p_value, expected, p_value < SRM_ALPHA)


@dataclass(frozen=True)
class Moments:
    """A sample's size, mean and sum of squared deviations from that mean (m2): the numerically stable summary
    (Welford; Chan, Golub & LeVeque 1979) from which the variance needs no subtraction of two large numbers."""

    n: int
    mean: float
    m2: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Moments:
        """Two passes over the values: the mean, then the squared deviations from it."""
        data = np.asarray(values, dtype=float)
        if not len(data):
            return cls(0, 0.0, 0.0)
        mean = float(data.mean())
        return cls(len(data), mean, float(((data - mean) ** 2).sum()))

    def combine(self, other: Moments) -> Moments:
        """The moments of both samples together (Chan et al.'s pairwise update)."""
        n = self.n + other.n
        if not n:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        return Moments(n, mean, self.m2 + other.m2 + delta * delta * self.n * other.n / n)

    @property
    def total(self) -> float:
        return self.mean * self.n

    @property
    def variance(self) -> float:
        """Sample variance (n - 1)."""
        return self.m2 / (self.n - 1) if self.n >= 2 else 0.0


def welch(a: Moments, b: Moments) -> tuple[float, float] | None:
    """Welch's t-test (statistic, two-sided p) of b against a from their moments; None when undefined."""
    if a.n < 2 or b.n < 2 or (a.variance == 0 and b.variance == 0):
        return None
    result = stats.ttest_ind_from_stats(
        b.mean, math.sqrt(b.variance), b.n, a.mean, math.sqrt(a.variance), a.n, equal_var=False
    )
    return float(result.statistic), float(result.pvalue)


def msprt_lambda(x1: Any, n1: Any, x2: Any, n2: Any, tau: float) -> Any:
    """Mixture SPRT likelihood ratio for p2 - p1 with a N(0, tau^2) mixture (arrays welcome). 0 when the
    variance estimate is 0 (nothing or everything happened), which never decides."""
    x1, n1, x2, n2 = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (x1, n1, x2, n2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        p1 = np.where(n1 > 0, x1 / n1, 0.0)
        p2 = np.where(n2 > 0, x2 / n2, 0.0)
        v = p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2
        t2 = tau * tau
        log_lambda = 0.5 * np.log(v / (v + t2)) + (p2 - p1) ** 2 * t2 / (2 * v * (v + t2))
        out = np.where(v > 0, np.exp(np.minimum(log_lambda, 700.0)), 0.0)
    return out if out.ndim else float(out)


@dataclass(frozen=True)
class SequentialDecision:
    winner: int | None  # index into the arms, or None
    reason: str
    lambdas: list[float]  # per non-baseline arm, against the baseline (arm 0)
    threshold: float


def sequential_decision(
    successes: Sequence[int],
    trials: Sequence[int],
    *,
    level: float,
    tau: float,
    min_sample: int,
    assigned: Sequence[int] | None = None,
    allocation: Sequence[float] | None = None,
) -> SequentialDecision:
    """One look of the auto-winner: arm 0 is the baseline. A winner is named only when every arm has
    `min_sample` trials, the sample ratio matches, and a mixture SPRT crosses 1 / (alpha / (k - 1))."""
    k = len(successes)
    alpha = 1 - level
    threshold = (k - 1) / alpha if k > 1 else math.inf
    if k < 2:
        return SequentialDecision(None, "Needs at least two variants.", [], threshold)
    if assigned is not None and allocation is not None:
        srm = sample_ratio_check(assigned, allocation)
        if srm and srm.mismatch:
            return SequentialDecision(
                None,
                f"Sample ratio mismatch (p = {srm.p_value:.2g}): the assignment is off, no decision.",
                [],
                threshold,
            )
    small = [i for i, n in enumerate(trials) if n < min_sample]
    if small:
        return SequentialDecision(
            None,
            f"Too small a sample: every variant needs {min_sample:,} delivered (smallest {min(trials):,}).",
            [],
            threshold,
        )
    lambdas = [float(msprt_lambda(successes[0], trials[0], successes[i], trials[i], tau)) for i in range(1, k)]
    rates = [x / n for x, n in zip(successes, trials, strict=True)]
    better = [i for i in range(1, k) if lambdas[i - 1] >= threshold and rates[i] > rates[0]]
    if better:
        best = max(better, key=lambda i: rates[i])
        return SequentialDecision(best, "Better than the baseline under continuous monitoring.", lambdas, threshold)
    if all(lambdas[i - 1] >= threshold and rates[i] < rates[0] for i in range(1, k)):
        return SequentialDecision(0, "Every other variant is worse than the baseline.", lambdas, threshold)
    return SequentialDecision(None, "No significant difference yet.", lambdas, threshold)


# --- a campaign's comparison -----------------------------------------------------------------------------------------

# Per variant: converters, their mean revenue and their sum of squared deviations from it, in numeric (exact for
# these two-decimal amounts), two-pass: the window average first, then the deviations.
REVENUE_SQL = """
SELECT variant_id, count(*), avg(v), sum((v - mean_v) * (v - mean_v))
FROM (SELECT variant_id, v, avg(v) OVER (PARTITION BY variant_id) AS mean_v
      FROM (SELECT message_id, variant_id, sum(value) AS v FROM analytics_engagementevent
            WHERE campaign_id = %s AND kind = 'conversion' AND value IS NOT NULL AND classification <> 'holdout'
            GROUP BY message_id, variant_id) per_message) deviations
GROUP BY variant_id
"""


def _revenue_moments(campaign_id: Any) -> dict[str, Moments]:
    """Each variant's converters' revenue moments (recipients without a conversion are not in them)."""
    with connection.cursor() as cursor:
        cursor.execute(REVENUE_SQL, [str(campaign_id)])
        return {str(v): Moments(int(c), float(mean), float(m2)) for v, c, mean, m2 in cursor.fetchall()}


FRESH_ASSIGNMENTS_SQL = """
SELECT m.variant_id, width_bucket(m.created_at, %s::timestamptz[]), count(*)
FROM delivery_message m JOIN delivery_run run ON run.id = m.run_id
WHERE run.campaign_id = %s AND NOT m.variant_kept AND m.status <> 'holdout'
GROUP BY 1, 2
"""


def sample_ratio_inputs(campaign: Any, rows: Sequence[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """Observed counts and expected weights for the sample-ratio check. With allocations unchanged: every assigned
    message against the allocation. Once they changed after sending (Campaign.allocation_history), contacts who
    kept their variant are no draw at all, so only fresh assignments count, each against the allocation of the
    period it was made in."""
    history = campaign.allocation_history or []
    if len(history) < 2:
        return [r["assigned"] for r in rows], [float(r["allocation_percent"]) for r in rows]
    ids = [r["id"] for r in rows]
    starts = [entry["at"] for entry in history[1:]]  # period 0 is everything before the first change
    with connection.cursor() as cursor:
        cursor.execute(FRESH_ASSIGNMENTS_SQL, [starts, str(campaign.pk)])
        counts = cursor.fetchall()
    observed = dict.fromkeys(ids, 0)
    per_period: dict[int, int] = {}
    for variant_id, period, n in counts:
        if str(variant_id) in observed:
            observed[str(variant_id)] += n
            per_period[period] = per_period.get(period, 0) + n
    expected = dict.fromkeys(ids, 0.0)
    for period, n in per_period.items():
        allocation = history[period]["allocation"]
        shares = {i: float(allocation.get(i, 0)) for i in ids}
        total = sum(shares.values())
        for i in ids:
            expected[i] += n * shares[i] / total if total else 0.0
    return [observed[i] for i in ids], [expected[i] for i in ids]


def _assigned(counts: dict[str, int]) -> int:
    # Every message given the variant, whatever happened to it since (held-out recipients are a separate split).
    control = counts["held_out"] - counts["held_out_holdout"]
    return counts["queued"] + counts["sent"] + counts["failed"] + counts["cancelled"] + counts["skipped"] + control


def experiment_comparison(campaign: Any, metric: str = "click", level: float = 0.95) -> dict[str, Any]:
    """Every non-control variant's rate with its interval, the difference to the baseline with its interval and
    (Holm-adjusted) p-value, the chi-square test across variants, the sample-ratio check, revenue per recipient
    with Welch's t-test, and the winner when one is significant at `level`."""
    from analytics.selectors import campaign_metrics

    if metric not in METRICS:
        raise ValueError(f"metric is one of {', '.join(METRICS)}")
    level = next((v for v in LEVELS if abs(v - level) < 1e-9), level)
    if level not in LEVELS:
        raise ValueError(f"level is one of {', '.join(str(v) for v in LEVELS)}")
    count_key, label = METRICS[metric]
    alpha = 1 - level
    metrics = campaign_metrics(campaign)
    variants = [v for v in campaign.variants.order_by("position", "name") if not v.is_control]
    rows: list[dict[str, Any]] = []
    for variant in variants:
        entry = metrics["by_variant"].get(str(variant.pk))
        counts = entry["counts"] if entry else None
        delivered = counts["delivered"] if counts else 0
        successes = counts[count_key] if counts else 0
        rows.append(
            {
                "id": str(variant.pk),
                "name": variant.name,
                "allocation_percent": variant.allocation_percent,
                "assigned": _assigned(counts) if counts else 0,
                "delivered": delivered,
                "successes": successes,
                "rate": successes / delivered if delivered else None,
                "interval": list(wilson(successes, delivered, level)) if delivered else None,
                "is_baseline": False,
                "is_winner": False,
                "difference": None,
                "revenue_per_recipient": None,
            }
        )
    result: dict[str, Any] = {
        "campaign": str(campaign.pk),
        "metric": metric,
        "metric_label": label,
        "level": level,
        "variants": rows,
        "baseline": None,
        "chi_square": None,
        "sample_ratio": None,
        "revenue": None,
        "winner": None,
        "significant": False,
        "warnings": [],
        "methods": {
            "interval": "Wilson score",
            "difference": "Newcombe hybrid score (unadjusted)",
            "pairwise_test": "chi-square 2x2 without continuity correction (= pooled z-test)",
            "multiple_comparisons": "Holm-Bonferroni" if len(rows) > 2 else "none (one comparison)",
            "overall_test": "chi-square test of independence (scipy chi2_contingency, correction=False)",
            "sample_ratio": f"chi-square goodness of fit against the allocation, mismatch at p < {SRM_ALPHA}",
            "revenue": "revenue per delivered recipient, Welch's t-test",
        },
    }
    if len(rows) < 2:
        result["warnings"].append("Fewer than two variants to compare.")
        return result
    baseline = rows[0]
    baseline["is_baseline"] = True
    result["baseline"] = baseline["id"]

    srm_observed, srm_weights = sample_ratio_inputs(campaign, rows)
    srm = sample_ratio_check(srm_observed, srm_weights)
    result["sample_ratio_inputs"] = {"observed": srm_observed, "weights": srm_weights}
    if srm:
        result["sample_ratio"] = {
            "statistic": srm.statistic,
            "p_value": srm.p_value,
            "expected": srm.expected,
            "mismatch": srm.mismatch,
        }
        if srm.mismatch:
            result["warnings"].append(
                f"Sample ratio mismatch (p = {srm.p_value:.2g}): the variants did not get their allocated shares, "
                "so these results cannot be trusted."
            )

    measured = [r for r in rows if r["delivered"]]
    chi = chi_square_independence([r["successes"] for r in measured], [r["delivered"] for r in measured])
    if chi:
        result["chi_square"] = {
            "statistic": chi.statistic,
            "p_value": chi.p_value,
            "dof": chi.dof,
            "significant": chi.p_value < alpha,
        }

    others = [r for r in rows[1:] if r["delivered"] and baseline["delivered"]]
    p_values = []
    for row in others:
        d, (low, high) = newcombe_difference(
            row["successes"], row["delivered"], baseline["successes"], baseline["delivered"], level
        )
        pair = chi_square_independence(
            [baseline["successes"], row["successes"]], [baseline["delivered"], row["delivered"]]
        )
        p_values.append(pair.p_value if pair else 1.0)
        row["difference"] = {"estimate": d, "interval": [low, high], "p_value": p_values[-1]}
    for row, adjusted in zip(others, holm(p_values) if len(others) > 1 else p_values, strict=True):
        row["difference"]["p_adjusted"] = adjusted
        row["difference"]["significant"] = adjusted < alpha

    if Decimal(metrics["revenue"]) != 0:  # no conversion values: skip the query
        _revenue(campaign, rows, baseline, level, result)

    if srm and srm.mismatch:
        result["winner_reason"] = "No winner while the sample ratio is off."
    else:
        better = [r for r in others if r["difference"]["significant"] and r["difference"]["estimate"] > 0]
        worse = [r for r in others if r["difference"]["significant"] and r["difference"]["estimate"] < 0]
        if better:
            result["winner"] = max(better, key=lambda r: r["rate"])["id"]
        elif others and len(worse) == len(rows) - 1:
            result["winner"] = baseline["id"]
        result["significant"] = result["winner"] is not None
        result["winner_reason"] = (
            f"Significant at {level:.0%}." if result["winner"] else f"No significant difference at {level:.0%} yet."
        )
    for row in rows:
        row["is_winner"] = row["id"] == result["winner"]
    return result


def _revenue(campaign: Any, rows: list[dict[str, Any]], baseline: dict[str, Any], level: float, result: dict) -> None:
    converters = _revenue_moments(campaign.pk)
    if not converters:
        return
    alpha = 1 - level
    moments = {}
    for row in rows:
        converted = converters.get(row["id"], Moments(0, 0.0, 0.0))
        # Every delivered recipient without a conversion is a 0.
        zeros = Moments(max(row["delivered"] - converted.n, 0), 0.0, 0.0)
        moments[row["id"]] = m = converted.combine(zeros)
        row["revenue_per_recipient"] = {"mean": m.mean, "sd": math.sqrt(m.variance), "n": m.n, "total": m.total}
    p_values, compared = [], []
    for row in rows[1:]:
        test = welch(moments[baseline["id"]], moments[row["id"]])
        if test:
            row["revenue_per_recipient"]["t"], row["revenue_per_recipient"]["p_value"] = test
            p_values.append(test[1])
            compared.append(row)
    for row, adjusted in zip(compared, holm(p_values) if len(compared) > 1 else p_values, strict=True):
        row["revenue_per_recipient"]["p_adjusted"] = adjusted
        row["revenue_per_recipient"]["significant"] = adjusted < alpha
    result["revenue"] = {"available": True, "test": "Welch's t-test", "baseline": baseline["id"]}


def experiment_csv(campaign: Any, metric: str = "click", level: float = 0.95) -> str:
    """The comparison as CSV: one row per variant, then the tests; cells quoted against formula injection."""
    import csv
    import io

    from analytics.reports import _cell

    comparison = experiment_comparison(campaign, metric, level)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "campaign", "metric", "level", "variant", "baseline", "winner", "allocation_percent", "assigned",
            "delivered", "successes", "rate", "interval_low", "interval_high", "difference", "difference_low",
            "difference_high", "p_value", "p_adjusted", "significant", "revenue_per_recipient", "revenue_sd",
            "revenue_p_value",
        ]
    )  # fmt: skip

    def blank(value: Any) -> Any:
        return "" if value is None else value

    for row in comparison["variants"]:
        diff = row["difference"] or {}
        interval = row["interval"] or [None, None]
        diff_interval = diff.get("interval") or [None, None]
        revenue = row["revenue_per_recipient"] or {}
        writer.writerow(
            [
                _cell(campaign.name), metric, level, _cell(row["name"]), row["is_baseline"], row["is_winner"],
                row["allocation_percent"], row["assigned"], row["delivered"], row["successes"], blank(row["rate"]),
                blank(interval[0]), blank(interval[1]), blank(diff.get("estimate")), blank(diff_interval[0]),
                blank(diff_interval[1]), blank(diff.get("p_value")), blank(diff.get("p_adjusted")),
                blank(diff.get("significant")), blank(revenue.get("mean")), blank(revenue.get("sd")),
                blank(revenue.get("p_value")),
            ]
        )  # fmt: skip
    writer.writerow([])
    writer.writerow(["test", "statistic", "p_value", "detail"])
    chi = comparison["chi_square"]
    if chi:
        writer.writerow(["chi_square_independence", chi["statistic"], chi["p_value"], f"dof={chi['dof']}"])
    srm = comparison["sample_ratio"]
    if srm:
        writer.writerow(["sample_ratio", srm["statistic"], srm["p_value"], "mismatch" if srm["mismatch"] else "ok"])
    for warning in comparison["warnings"]:
        writer.writerow(["warning", "", "", _cell(warning)])
    return out.getvalue()


def experiment_pdf(campaign: Any, metric: str = "click", level: float = 0.95) -> bytes:
    """The comparison alone as a PDF (WeasyPrint), the same section the report and its PDF show."""
    from django.template.loader import render_to_string
    from django.utils import timezone
    from weasyprint import HTML

    context = {"campaign": campaign, "generated_at": timezone.now(), **experiment_context(campaign, metric, level)}
    return HTML(string=render_to_string("analytics/experiment_pdf.html", context)).write_pdf()


def experiment_context(campaign: Any, metric: str = "click", level: float = 0.95) -> dict[str, Any]:
    """Template context of the report's experiment section (templates/analytics/_experiment.html)."""
    return {
        "experiment": experiment_comparison(campaign, metric, level),
        "experiment_metrics": [(key, label) for key, (_count, label) in METRICS.items()],
        "experiment_levels": LEVELS,
        "auto_winner_levels": (90, 95, 99),
        "auto_winner_advice": AUTO_WINNER_ADVICE,
    }
