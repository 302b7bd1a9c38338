"""The bearer stage in the real stage sequence: which of a cookie and a token decides, per route.

Driven in-process like ``test_sequence.py`` (a real worker's services, embedded storage, a real
upstream on a loopback port); the token is issued through the real service-account store.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gateway.machine.accounts import ServiceAccounts
from gateway.observe.record import AuthKind, RequestRecord
from gateway.root.apps import worker_app
from tests.unit.pipeline.test_sequence import (
    Answer,
    Upstream,
    World,
    _call,
    _lifespan,
    _sign_in,
    _signs_now,
    upstream,
)

__all__ = ["upstream"]  # the fixture, shared with test_sequence

POLICY = """p, authenticated, *, /*, *, allow
p, client:ci, *, /*, GET, allow
"""


def _config(tmp: Path, port: int) -> Path:
    (tmp / "policy.csv").write_text(POLICY)
    target = f"http://127.0.0.1:{port}"
    routes = [
        {
            "name": "both",
            "host": "both.test",
            "upstreams": [target],
            "mfa": "none",
            "auth": ["session", "bearer"],
        },
        {"name": "api", "host": "api.test", "upstreams": [target], "mfa": "none", "auth": ["bearer"]},
        {"name": "app", "host": "app.test", "upstreams": [target], "mfa": "none"},
        {
            "name": "svc",
            "host": "svc.test",
            "upstreams": [target],
            "mfa": "none",
            "auth": ["bearer"],
            # The gateway authenticates to the application itself: the route's own credentials.
            "request_headers": {"Authorization": "Basic Z2F0ZXdheTpzZWNyZXQ="},
        },
    ]
    config = {
        "public_url": "http://auth.test",
        "data_dir": str(tmp / "data"),
        "admin": {"listen": None},
        "policy": {"file": str(tmp / "policy.csv")},
        "session": {"insecure_cookies": True},
        "logging": {"access_log": False, "security_events": False},
        "routes": routes,
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def world(tmp_path: Path, upstream: Upstream) -> AsyncIterator[tuple[World, str]]:
    thresholds = gc.get_threshold()
    plane = worker_app(_config(tmp_path, upstream.port))
    started = False
    try:
        await _lifespan(plane, "startup")
        started = True
        _signs_now(plane)
        services = plane.running.services
        records: list[RequestRecord] = []
        services.observers.append(records.append)
        accounts = ServiceAccounts(
            services.db, services.identity.audit, services.fast, services.identity.clock, max_lifetime=86400.0
        )
        await accounts.create_account("ci", actor="cli:test")
        _, token = await accounts.create_token(
            "ci",
            routes=["both", "api", "app", "svc"],
            lifetime=3600,
            known_routes=["both", "api", "app", "svc"],
            actor="t",
        )
        cookies = {"alice": await _sign_in(plane, 1, "alice")}
        yield World(plane, upstream, records, cookies), token
    finally:
        if started:
            await _lifespan(plane, "shutdown")
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def _request(
    world: World, host: str, *, cookie: bytes = b"", token: str | None = None, kind: str = "http"
) -> Answer:
    headers = [(b"host", host.encode()), (b"accept", b"application/json"), (b"user-agent", b"test")]
    if cookie:
        headers.append((b"cookie", cookie))
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return await _call(world, kind, b"/x", headers)


async def test_with_a_cookie_and_a_token_the_token_alone_decides(world: tuple[World, str]) -> None:
    w, token = world
    alice = w.cookies["alice"]
    for kind, status in (("http", 200), ("websocket", 101)):
        answer = await _request(w, "both.test", cookie=alice, token=token, kind=kind)
        assert answer.status == status
        assert (answer.record.auth, answer.record.user) == (AuthKind.BEARER, "client:ci")
        seen = w.upstream.seen[-1]
        assert (seen["x-gateway-user"], seen["x-gateway-auth"]) == ("ci", "bearer")
        assert "authorization" not in seen
        assert "x-gateway-email" not in seen
    bad = await _request(w, "both.test", cookie=alice, token="gwt_" + "Z" * 43)
    assert (bad.status, bad.record.reason, bad.record.auth) == (401, "invalid-token", AuthKind.BEARER)
    assert bad.headers[b"www-authenticate"].startswith(b'Bearer realm="gateway", error="invalid_token"')
    people = await _request(w, "both.test", cookie=alice)
    assert (people.status, people.record.auth, people.record.user) == (200, AuthKind.SESSION, "alice")


async def test_a_token_only_route_never_reads_the_cookie(world: tuple[World, str]) -> None:
    w, token = world
    answer = await _request(w, "api.test", cookie=w.cookies["alice"])
    assert (answer.status, answer.record.reason, answer.record.auth) == (401, "invalid-token", AuthKind.NONE)
    assert answer.headers[b"www-authenticate"] == b'Bearer realm="gateway"'
    assert (await _request(w, "api.test", token=token)).status == 200


async def test_a_session_route_ignores_tokens_as_it_always_did(world: tuple[World, str]) -> None:
    w, token = world
    refused = await _request(w, "app.test", token=token)
    assert (refused.status, refused.record.reason) == (401, "authentication-required")
    allowed = await _request(w, "app.test", cookie=w.cookies["alice"], token=token)
    assert (allowed.status, allowed.record.auth) == (200, AuthKind.SESSION)
    # Not a bearer route, yet the gateway's own token is not the application's to see (an attack run:
    # an app replayed it on the token's route); an Authorization of another scheme is passed on.
    assert "authorization" not in w.upstream.seen[-1]


async def test_the_routes_own_authorization_reaches_the_application_on_a_token_request(
    world: tuple[World, str],
) -> None:
    w, token = world
    for kind, status in (("http", 200), ("websocket", 101)):
        answer = await _request(w, "svc.test", token=token, kind=kind)
        assert (answer.status, answer.record.auth) == (status, AuthKind.BEARER)
        # The client's token is dropped; the credentials the route sets are what the application gets.
        assert w.upstream.seen[-1]["authorization"] == "Basic Z2F0ZXdheTpzZWNyZXQ="
