"""Browser tests: Debian's Chromium driven by Playwright, WebAuthn through Chromium's virtual authenticator.

The gateway runs for real (``python -m gateway serve``) with the auth host ``auth.localhost`` and apps on
``app.localhost`` and ``admin.localhost`` (Chromium resolves every ``*.localhost`` to loopback, and treats
them as secure contexts, which WebAuthn needs: an IP address cannot be a WebAuthn relying party).
Screenshots of every page land in ``tests/e2e/screenshots/`` for people to look at.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.integration.harness import Gateway, add_user, free_port, gateway_config, run_echo, run_gateway
from tests.support.totp import oathtool as oathtool  # the e2e tests import it from here

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).parent / "screenshots"
PASSWORD = "amber quarry lantern voyage"


@dataclass
class Site:
    gw: Gateway
    port: int

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}.localhost:{self.port}{path}"

    def add_user(self, username: str, password: str = PASSWORD, *extra: str) -> None:
        add_user(self.gw.config_path, username, password, *extra)


@contextmanager
def running_site(tmp: Path, routes: Callable[[str], list[dict[str, Any]]], **settings: Any) -> Iterator[Site]:
    """A gateway on ``auth.localhost`` in front of one echo app (``routes`` is given its URL)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run `apt-get install chromium` (scripts/ensure-test-deps does it)")
    with run_echo() as echo:
        port = free_port()
        config = gateway_config(
            tmp,
            port,
            routes(echo.url),
            public_url=f"http://auth.localhost:{port}",
            session={"insecure_cookies": True},
            listen=f"127.0.0.1:{port}",
            **settings,
        )
        with run_gateway(tmp, config) as gw:
            yield Site(gw, port)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    def routes(echo: str) -> list[dict[str, Any]]:
        return [
            {"name": "app", "host": "app.localhost", "upstreams": [echo], "mfa": "required"},
            {
                "name": "admin",
                "host": "admin.localhost",
                "upstreams": [echo],
                "mfa": {"require": "webauthn", "max_age": "15m"},
            },
            {"name": "wiki", "host": "wiki.localhost", "upstreams": [echo], "mfa": "none"},
        ]

    with running_site(tmp_path_factory.mktemp("e2e"), routes) as site:
        yield site


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1100, "height": 820})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def add_virtual_authenticator(context: BrowserContext, page: Page) -> str:
    """A platform authenticator with resident keys and user verification (a passkey)."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    result = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return str(result["authenticatorId"])


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def no_horizontal_scroll(page: Page) -> bool:
    """Whether the page fits its viewport's width (nothing to scroll sideways to) once it has laid
    itself out at that width: asked again for up to 5 s, as a page still reflowing after a resize on a
    loaded machine scrolled for a moment (a full run's flake); a page that is too wide stays so.

    Polled from here, not with `wait_for_function`: that polls inside the page by `eval`, which the
    gateway's own Content-Security-Policy (script-src 'self') refuses as soon as the first answer is no
    (a CI run's failure on a busy machine); `evaluate` runs through the DevTools protocol instead."""
    deadline = time.monotonic() + 5
    while True:
        if page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"):
            return True
        if time.monotonic() > deadline:
            return False
        page.wait_for_timeout(100)


def phone_shot(page: Page, name: str) -> None:
    """A screenshot at a phone's width (390 px), which must not scroll sideways; back to 1280 px after."""
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, name)
    assert no_horizontal_scroll(page), f"{name}: the page scrolls sideways at 390 px"
    page.set_viewport_size({"width": 1280, "height": 900})


os.environ.setdefault("PW_TEST_SCREENSHOTS", str(SHOTS))
