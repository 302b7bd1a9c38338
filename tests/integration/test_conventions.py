"""Conventions through a real gateway: identity under the names an app already reads, and an access log
whose sizes and URL fields mean what ECS says.

``identity_headers`` renames the identity to ``Remote-User``/``Remote-Email``/``Remote-Groups``, and the
``grafana`` route sends the user as ``X-WEBAUTH-USER`` instead. The attack: a client sends those names itself (every spelling, on a public path and with a session); the
echo app shows what really arrived. The access log (a file sink) must carry ``url.domain`` without the
port, ``url.port`` on its own, and ``http.response.body.bytes`` equal to the bytes the client got for
the gateway's own answers (health, the sign-in page, an error page).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, browser, login

NAMES = {"user": "Remote-User", "email": "Remote-Email", "roles": "Remote-Groups"}
SPOOFED = [
    ("Remote-User", "admin"),
    ("remote_user", "admin"),
    ("REMOTE-USER", "admin"),
    ("Remote-Email", "admin@evil.test"),
    ("Remote-Groups", "admin"),
    ("X-Gateway-User", "admin"),
    ("X-WEBAUTH-USER", "admin"),
    ("x_webauth_user", "admin"),
]


@dataclass
class Site:
    gw: Gateway
    log_file: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("conventions")
    port = free_port()
    with run_echo() as echo:
        route: dict[str, Any] = {
            "name": "app",
            "host": "127.0.0.1",
            "path": "/",
            "upstreams": [echo.url],
            "public_paths": ["/open/*"],
            "mfa": "none",
        }
        # An app that reads its own header for the user (Grafana's auth proxy): this route's name.
        grafana = {
            "name": "grafana",
            "host": "127.0.0.1",
            "path": "/grafana",
            "upstreams": [echo.url],
            "mfa": "none",
            "identity_headers": {"user": "X-WEBAUTH-USER"},
        }
        config = gateway_config(
            tmp,
            port,
            [route, grafana],
            session={"insecure_cookies": True},
            identity_headers=NAMES,
            logging={"sinks": [{"type": "file", "path": str(tmp / "access.log")}], "flush_timeout": "2s"},
        )
        with run_gateway(tmp, config) as gw:
            add_user(gw.config_path, "alice", PASSWORD, "--email", "alice@example.com")
            yield Site(gw, tmp / "access.log")


def _received(response: httpx.Response) -> list[tuple[str, str]]:
    assert response.status_code == 200, response.text
    return [(name.lower().replace("_", "-"), value) for name, value in response.json()["headers"]]


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name.lower()]


def test_client_sent_identity_names_never_reach_the_app(site: Site) -> None:
    response = httpx.get(f"{site.gw.url}/open/page", headers=httpx.Headers(SPOOFED), timeout=30)
    seen = _received(response)
    for name in ("remote-user", "remote-email", "remote-groups", "x-gateway-user", "x-webauth-user"):
        assert _values(seen, name) == [], (name, seen)


def _seen_by_alice(site: Site, path: str) -> list[tuple[str, str]]:
    """What the app behind ``path`` received from alice's session, which also sent every spoof."""
    with browser(site.gw) as client:
        assert login(client, "alice").status_code == 302
        return _received(client.get(path, headers=httpx.Headers(SPOOFED)))


def test_a_session_reaches_the_app_under_the_configured_names_only(site: Site) -> None:
    seen = _seen_by_alice(site, "/app/page")
    assert _values(seen, "remote-user") == ["alice"]
    assert _values(seen, "remote-email") == ["alice@example.com"]
    assert len(_values(seen, "remote-groups")) == 1
    assert "admin" not in _values(seen, "remote-groups")[0].split(",")
    # Renamed, not duplicated; the signed assertion keeps its name.
    assert _values(seen, "x-gateway-user") == []
    assert len(_values(seen, "x-gateway-assertion")) == 1
    # Another route's identity name is a client's forgery here too.
    assert _values(seen, "x-webauth-user") == []


def test_a_route_sends_the_user_under_its_own_name(site: Site) -> None:
    seen = _seen_by_alice(site, "/grafana/page")
    assert _values(seen, "x-webauth-user") == ["alice"]
    # The global names fill what the route does not name; the global user name is not sent here.
    assert _values(seen, "remote-email") == ["alice@example.com"]
    assert _values(seen, "remote-user") == []
    assert _values(seen, "x-gateway-user") == []


def _access(site: Site) -> list[dict[str, Any]]:
    if not site.log_file.exists():
        return []
    docs = [json.loads(line) for line in site.log_file.read_text().splitlines() if line.strip()]
    return [doc for doc in docs if doc.get("event", {}).get("dataset") == "gateway.access"]


def test_the_access_log_has_ecs_url_parts_and_real_body_sizes(site: Site) -> None:
    gw = site.gw
    answers = {
        "/.gateway/health": httpx.get(f"{gw.url}/.gateway/health", timeout=30),
        "/.gateway/login": httpx.get(f"{gw.url}/.gateway/login", headers={"accept": "text/html"}, timeout=30),
        # Signed-in path without a session: the gateway's own 401 (JSON for a script).
        "/app/needs-a-session": httpx.get(f"{gw.url}/app/needs-a-session", timeout=30),
    }
    assert [r.status_code for r in answers.values()] == [200, 200, 401]
    assert all(len(r.content) > 0 for r in answers.values())

    def logged() -> dict[str, dict[str, Any]] | None:
        found = {doc["url"]["path"]: doc for doc in _access(site) if doc["url"]["path"] in answers}
        return found if len(found) == len(answers) else None

    docs = wait_until(logged, what="the three requests in the access log")
    for path, response in answers.items():
        doc = docs[path]
        assert doc["http"]["response"]["status_code"] == response.status_code
        assert doc["http"]["response"]["body"]["bytes"] == len(response.content), path
        assert doc["url"]["domain"] == "127.0.0.1"
        assert doc["url"]["port"] == gw.port
        assert "bytes" not in doc["http"]["response"]  # that ECS field would include the headers
