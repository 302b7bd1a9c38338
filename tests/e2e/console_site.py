"""The admin console under test: a real gateway with its admin listener, and admins signed in with Chromium.

``console`` (module scope) runs ``python -m gateway serve`` on the embedded default (SQLite, the
node's state file) with the public URL ``http://auth.localhost:<port>`` and the admin listener on
another port of the same host, so the session cookie reaches both. ``admin_page(name)`` opens a
browser context for an admin (``g, user:<name>, admin`` in the policy), signs in with the password,
enrols an authenticator app with Debian's ``oathtool`` (a fresh second factor) and lands on the
console's overview. Every test page is watched: a console page that errors (HTTP >= 500, a page error
in the console, a failed request) or asks another origin for anything fails the test.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect

from tests.e2e.conftest import CHROMIUM, PASSWORD, oathtool
from tests.integration.harness import Gateway, add_user, free_port, gateway_config, run_echo, run_gateway
from tests.integration.test_admin_api import wait_admin_healthy

__all__ = ["Console", "ConsoleAdmin", "admin_page", "console", "run_console", "sign_in_admin"]

POLICY = """\
p, authenticated, app, /docs/*, GET, allow
p, admin, app, /*, *, allow
g, user:boss, admin
g, user:second, admin
"""
# Secrets in the config (the Settings page must mask them): a webhook URL's token, and an upstream
# credential read from a file through ${file:...}.
WEBHOOK_SECRET = "hooktoken-Zx81Qw92Er73Ty64"
UPSTREAM_KEY = "upstream-key-Lm5Nb6Vc7Xz8"


@dataclass
class Console:
    gw: Gateway
    port: int
    admin_port: int
    tmp: Path

    @property
    def admin_url(self) -> str:
        return f"http://auth.localhost:{self.admin_port}"

    def url(self, path: str = "/") -> str:
        return self.admin_url + path

    def gateway_url(self, path: str = "/") -> str:
        return f"http://auth.localhost:{self.port}{path}"

    def add_user(self, username: str, *extra: str, password: str = PASSWORD) -> None:
        add_user(self.gw.config_path, username, password, *extra)


@dataclass
class ConsoleAdmin:
    """An admin's browser tab on the console, and what it saw go wrong."""

    page: Page
    context: BrowserContext
    username: str
    totp_secret: str
    problems: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.problems == [], "the console misbehaved:\n" + "\n".join(self.problems)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with run_console(tmp_path_factory.mktemp("console")) as site:
        yield site


@contextlib.contextmanager
def run_console(tmp: Path, *, extra: dict[str, Any] | None = None, **admin: Any) -> Iterator[Console]:
    """A console site in ``tmp``; ``admin`` adds settings of the ``admin`` section (``approvals=2``),
    ``extra`` other top-level sections (``{"notify": {...}}``)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run `apt-get install chromium` (scripts/ensure-test-deps does it)")
    policy = tmp / "policy.csv"
    policy.write_text(POLICY)
    (tmp / "upstream-key").write_text(UPSTREAM_KEY + "\n")
    with run_echo() as echo:
        port, admin_port = free_port(), free_port()
        routes: list[dict[str, Any]] = [
            {
                "name": "app", "host": "app.localhost", "upstreams": [echo.url], "mfa": "none",
                "request_headers": {"X-Upstream-Key": "${file:upstream-key}"},
            },
        ]  # fmt: skip
        config = gateway_config(
            tmp,
            port,
            routes,
            public_url=f"http://auth.localhost:{port}",
            session={"insecure_cookies": True},
            policy={"file": str(policy)},
            admin={"listen": f"127.0.0.1:{admin_port}", **admin},
            threat={"webhook_url": f"https://hooks.example.com/services/{WEBHOOK_SECRET}"},
            # A rotated signing key signs at once, so the Keys page shows it active.
            assertion={"publish_ahead": "0s"},
            **(extra or {}),
        )
        with run_gateway(tmp, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            site = Console(gw, port, admin_port, tmp)
            site.add_user("boss")
            site.add_user("second")
            yield site


def _watch(admin: ConsoleAdmin, console: Console) -> None:
    page = admin.page
    allowed = (console.admin_url, console.gateway_url(""))

    def on_request(request: Request) -> None:
        if not request.url.startswith(allowed) and not request.url.startswith(("data:", "blob:")):
            admin.problems.append(f"request to another origin: {request.url}")

    def on_response(response: Any) -> None:
        # Errors the page itself answers (a refused action: 4xx JSON) are shown to the admin; a
        # missing resource or a server error is a broken page.
        if response.status >= 500 or (response.status == 404 and response.request.resource_type != "fetch"):
            admin.problems.append(f"HTTP {response.status} for {response.url}")

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("pageerror", lambda err: admin.problems.append(f"page error: {err}"))
    page.on(
        "console",
        lambda msg: (
            admin.problems.append(f"console {msg.type}: {msg.text} ({msg.location.get('url')})")
            if msg.type == "error" and "Failed to load resource" not in msg.text
            else None
        ),
    )


def sign_in_admin(browser: Browser, console: Console, username: str) -> ConsoleAdmin:
    """A new browser context signed in as ``username`` with a fresh TOTP factor, on the overview."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    admin = ConsoleAdmin(page, context, username, "")
    _watch(admin, console)
    page.goto(console.url("/"))
    # Not signed in: the console sends the browser to the gateway's sign-in page.
    expect(page.locator("h1")).to_have_text("Sign in")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.goto(console.gateway_url("/.gateway/account/enroll"))
    secret = page.locator("#totp-secret").inner_text().strip()
    page.fill("#code", oathtool(secret, time.time()))
    page.click("form[action='/.gateway/account/totp/confirm'] button")
    expect(page.locator("h1")).to_have_text("Save your recovery codes")
    admin.totp_secret = secret
    page.goto(console.url("/"))
    expect(page.locator("h1")).to_have_text("Overview")
    return admin


@pytest.fixture
def admin_page(browser: Browser, console: Console) -> Iterator[Callable[[str], ConsoleAdmin]]:
    """``admin_page("boss")``: a signed-in admin's tab; closed (and checked clean) after the test."""
    opened: list[ConsoleAdmin] = []

    def open_for(username: str) -> ConsoleAdmin:
        admin = sign_in_admin(browser, console, username)
        opened.append(admin)
        return admin

    yield open_for
    for admin in opened:
        admin.context.close()
    for admin in opened:
        admin.assert_clean()
