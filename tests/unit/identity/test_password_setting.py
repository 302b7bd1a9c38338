"""Every way the account service sets a password applies the whole policy, with the account's own names.

On SQLite and PostgreSQL (real servers), like the other account tests. A refused password changes
nothing: no account, no new hash, no audit event of a change, and (for a self-service change) the
current password is not even checked, so a refusal costs no argon2 work and no failure count.
"""

from __future__ import annotations

import pytest

from gateway.identity.accounts import SAME_PASSWORD_MESSAGE, WeakPassword
from gateway.identity.models import User
from gateway.identity.password_policy import Rule, check_password
from gateway.identity.passwords import MAX_PASSWORD_CHARS
from tests.unit.identity.test_accounts import IP, OTHER_PASSWORD, PASSWORD, World, _alice, world

__all__ = ["world"]

# Alice's account in test_accounts: username "Alice", email "Alice@Example.com", name "Alice Liddell".
WEAK = [
    ("password1234", Rule.COMMON),  # the outside attack run's input
    ("P@ssw0rd2024!", Rule.COMMON),
    ("Wonderland!!", Rule.DICTIONARY),
    ("abcdefghijkl", Rule.PATTERN),
    ("alice2024!!!", Rule.PERSONAL),  # username
    ("Liddell.1865", Rule.PERSONAL),  # display name
    ("alice@example.com", Rule.PERSONAL),  # email
    ("x" * (MAX_PASSWORD_CHARS + 1), Rule.TOO_LONG),
]


def _message(password: str, rule: Rule) -> str:
    refusal = check_password(
        password, min_length=12, personal=("alice", "alice@example.com", "Alice Liddell")
    )
    assert refusal is not None
    assert refusal.rule is rule
    return refusal.message


@pytest.mark.parametrize(("password", "rule"), WEAK)
async def test_create_refuses_and_stores_nothing(world: World, password: str, rule: Rule) -> None:
    with pytest.raises(WeakPassword) as info:
        await _alice(world, password=password)
    assert info.value.detail == _message(password, rule)
    assert (info.value.status, info.value.reason) == (400, "weak-password")
    assert await world.accounts.list(limit=10, offset=0) == []
    assert await world.events("user.created") == []


async def _unchanged(world: World, user: User) -> None:
    # The old password still signs in, the stored hash is the same, and no change was recorded.
    stored = (await world.accounts.get(user.id)) or user
    assert stored.password_hash == user.password_hash
    assert (await world.accounts.authenticate("alice", PASSWORD, ip=IP)).user.id == user.id
    assert await world.events("user.password_changed") == []


@pytest.mark.parametrize(("password", "rule"), WEAK)
async def test_self_service_change_refuses_before_checking_the_current_password(
    world: World, password: str, rule: Rule
) -> None:
    user = await _alice(world)
    verified_before = len(world.hasher.verified)
    with pytest.raises(WeakPassword) as info:
        await world.accounts.set_password(
            user.id, password, actor="user:alice", current_password=PASSWORD, ip=IP
        )
    assert info.value.detail == _message(password, rule)
    assert len(world.hasher.verified) == verified_before  # no argon2 work, no failure counted
    await _unchanged(world, user)


@pytest.mark.parametrize(("password", "rule"), WEAK[:5])
async def test_admin_reset_refuses_too(world: World, password: str, rule: Rule) -> None:
    user = await _alice(world)
    with pytest.raises(WeakPassword) as info:
        await world.accounts.set_password(user.id, password, actor="admin:root", must_change_password=True)
    assert info.value.detail == _message(password, rule)
    await _unchanged(world, user)


async def test_the_current_password_cannot_be_kept(world: World) -> None:
    # A forced change that keeps the one-time password would leave it known to whoever handed it out.
    user = await _alice(world, must_change_password=True)
    with pytest.raises(WeakPassword) as info:
        await world.accounts.set_password(
            user.id, PASSWORD, actor="user:alice", current_password=PASSWORD, ip=IP
        )
    assert info.value.detail == SAME_PASSWORD_MESSAGE
    assert (await world.accounts.get(user.id)) is not None
    assert (await world.accounts.authenticate("alice", PASSWORD, ip=IP)).must_change_password is True
    # A different, good password goes through.
    await world.accounts.set_password(
        user.id, OTHER_PASSWORD, actor="user:alice", current_password=PASSWORD, ip=IP
    )
    assert (await world.accounts.authenticate("alice", OTHER_PASSWORD, ip=IP)).must_change_password is False
