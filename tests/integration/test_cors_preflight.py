"""CORS preflights through a real gateway: let through on a route that says so, and nothing else is.

Two routes for signed-in people only: ``api`` with ``cors_preflight: true`` and ``plain`` without it,
to an app that records what it got and answers ``OPTIONS`` as an app with one handler for every method
does (its page, a cookie, its CORS headers). A browser's preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``, no credentials) reaches the app on ``api`` and is 401 on ``plain``.
The attacks: requests that look like a preflight but are not one (another method, one header missing,
a body, credentials a browser never sends on one) are decided as any other (401); the app gets only a
browser's preflight headers (a script's ``X-Api-Key`` or a forged identity header do not pass); and the
client gets the app's status and CORS headers, never its page or cookie (an attack run read both).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import Gateway, echo_route, free_port, gateway_config, run_gateway
from tests.support.recording_app import RecordingApp, recording_app
from tests.support.wait import wait_until

PREFLIGHT = {"Origin": "https://spa.example.com", "Access-Control-Request-Method": "PUT"}


@pytest.fixture(scope="module")
def app() -> Iterator[RecordingApp]:
    with recording_app() as recording:
        yield recording


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, app: RecordingApp) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("cors")
    url = app.url
    routes = [
        echo_route(url, name="api", path="/api", public_paths=[], cors_preflight=True,
                   response_headers={"Strict-Transport-Security": "max-age=63072000"}),
        echo_route(url, name="plain", path="/plain", public_paths=[]),
    ]  # fmt: skip
    log = {"sinks": [{"type": "file", "path": str(tmp / "access.log")}], "flush_timeout": "1s"}
    with run_gateway(tmp, gateway_config(tmp, free_port(), routes, logging=log)) as gateway:
        yield gateway


def _options(gw: Gateway, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request("OPTIONS", f"{gw.url}{path}", timeout=30, **kwargs)


def test_a_preflight_reaches_the_app_on_a_route_that_lets_them_through(
    gw: Gateway, app: RecordingApp
) -> None:
    resp = _options(gw, "/api/items/7", headers=PREFLIGHT)
    assert resp.status_code == 200, resp.text
    got = app.last("/api/items/7")
    assert got.method == "OPTIONS"
    seen = got.headers
    assert seen["origin"] == "https://spa.example.com"
    assert seen["access-control-request-method"] == "PUT"
    assert not [name for name in seen if name.startswith("x-gateway-")]


def test_the_browser_gets_the_apps_cors_answer_and_nothing_else(gw: Gateway) -> None:
    """An app with one handler for every method answers OPTIONS with its page and a cookie: the client
    gets the status, the CORS headers, Vary and the route's own headers; no page, no cookie."""
    resp = _options(gw, "/api/items/8", headers=PREFLIGHT)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "https://spa.example.com"
    assert resp.headers["access-control-allow-methods"] == "GET, PUT"
    assert resp.headers["access-control-max-age"] == "600"
    assert resp.headers["vary"] == "Origin"
    assert resp.headers["strict-transport-security"] == "max-age=63072000"
    assert resp.headers["x-request-id"]
    assert resp.content == b""
    assert "set-cookie" not in resp.headers
    assert "x-app-internal" not in resp.headers
    # A signed-in GET of the same path is not touched (401 here: nobody is signed in).
    assert httpx.get(f"{gw.url}/api/items/8", timeout=30).status_code == 401


def test_the_same_preflight_is_401_on_a_route_without_the_setting(gw: Gateway) -> None:
    assert _options(gw, "/plain/items/7", headers=PREFLIGHT).status_code == 401


@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [
        ("GET", PREFLIGHT, None),  # only OPTIONS
        ("DELETE", PREFLIGHT, None),
        ("OPTIONS", {"Origin": "https://spa.example.com"}, None),  # no Access-Control-Request-Method
        ("OPTIONS", {"Access-Control-Request-Method": "PUT"}, None),  # no Origin
        ("OPTIONS", PREFLIGHT, b"payload"),  # a browser's preflight has no body
    ],
)
def test_what_only_looks_like_a_preflight_needs_a_session(
    gw: Gateway, method: str, headers: dict[str, str], body: bytes | None
) -> None:
    resp = httpx.request(method, f"{gw.url}/api/items/7", headers=headers, content=body, timeout=30)
    assert resp.status_code == 401, (method, headers, body, resp.text)


@pytest.mark.parametrize(
    "credential",
    [
        {"Cookie": "app_session=APP-SECRET"},
        {"Cookie": "__Host-gateway_session=GW-SECRET"},
        {"Authorization": "Basic YWRtaW46aHVudGVyMg=="},
        {"Proxy-Authorization": "Basic YWRtaW46aHVudGVyMg=="},
    ],
)
def test_a_preflight_with_credentials_is_no_preflight(
    gw: Gateway, app: RecordingApp, credential: dict[str, str]
) -> None:
    """A browser never sends credentials on a preflight: a script's 'preflight' with the app's cookie
    or a password is decided as any request (401 without a session), and the app never sees it."""
    before = len(app.seen)
    resp = _options(gw, "/api/admin", headers={**PREFLIGHT, **credential})
    assert resp.status_code == 401, resp.text
    assert len(app.seen) == before


def test_a_preflight_reaches_the_app_with_a_browsers_headers_only(gw: Gateway, app: RecordingApp) -> None:
    """A script adds the app's API key, a token and forged identity headers: none reaches the app."""
    headers = {
        **PREFLIGHT,
        "Access-Control-Request-Headers": "content-type",
        "User-Agent": "Mozilla/5.0",
        "Sec-Fetch-Mode": "cors",
        "X-Api-Key": "K-SECRET",
        "X-Auth-Token": "T-SECRET",
        "X-Gateway-User": "admin",
        "Remote-User": "admin",
        "X-Forwarded-For": "10.0.0.1",
        "Baggage": "role=root",
    }
    assert _options(gw, "/api/keyed", headers=headers).status_code == 200
    seen = app.last("/api/keyed").headers
    assert seen["access-control-request-headers"] == "content-type"
    assert seen["user-agent"] == "Mozilla/5.0"
    assert seen["sec-fetch-mode"] == "cors"
    assert not set(seen) & {"x-api-key", "x-auth-token", "x-gateway-user", "remote-user", "baggage"}
    assert "10.0.0.1" not in seen.get("x-forwarded-for", "")
    assert "SECRET" not in str(seen)


def test_the_access_log_says_why_it_went_through(
    gw: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert _options(gw, "/api/logged", headers=PREFLIGHT).status_code == 200
    log = Path(gw.config_path).parent / "access.log"

    def line() -> dict[str, Any] | None:
        for text in log.read_text().splitlines() if log.exists() else []:
            entry = json.loads(text)
            if entry.get("url", {}).get("path") == "/api/logged":
                return dict(entry)
        return None

    entry = wait_until(line, what="the preflight's access log line")
    assert entry["gateway"]["decision"] == "public"
    assert entry["gateway"]["reason"] == "cors-preflight"
    assert entry["gateway"]["auth"] == "none"


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory, app: RecordingApp) -> Iterator[Gateway]:
    """A gateway a proxy on loopback asks (forward-auth), with the same preflight route."""
    tmp = tmp_path_factory.mktemp("cors-forward-auth")
    routes = [
        echo_route(app.url, name="api", host="app.localhost", path="/", public_paths=[], cors_preflight=True)
    ]
    config = gateway_config(tmp, free_port(), routes, trusted_proxies=["127.0.0.1/32"])
    with run_gateway(tmp, config) as gateway:
        yield gateway


ASKED = {
    "X-Forwarded-Method": "OPTIONS",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Host": "app.localhost",
    "X-Forwarded-Uri": "/api/secret?x=1",
}


def test_forward_auth_lets_a_browsers_preflight_through_and_hands_it_no_cookie(behind_proxy: Gateway) -> None:
    resp = httpx.get(f"{behind_proxy.url}/.gateway/auth", headers={**ASKED, **PREFLIGHT}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert not resp.headers.get("x-gateway-cookie")
    assert not resp.headers.get("x-gateway-user")


@pytest.mark.parametrize(
    "credential",
    [{"Cookie": "app_session=APP-SECRET; other=1"}, {"Authorization": "Basic YWRtaW46aHVudGVyMg=="}],
)
def test_forward_auth_refuses_a_preflight_with_credentials(
    behind_proxy: Gateway, credential: dict[str, str]
) -> None:
    """An attack run: a 'preflight' question with the app's cookie got 200 and that cookie in the answer
    (X-Gateway-Cookie) for the proxy to send on, and the proxy passed its Authorization unchanged."""
    resp = httpx.get(
        f"{behind_proxy.url}/.gateway/auth", headers={**ASKED, **PREFLIGHT, **credential}, timeout=30
    )
    assert resp.status_code == 401, resp.text
    assert "APP-SECRET" not in str(resp.headers)
