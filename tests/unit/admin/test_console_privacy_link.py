"""The admin console links the gateway's privacy notice from its layout, on every page and error page.

The console is served by the admin listener (another port), which does not serve ``/.gateway/privacy``:
the link must go to the gateway's public URL, not to a path of this listener. It reads "Privacy notice",
apart from the console's own "Privacy" section (the request register and holds).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from admin.app import create_admin_app
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.root.start import Role, start
from gateway.settings.loader import load_settings
from tests.support.asgi_client import asgi_client

ADMIN_PORT = 9443
ORIGIN = f"http://gw.test:{ADMIN_PORT}"
PUBLIC_URL = "http://gw.test:8080"
LINK = f'<a href="{PUBLIC_URL}/.gateway/privacy">Privacy notice</a>'


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The admin app of a started admin process, and the session cookie of a signed-in admin."""
    (tmp_path / "policy.csv").write_text("p, admin, *, /*, *, allow\ng, user:boss, admin\n")
    config = {
        "listen": "127.0.0.1:8080",
        # A trailing slash, as people write it: the link must not get a double one.
        "public_url": f"{PUBLIC_URL}/",
        "data_dir": str(tmp_path / "data"),
        "session": {"insecure_cookies": True},
        "policy": {"file": str(tmp_path / "policy.csv")},
        "admin": {"listen": f"127.0.0.1:{ADMIN_PORT}"},
        "routes": [{"name": "app", "host": "gw.test", "upstreams": ["http://127.0.0.1:9"], "mfa": "none"}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    running = await start(path, load_settings(path), role=Role.ADMIN)
    try:
        services = running.services
        async with asgi_client(create_admin_app(services), ORIGIN) as client:
            now = services.identity.clock.time()
            session_id, _ = await services.identity.sessions.create(
                user_id=1,
                username="boss",
                level=AuthLevel.TWO_FACTOR,
                factors=(FactorUse(Factor.PASSWORD, now), FactorUse(Factor.TOTP, now)),
                roles=(),
                ip="127.0.0.1",
                user_agent="test",
                host=PUBLIC_URL,
            )
            yield client, f"gateway_session={session_id}"
    finally:
        await running.close()


@pytest.mark.parametrize(("path", "status"), [("/", 200), ("/users", 200), ("/users/nobody-here", 404)])
async def test_every_console_page_links_the_gateways_privacy_notice(
    console: tuple[httpx.AsyncClient, str], path: str, status: int
) -> None:
    client, cookie = console
    page: httpx.Response = await client.get(path, headers={"Cookie": cookie, "Accept": "text/html"})
    assert page.status_code == status, page.text
    assert page.headers["content-type"].startswith("text/html")
    footer = page.text.split("<footer>", 1)[1]
    assert LINK in footer, footer
