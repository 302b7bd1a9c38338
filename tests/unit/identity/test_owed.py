"""Sessions owed an end (SQLite and PostgreSQL): every path that ends an account's sessions leaves them
owed when the session store does not answer, and they end once it does."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.identity.accounts import AccountService
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.models import OwedRevocation
from gateway.identity.owed import end_owed
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import SessionStore
from gateway.response.actions import _apply
from gateway.response.vocabulary import AccountAction
from gateway.settings.schema import PasswordSettings, RegulationSettings, SessionSettings
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState, StateUnavailable

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)


async def _owed(db: Database) -> list[int]:
    async with db.session() as session:
        return list((await session.scalars(select(OwedRevocation.user_id))).all())


@pytest.mark.parametrize("path", ["disable", "end_sessions", "incident action", "incident password change"])
async def test_an_outage_leaves_the_sessions_owed_and_they_end_when_it_is_over(
    database: Database, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    clock = FakeClock()
    fast = MemoryFastState(clock=clock)
    audit = AuditLog(database, clock=clock)
    sessions = SessionStore(fast, SessionSettings(), clock)
    regulator = Regulator(fast, lambda: RegulationSettings(), audit, clock)
    accounts = AccountService(
        database, PasswordHasher(FAST_ARGON), regulator, audit, clock, sessions=sessions
    )
    user = await accounts.create(username="lee", password="amber quarry lantern voyage", actor="admin:root")
    live, _ = await sessions.create(
        user_id=user.id,
        username="lee",
        level=AuthLevel.ONE_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, clock.time()),),
        roles=(),
        ip="192.0.2.1",
        user_agent="t",
        host="a.example.com",
    )
    real = sessions.revoke_user

    async def down(user_id: int) -> int:
        raise StateUnavailable("the store does not answer")

    monkeypatch.setattr(sessions, "revoke_user", down)
    if path == "disable":
        await accounts.disable(user.id, actor="admin:root")
    elif path == "end_sessions":
        await accounts.end_sessions(user.id, actor="admin:root")
    elif path == "incident action":
        await _apply(AccountAction.REVOKE_SESSIONS, user.id, accounts=accounts, sessions=sessions, actor="a")
    else:
        await _apply(
            AccountAction.FORCE_PASSWORD_CHANGE, user.id, accounts=accounts, sessions=sessions, actor="a"
        )
    assert await _owed(database) == [user.id]
    # Not ended in the store yet, but refused: the store answered the read and not the write (an
    # attack run held the embedded state file's write lock, and the disabled account was served).
    assert await sessions.get(live) is None
    # Another worker refuses it from its next round, which still cannot end it.
    other = SessionStore(fast, SessionSettings(), clock)
    monkeypatch.setattr(other, "revoke_user", down)
    assert await other.get(live) is not None
    with pytest.raises(StateUnavailable):
        await end_owed(database, other)
    assert await other.get(live) is None

    monkeypatch.setattr(sessions, "revoke_user", real)
    assert await end_owed(database, sessions) == 1
    assert await sessions.get(live) is None
    assert await _owed(database) == []
    assert sessions.owed == frozenset()  # the account's new sessions are served again
    await fast.close()
