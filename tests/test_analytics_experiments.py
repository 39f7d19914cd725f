"""Experiment statistics against published reference values (Newcombe 1998 for Wilson and the hybrid score
difference, scipy's documentation examples for chi-square tests), Holm by hand, Welch from moments against the raw
values, and the sequential auto-winner test's false-winner rate by simulation (numpy, no database)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analytics import experiments as ex


@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (score).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_it_matches_newcombes_wilson_intervals(x, n, low, high):
    lo, hi = ex.wilson(x, n, 0.95)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


@pytest.mark.parametrize(
    ("a", "b", "low", "high"),
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score).
    [((56, 70), (48, 80), 0.0524, 0.3339), ((9, 10), (3, 10), 0.1705, 0.8090), ((5, 56), (0, 29), -0.0381, 0.1926)],
)
def test_it_matches_newcombes_hybrid_score_difference(a, b, low, high):
    d, (lo, hi) = ex.newcombe_difference(*a, *b, 0.95)
    assert d == pytest.approx(a[0] / a[1] - b[0] / b[1])
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_it_widens_intervals_with_the_level():
    assert ex.wilson(30, 100, 0.99)[0] < ex.wilson(30, 100, 0.95)[0] < ex.wilson(30, 100, 0.90)[0]
    assert ex.z_for(0.95) == pytest.approx(1.959963984540054)


def test_it_reproduces_scipys_chi2_contingency_example():
    # scipy.stats.chi2_contingency docs: [[10, 10, 20], [20, 20, 20]] -> 2.7777..., p 0.2493522087772962, dof 2.
    # As successes / trials per variant: columns are variants.
    result = ex.chi_square_independence([10, 10, 20], [30, 30, 40])
    assert result.statistic == pytest.approx(2.7777777777777777, rel=1e-12)
    assert result.p_value == pytest.approx(0.2493522087772962, rel=1e-9)
    assert result.dof == 2


def test_it_uses_no_continuity_correction_on_2x2_tables():
    # scipy docs' aspirin table: 176/21211 vs 230/21248 has 6.8926 (p 0.008655) WITH Yates' correction; without
    # it the statistic is the square of the pooled two-proportion z.
    x1, n1, x2, n2 = 176, 176 + 21035, 230, 230 + 21018
    assert stats.chi2_contingency([[176, 230], [21035, 21018]]).statistic == pytest.approx(6.892569132546561)
    result = ex.chi_square_independence([x1, x2], [n1, n2])
    pooled = (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert result.statistic == pytest.approx(z * z, rel=1e-10)
    assert result.statistic == pytest.approx(7.156900855345259, rel=1e-10)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert result.p_value == pytest.approx(0.007467611213568741, rel=1e-9)


def test_it_gives_no_chi_square_for_an_empty_column():
    assert ex.chi_square_independence([0, 0], [100, 100]) is None
    assert ex.chi_square_independence([5], [100]) is None


def test_it_adjusts_p_values_by_holm():
    # Sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06.
    assert ex.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert ex.holm([0.5, 0.6]) == [1.0, 1.0]
    assert ex.holm([0.02]) == [0.02]


def test_it_reproduces_scipys_chisquare_example_for_the_sample_ratio():
    # scipy.stats.chisquare docs: [16, 18, 16, 14, 12, 12] against f_exp [16, 16, 16, 16, 16, 8] -> 3.5, p 0.6234.
    srm = ex.sample_ratio_check([16, 18, 16, 14, 12, 12], [16, 16, 16, 16, 16, 8])
    assert srm.statistic == pytest.approx(3.5)
    assert srm.p_value == pytest.approx(0.62338762774958223)
    assert srm.mismatch is False


def test_it_flags_a_sample_ratio_mismatch_below_one_in_a_thousand():
    # 5,000 vs 5,250 at 50/50: chi2 = 2 * 125^2 / 5125 = 6.097, p 0.0135 -> fine; 5,000 vs 5,400: 15.38, p 8.8e-5.
    fine = ex.sample_ratio_check([5000, 5250], [50, 50])
    assert fine.statistic == pytest.approx(2 * 125**2 / 5125) and fine.mismatch is False
    off = ex.sample_ratio_check([5000, 5400], [50, 50])
    assert off.statistic == pytest.approx(2 * 200**2 / 5200)
    assert off.p_value == pytest.approx(stats.chi2.sf(2 * 200**2 / 5200, 1)) and off.p_value < 0.001
    assert off.mismatch is True
    assert ex.sample_ratio_check([7000, 3000], [70, 30]).statistic == pytest.approx(0.0)


def test_it_computes_welch_from_moments_like_ttest_ind_on_the_raw_values():
    rng = np.random.default_rng(7)
    # Revenue per recipient: most recipients 0, some converted with a value.
    a = np.where(rng.random(400) < 0.05, rng.gamma(2.0, 30.0, 400), 0.0)
    b = np.where(rng.random(500) < 0.08, rng.gamma(2.0, 30.0, 500), 0.0)
    moments_a, moments_b = ex.Moments.of(a), ex.Moments.of(b)
    assert moments_a.mean == pytest.approx(a.mean()) and moments_a.variance == pytest.approx(a.var(ddof=1))
    t, p = ex.welch(moments_a, moments_b)
    reference = stats.ttest_ind(b, a, equal_var=False)
    assert t == pytest.approx(reference.statistic, rel=1e-9)
    assert p == pytest.approx(reference.pvalue, rel=1e-9)


def test_it_reproduces_a_textbook_welch_value():
    # Welch by hand: means 20, 22; variances 4, 9; n 10, 15: t = 2 / sqrt(0.4 + 0.6) = 2.0,
    # df = 1 / (0.4^2/9 + 0.6^2/14) = 22.98.
    def moments(mean, var, n):
        return ex.Moments(n, mean, var * (n - 1))

    t, p = ex.welch(moments(20, 4, 10), moments(22, 9, 15))
    df = 1 / (0.4**2 / 9 + 0.6**2 / 14)
    assert t == pytest.approx(2.0)
    assert p == pytest.approx(2 * stats.t.sf(2.0, df))
    assert ex.welch(ex.Moments(1, 5, 0), ex.Moments(10, 0, 0)) is None


def test_it_computes_the_msprt_likelihood_ratio():
    # 100/1000 vs 130/1000, tau 0.01: V = 0.09/1000 + 0.1131/1000 = 2.031e-4.
    v, t2, d = 0.09 / 1000 + 0.13 * 0.87 / 1000, 1e-4, 0.03
    expected = math.sqrt(v / (v + t2)) * math.exp(d * d * t2 / (2 * v * (v + t2)))
    assert ex.msprt_lambda(100, 1000, 130, 1000, 0.01) == pytest.approx(expected)
    assert ex.msprt_lambda(0, 1000, 0, 1000, 0.01) == 0.0


def _simulate_false_winners(arms, rate, experiments, looks, batch, level, tau, min_sample, seed):
    """Fraction of A/A experiments in which the sequential rule names a winner at any look."""
    rng = np.random.default_rng(seed)
    successes = rng.binomial(batch, rate, size=(experiments, looks, arms)).cumsum(axis=1)
    trials = batch * np.arange(1, looks + 1)
    threshold = (arms - 1) / (1 - level)
    decided = np.zeros(experiments, dtype=bool)
    for look in range(looks):
        if trials[look] < min_sample:
            continue
        for arm in range(1, arms):
            lam = ex.msprt_lambda(successes[:, look, 0], trials[look], successes[:, look, arm], trials[look], tau)
            decided |= lam >= threshold
    return decided.mean()


def test_it_keeps_false_winners_at_the_level_under_continuous_monitoring():
    # 2,000 A/A experiments, 50 looks of 200 recipients per variant each (up to 10,000 per variant).
    rate = _simulate_false_winners(2, 0.05, 2000, 50, 200, 0.95, 0.01, 1000, seed=1)
    assert rate <= 0.05
    three = _simulate_false_winners(3, 0.2, 1000, 40, 250, 0.95, 0.02, 1000, seed=2)
    assert three <= 0.05
    # What the fixed-sample test would do when looked at 50 times: far more false winners.
    rng = np.random.default_rng(1)
    cum = rng.binomial(200, 0.05, size=(2000, 50, 2)).cumsum(axis=1)
    n = 200 * np.arange(1, 51)
    p1, p2 = cum[:, :, 0] / n, cum[:, :, 1] / n
    pooled = (p1 + p2) / 2
    z = (p2 - p1) / np.sqrt(pooled * (1 - pooled) * 2 / n)
    naive = (np.abs(z[:, 4:]) > 1.96).any(axis=1).mean()
    assert naive > 0.15


def test_it_finds_a_real_difference_with_the_sequential_rule():
    rng = np.random.default_rng(3)
    looks, batch = 40, 500
    a = rng.binomial(batch, 0.05, size=(500, looks)).cumsum(axis=1)
    b = rng.binomial(batch, 0.065, size=(500, looks)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)
    lam = ex.msprt_lambda(a, n, b, n, 0.01)
    assert (lam >= 20).any(axis=1).mean() > 0.8


def test_it_decides_only_with_enough_sample_and_a_matching_ratio():
    small = ex.sequential_decision([50, 200], [900, 900], level=0.95, tau=0.01, min_sample=1000)
    assert small.winner is None and small.reason.startswith("Too small a sample")
    srm = ex.sequential_decision(
        [100, 300], [5000, 5500], level=0.95, tau=0.01, min_sample=1000, assigned=[5000, 5500], allocation=[50, 50]
    )
    assert srm.winner is None and srm.reason.startswith("Sample ratio mismatch")
    win = ex.sequential_decision([100, 300], [5000, 5000], level=0.95, tau=0.01, min_sample=1000)
    assert win.winner == 1 and win.lambdas[0] >= win.threshold == pytest.approx(20)
    none = ex.sequential_decision([100, 104], [5000, 5000], level=0.95, tau=0.01, min_sample=1000)
    assert none.winner is None and none.reason == "No significant difference yet."
    baseline = ex.sequential_decision([300, 100, 90], [5000, 5000, 5000], level=0.99, tau=0.01, min_sample=1000)
    assert baseline.winner == 0 and baseline.threshold == pytest.approx(200)


# --- a campaign's comparison, from its metrics ------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_compares_a_campaigns_variants_from_its_metrics(teammate, django_capture_on_commit_callbacks):
    from django.utils import timezone

    from analytics import services
    from delivery.models import Message
    from tests.test_analytics_metrics import _scripted_run

    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=40, conversion_event="buy")
    variants = {v.name: v for v in campaign.variants.all()}
    a = list(Message.objects.filter(run=run, variant=variants["A"]).order_by("id"))
    b = list(Message.objects.filter(run=run, variant=variants["B"]).order_by("id"))
    now = timezone.now()
    events = [{"message_id": m.pk, "kind": "click", "at": now, "dedupe": f"c{m.pk}"} for m in a[:2] + b[:9]]
    # A machine click never counts toward the comparison.
    events.append(
        {
            "message_id": a[5].pk,
            "kind": "click",
            "at": now,
            "machine": True,
            "why": "scanner_ua",
            "dedupe": f"c{a[5].pk}",
        }
    )
    values_a = {a[0].pk: [10.0]}
    values_b = {b[0].pk: [20.0, 5.0], b[1].pk: [40.0], b[2].pk: [12.5]}
    for values in (values_a, values_b):
        for message_id, amounts in values.items():
            events += [
                {"message_id": message_id, "kind": "conversion", "at": now, "value": v, "dedupe": f"v{message_id}:{i}"}
                for i, v in enumerate(amounts)
            ]
    services.engagement_record_many(events)

    result = ex.experiment_comparison(campaign, metric="click", level=0.95)
    by_name = {row["name"]: row for row in result["variants"]}
    row_a, row_b = by_name["A"], by_name["B"]
    assert (row_a["delivered"], row_a["successes"], row_b["delivered"], row_b["successes"]) == (len(a), 2, len(b), 9)
    assert row_a["is_baseline"] and result["baseline"] == str(variants["A"].pk)
    assert row_b["interval"] == pytest.approx(list(ex.wilson(9, len(b))))
    d, interval = ex.newcombe_difference(9, len(b), 2, len(a))
    assert row_b["difference"]["estimate"] == pytest.approx(d)
    assert row_b["difference"]["interval"] == pytest.approx(list(interval))
    table = [[2, len(a) - 2], [9, len(b) - 9]]
    reference = stats.chi2_contingency(table, correction=False)
    assert result["chi_square"]["statistic"] == pytest.approx(reference.statistic)
    assert row_b["difference"]["p_value"] == pytest.approx(reference.pvalue)
    assert row_b["difference"]["p_adjusted"] == row_b["difference"]["p_value"]  # one comparison: nothing to adjust
    assert result["sample_ratio"]["expected"] == [(len(a) + len(b)) / 2] * 2
    assert result["winner"] == (str(variants["B"].pk) if reference.pvalue < 0.05 else None)

    # Revenue per recipient: every delivered recipient, 0 for those who did not convert.
    raw_a = np.array([10.0] + [0.0] * (len(a) - 1))
    raw_b = np.array([25.0, 40.0, 12.5] + [0.0] * (len(b) - 3))
    assert row_b["revenue_per_recipient"]["mean"] == pytest.approx(raw_b.mean())
    assert row_b["revenue_per_recipient"]["sd"] == pytest.approx(raw_b.std(ddof=1))
    welch = stats.ttest_ind(raw_b, raw_a, equal_var=False)
    assert row_b["revenue_per_recipient"]["t"] == pytest.approx(welch.statistic)
    assert row_b["revenue_per_recipient"]["p_value"] == pytest.approx(welch.pvalue)

    conversion = ex.experiment_comparison(campaign, metric="conversion", level=0.90)
    assert [r["successes"] for r in conversion["variants"]] == [1, 3]
    with pytest.raises(ValueError, match="metric is one of"):
        ex.experiment_comparison(campaign, metric="bounce")
