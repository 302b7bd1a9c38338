"""Invitation links, driven in Chromium: the admin creates a user with an invitation link and reads it
from the page, sends a new one from the user's page; the user, in another browser, finds the first link
refused, opens the new one, is refused a weak password (with the rule), chooses a good one, is sent to
the sign-in page and signs in (the second factor comes next, as for everyone); the used link is refused.

A module of its own: each admin enrols an authenticator app once per console site, and the Users
module's site has used up both of its admins.
"""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Browser, expect

from tests.e2e.conftest import no_horizontal_scroll, phone_shot, shot
from tests.e2e.console_site import Console, ConsoleAdmin, admin_page, console

__all__ = ["admin_page", "console"]


def test_invite_a_user_who_chooses_a_password_and_signs_in(
    browser: Browser, console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    admin = admin_page("boss")
    page = admin.page
    page.goto(console.url("/users"))

    # Create with an invitation: the link is shown once, on the page.
    page.fill("#new-username", "ivan")
    page.fill("#new-name", "Ivan Petrov")
    page.select_option("#new-mode", "invitation")
    page.fill("#new-reason", "new contractor")
    page.click("form[data-api='/api/users'] button[type=submit]")
    link = page.locator("#created #invitation-link")
    expect(link).to_be_visible()
    first = link.inner_text().strip()
    assert first.startswith(console.gateway_url("/.gateway/invite/"))
    expect(page.locator("#created")).to_contain_text("It works once, until")
    shot(page, "console-users-invited")

    # The user page says a link is pending and sends a new one; the first stops working.
    page.locator("#created a", has_text="Open the account").click()
    expect(page.locator("h1")).to_have_text("ivan")
    expect(page.locator("dl.facts")).to_contain_text("invited, the link works until")
    page.fill("#invite-reason", "the first mail bounced")
    page.locator("#invite-form button").click()
    fresh = page.locator("#invite-result #invitation-link")
    expect(fresh).to_be_visible()
    second = fresh.inner_text().strip()
    assert second != first
    shot(page, "console-user-invited")
    phone_shot(page, "console-user-invited-390")

    # Ivan, in his own browser: the superseded link is refused, the new one asks for a password.
    ivan_context = browser.new_context(viewport={"width": 1280, "height": 900})
    ivan = ivan_context.new_page()
    ivan.goto(first)
    expect(ivan.locator("h1")).to_have_text("This invitation link is not valid any more")
    ivan.goto(second)
    expect(ivan.locator("h1")).to_have_text("Choose your password")
    expect(ivan.locator("#password-rules")).to_be_visible()
    ivan.fill("#new", "password1234")
    ivan.fill("#confirm", "password1234")
    ivan.click("button[type=submit]")
    expect(ivan.locator(".alert")).to_be_visible()
    expect(ivan.locator("h1")).to_have_text("Choose your password")
    shot(ivan, "gateway-invite-refused")
    ivan.set_viewport_size({"width": 390, "height": 844})
    shot(ivan, "gateway-invite-390")
    assert no_horizontal_scroll(ivan), "the invitation page scrolls sideways at 390 px"
    ivan.set_viewport_size({"width": 1280, "height": 900})
    ivan.fill("#new", "tundra lantern 4417 oboe")
    ivan.fill("#confirm", "tundra lantern 4417 oboe")
    ivan.click("button[type=submit]")
    # Sent to sign in (not signed in), his username filled in; then the second factor, as for anyone.
    expect(ivan.locator("h1")).to_have_text("Sign in")
    expect(ivan.locator("#username")).to_have_value("ivan")
    ivan.fill("#password", "tundra lantern 4417 oboe")
    ivan.click("button[type=submit]")
    expect(ivan.locator("h1")).to_have_text("Add a second factor")
    # The link was used up.
    ivan.goto(second)
    expect(ivan.locator("h1")).to_have_text("This invitation link is not valid any more")
    ivan_context.close()

    page.reload()
    expect(page.locator("dl.facts")).not_to_contain_text("invited")
    expect(page.locator("#invite-form")).to_have_count(0)
    expect(page.locator("table.history")).to_contain_text("user.invitation.accepted")
    expect(page.locator("table.history")).to_contain_text("admin.user.invite")
