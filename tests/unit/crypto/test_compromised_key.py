"""A keyring key that leaked: marked compromised, it still decrypts, but nothing it signs afterwards is
trusted (the backups attack run forged a newer backup with a copy of the old keyring file, and `backup
verify` chose it and `restore` brought it in)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.audit.chain import verify_database
from gateway.audit.trail import AuditLog
from gateway.backup.archive import create_backup
from gateway.backup.manifest import BackupError
from gateway.backup.sets import find_backup, list_backups, vouching
from gateway.backup.verify import restore_backup, verify_backup
from gateway.clock import FakeClock
from gateway.crypto.keyring import Compromise, Keyring, KeyringError
from gateway.crypto.lifecycle import LeakTimeRefused, RotationTarget, mark_compromised, rotate_keys
from gateway.crypto.signing import SigningKeys
from gateway.settings.schema import AssertionSettings, Duration
from tests.unit.backup.helpers import Node, make_node

SETTINGS = AssertionSettings(ttl=Duration(300), grace=Duration(3600), publish_ahead=Duration(600))


def _mark(seq: int = 0, **backups: str) -> Compromise:
    return Compromise("2026-12-06T20:00:00+00:00", seq, backups)


# -- the keyring file ----------------------------------------------------------------------------------


def test_a_marked_key_still_decrypts_but_never_becomes_active_again(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    old = keyring.active_id
    secret = keyring.encrypt(b"seed", aad=b"totp:1")
    keyring.rotate(path)
    with pytest.raises(KeyringError, match="active key"):
        keyring.mark_compromised(path, keyring.active_id, _mark())
    with pytest.raises(KeyringError, match="no key"):
        keyring.mark_compromised(path, "knothere", _mark())

    keyring.mark_compromised(path, old, _mark(7, b1="ab"))
    again = Keyring.load(path)
    assert again.compromised[old] == _mark(7, b1="ab")
    assert again.decrypt(secret, aad=b"totp:1") == b"seed"
    with pytest.raises(KeyringError, match="compromised"):
        again.activate(path, old)
    # A mark stays what it was: a second mark would vouch for what the leaked key signed since.
    again.mark_compromised(path, old, _mark(99, b2="cd"))
    assert Keyring.load(path).compromised[old] == _mark(7, b1="ab")


def test_an_earlier_leak_narrows_a_mark_and_a_later_one_never_widens_it(tmp_path: Path) -> None:
    """A re-attack run marked a key again with an earlier leak time: the audit record said so, and the
    file kept the later one, vouching for the backups made in between."""
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    old = keyring.active_id
    keyring.rotate(path)
    at = "2026-12-06T20:00:00+00:00"
    keyring.mark_compromised(
        path, old, Compromise(at, 7, {"b1": "ab", "b2": "cd"}, "h7", "2026-12-05T00:00:00+00:00")
    )

    # Found out later that it leaked on the 1st: b2 was made after that.
    keyring.mark_compromised(
        path, old, Compromise("2026-12-07T09:00:00+00:00", 9, {"b1": "ab"}, "h9", "2026-12-01T00:00:00+00:00")
    )
    narrowed = Keyring.load(path).compromised[old]
    assert (narrowed.at, narrowed.audit_seq, narrowed.audit_hash) == (at, 7, "h7")  # the first mark's
    assert narrowed.leaked_since == "2026-12-01T00:00:00+00:00"
    assert dict(narrowed.backups) == {"b1": "ab"}

    # A later leak time, a mark without one, a backup vouched only now: nothing widens.
    keyring.mark_compromised(
        path,
        old,
        Compromise(
            "2026-12-07T10:00:00+00:00", 11, {"b1": "ab", "b3": "ef"}, "h11", "2026-12-03T00:00:00+00:00"
        ),
    )
    keyring.mark_compromised(path, old, Compromise("2026-12-07T11:00:00+00:00", 12, {"b3": "ef"}))
    assert Keyring.load(path).compromised[old] == narrowed


def test_a_process_that_loaded_the_file_before_the_mark_cannot_drop_it(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    stale = Keyring.create(path)
    old = stale.active_id
    marker = Keyring.load(path)
    marker.rotate(path)
    marker.mark_compromised(path, old, _mark(3))
    # The stale copy still has the old key active; its rotation rewrites the file with the mark kept.
    stale.rotate(path)
    assert old in Keyring.load(path).compromised
    assert old in stale.compromised


def test_a_file_whose_active_key_is_marked_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    doc = json.loads(path.read_text())
    doc["compromised"] = {keyring.active_id: _mark().document()}
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="marked compromised"):
        Keyring.load(path)
    doc["compromised"] = {keyring.active_id: {"at": "x"}}
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="audit_seq"):
        Keyring.load(path)
    # A mark's time is read once, where the file is: every check after it compares times.
    doc["compromised"] = {keyring.active_id: {"at": "yesterday", "audit_seq": 1}}
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="ISO 8601"):
        Keyring.load(path)


def test_a_running_process_takes_the_mark_up_when_it_reads_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    running = Keyring.create(path)
    old = running.active_id
    cli = Keyring.load(path)
    cli.rotate(path)
    cli.mark_compromised(path, old, _mark())
    running.reload()
    assert running.active_id == cli.active_id
    assert old in running.compromised


# -- backups -------------------------------------------------------------------------------------------


async def _node(tmp_path: Path, clock: FakeClock) -> tuple[Node, Path]:
    node = await make_node(tmp_path / "live", clock, records=3)
    return node, node.data_dir / "keys" / "keyring.json"


async def _made(node: Node, backups: Path, keyring: Keyring, clock: FakeClock) -> Path:
    """A backup, recorded as the gateway records one (``backup.created``)."""
    manifest, path = create_backup(node.database, node.data_dir, backups, keyring, clock)
    await node.audit.record("backup.created", actor="cli:test", details=manifest.summary())
    return path


async def _rotate_compromised(node: Node, keyring_file: Path, backups: Path, clock: FakeClock) -> str:
    old = node.keyring.active_id
    rotation = await rotate_keys(
        RotationTarget.KEYRING, signing=SigningKeys(node.db, node.keyring, clock, SETTINGS),
        keyring=node.keyring, keyring_file=keyring_file, audit=node.audit, actor="cli:root",
        compromised=True, backups_signed=vouching(backups, node.keyring, node.audit, clock), clock=clock,
    )  # fmt: skip
    assert rotation.keyring_compromised == old
    return old


async def test_a_backup_forged_with_the_leaked_key_is_refused_and_never_the_newest(
    tmp_path: Path, clock: FakeClock
) -> None:
    node, keyring_file = await _node(tmp_path, clock)
    backups = tmp_path / "backups"
    try:
        trusted = await _made(node, backups, node.keyring, clock)
        stolen = Keyring.load(shutil.copy(keyring_file, tmp_path / "stolen.json"))
        old = await _rotate_compromised(node, keyring_file, backups, clock)
        assert set(node.keyring.compromised[old].backups) == {trusted.name}

        # What the attack run did: a newer backup, made and signed with the copy of the old file.
        clock.advance(3600)
        forged_manifest, forged = create_backup(node.database, node.data_dir, backups, stolen, clock)
        assert forged_manifest.key_id == old
    finally:
        await node.db.close()

    keyring = Keyring.load(keyring_file)
    with pytest.raises(BackupError, match="marked compromised"):
        await verify_backup(forged, keyring)
    with pytest.raises(BackupError, match="marked compromised"):
        await restore_backup(forged, keyring, tmp_path / "restored")
    assert not (tmp_path / "restored" / "gateway.db").exists()
    # verify, restore and drills without an id take the newest trusted backup: not the forgery.
    assert [s.path for s in list_backups(backups, signed_with=keyring)] == [trusted]
    assert find_backup(backups, None, signed_with=keyring) == trusted
    # What the key had signed before it was marked still verifies and restores.
    assert (await verify_backup(trusted, keyring)).audit_records >= 3


async def test_a_trusted_backups_manifest_re_signed_with_the_leaked_key_is_refused(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The same backup id, another manifest (the database part swapped for a forged one, say)."""
    from gateway.backup.manifest import manifest_bytes, parse_manifest

    node, keyring_file = await _node(tmp_path, clock)
    backups = tmp_path / "backups"
    try:
        trusted = await _made(node, backups, node.keyring, clock)
        stolen = Keyring.load(shutil.copy(keyring_file, tmp_path / "stolen.json"))
        await _rotate_compromised(node, keyring_file, backups, clock)
    finally:
        await node.db.close()
    manifest, _doc = parse_manifest((trusted / "manifest.json").read_bytes())
    from dataclasses import replace

    (trusted / "manifest.json").write_bytes(manifest_bytes(replace(manifest, audit_head_seq=1), stolen))
    with pytest.raises(BackupError, match="marked compromised"):
        await verify_backup(trusted, Keyring.load(keyring_file))


# -- the audit chain -----------------------------------------------------------------------------------


async def test_a_record_keyed_with_the_leaked_key_after_the_mark_is_named(
    tmp_path: Path, clock: FakeClock
) -> None:
    node, keyring_file = await _node(tmp_path, clock)
    # A second process that loaded the file before the rotation (a worker of the running gateway).
    worker = AuditLog(node.db, clock=clock, keyring=Keyring.load(keyring_file))
    stolen = Keyring.load(shutil.copy(keyring_file, tmp_path / "stolen.json"))
    try:
        old = await _rotate_compromised(node, keyring_file, tmp_path / "backups", clock)
        mark = Keyring.load(keyring_file).compromised[old]
        (rotated,) = await node.audit.events(kind="keys.rotated")
        assert rotated.seq == mark.audit_seq + 1
        assert rotated.key_id == node.keyring.active_id != old

        # The worker meets a head keyed under another key: it goes on under the file's active key,
        # so a gateway that had not read the rotation yet raises no false alarm.
        await worker.record("signin.success", actor="user:kim", subject="kim")
        (signed_in,) = await worker.events(kind="signin.success")
        assert signed_in.key_id == node.keyring.active_id
        assert (await verify_database(node.db, keyring=Keyring.load(keyring_file))).problem is None

        # Whoever holds the copy of the old file keys a record under the leaked key.
        forger = AuditLog(node.db, clock=clock, keyring=_only(stolen))
        await forger.record("admin.policy.import", actor="user:boss", subject="policy")
        report = await verify_database(node.db, keyring=Keyring.load(keyring_file))
    finally:
        await node.db.close()
    assert report.problem is not None
    assert report.problem.seq == signed_in.seq + 1
    assert "marked compromised" in report.problem.what


def _only(keyring: Keyring) -> Keyring:
    """The stolen keyring as the attacker holds it: key material, no file to read again."""
    return Keyring({kid: keyring._keys[kid] for kid in keyring.key_ids}, keyring.active_id)


async def test_a_key_rotated_out_earlier_can_be_marked_later(tmp_path: Path, clock: FakeClock) -> None:
    node, keyring_file = await _node(tmp_path, clock)
    backups = tmp_path / "backups"
    try:
        trusted = await _made(node, backups, node.keyring, clock)
        old = node.keyring.active_id
        node.keyring.rotate(keyring_file)
        with pytest.raises(KeyringError, match="active key"):
            await mark_compromised(
                node.keyring, keyring_file, node.keyring.active_id, audit=node.audit, actor="cli:root",
                backups_signed=None,
            )  # fmt: skip
        mark = await mark_compromised(
            node.keyring, keyring_file, old, audit=node.audit, actor="cli:root",
            backups_signed=vouching(backups, node.keyring, node.audit, clock), clock=clock,
        )  # fmt: skip
        (event,) = await node.audit.events(kind="keys.compromised")
    finally:
        await node.db.close()
    signed = json.loads((trusted / "manifest.json").read_text())["signature"]["mac"]
    assert dict(mark.backups) == {trusted.name: signed}
    assert json.loads(event.details) == {"keyring_key_compromised": old, "backups_vouched": 1}
    assert event.seq == mark.audit_seq + 1


async def test_a_re_marks_record_says_what_the_keyring_holds(tmp_path: Path, clock: FakeClock) -> None:
    """A re-attack run re-marked a key with a later leak time, then with none: the audit records named
    what was asked (the record's details are encoded before the mark is made), while the file kept the
    earlier leak time."""
    node, keyring_file = await _node(tmp_path, clock)
    try:
        old = node.keyring.active_id
        node.keyring.rotate(keyring_file)
        first, later, earlier = (datetime(2026, 12, day, 8, tzinfo=UTC) for day in (3, 4, 2))
        for since in (first, later, None, earlier):
            clock.advance(60)
            await mark_compromised(
                node.keyring, keyring_file, old, audit=node.audit, actor="cli:root", backups_signed=None,
                clock=clock, leaked_since=since,
            )  # fmt: skip
        events = [json.loads(e.details) for e in reversed(await node.audit.events(kind="keys.compromised"))]
    finally:
        await node.db.close()
    assert [e.get("leaked_since") for e in events] == [
        "2026-12-03T08:00:00+00:00",
        "2026-12-03T08:00:00+00:00",  # a later leak widens nothing
        "2026-12-03T08:00:00+00:00",  # nor does a mark without one
        "2026-12-02T08:00:00+00:00",  # an earlier one narrows it
    ]
    assert "marked_before_at" not in events[0]
    assert all(e["marked_before_at"] == Keyring.load(keyring_file).compromised[old].at for e in events[1:])
    assert Keyring.load(keyring_file).compromised[old].leaked_since == "2026-12-02T08:00:00+00:00"


async def test_backups_made_since_the_leak_are_not_vouched_when_its_time_is_known(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The last note's open item: what the leaked key signed before the mark cannot be told from the
    gateway's own work (with database access its holder records a planted backup as made by the
    gateway). The operator who knows when it leaked says so, and nothing made since is vouched for."""
    node, keyring_file = await _node(tmp_path, clock)
    backups = tmp_path / "backups"
    try:
        before = await _made(node, backups, node.keyring, clock)
        clock.advance(3600)
        leaked = clock.now()
        stolen = Keyring.load(shutil.copy(keyring_file, tmp_path / "stolen.json"))
        clock.advance(3600)
        made_since = await _made(node, backups, node.keyring, clock)
        # The attacker's: dated before the leak by a clock turned back, recorded as the gateway's.
        clock.t -= 3 * 3600
        manifest, planted = create_backup(node.database, node.data_dir, backups, stolen, clock)
        clock.t += 3 * 3600
        await node.audit.record("backup.created", actor="cli:root", details=manifest.summary())
        old = node.keyring.active_id
        node.keyring.rotate(keyring_file)
        signed = vouching(backups, node.keyring, node.audit, clock)
        assert set(await signed(old, None)) == {before.name, made_since.name, planted.name}
        with pytest.raises(LeakTimeRefused, match="future"):
            await mark_compromised(
                node.keyring, keyring_file, old, audit=node.audit, actor="cli:root", backups_signed=signed,
                clock=clock, leaked_since=datetime.fromtimestamp(clock.t + 60, UTC),
            )  # fmt: skip
        assert old not in Keyring.load(keyring_file).compromised
        mark = await mark_compromised(
            node.keyring, keyring_file, old, audit=node.audit, actor="cli:root", backups_signed=signed,
            clock=clock, leaked_since=leaked,
        )  # fmt: skip
        (event,) = await node.audit.events(kind="keys.compromised")
    finally:
        await node.db.close()
    assert set(mark.backups) == {before.name}
    assert mark.leaked_since == leaked.isoformat(timespec="seconds")
    keyring = Keyring.load(keyring_file)
    assert keyring.compromised[old] == mark  # the file keeps the leak's time
    assert json.loads(event.details)["leaked_since"] == mark.leaked_since
    for refused in (made_since, planted):
        with pytest.raises(BackupError, match="marked compromised"):
            await verify_backup(refused, keyring)
    assert (await verify_backup(before, keyring)).audit_records >= 3


async def test_a_rotation_that_died_after_writing_the_file_raises_no_false_alarm(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A re-attack run: the rotating process died after marking the file, before its audit record and
    before telling the workers, which went on keying records under the marked key (audit verify failed
    for ever). A worker now reads the file again when it changed."""
    node, keyring_file = await _node(tmp_path, clock)
    worker = AuditLog(node.db, clock=clock, keyring=Keyring.load(keyring_file))
    try:
        cli = Keyring.load(keyring_file)
        old = cli.active_id
        cli.rotate(keyring_file)
        cli.mark_compromised(keyring_file, old, _mark(3))  # the process dies here
        await worker.record("signin.failure", actor="user:kim", subject="kim")
        (failed,) = await worker.events(kind="signin.failure")
        assert failed.key_id == cli.active_id
        assert (await verify_database(node.db, keyring=Keyring.load(keyring_file))).problem is None
    finally:
        await node.db.close()


async def test_a_rotation_whose_mark_fails_says_which_key_to_mark(tmp_path: Path, clock: FakeClock) -> None:
    """A re-attack run: the attacker held the database's lock; the mark failed after the new key was made
    active, and running the rotation again marked the new key. The error names the leaked one."""
    from gateway.store.db import StoreUnavailable

    node, keyring_file = await _node(tmp_path, clock)
    old = node.keyring.active_id

    class Locked:
        async def record(self, *_a: object, **_k: object) -> None: ...

        async def record_at_head(self, *_a: object, **_k: object) -> None:
            raise StoreUnavailable("audit trail: database is locked")

    try:
        with pytest.raises(KeyringError, match=f"mark-compromised {old}") as failed:
            await rotate_keys(
                RotationTarget.KEYRING, signing=SigningKeys(node.db, node.keyring, clock, SETTINGS),
                keyring=node.keyring, keyring_file=keyring_file, audit=Locked(), actor="cli:root",
                compromised=True, backups_signed=None,
            )  # fmt: skip
        assert "is NOT marked compromised" in str(failed.value.detail)
    finally:
        await node.db.close()


async def test_backups_planted_with_the_leaked_key_before_the_mark_are_not_vouched_for(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A re-attack run: with the leaked key, before the rotation, backups dated 2099 were planted; the
    mark vouched for them, verify chose them as the newest, and pruning deleted every real backup. Only
    backups the audit trail records making, and none dated after the mark, are vouched for."""
    node, keyring_file = await _node(tmp_path, clock)
    backups = tmp_path / "backups"
    try:
        trusted = await _made(node, backups, node.keyring, clock)
        stolen = Keyring.load(shutil.copy(keyring_file, tmp_path / "stolen.json"))
        _, unrecorded = create_backup(node.database, node.data_dir, backups, stolen, clock)
        future = FakeClock(4_070_908_800.0)  # 2099
        dated = await _made(node, backups, stolen, future)  # even with its record forged too
        old = await _rotate_compromised(node, keyring_file, backups, clock)
        clock.advance(60)
        after = await _made(node, backups, node.keyring, clock)
    finally:
        await node.db.close()
    keyring = Keyring.load(keyring_file)
    assert set(keyring.compromised[old].backups) == {trusted.name}
    assert {unrecorded.name, dated.name}.isdisjoint(keyring.compromised[old].backups)
    assert find_backup(backups, None, signed_with=keyring) == after
    assert [s.path for s in list_backups(backups, signed_with=keyring)] == [trusted, after]


async def test_the_chain_rewritten_up_to_the_mark_and_cut_there_is_named(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A re-attack run: with the leaked key, record audit_seq was rewritten and every record after it
    (the rotation's own record included) deleted; audit verify said OK. The mark keeps the head's hash."""
    from dataclasses import replace

    from sqlalchemy import delete, select, update

    from gateway.audit.chain import ChainRecord, chain_keys
    from gateway.audit.models import AuditEvent

    node, keyring_file = await _node(tmp_path, clock)
    stolen = Keyring.load(shutil.copy(keyring_file, tmp_path / "stolen.json"))
    try:
        old = await _rotate_compromised(node, keyring_file, tmp_path / "backups", clock)
        mark = Keyring.load(keyring_file).compromised[old]
        assert mark.audit_hash
        async with node.db.session() as session:
            row = (await session.scalars(select(AuditEvent).where(AuditEvent.seq == mark.audit_seq))).one()
            forged = replace(ChainRecord.of(row), details='{"FORGED": true}')
            keys = chain_keys(_only(stolen))
            assert keys is not None
            await session.execute(
                update(AuditEvent)
                .where(AuditEvent.id == row.id)
                .values(details=forged.details, record_hash=forged.digest(keys))
            )
            await session.execute(delete(AuditEvent).where(AuditEvent.seq > mark.audit_seq))
            await session.commit()
        rewritten = await verify_database(node.db, keyring=Keyring.load(keyring_file))
        async with node.db.session() as session:
            await session.execute(delete(AuditEvent).where(AuditEvent.seq >= mark.audit_seq))
            await session.commit()
        cut = await verify_database(node.db, keyring=Keyring.load(keyring_file))
    finally:
        await node.db.close()
    assert rewritten.problem is not None
    assert "rewritten up to there" in rewritten.problem.what
    assert cut.problem is not None
    assert "records were cut" in cut.problem.what


async def test_a_restore_to_before_the_mark_rewinds_its_anchor_only_when_the_gateway_restored_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A backup from before the mark, restored: the chain goes on from the backup's head and passes
    record audit_seq with another record; its backup.restored record, keyed under the new key, says
    so. One keyed with the leaked key does not."""
    from sqlalchemy import delete

    from gateway.audit.models import AuditEvent

    # The gateway's own restore (the node's keyring, after the rotation): the anchor is rewound.
    node, keyring_file = await _node(tmp_path / "own", clock)
    try:
        old = await _rotate_compromised(node, keyring_file, tmp_path / "backups", clock)
        mark = Keyring.load(keyring_file).compromised[old]
        stolen = Keyring({old: Keyring.load(keyring_file)._keys[old]}, old)
        async with node.db.session() as session:
            await session.execute(delete(AuditEvent).where(AuditEvent.seq > mark.audit_seq - 2))
            await session.commit()
        clock.advance(60)
        forged = AuditLog(node.db, clock=clock, keyring=stolen)
        await forged.record("backup.restored", actor="cli:root")
        for _ in range(4):
            await forged.record("signin.success", actor="user:kim", subject="kim")
        by_thief = await verify_database(node.db, keyring=Keyring.load(keyring_file))
        async with node.db.session() as session:
            await session.execute(delete(AuditEvent).where(AuditEvent.seq > mark.audit_seq - 2))
            await session.commit()
        await node.audit.record("backup.restored", actor="cli:root")
        for _ in range(4):
            await node.audit.record("signin.success", actor="user:kim", subject="kim")
        by_gateway = await verify_database(node.db, keyring=Keyring.load(keyring_file))
    finally:
        await node.db.close()
    assert by_thief.problem is not None
    assert by_gateway.problem is None, by_gateway.problem


async def _rewind_to(node: Node, seq: int) -> None:
    """The database as a backup whose last record was ``seq`` had it (what a restore brings back)."""
    from sqlalchemy import delete

    from gateway.audit.models import AuditEvent

    async with node.db.session() as session:
        await session.execute(delete(AuditEvent).where(AuditEvent.seq > seq))
        await session.commit()


async def test_the_older_keys_of_a_leaked_file_are_marked_with_it(tmp_path: Path, clock: FakeClock) -> None:
    """A re-attack run: the leaked file held an older key too (rotated out before the leak, never
    marked), and every forgery worked again through it."""
    node, keyring_file = await _node(tmp_path, clock)
    backups = tmp_path / "backups"
    try:
        older = node.keyring.active_id
        node.keyring.rotate(keyring_file)  # an ordinary rotation before the leak
        stolen = Keyring.load(shutil.copy(keyring_file, tmp_path / "stolen.json"))
        leaked = await _rotate_compromised(node, keyring_file, backups, clock)
        keyring = Keyring.load(keyring_file)
        assert set(keyring.compromised) == {older, leaked}
        by_older = Keyring({older: stolen._keys[older]}, older)
        clock.advance(60)
        _, forged = create_backup(node.database, node.data_dir, backups, by_older, clock)
        await AuditLog(node.db, clock=clock, keyring=by_older).record("user.created", actor="cli:root")
        report = await verify_database(node.db, keyring=keyring)
    finally:
        await node.db.close()
    with pytest.raises(BackupError, match="marked compromised"):
        await verify_backup(forged, keyring)
    assert report.problem is not None
    assert "marked compromised" in report.problem.what


async def test_after_a_restore_the_leaked_key_writes_nothing_below_the_marks_seq_either(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A re-attack run: a restore to before the mark rewound the record numbers, and the leaked key
    wrote records at numbers below the mark's, which its seq check let through."""
    node, keyring_file = await _node(tmp_path, clock)
    stolen = Keyring.load(shutil.copy(keyring_file, tmp_path / "stolen.json"))
    try:
        old = await _rotate_compromised(node, keyring_file, tmp_path / "backups", clock)
        mark = Keyring.load(keyring_file).compromised[old]
        await _rewind_to(node, mark.audit_seq - 2)
        clock.advance(60)
        await node.audit.record("backup.restored", actor="cli:root")
        await AuditLog(node.db, clock=clock, keyring=_only(stolen)).record("user.created", actor="cli:root")
        report = await verify_database(node.db, keyring=Keyring.load(keyring_file))
    finally:
        await node.db.close()
    assert report.problem is not None
    assert report.problem.seq is not None
    assert report.problem.seq <= mark.audit_seq
    assert "marked compromised" in report.problem.what


async def test_a_restore_of_the_last_backup_before_the_mark_and_a_second_mark_raise_no_alarm(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A re-attack run: the restore's own record landed at exactly the mark's seq and was taken for a
    rewrite (audit verify, checkpoints and every backup failed from then on); and marking the next key
    re-armed the first mark, whose restore record was now under a compromised key."""
    node, keyring_file = await _node(tmp_path, clock)
    try:
        old = await _rotate_compromised(node, keyring_file, tmp_path / "backups", clock)
        mark = Keyring.load(keyring_file).compromised[old]
        await _rewind_to(node, mark.audit_seq - 1)
        clock.advance(60)
        await node.audit.record("backup.restored", actor="cli:root")  # at the mark's seq
        for _ in range(3):
            await node.audit.record("signin.success", actor="user:kim", subject="kim")
        once = await verify_database(node.db, keyring=Keyring.load(keyring_file))
        clock.advance(60)
        await _rotate_compromised(node, keyring_file, tmp_path / "backups", clock)
        await node.audit.record("signin.success", actor="user:kim", subject="kim")
        twice = await verify_database(node.db, keyring=Keyring.load(keyring_file))
    finally:
        await node.db.close()
    assert once.problem is None, once.problem
    assert twice.problem is None, twice.problem
