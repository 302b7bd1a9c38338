"""What the admin console's Users section asks of accounts, on SQLite and PostgreSQL: search, forcing a
password change, replacing local roles (and ending the sessions that carry a removed one), an
account's audit history, the one-time password an admin hands out, and clearing a password for an
invitation.
"""

from __future__ import annotations

import json

import pytest

from gateway.identity.accounts import InvalidAccount, NoPassword, SignInFailed, UnknownAccount
from gateway.identity.passwords import one_time_password
from tests.unit.identity.test_accounts import IP, PASSWORD, World, _alice, world

__all__ = ["world"]


async def test_search_matches_username_email_and_display_name(world: World) -> None:
    await _alice(world)
    await world.accounts.create(username="bob", password=None, email="bob@corp.test", actor="admin:root")
    await world.accounts.create(
        username="carol_x", password=None, display_name="Carol Ann", actor="admin:root"
    )

    async def found(term: str | None) -> list[str]:
        return [s.username for s in await world.accounts.list(search=term)]

    assert await found(None) == ["alice", "bob", "carol_x"]
    assert await found("") == ["alice", "bob", "carol_x"]
    assert await found("ALI") == ["alice"]  # folded like the stored name
    assert await found("corp.test") == ["bob"]  # the email
    assert await found("carol ann") == ["carol_x"]  # the display name, any case
    assert await found("example.com") == ["alice"]
    # Wildcards typed into the box are characters: "_" matches only an underscore.
    assert await found("l_x") == ["carol_x"]
    assert await found("%") == []
    assert await found("nobody") == []
    assert [s.username for s in await world.accounts.list(search="o", limit=1, offset=1)] == ["bob"]


async def test_require_password_change_holds_the_next_sign_in(world: World) -> None:
    user = await _alice(world)
    session_id = await world.sign_in(user)
    await world.accounts.require_password_change(user.id, actor="user:boss")
    result = await world.accounts.authenticate("alice", PASSWORD, ip=IP)
    assert result.must_change_password is True
    # Sessions already signed in are the caller's decision.
    assert await world.sessions.get(session_id) is not None
    (event,) = await world.events("user.password_change_required")
    assert (event.actor, event.subject) == ("user:boss", "alice")


async def test_require_password_change_needs_a_password(world: World) -> None:
    bob = await world.accounts.create(username="bob", password=None, actor="admin:root")
    with pytest.raises(NoPassword) as info:
        await world.accounts.require_password_change(bob.id, actor="user:boss")
    assert info.value.status == 400
    assert await world.events("user.password_change_required") == []
    with pytest.raises(UnknownAccount):
        await world.accounts.require_password_change(4242, actor="user:boss")


async def test_adding_roles_keeps_sessions_removing_one_ends_them(world: World) -> None:
    user = await _alice(world)  # roles dev ops
    session_id = await world.sign_in(user)

    added = await world.accounts.set_roles(user.id, ["dev", "ops", "auditor"], actor="user:boss")
    assert (added.roles, added.added, added.removed, added.sessions_ended) == (
        ("dev", "ops", "auditor"), ("auditor",), (), 0,
    )  # fmt: skip
    assert await world.sessions.get(session_id) is not None

    removed = await world.accounts.set_roles(user.id, ["auditor"], actor="user:boss")
    assert (removed.removed, removed.sessions_ended) == (("dev", "ops"), 1)
    # The session carried the removed roles: it is gone, on every replica.
    assert await world.sessions.get(session_id) is None
    stored = await world.accounts.get(user.id)
    assert stored is not None
    assert stored.roles == "auditor"

    unchanged = await world.accounts.set_roles(user.id, ["auditor"], actor="user:boss")
    assert (unchanged.added, unchanged.removed) == ((), ())
    events = await world.events("user.roles_changed")
    assert len(events) == 2  # no event for a change that changed nothing
    assert json.loads(events[0].details) == {
        "roles": "auditor", "added": "", "removed": "dev ops", "sessions_revoked": 1,
    }  # fmt: skip


async def test_set_roles_refuses_bad_names_and_changes_nothing(world: World) -> None:
    user = await _alice(world)
    with pytest.raises(InvalidAccount):
        await world.accounts.set_roles(user.id, ["ok", "two words"], actor="user:boss")
    # Look-alikes of "admin" that every table shows as "admin" (a fuzzing run stored them).
    for hidden in ("admin\u200b", "ad\u202emin", "admin\x00", "\ufeffadmin", "admin\u034f", "admin\ufe0f"):
        with pytest.raises(InvalidAccount, match="ASCII"):
            await world.accounts.set_roles(user.id, [hidden], actor="user:boss")
    # Look-alikes of another script (an attack run linked "\u0430dmin" to the admin role in a proposal
    # that read as "g, admin, admin").
    for alike in ("\u0430dmin", "\uff41\uff44\uff4d\uff49\uff4e", "adm\u0456n"):
        with pytest.raises(InvalidAccount, match="other scripts"):
            await world.accounts.set_roles(user.id, [alike], actor="user:boss")
    with pytest.raises(InvalidAccount, match="1-128 of the ASCII"):
        await world.accounts.set_roles(user.id, ["r" * 129], actor="user:boss")
    stored = await world.accounts.get(user.id)
    assert stored is not None
    assert stored.roles == "dev ops"
    with pytest.raises(UnknownAccount):
        await world.accounts.set_roles(4242, [], actor="user:boss")


@pytest.mark.parametrize(
    "role",
    ["client:deployer", "user:boss", "group:oidc:admins", "scope:write", "authenticated", "Client:deployer"],
)
async def test_a_role_spelled_as_a_principal_is_refused(world: World, role: str) -> None:
    """An attack run: a person given the role "client:deployer" held the machine client's grants, and
    "user:boss" another person's. Service-account roles refused those already."""
    user = await _alice(world)
    with pytest.raises(InvalidAccount, match="bare name"):
        await world.accounts.set_roles(user.id, ["ok", role], actor="user:boss")
    stored = await world.accounts.get(user.id)
    assert stored is not None
    assert stored.roles == "dev ops"


def test_a_stored_role_spelled_as_a_principal_is_no_principal_of_the_session() -> None:
    from gateway.authz.principals import _principals

    principals = _principals("eve", ("client:deployer", "user:boss", "ops"), ("oidc:staff",))
    assert principals == {"user:eve", "authenticated", "ops", "group:oidc:staff"}


async def test_history_is_about_or_by_the_account(world: World) -> None:
    user = await _alice(world)
    await world.accounts.create(username="bob", password=None, actor="user:alice")
    await world.accounts.disable(user.id, actor="user:boss")
    await world.audit.record("other.thing", actor="user:carol", subject="carol")
    kinds = [(e.kind, e.actor, e.subject) for e in await world.accounts.history("alice")]
    assert kinds == [
        ("user.disabled", "user:boss", "alice"),
        ("user.created", "user:alice", "bob"),
        ("user.created", "admin:root", "alice"),
    ]
    assert len(await world.accounts.history("alice", limit=1)) == 1


async def test_one_time_passwords_are_long_random_and_acceptable(world: World) -> None:
    passwords = {one_time_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in list(passwords)[:5]:
        assert len(password) == 26
        assert await world.hasher.check_new(password, personal=("alice", "", "")) is None


async def test_clear_password_for_a_new_invitation_ends_the_sessions(world: World) -> None:
    user = await _alice(world)
    session_id = await world.sign_in(user)
    assert await world.accounts.clear_password(user.id, actor="user:boss") == 1
    stored = await world.accounts.get(user.id)
    assert stored is not None
    assert stored.password_hash is None
    assert (stored.must_change_password, stored.password_changed_at) == (False, None)
    # The password signed in with is gone, and so is the session.
    assert await world.sessions.get(session_id) is None
    with pytest.raises(SignInFailed):
        await world.accounts.authenticate("alice", PASSWORD, ip=IP)
    (event,) = await world.events("user.password_cleared")
    assert (event.actor, event.subject) == ("user:boss", "alice")
    with pytest.raises(UnknownAccount):
        await world.accounts.clear_password(4242, actor="user:boss")
