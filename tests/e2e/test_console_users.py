"""The console's Users section, driven in Chromium: an admin creates a user and reads the one-time
password from the page; the user signs in with it in another browser and is asked to choose a new
password; the admin sees that session on the user's page and revokes it (the user's next page needs a
sign-in), resets their second factors (a reason is asked), disables and enables the account.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.conftest import oathtool, phone_shot, shot
from tests.e2e.console_site import (
    POLICY,
    Console,
    ConsoleAdmin,
    admin_page,
    console,
    run_console,
    sign_in_admin,
)

__all__ = ["admin_page", "console"]


def test_create_sign_in_revoke_reset_disable(
    browser: Browser, console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    admin = admin_page("boss")
    page = admin.page
    page.click("nav.console-nav >> text=Users")
    expect(page.locator("h1")).to_have_text("Users")
    expect(page.locator("table.users")).to_contain_text("boss")

    # Create: the one-time password is shown once, on the page.
    page.fill("#new-username", "nina")
    page.fill("#new-email", "nina@example.com")
    page.fill("#new-name", "Nina Simone")
    page.fill("#new-roles", "dev")
    page.fill("#new-reason", "new hire")
    page.click("form[data-api='/api/users'] button[type=submit]")
    otp = page.locator("#one-time-password")
    expect(otp).to_be_visible()
    password = otp.inner_text().strip()
    assert len(password) >= 20
    shot(page, "console-users-created")

    # Search finds her, with her badges.
    page.fill("#q", "nina")
    page.click("form[role=search] button[type=submit]")
    row = page.locator("table.users tbody tr", has_text="nina")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("must change")
    shot(page, "console-users")
    phone_shot(page, "console-users-390")

    # Nina signs in in another browser: she must choose a new password first.
    nina_context = browser.new_context(viewport={"width": 1280, "height": 900})
    nina = nina_context.new_page()
    nina.goto(console.gateway_url("/.gateway/login"))
    nina.fill("#username", "nina")
    nina.fill("#password", password)
    nina.click("button[type=submit]")
    expect(nina.locator("h1")).to_have_text("Choose a new password")

    # The admin sees that session on her page and revokes it.
    row.locator("a").first.click()
    expect(page.locator("h1")).to_have_text("nina")
    sessions = page.locator("table.sessions tbody tr")
    expect(sessions).to_have_count(1)
    expect(sessions.first).to_contain_text("changing password")
    expect(page.locator("table.history")).to_contain_text("admin.user.create")
    shot(page, "console-user")
    phone_shot(page, "console-user-390")
    page.once("dialog", lambda dialog: dialog.accept())
    sessions.first.locator("button", has_text="Revoke").click()
    expect(page.locator("p.empty", has_text="No live session")).to_be_visible()
    # Her next request needs a sign-in.
    nina.goto(console.gateway_url("/.gateway/account"))
    expect(nina.locator("h1")).to_have_text("Sign in")
    nina_context.close()

    # Reset her second factors: a reason is required (the browser asks for it), then it is done.
    reset = page.locator("#reset-form")
    reset.locator("button").click()
    assert page.evaluate("document.querySelector('#reset-reason').validity.valueMissing")
    page.fill("#reset-reason", "lost phone")
    page.once("dialog", lambda dialog: dialog.accept())
    reset.locator("button").click()
    expect(page.locator("#reset-result")).to_contain_text("Removed 0 authenticator app(s)")
    expect(page.locator("#reset-result #invitation-link")).to_have_count(0)
    # Again, withdrawing the password: the invitation link is shown once, on the page.
    page.fill("#reset-reason", "phone stolen, password may be known")
    reset.locator("input[name=invite]").check()
    page.once("dialog", lambda dialog: dialog.accept())
    reset.locator("button").click()
    link = page.locator("#reset-result #invitation-link")
    expect(link).to_be_visible()
    assert "/.gateway/invite/" in link.inner_text()
    shot(page, "console-user-reset-invite")
    page.reload()
    expect(page.locator("table.history")).to_contain_text("admin.user.reset_factors")
    expect(page.locator(".badges")).to_contain_text("invited")

    # Disable, then enable.
    page.fill("#disable-reason", "left the team")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#disable-form button").click()
    expect(page.locator(".badges .badge.bad")).to_have_text("disabled")
    expect(page.locator("#enable-form")).to_be_visible()
    shot(page, "console-user-disabled")
    page.locator("#enable-form button").click()
    expect(page.locator(".badges .badge.ok").first).to_have_text("active")
    expect(page.locator("table.history")).to_contain_text("admin.user.enable")

    # The page and its API twin agree.
    body = page.evaluate("fetch('/api/users/nina').then(r => r.json())")
    assert body["status"] == "active"
    assert body["sessions"] == []
    assert body["roles"] == ["dev"]


def test_a_refused_action_says_why_on_the_page(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    console.add_user("omar")
    # The other admin: each admin enrols an authenticator app once per site (the fixture's sign-in).
    admin = admin_page("second")
    page = admin.page
    page.goto(console.url("/users/omar"))
    page.fill("#roles-input", "two words")
    page.locator("#roles-form button").click()
    expect(page.locator("#roles-form + .result .alert")).to_contain_text("Invalid role name")
    # An unknown user is a page that says what to do (fetched: the fixture counts a 404 page as broken).
    answer = page.evaluate(
        "fetch('/users/nobody-here', {headers: {accept: 'text/html'}}).then(async r => [r.status, await r.text()])"
    )
    assert answer[0] == 404
    assert "search the list of users" in answer[1]


@pytest.fixture(scope="module")
def strict_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A console whose destructive actions need a second factor used within the last 5 seconds."""
    with run_console(tmp_path_factory.mktemp("console-strict"), destructive_reauth_max_age="5s") as site:
        yield site


def step_up(admin: ConsoleAdmin) -> None:
    """Follow the refused form's "Confirm it's you" link, pass the second factor, come back."""
    page = admin.page
    back = page.url
    page.locator(".result .alert a", has_text="Confirm it's you").click()
    expect(page.locator("h1")).to_have_text("Confirm it's you")
    # The next time step's code: the one the enrollment used is never accepted again.
    page.fill("#code", oathtool(admin.totp_secret, time.time() + 30))
    page.click("form[action='/.gateway/mfa/totp'] button")
    page.wait_for_url(back)


def test_what_the_admin_typed_survives_the_step_up(browser: Browser, strict_console: Console) -> None:
    site = strict_console
    site.add_user("pia")
    admin = sign_in_admin(browser, site, "boss")
    try:
        page = admin.page
        page.goto(site.url("/users/pia"))
        time.sleep(5.5)  # the scenario is the factor's age: past admin.destructive_reauth_max_age
        page.fill("#disable-reason", "contract ended on Friday")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#disable-form button").click()
        expect(page.locator("#disable-form + .result .alert")).to_contain_text("Confirm it's you")
        step_up(admin)
        # Back on the user's page: the reason is in the form again, and the page says so.
        expect(page.locator("#disable-reason")).to_have_value("contract ended on Friday")
        expect(page.locator("#disable-form + .result .alert.ok")).to_contain_text("What you typed is back")
        shot(page, "console-user-after-step-up")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#disable-form button").click()
        expect(page.locator(".badges .badge.bad")).to_have_text("disabled")
        # Once: a reload shows the form empty again.
        page.reload()
        expect(page.locator("#enable-form")).to_be_visible()
        events = page.evaluate("fetch('/api/audit/events?kind=admin.user.disable').then(r => r.json())")
        done = [e["details"] for e in events["records"] if e["outcome"] == "success"]
        assert len(done) == 1, events
        assert "contract ended on Friday" in done[0]
    finally:
        admin.context.close()
    admin.assert_clean()


def test_a_policy_draft_and_its_reason_survive_the_step_up(browser: Browser, strict_console: Console) -> None:
    site = strict_console
    admin = sign_in_admin(browser, site, "second")
    try:
        page = admin.page
        page.goto(site.url("/policies"))
        draft = POLICY + "p, authenticated, app, /news/*, GET, allow\n"
        time.sleep(5.5)  # past admin.destructive_reauth_max_age
        page.fill("#draft", draft)
        page.fill("#save-reason", "news for everyone signed in")
        page.click("#save-form button")
        expect(page.locator("#save-form + .result .alert")).to_contain_text("Confirm it's you")
        step_up(admin)
        expect(page.locator("#draft")).to_have_value(draft)
        expect(page.locator("#save-reason")).to_have_value("news for everyone signed in")
        shot(page, "console-policies-after-step-up")
        page.click("#save-form button")
        expect(page.locator(".policy-summary .big")).to_have_text("v2")
        expect(page.locator("table.policy-rules")).to_contain_text("/news/*")
    finally:
        admin.context.close()
    admin.assert_clean()
