"""``gateway audit …`` as an operator runs it: real subprocesses on SQLite and PostgreSQL.

Checked: exit codes (0 verified, 1 tampered or failed, 2 user error), what stdout and stderr say, and
never a traceback. Records are written by several OS processes at once, as workers and replicas do,
keyed with the keyring as the gateways key them. The attacker of the forgery tests holds only the
database: a separate process that computes what the public canonical form allows and inserts it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.audit.chain import GENESIS, ChainRecord
from tests.integration.harness import ROOT
from tests.integration.harness import run_cli_checked as gateway

ACTIONS = ["list", "verify", "checkpoint", "export", "verify-bundle"]

_WRITER = """\
import asyncio, sys
from gateway.audit.trail import AuditLog
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

async def main(url, name, n, keyring_path):
    # "-": write as the code before keyed chains did (legacy records).
    keyring = None if keyring_path == "-" else Keyring.load_or_create(keyring_path, allow_create=True)
    db = Database.open(url, pool_size=2)
    try:
        log = AuditLog(db, keyring=keyring)
        for i in range(n):
            await log.record("test.append", actor=name, subject="s", details={"i": i})
    finally:
        await db.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""

# Database access only: read the head, build the next record, hash it with what is public (the
# canonical form and SHA-256; the label says version 1 or claims version 2 under the real key id),
# insert it with SQLAlchemy. Prints the forged record's id.
_FORGER = """\
import asyncio, dataclasses, hashlib, sys
from sqlalchemy import insert, select
from gateway.audit.chain import ChainRecord
from gateway.audit.models import AuditEvent
from gateway.store.db import Database

async def main(url, version):
    db = Database.open(url, pool_size=1)
    try:
        async with db.session() as session:
            head = ChainRecord.of((await session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()))).first())
            forged = dataclasses.replace(
                head, id=head.id + 1, seq=head.seq + 1, kind="admin.user.roles", actor="admin:alice",
                subject="mallory", details='{"roles": ["admin"]}', prev_hash=head.record_hash,
                version=version, key_id="" if version == 1 else head.key_id,
            )
            digest = hashlib.sha256(forged.canonical()).hexdigest()
            await session.execute(insert(AuditEvent).values(
                id=forged.id, at=forged.at, kind=forged.kind, actor=forged.actor, subject=forged.subject,
                ip=forged.ip, outcome=forged.outcome, details=forged.details, seq=forged.seq,
                prev_hash=forged.prev_hash, record_hash=digest, chain_version=forged.version,
                key_id=forged.key_id,
            ))
            await session.commit()
        print(forged.id)
    finally:
        await db.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def write_concurrently(url: str, processes: int, each: int, keyring: Path | None) -> None:
    """Append from several OS processes at once (each its own engine and connections).

    ``keyring=None`` writes legacy (unkeyed) records, as the release before keyed chains did.
    """
    key_arg = str(keyring) if keyring is not None else "-"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, url, f"worker:{p}", str(each), key_arg], cwd=ROOT)
        for p in range(processes)
    ]
    try:
        for proc in procs:
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def forge_tail(url: str, *, version: int) -> int:
    """Append a correctly linked, SHA-256-hashed record with database access only; its id."""
    proc = subprocess.run(
        [sys.executable, "-c", _FORGER, url, str(version)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\n")
    assert gateway("migrate", "--config", str(path)).returncode == 0
    return path


def _db(config: Path) -> sqlite3.Connection:
    return sqlite3.connect(config.parent / "data" / "gateway.db")


def _url(config: Path) -> str:
    return f"sqlite+aiosqlite:///{config.parent / 'data' / 'gateway.db'}"


def _keyring(config: Path) -> Path:
    return config.parent / "data" / "keys" / "keyring.json"


def test_help_and_usage() -> None:
    proc = gateway("audit", "--help")
    assert proc.returncode == 0
    for action in ACTIONS:
        assert action in proc.stdout
        assert gateway("audit", action, "--help").returncode == 0
    proc = gateway("audit")
    assert proc.returncode == 2
    assert "ACTION" in proc.stderr


def test_verify_checkpoint_list_and_export(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    assert gateway("keys", "init", *c).returncode == 0
    assert gateway("keys", "rotate", "--keyring", *c).returncode == 0  # recorded as keys.rotated
    write_concurrently(_url(config), processes=3, each=5, keyring=_keyring(config))

    proc = gateway("audit", "checkpoint", *c)
    assert proc.returncode == 0, proc.stderr
    checkpoint = json.loads(proc.stdout)
    assert (checkpoint["type"], checkpoint["head_seq"], checkpoint["count"]) == ("audit.checkpoint", 16, 16)

    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 0, proc.stdout
    assert "audit trail OK: 16 record(s) verified" in proc.stdout
    assert f"head hash: {checkpoint['head_hash']}" in proc.stdout
    assert "checkpoints: 1 reached and signatures valid" in proc.stdout
    assert "keyed: seq 1..16, HMAC under the chain key of keyring key(s) " in proc.stdout
    assert "legacy" not in proc.stdout

    proc = gateway("audit", "list", *c, "--kind", "keys.rotated")
    assert proc.returncode == 0
    assert "keys.rotated" in proc.stdout
    assert "keyring_key" in proc.stdout
    proc = gateway("audit", "list", *c, "--limit", "3", "--json")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [16, 15, 14]
    # Who did what: the filters a security engineer reaches for first, each able to exclude.
    rotated = json.loads(gateway("audit", "list", *c, "--kind", "keys.*", "--json").stdout)
    assert rotated["kind"] == "keys.rotated"
    for flag, value in (
        ("--actor", rotated["actor"]),
        ("--subject", "keys"),
        ("--outcome", rotated["outcome"]),
    ):
        proc = gateway("audit", "list", *c, flag, value, "--json")
        assert proc.returncode == 0, proc.stderr
        found = [json.loads(line) for line in proc.stdout.splitlines()]
        assert rotated["seq"] in [r["seq"] for r in found]
        assert all(r[flag.removeprefix("--")] == value for r in found)
    proc = gateway("audit", "list", *c, "--actor", "user:nobody-at-all")
    assert proc.stdout.strip() == "no audit records match"
    proc = gateway("audit", "list", *c, "--until", "2000-01-01", "--json")
    assert proc.returncode == 0
    assert proc.stdout == ""
    proc = gateway(
        "audit", "list", *c, "--since", "2000-01-01", "--until", "2100-01-01", "--limit", "100", "--json"
    )
    assert len(proc.stdout.splitlines()) == 16

    bundle = tmp_path / "evidence.zip"
    proc = gateway("audit", "export", *c, "--since", "2000-01-01", "--until", "2100-01-01", "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert "16 record(s) (seq 1..16" in proc.stdout
    proc = gateway("audit", "verify-bundle", str(bundle))
    assert proc.returncode == 0, proc.stdout
    assert "bundle OK: 16 record(s)" in proc.stdout
    assert "signatures NOT checked" in proc.stdout
    assert "keyed records: 16 linked correctly, their MACs NOT checked" in proc.stdout
    assert "window NOT authenticated: sealed with keyring key" in proc.stdout
    proc = gateway("audit", "verify-bundle", str(bundle), *c)
    assert proc.returncode == 0, proc.stdout
    assert "checkpoints inside the range: 1 match; signatures valid" in proc.stdout
    # --until 2100-01-01 ran past the export time: the window ends there.
    window = next(line for line in proc.stdout.splitlines() if line.startswith("  window: "))
    assert window.startswith("  window: 2000-01-01 00:00:00.000000Z .. ")
    assert window.endswith(
        "Z (until exclusive): records seq 1..16 after the anchor seq 0; chain head at export seq 16"
    )
    assert _window_end(window) <= datetime.now(UTC)
    assert "  window authenticated: sealed at export with keyring key " in proc.stdout


def test_tampering_is_named_with_the_first_bad_record(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=2, each=5, keyring=_keyring(config))
    assert gateway("audit", "checkpoint", *c).returncode == 0
    saved = tmp_path / "from-the-sinks.jsonl"
    saved.write_text((config.parent / "data" / "audit-checkpoints" / "checkpoints.jsonl").read_text())

    with _db(config) as conn:
        conn.execute("UPDATE audit_events SET outcome = 'failure' WHERE seq = 7")
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 1
    assert "record id 7 (seq 7): its content does not match its hash" in proc.stdout
    assert "What to do:" in proc.stdout
    with _db(config) as conn:
        conn.execute("UPDATE audit_events SET outcome = 'success' WHERE seq = 7")
    assert gateway("audit", "verify", *c).returncode == 0
    # The same checkpoints given again (the local file by another name, a copy from the sinks) count
    # once each: a first-day run read "4 reached" for a file of two.
    local = config.parent / "data" / "audit-checkpoints" / "checkpoints.jsonl"
    lines = len(local.read_text().splitlines())
    again = gateway("audit", "verify", *c, "--checkpoint", str(local), "--checkpoint", str(saved))
    assert again.returncode == 0, again.stdout
    assert f"checkpoints: {lines} reached" in again.stdout
    assert again.stdout.count("checkpoints.jsonl") == 1  # the local file is named once

    # Truncation: the stored chain is valid, only the checkpoint shows what is gone.
    with _db(config) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq >= 9")
    (config.parent / "data" / "audit-checkpoints" / "checkpoints.jsonl").unlink()  # the attacker's too
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 0
    assert "a truncated tail cannot be detected" in proc.stdout
    proc = gateway("audit", "verify", *c, "--checkpoint", str(saved))
    assert proc.returncode == 1
    assert "record(s) seq 9..10 are gone from the end of the chain" in proc.stdout
    assert "truncated" in proc.stdout


def test_user_errors(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    cases = [
        (("audit", "list", *c, "--since", "last tuesday"), "not an ISO 8601 time"),
        (
            ("audit", "list", *c, "--limit", "0"),
            "argument --limit: expected a whole number from 1 to 10000, got 0",
        ),
        (
            ("audit", "list", *c, "--since", "2026-02-01", "--until", "2026-01-01"),
            "--since must be before --until",
        ),
        (("audit", "verify", *c, "--checkpoint", str(tmp_path / "nope.jsonl")), "no such checkpoint file"),
        (("audit", "verify", *c, "--checkpoint", str(config)), "not JSON"),
        (("audit", "export", *c, "--since", "2026-02-01", "--until", "2026-01-01", "-o", "x.zip"), "before"),
        (("audit", "verify-bundle", str(tmp_path / "nope.zip")), "no such bundle"),
        (("audit", "verify-bundle", str(config)), "neither a directory nor a zip file"),
        (("audit", "verify", "--config", str(tmp_path / "missing.yaml")), "missing.yaml"),
    ]
    for args, complaint in cases:
        proc = gateway(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert complaint in proc.stderr, (args, proc.stderr)


def _window_end(line: str) -> datetime:
    """The end of the window a "  window: SINCE .. UNTIL (until exclusive)…" line of the CLI names."""
    end = line.split(" .. ", 1)[1].split(" (until exclusive)", 1)[0]
    return datetime.strptime(end, "%Y-%m-%d %H:%M:%S.%fZ").replace(tzinfo=UTC)


def test_an_export_ends_at_the_export_time(config: Path, tmp_path: Path) -> None:
    # An outside review exported with --until 26 days ahead: the seal vouched for a window still open, and
    # records written inside it afterwards were missing from a bundle that verified as authenticated.
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=1, each=3, keyring=_keyring(config))
    bundle = tmp_path / "ev.zip"
    before = datetime.now(UTC)
    ahead = (before + timedelta(days=26)).strftime("%Y-%m-%dT%H:%M:%SZ")
    proc = gateway("audit", "export", *c, "--since", "2000-01-01", "--until", ahead, "-o", str(bundle))
    after = datetime.now(UTC)
    assert proc.returncode == 0, proc.stderr
    assert "3 record(s) (seq 1..3" in proc.stdout
    window = next(line for line in proc.stdout.splitlines() if line.startswith("  window: "))
    assert before <= _window_end(window) <= after
    assert (
        f"  --until {(before + timedelta(days=26)).strftime('%Y-%m-%d %H:%M:%S')}.000000Z is later than the "
        "export time: the window ends at the export time (records written after the export are not in the "
        "bundle; export again later for them)"
    ) in proc.stdout
    write_concurrently(_url(config), processes=1, each=2, keyring=_keyring(config))  # seq 4..5, after it
    proc = gateway("audit", "verify-bundle", str(bundle), *c, "--require-seal")
    assert proc.returncode == 0, proc.stdout
    window = next(line for line in proc.stdout.splitlines() if line.startswith("  window: "))
    assert before <= _window_end(window) <= after
    assert "records seq 1..3 after the anchor seq 0; chain head at export seq 3" in window
    # An --until before now is kept, and nothing is said about it.
    proc = gateway(
        "audit", "export", *c, "--since", "2000-01-01", "--until", "2001-01-01", "-o", str(tmp_path / "b")
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "  window: 2000-01-01 00:00:00.000000Z .. 2001-01-01 00:00:00.000000Z (until exclusive)\n"
        in proc.stdout
    )
    assert "later than the export time" not in proc.stdout
    # A window that starts after now holds nothing yet: a user error, nothing written.
    proc = gateway(
        "audit", "export", *c, "--since", ahead, "--until", "2200-01-01", "-o", str(tmp_path / "c.zip")
    )
    assert proc.returncode == 2, proc.stdout
    assert "--since must be before now: the window ends at the export time at the latest" in proc.stderr
    assert not (tmp_path / "c.zip").exists()


def test_tampered_bundle_fails(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=1, each=4, keyring=_keyring(config))
    bundle = tmp_path / "bundle"
    assert (
        gateway(
            "audit", "export", *c, "--since", "2000-01-01", "--until", "2100-01-01", "-o", str(bundle)
        ).returncode
        == 0
    )
    events = bundle / "events.jsonl"
    events.write_text(events.read_text().replace("worker:0", "worker:9", 1))
    proc = gateway("audit", "verify-bundle", str(bundle))
    assert proc.returncode == 1
    assert "events.jsonl does not match its SHA-256 in the manifest" in proc.stdout


def _retouch(bundle: Path, out: Path, *, cut: str, strip_seal: bool) -> Path:
    """The bundle with records cut ("tail": the last two, heads moved back; "head": the first two, the
    anchor moved), its SHA-256 sums recomputed, and the seal kept or removed: what an outside review
    did by hand with unzip and zip."""
    import zipfile

    with zipfile.ZipFile(bundle) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    events = files["events.jsonl"].decode().splitlines(keepends=True)
    chain = json.loads(files["chain.json"])
    if cut == "tail":
        events, chain["records"] = events[:-2], chain["records"][:-2]
        chain["head_at_until"] = chain["chain_head_at_export"] = chain["records"][-1]
    else:
        events, chain["records"] = events[2:], chain["records"][2:]
        chain["anchor"] = {**json.loads(files["chain.json"])["records"][1], "v": json.loads(events[0])["v"]}
    files["events.jsonl"], files["chain.json"] = "".join(events).encode(), json.dumps(chain).encode()
    manifest = json.loads(files["manifest.json"])
    if strip_seal:
        del manifest["seal"]
    for name in ("events.jsonl", "chain.json"):
        manifest["files"][name] = hashlib.sha256(files[name]).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out


def test_a_bundle_cut_at_either_end_fails_or_says_its_window_is_not_authenticated(
    config: Path, tmp_path: Path
) -> None:
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=1, each=15, keyring=_keyring(config))
    assert gateway("audit", "checkpoint", *c).returncode == 0  # seq 15, signed now: inside the window
    bundle = tmp_path / "ev.zip"
    window = ("--since", "2000-01-01", "--until", "2100-01-01")
    proc = gateway("audit", "export", *c, *window, "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    exported = proc.stdout

    # The last two records cut, the heads moved to seq 13, the sums recomputed: the seal says otherwise.
    proc = gateway(
        "audit", "verify-bundle", str(_retouch(bundle, tmp_path / "a.zip", cut="tail", strip_seal=False)), *c
    )
    assert proc.returncode == 1, proc.stdout
    assert (
        "bundle FAILED verification: the seal made at export vouches for another head_at_until (the last "
        "record of the range): it says seq 15, the bundle seq 13"
    ) in proc.stdout
    # The seal removed too: the signed checkpoint inside the window saw seq 15.
    proc = gateway(
        "audit", "verify-bundle", str(_retouch(bundle, tmp_path / "b.zip", cut="tail", strip_seal=True)), *c
    )
    assert proc.returncode == 1, proc.stdout
    assert (
        "inside the window, saw the chain reach seq 15, but the bundle's range ends at seq 13" in proc.stdout
    )
    # The first two cut and the anchor moved, the seal removed: nothing in the bundle shows it, and the
    # verdict says its window is not authenticated; a sealed bundle required, it fails.
    cut = _retouch(bundle, tmp_path / "c.zip", cut="head", strip_seal=True)
    proc = gateway("audit", "verify-bundle", str(cut), *c)
    assert proc.returncode == 0, proc.stdout
    assert "bundle OK: 13 record(s) (seq 3..15" in proc.stdout
    assert "  window NOT authenticated: the bundle carries no seal" in proc.stdout
    proc = gateway("audit", "verify-bundle", str(cut), *c, "--require-seal")
    assert proc.returncode == 1, proc.stdout
    assert "its window is not authenticated: the bundle carries no seal" in proc.stdout
    proc = gateway(
        "audit", "verify-bundle", str(_retouch(bundle, tmp_path / "d.zip", cut="head", strip_seal=False)), *c
    )
    assert proc.returncode == 1, proc.stdout
    assert (
        "vouches for another anchor (the record before the range): it says seq 0, the bundle seq 2"
        in proc.stdout
    )
    assert "  sealed with keyring key " in exported


@pytest.mark.parametrize(("column", "value"), [("at", "2026-01-01 00:00:00.000000"), ("id", "99")])
def test_an_edited_head_record_is_named_as_edited_not_as_truncated(
    config: Path, column: str, value: str
) -> None:
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=1, each=5, keyring=_keyring(config))
    assert gateway("audit", "checkpoint", *c).returncode == 0  # the local checkpoint of seq 5
    with _db(config) as conn:
        conn.execute(f"UPDATE audit_events SET {column} = ? WHERE seq = 5", (value,))
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 1, proc.stdout
    assert "(seq 5): its content does not match its hash" in proc.stdout
    assert "gone from the end" not in proc.stdout


def test_concurrent_processes_keep_one_chain(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\nstorage: {{url: '{database_url}'}}\n"
    )
    assert gateway("migrate", "--config", str(config)).returncode == 0
    write_concurrently(
        database_url, processes=4, each=15, keyring=tmp_path / "data" / "keys" / "keyring.json"
    )
    proc = gateway("audit", "verify", "--config", str(config))
    assert proc.returncode == 0, proc.stdout
    assert "audit trail OK: 60 record(s) verified" in proc.stdout
    assert "(seq 60, id 60)" in proc.stdout
    assert "keyed: seq 1..60" in proc.stdout


def _pg_or_sqlite_config(database_url: str, tmp_path: Path) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\nstorage: {{url: '{database_url}'}}\n"
    )
    assert gateway("migrate", "--config", str(config)).returncode == 0
    return config


@pytest.mark.parametrize("version", [1, 2], ids=["as-legacy", "claiming-keyed"])
def test_a_record_forged_at_the_tail_with_database_access_is_named(
    database_url: str, tmp_path: Path, version: int
) -> None:
    # Issue 12 item 11: before keyed chains, this forgery verified and the next checkpoint signed it.
    config = _pg_or_sqlite_config(database_url, tmp_path)
    c = ("--config", str(config))
    write_concurrently(database_url, processes=2, each=3, keyring=tmp_path / "data" / "keys" / "keyring.json")
    assert gateway("audit", "checkpoint", *c).returncode == 0
    local = tmp_path / "data" / "audit-checkpoints" / "checkpoints.jsonl"
    signed_before = local.read_text()

    forged = forge_tail(database_url, version=version)
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 1, proc.stdout
    assert f"audit trail FAILED verification: record id {forged} (seq 7): " in proc.stdout
    assert "written without the chain key" in proc.stdout
    assert "(6 record(s) verified before the problem)" in proc.stdout
    # The checkpointer verifies before it signs: no checkpoint over the forgery.
    proc = gateway("audit", "checkpoint", *c)
    assert proc.returncode == 1
    assert f"record id {forged} (seq 7)" in proc.stderr
    assert local.read_text() == signed_before


def _rewrite_all_as_legacy(config: Path) -> None:
    """The rewrite a keyed chain alone cannot refuse: every record recomputed as a legacy record."""
    prev = GENESIS
    with _db(config) as conn:
        rows = conn.execute(
            "SELECT id, seq, at, kind, actor, subject, ip, outcome, details FROM audit_events ORDER BY seq"
        ).fetchall()
        for rid, seq, at, kind, actor, subject, ip, outcome, details in rows:
            when = datetime.fromisoformat(at).replace(tzinfo=UTC)
            record = ChainRecord(rid, seq, when, kind, actor, subject, ip, outcome, details, prev, "")
            digest = hashlib.sha256(record.canonical()).hexdigest()
            conn.execute(
                "UPDATE audit_events SET prev_hash = ?, record_hash = ?, chain_version = 1, key_id = '', "
                "salts = '{}', erased = '{}' WHERE id = ?",
                (prev, digest, rid),
            )
            prev = digest


def test_verify_holds_the_chain_against_the_local_checkpoints(config: Path) -> None:
    # Without --checkpoint, <data_dir>/audit-checkpoints/ is read: a chain that no longer has the
    # hash a checkpoint signed at its position, or that is shorter than the last checkpoint, fails.
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=1, each=4, keyring=_keyring(config))
    assert gateway("audit", "checkpoint", *c).returncode == 0
    _rewrite_all_as_legacy(config)
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 1, proc.stdout
    assert "the chain was rewritten: the record at seq 4 no longer has the hash the checkpoint" in proc.stdout
    with _db(config) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 4")
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 1, proc.stdout
    assert "record(s) seq 4 are gone from the end of the chain" in proc.stdout


def test_a_chain_written_before_keying_verifies_and_is_sealed(config: Path) -> None:
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=2, each=2, keyring=None)  # the previous release
    assert gateway("keys", "init", *c).returncode == 0
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 0, proc.stdout
    assert "audit trail OK: 4 record(s) verified" in proc.stdout
    assert "legacy: 4 record(s) from before the chain was keyed" in proc.stdout
    # The first checkpoint seals the legacy part with a keyed record (the changeover point) ...
    proc = gateway("audit", "checkpoint", *c)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["head_seq"] == 5
    proc = gateway("audit", "list", *c, "--limit", "1", "--json")
    seal = json.loads(proc.stdout)
    assert (seal["kind"], seal["v"], seal["seq"]) == ("audit.chain_keyed", 3, 5)
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 0, proc.stdout
    assert "keyed: seq 5..5" in proc.stdout
    # ... so the legacy forgery that used to work is now named.
    forged = forge_tail(_url(config), version=1)
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 1
    assert (
        f"record id {forged} (seq 6): it is an unkeyed (version 1) record after the chain became keyed at seq 5"
        in (proc.stdout)
    )


def test_verify_without_the_keyring_does_not_vouch_for_keyed_records(config: Path) -> None:
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=1, each=2, keyring=_keyring(config))
    _keyring(config).rename(config.parent / "elsewhere.json")
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 1, proc.stdout
    assert "audit trail NOT verified: 2 keyed record(s) cannot be checked without the keyring" in proc.stdout
