"""The experiment comparison over the API (JSON and CSV), on the report page (switchable by htmx) and in the PDF:
parameters checked field by field, scoped to the organisation, CSV cells safe against formula injection."""

from __future__ import annotations

import csv
import io

import pytest
from django.utils import timezone

from analytics import experiments, services
from delivery.models import Message
from tests.factories import console_client
from tests.test_analytics_metrics import _scripted_run

pytestmark = pytest.mark.django_db


def _clicks(campaign, run, a_clicks, b_clicks):
    variants = {v.name: v for v in campaign.variants.all()}
    a = list(Message.objects.filter(run=run, variant=variants["A"]).order_by("id"))
    b = list(Message.objects.filter(run=run, variant=variants["B"]).order_by("id"))
    now = timezone.now()
    services.engagement_record_many(
        [{"message_id": m.pk, "kind": "click", "at": now, "dedupe": f"c{m.pk}"} for m in a[:a_clicks] + b[:b_clicks]]
    )
    return a, b


def test_it_returns_the_comparison(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=30)
    a, b = _clicks(campaign, run, 1, 6)
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment/?metric=click&level=0.90")
    assert response.status_code == 200
    body = response.json()
    assert body["metric"] == "click" and body["level"] == 0.90
    assert [(v["name"], v["delivered"], v["successes"]) for v in body["variants"]] == [
        ("A", len(a), 1),
        ("B", len(b), 6),
    ]
    expected = experiments.experiment_comparison(campaign, "click", 0.90)
    assert body["variants"][1]["difference"]["p_value"] == pytest.approx(
        expected["variants"][1]["difference"]["p_value"]
    )
    assert body["chi_square"]["dof"] == 1
    default = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment/").json()
    assert (default["metric"], default["level"]) == ("click", 0.95)


def test_it_rejects_bad_parameters_by_field(teammate, django_capture_on_commit_callbacks):
    campaign, _run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=2)
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment/?metric=bounce&level=0.5")
    assert response.status_code == 400
    assert set(response.data) == {"metric", "level"}
    assert "not a valid choice" in str(response.data["metric"][0])
    csv_response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment.csv?level=abc")
    assert csv_response.status_code == 400


def test_it_is_scoped_to_the_organisation(teammate, outsider, django_capture_on_commit_callbacks):
    campaign, _run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=2)
    for path in ("experiment/", "experiment.csv"):
        assert outsider.api.get(f"/api/v1/campaigns/{campaign.pk}/{path}").status_code == 404, path
    assert console_client(outsider).get(f"/analytics/campaigns/{campaign.pk}/experiment/").status_code == 404


def test_it_exports_a_formula_safe_csv(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=30)
    campaign.name = '=HYPERLINK("http://evil.example","x")'
    campaign.save(update_fields=["name"])
    a, b = _clicks(campaign, run, 2, 5)
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment.csv?metric=click&level=0.99")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    header = rows[0]
    variants = [dict(zip(header, row, strict=True)) for row in rows[1:3]]
    assert all(v["campaign"] == "'" + campaign.name for v in variants)
    assert [(v["variant"], v["delivered"], v["successes"], v["baseline"]) for v in variants] == [
        ("A", str(len(a)), "2", "True"),
        ("B", str(len(b)), "5", "False"),
    ]
    assert float(variants[1]["rate"]) == pytest.approx(5 / len(b))
    assert variants[1]["level"] == "0.99"
    assert any(row and row[0] == "chi_square_independence" for row in rows)
    assert any(row and row[0] == "sample_ratio" for row in rows)


def test_it_shows_the_section_on_the_report_page_and_in_the_pdf(teammate, django_capture_on_commit_callbacks):
    from pypdf import PdfReader

    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=30)
    _clicks(campaign, run, 1, 6)
    browser = console_client(teammate)
    html = browser.get(f"/analytics/campaigns/{campaign.pk}/").content.decode()
    assert 'data-testid="experiment-table"' in html and "Experiment: which variant won" in html
    assert "clicks or conversions are the safer way" in html
    fragment = browser.get(f"/analytics/campaigns/{campaign.pk}/experiment/?metric=open&level=0.99")
    assert fragment.status_code == 200
    text = fragment.content.decode()
    assert "Open rate (people)" in text and '<option value="0.99" selected>' in text
    pdf = browser.get(f"/analytics/campaigns/{campaign.pk}/report.pdf")
    pdf_text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Experiment: which variant won" in pdf_text and "Chi-square across variants" in pdf_text
    assert "Download CSV" not in pdf_text.split("Experiment: which variant won")[1].split("By channel")[0]


def test_it_highlights_a_significant_winner(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=60)
    _clicks(campaign, run, 0, 25)
    body = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment/").json()
    assert body["winner"] == body["variants"][1]["id"] and body["significant"] is True
    assert body["variants"][1]["is_winner"] and body["variants"][1]["difference"]["significant"]
    html = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/").content.decode()
    assert 'data-testid="experiment-winner"' in html


def test_it_explains_when_there_is_nothing_to_compare(teammate):
    from tests.factories import CampaignFactory

    single = CampaignFactory(organisation=teammate.organisation)
    body = teammate.api.get(f"/api/v1/campaigns/{single.pk}/experiment/").json()
    assert body["warnings"] == ["Fewer than two variants to compare."] and body["winner"] is None
    assert body["variants"][0]["delivered"] == 0 and body["variants"][0]["rate"] is None


def test_it_exports_the_comparison_as_pdf(teammate, outsider, django_capture_on_commit_callbacks):
    from pypdf import PdfReader

    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=30)
    _clicks(campaign, run, 1, 6)
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment.pdf?metric=click&level=0.99")
    assert response.status_code == 200 and response.content.startswith(b"%PDF")
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    assert f"Experiment: {campaign.name}" in text and "99.0 % interval" in text and "Chi-square across" in text
    assert "Download CSV" not in text
    assert outsider.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment.pdf").status_code == 404
    assert teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/experiment.pdf?metric=x").status_code == 400
