"""Welch's t-test on revenue per recipient stays exact on large, tight values: amounts of 1e9 plus a few cents of
noise, where a variance from sums of squares has no correct digit left. Checked against scipy.stats.ttest_ind
(equal_var=False) on the raw values, both from the moments and through a campaign's comparison (the SQL path)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analytics import experiments as ex

TIGHT_A = 1e9 + np.arange(40) % 7 * 0.01  # 1,000,000,000.00 … .06
TIGHT_B = 1e9 + 0.02 + np.arange(50) % 5 * 0.01


def test_it_matches_scipy_on_large_tight_values():
    t, p = ex.welch(ex.Moments.of(TIGHT_A), ex.Moments.of(TIGHT_B))
    reference = stats.ttest_ind(TIGHT_B, TIGHT_A, equal_var=False)
    assert t == pytest.approx(reference.statistic, rel=1e-6)
    assert p == pytest.approx(reference.pvalue, rel=1e-6)
    # What sums of squares give on the same values (the old form): nothing like it.
    squares = (float((TIGHT_A * TIGHT_A).sum()) - float(TIGHT_A.sum()) ** 2 / len(TIGHT_A)) / (len(TIGHT_A) - 1)
    assert abs(squares - TIGHT_A.var(ddof=1)) > 10 * TIGHT_A.var(ddof=1)


def test_combining_moments_equals_the_moments_of_all_values():
    rng = np.random.default_rng(3)
    converters, zeros = 1e9 + rng.integers(0, 500, 30) / 100, np.zeros(70)
    combined = ex.Moments.of(converters).combine(ex.Moments.of(zeros))
    everyone = np.concatenate([converters, zeros])
    assert combined.n == 100
    assert combined.mean == pytest.approx(everyone.mean(), rel=1e-12)
    assert combined.variance == pytest.approx(everyone.var(ddof=1), rel=1e-12)
    assert ex.Moments.of([]).combine(ex.Moments.of([5.0])) == ex.Moments(1, 5.0, 0.0)


@pytest.mark.django_db
def test_a_campaigns_revenue_comparison_is_exact_on_large_tight_values(teammate, django_capture_on_commit_callbacks):
    from django.utils import timezone

    from analytics import services
    from delivery.models import Message
    from tests.test_analytics_metrics import _scripted_run

    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=40, conversion_event="buy")
    variants = {v.name: v for v in campaign.variants.all()}
    now = timezone.now()
    raw: dict[str, list[float]] = {}
    events = []
    # Everyone converts, at 1e9 and some cents: only the cents differ. Quarters are exact in binary, so scipy gets
    # the very values the database holds (1e9 + 0.01 is not: off by up to 6e-8, amplified in a small p-value).
    for name, cycle in (("A", (0, 25, 50, 75)), ("B", (25, 50, 75, 75))):
        messages = list(Message.objects.filter(run=run, variant=variants[name]).order_by("id"))
        cents = [cycle[i % 4] for i in range(len(messages))]
        raw[name] = [1e9 + c / 100 for c in cents]
        events += [
            {"message_id": m.pk, "kind": "conversion", "at": now, "value": f"1000000000.{c:02d}", "dedupe": f"v{m.pk}"}
            for m, c in zip(messages, cents, strict=True)
        ]
    assert services.engagement_record_many(events) == 40

    result = ex.experiment_comparison(campaign, metric="conversion")
    row_b = {row["name"]: row for row in result["variants"]}["B"]
    reference = stats.ttest_ind(raw["B"], raw["A"], equal_var=False)
    assert row_b["revenue_per_recipient"]["n"] == len(raw["B"])
    assert row_b["revenue_per_recipient"]["sd"] == pytest.approx(np.std(raw["B"], ddof=1), rel=1e-6)
    assert row_b["revenue_per_recipient"]["t"] == pytest.approx(reference.statistic, rel=1e-6)
    assert row_b["revenue_per_recipient"]["p_value"] == pytest.approx(reference.pvalue, rel=1e-6)
