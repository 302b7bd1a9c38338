"""CORS preflights through a real gateway: let through on a route that says so, and nothing else is.

Two routes to the echo app, both for signed-in people only: ``api`` with ``cors_preflight: true`` and
``plain`` without it. A browser's preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``, no credentials) reaches the app on ``api`` and is 401 on ``plain``.
The attacks: requests that look like a preflight but are not one (another method, one header missing,
a body) are decided as any other (401); and a "preflight" that brings credentials (the app's own
cookie, the gateway's, ``Authorization``, a forged identity header) reaches the app without any of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import Gateway, echo_route, free_port, gateway_config, run_echo, run_gateway
from tests.support.wait import wait_until

PREFLIGHT = {"Origin": "https://spa.example.com", "Access-Control-Request-Method": "PUT"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("cors")
    with run_echo() as echo:
        routes = [
            echo_route(echo, name="api", path="/api", public_paths=[], cors_preflight=True),
            echo_route(echo, name="plain", path="/plain", public_paths=[]),
        ]
        log = {"sinks": [{"type": "file", "path": str(tmp / "access.log")}], "flush_timeout": "1s"}
        with run_gateway(tmp, gateway_config(tmp, free_port(), routes, logging=log)) as gateway:
            yield gateway


def _options(gw: Gateway, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request("OPTIONS", f"{gw.url}{path}", timeout=30, **kwargs)


def test_a_preflight_reaches_the_app_on_a_route_that_lets_them_through(gw: Gateway) -> None:
    resp = _options(gw, "/api/items/7", headers=PREFLIGHT)
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    assert seen["method"] == "OPTIONS"
    assert ("origin", "https://spa.example.com") in [tuple(h) for h in seen["headers"]]
    assert not [name for name, _ in seen["headers"] if name.startswith("x-gateway-")]


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


def test_a_preflight_reaches_the_app_without_credentials(gw: Gateway) -> None:
    """A script sends a 'preflight' with the app's cookie and a password: the app sees neither."""
    headers = {
        **PREFLIGHT,
        "Cookie": "app_session=APP-SECRET; __Host-gateway_session=GW-SECRET",
        "Authorization": "Basic YWRtaW46aHVudGVyMg==",
        "X-Gateway-User": "admin",
        "Remote-User": "admin",
    }
    resp = _options(gw, "/api/admin", headers=headers)
    assert resp.status_code == 200, resp.text
    seen = {name for name, _ in resp.json()["headers"]}
    assert not seen & {"cookie", "authorization", "x-gateway-user"}
    assert "SECRET" not in resp.text
    assert "YWRtaW46aHVudGVyMg" not in resp.text


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
