"""What an evidence bundle says about itself is authenticated: its window, ends and record count.

The attack these tests replay (an outside review): unzip a bundle, cut records from one end of
events.jsonl and chain.json, move the heads (or the anchor, or ``until``), recompute the manifest's
SHA-256 sums and zip it again. The chain of what is left still links and every sum matches, so without
more the bundle verified, even beside a signed checkpoint saying the cut records existed. Now the
exporter seals the claims with a keyring-derived key, the checkpoints are held against the window, and
a bundle without a seal verifies with its window said to be unauthenticated (or fails when a seal is
required). Also: keys in events.jsonl that no record hash covers are refused.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.bundle import BundleError, assemble_bundle, export_bundle, verify_bundle
from gateway.audit.checkpoint import BUNDLE_SEALS, Checkpointer, check_signature, sign_checkpoint
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Compromise, Keyring
from gateway.store.db import Database

START = datetime(2026, 12, 5, tzinfo=UTC)
SINCE, UNTIL = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 31, tzinfo=UTC)

Files = dict[str, bytes]


def _keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keyring.json")


async def _trail(db: Database, keyring: Keyring | None, n: int, clock: FakeClock) -> None:
    audit = AuditLog(db, clock=clock, keyring=keyring)
    for i in range(n):
        await audit.record("signin.password", actor=f"user:u{i}", subject=f"u{i}", details={"i": i})
        clock.advance(3600)


async def _exported(
    db: Database, tmp_path: Path, keyring: Keyring, *, n: int = 15, checkpoint_at: int | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """The finding's set-up: ``n`` records in December, a checkpoint of the head signed in the window
    (after ``checkpoint_at`` records, default all), the bundle of the month exported with the keyring."""
    clock = FakeClock(START.timestamp())
    checkpointer = Checkpointer(db, keyring, directory=None, clock=clock)
    first = n if checkpoint_at is None else checkpoint_at
    await _trail(db, keyring, first, clock)
    checkpoints = [await checkpointer.checkpoint()]
    await _trail(db, keyring, n - first, clock)
    out = tmp_path / "ev.zip"
    summary = await export_bundle(
        db, since=SINCE, until=UNTIL, checkpoints=checkpoints, out=out, now=clock.now(), keyring=keyring
    )
    assert summary.problem is None
    return out, checkpoints


def _files(path: Path) -> Files:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _tampered(
    path: Path, change: Callable[[list[dict[str, Any]], dict[str, Any]], None], *, seal: str
) -> Path:
    """A copy of the bundle with events and chain.json changed and the manifest's sums recomputed.

    ``seal``: "keep" it as exported, "strip" it (a bundle as exporters before seals wrote them), or
    "forge" its claims to the tampered values (the MAC cannot follow without the keyring).
    """
    files = _files(path)
    events = [json.loads(line) for line in files["events.jsonl"].decode().splitlines()]
    chain = json.loads(files["chain.json"])
    change(events, chain)
    files["events.jsonl"] = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode()
    files["chain.json"] = json.dumps(chain, indent=2).encode()
    manifest = json.loads(files["manifest.json"])
    for name in ("events.jsonl", "chain.json"):
        manifest["files"][name] = hashlib.sha256(files[name]).hexdigest()
    if seal == "strip":
        manifest.pop("seal", None)
    elif seal == "forge":
        head = chain["chain_head_at_export"]
        manifest["seal"].update(
            {k: chain[k] for k in ("since", "until", "anchor", "head_at_until", "chain_head_at_export")},
            head_seq=head["seq"] if head else 0,
            records=len(events),
            files=manifest["files"],
        )
    files["manifest.json"] = json.dumps(manifest).encode()
    out = path.with_name(f"tampered-{seal}-{len(list(path.parent.glob('tampered-*')))}.zip")
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out


def _cut_tail(events: list[dict[str, Any]], chain: dict[str, Any]) -> None:
    del events[-2:]
    del chain["records"][-2:]
    chain["head_at_until"] = chain["chain_head_at_export"] = chain["records"][-1]


def _cut_head(events: list[dict[str, Any]], chain: dict[str, Any]) -> None:
    del events[:2]
    chain["anchor"] = {**chain["records"][1], "v": events[0]["v"]}
    del chain["records"][:2]


def _move_until(events: list[dict[str, Any]], chain: dict[str, Any]) -> None:
    # until moved to just after record 13: records 14 and 15 are outside the window it claims.
    del events[-2:]
    del chain["records"][-2:]
    chain["head_at_until"] = chain["records"][-1]
    chain["until"] = (datetime.fromisoformat(events[-1]["at"]) + timedelta(minutes=1)).isoformat()


CUTS = {"tail": _cut_tail, "head": _cut_head, "until": _move_until}


@pytest.mark.parametrize("cut", sorted(CUTS))
async def test_a_cut_bundle_fails_against_its_seal(audit_db: Database, tmp_path: Path, cut: str) -> None:
    keyring = _keyring(tmp_path)
    bundle, _ = await _exported(audit_db, tmp_path, keyring)
    kept = _tampered(bundle, CUTS[cut], seal="keep")
    for key in (keyring, None):  # the claims are held against the bundle with or without the keyring
        verdict = verify_bundle(kept, keyring=key)
        assert verdict.problem is not None
        assert "the seal made at export vouches for another" in verdict.problem, verdict.problem
    forged = _tampered(bundle, CUTS[cut], seal="forge")
    verdict = verify_bundle(forged, keyring=keyring)
    assert verdict.problem is not None
    assert "manifest.json's seal: the MAC does not verify (forged or altered)" in verdict.problem
    # Without the keyring the forged seal cannot be told apart: the window is not authenticated.
    verdict = verify_bundle(forged)
    if cut == "tail":
        # ... but the signed checkpoint inside the window saw seq 15.
        assert verdict.problem is not None
        assert "saw the chain reach seq 15" in verdict.problem
    else:
        assert verdict.ok, verdict.problem
        assert (verdict.seal, verdict.window_authenticated) == ("unchecked", False)
        assert not verify_bundle(forged, require_seal=True).ok


async def test_a_checkpoint_inside_the_window_past_the_last_record_fails_the_bundle(
    audit_db: Database, tmp_path: Path
) -> None:
    # The finding as reported: the last two records cut, heads moved to seq 13, the checkpoint of seq
    # 15 kept, and no seal to hold it against (stripped, as bundles before seals had none).
    keyring = _keyring(tmp_path)
    bundle, checkpoints = await _exported(audit_db, tmp_path, keyring)
    assert START <= datetime.fromisoformat(checkpoints[0]["at"]) < UNTIL
    cut = _tampered(bundle, _cut_tail, seal="strip")
    for key in (keyring, None):
        verdict = verify_bundle(cut, keyring=key)
        assert verdict.problem == (
            f"checkpoints.jsonl:1: the checkpoint of {checkpoints[0]['at']}, inside the window, saw the chain "
            "reach seq 15, but the bundle's range ends at seq 13: record(s) seq 14..15 were cut from the end "
            "of the range (or the window was moved)"
        )


async def test_a_checkpoint_past_the_chain_head_at_export_fails_the_bundle(
    audit_db: Database, tmp_path: Path
) -> None:
    # The window moved before the checkpoint's time, the records after it cut: the checkpoint is outside
    # the window now, but it saw a head past the one chain.json says the chain had at export.
    keyring = _keyring(tmp_path)
    bundle, _ = await _exported(audit_db, tmp_path, keyring)

    def cut(events: list[dict[str, Any]], chain: dict[str, Any]) -> None:
        _move_until(events, chain)
        chain["chain_head_at_export"] = chain["records"][-1]

    verdict = verify_bundle(_tampered(bundle, cut, seal="strip"), keyring=keyring)
    assert verdict.problem is not None
    assert "saw the chain reach seq 15, past the chain head at export (seq 13)" in verdict.problem


async def test_a_checkpoint_inside_the_window_before_the_anchor_fails_the_bundle(
    audit_db: Database, tmp_path: Path
) -> None:
    # A checkpoint signed in the window after record 1 names seq 1: the anchor moved past it.
    keyring = _keyring(tmp_path)
    bundle, _ = await _exported(audit_db, tmp_path, keyring, checkpoint_at=1)
    verdict = verify_bundle(_tampered(bundle, _cut_head, seal="strip"), keyring=keyring)
    assert verdict.problem is not None
    assert "saw the chain end at seq 1, before the bundle's anchor seq 2" in verdict.problem


async def test_the_verdict_says_whether_the_window_is_authenticated(
    audit_db: Database, tmp_path: Path
) -> None:
    keyring = _keyring(tmp_path)
    bundle, _ = await _exported(audit_db, tmp_path, keyring)
    assert json.loads(_files(bundle)["manifest.json"])["seal"]["kid"] == keyring.active_id
    verdict = verify_bundle(bundle, keyring=keyring, require_seal=True)
    assert verdict.ok, verdict.problem
    assert (verdict.seal, verdict.sealed_by, verdict.window_authenticated) == (
        "valid",
        keyring.active_id,
        True,
    )
    assert verdict.window is not None
    window = verdict.window
    assert (window.since, window.until) == (SINCE, UNTIL)
    assert (window.anchor_seq, window.last_seq, window.export_head_seq) == (0, 15, 15)
    # Without the keyring: sealed, not checked.
    verdict = verify_bundle(bundle)
    assert verdict.ok, verdict.problem
    assert (verdict.seal, verdict.window_authenticated) == ("unchecked", False)
    verdict = verify_bundle(bundle, require_seal=True)
    assert verdict.problem == (
        "its window is not authenticated: its seal cannot be checked without the keyring (pass --config)"
    )
    # A bundle without a seal (exported before seals, or without the keyring) still verifies, said to be
    # unauthenticated; required, it fails.
    old = _tampered(bundle, lambda _events, _chain: None, seal="strip")
    verdict = verify_bundle(old, keyring=keyring)
    assert verdict.ok, verdict.problem
    assert (verdict.seal, verdict.sealed_by, verdict.window_authenticated) == ("absent", None, False)
    verdict = verify_bundle(old, keyring=keyring, require_seal=True)
    assert verdict.problem == (
        "its window is not authenticated: the bundle carries no seal, and a sealed bundle was required"
    )


async def test_a_bundle_exported_without_the_keyring_has_no_seal(audit_db: Database, tmp_path: Path) -> None:
    clock = FakeClock(START.timestamp())
    await _trail(audit_db, _keyring(tmp_path), 3, clock)
    bundle = await assemble_bundle(audit_db, since=SINCE, until=UNTIL, checkpoints=[], now=clock.now())
    assert bundle.sealed_by is None
    assert "seal" not in json.loads(bundle.files["manifest.json"])


async def test_a_seal_is_not_a_checkpoint_nor_a_checkpoint_a_seal(audit_db: Database, tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    bundle, checkpoints = await _exported(audit_db, tmp_path, keyring)
    seal = json.loads(_files(bundle)["manifest.json"])["seal"]
    assert check_signature(seal, keyring, signing=BUNDLE_SEALS) is None
    assert check_signature(seal, keyring) == "not a signed audit.checkpoint (type 'audit.bundle_seal')"
    as_checkpoint = {**seal, "type": "audit.checkpoint"}
    assert check_signature(as_checkpoint, keyring) == "the MAC does not verify (forged or altered)"
    why = check_signature({**checkpoints[0], "type": "audit.bundle_seal"}, keyring, signing=BUNDLE_SEALS)
    assert why == "the MAC does not verify (forged or altered)"  # another key: not the checkpoints'


async def test_a_seal_made_with_a_leaked_key_vouches_only_for_heads_before_the_mark(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    old = keyring.active_id
    body = {"since": "s", "until": "u", "chain_head_at_export": None, "records": 0}
    before = sign_checkpoint({**body, "head_seq": 5}, keyring, signing=BUNDLE_SEALS)
    forged = sign_checkpoint({**body, "head_seq": 9}, keyring, signing=BUNDLE_SEALS)
    keyring.rotate(path)
    keyring.mark_compromised(path, old, Compromise("2027-01-15T09:00:00+00:00", 5))
    assert check_signature(before, keyring, signing=BUNDLE_SEALS) is None
    why = check_signature(forged, keyring, signing=BUNDLE_SEALS)
    assert why is not None
    assert "marked compromised" in why


async def test_keys_no_hash_covers_are_refused(audit_db: Database, tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    bundle, _ = await _exported(audit_db, tmp_path, keyring, n=5)

    def add(events: list[dict[str, Any]], _chain: dict[str, Any]) -> None:
        events[3].update({"Outcome": "success", "note": "approved by the CISO"})

    for seal in ("keep", "strip"):
        verdict = verify_bundle(_tampered(bundle, add, seal=seal), keyring=keyring)
        assert verdict.problem == (
            "events.jsonl:4 (seq 4): key(s) 'Outcome', 'note' that no record hash covers (added after export)"
        )


async def test_a_key_id_on_a_legacy_record_is_refused(audit_db: Database, tmp_path: Path) -> None:
    # A version 1 record's SHA-256 does not cover "kid" (bundles carry "kid": "" for them).
    clock = FakeClock(START.timestamp())
    await _trail(audit_db, None, 3, clock)  # written before the chain was keyed
    bundle = tmp_path / "legacy.zip"
    await export_bundle(audit_db, since=SINCE, until=UNTIL, checkpoints=[], out=bundle, now=clock.now())

    def add(events: list[dict[str, Any]], _chain: dict[str, Any]) -> None:
        assert (events[1]["v"], events[1]["kid"]) == (1, "")
        events[1]["kid"] = "k-of-the-ciso"

    verdict = verify_bundle(_tampered(bundle, add, seal="strip"))
    assert verdict.problem == (
        "events.jsonl:2 (seq 2): a version 1 record has no key id, and its hash does not cover 'kid' "
        "(added after export)"
    )


async def test_a_key_given_twice_in_an_event_is_refused(audit_db: Database, tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    bundle, _ = await _exported(audit_db, tmp_path, keyring, n=3)
    files = _files(bundle)
    lines = files["events.jsonl"].decode().splitlines()
    lines[1] = lines[1][:-1] + ', "outcome": "failure"}'  # json.loads would keep the second
    files["events.jsonl"] = ("\n".join(lines) + "\n").encode()
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["events.jsonl"] = hashlib.sha256(files["events.jsonl"]).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    out = tmp_path / "twice"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    with pytest.raises(BundleError, match=r"events\.jsonl:2: the key 'outcome' appears twice"):
        verify_bundle(out, keyring=keyring)


# --- what the exporter finds on the database ----------------------------------------------------------


async def test_an_empty_window_is_anchored_at_the_record_before_it(
    database: Database, tmp_path: Path
) -> None:
    # Exporters before anchored every empty window at the genesis: a checkpoint signed inside it then
    # named a head "past" the empty range though nothing was cut.
    keyring = _keyring(tmp_path)
    clock = FakeClock(START.timestamp())
    await _trail(database, keyring, 3, clock)  # 00:00, 01:00, 02:00
    clock.advance(86400)
    checkpoint = await Checkpointer(database, keyring, directory=None, clock=clock).checkpoint()
    quiet = clock.now() - timedelta(hours=1)
    bundle = await assemble_bundle(
        database, since=quiet, until=clock.now() + timedelta(hours=1), checkpoints=[checkpoint],
        now=clock.now(), keyring=keyring,
    )  # fmt: skip
    assert bundle.problem is None
    assert (bundle.records, json.loads(bundle.files["chain.json"])["anchor"]["seq"]) == (0, 3)
    out = tmp_path / "quiet.zip"
    out.write_bytes(bundle.zip_bytes())
    verdict = verify_bundle(out, keyring=keyring)
    assert verdict.ok, verdict.problem
    assert verdict.window is not None
    assert (verdict.window.anchor_seq, verdict.window.last_seq, verdict.checkpoints_checked) == (3, 3, 1)


async def test_an_export_of_a_trail_cut_after_a_checkpoint_says_so(
    database: Database, tmp_path: Path
) -> None:
    keyring = _keyring(tmp_path)
    clock = FakeClock(START.timestamp())
    await _trail(database, keyring, 5, clock)
    checkpoint = await Checkpointer(database, keyring, directory=None, clock=clock).checkpoint()
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM audit_events WHERE seq >= 4")
    bundle = await assemble_bundle(
        database, since=SINCE, until=UNTIL, checkpoints=[checkpoint], now=clock.now(), keyring=keyring
    )
    assert bundle.problem is not None
    assert "saw the chain reach seq 5, but the bundle's range ends at seq 3" in bundle.problem
