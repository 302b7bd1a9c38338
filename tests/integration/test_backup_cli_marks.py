"""``gateway backup list|verify|prune|create`` say what they pass over, keep or refuse: the real CLI on
the embedded default.

Checked, each from an attack run: a backup whose part was deleted is named as broken by ``list`` and
``prune``, kept and never counted, so prune keeps the good ones (it kept only the broken newest and
would have deleted them); ``list`` marks a backup this keyring did not sign, and ``verify`` without an
argument names the newer one it skipped (both showed or skipped it without a word); ``create --to`` a
directory others may write names ``--to``, not ``backup.directory``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.harness import run_cli


def _cli(*args: str) -> str:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_list_verify_and_prune_name_broken_and_untrusted_backups(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\nbackup: {{keep_daily: 1, keep_weekly: 0}}\n"
    )
    c = ("--config", str(config))
    _cli("user", "add", "alice", "--no-password", *c)
    oldest, good, newest = (_cli("backup", "create", *c).splitlines()[-1] for _ in range(3))
    backups = data / "backups"
    (backups / newest / "gateway.db.enc").unlink()

    listed = _cli("backup", "list", *c)
    assert f"{newest}  " in listed
    assert "BROKEN: part gateway.db: gateway.db.enc is missing" in listed

    proc = run_cli("backup", "prune", "--dry-run", *c)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a broken backup: a job must notice
    lines = proc.stdout.splitlines()
    assert f"keep    {good}" in lines
    assert f"would delete {oldest}" in lines
    assert any(line.startswith(f"broken  {newest}: part gateway.db: ") for line in lines)
    assert f"would delete {good}" not in lines
    proc = run_cli("backup", "prune", *c)
    assert proc.returncode == 1
    assert sorted(p.name for p in backups.iterdir()) == sorted([good, newest])

    # A manifest nobody with the keyring signed, dated later than every backup.
    planted = backups / "29990101T000000Z-planted"
    shutil.copytree(backups / good, planted)
    manifest = planted / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"created_at": "20', '"created_at": "29', 1))
    listed = _cli("backup", "list", *c)
    (line,) = [line for line in listed.splitlines() if str(planted) in line]
    assert line.endswith("NOT TRUSTED: not signed by this keyring")
    (line,) = [line for line in listed.splitlines() if str(backups / good) in line]
    assert "NOT TRUSTED" not in line
    assert "BROKEN" not in line

    # Verify without an argument takes the newest this keyring signed (the broken one: it fails,
    # naming the part) and says which newer one it passed over.
    proc = run_cli("backup", "verify", *c)
    assert proc.returncode == 1
    assert f"skipped {good} ({planted}), dated later: not signed by this keyring" in proc.stdout
    assert f"backup {newest} FAILED verification: part gateway.db: missing" in proc.stdout


def test_create_to_a_shared_directory_names_the_option(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proc = run_cli("backup", "create", "--to", str(shared), "--config", str(config))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"--to {shared} is writable by other users" in proc.stderr + proc.stdout
    assert "backup.directory" not in proc.stderr + proc.stdout
