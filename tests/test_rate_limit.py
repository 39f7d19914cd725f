"""Per-key API rate limiting: 429 with Retry-After once a key spends its window, other keys unaffected."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import issue_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def limited(settings):
    settings.API_RATE_LIMIT = "5/60"


def _client(organisation):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_key(organisation)}")
    return client


def test_the_sixth_request_in_a_window_is_429_with_retry_after(limited, organisation):
    client = _client(organisation)
    assert [client.get("/api/v1/campaigns/").status_code for _ in range(5)] == [200] * 5
    response = client.get("/api/v1/campaigns/")
    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 60
    assert "throttled" in response.data["detail"].lower() or "request" in response.data["detail"].lower()


def test_writes_count_too_and_throttled_writes_change_nothing(limited, organisation):
    client = _client(organisation)
    for index in range(5):
        assert client.post("/api/v1/campaigns/", {"name": f"C{index}"}, format="json").status_code == 201
    response = client.post("/api/v1/campaigns/", {"name": "One too many"}, format="json")
    assert response.status_code == 429
    from campaigns.models import Campaign

    assert not Campaign.objects.filter(name="One too many").exists()


def test_each_key_has_its_own_budget(limited, organisation, other_organisation):
    first, second, elsewhere = _client(organisation), _client(organisation), _client(other_organisation)
    for _ in range(5):
        first.get("/api/v1/campaigns/")
    assert first.get("/api/v1/campaigns/").status_code == 429
    assert second.get("/api/v1/campaigns/").status_code == 200
    assert elsewhere.get("/api/v1/campaigns/").status_code == 200


def test_sessions_are_limited_per_user(limited, teammate):
    for _ in range(5):
        assert teammate.client.get("/api/v1/campaigns/").status_code == 200
    assert teammate.client.get("/api/v1/campaigns/").status_code == 429


def test_the_window_resets(limited, organisation, monkeypatch):
    import audiences.throttling as throttling

    now = [1_000_040.0]
    monkeypatch.setattr(throttling.time, "time", lambda: now[0])
    client = _client(organisation)
    for _ in range(5):
        client.get("/api/v1/campaigns/")
    blocked = client.get("/api/v1/campaigns/")
    assert blocked.status_code == 429
    assert blocked["Retry-After"] == "40"  # the window is [1_000_020, 1_000_080): 60 * 16_667 = 1_000_020
    now[0] += 41
    assert client.get("/api/v1/campaigns/").status_code == 200


def test_unauthenticated_requests_are_refused_before_counting(limited, anonymous, organisation):
    for _ in range(10):
        assert anonymous.get("/api/v1/campaigns/").status_code == 401
