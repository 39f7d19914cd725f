"""The sending domains page in a real browser (chromium): an admin adds a domain from the navigation and copies the
DNS record with the page's Copy button."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery import dkim
from delivery.models import SendingDomain

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def admin_page(live_server, owner) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"chromium not found at {CHROMIUM}; apt-get install chromium"
    # Playwright's sync API runs an event loop in this thread; the ORM calls of the test are synchronous.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            context = browser.new_context(base_url=live_server.url, viewport={"width": 1366, "height": 900})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
            tab = context.new_page()
            tab.set_default_timeout(10_000)
            tab.goto("/login/")
            tab.fill("#id_username", owner.membership.user.username)
            tab.fill("#id_password", "correct-horse-battery")
            tab.click("button[type=submit]")
            tab.wait_for_url("**/campaigns/")
            yield tab
            ARTIFACTS.mkdir(exist_ok=True)
            tab.screenshot(path=str(ARTIFACTS / "sending-domains.png"), full_page=True)
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def test_an_admin_adds_a_domain_and_copies_its_record(admin_page, owner):
    admin_page.click("nav.mainnav >> text=Sending domains")
    admin_page.wait_for_url("**/settings/sending-domains/")
    admin_page.fill("#id_domain", "example.test")
    admin_page.click("[data-testid=sending-domain-add]")
    admin_page.wait_for_selector("[data-testid=record-value]")

    sending_domain = SendingDomain.objects.get(organisation=owner.organisation)
    assert admin_page.inner_text("[data-testid=record-name]") == sending_domain.record_name
    admin_page.click(f"[data-copy='value-{sending_domain.pk}']")
    admin_page.wait_for_selector(f"[data-copy='value-{sending_domain.pk}']:has-text('Copied')")
    assert admin_page.evaluate("navigator.clipboard.readText()") == dkim.dns_record_value(sending_domain.public_key)
    admin_page.click(f"[data-copy='zone-{sending_domain.pk}']")
    admin_page.wait_for_selector(f"[data-copy='zone-{sending_domain.pk}']:has-text('Copied')")
    assert admin_page.evaluate("navigator.clipboard.readText()") == dkim.dns_record_zone_form(sending_domain.public_key)
    assert admin_page.inner_text("[data-testid=check-status]") == "Not checked yet"
