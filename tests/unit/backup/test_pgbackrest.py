"""``backup.pgbackrest``: its checks, the pgbackrest.conf and postgresql.conf lines, the restore guard."""

from __future__ import annotations

import os
import pwd
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.backup.pgbackrest import (
    PgBackRestError,
    argv,
    config_text,
    live_cluster,
    named_part,
    owner_ids,
    postgresql_lines,
    reported_problem,
    restore_args,
    write_config,
)
from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings
from gateway.settings.schema import PgBackRestSettings

PASS = "a passphrase long enough to keep"


def _settings(extra: str, environ: dict[str, str] | None = None) -> PgBackRestSettings:
    text = f"public_url: https://gw.example\nbackup:\n  pgbackrest:\n    pg_path: /var/lib/postgresql/15/main\n{extra}"
    pg = parse_settings(text, environ=environ or {}).backup.pgbackrest
    assert pg is not None
    return pg


def test_config_from_an_env_secret() -> None:
    pg = _settings(
        "    cipher_pass: ${env:PGBR_PASS}\n    pg_socket_path: /run/postgresql\n", {"PGBR_PASS": PASS}
    )
    text = config_text(pg)
    assert "[global]\nrepo1-path=/var/lib/pgbackrest\nrepo1-cipher-type=aes-256-cbc\n" in text
    assert f"repo1-cipher-pass={PASS}\n" in text
    assert "repo1-retention-full=2\n" in text
    assert "repo1-retention-diff" not in text
    assert (
        "[gateway]\npg1-path=/var/lib/postgresql/15/main\npg1-port=5432\npg1-socket-path=/run/postgresql\n"
        in text
    )
    assert PASS not in config_text(pg, redact=True)
    lines = postgresql_lines(pg)
    assert "archive_mode = on\n" in lines
    assert (
        "archive_command = 'pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=gateway archive-push %p'\n"
        in lines
    )
    assert "wal_level = replica\n" in lines


def test_remote_cluster_and_retention() -> None:
    pg = _settings(
        f"    cipher_pass: '{PASS}'\n    pg_host: db1.internal\n    pg_port: 5433\n    stanza: main\n"
        "    retention_full: 4\n    retention_diff: 7\n    compress_type: zst\n"
    )
    text = config_text(pg)
    assert "[main]\npg1-path=/var/lib/postgresql/15/main\npg1-port=5433\npg1-host=db1.internal\n" in text
    assert "repo1-retention-full=4\nrepo1-retention-diff=7\ncompress-type=zst\n" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    cipher_pass: short\n", "backup.pgbackrest.cipher_pass: must be at least 20 characters"),
        (f"    cipher_pass: '{PASS}'\n    stanza: 'a b'\n", "backup.pgbackrest.stanza: must be letters"),
        (
            f"    cipher_pass: '{PASS}'\n    repo_path: backups\n",
            "backup.pgbackrest.repo_path: must be an absolute",
        ),
        (f"    cipher_pass: '{PASS}'\n    pg_port: 0\n", "backup.pgbackrest.pg_port: must be a port"),
        (
            f"    cipher_pass: '{PASS}'\n    retention_full: 0\n",
            "backup.pgbackrest.retention_full: must be at least 1",
        ),
        (
            f"    cipher_pass: '{PASS}'\n    pg_host: db\n    pg_socket_path: /run/postgresql\n",
            "backup.pgbackrest.pg_host: set pg_host",
        ),
        (f"    cipher_pass: '{PASS}'\n    compress_type: rar\n", "backup.pgbackrest.compress_type"),
    ],
)
def test_checks_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(extra)
    assert message in str(caught.value)


def test_write_config_is_private(tmp_path: Path) -> None:
    pg = _settings(f"    cipher_pass: '{PASS}'\n    config_path: {tmp_path / 'etc' / 'pgbackrest.conf'}\n")
    path = write_config(pg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == config_text(pg)


def test_neither_the_config_nor_a_restore_target_is_written_through_a_symbolic_link(tmp_path: Path) -> None:
    """An attack run: a link the cluster's owner planted at --pg-path made root give the link's
    target (a root-owned directory) to that owner; write_config followed links the same way."""
    from gateway.cli.harness import UserError
    from gateway.cli.pgbackrest import _prepare

    victim = tmp_path / "root-owned"
    victim.mkdir(mode=0o755)
    (tmp_path / "etc").mkdir()
    planted = tmp_path / "etc" / "pgbackrest.conf"
    planted.symlink_to(victim / "file")
    pg = _settings(f"    cipher_pass: '{PASS}'\n    config_path: {planted}\n")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        write_config(pg)
    assert not (victim / "file").exists()
    restored = tmp_path / "restored"
    restored.symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        _prepare(restored, None)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    # The control: a real new directory is made 0700.
    _prepare(tmp_path / "new", None)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_argv_runs_as_the_clusters_owner() -> None:
    pg = _settings(f"    cipher_pass: '{PASS}'\n    os_user: nobody-else\n")
    assert argv(pg, "backup", "--type=full") == [
        "runuser",
        "-u",
        "nobody-else",
        "--",
        "pgbackrest",
        "--config=/etc/pgbackrest/pgbackrest.conf",
        "--stanza=gateway",
        "--type=full",
        "backup",
    ]


def test_live_directories_are_refused(tmp_path: Path) -> None:
    text = f"public_url: https://gw.example\nbackup: {{pgbackrest: {{pg_path: {tmp_path / 'main'}, cipher_pass: '{PASS}'}}}}\n"
    pg = parse_settings(text).backup.pgbackrest
    assert pg is not None
    assert live_cluster(tmp_path / "new", pg) is None
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "postmaster.pid").write_text("1\n")
    assert "running PostgreSQL cluster" in (live_cluster(tmp_path / "running", pg) or "")
    assert "live cluster's data directory" in (live_cluster(Path(pg.pg_path), pg) or "")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    assert live_cluster(tmp_path / "used", pg) == f"{tmp_path / 'used'} is not empty"


def test_problems_reported_with_exit_zero() -> None:
    verify = [
        "P00   INFO: stanza: gw",
        "                                    status: error",
        "                                      No usable backup.info file",
        "P00   INFO: verify command end: completed successfully (2ms)",
    ]
    assert reported_problem(verify) == "No usable backup.info file"
    assert reported_problem(["stanza: gw", "    status: error (no valid backups)"]) is None
    assert reported_problem(['[{"name":"gw","repo":[{"status":{"code":0,"message":"ok"}}]}]']) is None
    assert (
        reported_problem(
            ['[{"name":"gw","repo":[{"status":{"code":99,"message":"[FormatError] bad\\nmore"}}]}]']
        )
        == "[FormatError] bad"
    )
    error = PgBackRestError("verify", 0, "No usable backup.info file")
    assert "cannot be read with this cipher_pass" in str(error)
    assert "(exit" not in str(error)
    assert "(exit 82)" in str(PgBackRestError("check", 82, "timeout"))
    assert "pick a later --target-time" in str(PgBackRestError("restore", 75, "unable to find backup set"))


# What pgBackRest 2.45's verify logs for a flipped byte, a missing file and a WAL file it cannot read.
VERIFY_DAMAGED = [
    "2026-12-03 15:25:55.723 P01   INFO: invalid result 15-1/0000000100000000/000000010000000000000002-21314c0d86b2c4d254b970c5a0d97446f1c3e20c.gz: [29] raised from local-1 protocol: unexpected eof in compressed data",
    "                                    [FormatError] on retry after 0ms",
    "2026-12-03 15:25:55.780 P01   INFO: invalid checksum '20261203-152508F/pg_data/global/1260.gz'",
    "2026-12-03 15:25:55.781 P01   INFO: file missing '20261203-152508F_20261204-020001I/pg_data/base/5/2619.gz'",
    "2026-12-03 15:25:55.784 P00   INFO: stanza: gw",
    "                                    status: error",
    "                                      archiveId: 15-1, total WAL checked: 2, total valid WAL: 1",
    "                                        other: 1",
    "                                      backup: 20261203-152508F, status: invalid, total files checked: 964, total valid files: 962",
    "                                        missing: 1, checksum invalid: 1",
    "2026-12-03 15:25:55.784 P00   INFO: verify command end: completed successfully (15424ms)",
]


def test_damaged_files_are_named_with_their_backup() -> None:
    problem = reported_problem(VERIFY_DAMAGED)
    assert problem is not None
    assert problem.startswith(
        "invalid result '15-1/0000000100000000/000000010000000000000002-21314c0d86b2c4d254b970c5a0d97446f1c3e20c.gz'; "
        "invalid checksum '20261203-152508F/pg_data/global/1260.gz'; "
        "file missing '20261203-152508F_20261204-020001I/pg_data/base/5/2619.gz'; "
    )
    assert "backup: 20261203-152508F, status: invalid, total files checked: 964" in problem
    assert "[FormatError]" not in problem
    # The first damaged file is WAL: named by its file; a backup's file: by the backup's label.
    assert named_part(VERIFY_DAMAGED).startswith("15-1/0000000100000000/000000010000000000000002-")
    assert named_part(VERIFY_DAMAGED[2:]) == "20261203-152508F"
    assert named_part(VERIFY_DAMAGED[3:]) == "20261203-152508F_20261204-020001I"
    # No file, a manifest gone: the summary names the backup.
    summary = [
        "P00   INFO: stanza: gw",
        "      status: error",
        "        backup: 20261203-152508F, status: valid, total files checked: 964, total valid files: 964",
        "        backup: 20261204-020001F, status: manifest missing, total files checked: 0, total valid files: 0",
    ]
    assert named_part(summary) == "20261204-020001F"
    assert "status: manifest missing" in (reported_problem(summary) or "")
    many = [f"P01   INFO: file missing '20261203-152508F/pg_data/base/5/{n}.gz'" for n in range(8)]
    assert reported_problem([*many, "stanza: gw", "  status: error"]) == (
        "; ".join(f"file missing '20261203-152508F/pg_data/base/5/{n}.gz'" for n in range(5))
        + "; and 3 more damaged file(s)"
    )
    error = PgBackRestError("verify", 0, "x", part="20261203-152508F")
    assert error.part == "20261203-152508F"


def test_restore_options() -> None:
    target = Path("/srv/pg/restored")
    assert restore_args(target, target_time=None) == ["--pg1-path=/srv/pg/restored", "--archive-mode=off"]
    assert restore_args(
        target, target_time=None, backup="20261203-152508F", repo_path=Path("/mnt/nas/pgbackrest")
    ) == [
        "--pg1-path=/srv/pg/restored",
        "--archive-mode=off",
        "--repo1-path=/mnt/nas/pgbackrest",
        "--set=20261203-152508F",
        "--type=immediate",
        "--target-action=promote",
    ]
    at = datetime(2027, 3, 1, 9, 41, tzinfo=UTC)
    assert restore_args(target, target_time=at, backup="20261203-152508F")[2:] == [
        "--set=20261203-152508F",
        "--type=time",
        "--target=2027-03-01 09:41:00+00:00",
        "--target-action=promote",
    ]


def test_files_are_given_to_the_cluster_owner_only_by_root() -> None:
    assert owner_ids(None) is None
    me = pwd.getpwuid(os.geteuid())
    expected = (me.pw_uid, me.pw_gid) if os.geteuid() == 0 else None
    assert owner_ids(me.pw_name) == expected
    if os.geteuid() == 0:
        with pytest.raises(KeyError):  # a user the system does not know is an error, not skipped
            owner_ids("no-such-user-gw")
