"""What an evidence bundle says about itself is authenticated: its window, ends and record count.

The attack these tests replay (an outside review): unzip a bundle, cut records from one end of
events.jsonl and chain.json, move the heads (or the anchor, or ``until``), recompute the manifest's
SHA-256 sums and zip it again. The chain of what is left still links and every sum matches, so without
more the bundle verified, even beside a signed checkpoint saying the cut records existed. Now the
exporter seals the claims with a keyring-derived key, the checkpoints are held against the window, and
a bundle without a seal verifies with its window said to be unauthenticated (or fails when a seal is
required). Also: keys in events.jsonl that no record hash covers are refused.

A re-attack found two ways round the seal: a window sealed while still open (``until`` after the export
time, records written into it afterwards), and a seal made with a leaked key for an empty window after
the key was marked compromised (the head it names is the mark's). Now the window ends at the export
time at the latest, and a seal under a compromised key vouches only for times before the mark.
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
from gateway.audit.chain import ChainRecord, chain_head
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
    clock.advance(60)  # exported a minute later: the window (clamped to the export time) holds the checkpoint
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
    # The window asked for ran past the export time: it ends there.
    exported_at = datetime.fromisoformat(json.loads(_files(bundle)["manifest.json"])["created_at"])
    assert (window.since, window.until) == (SINCE, exported_at)
    assert exported_at < UNTIL
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
    times = {"until": "2027-01-10T00:00:00.000000+00:00", "created_at": "2027-01-10T00:00:00.000000+00:00"}
    body = {"since": "2027-01-01T00:00:00.000000+00:00", **times, "chain_head_at_export": None, "records": 0}
    before = sign_checkpoint({**body, "head_seq": 5}, keyring, signing=BUNDLE_SEALS)
    forged = sign_checkpoint({**body, "head_seq": 9}, keyring, signing=BUNDLE_SEALS)
    keyring.rotate(path)
    keyring.mark_compromised(path, old, Compromise("2027-01-15T09:00:00+00:00", 5))
    assert check_signature(before, keyring, signing=BUNDLE_SEALS) is None
    why = check_signature(forged, keyring, signing=BUNDLE_SEALS)
    assert why is not None
    assert "marked compromised" in why


@pytest.mark.parametrize(
    ("until", "created_at", "leaked_since", "refused"),
    [
        ("2027-01-10T00:00:00+00:00", "2027-01-10T00:00:00+00:00", "", None),
        # The window, or the export, after the mark: nothing the key signed before the mark.
        ("2027-01-16T00:00:00+00:00", "2027-01-10T00:00:00+00:00", "", "until"),
        ("2027-01-10T00:00:00+00:00", "2027-01-16T00:00:00+00:00", "", "created_at"),
        ("2027-01-15T09:00:00+00:00", "2027-01-15T09:00:00+00:00", "", "until"),  # at the mark: not before it
        # The leak's time known: what was exported since is not vouched for either.
        ("2027-01-08T00:00:00+00:00", "2027-01-10T00:00:00+00:00", "2027-01-09T00:00:00+00:00", "created_at"),
        ("2027-01-08T00:00:00+00:00", "2027-01-08T12:00:00+00:00", "2027-01-09T00:00:00+00:00", None),
        # No time to hold against the mark.
        (None, "2027-01-10T00:00:00+00:00", "", "until"),
        ("2027-01-10T00:00:00", "2027-01-10T00:00:00+00:00", "", "until"),  # no zone
    ],
)
async def test_a_seal_made_with_a_leaked_key_vouches_only_for_times_before_the_mark(
    tmp_path: Path, until: str | None, created_at: str, leaked_since: str, refused: str | None
) -> None:
    # A head at the mark's record is not enough: an empty window after the mark names that head too.
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    old = keyring.active_id
    body: dict[str, Any] = {"since": "2027-01-01T00:00:00+00:00", "created_at": created_at, "head_seq": 5}
    if until is not None:
        body["until"] = until
    seal = sign_checkpoint(body, keyring, signing=BUNDLE_SEALS)
    checkpoint = sign_checkpoint({"head_seq": 5, "at": "2027-01-16T00:00:00+00:00"}, keyring)
    keyring.rotate(path)
    mark = Compromise("2027-01-15T09:00:00+00:00", 5, leaked_since=leaked_since)
    keyring.mark_compromised(path, old, mark)
    why = check_signature(seal, keyring, signing=BUNDLE_SEALS)
    if refused is None:
        assert why is None, why
    else:
        assert why is not None
        assert why.startswith(
            f"signed with key {old!r}, marked compromised at 2027-01-15T09:00:00+00:00, with {refused} "
        )
        assert ("before the leak (leaked_since)" if leaked_since else "before the mark") in why
    # Checkpoints are held to their head only, as before.
    assert check_signature(checkpoint, keyring) is None


def _claims_of(chain: dict[str, Any], manifest: dict[str, Any], records: int) -> dict[str, Any]:
    """What a seal vouches for (README.txt, step 6)."""
    head = chain["chain_head_at_export"]
    return {
        **{k: chain[k] for k in ("since", "until", "anchor", "head_at_until", "chain_head_at_export")},
        "head_seq": head["seq"] if head else 0,
        "records": records,
        "files": manifest["files"],
        "created_at": manifest["created_at"],
    }


def _zipped(out: Path, files: Files) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out


def _sealed_by_hand(
    out: Path, chain: dict[str, Any], events: list[dict[str, Any]], created_at: str, signer: Keyring
) -> Path:
    """A bundle written by hand, its claims sealed under ``signer`` (who holds the key)."""
    files: Files = {
        "events.jsonl": "".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode(),
        "chain.json": json.dumps(chain, indent=2).encode(),
        "checkpoints.jsonl": b"",
        "README.txt": b"Audit trail evidence bundle\n",
    }
    manifest: dict[str, Any] = {
        "format": 1,
        "created_at": created_at,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    manifest["seal"] = sign_checkpoint(_claims_of(chain, manifest, len(events)), signer, signing=BUNDLE_SEALS)
    files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    return _zipped(out, files)


def _ref(record: ChainRecord) -> dict[str, Any]:
    return {"seq": record.seq, "id": record.id, "record_hash": record.record_hash}


async def test_a_seal_under_a_leaked_key_for_a_window_after_the_mark_is_refused(
    audit_db: Database, tmp_path: Path
) -> None:
    # The finding: key k signs the checkpoint of seq 5; k leaks, the keyring is rotated and k marked
    # compromised at seq 5; the intruder's records 6..10 follow. With k, a bundle made by hand claims the
    # hours after the mark held no record: anchor, heads and export head at seq 5 (the head check passes),
    # no checkpoint, sealed under k. It verified with its window authenticated.
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    leaked_key = keyring.active_id
    clock = FakeClock(START.timestamp())
    await _trail(audit_db, keyring, 5, clock)  # 00:00 .. 04:00
    await Checkpointer(audit_db, keyring, directory=None, clock=clock).checkpoint()  # seq 5, 05:00, public
    clock.advance(600)
    exported_before = clock.now()  # 05:10: a bundle exported before the leak, sealed under k
    honest = await export_bundle(
        audit_db, since=SINCE, until=UNTIL, checkpoints=[], out=tmp_path / "honest.zip", now=exported_before,
        keyring=keyring,
    )  # fmt: skip
    assert honest.sealed_by == leaked_key
    stolen = tmp_path / "stolen-keyring.json"  # the intruder's copy of the file, k still active in it
    stolen.write_bytes(path.read_bytes())
    stolen.chmod(0o600)
    intruder = Keyring.load(stolen)
    head = await chain_head(audit_db)
    assert head is not None
    assert head.seq == 5
    clock.advance(1200)
    marked_at = clock.now()  # 05:30
    keyring.rotate(path)
    keyring.mark_compromised(
        path, leaked_key, Compromise(marked_at.isoformat(), 5, audit_hash=head.record_hash)
    )
    clock.advance(1800)
    await _trail(audit_db, keyring, 5, clock)  # the intrusion: seq 6..10, 06:00 .. 10:00

    at_mark = {**_ref(head), "v": head.version}
    after_mark = {
        "format": 1, "hash": "sha256",
        "since": (marked_at + timedelta(minutes=30)).isoformat(), "until": (marked_at + timedelta(hours=5)).isoformat(),
        "anchor": at_mark, "records": [], "head_at_until": at_mark, "chain_head_at_export": _ref(head),
    }  # fmt: skip
    variants = {
        # As reported: exported "before the mark", the window after it.
        "reported": (marked_at - timedelta(minutes=15)).isoformat(),
        # Exported "after the window" (so it does not end past its export time): after the mark too.
        "exported later": (marked_at + timedelta(hours=6)).isoformat(),
    }
    for name, created_at in variants.items():
        forged = _sealed_by_hand(tmp_path / f"{name}.zip", after_mark, [], created_at, intruder)
        verdict = verify_bundle(forged, keyring=keyring, require_seal=True)
        assert verdict.problem is not None, name
        assert verdict.problem.startswith(
            f"manifest.json's seal: signed with key {leaked_key!r}, marked compromised at {marked_at.isoformat()}"
        ), verdict.problem
        assert not verdict.window_authenticated
    # Before the mark, the same key's seal still vouches for what it sealed.
    verdict = verify_bundle(tmp_path / "honest.zip", keyring=keyring, require_seal=True)
    assert verdict.ok, verdict.problem
    assert (verdict.seal, verdict.sealed_by, verdict.records) == ("valid", leaked_key, 5)
    assert verdict.window is not None
    assert verdict.window.until == exported_before


# --- the window ends at the export time ---------------------------------------------------------------


async def test_a_window_past_the_export_time_ends_at_the_export_time(
    audit_db: Database, tmp_path: Path
) -> None:
    # The finding: exported with until 26 days ahead, the seal vouched for a window still open; records
    # written inside it after the export were missing from a bundle whose window verified as authenticated.
    keyring = _keyring(tmp_path)
    clock = FakeClock(START.timestamp())
    await _trail(audit_db, keyring, 3, clock)  # 00:00 .. 02:00
    exported_at = clock.now()  # 03:00
    out = tmp_path / "ev.zip"
    summary = await export_bundle(
        audit_db, since=SINCE, until=exported_at + timedelta(days=26), checkpoints=[], out=out,
        now=exported_at, keyring=keyring,
    )  # fmt: skip
    files = _files(out)
    chain, seal = json.loads(files["chain.json"]), json.loads(files["manifest.json"])["seal"]
    assert (
        chain["until"]
        == seal["until"]
        == seal["created_at"]
        == exported_at.isoformat(timespec="microseconds")
    )
    assert f"to {exported_at.isoformat(timespec='microseconds')}:" in files["README.txt"].decode()
    assert (summary.problem, summary.records, summary.until, summary.clamped) == (None, 3, exported_at, True)
    await _trail(audit_db, keyring, 2, clock)  # written after the export, inside the window asked for
    verdict = verify_bundle(out, keyring=keyring, require_seal=True)
    assert verdict.ok, verdict.problem
    assert verdict.window is not None
    assert (verdict.window.until, verdict.window.export_head_seq) == (exported_at, 3)  # they lie after it
    # An until before the export time is kept as asked.
    earlier = exported_at - timedelta(minutes=90)
    kept = await assemble_bundle(audit_db, since=SINCE, until=earlier, checkpoints=[], now=clock.now())
    assert (kept.until, kept.clamped, kept.records) == (earlier, False, 2)
    assert json.loads(kept.files["chain.json"])["until"] == earlier.isoformat(timespec="microseconds")
    # A window starting at or after the export time holds nothing yet: refused, nothing written.
    with pytest.raises(BundleError, match=r"must be before the export time .*: nothing was written yet"):
        await export_bundle(
            audit_db, since=clock.now(), until=clock.now() + timedelta(days=1), checkpoints=[],
            out=tmp_path / "future.zip", now=clock.now(), keyring=keyring,
        )  # fmt: skip
    assert not (tmp_path / "future.zip").exists()


def _resealed(path: Path, out: Path, keyring: Keyring, *, until: datetime, created_at: datetime) -> Path:
    """The bundle with its window's end and export time changed, sealed again by the keyring's holder:
    what an exporter that did not clamp the window wrote."""
    files = _files(path)
    chain = json.loads(files["chain.json"])
    chain["until"] = until.isoformat(timespec="microseconds")
    events = [json.loads(line) for line in files["events.jsonl"].decode().splitlines()]
    return _sealed_by_hand(out, chain, events, created_at.isoformat(timespec="microseconds"), keyring)


async def test_a_sealed_window_ending_after_its_export_time_is_refused(
    audit_db: Database, tmp_path: Path
) -> None:
    keyring = _keyring(tmp_path)
    bundle, _ = await _exported(audit_db, tmp_path, keyring)
    created_at = datetime.fromisoformat(json.loads(_files(bundle)["manifest.json"])["created_at"])
    same = _resealed(bundle, tmp_path / "same.zip", keyring, until=created_at, created_at=created_at)
    assert verify_bundle(same, keyring=keyring, require_seal=True).ok
    later = created_at + timedelta(days=26)
    open_window = _resealed(bundle, tmp_path / "open.zip", keyring, until=later, created_at=created_at)
    for key in (keyring, None):  # the seal's own claims: held with or without the keyring
        verdict = verify_bundle(open_window, keyring=key)
        assert verdict.problem == (
            f"the sealed window ends at {later.isoformat(timespec='microseconds')}, after the bundle was "
            f"exported ({created_at.isoformat(timespec='microseconds')}): records written after the export "
            "could lie inside it, so the seal cannot vouch for the window (export it again: a window now "
            "ends at the export time at the latest)"
        )
        assert not verdict.window_authenticated
    # A bundle without a seal (exported before seals) is not held to it: its window is not authenticated.
    unsealed = _tampered(open_window, lambda _events, _chain: None, seal="strip")
    verdict = verify_bundle(unsealed, keyring=keyring)
    assert verdict.ok, verdict.problem
    assert verdict.seal == "absent"


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
        database, since=SINCE, until=UNTIL, checkpoints=[checkpoint], now=clock.now() + timedelta(minutes=1),
        keyring=keyring,
    )  # fmt: skip
    assert bundle.problem is not None
    assert "saw the chain reach seq 5, but the bundle's range ends at seq 3" in bundle.problem
