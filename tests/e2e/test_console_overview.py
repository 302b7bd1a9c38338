"""The console's overview, driven in Chromium: sign-in redirect, the tiles, the API twin, the headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.e2e.conftest import no_horizontal_scroll, shot
from tests.e2e.console_site import Console, ConsoleAdmin, admin_page, console
from tests.support.wait import wait_until

__all__ = ["admin_page", "console"]


def test_the_overview_shows_the_policy_stores_replicas_and_counts(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    admin = admin_page("boss")
    page = admin.page
    # Every serving process reports itself when it starts: the worker and the admin listener.
    wait_until(lambda: len(_replicas(page)) >= 2, what="the worker and the admin listener reported")
    page.reload()
    expect(page.locator(".tile").first).to_contain_text("Policy")
    expect(page.locator(".tile", has_text="Policy")).to_contain_text("v1")
    expect(page.locator(".tile", has_text="Stores")).to_contain_text("database: up")
    expect(page.locator("nav.console-nav a[aria-current=page]")).to_have_text("Overview")
    replicas = _replicas(page)
    # One worker (server.workers: 1) and the admin listener, both live and ready, on this node.
    assert sorted(r["role"] for r in replicas) == ["admin", "worker"]
    assert all(r["ready"] and not r["gone"] and r["this_node"] for r in replicas)
    assert [r["this_process"] for r in replicas if r["role"] == "admin"] == [True]
    table = page.locator("#replicas table")
    for replica in replicas:
        row = table.locator(f"tr.replica[data-pid='{replica['pid']}']")
        expect(row).to_contain_text(replica["role"])
        expect(row.locator(".badge.ok")).to_have_text("ready")
    expect(table.locator("tr.replica[data-role=admin]")).to_contain_text("this listener")
    # The signed-in admin's own session is stored in the node's state file, so it is counted.
    body = page.evaluate("fetch('/api/overview').then(r => r.json())")
    assert body["sessions"]["count"] >= 1
    expect(page.locator("#sessions-tile .big")).not_to_have_text("—")
    expect(page.locator("#incidents-tile")).to_contain_text("0")
    expect(page.locator("#incidents-tile a")).to_have_attribute("href", "/incidents")
    expect(page.locator("#proposals-tile a")).to_have_attribute("href", "/policies")
    assert body["incidents"]["count"] == 0
    assert body["proposals"]["count"] == 0
    # No checkpoint within the test's minutes (audit.checkpoint_interval is 5 min): the tile says so.
    assert body["audit"]["available"] is True
    expect(page.locator("#audit-tile")).to_contain_text("checkpoint")
    shot(page, "console-overview")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "console-overview-390")
    # No horizontal scrolling at phone width.
    assert no_horizontal_scroll(page)
    # Dark mode follows the system: the same page on a dark background, every section reachable.
    page.set_viewport_size({"width": 1280, "height": 900})
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert dark != light
    assert _luminance(dark) < 0.2 < _luminance(light)
    shot(page, "console-overview-dark")
    hrefs = [link.get_attribute("href") for link in page.locator("nav.console-nav a").all()]
    for href in hrefs:
        assert href is not None
        response = page.goto(console.url(href))
        assert response is not None
        assert response.status == 200, href
        expect(page.locator("nav.console-nav a[aria-current=page]")).to_have_attribute("href", href)
    page.goto(console.url("/"))
    page.emulate_media(color_scheme="light")
    # The page's twin in the API answers the same numbers.
    body = page.evaluate("fetch('/api/overview').then(r => r.json())")
    assert body["policy"]["version"] == 1
    assert {c["name"]: c["ok"] for c in body["components"]} == {"database": True, "fast state": True}


def _luminance(css_color: str) -> float:
    """0 (black) to 1 (white) for ``rgb(r, g, b)``."""
    red, green, blue = (int(part) for part in css_color[css_color.index("(") + 1 : -1].split(",")[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def _replicas(page: Page) -> list[dict[str, Any]]:
    body: dict[str, Any] = page.evaluate("fetch('/api/overview').then(r => r.json())")
    items: list[dict[str, Any]] = body["replicas"]["items"]
    return [r for r in items if not r["gone"]]


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
