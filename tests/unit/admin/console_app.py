"""The admin app in process for the console tests (the ``console`` fixture is in conftest.py).

The admin role's real services (SQLite file, in-process fast state) behind Litestar's client, with
admin sessions created directly in the session store, so the age of their second factor is chosen (a
destructive action needs one within ``admin.destructive_reauth_max_age``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.services import Services

ADMIN_PORT = 9443
ORIGIN = f"http://gw.test:{ADMIN_PORT}"
POLICY = """\
p, authenticated, app, /docs/*, GET, allow
p, admin, *, /*, *, allow
g, user:boss, admin
g, user:second, admin
"""


class Console:
    def __init__(self, client: httpx.AsyncClient, services: Services) -> None:
        self.client = client
        self.services = services

    async def session(
        self, username: str, *, factor_age: float = 0.0, roles: tuple[str, ...] = (), ip: str = "127.0.0.1"
    ) -> str:
        """A two-factor session of ``username`` (its account's id when there is one), whose second
        factor was used ``factor_age`` seconds ago."""
        now = self.services.identity.clock.time()
        account = await self.services.identity.accounts.find(username)
        session_id, _ = await self.services.identity.sessions.create(
            user_id=account.id if account else (1 if username == "boss" else 2),
            username=username,
            level=AuthLevel.TWO_FACTOR,
            factors=(FactorUse(Factor.PASSWORD, now), FactorUse(Factor.TOTP, now - factor_age)),
            roles=roles,
            ip=ip,
            user_agent="test",
            host="http://gw.test:8080",
        )
        return session_id

    async def call(self, session_id: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Origin": ORIGIN, "Cookie": f"gateway_session={session_id}", **kwargs.pop("headers", {})}
        response: httpx.Response = await self.client.request(method, path, headers=headers, **kwargs)
        return response

    async def audit_kinds(self) -> list[tuple[str, str, str]]:
        events = await self.services.identity.audit.events(limit=500)
        return [(e.kind, e.actor, e.outcome) for e in events]


Start = Callable[..., Awaitable[Console]]
