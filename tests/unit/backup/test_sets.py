"""Listing backups and pruning them to N daily and M weekly, with backups made at injected times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.backup.archive import create_backup
from gateway.backup.sets import find_backup, list_backups, prune
from gateway.clock import FakeClock
from tests.unit.backup.helpers import make_node

HOUR = 3600.0
DAY = 86400.0


async def _backups_at(tmp_path: Path, times: list[datetime]) -> Path:
    clock = FakeClock(times[0].timestamp())
    node = await make_node(tmp_path / "live", clock, records=1)
    directory = tmp_path / "backups"
    try:
        for at in times:
            clock.t = at.timestamp()
            create_backup(node.database, node.data_dir, directory, node.keyring, clock)
    finally:
        await node.db.close()
    return directory


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
    directory = await _backups_at(tmp_path, times)
    assert len(list_backups(directory)) == 42

    keep, drop = prune(directory, keep_daily=3, keep_weekly=2, dry_run=True)
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

    keep2, drop2 = prune(directory, keep_daily=3, keep_weekly=2)
    assert [s.backup_id for s in keep2] == [s.backup_id for s in keep]
    assert [s.backup_id for s in drop2] == [s.backup_id for s in drop]
    assert {_stamp(s.created_at) for s in list_backups(directory)} == expected


async def test_a_pause_in_backups_never_prunes_the_last_ones(tmp_path: Path) -> None:
    # Three backups, then nothing for months: days without a backup do not count.
    times = [datetime(2027, 1, d, 12, tzinfo=UTC) for d in (4, 5, 6)]
    directory = await _backups_at(tmp_path, times)
    keep, drop = prune(directory, keep_daily=2, keep_weekly=0)
    assert [_stamp(s.created_at) for s in keep] == ["2027-01-05 12", "2027-01-06 12"]
    assert [_stamp(s.created_at) for s in drop] == ["2027-01-04 12"]


async def test_partial_and_foreign_directories_are_left_alone(tmp_path: Path) -> None:
    directory = await _backups_at(tmp_path, [datetime(2027, 1, d, tzinfo=UTC) for d in (1, 2)])
    (directory / ".20270103T000000Z-aaaaaa.partial").mkdir()
    (directory / "notes").mkdir()
    (directory / "broken").mkdir()
    (directory / "broken" / "manifest.json").write_text("{")
    _keep, drop = prune(directory, keep_daily=1, keep_weekly=0)
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
    directory = await _backups_at(tmp_path, [datetime(2027, 1, d, tzinfo=UTC) for d in (1, 2)])
    first, newest = list_backups(directory)
    assert find_backup(directory, None) == newest.path
    assert find_backup(directory, first.backup_id) == first.path
    assert find_backup(empty, str(first.path)) == first.path
    with pytest.raises(LookupError, match="neither a directory nor a backup id"):
        find_backup(directory, "20270101T000000Z-000000")
