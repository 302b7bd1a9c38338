"""The account ledger over the real stores (SQLite and PostgreSQL): a database restored from a backup
gets the changes made since the backup again, before anyone can sign in: erasures, deletions and
disables, passwords set, factors reset, roles set, API tokens revoked and leaked signing keys deleted.

A restore is simulated the way it looks to the database: the account row is back as it was (same id,
name, creation time, password hash), and the ledger table's row, the retired name and everything else
written after the backup are gone. The attack each test makes is the one a restore makes possible: the
erased, deleted or disabled person signs in with their old password.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.crypto.signing import SigningKeys
from gateway.errors import GatewayError
from gateway.factors.recovery import RecoveryCodes
from gateway.factors.totp import TotpService
from gateway.factors.webauthn import WebAuthnService
from gateway.identity import ledger as ledger_module
from gateway.identity.accounts import AccountService, SignInFailed
from gateway.identity.ledger import AccountLedger, Entry, Lineage, merge, read_lines
from gateway.identity.models import (
    AccountLedgerRow,
    RecoveryCode,
    RetiredUsername,
    TotpCredential,
    User,
    WebAuthnCredential,
)
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import SessionStore
from gateway.machine.accounts import ServiceAccounts
from gateway.machine.models import ApiToken, ServiceAccount
from gateway.privacy.consent import Consents
from gateway.privacy.ledger_replay import ACTOR, Replayers, replay
from gateway.privacy.models import ConsentRecord
from gateway.privacy.register import Channel
from gateway.privacy.service import Privacy
from gateway.response.personal_data import CasePersonalData
from gateway.settings.loader import parse_settings
from gateway.settings.schema import (
    AssertionSettings,
    Duration,
    MfaSettings,
    PasswordSettings,
    PrivacySettings,
    Purpose,
    RegulationSettings,
    SessionSettings,
    WebAuthnSettings,
)
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
PASSWORD = "amber quarry lantern voyage"
IP = "203.0.113.77"
SETTINGS = PrivacySettings()
NEWSLETTER = Purpose(name="newsletter", title="Newsletter", notice="News by email.", basis="consent")
PURPOSES = (*SETTINGS.purposes, NEWSLETTER)


@dataclass
class Node:
    """One gateway node's view: the shared database, its own ledger file."""

    db: Database
    clock: FakeClock
    keyring: Keyring
    audit: AuditLog
    ledger: AccountLedger
    accounts: AccountService
    privacy: Privacy
    tokens: ServiceAccounts
    signing: SigningKeys
    fast: MemoryFastState
    consents: Consents

    async def add(self, name: str) -> User:
        return await self.accounts.create(
            username=name, password=PASSWORD, email=f"{name}@example.com", actor="admin:root"
        )

    async def replay(self) -> Any:
        return await replay(self.replayers())

    def replayers(self) -> Replayers:
        return Replayers(
            self.ledger,
            self.accounts,
            self.privacy.eraser,
            self.audit,
            self.db,
            self.tokens,
            self.signing,
            self.fast,
            self.consents,
        )

    async def signs_in(self, name: str, password: str = PASSWORD) -> bool:
        try:
            await self.accounts.authenticate(name, password, ip=IP)
        except SignInFailed:
            return False
        return True


def _node(db: Database, clock: FakeClock, keyring: Keyring, fast: MemoryFastState, path: Path) -> Node:
    audit = AuditLog(db, clock=clock, keyring=keyring)
    regulator = Regulator(
        fast,
        lambda: RegulationSettings(free_attempts=50, max_failures=100, lock_time=Duration(1)),
        audit,
        clock,
    )
    sessions = SessionStore(fast, SessionSettings(), clock)
    ledger = AccountLedger(db, keyring, path, clock)
    accounts = AccountService(
        db,
        PasswordHasher(FAST_ARGON),
        regulator,
        audit,
        clock,
        sessions=sessions,
        keyring=keyring,
        ledger=ledger,
    )
    consents = Consents(db, audit, sessions, purposes=lambda: PURPOSES, clock=clock, ledger=ledger)
    privacy = Privacy(
        db,
        keyring=keyring,
        accounts=accounts,
        sessions=sessions,
        audit=audit,
        consents=consents,
        incident_records=CasePersonalData(db),
        clock=clock,
    )
    tokens = ServiceAccounts(db, audit, fast, clock, max_lifetime=86400.0, keyring=keyring, ledger=ledger)
    signing = SigningKeys(db, keyring, clock, AssertionSettings())
    return Node(db, clock, keyring, audit, ledger, accounts, privacy, tokens, signing, fast, consents)


@pytest.fixture
async def nodes(database: Database, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    fast = MemoryFastState(clock=clock)
    keyring = Keyring.create(tmp_path / "keyring.json")
    yield (
        _node(database, clock, keyring, fast, tmp_path / "a" / "account-ledger.jsonl"),
        _node(database, clock, keyring, fast, tmp_path / "b" / "account-ledger.jsonl"),
    )
    await fast.close()


async def _row(db: Database, user_id: int) -> dict[str, Any]:
    async with db.session() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return {column.key: getattr(user, column.key) for column in User.__table__.columns}


async def _restore(db: Database, *rows: dict[str, Any]) -> None:
    """What a restore from a backup made before the changes does to these accounts and the ledger."""
    async with db.session(write=True) as session:
        for row in rows:
            await session.execute(delete(User).where(User.id == row["id"]))
            await session.execute(insert(User).values(**row))
        await session.execute(delete(AccountLedgerRow))
        await session.execute(delete(RetiredUsername))
        await session.commit()


async def _events(db: Database, action: str) -> list[Any]:
    from gateway.audit.models import AuditEvent

    async with db.session() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.kind == action))).all())


async def test_an_erasure_is_made_again_on_a_restored_database(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    alice = await a.add("alice")
    backup = await _row(a.db, alice.id)
    request = await a.privacy.erase(
        alice, settings=SETTINGS, channel=Channel.PORTAL, actor="user:alice", verified_by="signed-in session"
    )
    assert not await a.signs_in("alice")

    await _restore(a.db, backup)
    assert await a.signs_in("alice")  # what a restore alone does: the erased person is back

    done = await a.replay()
    assert (done.erased, done.deleted, done.disabled) == (1, 0, 0)
    assert done.refs == [request.ref]
    assert await a.accounts.find("alice") is None
    assert not await a.signs_in("alice")
    (replayed,) = await _events(a.db, "account.ledger_replayed")
    assert replayed.actor == ACTOR
    assert "alice" not in str(replayed.details)
    # The name is retired again: no provider sign-in may hand it to someone else.
    async with a.db.session() as session:
        assert (await session.scalars(select(RetiredUsername))).all()
    # Made once: the next round finds nothing to do.
    again = await a.replay()
    assert again.changed == 0


async def test_a_hold_placed_after_an_erasure_does_not_keep_it_from_being_made_again(
    nodes: tuple[Node, Node],
) -> None:
    """A re-attack run: a hold on the name placed after the person's erasure, carried across a restore
    (as a restore carries every hold of the node), suspended the erasure's making again, and the erased
    person's account stayed with its password. A hold placed before the erasure still suspends it."""
    a, _ = nodes
    alice = await a.add("alice")
    backup = await _row(a.db, alice.id)
    await a.privacy.erase(
        alice, settings=SETTINGS, channel=Channel.PORTAL, actor="user:alice", verified_by="signed-in session"
    )
    a.clock.advance(60)
    await a.privacy.holds.place("LH-AFTER", reason="litigation", by="admin:counsel", username="alice")
    await _restore(a.db, backup)
    done = await a.replay()
    assert (done.erased, done.held) == (1, 0)
    assert await a.accounts.find("alice") is None
    assert not await a.signs_in("alice")


async def test_deletions_and_disables_are_made_again_and_an_enable_is_not(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    bob, carol, dave = await a.add("bob"), await a.add("carol"), await a.add("dave")
    await a.accounts.disable(dave.id, actor="admin:root")
    backup = [await _row(a.db, user.id) for user in (bob, carol, dave)]
    a.clock.advance(60)
    await a.accounts.delete(bob.id, actor="admin:root")
    await a.accounts.disable(carol.id, actor="admin:root")
    await a.accounts.enable(dave.id, actor="admin:root")

    await _restore(a.db, *backup)
    assert await a.signs_in("bob")
    assert await a.signs_in("carol")

    done = await a.replay()
    assert (done.erased, done.deleted, done.disabled) == (0, 1, 1)
    assert not await a.signs_in("bob")
    assert not await a.signs_in("carol")
    # Dave was enabled after the backup: a restore never opens an account the backup has closed.
    restored_dave = await a.accounts.get(dave.id)
    assert restored_dave is not None
    assert restored_dave.disabled


async def test_restrictions_and_closures_are_made_again_and_their_undoing_is_not(
    nodes: tuple[Node, Node],
) -> None:
    """An attack run: a restricted and a closed person signed in again on a restored database, where a
    disabled one did not. A lifted restriction or a reopened registration is not made again."""
    a, _ = nodes
    erin, fay, gil, hal = await a.add("erin"), await a.add("fay"), await a.add("gil"), await a.add("hal")
    await a.accounts.set_restricted(gil.id, True, actor="admin:root")
    await a.accounts.close(hal.id, actor="admin:root")
    backup = [await _row(a.db, user.id) for user in (erin, fay, gil, hal)]
    a.clock.advance(60)
    await a.accounts.set_restricted(erin.id, True, actor="admin:root")
    await a.accounts.close(fay.id, actor="admin:root")
    await a.accounts.set_restricted(gil.id, False, actor="admin:root")
    await a.accounts.reopen(hal.id, actor="admin:root")

    await _restore(a.db, *backup)
    assert await a.signs_in("erin")
    assert await a.signs_in("fay")

    done = await a.replay()
    assert (done.restricted, done.closed) == (1, 1)
    assert not await a.signs_in("erin")
    assert not await a.signs_in("fay")
    # Lifted and reopened after the backup: a restore never opens what the backup has shut.
    for name in ("gil", "hal"):
        assert not await a.signs_in(name)
    assert (await a.replay()).changed == 0


async def _consents(db: Database, user_id: int) -> list[dict[str, Any]]:
    return await _rows(db, ConsentRecord, user_id=user_id)


async def test_withdrawals_and_objections_are_made_again_and_their_undoing_is_not(
    nodes: tuple[Node, Node],
) -> None:
    """A consent withdrawn, a consent refused and an objection made since the backup came back with
    it (GDPR Art. 7(3), 21(3)): the restored answer processed what the person had stopped. A consent
    given and an objection lifted since are not made again."""
    a, _ = nodes
    consents = a.consents

    async def optout(person: User) -> set[str]:
        now = await a.accounts.get(person.id)
        assert now is not None
        return set(await consents.optout_of(now))

    ida, joe, kim = await a.add("ida"), await a.add("joe"), await a.add("kim")
    for person in (ida, joe, kim):
        await consents.record(person.id, NEWSLETTER, "granted", "sign-in prompt", actor="user:x")
    await consents.object(kim.id, PURPOSES[0], method="account page", actor="user:kim")
    backup = [(await _row(a.db, p.id), await _consents(a.db, p.id)) for p in (ida, joe, kim)]
    a.clock.advance(60)
    await consents.record(ida.id, NEWSLETTER, "withdrawn", "account page", actor="user:ida")
    await consents.record(joe.id, NEWSLETTER, "refused", "sign-in prompt", actor="user:joe")
    await consents.object(ida.id, PURPOSES[1], method="api", actor="user:ida")
    await consents.withdraw_objection(kim.id, PURPOSES[0], method="account page", actor="user:kim")
    await consents.record(kim.id, NEWSLETTER, "withdrawn", "account page", actor="user:kim")
    await consents.record(kim.id, NEWSLETTER, "granted", "account page", actor="user:kim")

    await _restore(a.db, *(row for row, _ in backup))
    for row, answers in backup:
        await _put_back(a.db, ConsentRecord, answers, user_id=row["id"])
    for person in (ida, joe):
        assert NEWSLETTER.name not in await optout(person)  # the restore alone
    assert PURPOSES[1].name not in await optout(ida)

    done = await a.replay()
    assert (done.withdrawals, done.objections) == (2, 1)
    assert {NEWSLETTER.name, PURPOSES[1].name} <= await optout(ida)
    assert NEWSLETTER.name in await optout(joe)
    # Kim granted again after withdrawing, and lifted her objection: neither is undone, nor redone.
    assert NEWSLETTER.name not in await optout(kim)
    assert PURPOSES[0].name in await optout(kim)  # the backup's objection stays
    (replayed,) = await _events(a.db, "account.ledger_replayed")
    assert (replayed_counts := json.loads(replayed.details))["consents_withdrawn"] == 2
    assert replayed_counts["objections_made"] == 1
    assert (await a.replay()).changed == 0


async def test_a_new_account_of_an_erased_name_is_not_touched(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    first = await a.add("erin")
    await a.privacy.erase(
        first, settings=SETTINGS, channel=Channel.PORTAL, actor="user:erin", verified_by="signed-in session"
    )
    a.clock.advance(5)
    second = await a.add("erin")  # an administrator gives the name again, on purpose
    async with a.db.session(write=True) as session:
        await session.execute(delete(AccountLedgerRow))  # the table lost the row: the file has it
        await session.commit()
    # The new account may even have the old one's id (SQLite reuses the highest): the key tells them apart.
    done = await a.replay()
    assert done.changed == 0
    assert done.absent == 1
    assert await a.accounts.get(second.id) is not None
    assert await a.signs_in("erin")


async def test_a_change_made_on_one_node_reaches_the_other_nodes_file(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    frank = await a.add("frank")
    backup = await _row(a.db, frank.id)
    await a.accounts.delete(frank.id, actor="admin:root")
    assert not b.ledger.path.exists()

    assert (await b.replay()).changed == 0  # nothing to make again: the database has it
    assert [
        entry.state for entry in b.ledger.verified(read_lines(b.ledger.path), await b.ledger.lineage())
    ] == ["deleted"]

    # Node A's disk is lost with the database; node B's file still makes the change again.
    a.ledger.path.unlink()
    await _restore(a.db, backup)
    assert (await b.replay()).deleted == 1
    assert await b.accounts.get(frank.id) is None


async def test_the_file_names_nobody_and_only_its_owner_reads_it(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    grace = await a.add("grace")
    await a.accounts.disable(grace.id, actor="admin:root")
    text = a.ledger.path.read_text()
    assert "grace" not in text
    assert "example.com" not in text
    assert stat.S_IMODE(os.stat(a.ledger.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(a.ledger.path.parent).st_mode) == 0o700
    # Without the keyring, a name cannot be turned into its key: a guess confirms nothing.
    other = Keyring.create(a.ledger.path.parent / "other-keyring.json")
    key = AccountLedger(a.db, other, a.ledger.path, a.clock).key(grace)
    assert key.split(":")[1] not in text


async def test_a_torn_line_is_skipped_and_a_link_is_refused(nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    henry = await a.add("henry")
    await a.accounts.disable(henry.id, actor="admin:root")
    with a.ledger.path.open("ab") as out:
        out.write(b'{"account": "k1:00", "user_id": 1, "sta')  # a crash in the middle of a write
    assert [
        entry.state for entry in a.ledger.verified(read_lines(a.ledger.path), await a.ledger.lineage())
    ] == ["disabled"]

    link = tmp_path / "link.jsonl"
    link.symlink_to(a.ledger.path)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        read_lines(link)


async def test_a_gateway_does_not_start_on_a_ledger_it_cannot_read(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    from gateway.root.start import _replay_ledger

    a, _ = nodes
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    a.ledger.path.parent.mkdir(parents=True, exist_ok=True)
    a.ledger.path.symlink_to(target)  # another local user's file in its place

    class Identity:
        accounts = a.accounts
        audit = a.audit
        clock = a.clock
        keyring = a.keyring
        consents = a.consents

    import contextlib

    settings = parse_settings("public_url: https://auth.example.com\n")
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(GatewayError, match="cannot read the account ledger"):
            await _replay_ledger(
                stack,
                settings,
                a.db,
                Identity(),  # type: ignore[arg-type]
                a.privacy,
                a.signing,
                a.fast,
            )


def test_the_states_rank_erased_over_deleted_over_the_later_of_disable_and_enable() -> None:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    t1 = datetime(2026, 12, 2, tzinfo=UTC)

    def state(*entries: Entry) -> str:
        return merge(entries)["k"].state

    assert state(Entry("k", 1, "disabled", t0), Entry("k", 1, "enabled", t1)) == "enabled"
    assert state(Entry("k", 1, "enabled", t1), Entry("k", 1, "disabled", t0)) == "enabled"
    assert state(Entry("k", 1, "enabled", t0), Entry("k", 1, "disabled", t0)) == "disabled"
    assert state(Entry("k", 1, "deleted", t0), Entry("k", 1, "enabled", t1)) == "deleted"
    assert state(Entry("k", 1, "erased", t0), Entry("k", 1, "deleted", t1)) == "erased"
    assert state(Entry("k", 1, "deleted", t1), Entry("k", 1, "erased", t0)) == "erased"


async def test_a_line_written_without_the_keyring_changes_nothing(
    nodes: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    """The re-attack run: copying an account's `enabled` line with `"state": "erased"` and a later time
    erased the account at the next start. Every line now carries a MAC over all its fields."""
    a, _ = nodes
    ivy = await a.add("ivy")
    await a.accounts.disable(ivy.id, actor="admin:root")
    await a.accounts.enable(ivy.id, actor="admin:root")
    lines = a.ledger.path.read_bytes().splitlines()
    forged = json.loads(lines[-1])
    forged.update(state="erased", at="2099-01-01T00:00:00+00:00", ref="FORGED-REF")
    with a.ledger.path.open("ab") as out:
        out.write(json.dumps(forged).encode() + b"\n")
        # Lines of the wrong types or ranges: skipped, never a crash at start.
        for junk in ({**forged, "state": []}, {**forged, "user_id": 10**30}, {**forged, "user_id": "1"}, [1]):
            out.write(json.dumps(junk).encode() + b"\n")
    async with a.db.session(write=True) as session:
        await session.execute(delete(AccountLedgerRow))  # so the file is what the sync goes by
        await session.commit()
    done = await a.replay()
    assert done.changed == 0
    assert await a.signs_in("ivy")
    assert "MAC does not check" in caplog.text
    # The junk lines are counted in one log line, not logged one by one.
    assert "4 line(s) that are no entry" in caplog.text


async def test_a_later_change_outranks_an_earlier_one_whatever_the_clocks(nodes: tuple[Node, Node]) -> None:
    """The re-attack run: an enable written on a host whose clock ran 90 s ahead outranked the disable
    made a few seconds later on another host; a restore then enabled the offboarded person again."""
    a, _ = nodes
    jo = await a.add("jo")
    backup = await _row(a.db, jo.id)
    a.clock.advance(90)  # the host with the fast clock
    await a.accounts.disable(jo.id, actor="admin:root")
    await a.accounts.enable(jo.id, actor="admin:root")
    a.clock.advance(-85)  # the host with the right clock, a few seconds later
    await a.accounts.disable(jo.id, actor="admin:root")
    assert [e.state for e in (await a.ledger.table()).values()] == ["disabled"]
    await _restore(a.db, backup)
    assert (await a.replay()).disabled == 1
    assert not await a.signs_in("jo")


async def test_a_change_whose_making_again_failed_is_made_at_the_next_sync(
    nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry goes into the table only once its change is made: a store failure half-way must not
    leave the restored account as it was for good."""
    from gateway.store.db import StoreUnavailable

    a, _ = nodes
    kim = await a.add("kim")
    backup = await _row(a.db, kim.id)
    await a.accounts.delete(kim.id, actor="admin:root")
    await _restore(a.db, backup)
    real = a.accounts.delete

    async def failing(user_id: int, *, actor: str) -> int | None:
        raise StoreUnavailable("the database went away")

    monkeypatch.setattr(a.accounts, "delete", failing)
    with pytest.raises(StoreUnavailable):
        await a.replay()
    assert await a.signs_in("kim")
    monkeypatch.setattr(a.accounts, "delete", real)
    assert (await a.replay()).deleted == 1
    assert not await a.signs_in("kim")


# -- passwords, factors, roles, tokens and keys ------------------------------------------------------


async def _rows(db: Database, model: Any, **where: object) -> list[dict[str, Any]]:
    async with db.session() as session:
        query = select(model).filter_by(**where)
        return [
            {column.key: getattr(row, column.key) for column in model.__table__.columns}
            for row in (await session.scalars(query)).all()
        ]


async def _put_back(db: Database, model: Any, rows: list[dict[str, Any]], **where: object) -> None:
    """What a restore does to these rows: the table's rows (matching ``where``) as the backup had them."""
    async with db.session(write=True) as session:
        await session.execute(delete(model).filter_by(**where))
        for row in rows:
            await session.execute(insert(model).values(**row))
        await session.execute(delete(AccountLedgerRow))
        await session.commit()


async def test_a_password_changed_since_the_backup_does_not_come_back(nodes: tuple[Node, Node]) -> None:
    """The person changed a leaked password; a restore brought the leaked one back."""
    a, _ = nodes
    lena = await a.add("lena")
    backup = await _row(a.db, lena.id)
    a.clock.advance(60)
    await a.accounts.set_password(lena.id, "a brand new passphrase 2026", actor="user:lena")
    await _restore(a.db, backup)
    assert await a.signs_in("lena")  # the leaked password works again: what a restore alone does

    assert (await a.replay()).passwords == 1
    assert not await a.signs_in("lena")
    # The new password is in no ledger: the person gets one through an invitation.
    assert not await a.signs_in("lena", "a brand new passphrase 2026")
    restored = await a.accounts.get(lena.id)
    assert restored is not None
    assert restored.password_hash is None
    assert (await a.replay()).changed == 0
    text = a.ledger.path.read_text()
    assert "lena" not in text
    assert "$argon2" not in text  # no hash leaves the database


async def test_a_password_change_ordered_since_the_backup_is_not_undone(nodes: tuple[Node, Node]) -> None:
    """A re-attack run: an admin forced a password change on a suspected leak; a restore from an
    earlier backup let the leaked password sign in straight away."""
    a, _ = nodes
    dan = await a.add("dan")
    backup = await _row(a.db, dan.id)
    a.clock.advance(60)
    await a.accounts.require_password_change(dan.id, actor="admin:root")
    await _restore(a.db, backup)
    assert await a.signs_in("dan")
    assert (await a.replay()).passwords == 1
    assert not await a.signs_in("dan")


async def test_an_email_address_changed_since_the_backup_does_not_come_back(nodes: tuple[Node, Node]) -> None:
    """A re-attack run: a rectified address came back with a restore, and with it invitation mail and
    an identity provider's sign-in to whoever holds the old address. It is removed, never replaced by
    the new one (the ledger keeps no address)."""
    a, _ = nodes
    ann = await a.add("ann")
    await a.accounts.set_profile(ann.id, email="ann@old.example", actor="admin:root")
    backup = await _row(a.db, ann.id)
    a.clock.advance(60)
    await a.accounts.set_profile(ann.id, email="ann@new.example", actor="admin:root")
    await _restore(a.db, backup)
    restored = await a.accounts.get(ann.id)
    assert restored is not None
    assert restored.email == "ann@old.example"
    assert (await a.replay()).emails == 1
    again = await a.accounts.get(ann.id)
    assert again is not None
    assert again.email is None
    assert "example" not in a.ledger.path.read_text()
    assert (await a.replay()).changed == 0


async def test_factors_reset_since_the_backup_are_removed_again_and_a_new_one_stays(
    nodes: tuple[Node, Node],
) -> None:
    """A lost phone's authenticator app was reset; a restore brought it back."""
    a, _ = nodes
    mia = await a.add("mia")
    lost = TotpCredential(
        user_id=mia.id, name="lost phone", secret_enc="x", confirmed=True, created_at=a.clock.now()
    )
    async with a.db.session(write=True) as session:
        session.add(lost)
        await session.commit()
    backup = await _rows(a.db, TotpCredential, user_id=mia.id)
    a.clock.advance(60)
    await a.accounts.reset_mfa(mia.id, actor="admin:root")
    await _put_back(a.db, TotpCredential, backup, user_id=mia.id)
    a.clock.advance(60)
    async with a.db.session(write=True) as session:  # enrolled after the restore, before the replay
        session.add(
            TotpCredential(
                user_id=mia.id, name="new phone", secret_enc="y", confirmed=True, created_at=a.clock.now()
            )
        )
        await session.commit()

    assert (await a.replay()).factors == 1
    assert [row["name"] for row in await _rows(a.db, TotpCredential, user_id=mia.id)] == ["new phone"]
    assert (await a.replay()).changed == 0


def _factors(node: Node) -> tuple[TotpService, WebAuthnService, RecoveryCodes]:
    """The node's factor services, noting in its ledger as a gateway's do."""
    return (
        TotpService(node.db, node.keyring, MfaSettings(), node.clock, ledger=node.ledger),
        WebAuthnService(
            node.db,
            node.fast,
            WebAuthnSettings(),
            public_url="https://auth.example.com",
            audit=node.audit,
            clock=node.clock,
            ledger=node.ledger,
        ),
        RecoveryCodes(
            node.db, PasswordHasher(FAST_ARGON), MfaSettings(recovery_codes=3), node.clock, ledger=node.ledger
        ),
    )


async def _enrol(node: Node, model: Any, **values: object) -> int:
    async with node.db.session(write=True) as session:
        row = model(created_at=node.clock.now(), **values)
        session.add(row)
        await session.commit()
        return int(row.id)


async def test_a_factor_removed_since_the_backup_stays_removed(nodes: tuple[Node, Node]) -> None:
    """A lost phone's app and a stolen key's passkey were taken off the account; a restore brought
    both back. A factor enrolled after the restore under a reused row id is not touched."""
    a, b = nodes
    totp, webauthn, _ = _factors(a)
    uma = await a.add("uma")
    phone = await _enrol(a, TotpCredential, user_id=uma.id, name="lost phone", secret_enc="x", confirmed=True)
    key = await _enrol(
        a, WebAuthnCredential, user_id=uma.id, name="stolen key", credential_id=b"k1", public_key=b"p"
    )
    kept = await _enrol(
        a, WebAuthnCredential, user_id=uma.id, name="desk key", credential_id=b"k2", public_key=b"p"
    )
    backup = {
        TotpCredential: await _rows(a.db, TotpCredential, user_id=uma.id),
        WebAuthnCredential: await _rows(a.db, WebAuthnCredential, user_id=uma.id),
    }
    a.clock.advance(60)
    assert await totp.remove(uma.id, phone)
    assert await webauthn.remove(uma.id, key, ip=IP)
    for model, rows in backup.items():
        await _put_back(a.db, model, rows, user_id=uma.id)
    assert {row["id"] for row in await _rows(a.db, WebAuthnCredential, user_id=uma.id)} == {key, kept}

    assert (await b.replay()).changed == 0  # B's file had not seen them yet: the table had them
    done = await a.replay()
    assert done.removed == 2
    assert await _rows(a.db, TotpCredential, user_id=uma.id) == []
    assert [row["id"] for row in await _rows(a.db, WebAuthnCredential, user_id=uma.id)] == [kept]
    assert (await a.replay()).changed == 0
    assert "uma" not in a.ledger.path.read_text()

    # Restored again, and the phone's row id handed to an app enrolled later: that one stays.
    await _put_back(a.db, WebAuthnCredential, [], user_id=uma.id)
    a.clock.advance(60)
    again = await _enrol(
        a, TotpCredential, id=phone, user_id=uma.id, name="new phone", secret_enc="y", confirmed=True
    )
    assert again == phone
    assert (await a.replay()).removed == 0
    assert [row["name"] for row in await _rows(a.db, TotpCredential, user_id=uma.id)] == ["new phone"]


async def test_spent_and_replaced_recovery_codes_stay_void(nodes: tuple[Node, Node]) -> None:
    """A code was spent (someone saw it), then the whole sheet replaced (it was photographed); a restore
    from before either made the old codes good again."""
    a, _ = nodes
    _, _, codes = _factors(a)
    vic = await a.add("vic")
    sheet = await codes.generate(vic.id)
    backup = await _rows(a.db, RecoveryCode, user_id=vic.id)
    a.clock.advance(60)
    assert await codes.use(vic.id, sheet[0])
    await _put_back(a.db, RecoveryCode, backup, user_id=vic.id)
    assert await codes.remaining(vic.id) == 3  # the spent code is good again: what a restore alone does

    assert (await a.replay()).removed == 1
    assert not await codes.use(vic.id, sheet[0])
    assert await codes.remaining(vic.id) == 2

    a.clock.advance(60)
    await codes.generate(vic.id)
    await _put_back(a.db, RecoveryCode, backup, user_id=vic.id)
    assert (await a.replay()).codes == 1
    assert not await codes.use(vic.id, sheet[1])
    assert await codes.remaining(vic.id) == 0
    assert (await a.replay()).changed == 0


async def test_a_role_removed_since_the_backup_stays_removed(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    ned = await a.add("ned")
    await a.accounts.set_roles(ned.id, ["admin", "ops"], actor="admin:root")
    backup = await _row(a.db, ned.id)
    a.clock.advance(60)
    await a.accounts.set_roles(ned.id, ["ops"], actor="admin:root")
    await _restore(a.db, backup)
    assert (await a.accounts.get(ned.id)).roles == "admin ops"  # type: ignore[union-attr]

    assert (await a.replay()).roles == 1
    assert (await a.accounts.get(ned.id)).roles == "ops"  # type: ignore[union-attr]
    assert (await a.replay()).changed == 0


async def test_a_revoked_token_stays_revoked(nodes: tuple[Node, Node]) -> None:
    """A leaked API token was revoked; a restore brought it back to life."""
    a, b = nodes
    await a.tokens.create_account("ci", actor="admin:root")
    view, _ = await a.tokens.create_token(
        "ci", routes=["app"], lifetime=3600, known_routes=["app"], actor="admin:root"
    )
    backup = await _rows(a.db, ApiToken, prefix=view.id)
    await a.tokens.revoke_token(view.id, actor="admin:root")
    await _put_back(a.db, ApiToken, backup, prefix=view.id)
    (restored,) = await _rows(a.db, ApiToken, prefix=view.id)
    assert restored["revoked_at"] is None

    assert (await b.replay()).changed == 0  # node B's file had not seen it: nothing to make again
    done = await a.replay()
    assert done.tokens == 1
    (row,) = await _rows(a.db, ApiToken, prefix=view.id)
    assert (row["revoked_at"] is not None, row["revoked_by"]) == (True, ACTOR)
    assert (await a.replay()).changed == 0


async def test_the_tokens_of_a_deleted_service_account_stay_revoked(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    await a.tokens.create_account("deployer", actor="admin:root")
    view, _ = await a.tokens.create_token(
        "deployer", routes=["app"], lifetime=3600, known_routes=["app"], actor="admin:root"
    )
    accounts = await _rows(a.db, ServiceAccount, name="deployer")
    tokens = await _rows(a.db, ApiToken, prefix=view.id)
    await a.tokens.delete_account("deployer", actor="admin:root")
    await _put_back(a.db, ServiceAccount, accounts, name="deployer")
    await _put_back(a.db, ApiToken, tokens, prefix=view.id)

    assert (await a.replay()).tokens == 1
    (row,) = await _rows(a.db, ApiToken, prefix=view.id)
    assert row["revoked_at"] is not None


async def test_leaked_signing_keys_are_deleted_again_and_a_new_one_signs(nodes: tuple[Node, Node]) -> None:
    """`keys rotate --compromised` deleted the leaked keys; a restore brought them back."""
    from gateway.crypto.keyring import keyring_path
    from gateway.crypto.lifecycle import RotationTarget, rotate_keys
    from gateway.crypto.models import SigningKey

    a, _ = nodes
    await a.signing.ensure()
    backup = await _rows(a.db, SigningKey)
    leaked = {row["kid"] for row in backup}
    a.clock.advance(60)
    rotation = await rotate_keys(
        RotationTarget.SIGNING, signing=a.signing, keyring=a.keyring,
        keyring_file=keyring_path(parse_settings(f"public_url: https://a.example\ndata_dir: {a.ledger.path.parent}\n")),
        audit=a.audit, actor="admin:root", compromised=True, ledger=a.ledger,
    )  # fmt: skip
    assert rotation.signing is not None
    await _put_back(a.db, SigningKey, backup)
    await a.signing.load()
    assert leaked <= {key.kid for key in a.signing.current().keys}  # the leaked key signs again

    assert (await a.replay()).keys == 1
    kids = {row["kid"] for row in await _rows(a.db, SigningKey)}
    assert kids
    assert not kids & leaked
    # This worker signs with the new key at once (the others are told through the fast state).
    assert not {key.kid for key in a.signing.current().keys} & leaked
    assert (await a.replay()).changed == 0


async def test_a_replay_takes_roles_away_and_never_grants_one(nodes: tuple[Node, Node]) -> None:
    """The re-attack run: a role granted on a copy of the deployment was replayed onto production."""
    a, _ = nodes
    olga = await a.add("olga")
    backup = await _row(a.db, olga.id)
    a.clock.advance(60)
    await a.accounts.set_roles(olga.id, ["admin"], actor="admin:root")
    await _restore(a.db, backup)
    assert (await a.replay()).roles == 0
    assert (await a.accounts.get(olga.id)).roles == ""  # type: ignore[union-attr]


async def test_lines_written_for_another_copy_of_the_deployment_are_not_read(
    nodes: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    """A copy restored into another data directory (a drill, a disaster-recovery copy) has a lineage of
    its own: its lines, valid under the same keyring, are never read by the deployment it came from;
    the copy reads the deployment's."""
    a, _ = nodes
    pia = await a.add("pia")
    backup = await _row(a.db, pia.id)
    origin = await a.ledger.lineage()
    copy = AccountLedger(a.db, a.keyring, a.ledger.path.parent / "copy.jsonl", a.clock)
    copy._lineage = Lineage("c-copy", (origin.id,))  # what `gateway backup restore` elsewhere made it
    # A line the copy wrote (a disable of pia) lands in the deployment's file (a shared backup.ledger).
    await a.accounts.disable(pia.id, actor="admin:root")
    (written,) = [e for e in a.ledger.verified(read_lines(a.ledger.path), origin) if e.state == "disabled"]
    a.ledger.path.write_bytes(copy.line(replace(written, lineage="c-copy")))
    await _restore(a.db, backup)
    a.ledger._parsed = None
    done = await a.replay()
    assert done.disabled == 0
    assert await a.signs_in("pia")
    assert "written for another copy of this deployment" in caplog.text
    # The copy reads the deployment's history, and its own.
    assert [e.state for e in copy.verified(read_lines(a.ledger.path), copy._lineage)] == ["disabled"]


# -- compaction --------------------------------------------------------------------------------------


def _read(ledger: AccountLedger, lineage: Lineage) -> dict[str, Entry]:
    return merge(ledger.verified(read_lines(ledger.path), lineage))


async def test_a_compacted_file_reads_as_before_for_every_lineage(nodes: tuple[Node, Node]) -> None:
    """Every account's latest state stays, for this deployment and for a copy restored from it; what
    no reader uses goes (superseded lines, a torn line, a line whose MAC does not check)."""
    a, _ = nodes
    people = [await a.add(f"c{n}") for n in range(4)]
    for _ in range(30):
        for person in people:
            a.clock.advance(1)
            await a.accounts.disable(person.id, actor="admin:root")
            a.clock.advance(1)
            await a.accounts.enable(person.id, actor="admin:root")
    await a.accounts.disable(people[0].id, actor="admin:root")
    await a.accounts.delete(people[1].id, actor="admin:root")
    origin = await a.ledger.lineage()
    copy = Lineage("c-copy", (origin.id,))
    (mine,) = [e for e in _read(a.ledger, origin).values() if e.user_id == people[2].id]
    with a.ledger.path.open("ab") as out:
        # The copy's own later disable of one of them (valid under the keyring, read by the copy only).
        out.write(
            a.ledger.line(replace(mine, state="disabled", at=mine.at.replace(year=2027), lineage="c-copy"))
        )
        out.write(b'{"account": "k1:00", "user_id": 1, "sta\n')
        forged = json.loads(a.ledger.line(mine))
        out.write(json.dumps({**forged, "state": "erased", "mac": "0" * 64}).encode() + b"\n")
        # Under a keyring key this process does not hold yet (a rotation elsewhere): not judged, kept.
        unknown = json.dumps({**forged, "state": "disabled", "mac_kid": "k-later"}).encode()
        out.write(unknown + b"\n")
    before = {lineage: _read(a.ledger, lineage) for lineage in (origin, copy)}
    lines_before = len(a.ledger.path.read_bytes().splitlines())

    done = await a.ledger.compact()

    assert done is not None
    assert done[0] == lines_before
    assert {lineage: _read(a.ledger, lineage) for lineage in (origin, copy)} == before
    assert len(a.ledger.path.read_bytes().splitlines()) == done[1] < lines_before / 10
    assert before[copy] != before[origin]  # the copy's line is kept, and still read by the copy only
    assert unknown in a.ledger.path.read_bytes().splitlines()
    assert stat.S_IMODE(os.stat(a.ledger.path).st_mode) == 0o600
    assert [p.name for p in a.ledger.path.parent.iterdir() if ".compact-" in p.name] == []
    # Compacted again: nothing left to drop.
    assert await a.ledger.compact() is None


async def test_the_sync_compacts_a_long_file_and_a_restore_still_gets_its_changes(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    ivan = await a.add("ivan")
    backup = await _row(a.db, ivan.id)
    for _ in range(40):
        a.clock.advance(1)
        await a.accounts.disable(ivan.id, actor="admin:root")
        a.clock.advance(1)
        await a.accounts.enable(ivan.id, actor="admin:root")
    await a.accounts.disable(ivan.id, actor="admin:root")
    a.ledger._compact_above = 50  # COMPACT_AT lines, scaled down
    await a.ledger.sync()
    assert len(a.ledger.path.read_bytes().splitlines()) == 1
    await _restore(a.db, backup)
    assert (await a.replay()).disabled == 1
    assert not await a.signs_in("ivan")


def test_appends_racing_a_compaction_are_all_kept(nodes: tuple[Node, Node]) -> None:
    """A process appending while another compacts: the appender waits for the lock, then writes to
    the file the path names (the new one), never to the one renamed away."""
    a, _ = nodes
    lineage = Lineage("root")
    a.ledger._lineage = lineage
    base = datetime(2026, 12, 1, tzinfo=UTC)
    old = [
        Entry(f"k:{n % 5}", 0, "token-revoked", base.replace(second=n % 60), ref=str(n)) for n in range(300)
    ]
    ledger_module._append(a.ledger.path, b"".join(a.ledger.line(replace(e, lineage="root")) for e in old))
    fresh = [Entry(f"k:new{n}", 0, "token-revoked", base, ref="x", lineage="root") for n in range(200)]

    def appender() -> None:
        for entry in fresh:
            ledger_module._append(a.ledger.path, a.ledger.line(entry))

    with ThreadPoolExecutor(max_workers=3) as pool:
        writing = pool.submit(appender)
        compactions = [pool.submit(a.ledger._compact_file) for _ in range(20)]
        writing.result()
        for done in compactions:
            done.result()
    read = _read(a.ledger, lineage)
    assert {e.account for e in fresh} <= set(read)
    assert len([k for k in read if not k.startswith("k:new")]) == 5


async def test_a_withdrawal_waits_for_its_purpose_to_be_configured_again(
    nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-attack run: the purpose was left out of the configuration at the first start after the
    restore; the withdrawal was settled unmade, and once the purpose was back the restored consent was
    in force for good. It waits for the configuration that has the purpose."""
    a, _ = nodes
    consents = a.consents
    liz = await a.add("liz")
    await consents.record(liz.id, NEWSLETTER, "granted", "sign-in prompt", actor="user:liz")
    backup = (await _row(a.db, liz.id), await _consents(a.db, liz.id))
    a.clock.advance(60)
    await consents.record(liz.id, NEWSLETTER, "withdrawn", "account page", actor="user:liz")
    await _restore(a.db, backup[0])
    await _put_back(a.db, ConsentRecord, backup[1], user_id=liz.id)

    with monkeypatch.context() as configured:
        # The newsletter left out of the configuration (the nodes' Consents read PURPOSES each call).
        configured.setattr(sys.modules[__name__], "PURPOSES", SETTINGS.purposes)
        assert (await a.replay()).withdrawals == 0
    assert (await a.replay()).withdrawals == 1
    now = await a.accounts.get(liz.id)
    assert now is not None
    assert NEWSLETTER.name in await consents.optout_of(now)
