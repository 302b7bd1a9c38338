"""Signed checkpoints, the checkpoint task, evidence bundles, and the events recorded for operators."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import stat
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from gateway.audit.bundle import BundleError, export_bundle, verify_bundle
from gateway.audit.chain import GENESIS, ChainRecord
from gateway.audit.checkpoint import (
    ChainBroken,
    Checkpointer,
    check_signature,
    load_checkpoints,
    sign_checkpoint,
    verify_trail,
)
from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog, record_quietly
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.pipeline.snapshot import LiveState, build_snapshot
from gateway.root.reload import Reloader
from gateway.settings.loader import load_settings
from gateway.store.db import Database

T0 = 1_800_000_000.0


def _keyring(tmp_path: Path) -> tuple[Keyring, Path]:
    path = tmp_path / "keyring.json"
    return Keyring.create(path), path


async def _fill(
    db: Database, clock: FakeClock, n: int, step: float = 60.0, *, keyring: Keyring | None = None
) -> None:
    audit = AuditLog(db, clock=clock, keyring=keyring)
    for i in range(n):
        await audit.record("signin.password", actor=f"user:u{i}", subject=f"u{i}", details={"i": i})
        clock.advance(step)


# --- signatures ---------------------------------------------------------------------------------------


def test_checkpoint_signature_survives_a_keyring_rotation(tmp_path: Path) -> None:
    keyring, path = _keyring(tmp_path)
    body = {
        "head_id": 3,
        "head_seq": 3,
        "head_hash": "ab" * 32,
        "count": 3,
        "at": "2027-01-15T08:00:00+00:00",
    }
    doc = sign_checkpoint(body, keyring)
    assert (doc["alg"], doc["kid"]) == ("HMAC-SHA256", keyring.active_id)
    keyring.rotate(path)
    assert check_signature(doc, keyring) is None  # signed under the old key, which is kept


def test_a_checkpoint_signed_with_a_compromised_key_vouches_only_for_heads_before_the_mark(
    tmp_path: Path,
) -> None:
    from gateway.crypto.keyring import Compromise

    keyring, path = _keyring(tmp_path)
    old = keyring.active_id
    body = {
        "head_id": 3,
        "head_seq": 3,
        "head_hash": "ab" * 32,
        "count": 3,
        "at": "2027-01-15T08:00:00+00:00",
    }
    before = sign_checkpoint(body, keyring)
    # Whoever holds the leaked key signs a checkpoint of a longer (forged) chain.
    forged = sign_checkpoint({**body, "head_id": 9, "head_seq": 9, "count": 9}, keyring)
    keyring.rotate(path)
    keyring.mark_compromised(path, old, Compromise("2027-01-15T09:00:00+00:00", 5))
    assert check_signature(before, keyring) is None
    why = check_signature(forged, keyring)
    assert why is not None
    assert "marked compromised" in why


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"head_seq": 2}, "does not verify"),
        ({"head_hash": "cd" * 32}, "does not verify"),
        ({"mac": "00" * 32}, "does not verify"),
        ({"kid": "kother"}, "does not hold"),
        ({"alg": "none"}, "unknown signature algorithm"),
    ],
)
def test_altered_checkpoints_are_refused(tmp_path: Path, change: dict[str, Any], complaint: str) -> None:
    keyring, _ = _keyring(tmp_path)
    body = {
        "head_id": 3,
        "head_seq": 3,
        "head_hash": "ab" * 32,
        "count": 3,
        "at": "2027-01-15T08:00:00+00:00",
    }
    doc = {**sign_checkpoint(body, keyring), **change}
    why = check_signature(doc, keyring)
    assert why is not None
    assert complaint in why


def test_load_checkpoints_reads_one_object_a_list_or_json_lines(tmp_path: Path) -> None:
    keyring, _ = _keyring(tmp_path)
    docs = [
        sign_checkpoint({"head_id": i, "head_seq": i, "head_hash": GENESIS, "count": i, "at": "x"}, keyring)
        for i in (1, 2)
    ]
    one, many, lines = tmp_path / "one.json", tmp_path / "list.json", tmp_path / "cp.jsonl"
    one.write_text(json.dumps(docs[0], indent=2))
    many.write_text(json.dumps(docs))
    lines.write_text("\n".join(json.dumps(d) for d in docs) + "\n\n")
    assert load_checkpoints(one) == docs[:1]
    assert load_checkpoints(many) == docs
    assert load_checkpoints(lines) == docs
    lines.write_text(json.dumps(docs[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"cp\.jsonl:2: not JSON"):
        load_checkpoints(lines)
    one.write_text('{"type": "something else"}')
    with pytest.raises(ValueError, match="not an audit checkpoint"):
        load_checkpoints(one)


def test_load_checkpoints_reads_a_file_sinks_log(tmp_path: Path) -> None:
    # What a file sink writes: access-log and security events, checkpoints and alerts, one a line.
    keyring, _ = _keyring(tmp_path)
    docs = [
        sign_checkpoint({"head_id": i, "head_seq": i, "head_hash": GENESIS, "count": i, "at": "x"}, keyring)
        for i in (1, 2)
    ]
    access = {"@timestamp": "2027-01-15T08:00:00Z", "event": {"action": "request"}, "http": {}}
    broken = {"type": "audit.chain_broken", "problem": "record id 3 (seq 3): ..."}

    def entry(checkpoint: dict[str, Any]) -> dict[str, Any]:
        return {"@timestamp": "2027-01-15T08:00:00Z", "event": {}, "gateway": {"checkpoint": checkpoint}}

    sink = tmp_path / "events.log"
    sink.write_text(
        "\n".join(json.dumps(d) for d in [access, entry(docs[0]), entry(broken), access, entry(docs[1])])
    )
    assert load_checkpoints(sink) == docs
    # A client's User-Agent with a NEL or a line separator, raw in the JSON text (as msgspec writes it):
    # one anonymous request had made the whole log unreadable here.
    odd = {**access, "user_agent": {"original": "Mozilla/5.0 \u0085 nel \u2028 ls"}}
    sink.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in [odd, entry(docs[0]), odd]))
    assert load_checkpoints(sink) == docs[:1]
    sink.write_text(json.dumps(access) + "\n")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        load_checkpoints(sink)


# --- the checkpoint task ------------------------------------------------------------------------------


async def test_checkpoints_go_to_the_file_and_to_emit(database: Database, tmp_path: Path) -> None:
    keyring, _ = _keyring(tmp_path)
    clock = FakeClock(T0)
    await _fill(database, clock, 3, keyring=keyring)
    checkpointer = Checkpointer(database, keyring, directory=tmp_path / "cps", clock=clock)
    emitted: list[dict[str, Any]] = []

    def emit(doc: dict[str, Any]) -> None:
        emitted.append(doc)
        if len(emitted) == 2:
            raise asyncio.CancelledError  # stop the loop after two rounds

    with pytest.raises(asyncio.CancelledError):
        await checkpointer.run_checkpoints(emit, 0.001)
    assert [d["head_seq"] for d in emitted] == [3, 3]
    assert emitted[0]["count"] == 3
    assert all(check_signature(d, keyring) is None for d in emitted)
    assert checkpointer.path is not None
    assert load_checkpoints(checkpointer.path) == emitted


async def test_no_checkpoint_is_signed_over_a_broken_chain(database: Database, tmp_path: Path) -> None:
    keyring, _ = _keyring(tmp_path)
    clock = FakeClock(T0)
    await _fill(database, clock, 2, keyring=keyring)
    checkpointer = Checkpointer(database, keyring, directory=None, clock=clock)
    await checkpointer.checkpoint()
    await _fill(database, clock, 2, keyring=keyring)
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE audit_events SET actor = 'user:x' WHERE seq = 4")
    with pytest.raises(ChainBroken, match="seq 4"):
        await checkpointer.checkpoint()
    emitted: list[dict[str, Any]] = []

    def emit(doc: dict[str, Any]) -> None:
        emitted.append(doc)
        if len(emitted) == 1:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await checkpointer.run_checkpoints(emit, 0.001)
    assert emitted[0]["type"] == "audit.chain_broken"
    assert "seq 4" in emitted[0]["problem"]


async def test_checkpoint_interval_must_be_positive(database: Database, tmp_path: Path) -> None:
    keyring, _ = _keyring(tmp_path)
    with pytest.raises(ValueError, match="interval"):
        await Checkpointer(database, keyring, directory=None).run_checkpoints(lambda _doc: None, 0)


@pytest.mark.parametrize("column", ["at", "id"])
async def test_an_edited_head_record_is_named_as_edited_not_as_a_truncation(
    database: Database, tmp_path: Path, column: str
) -> None:
    # The head record changed in place, with a checkpoint of it present: the walker stops before it
    # (its content does not match its hash), and the checkpoint of that seq is a consequence of that,
    # not a tail "gone from the end" (an outside review read "truncated" for a record still there).
    keyring, _ = _keyring(tmp_path)
    clock = FakeClock(T0)
    await _fill(database, clock, 5, keyring=keyring)
    checkpoint = await Checkpointer(database, keyring, directory=None, clock=clock).checkpoint()
    value = datetime.fromtimestamp(T0 + 7, UTC) if column == "at" else 99
    async with database.engine.begin() as conn:
        await conn.execute(update(AuditEvent).where(AuditEvent.seq == 5).values({column: value}))
    verdict = await verify_trail(database, [checkpoint], keyring=keyring)
    assert verdict.problem is not None
    assert verdict.problem.seq == 5
    assert "its content does not match its hash" in verdict.problem.what, verdict.problem
    assert "gone from the end" not in str(verdict.problem)


# --- bundles ------------------------------------------------------------------------------------------


async def test_a_bundle_is_never_written_through_a_link(database: Database, tmp_path: Path) -> None:
    victim = tmp_path / "victim.zip"
    victim.write_bytes(b"kept")
    (tmp_path / "link.zip").symlink_to(victim)
    start = datetime.fromtimestamp(T0, UTC)
    with pytest.raises(BundleError, match="already exists"):
        await export_bundle(
            database, since=start, until=start + timedelta(minutes=6), checkpoints=[],
            out=tmp_path / "link.zip", now=FakeClock(T0 + 600).now(),
        )  # fmt: skip
    assert victim.read_bytes() == b"kept"


@pytest.mark.parametrize("kind", ["zip", "dir"])
async def test_bundle_round_trip(database: Database, tmp_path: Path, kind: str) -> None:
    keyring, _ = _keyring(tmp_path)
    clock = FakeClock(T0)
    await _fill(database, clock, 4, keyring=keyring)
    checkpointer = Checkpointer(database, keyring, directory=None, clock=clock)
    cps = [await checkpointer.checkpoint()]
    await _fill(database, clock, 4, keyring=keyring)
    cps.append(await checkpointer.checkpoint())
    start = datetime.fromtimestamp(T0, UTC)
    out = tmp_path / ("b.zip" if kind == "zip" else "bundle")
    summary = await export_bundle(
        database,
        since=start + timedelta(minutes=2),
        until=start + timedelta(minutes=6),
        checkpoints=cps,
        out=out,
        now=clock.now(),
        keyring=keyring,
    )
    assert summary.problem is None
    # Every record's actor, subject and address: readable by its maker only, whatever the umask.
    written = [out] if kind == "zip" else [out, *out.iterdir()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == ({0o600} if kind == "zip" else {0o700, 0o600})
    assert stat.S_IMODE(out.stat().st_mode) == (0o600 if kind == "zip" else 0o700)
    assert (summary.records, summary.first and summary.first.seq, summary.last and summary.last.seq) == (
        4,
        3,
        6,
    )
    verdict = verify_bundle(out, keyring=keyring)
    assert verdict.ok, verdict.problem
    assert (verdict.records, verdict.checkpoints_checked, verdict.signatures_checked) == (4, 1, True)
    assert verdict.unchecked == 0
    without_key = verify_bundle(out)
    assert without_key.ok
    assert (without_key.signatures_checked, without_key.unchecked) == (False, 4)  # links only


def _rewrite_bundle(path: Path, name: str, change: Any) -> None:
    with zipfile.ZipFile(path) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    files[name] = change(files[name])
    path.unlink()
    with zipfile.ZipFile(path, "w") as archive:
        for n, data in files.items():
            archive.writestr(n, data)


def _edit_first_event(data: bytes) -> bytes:
    lines = data.decode().splitlines()
    first = json.loads(lines[0])
    first["actor"] = "user:nobody"
    return "\n".join([json.dumps(first), *lines[1:]]).encode() + b"\n"


def _drop_second_event(data: bytes) -> bytes:
    lines = data.decode().splitlines()
    return "\n".join([lines[0], *lines[2:]]).encode() + b"\n"


async def test_tampered_bundles_are_refused(database: Database, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    await _fill(database, clock, 4)
    start = datetime.fromtimestamp(T0, UTC)
    original = tmp_path / "b.zip"
    await export_bundle(
        database, since=start, until=start + timedelta(hours=1), checkpoints=[], out=original, now=clock.now()
    )
    cases = [
        ("events.jsonl", _edit_first_event, "events.jsonl does not match its SHA-256"),
        ("README.txt", lambda d: d + b"x", "README.txt does not match its SHA-256"),
    ]
    for name, change, complaint in cases:
        copy = tmp_path / f"{name}.zip"
        copy.write_bytes(original.read_bytes())
        _rewrite_bundle(copy, name, change)
        verdict = verify_bundle(copy)
        assert verdict.problem is not None
        assert complaint in verdict.problem
    # With the manifest recomputed too, the chain itself gives the edit away.
    for change, complaint in [
        (_edit_first_event, "does not match its hash"),
        (_drop_second_event, "missing"),
    ]:
        copy = tmp_path / "deep.zip"
        copy.write_bytes(original.read_bytes())
        _rewrite_bundle(copy, "events.jsonl", change)
        with zipfile.ZipFile(copy) as archive:
            events = archive.read("events.jsonl")
        _rewrite_bundle(copy, "manifest.json", lambda d, e=events: _fix_manifest(d, e))
        verdict = verify_bundle(copy)
        assert verdict.problem is not None
        assert complaint in verdict.problem, verdict.problem
        copy.unlink()
    with pytest.raises(BundleError, match="no such bundle"):
        verify_bundle(tmp_path / "missing.zip")
    with pytest.raises(BundleError, match="already exists"):
        await export_bundle(
            database,
            since=start,
            until=start + timedelta(hours=1),
            checkpoints=[],
            out=original,
            now=clock.now(),
        )


def _append_forged_legacy_event(data: bytes) -> bytes:
    # A record a forger adds at the end: the next seq, linked, SHA-256 over the canonical form.
    last = ChainRecord.from_json(json.loads(data.decode().splitlines()[-1]))
    forged = dataclasses.replace(
        last,
        id=last.id + 1,
        seq=last.seq + 1,
        actor="admin:mallory",
        prev_hash=last.record_hash,
        version=1,
        key_id="",
    )
    forged = dataclasses.replace(forged, record_hash=hashlib.sha256(forged.canonical()).hexdigest())
    return data + (json.dumps(forged.to_json()) + "\n").encode()


async def test_tampered_keyed_bundles_are_refused(database: Database, tmp_path: Path) -> None:
    keyring, _ = _keyring(tmp_path)
    clock = FakeClock(T0)
    await _fill(database, clock, 4, keyring=keyring)
    start = datetime.fromtimestamp(T0, UTC)
    original = tmp_path / "b.zip"
    await export_bundle(
        database, since=start, until=start + timedelta(hours=1), checkpoints=[], out=original, now=clock.now()
    )
    # Events and manifest rewritten consistently: the records themselves give the forgery away.
    for change, key, complaint in [
        (_edit_first_event, keyring, "written without the chain key (forged)"),
        (_append_forged_legacy_event, None, "unkeyed (version 1) record after the chain became keyed"),
    ]:
        copy = tmp_path / "deep.zip"
        copy.write_bytes(original.read_bytes())
        _rewrite_bundle(copy, "events.jsonl", change)
        with zipfile.ZipFile(copy) as archive:
            events = archive.read("events.jsonl")
        _rewrite_bundle(copy, "manifest.json", lambda d, e=events: _fix_manifest(d, e))
        verdict = verify_bundle(copy, keyring=key)
        assert verdict.problem is not None
        assert complaint in verdict.problem, verdict.problem
        copy.unlink()


def _as_before_keying(data: bytes) -> bytes:
    # Bundles exported by the release before keyed chains had no "v" and "kid" in events.jsonl.
    docs = [json.loads(line) for line in data.decode().splitlines()]
    return "".join(
        json.dumps({k: v for k, v in d.items() if k not in ("v", "kid")}) + "\n" for d in docs
    ).encode()


async def test_bundles_exported_before_keying_still_verify(database: Database, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    await _fill(database, clock, 3)  # legacy records
    start = datetime.fromtimestamp(T0, UTC)
    old = tmp_path / "old.zip"
    await export_bundle(
        database, since=start, until=start + timedelta(hours=1), checkpoints=[], out=old, now=clock.now()
    )
    _rewrite_bundle(old, "events.jsonl", _as_before_keying)
    with zipfile.ZipFile(old) as archive:
        events = archive.read("events.jsonl")
    assert b'"v"' not in events
    _rewrite_bundle(old, "manifest.json", lambda d: _fix_manifest(d, events))
    verdict = verify_bundle(old)
    assert verdict.ok, verdict.problem
    assert (verdict.records, verdict.unchecked) == (3, 0)


def _fix_manifest(data: bytes, events: bytes) -> bytes:
    manifest = json.loads(data)
    manifest["files"]["events.jsonl"] = hashlib.sha256(events).hexdigest()
    return json.dumps(manifest).encode()


# --- events recorded for operators ---------------------------------------------------------------------


async def test_record_quietly_never_raises(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog(database, clock=FakeClock())
    await record_quietly(audit, "config.reloaded", actor="system", details={"x": 1})
    assert [e.kind for e in await audit.events()] == ["config.reloaded"]
    await record_quietly(None, "config.reloaded", actor="system")
    await database.close()
    broken = AuditLog(Database.open("postgresql+asyncpg://postgres@127.0.0.1:1/test"), clock=FakeClock())
    await record_quietly(broken, "config.reloaded", actor="system")
    assert "could not be recorded" in caplog.text


async def test_refused_reload_is_audited(database: Database, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path}\n")
    audit = AuditLog(database, clock=FakeClock())
    live = LiveState(build_snapshot(load_settings(config), generation=1, source=str(config)))
    reloader = Reloader(config, live, audit=audit, health=None)
    config.write_text("public_url: [not a url\n")
    assert await reloader.reload() is False
    (event,) = await audit.events(kind="config.reloaded")
    assert (event.outcome, event.actor) == ("failure", "system")
    assert json.loads(event.details)["config"] == str(config)
