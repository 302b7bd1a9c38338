"""A wrong current password on the portal's password page is a failed step of the account, counted
with the client's address.

A re-attack run guessed the current password through a stolen session: the brute_force rule fired,
but its records carried no address, so its ``block_ip`` response had nothing to block. Tested on one
started worker's control app."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from gateway.audit.models import AuditEvent
from tests.unit.web.worker import control_app, signed_in

PASSWORD = "violet harbour cobalt lantern"


async def test_a_wrong_current_password_is_recorded_with_the_address(tmp_path: Path) -> None:
    async with control_app(tmp_path, threat={"enabled": False}) as (services, client):
        identity = services.identity
        user = await identity.accounts.create(username="carol", password=PASSWORD, actor="cli:test")
        await signed_in(services, client, user)
        await client.get("/.gateway/account/password", headers={"Accept": "text/html"})
        token = client.cookies.get("gateway_csrf")
        assert token
        new = "amber quarry thistle ocean"
        answer = await client.post(
            "/.gateway/account/password",
            data={"current": "not it at all", "new": new, "confirm": new, "_csrf_token": token},
        )
        assert answer.status_code in (200, 400), answer.text
        async with services.db.session() as session:
            rows = (
                await session.scalars(
                    select(AuditEvent).where(
                        AuditEvent.kind == "user.password_changed", AuditEvent.outcome == "failure"
                    )
                )
            ).all()
        assert [row.ip for row in rows] != []
        assert all(row.ip for row in rows), [row.ip for row in rows]
