"""A hand-off copies its issuing session as it is when redeemed, in process (a worker's real services).

An attack run kept the hand-off links of a two-factor session, then had the threat detector force a
step-up on it (``threat.reconnaissance``: the session keeps its password, loses its second factor).
Every link redeemed afterwards gave a new two-factor session on the app host, which could mint more:
the step-up was escaped without a second factor (5 codes of 5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.identity.levels import AuthLevel
from gateway.services import WorkerServices
from tests.unit.web.worker import control_app, signed_in

APP = "http://app.test:8080"
ROUTES = [
    {"name": "auth", "host": "gw.test", "upstreams": ["http://127.0.0.1:9"], "mfa": "none"},
    {"name": "app", "host": "app.test", "upstreams": ["http://127.0.0.1:9"], "mfa": "none"},
]


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    async with control_app(tmp_path, routes=ROUTES, threat={"enabled": False}) as started:
        started[1].headers["Accept"] = "text/html"  # a browser's pages
        started[1].follow_redirects = False
        yield started


async def _signed_in(services: WorkerServices, client: httpx.AsyncClient) -> str:
    """A two-factor session of a real account, as this browser's cookie on the auth host."""
    user = await services.identity.accounts.create(
        username="ana", password="violet harbour cobalt lantern", actor="cli:test"
    )
    return await signed_in(services, client, user)


async def _redeem(client: httpx.AsyncClient, link: str) -> httpx.Response:
    """The hand-off's three steps as the browser makes them: app host, auth host, app host."""
    first = await client.get(link)
    assert first.status_code == 302, first.text
    confirmed = await client.get(first.headers["location"])
    assert confirmed.status_code == 302, confirmed.text
    return await client.get(confirmed.headers["location"])


async def test_a_code_minted_before_a_step_up_gives_a_stepped_up_session(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    sessions = services.identity.sessions
    session_id = await _signed_in(services, client)
    links = []
    for _ in range(2):
        minted = await client.get("/.gateway/login", params={"rd": f"{APP}/x"})
        assert minted.status_code == 302, minted.text
        assert urlsplit(minted.headers["location"]).path == "/.gateway/handoff"
        links.append(minted.headers["location"])
    issuer = await sessions.get(session_id)
    assert issuer is not None
    assert await sessions.demote(issuer.id_hash)  # what the step_up response does

    for link in links:
        redeemed = await _redeem(client, link)
        assert redeemed.status_code == 302, redeemed.text
        new_id = redeemed.cookies.get("gateway_session")
        assert new_id
        copied = await sessions.get(new_id)
        assert copied is not None
        assert copied.level == AuthLevel.ONE_FACTOR
        assert copied.second_factor_at is None


async def test_the_control_a_code_copies_a_two_factor_session(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    await _signed_in(services, client)
    minted = await client.get("/.gateway/login", params={"rd": f"{APP}/x"})
    redeemed = await _redeem(client, minted.headers["location"])
    copied = await services.identity.sessions.get(redeemed.cookies["gateway_session"])
    assert copied is not None
    assert copied.level == AuthLevel.TWO_FACTOR
