from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_schema_describes_the_campaign_api(teammate):
    response = teammate.api.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in [
        "/api/v1/campaigns/",
        "/api/v1/campaigns/{id}/",
        "/api/v1/campaigns/{id}/clone/",
        "/api/v1/campaigns/{id}/restore/",
        "/api/v1/campaigns/{id}/schedule/",
        "/api/v1/campaigns/{id}/pause/",
        "/api/v1/campaigns/{id}/history/",
        "/api/v1/organisation/",
        "/api/v1/api-keys/",
    ]:
        assert path in paths, path
    list_params = {p["name"] for p in paths["/api/v1/campaigns/"]["get"]["parameters"]}
    assert {
        "status",
        "type",
        "channel",
        "search",
        "ordering",
        "created_after",
        "created_before",
        "scheduled_after",
        "scheduled_before",
        "page",
        "page_size",
        "deleted",
    } <= list_params
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"]["scheme"] == "bearer"


def test_interactive_docs_are_served(teammate):
    response = teammate.client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
