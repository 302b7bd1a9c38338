"""The gateway's pages under their Content-Security-Policy in a real browser, with no network but the gateway.

Every request the page makes to another origin is recorded and aborted (the machine is offline as far as
the page is concerned), and every CSP violation Chromium reports on the console is recorded. The API
reference, the sign-in, passkey enrollment, passwordless sign-in and an error page must work with both
lists empty: nothing inline, nothing from a CDN.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Route, expect

from tests.e2e.conftest import Site, add_virtual_authenticator, shot
from tests.e2e.test_browser import echo_seen, sign_in_with_password

pytestmark = pytest.mark.peer


@dataclass
class Watch:
    """What the page tried that it should not: requests to other origins, CSP violations."""

    port: int
    external: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        parts = urlsplit(route.request.url)
        ours = parts.hostname is not None and parts.hostname.endswith("localhost") and parts.port == self.port
        if ours:
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.violations.append(message.text)

    def assert_clean(self) -> None:
        assert self.external == [], self.external
        assert self.violations == [], self.violations


@pytest.fixture
def watch(site: Site, context: BrowserContext, page: Page) -> Iterator[Watch]:
    seen = Watch(site.port)
    context.route("**/*", seen.route)
    page.on("console", seen.console)
    yield seen
    seen.assert_clean()


def test_the_api_reference_renders_offline_under_the_csp(site: Site, page: Page, watch: Watch) -> None:
    response = page.goto(site.url("auth", "/.gateway/api/schema"))
    assert response is not None
    assert response.status == 200
    assert "script-src 'self'" in (response.header_value("content-security-policy") or "")
    expect(page.locator("h1")).to_contain_text("Access gateway API")
    # The operations of the JSON API are listed, with the schema files linked for tools.
    expect(page.locator("section.api-op")).not_to_have_count(0)
    expect(page.locator("#op-post-gateway-api-login-passkey-options")).to_be_visible()
    expect(page.locator("a[href$='/openapi.json']")).to_be_visible()
    # The stylesheet from the gateway's own origin applied (a blocked one leaves the browser default).
    radius = page.evaluate("getComputedStyle(document.querySelector('.card')).borderTopLeftRadius")
    assert radius == "12px"
    shot(page, "09-api-reference")
    page.click("a[href$='/openapi.json']")
    assert '"openapi"' in page.content()


def test_error_pages_render_with_their_stylesheet(site: Site, page: Page, watch: Watch) -> None:
    # An ambiguous path on an app's host: the data plane's own 400 page, not the app's.
    response = page.goto(site.url("app", "/a%2Fb"))
    assert response is not None
    assert response.status == 400
    expect(page.locator(".meta")).to_contain_text("reason: bad-path")
    # error.css centres the card on a grid; without the stylesheet the body is a plain block.
    assert page.evaluate("getComputedStyle(document.body).display") == "grid"
    # On a host with no route the gateway serves nothing, its stylesheet included: the page is
    # plain but complete, and still nothing is inline or fetched from elsewhere.
    response = page.goto(f"http://nowhere.localhost:{site.port}/")
    assert response is not None
    assert response.status == 404
    expect(page.locator("h1")).to_have_text("Not found")


def test_sign_in_and_passkeys_work_under_the_csp(
    site: Site, context: BrowserContext, page: Page, watch: Watch
) -> None:
    add_virtual_authenticator(context, page)
    site.add_user("csp-dana")
    page.goto(site.url("app", "/first"))
    sign_in_with_password(page, "csp-dana")
    expect(page.locator("h1")).to_have_text("Add a second factor")
    page.fill("#passkey-name", "Laptop")
    page.click("button[data-webauthn=register]")
    expect(page.locator("h1")).to_have_text("Save your recovery codes")
    page.click("text=I have saved them")
    expect(page.locator("h1")).to_contain_text("csp-dana")

    # Sign out (a form post), then sign in with the passkey alone: the WebAuthn script from the
    # gateway's origin, its fetch calls and the navigation to the app all pass the policy.
    page.click("header button:has-text('Sign out')")
    page.goto(site.url("app", "/again"))
    page.click("button[data-webauthn=passwordless]")
    page.wait_for_url(site.url("app", "/again"))
    assert echo_seen(page)["x-gateway-user"] == "csp-dana"
