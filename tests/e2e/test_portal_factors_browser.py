"""The portal's second factors in Chromium: each row names its factor once (an authenticator app, which
the user did not name, by its type and the day it was added; its type in its own column), and removing
one after the recent second factor has gone stale passes the step-up, then asks about that same factor
again (a form with its CSRF token: a GET never removes anything)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import PASSWORD, Site, oathtool, running_site, shot

pytestmark = pytest.mark.peer

REAUTH = 5  # mfa.reauth_max_age in seconds


@pytest.fixture(scope="module")
def strict_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    def routes(echo: str) -> list[dict[str, Any]]:
        return [{"name": "app", "host": "app.localhost", "upstreams": [echo], "mfa": "required"}]

    tmp = tmp_path_factory.mktemp("portal-factors")
    with running_site(tmp, routes, mfa={"reauth_max_age": f"{REAUTH}s"}) as site:
        yield site


def enrol_app(page: Page, site: Site) -> str:
    """Add an authenticator app from the portal; its secret."""
    page.goto(site.url("auth", "/.gateway/account/enroll"))
    secret = page.locator("#totp-secret").inner_text().strip()
    page.fill("#code", oathtool(secret, time.time()))
    page.click("form[action='/.gateway/account/totp/confirm'] button")
    return secret


def test_factor_rows_and_removal_after_the_step_up(strict_site: Site, page: Page) -> None:
    site = strict_site
    site.add_user("dana")
    page.goto(site.url("auth", "/.gateway/login"))
    page.fill("#username", "dana")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    first = enrol_app(page, site)
    expect(page.locator("h1")).to_have_text("Save your recovery codes")
    enrol_app(page, site)  # a second app, still within the recent factor
    page.goto(site.url("auth", "/.gateway/account"))
    rows = page.locator("table[aria-label='Second factors'] tbody tr")
    expect(rows).to_have_count(2)

    # Each row: a name (the type and the day, as the user gave none) and the type, not the same text twice.
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    for row in rows.all():
        name, kind = row.locator("td").nth(0).inner_text(), row.locator("td").nth(1).inner_text()
        assert kind == "Authenticator app"
        assert name == f"Authenticator app added {today}", name
    shot(page, "portal-factors")

    # The recent factor goes stale: removing the second app needs the step-up first...
    time.sleep(REAUTH + 0.5)
    second_remove = rows.nth(1).locator("form[action$='/remove']")
    action = second_remove.get_attribute("action") or ""
    second_remove.locator("button").click()
    expect(page.locator("h1")).to_have_text("Confirm it's you")
    page.fill("#code", oathtool(first, time.time() + 30))
    page.click("form[action='/.gateway/mfa/totp'] button")
    # ...and comes back to that factor's removal, to confirm: nothing is removed yet.
    expect(page.locator("h1")).to_have_text("Remove this second factor?")
    assert page.url == site.url("auth", action)
    expect(page.locator("#factor-name")).to_have_text(f"Authenticator app added {today}")
    expect(page.locator("form[action$='/remove'] input[type=hidden]")).to_have_count(1)  # the CSRF token
    shot(page, "portal-remove-factor")
    page.click("form[action$='/remove'] button")
    expect(page.locator(".alert.ok")).to_contain_text("Factor removed.")
    expect(rows).to_have_count(1)

    # A removal's page for a factor that is not there (any more) removes nothing and says so.
    page.goto(site.url("auth", action))
    expect(page.locator(".alert.ok")).to_contain_text("Nothing was removed.")
    expect(rows).to_have_count(1)
