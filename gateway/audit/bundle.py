"""Evidence bundles: a time range of the audit trail with everything needed to verify it offline.

A bundle is a directory or a zip file holding::

    events.jsonl       the records, one JSON object a line, in chain order
    chain.json         the proof: the hash of the record before the range (anchor), each record's hash,
                       the head at the end of the range and the chain head when exported
    checkpoints.jsonl  the signed checkpoints that fall inside the range, and the latest one
    manifest.json      SHA-256 of every other file, and the seal (when exported with the keyring)
    README.txt         how to verify it (with or without this gateway)

:func:`verify_bundle` checks the manifest, recomputes every legacy record's hash, checks each record
links to the one before (starting at the anchor) and that the checkpoints inside the range match;
with the keyring it also checks the keyed records' MACs and the checkpoints' signatures. Version 3
records carry their ``salts`` and ``erased`` columns, so records whose personal fields were erased
still verify offline; their erasure records are checked where both lie inside the range.

The chain alone cannot show records cut from either end of a range, nor a window moved: whoever edits
a bundle can drop the last records, move ``head_at_until`` and recompute the SHA-256 sums. So the
exporter **seals** the bundle's claims (``since``, ``until``, the anchor, the head at ``until``, the
chain head at export, the record count, the manifest's file sums and time) with the checkpoints'
signature under its own keyring-derived key (``gateway.audit.checkpoint.BUNDLE_SEALS``), in
``manifest.json``'s ``seal``. With the keyring the verifier checks the seal and vouches for the window;
without it, or for a bundle without a seal (exported before seals existed, or without the keyring: it
looks the same as one whose seal was removed), it says the window is not authenticated. It also holds
the checkpoints against the window: one signed at a time inside the window names a head the bundle
must hold, and none may name a head past the chain head at export.

A window ends at the export time at the latest: the exporter clamps a later ``until`` to it (and says
so), since records written after the export could lie inside a window still open, and the verifier
refuses a sealed bundle whose ``until`` is later than its ``created_at``. A seal under a keyring key
marked compromised vouches only for what was exported before the mark (window, export time and head;
see :func:`gateway.audit.checkpoint.check_signature`).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import func, select

from gateway.audit.chain import (
    ERASABLE_VERSION,
    GENESIS,
    KEYED_VERSION,
    ChainRecord,
    ChainWalker,
    chain_head,
    chain_keys,
    iso,
    iter_records,
)
from gateway.audit.checkpoint import (
    BUNDLE_SEALS,
    CHECKPOINT_TYPE,
    aware_time,
    check_signature,
    sign_checkpoint,
)
from gateway.audit.models import AuditEvent
from gateway.clock import as_utc
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database, store_errors
from gateway.store.private import private_dir, write_new_private

__all__ = [
    "Bundle",
    "BundleError",
    "BundleVerdict",
    "ExportSummary",
    "assemble_bundle",
    "export_bundle",
    "verify_bundle",
]

FORMAT: Final = 1
EVENTS, CHAIN, CHECKPOINTS, MANIFEST, README = (
    "events.jsonl",
    "chain.json",
    "checkpoints.jsonl",
    "manifest.json",
    "README.txt",
)
_CONTENT: Final = (EVENTS, CHAIN, CHECKPOINTS, README)
#: The manifest's key holding the seal (older verifiers read only its ``files``).
SEAL: Final = "seal"
#: Every key an events.jsonl line may have: each is covered by the record's hash or checked.
_EVENT_KEYS: Final = frozenset(
    {"v", "kid", "id", "seq", "at", "kind", "actor", "subject", "ip", "outcome", "details"}
    | {"prev_hash", "record_hash", "salts", "erased"}
)
#: What the seal vouches for, and how a problem names it.
_CLAIMS: Final = {
    "since": "since",
    "until": "until",
    "anchor": "anchor (the record before the range)",
    "head_at_until": "head_at_until (the last record of the range)",
    "chain_head_at_export": "chain_head_at_export",
    "head_seq": "chain head seq at export",
    "records": "record count",
    "files": "file SHA-256 sums (the manifest)",
    "created_at": "export time (the manifest's created_at)",
}

_README: Final = """\
Audit trail evidence bundle
===========================

Records of the gateway's security audit trail from {since} to {until}:
{count} record(s), chain positions (seq) {first_seq}..{last_seq}.

Verify it with the gateway:

    gateway audit verify-bundle THIS_BUNDLE                 # chain, hashes, manifest
    gateway audit verify-bundle THIS_BUNDLE --config CFG    # also the checkpoint signatures (needs the keyring)

Verify it by hand:

1. manifest.json lists the SHA-256 of every other file: `sha256sum events.jsonl chain.json
   checkpoints.jsonl README.txt` must print the same values. Record the SHA-256 of manifest.json
   itself somewhere you trust (a ticket, an e-mail) when you hand the bundle over.
2. Each line of events.jsonl is one record. Its canonical bytes are the UTF-8 of the compact JSON
   object (keys sorted, separators "," and ":", non-ASCII kept as is) with the keys v, id, seq, at,
   kind, actor, subject, ip, outcome, details, prev (= the record's prev_hash), and for v = 2 and 3
   also kid. For v = 3 the keys actor, subject, ip and details are replaced by actor_c, subject_c,
   ip_c and details_c: for a field erased, its "c" in the line's erased object (JSON text); for any
   other, HMAC-SHA256 (hex) keyed by the bytes of its hex salt in the salts object, over the field
   name, a zero byte and the UTF-8 value. An erased field holds "[erased:<pseudonym>]" and has no
   salt; the "by" next to its commitment is the seq of the privacy.audit_erased record that erased it.
   For v = 1 (records written before the chain was keyed) record_hash is SHA-256 of those bytes.
   For v = 2 and 3 it is HMAC-SHA256 of those bytes under the chain key of keyring key kid:
   HKDF-SHA256 (no salt, info "gateway keyring derive" + a zero byte + "audit-chain v2", 32 bytes) of
   that keyring key. Only the keyring holder can check (or make) these; a v = 1 record after a v = 2
   or 3 one, or a v = 2 record after a v = 3 one, is a forgery (a downgrade).
3. The first record's prev_hash is chain.json's anchor.record_hash (the record just before the range;
   64 zeros when the range starts at the first record ever); each later record's prev_hash is the
   record_hash of the line before it, and seq goes up by exactly one.
4. checkpoints.jsonl holds checkpoints signed by the gateways (HMAC-SHA256 with a key derived from the
   gateway keyring). A checkpoint whose head_seq falls inside the range must name that record's
   record_hash: it proves the records were in the database, unchanged, when the checkpoint was made.
   One whose "at" lies inside the window (since <= at < until) must name a head_seq from the anchor's
   seq to the last record's, and none may name a head_seq past chain.json's chain_head_at_export.
5. Every erased field's "by" names a v = 3 privacy.audit_erased record after it, and its tombstone
   carries that record's pseudonym. When the range holds that record and every record naming it, they
   are as many as its details' "records", the SHA-256 of their seqs (ascending, joined by ",") is its
   "seqs_sha256" and, when its details have "fields_sha256" (erasures before it lack it), that is the
   SHA-256 of one line "<seq>:<field>,<field>" per record (the fields it marks erased by that record,
   names sorted), lines in ascending seq order joined by a newline.
6. manifest.json's "seal" (absent from bundles exported without the keyring or before seals existed:
   their window is not authenticated) vouches for the window: its since, until, anchor, head_at_until
   and chain_head_at_export are chain.json's, head_seq is chain_head_at_export's seq (0 for none),
   records is the number of lines of events.jsonl, files and created_at are the manifest's. Its mac is
   HMAC-SHA256 (hex) over the compact JSON of the seal without "mac" (keys sorted, separators "," and
   ":", non-ASCII kept as is) under HKDF-SHA256 (no salt, info "gateway keyring derive" + a zero byte +
   "audit-bundle-seal", 32 bytes) of keyring key kid. Only the keyring holder can check (or make) it.
   Its until is not later than its created_at (a window ends at the export time at the latest: the
   exporter clamps a later one). When key kid is marked compromised in the keyring file, the seal
   counts only if its head_seq is at or before the mark's audit_seq and its until and created_at are
   before the mark's "at" (and before its "leaked_since", when given).
"""


class BundleError(Exception):
    """The bundle cannot be read (missing, not a bundle, malformed JSON)."""


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What was written."""

    path: Path
    records: int
    first: ChainRecord | None
    last: ChainRecord | None
    checkpoints: int
    problem: str | None
    until: datetime  # the window's end as exported: the until asked for, or the export time if earlier
    sealed_by: str | None = None  # the keyring key id that sealed it; None: exported without the keyring
    clamped: bool = False  # the until asked for was later than the export time: the window ends at it


@dataclass(frozen=True, slots=True)
class Window:
    """What a bundle says it covers (chain.json): records with ``since <= at < until``, from the one
    after the anchor to the head at ``until``, and the chain head when it was exported."""

    since: datetime
    until: datetime
    anchor_seq: int
    last_seq: int  # the anchor's seq when the range holds no record
    export_head_seq: int  # 0: the chain was empty


@dataclass(frozen=True, slots=True)
class BundleVerdict:
    """What :func:`verify_bundle` found; ``problem`` names the first thing wrong."""

    records: int
    first: ChainRecord | None
    last: ChainRecord | None
    checkpoints_checked: int
    signatures_checked: bool
    problem: str | None
    unchecked: int = 0  # keyed records whose MAC was not checked (no keyring)
    erased: int = 0  # records with erased personal fields
    # Erased records and erasure records whose counterpart lies outside the range: backing not checked.
    erasures_unchecked: int = 0
    window: Window | None = None  # None when the problem was found before it was read
    # "valid" (checked with the keyring), "unchecked" (sealed, no keyring to check it) or "absent".
    seal: str = "absent"
    sealed_by: str | None = None  # the key id the seal names

    @property
    def ok(self) -> bool:
        """Whether everything verified."""
        return self.problem is None

    @property
    def window_authenticated(self) -> bool:
        """Whether the seal vouches for the window, anchor, heads and record count (checked with the
        keyring); otherwise records cut from either end of the range would not show."""
        return self.seal == "valid"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ref(record: ChainRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"seq": record.seq, "id": record.id, "record_hash": record.record_hash}


def _walker(anchor: Mapping[str, Any], keyring: Keyring | None) -> ChainWalker:
    """A walker starting after the anchor; a keyed anchor means no legacy record may follow, an
    erasable one (version 3) no version 2 record either."""
    seq = int(anchor["seq"])
    return ChainWalker(
        keys=chain_keys(keyring),
        after_seq=seq,
        after_hash=str(anchor["record_hash"] or ""),
        keyed_from=seq if anchor.get("v") in (KEYED_VERSION, ERASABLE_VERSION) else None,
        erasable_from=seq if anchor.get("v") == ERASABLE_VERSION else None,
    )


async def _seq_range(db: Database, since: datetime, until: datetime) -> tuple[int, int]:
    """The seqs ``lo..hi`` of the records with ``since <= at < until``; for none, the empty range
    after the last record before ``until`` (``hi = lo - 1``, that record the anchor): a checkpoint
    signed inside the window then names the anchor, and a checkpoint past it shows a cut."""
    query = select(func.min(AuditEvent.seq), func.max(AuditEvent.seq)).where(
        AuditEvent.at >= since, AuditEvent.at < until
    )
    before = select(func.max(AuditEvent.seq)).where(AuditEvent.at < until)
    with store_errors("audit trail"):
        async with db.session() as session:
            lo, hi = (await session.execute(query)).one()
            last = (await session.execute(before)).scalar() if lo is None else None
    return (int(last or 0) + 1, int(last or 0)) if lo is None else (int(lo), int(hi))


async def export_bundle(
    db: Database,
    *,
    since: datetime,
    until: datetime,
    checkpoints: Iterable[Mapping[str, Any]],
    out: Path,
    now: datetime,
    keyring: Keyring | None = None,
) -> ExportSummary:
    """Write an evidence bundle for the records with ``since <= at < until``.

    The range exported is contiguous in the chain (from the first to the last matching record), so
    the proof has no holes. ``out`` ending in ``.zip`` gives a zip file, anything else a directory
    (created; it must not exist or be empty).

    ``keyring`` checks the keyed records' MACs while exporting and seals the bundle's claims (without
    it the bundle has no seal, and its window verifies as not authenticated). An ``until`` later than
    ``now`` is clamped to ``now`` (``ExportSummary.clamped`` and ``until`` say so).

    Returns:
        The summary; its ``problem`` is set when the exported range itself does not verify (the bundle
        is still written, as evidence).

    Raises:
        BundleError: ``out`` exists and is not empty, or ``since`` is not before the window's end.
        StoreUnavailable: The database cannot be read.
    """
    bundle = await assemble_bundle(
        db, since=since, until=until, checkpoints=checkpoints, now=now, keyring=keyring
    )
    _write(out, bundle.files)
    return ExportSummary(
        out,
        bundle.records,
        bundle.first,
        bundle.last,
        bundle.checkpoints,
        bundle.problem,
        bundle.until,
        bundle.sealed_by,
        bundle.clamped,
    )


@dataclass(frozen=True, slots=True)
class Bundle:
    """An evidence bundle in memory: its files (name → bytes) and what they hold."""

    files: Mapping[str, bytes]
    records: int
    first: ChainRecord | None
    last: ChainRecord | None
    checkpoints: int
    problem: str | None
    until: datetime  # the window's end as exported: the until asked for, or the export time if earlier
    sealed_by: str | None = None  # the keyring key id of the seal; None: not sealed (no keyring)
    clamped: bool = False  # the until asked for was later than the export time: the window ends at it

    def zip_bytes(self) -> bytes:
        """The bundle as the zip file ``gateway audit export -o NAME.zip`` writes."""
        return _zip(self.files)


async def assemble_bundle(
    db: Database,
    *,
    since: datetime,
    until: datetime,
    checkpoints: Iterable[Mapping[str, Any]],
    now: datetime,
    keyring: Keyring | None = None,
) -> Bundle:
    """The evidence bundle :func:`export_bundle` writes, in memory (the admin console sends it as is).

    An ``until`` later than ``now`` is clamped to ``now`` (``Bundle.clamped``): a window still open at
    export would have the seal vouch for records written after it.

    Raises:
        BundleError: ``since`` is not before the window's end (``until``, or ``now`` if earlier).
        StoreUnavailable: The database cannot be read.
    """
    until, clamped = _window_end(since, until, now)
    lo, hi = await _seq_range(db, since, until)
    records: list[ChainRecord] = []
    anchor: dict[str, Any] = {"seq": 0, "id": 0, "record_hash": GENESIS}
    if lo > 1:
        before = [r async for r in iter_records(db, from_seq=lo - 1, to_seq=lo - 1)]
        anchor = {"seq": lo - 1, "id": None, "record_hash": None}
        if before:
            first = before[0]
            anchor = {
                "seq": first.seq,
                "id": first.id,
                "record_hash": first.record_hash,
                "v": first.version,
            }
    if hi >= lo:
        records = [r async for r in iter_records(db, from_seq=lo, to_seq=hi)]
    walker = _walker(anchor, keyring)
    for record in records:
        if not walker.feed(record):
            break
    # A range: later records (erasure records among them) are not in the bundle.
    walker.finish(at_head=False)
    problem = None
    if anchor["record_hash"] is None:
        problem = f"the record before the range (seq {anchor['seq']}) is missing from the database"
    elif walker.problem is not None:
        problem = str(walker.problem)
    last_seq = records[-1].seq if records else anchor["seq"]
    checkpoints = list(checkpoints)
    chosen = [dict(c) for c in checkpoints if anchor["seq"] <= int(c["head_seq"]) <= last_seq]
    latest = max(checkpoints, key=lambda c: (int(c["head_seq"]), str(c["at"])), default=None)
    if latest is not None and dict(latest) not in chosen:
        chosen.append(dict(latest))
    # Read after the checkpoints were gathered: no checkpoint given names a later head, unless the
    # trail was cut since (then the export says so).
    exported_head = _ref(await chain_head(db))
    if problem is None:
        window = Window(
            since, until, int(anchor["seq"]), int(last_seq), int(exported_head["seq"]) if exported_head else 0
        )
        known = _known(anchor, [_ref(r) for r in records], exported_head)
        problem, _checked = _checkpoint_problem(chosen, known, None, window, strict=True)
    chain = {
        "format": FORMAT,
        "hash": "sha256",
        "since": iso(since),
        "until": iso(until),
        "anchor": anchor,
        "records": [_ref(r) for r in records],
        "head_at_until": _ref(records[-1]) if records else anchor,
        "chain_head_at_export": exported_head,
    }
    files: dict[str, bytes] = {
        EVENTS: "".join(
            json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n" for r in records
        ).encode("utf-8"),
        CHAIN: json.dumps(chain, indent=2).encode("utf-8"),
        CHECKPOINTS: "".join(json.dumps(c, sort_keys=True) + "\n" for c in chosen).encode("utf-8"),
        README: _README.format(
            since=iso(since),
            until=iso(until),
            count=len(records),
            first_seq=records[0].seq if records else "-",
            last_seq=last_seq if records else "-",
        ).encode("utf-8"),
    }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": iso(now),
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    sealed_by = None
    if keyring is not None:
        # Round-tripped through JSON: the claims the verifier compares are the ones it reads back.
        claims = _claims(json.loads(files[CHAIN]), manifest, len(records))
        manifest[SEAL] = sign_checkpoint(claims, keyring, signing=BUNDLE_SEALS)
        sealed_by = str(manifest[SEAL]["kid"])
    files[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    return Bundle(
        files,
        len(records),
        records[0] if records else None,
        records[-1] if records else None,
        len(chosen),
        problem,
        until,
        sealed_by,
        clamped,
    )


def _window_end(since: datetime, until: datetime, now: datetime) -> tuple[datetime, bool]:
    """The window's end as exported, and whether ``until`` was clamped to the export time ``now``.

    Raises:
        BundleError: ``since`` is not before it (nothing to export).
    """
    clamped = as_utc(until) > as_utc(now)
    end = now if clamped else until
    if as_utc(since) >= as_utc(end):
        what = (
            f"the export time ({iso(now)}): nothing was written yet" if clamped else f"until ({iso(until)})"
        )
        raise BundleError(f"since ({iso(since)}) must be before {what}")
    return end, clamped


def _claims(chain: Mapping[str, Any], manifest: Mapping[str, Any], records: int) -> dict[str, Any]:
    """What the seal vouches for, as the bundle states it (chain.json, the manifest, events.jsonl)."""
    head = chain.get("chain_head_at_export")
    return {
        "since": chain.get("since"),
        "until": chain.get("until"),
        "anchor": chain.get("anchor"),
        "head_at_until": chain.get("head_at_until"),
        "chain_head_at_export": head,
        # The chain head the seal saw, under the name check_signature holds against a compromised key.
        "head_seq": head.get("seq") if isinstance(head, dict) else 0,
        "records": records,
        "files": manifest.get("files"),
        "created_at": manifest.get("created_at"),
    }


def _known(
    anchor: Mapping[str, Any], refs: list[dict[str, Any] | None], exported_head: Mapping[str, Any] | None
) -> dict[int, Mapping[str, Any] | None]:
    """Seq → the record a checkpoint of that seq must name: the anchor, the range, the export head."""
    known: dict[int, Mapping[str, Any] | None] = {int(anchor["seq"]): anchor}
    for ref in refs:
        if ref is not None:
            known[int(ref["seq"])] = ref
    if isinstance(exported_head, Mapping) and isinstance(exported_head.get("seq"), int):
        known.setdefault(int(exported_head["seq"]), exported_head)
    return known


def _zip(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _write(out: Path, files: Mapping[str, bytes]) -> None:
    # The bundle holds every record's actor, subject, address and details: readable by its maker only,
    # as sealed incident bundles and privacy exports are (new files 0600, a new directory 0700, nothing
    # existing replaced and no link followed).
    try:
        if out.suffix.lower() == ".zip":
            out.parent.mkdir(parents=True, exist_ok=True)
            write_new_private(out, _zip(files))
            return
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BundleError(f"{out} exists and is not an empty directory; choose a new one")
        private_dir(out)
        for name, data in files.items():
            write_new_private(out / name, data)
    except FileExistsError:
        raise BundleError(f"{out} already exists; choose a new name") from None


def _read(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    try:
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path}: neither a directory nor a zip file ({exc})") from None


def _json(files: Mapping[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name])
    except json.JSONDecodeError as exc:
        raise BundleError(f"{name}: not JSON ({exc.msg}, line {exc.lineno})") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            # json.loads keeps the last: the first would be what a reader sees and no check covers.
            raise ValueError(f"the key {key[:64]!r} appears twice")
        doc[key] = value
    return doc


def _lines(files: Mapping[str, bytes], name: str) -> list[Any]:
    found = []
    # Only "\n" ends a line: splitlines() also breaks at U+0085 and U+2028, which a record's JSON text
    # holds raw (written with ensure_ascii=False).
    for number, line in enumerate(files[name].decode("utf-8", "replace").split("\n"), start=1):
        if line.strip():
            try:
                found.append(json.loads(line, object_pairs_hook=_unique_keys))
            except json.JSONDecodeError as exc:
                raise BundleError(f"{name}:{number}: not JSON ({exc.msg})") from None
            except ValueError as exc:
                raise BundleError(f"{name}:{number}: {exc}") from None
    return found


def _event_problem(number: int, doc: Any) -> str | None:
    """Keys of an events.jsonl line that neither the record's hash covers nor a check holds."""
    if not isinstance(doc, dict):
        return None  # ChainRecord.from_json names it
    where = f"{EVENTS}:{number}" + (f" (seq {doc['seq']})" if isinstance(doc.get("seq"), int) else "")
    extra = sorted(set(doc) - _EVENT_KEYS)
    if extra:
        names = ", ".join(repr(k[:64]) for k in extra[:5])
        return f"{where}: key(s) {names} that no record hash covers (added after export)"
    if doc.get("v", 1) == 1 and doc.get("kid", "") != "":
        return f"{where}: a version 1 record has no key id, and its hash does not cover 'kid' (added after export)"
    return None


def _window(chain: Mapping[str, Any], records: list[ChainRecord]) -> Window:
    """What chain.json says the bundle covers.

    Raises:
        ValueError: since, until, the anchor or the export head is missing or malformed.
    """
    since, until = (datetime.fromisoformat(str(chain[k]).replace("Z", "+00:00")) for k in ("since", "until"))
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until need a time zone")
    anchor = int(chain["anchor"]["seq"])
    head = chain.get("chain_head_at_export")
    exported = int(head["seq"]) if isinstance(head, dict) else 0
    return Window(since, until, anchor, records[-1].seq if records else anchor, exported)


def verify_bundle(path: Path, *, keyring: Keyring | None = None, require_seal: bool = False) -> BundleVerdict:
    """Check an evidence bundle offline.

    Args:
        path: The bundle directory or zip file.
        keyring: Also checks the keyed records' MACs, the checkpoints' signatures and the bundle's seal
            (which authenticates the window) when given.
        require_seal: A bundle whose window is not authenticated (no seal, or no keyring to check it)
            fails instead of verifying with ``window_authenticated`` false.

    Returns:
        The verdict, naming the first problem.

    Raises:
        BundleError: The bundle cannot be read at all (missing files, malformed JSON).
    """
    files = _read(path)
    missing = [name for name in (*_CONTENT, MANIFEST) if name not in files]
    if missing:
        raise BundleError(f"{path}: not an evidence bundle (no {', '.join(missing)})")
    manifest, chain = _json(files, MANIFEST), _json(files, CHAIN)
    if not isinstance(manifest, dict) or not isinstance(chain, dict):
        raise BundleError(f"{path}: manifest.json and chain.json must be JSON objects")
    window: Window | None = None
    seal: dict[str, Any] | None = manifest.get(SEAL) if isinstance(manifest.get(SEAL), dict) else None
    state = "absent" if seal is None else "unchecked"  # "valid" once checked with the keyring
    sealed_by = str(seal.get("kid")) if seal is not None else None

    def verdict(problem: str | None, walker: ChainWalker | None = None, checked: int = 0) -> BundleVerdict:
        r = (walker or ChainWalker()).report()
        return BundleVerdict(
            r.records,
            r.first,
            r.last,
            checked,
            keyring is not None,
            problem,
            r.unchecked,
            r.erased,
            r.erasures_unchecked,
            window,
            state,
            sealed_by,
        )

    wrong = _manifest_problem(files, manifest)
    if wrong is not None:
        return verdict(wrong)
    if SEAL in manifest and seal is None:
        return verdict("manifest.json's seal is not a signed object (altered after export)")

    docs = _lines(files, EVENTS)
    wrong = next((w for n, d in enumerate(docs, start=1) if (w := _event_problem(n, d)) is not None), None)
    if wrong is not None:
        return verdict(wrong)
    records, anchor, window = _parse(path, docs, chain)
    walker = _walker(anchor, keyring)
    if seal is not None:
        if (wrong := _seal_problem(seal, chain, manifest, len(records), keyring)) is not None:
            return verdict(wrong)
        state = "valid" if keyring is not None else state
    if (wrong := _chain_problem(walker, records, chain, anchor, window)) is not None:
        return verdict(wrong, walker)
    known = _known(anchor, [_ref(r) for r in records], chain.get("chain_head_at_export"))
    wrong, checked = _checkpoint_problem(
        _lines(files, CHECKPOINTS), known, keyring, window, strict=seal is not None
    )
    if wrong is None and require_seal and state != "valid":
        wrong = "its window is not authenticated: " + (
            "the bundle carries no seal, and a sealed bundle was required"
            if seal is None
            else "its seal cannot be checked without the keyring (pass --config)"
        )
    return verdict(wrong, walker, checked)


def _chain_problem(
    walker: ChainWalker,
    records: list[ChainRecord],
    chain: Mapping[str, Any],
    anchor: Mapping[str, Any],
    window: Window,
) -> str | None:
    """Walk the records from the anchor, and hold chain.json's lists and heads against them."""
    for record in records:
        if not walker.feed(record):
            return str(walker.problem)
    if not walker.finish(at_head=False):
        return str(walker.problem)
    if chain.get("records") != [_ref(r) for r in records]:
        return "chain.json does not list exactly the records of events.jsonl"
    head = _ref(records[-1]) if records else anchor
    if chain.get("head_at_until") != head:
        return "chain.json's head_at_until is not the last record of events.jsonl"
    return _window_problem(window, records, chain, head)


def _parse(
    path: Path, docs: list[Any], chain: Mapping[str, Any]
) -> tuple[list[ChainRecord], Mapping[str, Any], Window]:
    """The records, the anchor and the window.

    Raises:
        BundleError: Any of them is missing or malformed.
    """
    try:
        records = [ChainRecord.from_json(doc) for doc in docs]
        anchor = chain["anchor"]
        if not isinstance(anchor, dict) or not isinstance(anchor.get("seq"), int):
            raise ValueError("chain.json's anchor has no seq")
        return records, anchor, _window(chain, records)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: malformed bundle: {exc}") from None


def _seal_problem(
    seal: Mapping[str, Any],
    chain: Mapping[str, Any],
    manifest: Mapping[str, Any],
    records: int,
    keyring: Keyring | None,
) -> str | None:
    """Whether the seal is the exporter's (with the keyring) and vouches for what the bundle states."""
    if keyring is not None and (why := check_signature(seal, keyring, signing=BUNDLE_SEALS)) is not None:
        return f"manifest.json's seal: {why}"
    stated = _claims(chain, manifest, records)
    for name, what in _CLAIMS.items():
        if seal.get(name) != stated[name]:
            return (
                f"the seal made at export vouches for another {what}: it says {_show(seal.get(name))}, "
                f"the bundle {_show(stated[name])} (the bundle was changed after export: records cut "
                "from an end of the range, or the window moved)"
            )
    return _open_window_problem(seal)


def _open_window_problem(seal: Mapping[str, Any]) -> str | None:
    """A sealed window ends at the export time at the latest: records written after the export could lie
    in a window still open then, and the seal would vouch for a range they are missing from."""
    until, created = aware_time(seal.get("until")), aware_time(seal.get("created_at"))
    if created is None:
        return f"the seal's created_at is not a time with a zone: {_show(seal.get('created_at'))}"
    if until is not None and until > created:
        return (
            f"the sealed window ends at {seal['until']}, after the bundle was exported ({seal['created_at']}): "
            "records written after the export could lie inside it, so the seal cannot vouch for the window "
            "(export it again: a window now ends at the export time at the latest)"
        )
    return None


def _show(value: Any) -> str:
    if isinstance(value, dict) and "seq" in value:
        return f"seq {value['seq']}"
    if isinstance(value, dict):
        return "other values"
    return repr(value)[:80]


def _window_problem(
    window: Window, records: list[ChainRecord], chain: Mapping[str, Any], head: Mapping[str, Any] | None
) -> str | None:
    """The range's ends lie inside the window, and the chain head at export is at or after the range's."""
    if records and not window.since <= records[0].at < window.until:
        return (
            f"the first record (seq {records[0].seq}, {iso(records[0].at)}) lies outside the window "
            f"{iso(window.since)} .. {iso(window.until)} chain.json states (the window was changed)"
        )
    if records and not window.since <= records[-1].at < window.until:
        return (
            f"the last record (seq {records[-1].seq}, {iso(records[-1].at)}) lies outside the window "
            f"{iso(window.since)} .. {iso(window.until)} chain.json states (the window was changed)"
        )
    exported = chain.get("chain_head_at_export")
    names = ("seq", "id", "record_hash")
    same = (
        isinstance(exported, dict)
        and head is not None
        and all(exported.get(n) == head.get(n) for n in names)  # the anchor also has "v"
    )
    if window.export_head_seq < window.last_seq or (
        window.export_head_seq == window.last_seq and window.last_seq > 0 and not same
    ):
        return (
            f"chain.json's chain_head_at_export (seq {window.export_head_seq}) is not at or after the "
            f"range's last record (seq {window.last_seq}) (chain.json was edited)"
        )
    return None


def _manifest_problem(files: Mapping[str, bytes], manifest: Mapping[str, Any]) -> str | None:
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        return "manifest.json lists no files"
    for name in sorted(set(files) - {MANIFEST}):
        if name not in listed:
            return f"{name} is not in the manifest (added after export)"
        if _sha256(files[name]) != listed[name]:
            return f"{name} does not match its SHA-256 in the manifest (modified after export)"
    for name in listed:
        if name not in files:
            return f"{name} is listed in the manifest but missing"
    return None


def _checkpoint_time(doc: Mapping[str, Any]) -> datetime | None:
    return aware_time(doc.get("at"))


def _checkpoint_problem(
    docs: list[Any],
    known: Mapping[int, Mapping[str, Any] | None],
    keyring: Keyring | None,
    window: Window,
    *,
    strict: bool,
) -> tuple[str | None, int]:
    """Hold the checkpoints against the bundle: signatures (with the keyring), the record each names
    where the bundle holds that seq, and the window: one signed inside it saw a head from the anchor to
    the last record, and none saw a head past the chain head at export.

    ``strict=False`` (an unsealed bundle) spares an empty range anchored at the genesis: exporters
    before seals anchored every empty range there, so a checkpoint inside its window names a later
    head without anything having been cut.
    """
    checked = 0
    for number, doc in enumerate(docs, start=1):
        where = f"checkpoints.jsonl:{number}"
        if (
            not isinstance(doc, dict)
            or doc.get("type") != CHECKPOINT_TYPE
            or not isinstance(doc.get("head_seq"), int)
            or isinstance(doc.get("head_seq"), bool)
            or (at := _checkpoint_time(doc)) is None
        ):
            return f"{where}: not a checkpoint", checked
        if keyring is not None and (why := check_signature(doc, keyring)) is not None:
            return f"{where}: {why}", checked
        seq = doc["head_seq"]
        if window.since <= at < window.until:
            spared = not strict and window.last_seq == 0
            if seq > window.last_seq and not spared:
                return (
                    f"{where}: the checkpoint of {doc.get('at')}, inside the window, saw the chain reach seq "
                    f"{seq}, but the bundle's range ends at seq {window.last_seq}: record(s) seq "
                    f"{_range(window.last_seq + 1, seq)} were cut from the end of the range (or the window "
                    "was moved)",
                    checked,
                )
            if seq < window.anchor_seq:
                return (
                    f"{where}: the checkpoint of {doc.get('at')}, inside the window, saw the chain end at seq "
                    f"{seq}, before the bundle's anchor seq {window.anchor_seq}: records were cut from the "
                    "start of the range (or the window was moved)",
                    checked,
                )
        if seq > window.export_head_seq:
            return (
                f"{where}: the checkpoint of {doc.get('at')} saw the chain reach seq {seq}, past the chain head "
                f"at export (seq {window.export_head_seq}): the trail was cut before export, or chain.json "
                "was edited",
                checked,
            )
        ref = known.get(seq)
        if ref is None:
            continue  # before the anchor, signed outside the window: proves nothing about these records
        if ref.get("record_hash") != doc.get("head_hash") or ref.get("id") != doc.get("head_id"):
            return (
                f"{where}: the checkpoint of {doc.get('at')} signed a different record at seq "
                f"{seq} than the bundle holds (the records were rewritten before export)",
                checked,
            )
        if window.anchor_seq <= seq <= window.last_seq:
            checked += 1  # inside the range (one of the export head is held, not counted)
    return None, checked


def _range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"
