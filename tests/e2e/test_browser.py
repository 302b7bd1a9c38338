"""End to end in a real browser: sign in, enroll TOTP and a passkey, sign out and back in with each, and
reach the echo app only with two factors (issue: sign-in, sessions and MFA)."""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import BrowserContext, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.e2e.conftest import PASSWORD, Site, add_virtual_authenticator, oathtool, phone_shot, shot

pytestmark = pytest.mark.peer


def echo_seen(page: Page) -> dict[str, str]:
    """The headers the echo app received, read from its HTML page."""
    rows = page.locator("table tr").all()
    return {r.locator("th").inner_text(): r.locator("td").inner_text() for r in rows}


def sign_in_with_password(page: Page, username: str, password: str = PASSWORD) -> None:
    expect(page.locator("h1")).to_have_text("Sign in")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")


def test_totp_enrollment_and_sign_in_round_trip(site: Site, page: Page) -> None:
    site.add_user("alice")
    page.goto(site.url("app", "/hello?x=1"))
    # Not signed in: the gateway sends the browser to the auth host's sign-in page.
    assert page.url.startswith(site.url("auth", "/.gateway/login"))
    shot(page, "01-login")
    sign_in_with_password(page, "alice")
    # The app needs two factors and alice has none: enrollment.
    expect(page.locator("h1")).to_have_text("Add a second factor")
    shot(page, "02-enroll")
    secret = page.locator("#totp-secret").inner_text().strip()
    enrolled_with = oathtool(secret, time.time())
    page.fill("#code", enrolled_with)
    page.click("form[action='/.gateway/account/totp/confirm'] button")
    expect(page.locator("h1")).to_have_text("Save your recovery codes")
    codes = page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10
    shot(page, "03-recovery-codes")
    page.click("text=I have saved them")
    # Back on the app host (through the one-time hand-off), with identity headers from the gateway.
    assert page.url == site.url("app", "/hello?x=1")
    seen = echo_seen(page)
    assert seen["x-gateway-user"] == "alice"
    # The gateway's own cookies stay with the gateway: the app never sees the session id.
    assert "gateway_session" not in seen.get("cookie", "")

    # Sign out everywhere, then the app needs a sign-in again.
    page.goto(site.url("app", "/.gateway/logout"))
    page.click("button:has-text('Sign out')")
    page.goto(site.url("app", "/"))
    sign_in_with_password(page, "alice")
    expect(page.locator("h1")).to_have_text("Confirm it's you")
    shot(page, "04-mfa")
    # The very code used at enrollment is refused (replay), whether or not its time step has passed
    # meanwhile (recomputing it could yield the next step's code: a test that depended on the clock).
    page.fill("#code", enrolled_with)
    page.click("form[action='/.gateway/mfa/totp'] button")
    expect(page.locator(".alert:not([hidden])")).to_contain_text("did not work")
    page.fill("#code", oathtool(secret, time.time() + 30))
    page.click("form[action='/.gateway/mfa/totp'] button")
    assert page.url == site.url("app", "/")
    assert echo_seen(page)["x-gateway-user"] == "alice"


def test_passkey_enrollment_then_passwordless_sign_in(
    site: Site, context: BrowserContext, page: Page
) -> None:
    add_virtual_authenticator(context, page)
    site.add_user("bob")
    page.goto(site.url("app", "/"))
    sign_in_with_password(page, "bob")
    expect(page.locator("h1")).to_have_text("Add a second factor")
    page.fill("#passkey-name", "Laptop")
    page.click("button[data-webauthn=register]")
    expect(page.locator("h1")).to_have_text("Save your recovery codes")
    page.click("text=I have saved them")
    expect(page.locator("h1")).to_contain_text("bob")
    shot(page, "05-portal")
    assert "Laptop" in page.locator("table[aria-label='Second factors']").inner_text()
    # Rename it from the portal (the change is fresh: the passkey was just used).
    page.click("details.rename summary")
    page.fill("input[name=name]", "Work laptop")
    page.click("details.rename button")
    expect(page.locator("table[aria-label='Second factors']")).to_contain_text("Work laptop")
    # The portal fits a phone: factors and sessions stack (a UI run found it 610 px wide at 390).
    phone_shot(page, "05-portal-390")

    # Sign out, then sign in with the passkey alone (user-verifying: counts as two factors), as from
    # another computer: no known-device cookie yet.
    page.click("header button:has-text('Sign out')")
    context.clear_cookies(name=re.compile("gateway_device"))
    page.goto(site.url("app", "/after"))
    page.click("button[data-webauthn=passwordless]")
    try:
        page.wait_for_url(site.url("app", "/after"), timeout=15000)
    except PlaywrightTimeoutError:
        shot(page, "debug-passwordless")
        raise AssertionError(f"at {page.url}: {page.locator('#webauthn-error').inner_text()}") from None
    assert echo_seen(page)["x-gateway-user"] == "bob"
    # The passkey sign-in named this browser a known device, as a password and code do (an attack
    # run: a passkey person's browsers never got one, so a stranger's wrong passwords locked them out).
    assert [c for c in context.cookies() if c["name"].endswith("gateway_device")]

    # A route that needs WebAuthn specifically: the passkey session qualifies.
    page.goto(site.url("admin", "/console"))
    page.wait_for_url(re.compile(r".*admin\.localhost.*/console$|.*/\.gateway/mfa.*"))
    if "/.gateway/mfa" in page.url:
        page.click("button[data-webauthn=authenticate]")
        page.wait_for_url(site.url("admin", "/console"))
    assert echo_seen(page)["x-gateway-user"] == "bob"


def test_one_factor_never_reaches_an_app_that_needs_two(site: Site, page: Page) -> None:
    site.add_user("carol")
    page.goto(site.url("wiki", "/"))
    sign_in_with_password(page, "carol")
    # mfa: none → one factor is enough for the wiki...
    page.wait_for_url(site.url("wiki", "/"))
    assert echo_seen(page)["x-gateway-user"] == "carol"
    # ...but not for the app: the session is sent to the second-factor flow, never to the upstream.
    page.goto(site.url("app", "/secret"))
    assert "/.gateway/" in page.url
    assert "x-gateway-user" not in page.content()
    # A script on the app host, with the app host's one-factor session, gets a 403 with a reason.
    page.goto(site.url("app", "/.gateway/health"))
    status, body = page.evaluate(
        "fetch('/secret', {headers: {accept: 'application/json'}}).then(async r => [r.status, await r.text()])"
    )
    assert status == 403
    assert json.loads(body)["error"] == "mfa-required"
