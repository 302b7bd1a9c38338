"""In Chromium: sign in through the OpenID provider's own login page, add the gateway's second factor,
reach the app with the identity the provider vouched for, sign out at both (issue: OIDC sign-in).

The provider is oidc-provider on 127.0.0.1 (tests/support/oidc_peer.py); the gateway's auth host is
``auth.localhost`` and the app ``app.localhost`` (Chromium resolves ``*.localhost`` to loopback).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import oathtool, shot
from tests.integration.harness import Gateway, dead_port, free_port, gateway_config, run_echo, run_gateway
from tests.support.oidc_peer import CLIENT_ID, CLIENT_SECRET, Account, Provider, provider_client, run_provider

pytestmark = pytest.mark.peer

ALICE = Account(
    "alice",
    "provider password 42",
    {
        "email": "alice@corp.test",
        "email_verified": True,
        "preferred_username": "alice",
        "name": "Alice Example",
        "groups": ["engineering"],
    },
    amr=("pwd",),
)


@dataclass
class OidcSite:
    gw: Gateway
    op: Provider
    port: int

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}.localhost:{self.port}{path}"


@pytest.fixture(scope="module")
def oidc_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcSite]:
    tmp = tmp_path_factory.mktemp("e2e-oidc")
    port = free_port()
    auth = f"http://auth.localhost:{port}"
    client = provider_client(
        [f"{auth}/.gateway/oidc/corp/callback"],
        [f"{auth}/.gateway/oidc/corp/logged-out"],
        f"{auth}/.gateway/oidc/corp/backchannel-logout",
    )
    with (
        run_provider(tmp / "op", clients=[client], accounts=[ALICE]) as op,
        run_echo() as echo,
        dead_port() as down,
    ):
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "app.localhost", "upstreams": [echo.url], "mfa": "required"}
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            public_url=auth,
            session={"insecure_cookies": True},
            identity_providers=[
                {
                    "name": "corp",
                    "display_name": "Corp SSO",
                    "issuer": op.issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "scopes": ["openid", "email", "profile", "groups"],
                    "provisioning": "jit",
                    "role_map": {"engineering": "developer"},
                },
                {
                    "name": "backup",
                    "display_name": "Backup SSO",
                    "issuer": f"http://127.0.0.1:{down}",
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                },
            ],
        )
        with run_gateway(tmp, config) as gw:
            yield OidcSite(gw, op, port)


def echo_seen(page: Page) -> dict[str, str]:
    rows = page.locator("table tr").all()
    return {r.locator("th").inner_text(): r.locator("td").inner_text() for r in rows}


def test_sign_in_at_the_provider_then_the_gateways_second_factor(oidc_site: OidcSite, page: Page) -> None:
    page.goto(oidc_site.url("app", "/dashboard"))
    assert page.url.startswith(oidc_site.url("auth", "/.gateway/login"))
    expect(page.locator("a:has-text('Sign in with Corp SSO')")).to_be_visible()
    shot(page, "06-login-with-providers")
    page.click("a:has-text('Sign in with Corp SSO')")

    # The provider's own sign-in page.
    assert page.url.startswith(oidc_site.op.issuer)
    expect(page.locator("h1")).to_have_text("Test IdP")
    page.fill("#username", ALICE.username)
    page.fill("#password", ALICE.password)
    page.click("button[type=submit]")

    # Back at the gateway: one factor so far, and the app requires two: enrollment.
    expect(page.locator("h1")).to_have_text("Add a second factor")
    assert page.url.startswith(oidc_site.url("auth", "/.gateway/account/enroll"))
    secret = page.locator("#totp-secret").inner_text().strip()
    page.fill("#code", oathtool(secret, time.time()))
    page.click("form[action='/.gateway/account/totp/confirm'] button")
    expect(page.locator("h1")).to_have_text("Save your recovery codes")
    page.click("text=I have saved them")

    assert page.url == oidc_site.url("app", "/dashboard")
    seen = echo_seen(page)
    assert seen["x-gateway-user"] == "alice"
    assert seen["x-gateway-email"] == "alice@corp.test"
    assert seen["x-gateway-roles"] == "developer"

    # Sign out: the gateway, then the provider (its confirmation page), then the gateway's notice.
    page.goto(oidc_site.url("app", "/.gateway/logout"))
    page.click("main button:has-text('Sign out')")
    assert page.url.startswith(f"{oidc_site.op.issuer}/session/end")
    page.click("button[value=yes]")
    expect(page.locator("h1")).to_have_text("You are signed out")
    assert page.url == oidc_site.url("auth", "/.gateway/oidc/corp/logged-out")
    shot(page, "07-signed-out-at-provider")
    page.goto(oidc_site.url("app", "/dashboard"))
    assert page.url.startswith(oidc_site.url("auth", "/.gateway/login"))


def test_a_provider_that_is_down_gets_a_page_with_a_retry(oidc_site: OidcSite, page: Page) -> None:
    page.goto(oidc_site.url("app", "/reports"))
    page.click("a:has-text('Sign in with Backup SSO')")
    expect(page.locator("h1")).to_have_text("Backup SSO is not answering")
    expect(page.locator("main")).to_contain_text("Nothing was changed")
    retry = page.locator("a:has-text('Try again')")
    assert retry.get_attribute("href") == "/.gateway/oidc/backup/start?rd=" + quote(
        oidc_site.url("app", "/reports"), safe=""
    )
    shot(page, "08-provider-down")
