"""One started worker's control app in process, behind an httpx client on the test's own loop
(``tests.support.asgi_client``), for the portal tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.models import User
from gateway.root.start import Role, start
from gateway.services import WorkerServices
from gateway.settings.loader import load_settings
from gateway.web.app import create_control_app
from tests.support.asgi_client import asgi_client

__all__ = ["BASE_URL", "control_app", "signed_in", "worker_config"]

BASE_URL = "http://gw.test:8080"


def worker_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A worker's config on the embedded default in ``tmp_path`` (one route, no admin listener),
    changed by ``overrides``."""
    return {
        "listen": "127.0.0.1:8080",
        "public_url": BASE_URL,
        "data_dir": str(tmp_path / "data"),
        "session": {"insecure_cookies": True},
        "admin": {"listen": None},
        "routes": [{"name": "app", "host": "gw.test", "upstreams": ["http://127.0.0.1:9"], "mfa": "none"}],
        **overrides,
    }


@asynccontextmanager
async def control_app(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    """A worker on the embedded default in ``tmp_path`` (one route, no admin listener), its settings
    changed by ``overrides``; stopped at the end of the block."""
    config = worker_config(tmp_path, **overrides)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    running = await start(path, load_settings(path), role=Role.WORKER)
    try:
        async with asgi_client(create_control_app(running.services), BASE_URL) as client:
            yield running.services, client
    finally:
        await running.close()


async def signed_in(
    services: WorkerServices, client: httpx.AsyncClient, user: User, *, ago: float = 0.0
) -> str:
    """A two-factor session of ``user`` (password and authenticator app used ``ago`` seconds ago, just
    now by default) as ``client``'s session cookie on the auth host; returns its id."""
    identity = services.identity
    now = identity.clock.time() - ago
    session_id, _ = await identity.sessions.create(
        user_id=user.id,
        username=user.username,
        level=AuthLevel.TWO_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, now), FactorUse(Factor.TOTP, now)),
        roles=(),
        ip="127.0.0.1",
        user_agent="test",
        host=BASE_URL,
    )
    client.cookies.set("gateway_session", session_id, domain="gw.test")
    return session_id
