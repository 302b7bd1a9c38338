"""Listing backups and pruning them to N daily and M weekly, with backups made at injected times."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.backup.archive import create_backup
from gateway.backup.sets import find_backup, linked_entries, list_backups, prune, signed_under
from gateway.clock import FakeClock
from gateway.crypto.keyring import Compromise, Keyring
from tests.unit.backup.helpers import make_node

HOUR = 3600.0
DAY = 86400.0


async def _backups_at(
    tmp_path: Path, times: list[datetime], *, node_dir: str = "live"
) -> tuple[Path, Keyring]:
    clock = FakeClock(times[0].timestamp())
    node = await make_node(tmp_path / node_dir, clock, records=1)
    directory = tmp_path / "backups"
    try:
        for at in times:
            clock.t = at.timestamp()
            create_backup(node.database, node.data_dir, directory, node.keyring, clock)
    finally:
        await node.db.close()
    return directory, node.keyring


def _stamp(s: datetime) -> str:
    return s.strftime("%Y-%m-%d %H")


async def test_prune_keeps_the_newest_of_each_recent_day_and_week(tmp_path: Path) -> None:
    # 2027-03-01 is a Monday. Two backups a day (03:00 and 15:00) for 21 days: weeks 9, 10, 11.
    start = datetime(2027, 3, 1, tzinfo=UTC)
    times = [
        datetime.fromtimestamp(start.timestamp() + d * DAY + h * HOUR, UTC)
        for d in range(21)
        for h in (3, 15)
    ]
    directory, keyring = await _backups_at(tmp_path, times)
    assert len(list_backups(directory)) == 42

    keep, drop = prune(directory, keyring, keep_daily=3, keep_weekly=2, dry_run=True)
    assert len(list_backups(directory)) == 42  # a dry run deletes nothing
    expected = {
        # The newest of the three most recent days (19, 20, 21 March) ...
        "2027-03-19 15",
        "2027-03-20 15",
        "2027-03-21 15",
        # ... and of the two most recent ISO weeks (week 11 ends on Sunday the 21st, week 10 on the 14th).
        "2027-03-14 15",
    }
    assert {_stamp(s.created_at) for s in keep} == expected
    assert len(drop) == 42 - 4

    keep2, drop2 = prune(directory, keyring, keep_daily=3, keep_weekly=2)
    assert [s.backup_id for s in keep2] == [s.backup_id for s in keep]
    assert [s.backup_id for s in drop2] == [s.backup_id for s in drop]
    assert {_stamp(s.created_at) for s in list_backups(directory)} == expected


async def test_a_pause_in_backups_never_prunes_the_last_ones(tmp_path: Path) -> None:
    # Three backups, then nothing for months: days without a backup do not count.
    times = [datetime(2027, 1, d, 12, tzinfo=UTC) for d in (4, 5, 6)]
    directory, keyring = await _backups_at(tmp_path, times)
    keep, drop = prune(directory, keyring, keep_daily=2, keep_weekly=0)
    assert [_stamp(s.created_at) for s in keep] == ["2027-01-05 12", "2027-01-06 12"]
    assert [_stamp(s.created_at) for s in drop] == ["2027-01-04 12"]


async def test_partial_and_foreign_directories_are_left_alone(tmp_path: Path) -> None:
    directory, keyring = await _backups_at(tmp_path, [datetime(2027, 1, d, tzinfo=UTC) for d in (1, 2)])
    (directory / ".20270103T000000Z-aaaaaa.partial").mkdir()
    (directory / "notes").mkdir()
    (directory / "broken").mkdir()
    (directory / "broken" / "manifest.json").write_text("{")
    _keep, drop = prune(directory, keyring, keep_daily=1, keep_weekly=0)
    assert len(drop) == 1
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith("2027")) == [
        ".20270103T000000Z-aaaaaa.partial",
        "broken",
        "notes",
    ]


async def test_a_backup_is_found_by_id_or_path_and_the_newest_without(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    with pytest.raises(LookupError, match="no backups in"):
        find_backup(empty, None)
    directory, _keyring = await _backups_at(tmp_path, [datetime(2027, 1, d, tzinfo=UTC) for d in (1, 2)])
    first, newest = list_backups(directory)
    assert find_backup(directory, None) == newest.path
    assert find_backup(directory, first.backup_id) == first.path
    assert find_backup(empty, str(first.path)) == first.path
    with pytest.raises(LookupError, match="neither a directory nor a backup id"):
        find_backup(directory, "20270101T000000Z-000000")


async def test_prune_counts_and_deletes_only_what_this_deployments_keyring_signed(tmp_path: Path) -> None:
    """An attack run: another deployment sharing backup.directory, or anybody able to write it with
    unsigned manifests dated in the future, made prune delete this deployment's every backup."""
    directory, keyring = await _backups_at(tmp_path, [datetime(2027, 1, d, tzinfo=UTC) for d in (1, 2)])
    ours = {s.backup_id for s in list_backups(directory)}
    # Another deployment's, later: signed with its own keyring.
    await _backups_at(tmp_path, [datetime(2027, 1, d, tzinfo=UTC) for d in (5, 6)], node_dir="other")
    # A forgery: one of ours copied, its date moved a year on (the signature no longer holds).
    newest = max(list_backups(directory, signed_with=keyring), key=lambda s: s.created_at)
    forged = directory / "20280101T000000Z-forged"
    shutil.copytree(newest.path, forged)
    manifest = forged / "manifest.json"
    manifest.write_text(manifest.read_text().replace(newest.created_at.strftime("%Y-"), "2028-", 1))
    assert len(list_backups(directory)) == 5
    keep, drop = prune(directory, keyring, keep_daily=1, keep_weekly=0)
    assert {s.backup_id for s in keep} | {s.backup_id for s in drop} == ours
    assert [_stamp(s.created_at) for s in keep] == ["2027-01-02 00"]
    assert len(list_backups(directory)) == 4  # only our older one went; the others are left alone


async def test_the_newest_backup_is_one_this_deployment_signed(tmp_path: Path) -> None:
    """An attack run: an unsigned manifest dated 2099 in the backups directory was picked by
    `gateway backup verify` and drills as the newest, which then failed on it."""
    directory, keyring = await _backups_at(tmp_path, [datetime(2027, 1, d, tzinfo=UTC) for d in (1, 2)])
    ours = list_backups(directory, signed_with=keyring)[-1]
    planted = directory / "20990101T000000Z-planted"
    shutil.copytree(ours.path, planted)
    manifest = planted / "manifest.json"
    manifest.write_text(manifest.read_text().replace(ours.created_at.strftime("%Y-"), "2099-", 1))
    assert find_backup(directory, None) == planted  # without a keyring: the newest by its date
    assert find_backup(directory, None, signed_with=keyring) == ours.path


async def test_a_broken_backup_is_kept_named_and_never_counted(tmp_path: Path) -> None:
    """An attack run deleted the newest backup's ``gateway.db.enc``: prune trusted its manifest, kept
    only that broken one and would have deleted the good ones."""
    times = [datetime(2027, 1, d, 12, tzinfo=UTC) for d in (1, 2, 3, 4)]
    directory, keyring = await _backups_at(tmp_path, times)
    oldest, good, truncated, newest = list_backups(directory)
    (newest.path / "gateway.db.enc").unlink()
    with (truncated.path / "gateway.db.enc").open("r+b") as part:
        part.truncate(100)

    listed = {s.backup_id: s.broken for s in list_backups(directory, signed_with=keyring)}
    assert listed[newest.backup_id] == "part gateway.db: gateway.db.enc is missing"
    assert listed[truncated.backup_id] == (
        f"part gateway.db: gateway.db.enc is 100 bytes, the manifest says {truncated.size}"
    )
    assert listed[good.backup_id] is None

    keep, drop = prune(directory, keyring, keep_daily=1, keep_weekly=0)
    # The whole one is counted and kept; the broken ones are kept beside it, marked, never deleted.
    assert [(s.backup_id, s.broken is not None) for s in keep] == [
        (good.backup_id, False),
        (truncated.backup_id, True),
        (newest.backup_id, True),
    ]
    assert [s.backup_id for s in drop] == [oldest.backup_id]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [good.backup_id, truncated.backup_id, newest.backup_id]
    )


async def test_backups_this_keyring_does_not_vouch_for_are_listed_with_why(tmp_path: Path) -> None:
    """An attack run: `backup list` showed a forged manifest, and a backup under a key marked
    compromised that the mark does not vouch for, as if they were the deployment's."""
    directory, keyring = await _backups_at(tmp_path, [datetime(2027, 1, d, tzinfo=UTC) for d in (1, 2)])
    first, second = list_backups(directory, signed_with=keyring)
    forged = directory / "20280101T000000Z-forged"
    shutil.copytree(second.path, forged)
    manifest = forged / "manifest.json"
    manifest.write_text(manifest.read_text().replace("2027-", "2028-", 1))
    # The key both were signed with is marked compromised, vouching for the first only.
    keyring_file = tmp_path / "live" / "keys" / "keyring.json"
    old = keyring.active_id
    keyring.rotate(keyring_file)
    vouched = signed_under(directory, keyring, old)
    keyring.mark_compromised(
        keyring_file,
        old,
        Compromise("2027-01-03T00:00:00+00:00", 0, {first.backup_id: vouched[first.backup_id]}),
    )

    listed = list_backups(directory, signed_with=keyring, unsigned=True)
    assert [(s.path.name, s.untrusted) for s in listed] == [
        (first.path.name, None),
        (second.path.name, "signed under a compromised key (not a backup it signed before it was marked)"),
        (forged.name, "not signed by this keyring"),
    ]
    # Without ``unsigned`` they are left out, as before (verify, prune and drills never pick them).
    assert [s.path for s in list_backups(directory, signed_with=keyring)] == [first.path]


async def test_a_backup_whose_part_was_changed_in_place_is_broken_for_prune(tmp_path: Path) -> None:
    """A re-attack run overwrote 4 bytes inside the newest backup's ``gateway.db.enc``, its size kept:
    prune counted it as whole, kept it and would have deleted the three good ones of the same day. A
    symbolic link to a file of the right size passed the same way."""
    times = [datetime(2027, 1, 4, h, tzinfo=UTC) for h in (1, 2, 3, 4)]
    directory, keyring = await _backups_at(tmp_path, times)
    oldest, linked, good, newest = list_backups(directory)
    with (newest.path / "gateway.db.enc").open("r+b") as part:
        part.seek(200)
        part.write(b"AAAA")
    # A link to a file of the same size as the part it stands for.
    target = linked.path / "gateway.db.enc"
    same_size = tmp_path / "same-size"
    same_size.write_bytes(b"x" * target.stat().st_size)
    target.unlink()
    target.symlink_to(same_size)

    # The listing's stat sees the link, not the changed content (verify and prune hash).
    listed = {s.backup_id: s.broken for s in list_backups(directory, signed_with=keyring)}
    assert listed[linked.backup_id] == "part gateway.db: gateway.db.enc is a symbolic link"
    assert listed[newest.backup_id] is None

    keep, drop = prune(directory, keyring, keep_daily=1, keep_weekly=0, dry_run=True)
    assert [(s.backup_id, s.broken) for s in keep] == [
        (linked.backup_id, "part gateway.db: gateway.db.enc is a symbolic link"),
        (good.backup_id, None),
        (
            newest.backup_id,
            "part gateway.db: gateway.db.enc does not match its SHA-256 in the manifest (changed or damaged)",
        ),
    ]
    assert [s.backup_id for s in drop] == [oldest.backup_id]
    _keep, drop = prune(directory, keyring, keep_daily=1, keep_weekly=0)
    assert [s.backup_id for s in drop] == [oldest.backup_id]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [linked.backup_id, good.backup_id, newest.backup_id]
    )


async def test_symbolic_links_in_the_backup_directory_are_skipped_never_deleted_through(
    tmp_path: Path,
) -> None:
    """A re-attack run: an operator's ``latest -> <id>`` listed that backup twice and made prune call
    rmtree on the link, which raised after other backups were deleted (and no record of them)."""
    times = [datetime(2027, 1, d, 12, tzinfo=UTC) for d in (1, 2, 3)]
    directory, keyring = await _backups_at(tmp_path, times)
    oldest, middle, newest = list_backups(directory)
    (directory / "latest").symlink_to(oldest.backup_id)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(newest.path, elsewhere)
    (directory / "planted").symlink_to(elsewhere)

    assert linked_entries(directory) == ["latest", "planted"]
    assert [s.path for s in list_backups(directory, signed_with=keyring)] == [
        oldest.path,
        middle.path,
        newest.path,
    ]
    keep, drop = prune(directory, keyring, keep_daily=1, keep_weekly=0)
    assert [s.backup_id for s in keep] == [newest.backup_id]
    assert [s.backup_id for s in drop] == [oldest.backup_id, middle.backup_id]
    assert sorted(p.name for p in directory.iterdir()) == sorted(["latest", "planted", newest.backup_id])
    assert (elsewhere / "manifest.json").is_file()  # the link's target is untouched


async def test_a_deletion_that_fails_leaves_that_backup_broken_and_the_others_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion failing part-way raised out of prune: what it had deleted was never reported."""
    times = [datetime(2027, 1, d, 12, tzinfo=UTC) for d in (1, 2, 3)]
    directory, keyring = await _backups_at(tmp_path, times)
    oldest, middle, newest = list_backups(directory)
    rmtree = shutil.rmtree

    def failing(path: Path) -> None:
        if Path(path) == oldest.path:
            raise PermissionError(13, "Permission denied")
        rmtree(path)

    monkeypatch.setattr("gateway.backup.sets.shutil.rmtree", failing)
    keep, drop = prune(directory, keyring, keep_daily=1, keep_weekly=0)
    assert [s.backup_id for s in drop] == [middle.backup_id]
    assert [(s.backup_id, s.broken) for s in keep] == [
        (
            oldest.backup_id,
            "deleting it failed (Permission denied); what is left may not be a whole backup",
        ),
        (newest.backup_id, None),
    ]
