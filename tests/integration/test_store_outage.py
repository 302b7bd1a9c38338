"""A session store outage never opens anything and never signs anyone out (invariant 2); the replica
reports itself not ready meanwhile and ready again once the store is back."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx

from tests.integration.harness import (
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, cookie, login
from tests.support.tcp_proxy import TcpProxy


def _ready(gw: Gateway) -> httpx.Response:
    return httpx.get(f"{gw.url}/.gateway/ready", timeout=30)


def test_unreachable_session_store_is_a_503_that_keeps_the_cookie(tmp_path: Path) -> None:
    with run_echo() as echo:
        port = free_port()
        route = echo_route(echo, public_paths=[], mfa="required")
        config = gateway_config(
            tmp_path,
            port,
            [route],
            state={"redis_url": "redis://127.0.0.1:1/0"},
            session={"insecure_cookies": True},
        )
        with run_gateway(tmp_path, config) as gw:
            cookies = {"gateway_session": "a-session-id-the-store-cannot-check"}
            api = httpx.get(f"{gw.url}/private", cookies=cookies, timeout=30)
            page = httpx.get(
                f"{gw.url}/private", cookies=cookies, headers={"accept": "text/html"}, timeout=30
            )
    # Not access (the upstream would have answered 200 with its JSON), not a sign-in redirect.
    assert api.status_code == 503, api.text
    assert json.loads(api.text)["error"] == "state-unavailable"
    assert page.status_code == 503
    assert "text/html" in page.headers["content-type"]
    # The cookie is kept: no Set-Cookie clearing it, so the user is still signed in once Redis is back.
    assert "set-cookie" not in api.headers
    assert "set-cookie" not in page.headers


def test_a_session_store_outage_takes_the_replica_out_fail_closed_and_it_comes_back(tmp_path: Path) -> None:
    """Redis down: every signed-in request here would be refused, so /ready says 503 (the load balancer
    sends traffic to a replica that reaches Redis, if any); the requests that still arrive get the
    503 page, never the upstream, never a sign-out; once Redis is back the same cookie works again."""
    with run_echo() as echo, TcpProxy(("127.0.0.1", 6379)) as redis:
        route = echo_route(echo, public_paths=["/public/*"], mfa="none")
        config = gateway_config(
            tmp_path,
            free_port(),
            [route],
            state={
                "redis_url": f"redis://127.0.0.1:{redis.port}/0",
                "namespace": f"t:outage:{secrets.token_hex(6)}:",
            },
            session={"insecure_cookies": True},
        )
        with run_gateway(tmp_path, config) as gw, browser(gw) as alice:
            add_user(gw.config_path, "alice", PASSWORD)
            assert login(alice, "alice").status_code == 302
            session = cookie(alice, SESSION_COOKIE)
            assert session
            assert alice.get("/private").status_code == 200
            assert _ready(gw).status_code == 200

            redis.stop()

            def not_ready() -> dict[str, Any] | None:
                resp = _ready(gw)
                return resp.json() if resp.status_code == 503 else None

            report = wait_until(not_ready, timeout=30, what="/ready 503 while Redis is down")
            assert report["ready"] is False
            assert report["checks"]["state"]["ok"] is False
            assert report["checks"]["state"]["required"] is True
            assert "sessions" in report["degraded"]
            assert report["checks"]["storage"]["ok"] is True
            # Liveness is the process, which is fine: a restart would not bring Redis back.
            assert httpx.get(f"{gw.url}/.gateway/health", timeout=30).status_code == 200

            # Fail closed: once the in-process session cache has expired, the session cannot be
            # checked, and the answer is a 503, not the upstream and not a sign-in redirect.
            def refused_request() -> httpx.Response | None:
                resp = alice.get("/private")
                return resp if resp.status_code != 200 else None

            refused = wait_until(refused_request, timeout=30, what="the signed-in request refused")
            assert refused.status_code == 503, refused.text
            assert json.loads(refused.text)["error"] == "state-unavailable"
            assert "set-cookie" not in refused.headers
            # Public paths need no session.
            assert alice.get("/public/page").status_code == 200

            redis.start()
            wait_until(lambda: _ready(gw).status_code == 200, timeout=30, what="/ready 200 with Redis back")
            # Still signed in: the outage ended nobody's session.
            assert cookie(alice, SESSION_COOKIE) == session
            assert alice.get("/private").status_code == 200


def test_an_account_disabled_or_deleted_while_the_store_is_down_loses_its_sessions_when_it_is_back(
    tmp_path: Path,
) -> None:
    """An attack run: `gateway user disable` and `user delete` during a Redis outage committed the change,
    failed to end the sessions, and nothing remembered it: once Redis was back both sessions worked on
    every replica (the deleted one until its lifetime ran out, since a retry found no account)."""
    with run_echo() as echo, TcpProxy(("127.0.0.1", 6379)) as redis:
        route = echo_route(echo, public_paths=[], mfa="none")
        config = gateway_config(
            tmp_path,
            free_port(),
            [route],
            state={
                "redis_url": f"redis://127.0.0.1:{redis.port}/0",
                "namespace": f"t:owed:{secrets.token_hex(6)}:",
            },
            session={"insecure_cookies": True},
        )
        with run_gateway(tmp_path, config) as gw:
            sessions = {}
            for user in ("mallory", "carol", "dave"):
                add_user(gw.config_path, user, PASSWORD)
                with browser(gw) as client:
                    assert login(client, user).status_code == 302
                    sessions[user] = cookie(client, SESSION_COOKIE) or ""

            def status(user: str) -> int:
                return httpx.get(
                    f"{gw.url}/private", cookies={SESSION_COOKIE: sessions[user]}, timeout=30
                ).status_code

            assert {user: status(user) for user in sessions} == {"mallory": 200, "carol": 200, "dave": 200}
            redis.stop()
            c = ("--config", str(gw.config_path))
            disabled = run_cli("user", "disable", "mallory", *c)
            assert disabled.returncode == 0, disabled.stdout + disabled.stderr
            assert "not ended yet" in disabled.stderr
            deleted = run_cli("user", "delete", "carol", "--yes", *c)
            assert deleted.returncode == 0, deleted.stdout + deleted.stderr
            redis.start()

            wait_until(
                lambda: status("mallory") == 401 and status("carol") == 401,
                timeout=30,
                what="the owed sessions ended once the store is back",
            )
            assert status("dave") == 200  # the control: nobody else was signed out
