"""``gateway backup list|verify|prune|create`` say what they pass over, keep or refuse: the real CLI on
the embedded default.

Checked, each from an attack run: a backup whose part was deleted is named as broken by ``list`` and
``prune``, kept and never counted, so prune keeps the good ones (it kept only the broken newest and
would have deleted them); ``list`` marks a backup this keyring did not sign, and ``verify`` without an
argument names the newer one it skipped (both showed or skipped it without a word); ``create --to`` a
directory others may write names ``--to``, not ``backup.directory``. From a re-attack run: prune hashes
what it keeps (4 bytes overwritten in the newest backup, size kept, made it delete the good ones), skips
symbolic links in the directory (``latest -> <id>`` crashed it after it had deleted backups, unrecorded)
and every value of an unsigned backup is printed on one line.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
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


def test_prune_hashes_what_it_keeps_and_skips_symbolic_links(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\nbackup: {{keep_daily: 1, keep_weekly: 0}}\n"
    )
    c = ("--config", str(config))
    _cli("user", "add", "alice", "--no-password", *c)
    first, second, good, newest = (_cli("backup", "create", *c).splitlines()[-1] for _ in range(4))
    backups = data / "backups"
    # As `dd conv=notrunc` does: 4 bytes overwritten inside the part, its size kept.
    with (backups / newest / "gateway.db.enc").open("r+b") as part:
        part.seek(300)
        part.write(b"AAAA")
    (backups / "latest").symlink_to(newest)
    skipped = f"skipped latest in {backups}: a symbolic link, not a backup"

    proc = run_cli("backup", "prune", "--dry-run", *c)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("skipped")] == [
        f"{skipped} (never listed, counted or deleted through)"
    ]
    assert f"keep    {good}" in lines
    assert (
        f"broken  {newest}: part gateway.db: gateway.db.enc does not match its SHA-256 in the manifest"
        in proc.stdout
    )
    assert [line for line in lines if line.startswith("would delete")] == [
        f"would delete {first}",
        f"would delete {second}",
    ]

    proc = run_cli("backup", "prune", *c)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in backups.iterdir()) == sorted(["latest", good, newest])
    with closing(sqlite3.connect(data / "gateway.db")) as conn:
        (details,) = conn.execute("SELECT details FROM audit_events WHERE kind = 'backup.pruned'").fetchone()
    assert json.loads(details) == {"deleted": [first, second], "broken": [newest]}

    # Listed once each: the link is named, not followed.
    listed = _cli("backup", "list", *c).splitlines()
    assert [line for line in listed if line.startswith("skipped")] == [
        f"{skipped} (never listed, counted or deleted through)"
    ]
    assert len([line for line in listed if line.startswith(f"{newest}  ")]) == 1


def test_an_unsigned_backups_values_are_printed_on_one_line_each(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\n")
    c = ("--config", str(config))
    good = _cli("backup", "create", *c).splitlines()[-1]
    backups = data / "backups"
    # Newlines in the directory's name, the backup id and a part's name and file, dated later than
    # every backup: each would print a line of the attacker's own.
    planted = backups / "29990101T000000Z-p\nFORGED dir"
    shutil.copytree(backups / good, planted)
    doc = json.loads((planted / "manifest.json").read_text())
    doc["created_at"] = "2999" + doc["created_at"][4:]
    doc["backup_id"] = "29990101T000000Z-p\nFORGED id"
    doc["parts"][0]["name"] = "gateway.db\nFORGED part"
    doc["parts"][0]["file"] = "missing\nFORGED file"
    (planted / "manifest.json").write_text(json.dumps(doc))

    listed = _cli("backup", "list", *c)
    proc = run_cli("backup", "verify", *c)
    named = run_cli("backup", "verify", str(planted), *c)
    assert named.returncode == 1
    for output in (listed, proc.stdout, named.stdout):
        assert not [line for line in output.splitlines() if line.startswith("FORGED")], output
    (line,) = [line for line in listed.splitlines() if "FORGED id" in line]
    assert line.startswith("29990101T000000Z-p\\nFORGED id  2999-")
    assert "29990101T000000Z-p\\nFORGED dir" in line
    assert "BROKEN: part gateway.db\\nFORGED part: missing\\nFORGED file is missing" in line
    assert "skipped 29990101T000000Z-p\\nFORGED id (" in proc.stdout
    assert "backup 29990101T000000Z-p\\nFORGED dir FAILED verification" in named.stdout
