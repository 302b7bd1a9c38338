"""``gateway pgbackrest …`` against real pgBackRest and a PostgreSQL cluster the test starts itself.

The cluster runs on a free port with its own socket directory, archiving its WAL into an encrypted
repository through the ``postgresql.conf`` lines ``gateway pgbackrest config`` prints. A full backup
is taken, the policy is changed to A, then (a second later) to B; a point-in-time restore to the
time between them, started as a second cluster, holds exactly A. Run as root (CI), PostgreSQL and
pgBackRest run as the ``postgres`` OS user (initdb refuses root) through ``runuser``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import yaml
from sqlalchemy import select

from tests.integration.harness import ROOT, run_cli
from tests.support.pg_cluster import Node, pg_node
from tests.support.processes import Process, port_free, still_running, until_listening

# Real pgBackRest and a PostgreSQL 15 cluster of the test's own (scripts/ensure-test-deps installs
# both): a peer test, so a missing tool fails CI instead of skipping quietly.
pytestmark = pytest.mark.peer
CIPHER_PASS = "amber quarry lantern voyage, twice over"
POLICY_A = "p, staff, app, /wiki/*, GET, allow\n"
POLICY_B = "p, staff, app, /wiki/*, GET|POST, allow\np, admin, *, /*, *, allow\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def node() -> Iterator[Node]:
    with pg_node("gw-pgbackrest-") as n:
        yield n


def _config(
    node: Node, tmp_path: Path, port: int, *, name: str, cipher_pass: str, targets: tuple[str, ...] = ()
) -> Path:
    secret = tmp_path / f"{name}.pass"
    secret.write_text(cipher_pass + "\n")
    config = tmp_path / f"{name}.yaml"
    os_user = f"'{node.os_user}'" if node.os_user else "null"
    config.write_text(
        f"""public_url: http://127.0.0.1:8080
data_dir: {tmp_path / "data"}
storage: {{url: 'postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres'}}
backup:
  targets: {json.dumps(list(targets))}
  pgbackrest:
    stanza: gw
    repo_path: {node.home / "repo"}
    cipher_pass: ${{file:{secret}}}
    pg_path: {node.home / "data"}
    pg_port: {port}
    pg_socket_path: {node.home / "sock"}
    config_path: {node.home / f"{name}.conf"}
    os_user: {os_user}
"""
    )
    return config


def _gateway(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run_cli(*args, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


async def _sql(port: int, query: str) -> object:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=10)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _set_policy(url: str, keyring: Path, text: str, reason: str) -> int:
    from gateway.audit.trail import AuditLog
    from gateway.authz.rules import parse_policy
    from gateway.authz.store import PolicyStore
    from gateway.crypto.keyring import Keyring
    from gateway.store.db import Database
    from gateway.store.fast.memory import MemoryFastState

    db = Database.open(url, pool_size=1)
    try:
        keys = Keyring.load_or_create(keyring, allow_create=False)
        store = PolicyStore(db, MemoryFastState(), AuditLog(db, keyring=keys))
        return await store.replace(parse_policy(text), actor="cli:test", reason=reason, force=True)
    finally:
        await db.close()


async def _live_policy(url: str) -> tuple[int, str]:
    from gateway.audit.trail import AuditLog
    from gateway.authz.store import PolicyStore
    from gateway.store.db import Database
    from gateway.store.fast.memory import MemoryFastState

    db = Database.open(url, pool_size=1)
    try:
        current = await PolicyStore(db, MemoryFastState(), AuditLog(db)).current()
        return current.version, current.csv
    finally:
        await db.close()


async def _audit_kinds(port: int) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=10)
    try:
        rows = await conn.fetch(
            "select kind, outcome from audit_events where kind like 'backup.pg.%' order by id"
        )
        return [(r["kind"], r["outcome"]) for r in rows]
    finally:
        await conn.close()


async def _scheduled_backup(config: Path, now: datetime) -> tuple[str | None, str | None]:
    """What a running deployment's schedule does for the period of ``now``: its status and backup id."""
    from gateway.audit.trail import AuditLog
    from gateway.backup.jobs import job_for
    from gateway.backup.models import BackupRun
    from gateway.backup.schedule import BackupSchedule
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.keyring import Keyring
    from gateway.settings.loader import load_settings
    from gateway.store.db import Database, configured_url

    settings = load_settings(config)
    keys = Keyring.load_or_create(Path(settings.data_dir) / "keys" / "keyring.json", allow_create=False)
    db = Database.open(configured_url(settings), pool_size=1)
    try:
        job = job_for(lambda: settings, keys, SYSTEM_CLOCK)
        schedule = BackupSchedule(db, AuditLog(db, keyring=keys), job, lambda: settings.backup, SYSTEM_CLOCK)
        status = await schedule.run_period(now)
        async with db.session() as session:
            made = await session.scalar(select(BackupRun.backup_id).where(BackupRun.kind == "scheduled"))
        return status, made
    finally:
        await db.close()


def _wait_promoted(port: int) -> None:
    deadline = time.monotonic() + 60
    while asyncio.run(_sql(port, "select pg_is_in_recovery()")):
        assert time.monotonic() < deadline, "the restored cluster did not finish its recovery"
        time.sleep(0.2)


def _postmaster_under(process: Process, directory: Path) -> bool:
    try:
        line = Path(f"/proc/{process[0]}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(line[0].decode()).name == "postgres" and any(str(directory).encode() in arg for arg in line)


def _a_killed_drill_takes_its_cluster_along(c: tuple[str, str], drill_tmp: Path) -> None:
    """An attack run: `kill -9` of a PostgreSQL drill left its restored cluster running (pg_ctl had
    detached it, and no `finally` runs on SIGKILL). The cluster is the drill's child now, told to
    stop when the drill dies, as its gateway node is."""
    node_port = _free_port()
    drill = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dr", "drill", "--json", *c, "--port", str(node_port)],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(drill_tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: set[Process] = set()
    try:
        seen = until_listening(drill, node_port, timeout=240)
        assert any(_postmaster_under(process, drill_tmp) for process in seen), "no drill cluster ran"
        drill.kill()
        drill.wait()
        deadline = time.monotonic() + 30
        while any(still_running(process) for process in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [process for process in seen if still_running(process)]
        # What the killed drill could not remove names the restored cluster by reference only: its
        # URL holds the live URL's password (a re-attack run found it in a file beside the live
        # configuration).
        beside = Path(c[1]).parent
        kept = [*beside.glob(".gateway-drill-*.yaml"), *drill_tmp.rglob("gateway.yaml")]
        urls = [str(yaml.safe_load(path.read_text())["storage"]["url"]) for path in kept]
    finally:
        drill.kill()
        drill.wait()
        for process in seen:
            if still_running(process):
                os.kill(process[0], signal.SIGKILL)
        for path in drill_tmp.iterdir():  # what only the killed drill would have removed
            shutil.rmtree(path, ignore_errors=True)
        for path in Path(c[1]).parent.glob(".gateway-drill-*.yaml"):
            path.unlink()
    assert left == []
    assert port_free(node_port)
    assert urls
    assert all(url == "${env:GATEWAY_DRILL_STORAGE_URL}" for url in urls), urls


def test_backup_check_verify_and_point_in_time_restore(node: Node, tmp_path: Path) -> None:
    port, restored_port = _free_port(), _free_port()
    config = _config(node, tmp_path, port, name="gateway", cipher_pass=CIPHER_PASS)
    c = ("--config", str(config))
    for name in ("data", "sock", "repo"):
        node.mkdir(name)

    proc = _gateway("pgbackrest", "config", *c)
    assert proc.returncode == 0, proc.stderr
    assert "repo1-cipher-type=aes-256-cbc" in proc.stdout
    assert CIPHER_PASS not in proc.stdout  # shown redacted
    proc = _gateway("pgbackrest", "config", "--write", *c)
    assert proc.returncode == 0, proc.stderr
    written = node.home / "gateway.conf"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert f"repo1-cipher-pass={CIPHER_PASS}\n" in written.read_text()
    pg_lines = proc.stdout.split("# postgresql.conf (then restart PostgreSQL)\n", 1)[1]
    assert "archive_mode = on" in pg_lines
    assert "wal_level = replica" in pg_lines

    # The cluster, archiving through exactly the lines the command printed.
    node.initdb(node.home / "data")
    with (node.home / "data" / "postgresql.conf").open("a") as conf:
        conf.write(pg_lines)
    node.start(node.home / "data", port, node.home / "sock")

    assert _gateway("migrate", *c).returncode == 0
    assert _gateway("keys", "init", *c).returncode == 0
    for action in ("stanza-create", "check"):
        proc = _gateway("pgbackrest", action, *c)
        assert proc.returncode == 0, proc.stderr
    proc = _gateway("pgbackrest", "backup", "--type", "full", *c)
    assert proc.returncode == 0, proc.stderr
    assert "full backup of stanza gw done" in proc.stdout
    assert "backup command end: completed successfully" in proc.stderr  # the progress, shown
    # Recorded as the deployment's backup, as `gateway backup create` records it: readiness and the
    # missed-backup alert see a backup made this way too.
    made = proc.stdout.split("done (", 1)[1].split(")", 1)[0]
    assert asyncio.run(_sql(port, f"select status from backup_runs where backup_id = '{made}'")) == "ok"

    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    keyring = tmp_path / "data" / "keys" / "keyring.json"
    # pgBackRest picks the backup for a target time by its stop time in whole seconds, strictly
    # earlier: a target in the second the backup stopped in has no backup (exit 75, the hint below).
    time.sleep(1.1)
    version_a = asyncio.run(_set_policy(url, keyring, POLICY_A, "version A"))
    # The database's own clock: the restore target is compared with the commit times it recorded.
    target = asyncio.run(_sql(port, "select clock_timestamp()"))
    assert isinstance(target, datetime)
    time.sleep(1.1)
    version_b = asyncio.run(_set_policy(url, keyring, POLICY_B, "version B"))
    assert version_b == version_a + 1
    # A court order after the target: the restore rewinds it, `privacy hold carry` brings it back.
    held = _gateway(
        "privacy", "hold", "place", "CASE-PITR", "--reason", "subpoena", "--class", "audit_events", *c
    )
    assert held.returncode == 0, held.stderr
    # Close the segment holding B and wait until it is in the repository.
    asyncio.run(_sql(port, "select pg_switch_wal()::text"))
    assert _gateway("pgbackrest", "check", *c).returncode == 0

    proc = _gateway("pgbackrest", "verify", *c)
    assert proc.returncode == 0, proc.stderr
    proc = _gateway("pgbackrest", "info", "--json", *c)
    assert proc.returncode == 0, proc.stderr
    assert '"type":"full"' in proc.stdout
    # A running deployment's schedule makes the next one: incremental on a Wednesday (a full one is in
    # the repository), then verified, and recorded as the period's run.
    status, label = asyncio.run(_scheduled_backup(config, datetime(2026, 12, 2, 3, 0, tzinfo=UTC)))
    assert status == "ok"
    assert label is not None
    assert label.endswith("I")  # pgBackRest's label of an incremental backup
    proc = _gateway("pgbackrest", "info", "--json", *c)
    assert '"type":"incr"' in proc.stdout
    assert label in proc.stdout

    # The drill: the newest backup and the archived WAL into a fresh cluster, a gateway on it, a
    # sign-in and the audit chain; the live trail records it. Archive B's segment first: the drill
    # restores everything archived, so the restored node holds the latest policy.
    # Its temporary node goes under a directory of this test's (reachable by the cluster's owner), so
    # "nothing left behind" is about this drill alone, whatever else runs meanwhile.
    drill_tmp = node.mkdir("drill-tmp")
    os.chmod(drill_tmp, 0o755)
    proc = run_cli("dr", "drill", "--json", *c, env={"TMPDIR": str(drill_tmp)}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    drill = json.loads(proc.stdout)
    assert drill["outcome"] == "success", drill
    assert drill["backup_id"] == label
    assert drill["checks_passed"] == [
        "verify",
        "restore",
        "start_database",
        "start",
        "sign_in",
        "audit_chain",
    ]
    assert drill["rto_seconds"] > 0
    assert 0 <= drill["rpo_seconds"] < 600
    assert asyncio.run(_sql(port, "select count(*) from audit_events where kind = 'dr.drill'")) == 1
    # Nothing of the drill is left: no directory (its cluster was stopped before it was removed).
    assert list(drill_tmp.iterdir()) == []
    _a_killed_drill_takes_its_cluster_along(c, drill_tmp)

    # The live directory is refused without --force, and nothing is touched.
    proc = _gateway("pgbackrest", "restore", "--pg-path", str(node.home / "data"), *c)
    assert proc.returncode == 2
    assert "running PostgreSQL cluster" in proc.stderr

    # A target before every backup: pgBackRest refuses before writing, and the error says what to do.
    early = node.home / "too-early"
    proc = _gateway(
        "pgbackrest", "restore", "--pg-path", str(early), "--target-time", "2020-01-01T00:00:00Z", *c
    )
    assert proc.returncode == 1
    assert "pick a later --target-time" in proc.stderr
    assert not any(early.iterdir())

    restored = node.home / "restored"
    proc = _gateway(
        "pgbackrest", "restore", "--pg-path", str(restored), "--target-time", target.isoformat(), *c
    )
    assert proc.returncode == 0, proc.stderr
    assert f"restored stanza gw into {restored} to {target.isoformat()}" in proc.stdout
    node.start(restored, restored_port, node.home / "sock")
    _wait_promoted(restored_port)

    restored_url = f"postgresql://postgres@127.0.0.1:{restored_port}/postgres"
    assert asyncio.run(_live_policy(restored_url)) == (version_a, POLICY_A)
    assert asyncio.run(_live_policy(url)) == (version_b, POLICY_B)
    restored_config = _config(node, tmp_path, restored_port, name="restored", cipher_pass=CIPHER_PASS)
    r = ("--config", str(restored_config))
    assert "no active legal holds" in _gateway("privacy", "hold", "list", *r).stdout
    proc = _gateway("privacy", "hold", "carry", *r, "--from-config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "1 placed since the restore's target (CASE-PITR)" in proc.stdout
    assert "CASE-PITR" in _gateway("privacy", "hold", "list", *r).stdout
    # The restored copy does not push its WAL into the original's stanza.
    assert asyncio.run(_sql(restored_port, "show archive_mode")) == "off"

    # Each run is in the live trail; the restored copy was taken before the restore was recorded.
    assert asyncio.run(_audit_kinds(port)) == [
        ("backup.pg.created", "success"),
        ("backup.pg.verified", "success"),
        ("backup.pg.restored", "failure"),  # the target before every backup
        ("backup.pg.restored", "success"),
    ]

    # A wrong passphrase cannot read the repository, and says so.
    wrong = _config(node, tmp_path, port, name="wrong", cipher_pass="not the passphrase of this repo")
    assert _gateway("pgbackrest", "config", "--write", "--config", str(wrong)).returncode == 0
    proc = _gateway("pgbackrest", "verify", "--config", str(wrong))
    assert proc.returncode == 1
    assert (
        f"error: repository {node.home / 'repo'}: pgbackrest verify failed: No usable backup.info file"
        in proc.stderr
    )
    assert "cannot be read with this cipher_pass" in proc.stderr
    proc = _gateway("pgbackrest", "info", "--json", "--config", str(wrong))
    assert proc.returncode == 1
    assert "unable to load info file" in proc.stderr
    assert asyncio.run(_audit_kinds(port))[-1] == ("backup.pg.verified", "failure")


# -- identical state, damage named, copies at further targets ---------------------------------------------

PASSWORD = "amber quarry lantern voyage 42"
# rclone's remote "testremote" of type local, configured through the environment only.
RCLONE_ENV = {"RCLONE_CONFIG_TESTREMOTE_TYPE": "local", "RCLONE_CONFIG": "/nonexistent/rclone.conf"}


def _archiving_cluster(node: Node, tmp_path: Path, port: int, *, targets: tuple[str, ...] = ()) -> Path:
    """A cluster of the test's own archiving into a fresh stanza, migrated, with a keyring: its config."""
    config = _config(node, tmp_path, port, name="gateway", cipher_pass=CIPHER_PASS, targets=targets)
    c = ("--config", str(config))
    for name in ("data", "sock", "repo"):
        node.mkdir(name)
    proc = _gateway("pgbackrest", "config", "--write", *c)
    assert proc.returncode == 0, proc.stderr
    node.initdb(node.home / "data")
    with (node.home / "data" / "postgresql.conf").open("a") as conf:
        conf.write(proc.stdout.split("# postgresql.conf (then restart PostgreSQL)\n", 1)[1])
    node.start(node.home / "data", port, node.home / "sock")
    for args in (("migrate",), ("keys", "init"), ("pgbackrest", "stanza-create")):
        proc = _gateway(*args, *c)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return config


def _add_user(config: Path, name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "user", "add", name, "--password-stdin", "--config", str(config)],
        cwd=ROOT,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


async def _dump(port: int) -> dict[str, list[str]]:
    """Every table of the gateway's database, each row as text, sorted: equal dumps, equal state."""
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=10)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "select tablename from pg_tables where schemaname = 'public' order by 1"
            )
        ]
        dump = {}
        for table in tables:
            rows = await conn.fetch(f'select t::text as row from public."{table}" t')
            dump[table] = sorted(r["row"] for r in rows)
        return dump
    finally:
        await conn.close()


def _flip(path: Path) -> bytes:
    """Flip one bit in the middle of ``path`` (keeping its owner); the original bytes."""
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return original


def _put_back(path: Path, data: bytes, node: Node) -> None:
    path.write_bytes(data)
    node.own(path)


def _restored(node: Node, data: Path, port: int) -> dict[str, list[str]]:
    node.start(data, port, node.home / "sock")
    _wait_promoted(port)
    return asyncio.run(_dump(port))


def _pg_audit(port: int, kind: str) -> list[dict[str, object]]:
    async def fetch() -> list[dict[str, object]]:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=10)
        try:
            rows = await conn.fetch(
                "select outcome, details from audit_events where kind = $1 order by id", kind
            )
            return [{"outcome": r["outcome"], **json.loads(r["details"])} for r in rows]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_a_backup_restores_to_the_identical_state_and_damage_is_named(node: Node, tmp_path: Path) -> None:
    port, restored_port = _free_port(), _free_port()
    config = _archiving_cluster(node, tmp_path, port)
    c = ("--config", str(config))
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    asyncio.run(_set_policy(url, tmp_path / "data" / "keys" / "keyring.json", POLICY_A, "version A"))
    _add_user(config, "alice")

    # The source at backup time: nothing writes while the backup runs.
    before = asyncio.run(_dump(port))
    assert len(before["users"]) == 1
    assert len(before["audit_events"]) >= 2
    proc = _gateway("backup", "create", "--type", "full", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = proc.stdout.splitlines()[-1]
    assert f"backup {label}: full backup of stanza gw by pgBackRest in {node.home / 'repo'}" in proc.stdout
    assert "backup command end: completed successfully" in proc.stderr  # pgBackRest's progress
    # The live database moved on (the backup's audit record, its run for the readiness details) ...
    assert asyncio.run(_dump(port)) != before
    proc = _gateway("backup", "list", *c)
    assert proc.returncode == 0, proc.stderr
    assert f"full backup: {label}" in proc.stdout

    # ... the restore of exactly that backup, started as a cluster of its own, holds the state it had.
    restored = node.home / "restored"
    proc = _gateway("pgbackrest", "restore", "--pg-path", str(restored), "--backup", label, *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"restored stanza gw into {restored} to the end of backup {label}" in proc.stdout
    assert _restored(node, restored, restored_port) == before

    proc = _gateway("backup", "verify", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"repository {node.home / 'repo'} OK" in proc.stdout
    assert f"  backups: {label}\n" in proc.stdout

    # One flipped byte in a file of the backup: exit 1, the file and the backup label named.
    backup_dir = node.home / "repo" / "backup" / "gw" / label
    files = sorted(p for p in (backup_dir / "pg_data").rglob("*") if p.is_file() and p.stat().st_size > 512)
    damaged = files[len(files) // 2]
    relative = damaged.relative_to(backup_dir.parent).as_posix()
    original = _flip(damaged)
    proc = _gateway("backup", "verify", *c)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"repository {node.home / 'repo'} FAILED verification" in proc.stdout
    # pgBackRest reports a bad checksum, or (the flip broke decryption or decompression) a bad result.
    assert f"invalid checksum '{relative}'" in proc.stdout or f"invalid result '{relative}'" in proc.stdout
    assert f"backup: {label}, status: invalid" in proc.stdout
    assert f"  failing part: {label}\n" in proc.stdout
    _put_back(damaged, original, node)

    # A missing file of the backup, likewise.
    gone = files[0]
    kept = gone.read_bytes()
    gone.unlink()
    proc = _gateway("backup", "verify", *c)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"file missing '{gone.relative_to(backup_dir.parent).as_posix()}'" in proc.stdout
    assert f"  failing part: {label}\n" in proc.stdout
    _put_back(gone, kept, node)

    # A missing WAL segment the backup needs (pgBackRest 2.45's verify does not notice: the gateway does).
    info = json.loads(_gateway("pgbackrest", "info", "--json", *c).stdout)
    (backup,) = info[0]["backup"]
    start = backup["archive"]["start"]
    (segment,) = (node.home / "repo" / "archive" / "gw").glob(f"*/{start[:16]}/{start}-*")
    aside = node.home / "aside"
    segment.rename(aside)
    proc = _gateway("backup", "verify", *c)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"backup {label} cannot be restored: WAL segment {start} it needs is missing" in proc.stdout
    assert f"  failing part: {label}\n" in proc.stdout
    aside.rename(segment)
    proc = _gateway("pgbackrest", "verify", *c)  # the other command, the same checks
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pgbackrest verify: OK (stanza gw): 1 backup(s)" in proc.stdout

    verified = _pg_audit(port, "backup.pg.verified")
    assert [(v["outcome"], v.get("part")) for v in verified] == [
        ("success", None),
        ("failure", label),
        ("failure", label),
        ("failure", label),
        ("success", None),
    ]
    # One shape whichever command verified: a SIEM rule reads the same keys.
    assert {v["command"] for v in verified} == {"backup verify", "pgbackrest verify"}
    for v in verified:
        wanted = {
            "stanza",
            "command",
            *(("backups", "wal_segments") if v["outcome"] == "success" else ("part", "problem")),
        }
        assert wanted <= v.keys(), v
    (created,) = _pg_audit(port, "backup.pg.created")
    assert created["backup_id"] == label


def test_every_backup_is_copied_to_the_targets_where_it_verifies_and_restores(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in RCLONE_ENV.items():
        monkeypatch.setenv(name, value)  # the gateway commands' environment (and the scheduled job's)
    port, restored_port = _free_port(), _free_port()
    nas, remote = node.home / "nas", node.home / "remote"
    targets = (str(nas), f"rclone:testremote:{remote}/gw")
    config = _archiving_cluster(node, tmp_path, port, targets=targets)
    c = ("--config", str(config))
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    asyncio.run(_set_policy(url, tmp_path / "data" / "keys" / "keyring.json", POLICY_A, "version A"))
    before = asyncio.run(_dump(port))

    proc = _gateway("backup", "create", "--type", "full", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = proc.stdout.splitlines()[-1]
    assert f"replicated to {nas / 'pgbackrest'} (checked)" in proc.stdout
    assert f"replicated to testremote:{remote}/gw/pgbackrest (checked)" in proc.stdout
    # A pgBackRest repository of its own at each target, encrypted as the original (no plaintext).
    assert (nas / "pgbackrest" / "backup" / "gw" / label / "backup.manifest").is_file()
    assert (remote / "gw" / "pgbackrest" / "archive" / "gw" / "archive.info").is_file()
    assert b"pgbackrest" not in (nas / "pgbackrest" / "backup" / "gw" / "backup.info").read_bytes()[:64]
    (created,) = _pg_audit(port, "backup.pg.created")
    assert created["replicated"] == [str(nas / "pgbackrest"), f"testremote:{remote}/gw/pgbackrest"]
    assert created["verified"] is True  # copied only after the repository verified

    for target in targets:
        proc = _gateway("backup", "verify", "--target", target, *c)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"the copy at {target} OK" in proc.stdout
        assert f"  backups: {label}\n" in proc.stdout

    # The copy restores by itself (the site of the original is gone): exactly the backed-up state.
    restored = node.home / "restored"
    proc = _gateway(
        "pgbackrest", "restore", "--pg-path", str(restored), "--backup", label,
        "--repo-path", str(nas / "pgbackrest"), *c,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"from the copy at {nas / 'pgbackrest'}" in proc.stdout
    assert _restored(node, restored, restored_port) == before

    # Damage in a copy is found there, while the original verifies; the next backup mends the copy.
    copied = nas / "pgbackrest" / "backup" / "gw" / label / "pg_data"
    damaged = max((p for p in copied.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    _flip(damaged)
    proc = _gateway("backup", "verify", "--target", str(nas), *c)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"the copy at {nas} FAILED verification" in proc.stdout
    assert f"'{damaged.relative_to(copied.parent.parent).as_posix()}'" in proc.stdout
    assert f"  failing part: {label}\n" in proc.stdout
    assert _gateway("backup", "verify", *c).returncode == 0

    # The scheduled backup (a running deployment's) reaches every target too.
    status, incremental = asyncio.run(_scheduled_backup(config, datetime(2026, 12, 2, 3, 0, tzinfo=UTC)))
    assert status == "ok"
    assert incremental is not None
    for target in targets:
        proc = _gateway("backup", "verify", "--target", target, *c)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"  backups: {label}, {incremental}\n" in proc.stdout

    # A target that fails: reported (exit 1), the backup is made and the other target still copied.
    broken = _config(
        node,
        tmp_path,
        port,
        name="broken",
        cipher_pass=CIPHER_PASS,
        targets=("rclone:nosuchremote:x", str(nas)),
    )
    assert _gateway("pgbackrest", "config", "--write", "--config", str(broken)).returncode == 0
    proc = _gateway("pgbackrest", "backup", "--config", str(broken))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "replication to rclone:nosuchremote:x failed: rclone sync failed" in proc.stderr
    assert f"copied to {nas / 'pgbackrest'} (checked)" in proc.stdout
    newest = json.loads(_gateway("pgbackrest", "info", "--json", *c).stdout)[0]["backup"][-1]["label"]
    proc = _gateway("backup", "verify", "--target", str(nas), *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert newest in proc.stdout
    assert _pg_audit(port, "backup.pg.created")[-1]["outcome"] == "partial"
