"""The account ledger after a keyring key is marked compromised: whoever holds the leaked key can MAC
any line under it, so such a line is no longer read, and the changes written before the mark are
written again under the new key (from the table, never from the file), so a restore still makes them.

The attack: with the leaked key and write access to a node's ledger file, forge an ``erased`` line for
an account; a gateway started on a restored database would erase it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.crypto.lifecycle import LedgerUnsettled, Rotation, RotationTarget, rotate_keys
from gateway.identity.ledger import AccountLedger, Entry, Lineage, merge, read_lines
from gateway.identity.models import User
from gateway.privacy.register import Channel
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState
from tests.unit.privacy.test_account_ledger import SETTINGS, Node, _node, _restore, _row

KEYRING = "keyring.json"


@pytest.fixture
async def pair(database: Database, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes of one deployment: the shared database and keyring file, a ledger file each."""
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    fast = MemoryFastState(clock=clock)
    keyring = Keyring.create(tmp_path / KEYRING)
    try:
        yield (
            _node(database, clock, keyring, fast, tmp_path / "a" / "account-ledger.jsonl"),
            _node(database, clock, keyring, fast, tmp_path / "b" / "account-ledger.jsonl"),
        )
    finally:
        await fast.close()


async def _rotate(node: Node, tmp_path: Path, *, compromised: bool) -> Rotation:
    """`gateway keys rotate --keyring [--compromised]` on ``node``."""
    node.clock.advance(60)
    rotation = await rotate_keys(
        RotationTarget.KEYRING, signing=node.signing, keyring=node.keyring, keyring_file=tmp_path / KEYRING,
        audit=node.audit, actor="admin:root", compromised=compromised, ledger=node.ledger, clock=node.clock,
    )  # fmt: skip
    assert rotation.keyring_key == node.keyring.active_id
    return rotation


def _attacker(node: Node, leaked: str) -> AccountLedger:
    """A ledger under a keyring holding only the leaked key: all its holder can MAC with."""
    stolen = Keyring({leaked: node.keyring._keys[leaked]}, leaked)
    return AccountLedger(node.db, stolen, node.ledger.path, node.clock)


async def _forge_erasure(node: Node, target: User, path: Path, leaked: str) -> None:
    """Append to ``path`` an erasure of ``target`` MACed under the leaked key, later than anything."""
    attacker = _attacker(node, leaked)
    lineage = (await node.ledger.lineage()).id
    entry = Entry(
        attacker.key(target), target.id, "erased", datetime(2099, 1, 1, tzinfo=UTC), "FORGED", lineage
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        out.write(attacker.line(entry))


def _kids(path: Path) -> set[str]:
    return {str(json.loads(line)["mac_kid"]) for line in path.read_bytes().splitlines()}


def _states(ledger: AccountLedger, lineage: Lineage) -> dict[int, str]:
    return {e.user_id: e.state for e in merge(ledger.verified(read_lines(ledger.path), lineage)).values()}


async def test_a_line_forged_under_a_compromised_key_is_not_replayed(
    pair: tuple[Node, Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A forged erasure, written before the mark (the leak went unnoticed for a while) into a node's
    file, or after it: neither erases the account on a restored database, and the one written before
    is not written again under the new key (the table, not the file, vouches for what is)."""
    a, b = pair
    alice, bob = await a.add("alice"), await a.add("bob")
    backup = [await _row(a.db, alice.id), await _row(a.db, bob.id)]
    leaked = a.keyring.active_id
    await _forge_erasure(a, alice, b.ledger.path, leaked)
    await b.ledger.file()  # node b parsed its file before the mark: that reading must not stay in use

    rotation = await _rotate(a, tmp_path, compromised=True)

    assert rotation.keyring_compromised == leaked
    await _forge_erasure(a, bob, a.ledger.path, leaked)
    await _restore(a.db, *backup)
    for node in (b, a):
        done = await node.replay()
        assert (done.erased, done.changed) == (0, 0)
    assert await a.signs_in("alice")
    assert await a.signs_in("bob")
    assert "marked compromised; ignored" in caplog.text
    # Node b's sync dropped the forgery, and wrote nothing in its place.
    assert b"FORGED" not in b.ledger.path.read_bytes()


async def test_a_change_made_before_the_mark_is_still_made_again_after_it(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    """The erasures and disables in every node's file before the mark are written again under the new
    key: on the node that marked at once, on the others at their next sync; a restore still makes them."""
    a, b = pair
    carol, dave = await a.add("carol"), await a.add("dave")
    backup = [await _row(a.db, carol.id), await _row(a.db, dave.id)]
    await a.privacy.erase(
        carol, settings=SETTINGS, channel=Channel.PORTAL, actor="user:carol", verified_by="signed-in session"
    )
    await a.accounts.disable(dave.id, actor="admin:root")
    await b.ledger.sync()  # node b's copy of the changes, under the key about to leak
    leaked = a.keyring.active_id
    assert _kids(a.ledger.path) == _kids(b.ledger.path) == {leaked}

    rotation = await _rotate(a, tmp_path, compromised=True)

    new = rotation.keyring_key
    assert _kids(a.ledger.path) == {new}  # the marking node's file, at the mark
    assert _kids(a.ledger.quarantine) == {leaked}  # the old lines moved aside, as evidence
    await b.ledger.sync()
    assert _kids(b.ledger.path) == {new}  # every other node's, at its next sync
    lineage = await a.ledger.lineage()
    for node in (a, b):
        assert _states(node.ledger, lineage) == {carol.id: "erased", dave.id: "disabled"}

    await _restore(a.db, *backup)
    assert await a.signs_in("dave")  # what a restore alone does
    done = await b.replay()
    assert (done.erased, done.disabled) == (1, 1)
    assert await a.accounts.find("carol") is None
    assert not await a.signs_in("dave")


async def test_an_ordinary_keyring_rotation_keeps_every_line_readable(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    """Without a leak, the lines under the older key stay as they are and are read as before."""
    a, _ = pair
    erin, finn = await a.add("erin"), await a.add("finn")
    backup = [await _row(a.db, erin.id), await _row(a.db, finn.id)]
    await a.accounts.disable(erin.id, actor="admin:root")
    old = a.keyring.active_id
    before = a.ledger.path.read_bytes()

    rotation = await _rotate(a, tmp_path, compromised=False)

    assert rotation.keyring_compromised is None
    await a.accounts.delete(finn.id, actor="admin:root")
    assert a.ledger.path.read_bytes().startswith(before)
    assert _kids(a.ledger.path) == {old, a.keyring.active_id}
    await _restore(a.db, *backup)
    done = await a.replay()
    assert (done.disabled, done.deleted) == (1, 1)
    assert not await a.signs_in("erin")
    assert not await a.signs_in("finn")


async def test_a_mark_is_refused_while_a_restored_database_lacks_the_files_changes(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    """A re-attack run restored a backup, rotated the leaked keyring at once and then started the
    gateway: the disable made since the backup was only in the file, under the marked key, and was
    lost with it. The mark waits until a gateway has made the file's changes again."""
    a, _ = pair
    carol = await a.add("carol")
    backup = [await _row(a.db, carol.id)]
    await a.accounts.disable(carol.id, actor="admin:root")
    await _restore(a.db, *backup)
    keyring_file = (tmp_path / KEYRING).read_bytes()

    with pytest.raises(LedgerUnsettled, match=r"1 change\(s\) the database lacks"):
        await _rotate(a, tmp_path, compromised=True)

    assert (tmp_path / KEYRING).read_bytes() == keyring_file  # nothing rotated, nothing marked
    assert (await a.replay()).disabled == 1  # a gateway started on the restored database
    await _rotate(a, tmp_path, compromised=True)
    await _restore(a.db, *backup)
    assert (await a.replay()).disabled == 1  # written again under the new key: still made again
    assert not await a.signs_in("carol")


async def test_marked_lines_stay_while_the_tables_could_not_be_written_again(
    pair: tuple[Node, Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the table's entries cannot be appended under the new key, so the lines under the
    marked key are not dropped either (the next sync does both); the change is never in neither form."""
    import gateway.identity.ledger as ledger_module

    a, _ = pair
    dave = await a.add("dave")
    await a.accounts.disable(dave.id, actor="admin:root")
    leaked = a.keyring.active_id
    real_append = ledger_module._append

    def full_disk(path: Path, data: bytes) -> None:
        if path == a.ledger.path:  # the ledger's own appends; the quarantine beside it still writes
            raise OSError(28, "No space left on device")
        real_append(path, data)

    monkeypatch.setattr(ledger_module, "_append", full_disk)
    await _rotate(a, tmp_path, compromised=True)
    assert _kids(a.ledger.path) == {leaked}  # kept: nothing took its place

    monkeypatch.setattr(ledger_module, "_append", real_append)
    await a.ledger.sync()
    assert _kids(a.ledger.path) == {a.keyring.active_id}


async def test_a_factor_line_naming_no_possible_row_is_not_made_again(pair: tuple[Node, Node]) -> None:
    """A re-attack run's line, MACed with the leaked (still active) key, named row 10**20: the database
    refused the number and every gateway's start stopped there."""
    from gateway.factors import ledgered

    a, _ = pair
    for ref in ("totp:99999999999999999999999", "webauthn:\u00b2", "code:-1", "totp:" + "9" * 5000):
        entry = Entry("x:forged", 1, "factor-removed", datetime(2026, 12, 1, tzinfo=UTC), ref, "root")
        assert await ledgered.make_again(a.db, a.ledger, entry) is False
