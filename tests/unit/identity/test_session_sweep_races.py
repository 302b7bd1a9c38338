"""A sweep of a user's sessions (disable, password change, "sign out everywhere else") against a session
that changes its id at the same moment (a second factor, an enrolment, a password change of its own),
on both fast-state backends.

The attack run behind it: a thief with a copied two-factor cookie enrolled authenticator apps in a loop,
so its session changed id every few milliseconds; the owner's password change ended 6 of 8 such
sessions, and a disable 8 of 9. The survivors kept reaching the app. Each test here stops one side at
the step where the other must come in (a hook on the fast state), so the interleaving is the one the
attack needed, every time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import SessionEnded, SessionStore, hash_session_id
from gateway.settings.schema import SessionSettings
from gateway.store.fast import FastState
from tests.unit.identity.test_sessions import sign_in

USER = 7
TOTP = FactorUse(Factor.TOTP, 2.0)

Hook = Callable[[], Awaitable[object]]


class Hooked:
    """A fast state that runs a hook once, after the first call of ``method`` whose key starts with
    ``prefix`` (the interleaving point)."""

    def __init__(self, inner: FastState) -> None:
        self._inner = inner
        self._hooks: list[tuple[str, str, Hook]] = []
        self._every: list[tuple[str, str, Hook]] = []

    def after(self, method: str, prefix: str, hook: Hook, *, every_time: bool = False) -> None:
        (self._every if every_time else self._hooks).append((method, prefix, hook))

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if not callable(real):
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await real(*args, **kwargs)
            for hook in [h for h in self._hooks if h[0] == name and args and str(args[0]).startswith(h[1])]:
                self._hooks.remove(hook)
                await hook[2]()
            for hook in [h for h in self._every if h[0] == name and args and str(args[0]).startswith(h[1])]:
                await hook[2]()
            return result

        return call


@pytest.fixture
def hooked(fast_state: FastState) -> Hooked:
    return Hooked(fast_state)


@pytest.fixture
def store(hooked: Hooked, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    return SessionStore(hooked, session_settings, clock)


@pytest.fixture
def sweeper(fast_state: FastState, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    """The replica (or CLI) that sweeps: the same store, no hooks, a cache of its own."""
    return SessionStore(fast_state, session_settings, clock)


def _key(session_id: str) -> str:
    return f"sess:{hash_session_id(session_id)}"


async def _live(store: SessionStore, sweeper: SessionStore, user_id: int = USER) -> set[str]:
    store.clear_cache()
    return {s.id_hash for s in await sweeper.list_user(user_id)}


@pytest.mark.parametrize("sweep", ["revoke_user", "revoke_others"])
async def test_a_session_changing_its_id_mid_sweep_ends(
    store: SessionStore, sweeper: SessionStore, hooked: Hooked, sweep: str
) -> None:
    """The sweep runs after the rotation took the old record and before it indexed the new one."""
    owner, _ = await sign_in(store)
    thief, _ = await sign_in(store)
    if sweep == "revoke_user":
        hooked.after("take", _key(thief), lambda: sweeper.revoke_user(USER))
    else:
        hooked.after("take", _key(thief), lambda: sweeper.revoke_others(owner, USER))

    with pytest.raises(SessionEnded):
        await store.elevate(thief, level=AuthLevel.TWO_FACTOR, factor=TOTP)
    live = await _live(store, sweeper)
    assert len(live) == (0 if sweep == "revoke_user" else 1)
    if sweep == "revoke_others":
        assert live == {hash_session_id(owner)}


async def test_a_session_that_changed_its_id_after_the_sweep_read_the_index_is_found_again(
    store: SessionStore, sweeper: SessionStore, hooked: Hooked, fast_state: FastState
) -> None:
    """The sweep reads the index (the old id), then the rotation runs to its end (a new id in the
    index), then the sweep ends the old id, which is gone: its next pass finds the new one."""
    owner, _ = await sign_in(store)
    thief, _ = await sign_in(store)
    rotated: list[str] = []

    async def rotate() -> None:
        rotated.append((await store.elevate(thief, level=AuthLevel.TWO_FACTOR, factor=TOTP))[0])

    watched = Hooked(fast_state)
    watched.after("get", f"usess:{USER}", rotate)
    sweeping = SessionStore(watched, SessionSettings(), store._clock)
    ended = await sweeping.revoke_others(owner, USER)

    assert rotated, "the hook did not run"
    assert ended == 1
    assert await sweeper.get(rotated[0]) is None
    assert await _live(store, sweeper) == {hash_session_id(owner)}


async def test_a_password_change_of_its_own_cannot_outrun_the_sweep(
    store: SessionStore, sweeper: SessionStore, hooked: Hooked
) -> None:
    """``renew`` (a session moving to a sign-in of its own) mid-sweep ends like any rotation."""
    thief, _ = await sign_in(store)
    hooked.after("take", _key(thief), lambda: sweeper.revoke_user(USER))
    with pytest.raises(SessionEnded):
        await store.renew(thief)
    assert await _live(store, sweeper) == set()


async def test_a_sign_in_completing_mid_sweep_does_not_live_outside_the_index(
    store: SessionStore, sweeper: SessionStore, hooked: Hooked
) -> None:
    """A sign-in whose id was indexed, then swept before its record was written, ends."""
    hooked.after("compare_and_set", f"usess:{USER}", lambda: sweeper.revoke_user(USER))
    with pytest.raises(SessionEnded):
        await sign_in(store)
    assert await _live(store, sweeper) == set()


async def test_signing_out_other_browsers_keeps_this_sign_in_on_every_host(
    store: SessionStore, sweeper: SessionStore
) -> None:
    here, mine = await sign_in(store)
    there, _ = await sign_in(store, family=mine.family, host="app.example.com")
    other, _ = await sign_in(store)
    ended = await sweeper.end_others(USER, keep=mine.id_hash, keep_family=mine.family)
    assert ended == 1
    assert await _live(store, sweeper) == {hash_session_id(here), hash_session_id(there)}
    assert await sweeper.get(other) is None


async def test_a_sign_in_swept_whole_cannot_be_joined_again(
    store: SessionStore, sweeper: SessionStore, fast_state: FastState
) -> None:
    """A copied cookie's sign-in keeps minting sessions on another host through the hand-off while the
    owner signs out everywhere else (an attack run kept 9 to 54 of them): the sweep ends that sign-in
    whole, so a session that joined it meanwhile ends with it and no later hand-off can join it."""
    owner, _ = await sign_in(store)
    thief, stolen = await sign_in(store)
    joined: list[str] = []
    refused: list[str] = []

    async def join() -> None:  # the thief's loop: a new session on another host whenever it can
        try:
            joined.append((await sign_in(store, family=stolen.family, host="app.example.com"))[0])
        except SessionEnded:
            refused.append("joined an ended sign-in")

    watched = Hooked(fast_state)
    watched.after("get", f"usess:{USER}", join, every_time=True)
    sweeping = SessionStore(watched, SessionSettings(), store._clock)
    await sweeping.revoke_others(owner, USER)  # finishes: the thief cannot keep it going

    assert joined, "the hook did not run"
    assert refused, "the thief was never refused"
    for minted in (thief, *joined):
        assert await sweeper.get(minted) is None
    with pytest.raises(SessionEnded):
        await sign_in(store, family=stolen.family, host="app.example.com")
    assert await _live(store, sweeper) == {hash_session_id(owner)}
