"""Every page the gateway writes itself carries the security headers; the proxied app's answers are its own.

One real gateway (embedded default). A browser played by httpx walks the pages a person sees — sign-in,
enrollment (with the TOTP secret on it), recovery codes, portal, password, sign-out, the second-factor
page, a failed hand-off — and the data plane's own error pages (404 no route, 403 blocked address, 502
refused connection, 503 every target ejected) as HTML and JSON, the API reference and the JSON API. Each
answer must carry exactly one of each header:

* ``Content-Security-Policy``: ``default-src 'none'``, scripts/styles/images/fetch from its own origin at
  most (no ``'unsafe-inline'``, no other origin, no ``data:``), ``frame-ancestors 'none'``,
  ``base-uri 'none'``, and ``form-action`` limited to its own origin and the configured hosts;
* ``X-Frame-Options: DENY``, ``Referrer-Policy: same-origin``, ``X-Content-Type-Options: nosniff``;
* ``Cache-Control: no-store`` (static assets: a public max-age instead).

TOTP codes come from Debian's ``oathtool`` (marked ``peer``).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    add_user,
    dead_port,
    echo_route,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import browser, login, post_form
from tests.support.totp import oathtool

pytestmark = pytest.mark.peer

HTML = {"Accept": "text/html,application/xhtml+xml"}
JSON = {"Accept": "application/json"}
BLOCKED_IP = "203.0.113.7"
SECRET_RE = re.compile(r'<code class="key" id="totp-secret">\s*([A-Z2-7=]+)\s*</code>')
CREDENTIAL_RE = re.compile(r'name="credential_id" value="(\d+)"')
# Sources a fetch directive may name: the page's own origin, or nothing.
OWN_ORIGIN_ONLY = {"'self'", "'none'"}
FETCH_DIRECTIVES = ("script-src", "style-src", "img-src", "connect-src", "font-src", "frame-src")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("security-headers")
    block_list = tmp / "blocked.txt"
    block_list.write_text(f"{BLOCKED_IP}\n")
    with ExitStack() as stack:
        echo = stack.enter_context(run_echo())
        refused, ejected = stack.enter_context(dead_port()), stack.enter_context(dead_port())
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [echo.url], "mfa": "required"},
            echo_route(echo, name="open", host="open.test"),
            echo_route(
                f"http://127.0.0.1:{refused}",
                name="down",
                host="down.test",
                passive_health_check={"consecutive_failures": 1000},
            ),
            echo_route(
                f"http://127.0.0.1:{ejected}",
                name="gone",
                host="gone.test",
                passive_health_check={"consecutive_failures": 1, "ejection_time": "10m"},
            ),
        ]
        port = free_port()
        config = gateway_config(
            tmp,
            port,
            routes,
            session={"insecure_cookies": True},
            # The test client stands in for a load balancer: its X-Forwarded-For names the client.
            trusted_proxies=["127.0.0.1/32"],
            threat={"block_lists": [str(block_list)]},
            # A consent purpose: the sign-in asks it on its own page.
            privacy={"purposes": [{"name": "newsletter", "title": "Newsletter", "notice": "Monthly mail."}]},
        )
        yield stack.enter_context(run_gateway(tmp, config))


def _account_pages(gw: Gateway) -> dict[str, httpx.Response]:
    """Sign in, enroll TOTP, see the codes, portal, password, JSON API, sign out; then the MFA page."""
    user = f"hdr{secrets.token_hex(4)}"
    add_user(gw.config_path, user, "amber quarry lantern voyage")
    seen: dict[str, httpx.Response] = {}
    with browser(gw) as client:
        seen["sign-in"] = client.get("/.gateway/login", headers=HTML)
        assert login(client, user).status_code == 302
        seen["consent"] = client.get("/.gateway/consent", headers=HTML)
        assert "Newsletter" in seen["consent"].text, seen["consent"].text
        seen["enrollment"] = client.get("/.gateway/account/enroll", headers=HTML)
        secret = SECRET_RE.search(seen["enrollment"].text)
        credential = CREDENTIAL_RE.search(seen["enrollment"].text)
        assert secret, seen["enrollment"].text
        assert credential, seen["enrollment"].text
        seen["recovery-codes"] = post_form(
            client,
            "/.gateway/account/totp/confirm",
            {"credential_id": credential.group(1), "code": oathtool(secret.group(1), time.time())},
        )
        assert "recovery codes" in seen["recovery-codes"].text.lower(), seen["recovery-codes"].text
        seen["portal"] = client.get("/.gateway/account", headers=HTML)
        seen["account privacy"] = client.get("/.gateway/account/privacy", headers=HTML)
        assert "Erase your account" in seen["account privacy"].text, seen["account privacy"].text
        seen["personal-data export"] = client.get("/.gateway/account/privacy/export")
        assert "attachment" in seen["personal-data export"].headers["content-disposition"]
        seen["account privacy api"] = client.get("/.gateway/api/account/requests", headers=JSON)
        seen["privacy signed in"] = client.get("/.gateway/privacy", headers=HTML)
        assert "You are signed in as" in seen["privacy signed in"].text, seen["privacy signed in"].text
        seen["password"] = client.get("/.gateway/account/password", headers=HTML)
        seen["json-api"] = client.get("/.gateway/api/me", headers=JSON)
        seen["sign-out page"] = client.get("/.gateway/logout", headers=HTML)
        seen["sign-out"] = post_form(client, "/.gateway/logout")
    with browser(gw) as client:
        assert login(client, user).status_code == 302
        seen["second factor"] = client.get("/.gateway/mfa", headers=HTML)
    return seen


def _refused(resp: httpx.Response) -> httpx.Response | None:
    return resp if resp.status_code == 403 else None


def _error_pages(gw: Gateway) -> dict[str, httpx.Response]:
    def get(host: str, path: str = "/x", **headers: str) -> httpx.Response:
        return httpx.get(f"{gw.url}{path}", headers={"Host": host, **headers}, timeout=30)

    seen: dict[str, httpx.Response] = {}
    for kind, accept in (("html", HTML), ("json", JSON)):
        seen[f"404 {kind}"] = get("nothing.test", **accept)
        seen[f"502 {kind}"] = get("down.test", **accept)
        get("gone.test", **accept)  # the one target refuses and is ejected...
        seen[f"503 {kind}"] = get("gone.test", **accept)  # ...so nothing is left
        blocked = {**accept, "X-Forwarded-For": BLOCKED_IP}

        def refused(blocked: dict[str, str] = blocked) -> httpx.Response | None:
            return _refused(get("127.0.0.1", **blocked))

        seen[f"403 {kind}"] = wait_until(refused, what="the block list to load")
    seen["hand-off error"] = get("127.0.0.1", "/.gateway/handoff?code=forged&rd=/", **HTML)
    seen["invitation error"] = get("127.0.0.1", "/.gateway/invite/" + "A" * 43, **HTML)
    seen["unknown gateway path"] = get("127.0.0.1", "/.gateway/no-such-page", **JSON)
    seen["privacy"] = get("127.0.0.1", "/.gateway/privacy", **HTML)
    seen["privacy api"] = get("127.0.0.1", "/.gateway/api/privacy", **JSON)
    seen["api reference"] = get("127.0.0.1", "/.gateway/api/schema", **HTML)
    seen["api schema json"] = get("127.0.0.1", "/.gateway/api/schema/openapi.json")
    return seen


@pytest.fixture(scope="module")
def pages(gw: Gateway) -> dict[str, httpx.Response]:
    return {**_account_pages(gw), **_error_pages(gw)}


PAGES = [
    "sign-in",
    "consent",
    "enrollment",
    "recovery-codes",
    "portal",
    "account privacy",
    "personal-data export",
    "account privacy api",
    "password",
    "json-api",
    "sign-out page",
    "sign-out",
    "second factor",
    "hand-off error",
    "invitation error",
    "unknown gateway path",
    "privacy",
    "privacy signed in",
    "privacy api",
    "api reference",
    "api schema json",
    *(f"{status} {kind}" for status in (404, 403, 502, 503) for kind in ("html", "json")),
]


def csp_directives(value: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in value.split(";"):
        name, *sources = part.split()
        assert name not in directives, f"{name} twice in {value}"
        directives[name] = sources
    return directives


def _own_host(source: str, gw: Gateway) -> bool:
    """A form-action origin: one of the configured hosts (auth host, routes), never a wildcard or scheme."""
    match = re.fullmatch(r"https?://([a-z0-9.-]+)(?::(\d+))?", source)
    return match is not None and match[1] in {route["host"] for route in gw.config["routes"]}


def assert_hardened(resp: httpx.Response, gw: Gateway, *, cache: str = "no-store") -> None:
    headers = resp.headers
    for name in ("content-security-policy", "x-frame-options", "referrer-policy", "x-content-type-options"):
        assert len(headers.get_list(name)) == 1, f"{name}: {headers.get_list(name)}"
    assert headers.get_list("cache-control") == [cache]
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["x-content-type-options"] == "nosniff"
    csp = csp_directives(headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    for directive in FETCH_DIRECTIVES:
        assert set(csp.get(directive, [])) <= OWN_ORIGIN_ONLY, (directive, csp[directive])
    assert csp["form-action"], csp
    assert all(s in OWN_ORIGIN_ONLY or _own_host(s, gw) for s in csp["form-action"]), csp["form-action"]


@pytest.mark.parametrize("name", PAGES)
def test_every_gateway_page_carries_the_security_headers(
    gw: Gateway, pages: dict[str, httpx.Response], name: str
) -> None:
    resp = pages[name]
    # The walk reached the page it meant to (a sign-in redirect would also carry the headers).
    expected = {"sign-out": 303, "hand-off error": 400, "invitation error": 410, "unknown gateway path": 404}
    status = int(name.split()[0]) if name[0].isdigit() else expected.get(name, 200)
    assert resp.status_code == status, resp.text
    assert_hardened(resp, gw)


def test_every_html_page_links_the_privacy_notice(pages: dict[str, httpx.Response]) -> None:
    # GDPR Art. 12: the notice is one click away from every page a person sees, error pages included.
    html_pages = {name: r for name, r in pages.items() if "text/html" in r.headers.get("content-type", "")}
    # The walk reached the kinds of page it must cover (a change to it cannot quietly leave them out).
    must = {"sign-in", "consent", "portal", "second factor", "privacy", "404 html", "hand-off error"}
    assert must <= set(html_pages), sorted(html_pages)
    link = '<a href="/.gateway/privacy">Privacy</a>'
    assert [name for name, resp in html_pages.items() if link not in resp.text] == []
    assert pages["privacy api"].json()["purposes"][0]["name"] == "newsletter"


def test_pages_that_show_secrets_are_never_stored(pages: dict[str, httpx.Response]) -> None:
    # The TOTP secret and the recovery codes must not end up in a browser's or proxy's cache.
    assert SECRET_RE.search(pages["enrollment"].text)
    assert pages["enrollment"].headers["cache-control"] == "no-store"
    assert pages["recovery-codes"].headers["cache-control"] == "no-store"


@pytest.mark.parametrize("asset", ["gateway.css", "error.css", "csrf.js", "webauthn.js", "choices.js"])
def test_static_assets_are_cacheable_and_hardened(gw: Gateway, asset: str) -> None:
    resp = httpx.get(f"{gw.url}/.gateway/static/{asset}", timeout=30)
    assert resp.status_code == 200
    assert_hardened(resp, gw, cache="public, max-age=3600")
    assert "set-cookie" not in resp.headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_missing_static_file_is_not_cacheable(gw: Gateway, method: str) -> None:
    """An attack run: the 404 of a missing static file said ``public, max-age=3600``, so during a
    rolling upgrade a shared cache could keep a new asset's 404 for an hour."""
    resp = httpx.request(method, f"{gw.url}/.gateway/static/added-by-the-next-release.js", timeout=30)
    assert resp.status_code == 404
    assert_hardened(resp, gw)


def test_the_proxied_apps_answers_are_not_changed(gw: Gateway) -> None:
    # The echo app sets none of these headers; the gateway adds them only to what it writes itself.
    resp = httpx.get(f"{gw.url}/page", headers={"Host": "open.test", **JSON}, timeout=30)
    assert resp.status_code == 200
    assert resp.json()["target"] == "/page"
    for name in ("content-security-policy", "x-frame-options", "referrer-policy"):
        assert name not in resp.headers


def test_the_blocked_address_page_does_not_claim_a_sign_in(pages: dict[str, httpx.Response]) -> None:
    page = pages["403 html"]
    assert "reason: ip-blocked" in page.text
    assert "signed in" not in page.text.lower()
    assert "network address are blocked" in page.text
    assert pages["403 json"].json()["error"] == "ip-blocked"


def test_error_pages_load_no_inline_style(pages: dict[str, httpx.Response]) -> None:
    for name in ("404 html", "403 html", "502 html", "503 html"):
        text = pages[name].text
        assert "<style" not in text
        assert "style=" not in text
        assert '<link rel="stylesheet" href="/.gateway/static/error.css">' in text


def test_the_api_reference_needs_nothing_from_elsewhere(pages: dict[str, httpx.Response]) -> None:
    text = pages["api reference"].text
    assert "/.gateway/api/login/passkey/options" in text
    # No script but base.html's, stylesheets only from the gateway's own origin, no CDN anywhere.
    for ours in ("csrf.js", "webauthn.js"):  # base.html's, from the gateway's own origin
        text = text.replace(f'<script src="/.gateway/static/{ours}" defer></script>', "")
    assert "<script" not in text
    assert re.findall(r'(?:href|src)="(https?:)?//', text) == []
    assert pages["api schema json"].json()["openapi"].startswith("3.")
