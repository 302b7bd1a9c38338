"""The ``console`` fixture: see :mod:`tests.unit.admin.console_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from admin.app import create_admin_app
from gateway.root.start import Role, start
from gateway.settings.loader import load_settings
from tests.support.asgi_client import asgi_client
from tests.unit.admin.console_app import ADMIN_PORT, ORIGIN, POLICY, Console, Start


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Start]:
    closing: list[Any] = []

    async def open_console(approvals: int = 1, policy: str = POLICY, **more: Any) -> Console:
        (tmp_path / "policy.csv").write_text(policy)
        config = {
            "listen": "127.0.0.1:8080",
            "public_url": "http://gw.test:8080",
            "data_dir": str(tmp_path / "data"),
            "session": {"insecure_cookies": True},
            "policy": {"file": str(tmp_path / "policy.csv")},
            "admin": {"listen": f"127.0.0.1:{ADMIN_PORT}", "approvals": approvals},
            "routes": [
                {"name": "app", "host": "gw.test", "upstreams": ["http://127.0.0.1:9"], "mfa": "none"}
            ],
            **more,
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        running = await start(path, load_settings(path), role=Role.ADMIN)
        closing.append(running)
        client = asgi_client(create_admin_app(running.services), ORIGIN)
        await client.__aenter__()
        closing.append(client)
        return Console(client, running.services)

    yield open_console
    for item in reversed(closing):
        if isinstance(item, httpx.AsyncClient):
            await item.__aexit__(None, None, None)
        else:
            await item.close()
