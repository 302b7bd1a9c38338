"""Evidence bundles: a time range of the audit trail with everything needed to verify it offline.

A bundle is a directory or a zip file holding::

    events.jsonl       the records, one JSON object a line, in chain order
    chain.json         the proof: the hash of the record before the range (anchor), each record's hash,
                       the head at the end of the range and the chain head when exported
    checkpoints.jsonl  the signed checkpoints that fall inside the range, and the latest one
    manifest.json      SHA-256 of every other file
    README.txt         how to verify it (with or without this gateway)

:func:`verify_bundle` checks the manifest, recomputes every legacy record's hash, checks each record
links to the one before (starting at the anchor) and that the checkpoints inside the range match;
with the keyring it also checks the keyed records' MACs and the checkpoints' signatures. Version 3
records carry their ``salts`` and ``erased`` columns, so records whose personal fields were erased
still verify offline; their erasure records are checked where both lie inside the range.
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
from gateway.audit.checkpoint import check_signature
from gateway.audit.models import AuditEvent
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
5. Every erased field's "by" names a v = 3 privacy.audit_erased record after it, and its tombstone
   carries that record's pseudonym. When the range holds that record and every record naming it, they
   are as many as its details' "records", the SHA-256 of their seqs (ascending, joined by ",") is its
   "seqs_sha256" and, when its details have "fields_sha256" (erasures before it lack it), that is the
   SHA-256 of one line "<seq>:<field>,<field>" per record (the fields it marks erased by that record,
   names sorted), lines in ascending seq order joined by a newline.
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

    @property
    def ok(self) -> bool:
        """Whether everything verified."""
        return self.problem is None


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


async def _seq_range(db: Database, since: datetime, until: datetime) -> tuple[int, int] | None:
    query = select(func.min(AuditEvent.seq), func.max(AuditEvent.seq)).where(
        AuditEvent.at >= since, AuditEvent.at < until
    )
    with store_errors("audit trail"):
        async with db.session() as session:
            lo, hi = (await session.execute(query)).one()
    return None if lo is None else (int(lo), int(hi))


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

    ``keyring`` checks the keyed records' MACs while exporting.

    Returns:
        The summary; its ``problem`` is set when the exported range itself does not verify (the bundle
        is still written, as evidence).

    Raises:
        BundleError: ``out`` exists and is not empty.
        StoreUnavailable: The database cannot be read.
    """
    bundle = await assemble_bundle(
        db, since=since, until=until, checkpoints=checkpoints, now=now, keyring=keyring
    )
    _write(out, bundle.files)
    return ExportSummary(out, bundle.records, bundle.first, bundle.last, bundle.checkpoints, bundle.problem)


@dataclass(frozen=True, slots=True)
class Bundle:
    """An evidence bundle in memory: its files (name → bytes) and what they hold."""

    files: Mapping[str, bytes]
    records: int
    first: ChainRecord | None
    last: ChainRecord | None
    checkpoints: int
    problem: str | None

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

    Raises:
        StoreUnavailable: The database cannot be read.
    """
    span = await _seq_range(db, since, until)
    records: list[ChainRecord] = []
    anchor: dict[str, Any] = {"seq": 0, "id": 0, "record_hash": GENESIS}
    if span is not None:
        lo, hi = span
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
    if problem is None:
        known = {int(anchor["seq"]): anchor, **{r.seq: _ref(r) for r in records}}
        problem, _checked = _checkpoint_problem(chosen, known, None)
    files: dict[str, bytes] = {
        EVENTS: "".join(
            json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n" for r in records
        ).encode("utf-8"),
        CHAIN: json.dumps(
            {
                "format": FORMAT,
                "hash": "sha256",
                "since": iso(since),
                "until": iso(until),
                "anchor": anchor,
                "records": [_ref(r) for r in records],
                "head_at_until": _ref(records[-1]) if records else anchor,
                "chain_head_at_export": _ref(await chain_head(db)),
            },
            indent=2,
        ).encode("utf-8"),
        CHECKPOINTS: "".join(json.dumps(c, sort_keys=True) + "\n" for c in chosen).encode("utf-8"),
        README: _README.format(
            since=iso(since),
            until=iso(until),
            count=len(records),
            first_seq=records[0].seq if records else "-",
            last_seq=last_seq if records else "-",
        ).encode("utf-8"),
    }
    manifest = {
        "format": FORMAT,
        "created_at": iso(now),
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    files[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    return Bundle(
        files,
        len(records),
        records[0] if records else None,
        records[-1] if records else None,
        len(chosen),
        problem,
    )


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


def _lines(files: Mapping[str, bytes], name: str) -> list[Any]:
    found = []
    for number, line in enumerate(files[name].decode("utf-8", "replace").splitlines(), start=1):
        if line.strip():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BundleError(f"{name}:{number}: not JSON ({exc.msg})") from None
    return found


def verify_bundle(path: Path, *, keyring: Keyring | None = None) -> BundleVerdict:
    """Check an evidence bundle offline.

    Args:
        path: The bundle directory or zip file.
        keyring: Also checks the keyed records' MACs and the checkpoints' signatures when given.

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
        )

    wrong = _manifest_problem(files, manifest)
    if wrong is not None:
        return verdict(wrong)

    try:
        records = [ChainRecord.from_json(doc) for doc in _lines(files, EVENTS)]
        anchor = chain["anchor"]
        walker = _walker(anchor, keyring)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: malformed bundle: {exc}") from None
    for record in records:
        if not walker.feed(record):
            return verdict(str(walker.problem), walker)
    if not walker.finish(at_head=False):
        return verdict(str(walker.problem), walker)
    if chain.get("records") != [_ref(r) for r in records]:
        return verdict("chain.json does not list exactly the records of events.jsonl", walker)
    head = _ref(records[-1]) if records else anchor
    if chain.get("head_at_until") != head:
        return verdict("chain.json's head_at_until is not the last record of events.jsonl", walker)

    known = {int(anchor["seq"]): anchor, **{r.seq: _ref(r) for r in records}}
    wrong, checked = _checkpoint_problem(_lines(files, CHECKPOINTS), known, keyring)
    return verdict(wrong, walker, checked)


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


def _checkpoint_problem(
    docs: list[Any], known: Mapping[int, Mapping[str, Any] | None], keyring: Keyring | None
) -> tuple[str | None, int]:
    checked = 0
    for number, doc in enumerate(docs, start=1):
        where = f"checkpoints.jsonl:{number}"
        if not isinstance(doc, dict) or not isinstance(doc.get("head_seq"), int):
            return f"{where}: not a checkpoint", checked
        if keyring is not None and (why := check_signature(doc, keyring)) is not None:
            return f"{where}: {why}", checked
        ref = known.get(doc["head_seq"])
        if ref is None:
            continue  # outside the range: proves nothing about these records
        if ref.get("record_hash") != doc.get("head_hash") or ref.get("id") != doc.get("head_id"):
            return (
                f"{where}: the checkpoint of {doc.get('at')} signed a different record at seq "
                f"{doc['head_seq']} than the bundle holds (the records were rewritten before export)",
                checked,
            )
        checked += 1
    return None, checked
