"""The console's Privacy section, driven in Chromium: an admin opens it and sees a request received 40
days ago (GDPR allows 30) highlighted as 10 days overdue at the top of the register, places a legal
hold on a person and releases it, downloads a person's export and erases them from their user page
(the browser asks for a reason and a confirmation), landing on the request's page that says it is
done; the register then lists the erasure under the person's pseudonym.

The overdue request is written as the account portal would have written it, with the register itself
(:class:`gateway.privacy.register.Register`) under a clock set 40 days back, on the site's database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import Page, expect

from gateway.clock import FakeClock
from gateway.privacy.register import Channel, Kind, Register
from gateway.settings.schema import PrivacySettings
from gateway.store.db import Database, default_sqlite_url
from tests.e2e.conftest import no_horizontal_scroll, shot
from tests.e2e.console_site import Console, ConsoleAdmin, admin_page, console

__all__ = ["admin_page", "console"]

DOC_SHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "console-privacy.png"


def _portal_request(console: Console, user_id: int, username: str, *, days_ago: float, kind: Kind) -> str:
    """A request as the portal records it (received, identity not yet verified), ``days_ago`` days ago."""
    clock = FakeClock((datetime.now(UTC) - timedelta(days=days_ago)).timestamp())

    async def open_one() -> str:
        db = Database.open(default_sqlite_url(console.tmp / "data"), pool_size=1)
        try:
            view = await Register(db, clock=clock).open(
                kind, settings=PrivacySettings(), user_id=user_id, subject=username, channel=Channel.PORTAL
            )
        finally:
            await db.close()
        return view.ref

    # Its own loop in a worker thread: Playwright's sync API runs one in this thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, open_one()).result()


def _user_id(page: Page, username: str) -> int:
    body = page.evaluate(f"fetch('/api/users/{username}').then(r => r.json())")
    found: int = body["id"]
    return found


def _background(page: Page, selector: str) -> str:
    # A click's navigation is done once the page is parsed, perhaps before its stylesheet arrives
    # (slow on a loaded machine): until then every cell is transparent.
    page.wait_for_load_state("load")
    return str(
        page.evaluate(f"getComputedStyle(document.querySelector({json.dumps(selector)})).backgroundColor")
    )


def test_overdue_request_hold_placed_and_released_and_erasure_from_the_user_page(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    console.add_user("olivia")
    console.add_user("peter")
    admin = admin_page("boss")
    page = admin.page
    olivia = _user_id(page, "olivia")
    late = _portal_request(console, olivia, "olivia", days_ago=40, kind=Kind.ACCESS)
    fresh = _portal_request(console, olivia, "olivia", days_ago=3, kind=Kind.RECTIFICATION)

    # The register: the overdue request first, highlighted, with how late it is.
    page.click("nav.console-nav >> text=Privacy")
    expect(page.locator("h1")).to_have_text("Privacy")
    expect(page.locator("nav.console-nav a[aria-current=page]")).to_have_text("Privacy")
    rows = page.locator("table.register tbody tr")
    expect(rows.first).to_have_attribute("data-ref", late)
    expect(rows.first).to_have_class("overdue")
    expect(rows.first.locator(".overdue-badge")).to_have_text("10 days overdue")
    expect(rows.first).to_contain_text("o•••a")  # a list of many people: the name masked
    expect(page.locator(f"tr[data-ref='{fresh}']")).to_contain_text("in 27 days")
    expect(page.locator(f"tr[data-ref='{fresh}']")).not_to_have_class("overdue")
    assert _background(page, f"tr[data-ref='{late}'] td") != _background(page, f"tr[data-ref='{fresh}'] td")
    expect(page.get_by_test_id("overdue-count")).to_have_text("1")
    expect(page.get_by_test_id("overdue-count")).to_have_class("big bad")

    # Its page names the person and shows the timeline; the identity is verified there.
    rows.first.locator("a").click()
    expect(page.locator("h1")).to_have_text(f"Request {late}")
    expect(page.get_by_test_id("subject")).to_have_text("olivia")
    expect(page.get_by_test_id("overdue")).to_have_text("10 days overdue")
    expect(page.locator("ol.timeline li.overdue")).to_contain_text("Due")
    shot(page, "console-privacy-request")
    page.fill("#verify-by", "video call, passport checked")
    page.locator("#verify-form button").click()
    expect(page.locator("dl.facts")).to_contain_text("video call, passport checked")
    page.click("text=← Privacy")

    # A legal hold on a person, placed and released (the release asks first).
    page.fill("#hold-reference", "HCJ-2026-0142")
    page.fill("#hold-username", "peter")
    page.fill("#hold-reason", "preservation order, district court")
    page.locator("#hold-form button").click()
    hold = page.locator("tr[data-hold='HCJ-2026-0142']")
    expect(hold).to_contain_text("p•••r")
    expect(hold.locator(".badge")).to_have_text("active")
    expect(page.get_by_test_id("hold-count")).to_have_text("1")
    hold.locator("input[name=reason]").fill("order lifted by the court")
    page.once("dialog", lambda dialog: dialog.accept())
    hold.locator("button", has_text="Release").click()
    expect(hold.locator(".badge")).to_have_text("released")
    expect(page.get_by_test_id("hold-count")).to_have_text("0")
    # A class hold that stays: the retention table says which rule it suspends. (On removed content:
    # one on a class an erasure changes, audit_events say, would hold the erasure below.)
    page.fill("#hold-reference", "REG-INQUIRY-7")
    page.select_option("#hold-class", "removed_content")
    page.fill("#hold-reason", "regulator inquiry into removed content")
    page.locator("#hold-form button").click()
    expect(page.locator("table.retention tr[data-class='removed_content']")).to_contain_text(
        "held by REG-INQUIRY-7"
    )

    # Peter's page: download his export, then erase him (a reason is required, then a confirmation).
    page.goto(console.url("/users/peter"))
    expect(page.locator("#privacy-h")).to_have_text("Privacy")
    page.locator("#privacy").scroll_into_view_if_needed()
    shot(page, "console-user-privacy")
    page.fill("#export-verified", "signed letter, ID checked")
    with page.expect_download() as download:
        page.locator("#export-form button").click()
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["account"]["username"] == "peter"
    assert download.value.suggested_filename.startswith("personal-data-PR-")
    expect(page.locator("#export-result")).to_contain_text("Downloaded")
    page.fill("#erase-verified", "signed letter, ID checked")
    page.locator("#erase-form button").click()
    assert page.evaluate("document.querySelector('#erase-reason').validity.valueMissing")
    page.fill("#erase-reason", "asked to be forgotten")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#erase-form button").click()
    expect(page.locator("h1")).to_contain_text("Request PR-")
    expect(page.get_by_test_id("outcome")).to_contain_text("Erased.")
    expect(page.get_by_test_id("subject")).to_contain_text("[erased:")
    shot(page, "console-privacy-erased")
    answer = page.evaluate("fetch('/api/users/peter').then(r => r.status)")
    assert answer == 404

    # The register lists it under the pseudonym; the section as a whole.
    page.click("nav.console-nav >> text=Privacy")
    expect(page.locator("table.register tbody tr", has_text="erasure")).to_contain_text("[erased:")
    shot(page, "console-privacy")
    DOC_SHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(DOC_SHOT), full_page=True)
    assert no_horizontal_scroll(page)
    page.emulate_media(color_scheme="dark")
    shot(page, "console-privacy-dark")
    # At phone width the tables stack their cells: nothing scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "console-privacy-390")
    assert no_horizontal_scroll(page)
