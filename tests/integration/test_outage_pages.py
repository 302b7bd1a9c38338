"""During a storage or Redis outage, and when an upstream refuses, clients read a plain message, never backend text.

Real gateways in front of backends that are down: the session store on a port that refuses connections,
PostgreSQL behind a relay that is cut while the gateway runs (so the pool's connections die and new ones are
refused), an upstream on a refusing port. Every answer a client can get — the sign-in form post, the
account portal, the JSON API, the data plane's pages — must carry the plain message and the request id,
and none of the exception text (``ConnectionRefusedError``, ``[Errno 111]``, driver names, addresses),
which goes to the gateway's log instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.harness import (
    Gateway,
    dead_port,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import SESSION_COOKIE, browser, csrf
from tests.support.pg import fresh_database
from tests.support.tcp_proxy import TcpProxy

HTML = {"Accept": "text/html,application/xhtml+xml"}
JSON = {"Accept": "application/json"}
UNAVAILABLE = "Sign-in is unavailable right now; try again in a minute."
# What a backend failure looks like in a message; none of it may reach a client.
LEAKS = re.compile(
    r"Errno|Refused|refused|\w+Error\b|Exception|asyncpg|redis|sqlalchemy|Traceback|127\.0\.0\.1:\d"
)


def assert_plain(resp: httpx.Response, status: int, *, backend_port: int) -> None:
    """A plain outage answer: the status, the plain message, the request id, no backend text."""
    assert resp.status_code == status, resp.text
    text = resp.text
    assert not LEAKS.search(text), text
    assert str(backend_port) not in text, text
    assert resp.headers["x-request-id"] in text
    if status == 503:
        assert UNAVAILABLE in text, text


def sign_in_post(client: httpx.Client, username: str = "nobody") -> httpx.Response:
    return client.post(
        "/.gateway/login",
        data={"username": username, "password": "irrelevant-password", "_csrf_token": csrf(client)},
        headers=HTML,
    )


# -- the session store (Redis) is down -------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int]]:
    tmp = tmp_path_factory.mktemp("redis-down")
    with run_echo() as echo, dead_port() as port:
        route = echo_route(echo, public_paths=[], mfa="required")
        config = gateway_config(
            tmp,
            free_port(),
            [route],
            state={"redis_url": f"redis://127.0.0.1:{port}/0"},
            session={"insecure_cookies": True},
        )
        with run_gateway(tmp, config) as gw:
            yield gw, port


def test_sign_in_during_a_redis_outage_is_a_plain_page(redis_down: tuple[Gateway, int]) -> None:
    gw, port = redis_down
    with browser(gw) as client:
        assert client.get("/.gateway/login", headers=HTML).status_code == 200
        resp = sign_in_post(client)
        passkey = client.post(
            "/.gateway/api/login/passkey/options", json={}, headers={"x-csrftoken": csrf(client), **JSON}
        )
    assert_plain(resp, 503, backend_port=port)
    assert "text/html" in resp.headers["content-type"]
    # The passwordless sign-in's JSON API too.
    assert_plain(passkey, 503, backend_port=port)
    assert passkey.json()["message"] == UNAVAILABLE
    # The detail is not lost: it is in the log, with the request id the page shows.
    log = wait_until(lambda: (text := gw.log()) and resp.headers["x-request-id"] in text and text)
    assert re.search(r"fast state \w+ failed", log), log


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/private", HTML),
        ("GET", "/private", JSON),
        ("GET", "/.gateway/account", HTML),
        ("GET", "/.gateway/api/me", JSON),
        ("GET", "/.gateway/mfa", HTML),
        ("GET", "/.gateway/logout", HTML),
        ("GET", "/.gateway/handoff?code=a-well-formed-hand-off-code-0123&rd=/", HTML),
    ],
)
def test_every_page_with_a_session_during_a_redis_outage_is_plain(
    redis_down: tuple[Gateway, int], method: str, path: str, headers: dict[str, str]
) -> None:
    gw, port = redis_down
    resp = httpx.request(
        method,
        f"{gw.url}{path}",
        headers=headers,
        cookies={SESSION_COOKIE: "a-session-the-store-cannot-check"},
        timeout=30,
    )
    assert_plain(resp, 503, backend_port=port)


# -- PostgreSQL goes away while the gateway runs ---------------------------------------------------


@pytest.fixture(scope="module")
def postgres_cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int]]:
    tmp: Path = tmp_path_factory.mktemp("postgres-down")
    with fresh_database("gw_outage") as name, TcpProxy(("127.0.0.1", 5432)) as relay, run_echo() as echo:
        config = gateway_config(
            tmp,
            free_port(),
            [echo_route(echo, public_paths=[], mfa="required")],
            storage={"url": f"postgresql+asyncpg://postgres@127.0.0.1:{relay.port}/{name}"},
            session={"insecure_cookies": True},
        )
        (tmp / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for step in (("migrate",), ("keys", "init")):
            done = run_cli(*step, "--config", str(tmp / "gateway.yaml"))
            assert done.returncode == 0, done.stdout + done.stderr
        with run_gateway(tmp, config) as gw:
            # Before the outage a wrong sign-in is the ordinary refusal: the database answers.
            with browser(gw) as client:
                assert sign_in_post(client).status_code == 401
            relay.stop()
            yield gw, relay.port


def test_sign_in_during_a_postgres_outage_is_a_plain_page(postgres_cut: tuple[Gateway, int]) -> None:
    gw, port = postgres_cut
    with browser(gw) as client:
        resp = sign_in_post(client)
    assert_plain(resp, 503, backend_port=port)
    log = wait_until(lambda: (text := gw.log()) and resp.headers["x-request-id"] in text and text)
    line = next(line for line in log.splitlines() if resp.headers["x-request-id"] in line)
    # The operator's log line names what failed; the page did not.
    assert "Error" in line, line


def test_a_scripted_sign_in_during_a_postgres_outage_gets_plain_json(
    postgres_cut: tuple[Gateway, int],
) -> None:
    gw, port = postgres_cut
    with browser(gw) as client:
        token = csrf(client)
        resp = client.post(
            "/.gateway/login",
            data={"username": "nobody", "password": "irrelevant-password", "_csrf_token": token},
            headers=JSON,
        )
    assert_plain(resp, 503, backend_port=port)
    body = resp.json()
    assert body["error"] == "store-unavailable"
    assert body["message"] == UNAVAILABLE


# -- an upstream refuses connections ---------------------------------------------------------------


def test_a_refusing_upstream_gets_a_plain_502(tmp_path: Path) -> None:
    with dead_port() as port:
        route = echo_route(f"http://127.0.0.1:{port}", passive_health_check={"consecutive_failures": 1000})
        with run_gateway(tmp_path, gateway_config(tmp_path, free_port(), [route])) as gw:
            page = httpx.get(f"{gw.url}/x", headers=HTML, timeout=30)
            api = httpx.post(f"{gw.url}/x", headers=JSON, content=b"{}", timeout=30)
            for resp in (page, api):
                assert_plain(resp, 502, backend_port=port)
                assert "did not answer properly" in resp.text
            assert api.json()["error"] == "upstream-error"
            # The detail is in the process log's line that carries the page's request id (the access
            # log's line carries it too, and the two streams may reach the file in either order).
            request_id = page.headers["x-request-id"]

            def detail() -> str | None:
                found = [
                    line for line in gw.log().splitlines() if request_id in line and "(request id" in line
                ]
                return found[0] if found else None

            line = wait_until(detail, what="the process log's line with the request id")
            assert "ConnectionRefusedError" in line, line
