"""The global control group's report page: conversions and revenue per contact, treated against control, with
Welch's interval, lift and p-value. Every expected figure is computed here from the posted events by hand (groups
from the documented hash, values as attribution reads them) and with scipy on the per-contact values."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

import numpy as np
import pytest
from django.template.defaultfilters import floatformat
from django.utils import timezone
from scipy import stats

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact, Organisation
from audiences.services import organisation_update

pytestmark = pytest.mark.django_db

PAGE = "/analytics/global-control/"
N = 400


def in_control(organisation_id, contact_id: int, percent: float) -> bool:
    digest = hashlib.md5(f"global-control:{organisation_id}:{contact_id}".encode()).hexdigest()
    return int(digest[:8], 16) % 10_000 < percent * 100


def value_of(properties: dict) -> Decimal:
    """An event's revenue by hand: the first of value, revenue, amount, total; cents half to even; else none."""
    for key in ("value", "revenue", "amount", "total"):
        if key in properties:
            try:
                return Decimal(str(properties[key])).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
            except InvalidOperation:
                return Decimal(0)
    return Decimal(0)


@pytest.fixture
def scenario(owner, outsider):
    contacts_upsert_rows(
        organisation=owner.organisation, rows=[{"external_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(N)]
    )
    organisation_update(actor=owner.actor, changes={"global_control_percent": 10, "currency": "EUR"})
    now = timezone.now()
    events = []
    for i in range(N):
        # Everyone buys now and then; the pattern differs by contact so both groups have spread.
        for k in range(i % 4 if i % 3 else 0):
            properties = [
                {"value": 12.5 + i % 9},
                {"revenue": "30.125"},  # half a cent: to the even cent
                {"amount": "n/a", "value": 99},  # value comes first
                {"total": "abc"},  # not a number: a conversion without revenue
            ][(i + k) % 4]
            events.append(
                {
                    "id": f"p-{i}-{k}",
                    "type": "purchase",
                    "contact": f"c{i}",
                    "properties": properties,
                    "occurred_at": (now - timedelta(days=(i + k) % 20, hours=1)).isoformat(),
                }
            )
    # Outside the period, another type, another organisation: none of them counts.
    events.append({"id": "old", "type": "purchase", "contact": "c1", "properties": {"value": 1000},
                   "occurred_at": (now - timedelta(days=31)).isoformat()})  # fmt: skip
    events.append({"id": "view", "type": "page_view", "contact": "c1", "occurred_at": now.isoformat()})
    for start in range(0, len(events), 1000):
        response = owner.api.post("/api/v1/events/", {"events": events[start : start + 1000]}, format="json")
        assert response.status_code == 202, response.data
    contacts_upsert_rows(organisation=outsider.organisation, rows=[{"external_id": "c1", "email": "x@example.com"}])
    outsider_event = {"id": "o", "type": "purchase", "contact": "c1", "properties": {"value": 5000}}
    assert outsider.api.post("/api/v1/events/", outsider_event, format="json").status_code == 202

    ids = dict(Contact.objects.filter(organisation=owner.organisation).values_list("external_id", "pk"))
    per_contact = {pk: [0, Decimal(0)] for pk in ids.values()}
    for event in events:
        if event["id"] in ("old", "view"):
            continue
        row = per_contact[ids[event["contact"]]]
        row[0] += 1
        row[1] += value_of(event["properties"])
    groups = {"treated": [], "control": []}
    for pk, figures in per_contact.items():
        groups["control" if in_control(owner.organisation.pk, pk, 10) else "treated"].append(figures)
    return groups


def _cells(html: str, attribute: str, name: str) -> dict[str, str]:
    row = re.search(rf'<tr {attribute}="{name}">(.*?)</tr>', html, re.S)
    assert row, (attribute, name)
    return {cell: text.strip() for cell, text in re.findall(r'data-cell="(\w+)">(.*?)</td>', row.group(1), re.S)}


def test_the_page_shows_each_group_and_the_lift_with_welch_intervals(analyst, scenario):
    response = analyst.client.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    for name, figures in scenario.items():
        conversions = np.array([f[0] for f in figures], dtype=float)
        revenue = np.array([float(f[1]) for f in figures])
        cells = _cells(html, "data-group", name)
        assert cells["contacts"] == str(len(figures))
        assert cells["conversions"] == str(int(conversions.sum()))
        assert cells["conversions_per_contact"] == floatformat(conversions.mean(), 4)
        assert cells["revenue"] == f"{sum(f[1] for f in figures):,.2f} EUR"
        assert cells["revenue_per_contact"] == f"{Decimal(str(revenue.mean())):,.2f} EUR"
    assert 20 < len(scenario["control"]) < 60

    for metric, index in (("conversions", 0), ("revenue", 1)):
        treated = np.array([float(f[index]) for f in scenario["treated"]])
        control = np.array([float(f[index]) for f in scenario["control"]])
        test = stats.ttest_ind(treated, control, equal_var=False)
        interval = test.confidence_interval(0.95)
        difference = treated.mean() - control.mean()
        cells = _cells(html, "data-metric", metric)
        assert cells["difference"] == floatformat(difference, 4)
        assert cells["interval"] == f"{floatformat(interval.low, 4)} to {floatformat(interval.high, 4)}"
        assert cells["lift"] == f"{difference / control.mean() * 100:.1f} %"
        assert cells["p"] == floatformat(test.pvalue, 4)
    assert "Share last changed from 0.00 % to 10.00 %" in html


def test_the_figures_match_scipy_to_the_last_digits(owner, scenario):
    from analytics.global_control import global_control_report

    now = timezone.now()
    report = global_control_report(
        Organisation.objects.get(pk=owner.organisation.pk),
        event_type="purchase",
        since=now - timedelta(days=30),
        until=now,
    )
    for metric, index in (("conversions", 0), ("revenue", 1)):
        treated = np.array([float(f[index]) for f in scenario["treated"]])
        control = np.array([float(f[index]) for f in scenario["control"]])
        test = stats.ttest_ind(treated, control, equal_var=False)
        interval = test.confidence_interval(0.95)
        comparison = report[metric]
        assert comparison.low == pytest.approx(interval.low, rel=1e-12)
        assert comparison.high == pytest.approx(interval.high, rel=1e-12)
        assert comparison.p_value == pytest.approx(test.pvalue, rel=1e-9)
        assert comparison.lift == pytest.approx((treated.mean() - control.mean()) / control.mean(), rel=1e-12)


def test_off_it_says_so_and_nobody_is_in_control(owner):
    assert f'href="{PAGE}"' in owner.client.get("/analytics/").content.decode()  # linked from Analytics
    contacts_upsert_rows(organisation=owner.organisation, rows=[{"external_id": "a", "email": "a@example.com"}])
    html = owner.client.get(PAGE).content.decode()
    assert 'data-testid="off"' in html
    assert _cells(html, "data-group", "control")["contacts"] == "0"
    assert _cells(html, "data-group", "treated")["contacts"] == "1"


def test_it_is_for_members_only_and_scoped_to_their_organisation(outsider, anonymous, scenario):
    response = anonymous.get(PAGE)
    assert response.status_code == 302 and "/login" in response["Location"]
    html = outsider.client.get(PAGE).content.decode()
    assert _cells(html, "data-group", "treated") == {
        "contacts": "1",
        "conversions": "1",
        "conversions_per_contact": "1.0000",
        "revenue": "5,000.00 USD",
        "revenue_per_contact": "5,000.00 USD",
    }


@pytest.mark.parametrize("query", ["days=0", "days=366", "days=abc", "days=-3", "event=" + "x" * 101])
def test_bad_filters_are_a_400_naming_them(analyst, query):
    response = analyst.client.get(f"{PAGE}?{query}")
    assert response.status_code == 400
    assert 'data-testid="errors"' in response.content.decode()


@pytest.mark.parametrize(
    "properties",
    [
        {"value": 12.5},
        {"value": "30.125"},
        {"value": "30.135"},
        {"value": "-2.005"},
        {"revenue": " 7 "},
        {"amount": "1e3"},
        {"amount": "n/a", "value": 99},
        {"total": "abc"},
        {"total": True},
        {"value": {"nested": 1}},
        {"other": 5},
        {},
    ],
)
def test_event_values_in_sql_are_what_attribution_reads(properties):
    """The report's SQL and attribution's Python read an event's value the same way."""
    import json

    from django.db import connection

    from analytics.services import _event_value, event_value_sql

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {event_value_sql('p')} FROM (SELECT %s::jsonb AS p) t", [json.dumps(properties)])
        in_sql = cursor.fetchone()[0]
    expected = _event_value(properties)
    assert (None if in_sql is None else str(in_sql)) == expected
