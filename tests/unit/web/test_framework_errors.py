"""What Litestar itself refuses on the gateway's pages (no such page, a method a page does not take, a
failed CSRF check) reaches a browser as the gateway's error page with a next step, and a script as
JSON. A first-day run found raw JSON in the browser: a person whose form had expired saw
``{"error":"error","message":"CSRF token verification failed"}``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.web.worker import control_app

HTML = {"Accept": "text/html,application/xhtml+xml"}
JSON = {"Accept": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "status", "phrase"),
    [
        ("GET", "/.gateway/nope", 404, "Page not found"),
        ("GET", "/.gateway/logout/x", 404, "Page not found"),
        ("POST", "/.gateway/login", 403, "The form has expired or did not come from this page"),
    ],
)
async def test_a_browser_gets_a_page_and_a_script_gets_json(
    tmp_path: Path, method: str, path: str, status: int, phrase: str
) -> None:
    async with control_app(tmp_path) as (_services, client):
        page = await client.request(method, path, headers=HTML, data={"username": "x"})
        assert page.status_code == status
        assert page.headers["content-type"].startswith("text/html")
        assert phrase in page.text
        assert "content-security-policy" in page.headers
        api = await client.request(method, path, headers=JSON, data={"username": "x"})
        assert api.status_code == status
        assert api.headers["content-type"].startswith("application/json")
        assert api.json()["error"] in ("not-found", "error")


async def test_every_page_names_the_gateways_icon_and_it_is_served(tmp_path: Path) -> None:
    """An attack run's browser asked every page's host for /favicon.ico: a 404, a console error and a
    denied line in the access log per page view."""
    async with control_app(tmp_path) as (_services, client):
        for path in ("/.gateway/login", "/.gateway/nope"):
            page = await client.get(path, headers=HTML)
            assert 'rel="icon" href="/.gateway/static/favicon.svg"' in page.text, path
        icon = await client.get("/.gateway/static/favicon.svg")
        assert icon.status_code == 200
        assert icon.headers["content-type"].startswith("image/svg+xml")
