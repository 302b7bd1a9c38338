"""The portal's privacy page in Chromium: a person downloads their data, changes a choice, corrects their
name and erases their account through the page, under the page's Content-Security-Policy.

The gateway runs for real (``tests/e2e/conftest.py``). The person signs in with a password and enrols an
authenticator app (Debian's ``oathtool``), which also makes their second factor recent. The tab is
watched: a page error, a CSP violation, a server error or a request to another origin fails the test.
The page is photographed for ``docs/screenshots/portal-privacy.png``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest
from playwright.sync_api import Page, Request, Response, expect

from gateway.privacy.export import SCHEMA_PATH
from tests.e2e.conftest import Site, no_horizontal_scroll, oathtool, shot
from tests.e2e.test_browser import sign_in_with_password

pytestmark = pytest.mark.peer

DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "portal-privacy.png"
PAGE = "/.gateway/account/privacy"


@dataclass
class Watch:
    """What went wrong in the tab."""

    port: int
    problems: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        own = f"http://auth.localhost:{self.port}/"

        def on_request(request: Request) -> None:
            if not request.url.startswith((own, "data:", "blob:")):
                self.problems.append(f"request to another origin: {request.url}")

        def on_response(response: Response) -> None:
            if response.status >= 500 or response.status == 404:
                self.problems.append(f"HTTP {response.status} for {response.url}")

        page.on("request", on_request)
        page.on("response", on_response)
        page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))
        page.on(
            "console",
            # CSP violations and script errors are reported on the console. An answer's status is
            # judged above: this test's own refusals (400, 401) are expected, Chromium's favicon look-up
            # is no page's request.
            lambda msg: (
                self.problems.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" and "Failed to load resource" not in msg.text
                else None
            ),
        )


@pytest.fixture
def watched(site: Site, page: Page) -> Iterator[Page]:
    watch = Watch(site.port)
    watch.attach(page)
    yield page
    assert watch.problems == [], "the page misbehaved:\n" + "\n".join(watch.problems)


def enrol(site: Site, page: Page, username: str) -> None:
    """Sign in with the password and enrol an authenticator app (a fresh second factor)."""
    page.goto(site.url("auth", PAGE))
    sign_in_with_password(page, username)
    page.goto(site.url("auth", "/.gateway/account/enroll"))
    secret = page.locator("#totp-secret").inner_text().strip()
    page.fill("#code", oathtool(secret, time.time()))
    page.click("form[action='/.gateway/account/totp/confirm'] button")
    expect(page.locator("h1")).to_have_text("Save your recovery codes")


def test_download_choose_correct_and_erase_through_the_page(
    site: Site, watched: Page, tmp_path: Path
) -> None:
    page = watched
    site.add_user("petra")
    enrol(site, page, "petra")
    # From the portal, through its link.
    page.goto(site.url("auth", "/.gateway/account"))
    page.click("a:has-text('Privacy and your data')")
    expect(page.locator("h1")).to_have_text("Privacy and your data")
    expect(page.locator("#reauth-state")).to_contain_text("second factor confirmed")

    # Download everything: a JSON attachment that follows the published schema.
    with page.expect_download() as download_info:
        page.click("#export")
    download = download_info.value
    assert re.fullmatch(r"personal-data-\d{4}-\d{2}-\d{2}\.json", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    document = json.loads(saved.read_text())
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    assert document["account"]["username"] == "petra"
    assert [f["name"] for f in document["factors"]["totp"] if f["confirmed"]] == ["Authenticator app"]

    # A choice, changed through the consent API by the page's script: objected, then shown so.
    row = page.locator("#choices tr", has_text="Access pattern sample")
    expect(row.locator("button")).to_have_text("Object")
    row.locator("button").click()
    expect(page.locator(".alert.ok")).to_have_text("Objection recorded.")
    row = page.locator("#choices tr", has_text="Access pattern sample")
    expect(row.locator(".badge")).to_have_text("Not processed")
    expect(row).to_contain_text("you objected")
    expect(row.locator("button")).to_have_text("Withdraw objection")

    # Correct the display name.
    page.fill("#display_name", "Petra Lind")
    page.click("form[action='/.gateway/account/privacy/rectify'] button")
    expect(page.locator(".alert.ok")).to_contain_text("Your details were corrected")
    expect(page.locator("#display_name")).to_have_value("Petra Lind")
    requests = page.locator("#requests tbody tr")
    # Newest first: the correction, the objection (a right exercised, so in the register too), the export.
    expect(requests).to_have_count(3)
    expect(requests.nth(0)).to_contain_text("Correction")
    expect(requests.nth(1)).to_contain_text("Objection")
    expect(requests.nth(2)).to_contain_text("Access (download)")
    expect(requests.nth(0).locator(".badge")).to_have_text("Completed")

    DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_SHOT), full_page=True)
    shot(page, "portal-privacy")
    # On a phone: the tables stack, nothing scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 820})
    assert no_horizontal_scroll(page)
    shot(page, "portal-privacy-390")

    # A wrong confirmation erases nothing and says what to type.
    page.fill("#confirm-erase", "someone-else")
    page.click("form[action='/.gateway/account/privacy/erase'] button")
    expect(page.locator(".alert[role=alert]").first).to_contain_text("Type your username, petra")
    # Erase, confirmed with the username: signed out, on the done page with the reference.
    page.fill("#confirm-erase", "petra")
    page.click("form[action='/.gateway/account/privacy/erase'] button")
    expect(page.locator("h1")).to_have_text("Your account was erased")
    expect(page.locator("p.lead")).to_contain_text("kept for 180 days")
    expect(page.locator("p.lead")).to_contain_text(re.compile(r"reference is PR-[A-Z2-7]{10}"))
    assert page.url.startswith(site.url("auth", f"{PAGE}/done?ref=PR-"))
    shot(page, "portal-privacy-erased")

    # The account is gone: the portal asks for a sign-in, and the password no longer works.
    page.goto(site.url("auth", "/.gateway/account"))
    sign_in_with_password(page, "petra")
    expect(page.locator(".alert:not([hidden])")).to_have_text("The username or password is not correct.")
