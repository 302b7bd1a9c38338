"""Replicating a backup to a directory and to a real rclone remote (a ``local`` remote from env vars)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backup.manifest import BackupError
from gateway.backup.targets import replicate, replicate_all
from gateway.backup.verify import verify_backup
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from tests.unit.backup.helpers import backup_with_checkpoints


@pytest.fixture
async def backup(tmp_path: Path, clock: FakeClock) -> tuple[Path, Keyring]:
    """One finished backup."""
    return await backup_with_checkpoints(tmp_path, clock, records=3, checkpoints=False)


async def test_directory_target_gets_a_checked_copy_that_verifies(
    backup: tuple[Path, Keyring], tmp_path: Path
) -> None:
    path, keyring = backup
    done = replicate(path, str(tmp_path / "offsite"))
    copy = tmp_path / "offsite" / path.name
    assert done.location == str(copy)
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in path.iterdir())
    assert not list((tmp_path / "offsite").glob(".*"))
    await verify_backup(copy, keyring)
    # Again: the existing copy is checked, not overwritten.
    assert replicate(path, str(tmp_path / "offsite")).location == str(copy)


async def test_a_damaged_existing_copy_is_reported(backup: tuple[Path, Keyring], tmp_path: Path) -> None:
    path, _keyring = backup
    replicate(path, str(tmp_path / "offsite"))
    damaged = tmp_path / "offsite" / path.name / "gateway.db.enc"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"x")
    with pytest.raises(BackupError, match=r"part gateway\.db: sha256 mismatch in the copy"):
        replicate(path, str(tmp_path / "offsite"))


@pytest.mark.peer  # the real rclone binary (scripts/ensure-test-deps installs it)
async def test_rclone_remote_gets_a_checked_copy_that_verifies(
    backup: tuple[Path, Keyring], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, keyring = backup
    # A real rclone remote of type local, configured only through the environment.
    monkeypatch.setenv("RCLONE_CONFIG_TESTREMOTE_TYPE", "local")
    monkeypatch.setenv("RCLONE_CONFIG", str(tmp_path / "no-rclone.conf"))
    remote_root = tmp_path / "remote-root"
    done, failed = replicate_all(path, (f"rclone:testremote:{remote_root}/gw",))
    assert failed == []
    assert done[0].location == f"testremote:{remote_root}/gw/{path.name}"
    copy = remote_root / "gw" / path.name
    await verify_backup(copy, keyring)


@pytest.mark.peer  # the real rclone binary (scripts/ensure-test-deps installs it)
def test_an_unknown_rclone_remote_fails_and_others_still_run(
    backup: tuple[Path, Keyring], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _keyring = backup
    monkeypatch.setenv("RCLONE_CONFIG", str(tmp_path / "no-rclone.conf"))
    done, failed = replicate_all(path, ("rclone:nosuchremote:x", str(tmp_path / "dir")))
    assert [d.target for d in done] == [str(tmp_path / "dir")]
    assert failed[0][0] == "rclone:nosuchremote:x"
    assert "rclone copy failed" in failed[0][1]
