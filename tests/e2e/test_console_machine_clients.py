"""The console's Machine clients page, driven in Chromium: create a service account, issue it a token
(shown once, never in a list or the page's HTML afterwards), revoke the token and delete the account,
each audited with the admin as the actor; at 1280 px and at 390 px without horizontal scrolling."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing

from playwright.sync_api import expect

from tests.e2e.conftest import phone_shot, shot
from tests.e2e.console_site import Console, ConsoleAdmin, admin_page, console

__all__ = ["admin_page", "console"]


def _audited(console: Console, kind: str) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(console.tmp / "data" / "gateway.db")) as conn:
        rows = conn.execute("SELECT actor, subject FROM audit_events WHERE kind = ? ORDER BY seq", (kind,))
        return [(actor, subject) for actor, subject in rows.fetchall()]


def test_service_accounts_and_tokens_from_the_console(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    admin = admin_page("boss")
    page = admin.page
    page.click("nav.console-nav >> text=Machine clients")
    expect(page.locator("h1")).to_have_text("Machine clients")
    expect(page.locator("p.empty").first).to_contain_text("No service account yet")
    shot(page, "console-machine-empty")

    # Create an account.
    page.fill("#account-name", "nightly-backup")
    page.fill("#account-description", "copies the reports share at 02:00")
    page.fill("#account-owner", "ops@example.com")
    page.fill("#account-roles", "backup\nreader")
    page.click("#account-form button[type=submit]")
    row = page.locator("#account-nightly-backup")
    expect(row).to_contain_text("nightly-backup")
    expect(row).to_contain_text("owner ops@example.com")
    expect(row.locator(".badge")).to_have_text(["backup", "reader"])

    # A lifetime above the maximum is refused with the API's message, and issues nothing.
    page.select_option("#token-account", "nightly-backup")
    page.select_option("#token-routes", ["app"])
    page.fill("#token-expires", "4000d")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#issued")).to_contain_text("at most tokens.max_lifetime (365d)")
    expect(page.locator("table.machine-tokens")).to_have_count(0)

    # Issue a token: shown once, with its id and expiry.
    page.fill("#token-expires", "30d")
    page.click("#token-form button[type=submit]")
    issued = page.locator("#issued-token")
    expect(issued).to_be_visible()
    token = issued.inner_text()
    assert token.startswith("gwt_"), token
    expect(page.locator("#issued")).to_contain_text("not shown again")
    shot(page, "console-machine-token-issued")
    page.click("#issued >> text=Done: show it in the list")
    tokens = page.locator("table.machine-tokens tbody tr")
    expect(tokens).to_have_count(1)
    token_id = tokens.first.locator("code").inner_text()
    assert token.startswith(token_id)
    expect(tokens.first.locator(".badge.ok")).to_have_text("active")
    expect(row.locator("td").nth(2)).to_have_text("1")
    # The list never holds the token itself, nor does the API behind it.
    assert token not in page.content()
    assert token not in page.evaluate("fetch('/api/tokens').then(r => r.text())")
    shot(page, "console-machine")
    phone_shot(page, "console-machine-390")

    # Revoke it (destructive: asks first), then delete the account.
    page.once("dialog", lambda dialog: dialog.accept())
    tokens.first.locator("form.revoke-token button").click()
    expect(tokens.first.locator(".badge.bad")).to_have_text("revoked")
    expect(tokens.first.locator("form.revoke-token")).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("form.delete-account button").click()
    expect(page.locator("#account-nightly-backup")).to_have_count(0)

    assert _audited(console, "service_account.created") == [("user:boss", "client:nightly-backup")]
    assert [actor for actor, _ in _audited(console, "token.created")] == ["user:boss"]
    assert [actor for actor, _ in _audited(console, "token.revoked")] == ["user:boss"]
    assert [actor for actor, _ in _audited(console, "service_account.deleted")] == ["user:boss"]
    admin.assert_clean()
