"""The console's overview, driven in Chromium: sign-in redirect, the tiles, the API twin, the headers."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import expect

from tests.e2e.conftest import shot
from tests.e2e.console_site import Console, ConsoleAdmin, admin_page, console

__all__ = ["admin_page", "console"]


def test_the_overview_shows_the_policy_and_the_stores(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    admin = admin_page("boss")
    page = admin.page
    expect(page.locator(".tile").first).to_contain_text("Policy")
    expect(page.locator(".tile", has_text="Policy")).to_contain_text("v1")
    expect(page.locator(".tile", has_text="Stores")).to_contain_text("database: up")
    expect(page.locator("nav.console-nav a[aria-current=page]")).to_have_text("Overview")
    shot(page, "console-overview")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "console-overview-390")
    # No horizontal scrolling at phone width.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    # The page's twin in the API answers the same numbers.
    body = page.evaluate("fetch('/api/overview').then(r => r.json())")
    assert body["policy"]["version"] == 1
    assert {c["name"]: c["ok"] for c in body["components"]} == {"database": True, "fast state": True}


def test_pages_are_hardened_and_refuse_strangers(console: Console) -> None:
    # httpx does not resolve *.localhost: the listener is on the loopback, the origin is the public host.
    direct = f"http://127.0.0.1:{console.admin_port}"
    answer = httpx.get(direct + "/", headers={"accept": "text/html"})
    # No session: to the gateway's sign-in page, not a JSON error.
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(console.gateway_url("/.gateway/login"))
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    api = httpx.get(direct + "/api/overview")
    assert api.status_code == 401
    assert api.json()["error"] == "authentication-required"
