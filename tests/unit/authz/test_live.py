"""A worker's live policy: loads newer versions, keeps the last good one, reports staleness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.authz.live import LivePolicy
from gateway.authz.rules import PolicyRules, parse_policy
from gateway.settings.schema import Duration, PolicySettings


@dataclass
class Stored:
    version: int
    rules: PolicyRules
    csv: str = ""
    created_at: datetime | None = None


@dataclass
class FakeStore:
    """The part of PolicyStore that LivePolicy uses; ``down`` makes every read fail."""

    stored: Stored
    last_confirmed: float = 0.0
    down: bool = False
    bootstrapped: list[str] = field(default_factory=list)

    async def current(self) -> Stored:
        if self.down:
            raise ConnectionError("database unreachable")
        self.last_confirmed = time.monotonic()
        return self.stored

    async def bootstrap(self, path: str) -> int | None:
        self.bootstrapped.append(path)
        return None

    async def watch(
        self,
        on_version: Callable[[int], Awaitable[None]],
        *,
        poll_interval: float,
        since: object,
        on_announced: Callable[[int], None] | None = None,
    ) -> None:
        await asyncio.Event().wait()


V1 = parse_policy("p, authenticated, app, /docs/*, GET, allow\ng, user:alice, editor\n")
V2 = parse_policy("p, authenticated, app, /docs/*, GET, allow\np, editor, app, /admin/*, GET, allow\n")
ALICE = frozenset({"user:alice", "authenticated"})


def live(store: FakeStore, **settings: object) -> LivePolicy:
    return LivePolicy(store, PolicySettings(**settings))  # type: ignore[arg-type]


async def test_start_loads_the_stored_policy_and_a_newer_version_replaces_it() -> None:
    store = FakeStore(Stored(1, V1))
    policy = live(store, file="/x/policy.csv")
    await policy.start()
    try:
        assert store.bootstrapped == ["/x/policy.csv"]
        assert policy.version == 1
        assert policy.authorizer.decide(ALICE, "app", "GET", "/docs/a").allowed
        assert not policy.authorizer.decide(ALICE, "app", "GET", "/admin/a").allowed
        assert policy.roles_for(ALICE) == ("editor",)
        store.stored = Stored(2, V2)
        await policy.load()
        assert policy.version == 2
        # The cache is keyed by version: the old "deny" is not answered any more, nor the old role.
        assert not policy.authorizer.decide(ALICE, "app", "GET", "/admin/a").allowed
        assert policy.roles_for(ALICE) == ()
    finally:
        await policy.close()


async def test_an_unreachable_store_keeps_the_last_good_policy() -> None:
    store = FakeStore(Stored(1, V1))
    policy = live(store)
    await policy.start()
    try:
        store.down = True
        with pytest.raises(ConnectionError):
            await policy.load()
        assert policy.version == 1
        assert policy.authorizer.decide(ALICE, "app", "GET", "/docs/a").allowed
    finally:
        await policy.close()


async def test_an_announced_version_that_cannot_be_loaded_puts_the_worker_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last good policy keeps deciding through an outage, but not once a newer one is known to
    exist: it may allow what the new one denies (an attack run on a replica cut off from PostgreSQL)."""
    monkeypatch.setattr("gateway.authz.live._LOAD_GRACE", 0.05)
    store = FakeStore(Stored(1, V1))
    policy = live(store)
    await policy.start()
    try:
        store.down = True
        policy._announce(2)  # the broadcast names version 2; the database cannot be read
        before = policy.behind  # a load takes a moment: not yet
        await asyncio.sleep(0.1)
        assert (before, policy.behind) == (False, True)
        with pytest.raises(ConnectionError):
            await policy._on_version(2)
        still = policy.behind
        store.down = False
        store.stored = Stored(2, V2)
        await policy._on_version(2)
        assert (still, policy.behind, policy.version) == (True, False, 2)
        # An announcement of what is already live changes nothing.
        policy._announce(2)
        await asyncio.sleep(0.1)
        assert policy.behind is False
    finally:
        await policy.close()


async def test_readiness_turns_red_only_when_the_policy_is_older_than_the_bound() -> None:
    store = FakeStore(Stored(1, V1))
    policy = live(store, max_staleness=Duration(60))
    await policy.start()
    try:
        assert policy.readiness()["ok"] is True
        # Nothing confirmed the policy for 30 s: still within the bound.
        policy.loaded_at = store.last_confirmed = time.monotonic() - 30
        assert policy.readiness()["ok"] is True
        policy.loaded_at = store.last_confirmed = time.monotonic() - 61
        check = policy.readiness()
        assert check["ok"] is False
        assert "not confirmed current" in check["error"]
        assert check["version"] == 1
    finally:
        await policy.close()


async def test_an_empty_store_denies_everything() -> None:
    policy = live(FakeStore(Stored(0, PolicyRules())))
    await policy.start()
    try:
        decision = policy.authorizer.decide(ALICE, "app", "GET", "/docs/a")
        assert not decision.allowed
        assert decision.reason == "no-policy"
    finally:
        await policy.close()


async def test_a_policy_file_edited_after_the_import_is_reported_not_silently_ignored(tmp_path: Path) -> None:
    """Outside review: removing a rule from policy.file and reloading logged "config reloaded" and
    changed nothing, since the file is imported only into an empty store. Now the difference is said."""
    file = tmp_path / "policy.csv"
    file.write_text("p, authenticated, app, /docs/*, GET, allow\n\ng, user:alice,  editor\n")
    policy = live(FakeStore(Stored(1, V1)), file=str(file))
    assert await policy.file_differs() is None  # the same rules, spacing and blank lines aside
    file.write_text("p, authenticated, app, /docs/*, GET, allow\n")
    note = await policy.file_differs()
    assert note is not None
    assert "differs from the stored policy (version 1)" in note
    assert f"gateway policy import {file}" in note
    file.unlink()
    assert "cannot be read" in (await policy.file_differs() or "")
    assert await live(FakeStore(Stored(1, V1))).file_differs() is None  # no file configured


async def test_a_forged_announcement_is_dropped_once_the_database_has_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The re-attack run: one PUBLISH of version 999999 put every worker at 503 while the database
    was reachable. The database answering since the announcement, with nothing newer, drops it."""
    monkeypatch.setattr("gateway.authz.live._LOAD_GRACE", 0.05)
    store = FakeStore(Stored(1, V1))
    policy = live(store)
    await policy.start()
    try:
        policy._announce(999999)
        await store.current()  # the poll the broadcast woke: the database answers, at version 1
        await asyncio.sleep(0.1)
        assert policy.behind is False
        assert policy.version == 1
    finally:
        await policy.close()


async def test_a_database_restored_to_an_earlier_version_is_followed() -> None:
    """The re-attack run: after a restore to v1 under running workers deciding on v4, the new v2 was
    ignored until a number above 4 existed. Any other number is loaded."""
    store = FakeStore(Stored(4, V2))
    policy = live(store)
    await policy.start()
    try:
        store.stored = Stored(2, V1)
        await policy._on_version(2)
        assert policy.version == 2
        assert not policy.authorizer.decide(ALICE, "app", "GET", "/admin/x").allowed
    finally:
        await policy.close()


async def test_the_same_number_stored_again_is_another_policy() -> None:
    """A database restored to v1 under a worker deciding on v2 numbers the next change 2 again: the
    number and the time it was stored name a version, and the roles memo (keyed by number) goes too."""
    then = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    store = FakeStore(Stored(2, V1, created_at=then))
    policy = live(store)
    await policy.start()
    try:
        assert policy.roles_for(ALICE) == ("editor",)
        store.stored = Stored(2, V2, created_at=datetime(2026, 12, 7, 9, 5, tzinfo=UTC))
        await policy._on_version(2)
        assert policy.authorizer.decide(ALICE, "app", "GET", "/admin/x").allowed is False
        assert policy.roles_for(ALICE) == ()
        assert policy.authorizer.index.rules == V2
    finally:
        await policy.close()


async def test_the_roles_apps_see_hold_no_principal_of_any_kind() -> None:
    """An attack run: a provider's client-credentials token sent its scopes to the apps as roles
    (``scope:corp:admin`` in X-Gateway-Roles and the assertion's roles)."""
    rules = parse_policy(
        "p, authenticated, app, /docs/*, GET, allow\n"
        "g, scope:corp:reports.read, reader\n"
        "g, client:corp:reporter, group:finance\n"
        "g, group:finance, user:boss\n"
    )
    policy = live(FakeStore(Stored(1, rules)))
    await policy.start()
    try:
        asking = frozenset({"client:corp:reporter", "scope:corp:reports.read", "scope:corp:admin"})
        assert policy.roles_for(asking) == ("reader",)
    finally:
        await policy.close()


async def test_a_stored_policy_with_a_user_not_spelled_as_stored_is_reported_at_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A re-attack run: a policy stored before such a line was an error (or with force) still decides as
    stored, and nothing told its operator that the deny for user:Mallory never applies."""
    store = FakeStore(
        Stored(3, parse_policy("p, user:Mallory, app, /*, *, deny\np, authenticated, app, /*, *, allow\n"))
    )
    with caplog.at_level("ERROR", logger="gateway.policy"):
        await live(store).load()
    assert any(
        "version 3 has an error, line 1" in r.getMessage() and "user:mallory" in r.getMessage()
        for r in caplog.records
    )
