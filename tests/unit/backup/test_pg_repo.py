"""The pgBackRest repository checks the gateway adds: the WAL each backup needs, and where copies go."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backup.pg_repo import copy_location, missing_wal, needed_segments


@pytest.mark.parametrize(
    ("start", "stop", "lsn_start", "lsn_stop", "segments"),
    [
        # 16 MiB segments (the default): one, two, and across a log boundary (…FF to the next log's 00).
        (
            "000000010000000000000002",
            "000000010000000000000002",
            "0/2000028",
            "0/2000100",
            ["000000010000000000000002"],
        ),
        (
            "000000010000000000000006",
            "000000010000000000000007",
            "0/6000028",
            "0/7000100",
            ["000000010000000000000006", "000000010000000000000007"],
        ),
        (
            "0000000100000003000000FE",
            "000000010000000400000001",
            "3/FE000028",
            "4/1000100",
            [
                "0000000100000003000000FE",
                "0000000100000003000000FF",
                "000000010000000400000000",
                "000000010000000400000001",
            ],
        ),
        # 64 MiB segments: 64 per log.
        (
            "00000001000000000000003F",
            "000000010000000100000000",
            "0/FC000028",
            "1/100",
            ["00000001000000000000003F", "000000010000000100000000"],
        ),
        # A stop LSN on a segment boundary names the segment before it: no size fits, the two ends.
        (
            "000000010000000000000006",
            "000000010000000000000008",
            "0/6000028",
            "0/9000000",
            ["000000010000000000000006", "000000010000000000000008"],
        ),
        # A timeline switch inside the backup: the two ends.
        (
            "000000010000000000000006",
            "000000020000000000000007",
            "0/6000028",
            "0/7000100",
            ["000000010000000000000006", "000000020000000000000007"],
        ),
    ],
)
def test_needed_segments(start: str, stop: str, lsn_start: str, lsn_stop: str, segments: list[str]) -> None:
    assert needed_segments(start, stop, lsn_start, lsn_stop) == segments


def _backup(label: str, start: str, stop: str, lsn_start: str, lsn_stop: str, db: int = 1) -> dict[str, Any]:
    return {
        "label": label,
        "archive": {"start": start, "stop": stop},
        "lsn": {"start": lsn_start, "stop": lsn_stop},
        "database": {"id": db, "repo-key": 1},
    }


def test_missing_wal_names_the_backup_and_the_segment() -> None:
    stanza = {
        "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "15-1"}],
        "backup": [
            _backup(
                "20261203-152508F",
                "000000010000000000000002",
                "000000010000000000000002",
                "0/2000028",
                "0/2000100",
            ),
            _backup(
                "20261203-153412F",
                "000000010000000000000006",
                "000000010000000000000007",
                "0/6000028",
                "0/7000100",
            ),
        ],
    }
    present = {"15-1": {"000000010000000000000002", "000000010000000000000005", "000000010000000000000007"}}
    assert missing_wal(stanza, present) == [("20261203-153412F", "15-1", "000000010000000000000006")]
    present["15-1"].add("000000010000000000000006")
    assert missing_wal(stanza, present) == []
    # A backup of a database the archive has no WAL of at all (after a stanza upgrade, say).
    stanza["backup"].append(
        _backup(
            "20261210-010000F",
            "000000010000000000000009",
            "000000010000000000000009",
            "0/9000028",
            "0/9000100",
            db=2,
        )
    )
    assert missing_wal(stanza, present) == [("20261210-010000F", "", "000000010000000000000009")]


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/mnt/offsite", "/mnt/offsite/pgbackrest"),
        ("/mnt/offsite/", "/mnt/offsite/pgbackrest"),
        ("rclone:offsite:gateway", "offsite:gateway/pgbackrest"),
        ("rclone:offsite:gateway/", "offsite:gateway/pgbackrest"),
        ("rclone:offsite:", "offsite:pgbackrest"),
    ],
)
def test_copy_location(target: str, location: str) -> None:
    assert copy_location(target) == location
