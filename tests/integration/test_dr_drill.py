"""``gateway dr drill`` as an operator runs it: a real data directory, a real backup, a real fresh node.

Checked: the drill over a good backup passes with RPO and RTO numbers, leaves exactly one ``dr.drill``
success record in the live trail, leaves no process behind (its port is free, no child of it remains,
nothing holds the restored files) and the live database's rows unchanged but for that record; a
corrupted newest backup fails at the verify step, naming it, and records a failure ``dr.drill``; a
drill stopped by Ctrl-C or SIGTERM while its node runs stops the node too and records a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import ROOT, free_port, run_cli
from tests.support.processes import Process, descendants, port_free, still_running, until_listening

PASSWORD = "amber quarry lantern voyage 42"
POLICY = "p, authenticated, app, /*, GET, allow\ng, user:alice, admin\n"


def _rows(database: Path) -> dict[str, list[tuple[object, ...]]]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}


def _drills(database: Path) -> list[tuple[str, dict[str, object]]]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return [
            (outcome, json.loads(details))
            for outcome, details in conn.execute(
                "SELECT outcome, details FROM audit_events WHERE kind = 'dr.drill' ORDER BY seq"
            )
        ]


# A process is its pid and its start time (/proc/<pid>/stat field 22): pids wrap at 32768 here, and
# a parallel test suite starts enough processes to reuse a pid the drill's node had minutes before.
@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """A live node's config and database: two users, a policy file, audit records, one backup."""
    data = tmp_path / "data"
    policy = tmp_path / "policy.csv"
    policy.write_text(POLICY)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "public_url: https://gw.example.test\n"
        f"data_dir: {data}\n"
        "policy:\n  file: policy.csv\n"  # relative: the drill node must read it beside the live file
        "routes:\n  - name: app\n    host: app.example.test\n    upstreams: [http://127.0.0.1:9]\n"
    )
    for user in ("alice", "bob"):
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "user", "add", user, "--password-stdin", "-c", str(config)],
            cwd=ROOT,
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    assert run_cli("user", "disable", "bob", "-c", str(config)).returncode == 0
    proc = run_cli("backup", "create", "-c", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return config, data / "gateway.db"


def _drill(config: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[Process]]:
    """Run the drill; also return the processes it left behind (children of its own, still alive)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dr", "drill", "--json", "-c", str(config), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    seen: set[Process] = set()
    try:
        while proc.poll() is None:
            seen |= descendants(proc.pid)
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode is not None
    alive = {process for process in seen if still_running(process)}
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), alive


def test_drill_restores_starts_signs_in_and_records_success(site: tuple[Path, Path]) -> None:
    config, database = site
    before = _rows(database)
    port = free_port()

    proc, left = _drill(config, "--port", str(port))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["outcome"] == "success"
    assert report["checks_passed"] == ["verify", "restore", "start", "sign_in", "audit_chain"]
    assert report["checks_failed"] == []
    assert 0 <= report["rpo_seconds"] < 120
    assert 0 < report["rto_seconds"] < 90
    assert report["newest_record_age_seconds"] >= report["rpo_seconds"] - 1
    assert f"127.0.0.1:{port}" in report["checks"][2]["detail"]
    # The node is gone: its port is free and no process the drill started remains.
    assert port_free(port)
    assert left == set()
    # The live database gained the drill's record and nothing else: no drill account, no sessions.
    after = _rows(database)
    drills = _drills(database)
    assert len(drills) == 1
    outcome, details = drills[0]
    assert outcome == "success"
    assert details["checks_failed"] == []
    assert details["rto_seconds"] == report["rto_seconds"]
    assert details["backup_id"] == report["backup_id"]
    assert "dr-drill" not in json.dumps(after["users"], default=str)
    for table, rows in before.items():
        if table != "audit_events":
            assert after[table] == rows, table
    assert set(before["audit_events"]) <= set(after["audit_events"])
    assert len(after["audit_events"]) == len(before["audit_events"]) + 1


def test_a_corrupted_backup_fails_the_verify_step_and_records_a_failure(site: tuple[Path, Path]) -> None:
    config, database = site
    backups = sorted((database.parent / "backups").iterdir())
    part = backups[-1] / "gateway.db.enc"
    assert part.exists(), sorted(p.name for p in backups[-1].iterdir())
    blob = bytearray(part.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    part.write_bytes(bytes(blob))

    proc, left = _drill(config)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["outcome"] == "failure"
    assert report["checks_failed"] == ["verify"]
    assert report["checks_passed"] == []
    assert "gateway.db" in report["problem"]
    assert report["rto_seconds"] is None
    assert left == set()
    [(outcome, details)] = _drills(database)
    assert outcome == "failure"
    assert details["checks_failed"] == ["verify"]
    assert "gateway.db" in str(details["problem"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_drill_stops_its_node_and_records_a_failure(
    site: tuple[Path, Path], signum: signal.Signals
) -> None:
    config, database = site
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dr", "drill", "--json", "-c", str(config), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[Process] = set()
    try:
        # Interrupt once the node listens: the drill is then at its start or sign-in step.
        seen = until_listening(proc, port)
        assert seen, "the node runs as a child of the drill"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    report = json.loads(out)
    assert report["outcome"] == "failure"
    assert report["checks_failed"] == ["interrupted"]
    assert port_free(port)
    assert {process for process in seen if still_running(process)} == set()
    [(outcome, details)] = _drills(database)
    assert outcome == "failure"
    assert details["checks_failed"] == ["interrupted"]


def test_a_killed_drill_takes_its_node_along(site: tuple[Path, Path]) -> None:
    """An attack run: `kill -9` of a drill left its node serving the restored accounts. The node is
    told to stop when the drill dies (PR_SET_PDEATHSIG), which no `finally` can do for SIGKILL."""
    config, _database = site
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dr", "drill", "--json", "-c", str(config), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: set[Process] = set()
    try:
        seen = until_listening(proc, port)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while {process for process in seen if still_running(process)} and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for process in seen:
            if still_running(process):
                os.kill(process[0], signal.SIGKILL)
        # What only the killed drill would have removed: its node's directory, named in the node's
        # configuration beside the live one.
        for node_config in config.parent.glob(".gateway-drill-*.yaml"):
            data_dir = yaml.safe_load(node_config.read_text())["data_dir"]
            shutil.rmtree(Path(data_dir).parent, ignore_errors=True)
    assert {process for process in seen if still_running(process)} == set()
    assert port_free(port)


def test_the_drills_node_makes_again_what_was_done_since_the_backup(site: tuple[Path, Path]) -> None:
    """An attack run: a person disabled after the backup signed in on the drill's node, which proxied to
    the live apps. The drill takes the deployment's account ledger along, as a restore does."""
    config, _database = site
    assert run_cli("user", "disable", "alice", "-c", str(config)).returncode == 0
    proc, left = _drill(config, "--keep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    node_dir = Path(json.loads(proc.stdout)["node_dir"])
    try:
        with closing(sqlite3.connect(node_dir / "data" / "gateway.db")) as conn:
            (disabled,) = conn.execute("SELECT disabled FROM users WHERE username = 'alice'").fetchone()
        assert disabled
    finally:
        shutil.rmtree(node_dir, ignore_errors=True)
    assert left == set()


def test_a_drill_of_the_backup_from_before_a_compromised_key_passes(site: tuple[Path, Path]) -> None:
    """An attack run: after `keys rotate --keyring --compromised`, the drill of the trusted backup made
    before the mark always failed its audit_chain check ("records were cut"), while a restore of the
    same backup verified. The drill's copy records its restore (backup.restored) as a restore does."""
    config, _database = site
    rotated = run_cli("keys", "rotate", "--keyring", "--compromised", "-c", str(config))
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr

    proc, left = _drill(config, "--keep")

    report = json.loads(proc.stdout)
    node_dir = Path(report["node_dir"])
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert report["checks_passed"] == ["verify", "restore", "start", "sign_in", "audit_chain"]
        with closing(sqlite3.connect(node_dir / "data" / "gateway.db")) as conn:
            restored = conn.execute(
                "SELECT actor, details FROM audit_events WHERE kind = 'backup.restored'"
            ).fetchall()
        assert [(actor, json.loads(details)["backup_id"]) for actor, details in restored] == [
            ("system:dr-drill", report["backup_id"])
        ]
    finally:
        shutil.rmtree(node_dir, ignore_errors=True)
    assert left == set()
