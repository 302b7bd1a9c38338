"""The account's only second factor stays, also when two removals race (the last note's open item: the
authenticator app removed in one tab and the passkey in another each saw the other one, and both went
through, leaving the account to whoever enrolled next with the password). Both backends."""

from __future__ import annotations

import asyncio

import pyotp
import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.factors.last import OnlyFactor
from gateway.factors.totp import TotpService
from gateway.factors.webauthn import WebAuthnService
from gateway.identity.models import User, WebAuthnCredential
from gateway.settings.schema import MfaSettings, TotpSettings, WebAuthnSettings
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState


async def _account(db: Database, clock: FakeClock, totp: TotpService) -> tuple[int, int, int]:
    """An account with one authenticator app and one passkey: (user, app, passkey) row ids."""
    user = User(username="vic", email="vic@example.com", display_name="Vic", password_hash=None,
                created_at=clock.now(), updated_at=clock.now(), password_changed_at=None)  # fmt: skip
    async with db.session() as session:
        session.add(user)
        await session.commit()
    enrollment = await totp.begin_enrollment(user.id, account="vic", name="Phone")
    code = pyotp.TOTP(enrollment.secret).at(clock.time())
    assert await totp.confirm(user.id, enrollment.credential_id, code)
    key = WebAuthnCredential(user_id=user.id, name="Key", credential_id=b"\x01" * 16, public_key=b"k",
                             created_at=clock.now(), last_used_at=None)  # fmt: skip
    async with db.session() as session:
        session.add(key)
        await session.commit()
    return user.id, enrollment.credential_id, key.id


@pytest.fixture
async def services(database: Database) -> tuple[TotpService, WebAuthnService, FakeClock]:
    clock = FakeClock(1_800_000_010.0)
    keyring = Keyring({"ktest0001": bytes(range(32))}, "ktest0001")
    totp = TotpService(database, keyring, MfaSettings(totp=TotpSettings(issuer="ACME")), clock)
    webauthn = WebAuthnService(
        database, MemoryFastState(clock=clock), WebAuthnSettings(), public_url="https://auth.example.com",
        audit=AuditLog(database, clock=clock), clock=clock,
    )  # fmt: skip
    return totp, webauthn, clock


async def test_two_removals_at_once_leave_one_factor(
    database: Database, services: tuple[TotpService, WebAuthnService, FakeClock]
) -> None:
    totp, webauthn, clock = services
    for _ in range(5):
        user, app, key = await _account(database, clock, totp)
        results = await asyncio.gather(
            totp.remove(user, app, keep_one=True),
            webauthn.remove(user, key, keep_one=True),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["OnlyFactor", "bool"], results
        left = len(await totp.list(user)) + len(await webauthn.list(user))
        assert left == 1
        async with database.session() as session:
            await session.delete(await session.get(User, user))
            await session.commit()


async def test_the_only_factor_is_refused_and_another_is_removed(
    database: Database, services: tuple[TotpService, WebAuthnService, FakeClock]
) -> None:
    totp, webauthn, clock = services
    user, app, key = await _account(database, clock, totp)
    assert await webauthn.remove(user, key, keep_one=True)
    with pytest.raises(OnlyFactor):
        await totp.remove(user, app, keep_one=True)
    assert [a.id for a in await totp.list(user)] == [app]
    # Without keep_one (an operator's reset), it goes.
    assert await totp.remove(user, app)
