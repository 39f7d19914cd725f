"""isA_Creative answering, 503, hanging, refusing and answering nonsense (a local fake, tests/fake_isa.py): the
content-templates API is a 503 with the reason and the last fetched templates, the console says so inline and still
offers them with the embedded library, and everything recovers when the service answers again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client

from audiences.adapters import AdapterError
from campaigns.content.library import HttpLibrary
from campaigns.models import ContentTemplate
from tests.factories import CampaignFactory
from tests.fake_isa import FakeService

pytestmark = pytest.mark.django_db
URL = "/api/v1/content-templates/"
SPRING = {
    "id": "spring",
    "name": "Spring sale (isA_Creative)",
    "channel": "sms",
    "description": "",
    "content": {"body": "Spring sale: 20% off"},
}
REASONS = {
    "503": 'isA_Creative answered 503: {"detail": "isa_creative is down for maintenance"}',
    "hang": "isA_Creative timed out: timed out",
    "malformed": "isA_Creative answered something other than JSON",
}


@pytest.fixture
def creative(settings) -> Iterator[FakeService]:
    with FakeService("isa_creative") as fake:
        fake.templates = {"spring": SPRING}
        settings.ISA_CREATIVE_URL = fake.url
        settings.EXTERNAL_HTTP_TIMEOUT = 0.3
        yield fake


@pytest.fixture
def embedded(teammate) -> ContentTemplate:
    return ContentTemplate.objects.create(
        organisation=teammate.organisation, name="Our own welcome", channel="sms", content={"body": "Welcome!"}
    )


def _break(fake: FakeService, mode: str) -> str:
    if mode == "refused":
        fake.stop()
        return "isA_Creative unreachable: "
    fake.mode = mode
    return REASONS[mode]


@pytest.mark.parametrize("mode", ["503", "hang", "malformed"])
def test_the_adapter_names_each_failure(creative, organisation, mode):
    assert [t["id"] for t in HttpLibrary(creative.url, timeout=0.3).list(organisation)] == ["spring"]
    creative.mode = mode
    with pytest.raises(AdapterError) as failure:
        HttpLibrary(creative.url, timeout=0.3).list(organisation)
    assert str(failure.value) == REASONS[mode]


def test_a_document_without_templates_is_an_error_not_an_empty_library(creative, organisation):
    creative.mode = "ok"
    creative.answer = lambda method, path, body: (200, {"items": []})  # type: ignore[method-assign]
    with pytest.raises(AdapterError, match=r"something other than a \{\"templates\": \[\.\.\.\]\} document"):
        HttpLibrary(creative.url, timeout=0.3).list(organisation)


@pytest.mark.parametrize("mode", ["503", "hang", "refused", "malformed"])
def test_the_api_is_a_503_with_the_reason_and_the_last_fetched_templates(creative, teammate, embedded, mode):
    listed = teammate.api.get(URL)
    assert listed.status_code == 200
    assert [t["id"] for t in listed.data] == ["spring"]
    assert teammate.api.get(f"{URL}spring/").data["content"] == {"body": "Spring sale: 20% off"}
    reason = _break(creative, mode)
    down = teammate.api.get(URL)
    assert down.status_code == 503
    assert down["Retry-After"] == "30"
    assert down.data["detail"].startswith(f"isA_Creative is unavailable: {reason}")
    assert down.data["code"] == "isa_creative_unavailable"
    assert [t["id"] for t in down.data["cached"]] == ["spring"]
    assert [t["name"] for t in down.data["embedded"]] == ["Our own welcome"]
    one = teammate.api.get(f"{URL}spring/")
    assert one.status_code == 503 and one.data["detail"].startswith(f"isA_Creative is unavailable: {reason}")
    assert one.data["cached"]["content"] == {"body": "Spring sale: 20% off"}
    ours = teammate.api.get(f"{URL}{embedded.pk}/")
    assert ours.status_code == 503 and ours.data["cached"]["name"] == "Our own welcome"
    # Back: answered by the service again.
    if mode == "refused":
        creative.start()
    creative.mode = "ok"
    assert teammate.api.get(URL).status_code == 200


def test_the_console_says_so_inline_and_still_offers_both_libraries(creative, teammate, embedded):
    campaign = CampaignFactory(organisation=teammate.organisation, channels=["sms"])
    client = Client()
    client.force_login(teammate.membership.user)
    page = f"/campaigns/{campaign.pk}/content/"
    assert "Spring sale (isA_Creative)" in client.get(page).content.decode()  # fetched once: cached
    creative.stop()
    html = client.get(page).content.decode()
    assert 'data-testid="library-problem"' in html
    assert "isA_Creative is unavailable (isA_Creative unreachable: " in html
    assert "Spring sale (isA_Creative)" in html and "Our own welcome" in html
    # Starting from the cached template still works.
    used = client.post(
        page,
        {
            "v-0-name": "A",
            "v-0-allocation": "100",
            "v-0-sms-body": "",
            "v-0-sms-template": "spring",
            "use_template": "0:sms",
        },
    )
    assert used.status_code == 200
    assert ">Spring sale: 20% off</textarea>" in used.content.decode()
