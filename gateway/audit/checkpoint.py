"""Signed checkpoints of the audit chain, kept outside the database, and verification against them.

A hash chain alone cannot show that its tail was cut off, nor that someone with write access
recomputed every hash after changing a record. A checkpoint can: every ``audit.checkpoint_interval``
a worker signs ``{head id, head seq, head hash, count, time}`` and sends it *out* of the database (the
security-event sinks, and an append-only JSONL file under ``<data_dir>/audit-checkpoints/``).
``gateway audit verify --checkpoint FILE`` then proves the stored chain still reaches every
checkpoint with the same hash.

Signature: HMAC-SHA256 under ``keyring.derive(b"audit-checkpoint", kid=…)``. Chosen over ES256 with
the assertion-signing key because assertion keys are deleted ``assertion.grace`` after they retire
(old checkpoints would become unverifiable within hours), while keyring keys are kept for
decryption forever and every replica and the CLI already hold the keyring. The checkpoint names the
keyring key id, so checkpoints made before a keyring rotation still verify. The cost: whoever can
verify can also sign, so keep the keyring away from whoever you are guarding the trail against (the
database credentials alone are not enough to forge a checkpoint).

Before signing, a worker verifies the records appended since the last checkpoint it trusts (keyed
records against their MAC, so a record forged with database access only is found), and never signs
over a broken chain; it emits an ``audit.chain_broken`` alert instead. A chain whose head is still a
legacy (unkeyed) record is sealed first with a keyed ``audit.chain_keyed`` record, so an idle gateway
does not leave the legacy tail open to forged appends.

Checkpoints are read back from the local JSONL file, from a file of checkpoint objects, or straight
from a file sink's log (JSON lines where checkpoints sit under ``gateway.checkpoint`` among other
events).

The same signature, under a key derived with another label (:data:`BUNDLE_SEALS`), seals what an
evidence bundle claims about itself (``gateway.audit.bundle``): a seal cannot pass for a checkpoint
nor a checkpoint for a seal, since each ``type`` is signed and checked and each has its own key. Under
a key marked compromised, a seal vouches only for what its signer could have seen before the mark: a
head at or before the mark's record, and a window ending and exported before the mark (or before
``leaked_since``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from gateway.audit.chain import (
    GENESIS,
    LEGACY_VERSION,
    ChainProblem,
    ChainRecord,
    ChainReport,
    ChainWalker,
    chain_head,
    chain_keys,
    count_records,
    iso,
    iter_records,
    seal_legacy,
)
from gateway.audit.chain_key import ChainKeys
from gateway.clock import SYSTEM_CLOCK, Clock, as_utc
from gateway.crypto.keyring import Compromise, Keyring, KeyringError
from gateway.errors import GatewayError
from gateway.store.db import Database
from gateway.store.private import private_dir

__all__ = [
    "BUNDLE_SEALS",
    "CHECKPOINTS",
    "CHECKPOINT_DIR",
    "CHECKPOINT_FILE",
    "ChainBroken",
    "Checkpointer",
    "Signing",
    "TrailVerdict",
    "aware_time",
    "check_signature",
    "latest_checkpoint",
    "load_checkpoints",
    "local_checkpoint_file",
    "sign_checkpoint",
    "verify_trail",
]

logger = logging.getLogger("gateway.audit")

CHECKPOINT_DIR: Final = "audit-checkpoints"
CHECKPOINT_FILE: Final = "checkpoints.jsonl"
CHECKPOINT_TYPE: Final = "audit.checkpoint"
MAC_ALGORITHM: Final = "HMAC-SHA256"
_FIELDS: Final = ("head_id", "head_seq", "head_hash", "count", "at")


@dataclass(frozen=True, slots=True)
class Signing:
    """What a signed document is: its ``type`` (signed, and checked) and the label its key is derived
    under from the keyring (``keyring.derive(label, kid=…)``), distinct per purpose.

    ``times`` names the document's fields holding times it vouches for (ISO 8601 with a zone). Under a
    key marked compromised each must lie before the mark (before ``leaked_since`` when the mark names
    it): a document that speaks for a time after the key leaked is not the gateway's.
    """

    type: str
    label: bytes
    times: tuple[str, ...] = ()


#: Checkpoints of the chain head.
CHECKPOINTS: Final = Signing(CHECKPOINT_TYPE, b"audit-checkpoint")
#: The seal of an evidence bundle's claims (window, anchor, heads, record count, file sums): its window
#: ends (``until``) and it was made (``created_at``) at times its signer must have seen.
BUNDLE_SEALS: Final = Signing("audit.bundle_seal", b"audit-bundle-seal", times=("until", "created_at"))


class ChainBroken(GatewayError):
    """The audit chain does not verify, so no checkpoint was signed over it (500)."""

    reason = "audit-chain-broken"
    title = "Audit trail tampered"


def _signed_bytes(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_checkpoint(
    body: Mapping[str, Any], keyring: Keyring, *, signing: Signing = CHECKPOINTS
) -> dict[str, Any]:
    """Return ``body`` with ``type``, ``alg``, ``kid`` and the ``mac`` over all of it.

    ``signing`` says what is signed: a checkpoint by default, :data:`BUNDLE_SEALS` for a bundle's seal
    (whose body names the chain head it saw as ``head_seq`` too, for the compromised-key check).
    """
    with contextlib.suppress(KeyringError):
        # Under the file's active key: never one a rotation has just marked compromised.
        keyring.follow_file()
    doc = {**body, "type": signing.type, "alg": MAC_ALGORITHM, "kid": keyring.active_id}
    key = keyring.derive(signing.label, kid=keyring.active_id)
    doc["mac"] = hmac.new(key, _signed_bytes(doc), hashlib.sha256).hexdigest()
    return doc


def check_signature(
    doc: Mapping[str, Any], keyring: Keyring, *, signing: Signing = CHECKPOINTS
) -> str | None:
    """``None`` if the document's MAC verifies under the keyring (a checkpoint by default), else why not.

    Under a key marked compromised the MAC proves little (whoever holds the leaked key can compute it):
    the document must name a ``head_seq`` at or before the mark's ``audit_seq``, and each of its
    ``signing.times`` (a seal's ``until`` and ``created_at``) must lie before the mark, or before
    ``leaked_since`` when the mark names that.
    """
    if doc.get("type") != signing.type:
        return f"not a signed {signing.type} (type {str(doc.get('type'))[:64]!r})"
    if doc.get("alg") != MAC_ALGORITHM:
        return f"unknown signature algorithm {doc.get('alg')!r}"
    kid, mac = doc.get("kid"), doc.get("mac")
    if not isinstance(kid, str) or not isinstance(mac, str):
        return "no key id or MAC"
    try:
        key = keyring.derive(signing.label, kid=kid)
    except KeyringError:
        return f"signed with key {kid[:64]!r}, which this keyring does not hold"
    expected = hmac.new(key, _signed_bytes(doc), hashlib.sha256).hexdigest()
    # Constant time: the MAC must not leak how much of a forgery was right.
    if not hmac.compare_digest(expected, mac):
        return "the MAC does not verify (forged or altered)"
    mark = keyring.compromised.get(kid)
    if mark is None:
        return None
    head = doc.get("head_seq")
    if isinstance(head, bool) or not isinstance(head, int) or head > mark.audit_seq:
        # Whoever holds the leaked key can sign any checkpoint: only heads it could have seen are its.
        return (
            f"signed with key {kid!r}, marked compromised at {mark.at}, for a head after record "
            f"{mark.audit_seq} (forged with the leaked key?)"
        )
    # Nor a time after the key may have leaked: a seal over an empty window after the mark names the
    # head at the mark, and passed the head check alone.
    cutoff, since_what = _compromise_time(mark)
    for name in signing.times:
        value = doc.get(name)
        at = aware_time(value)
        if at is None or at >= cutoff:
            shown = "missing" if value is None else repr(str(value))[:80]
            why = "not a time with a zone, so not shown to be" if at is None else "not"
            return (
                f"signed with key {kid!r}, marked compromised at {mark.at}, with {name} {shown}: {why} "
                f"before {since_what} {cutoff.isoformat()} (forged with the leaked key?)"
            )
    return None


def _compromise_time(mark: Compromise) -> tuple[datetime, str]:
    """From when a compromised key's signatures speak for nothing: the mark, or ``leaked_since`` when
    the operator knew it and it is earlier."""
    cutoff, what = mark.time, "the mark"
    leaked = None
    if mark.leaked_since:
        with contextlib.suppress(ValueError):  # checked when the keyring file was read
            leaked = as_utc(datetime.fromisoformat(mark.leaked_since))
    if leaked is not None and leaked < cutoff:
        cutoff, what = leaked, "the leak (leaked_since)"
    return cutoff, what


def aware_time(value: object) -> datetime | None:
    """An ISO 8601 time with a zone (``Z`` allowed), else ``None``."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def _check_shape(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("type") != CHECKPOINT_TYPE:
        raise ValueError(f'{where}: not an audit checkpoint (no "type": "{CHECKPOINT_TYPE}")')
    for name in _FIELDS:
        if name not in doc:
            raise ValueError(f"{where}: the checkpoint lacks {name!r}")
    if not all(isinstance(doc[n], int) and not isinstance(doc[n], bool) for n in ("head_seq", "count")):
        raise ValueError(f"{where}: head_seq and count must be integers")
    if not isinstance(doc["head_hash"], str):
        raise ValueError(f"{where}: head_hash must be a string")
    return doc


def _from_sink_event(doc: Any) -> Any:
    """The checkpoint inside a sink's event; ``None`` for any other event of a sink's log."""
    if not isinstance(doc, dict) or doc.get("type") == CHECKPOINT_TYPE:
        return doc
    nested = doc.get("gateway")
    nested = nested.get("checkpoint") if isinstance(nested, dict) else None
    if isinstance(nested, dict):
        # audit.chain_broken alerts travel the same way; they are not proof of anything.
        return nested if nested.get("type") == CHECKPOINT_TYPE else None
    # Another ECS event (an access-log line) in a file sink's log; anything else is refused below.
    return None if "@timestamp" in doc and "event" in doc else doc


def _collect(items: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for where, doc in items:
        inner = _from_sink_event(doc)
        if inner is not None:
            found.append(_check_shape(inner, where))
    return found


def local_checkpoint_file(data_dir: str | os.PathLike[str]) -> Path:
    """Where this node's gateways append their checkpoints (``<data_dir>/audit-checkpoints/checkpoints.jsonl``).

    ``gateway audit verify``, ``gateway audit export`` and the admin console read it from here.
    """
    return Path(data_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def latest_checkpoint(checkpoints: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The checkpoint of the highest chain position, or ``None`` without any."""
    return max(checkpoints, key=lambda c: int(c["head_seq"]), default=None)


def load_checkpoints(path: Path) -> list[dict[str, Any]]:
    """Read checkpoints: one JSON object, a JSON list, JSON lines, or a file sink's log.

    Blank lines, and events of a sink's log that are not checkpoints, are skipped.

    Raises:
        OSError: The file cannot be read.
        ValueError: Malformed JSON, not a checkpoint, or no checkpoint at all; the message names
            the line.
    """
    text = path.read_text(encoding="utf-8")
    found: list[dict[str, Any]] | None = None
    with contextlib.suppress(json.JSONDecodeError):
        whole = json.loads(text)
        items = whole if isinstance(whole, list) else [whole]
        found = _collect((f"{path} item {i}", doc) for i, doc in enumerate(items, start=1))
    if found is None:
        lines = []
        # Only "\n" ends a JSON line: splitlines() also breaks at U+0085 and U+2028, which JSON text may
        # hold raw (a client's User-Agent in a sink's log made the whole file unreadable here).
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                lines.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        found = _collect(lines)
    if not found:
        raise ValueError(f"{path}: holds no checkpoint")
    return found


@dataclass(frozen=True, slots=True)
class TrailVerdict:
    """The chain walk plus the checkpoints it was held against."""

    report: ChainReport
    problem: ChainProblem | None
    checkpoints_checked: int

    @property
    def ok(self) -> bool:
        """Whether the chain is intact and reaches every checkpoint."""
        return self.problem is None


def _checkpoint_problems(
    checkpoints: Iterable[Mapping[str, Any]],
    hashes: Mapping[int, tuple[int, str]],
    last_seq: int,
    keyring: Keyring | None,
) -> list[tuple[int, ChainProblem]]:
    """Hold checkpoints against the hashes a walk saw (seq → (id, hash)), sorted by seq.

    ``last_seq`` is where the intact part of the chain ends.
    """
    found: list[tuple[int, ChainProblem]] = []
    matched = 0  # the highest checkpointed seq seen intact so far, for "rewritten between" messages
    for doc in sorted(checkpoints, key=lambda d: int(d["head_seq"])):
        seq, head_id, when = int(doc["head_seq"]), doc["head_id"], doc["at"]
        if keyring is not None and (why := check_signature(doc, keyring)) is not None:
            found.append(
                (
                    seq,
                    ChainProblem(
                        None,
                        None,
                        f"checkpoint of {when} (seq {seq}): {why}",
                        "do not trust this checkpoint file; use the copy in your log sinks",
                    ),
                )
            )
            continue
        if seq == 0:
            continue
        if seq > last_seq:
            found.append(
                (
                    seq,
                    ChainProblem(
                        head_id,
                        seq,
                        f"missing: record(s) seq {_range(last_seq + 1, seq)} are gone from the end of the chain, "
                        f"but the checkpoint of {when} saw {doc['count']} records with head id {head_id} "
                        "(the trail was truncated)",
                    ),
                )
            )
            continue
        stored = hashes.get(seq)
        if stored is None or stored[1] != doc["head_hash"] or stored[0] != head_id:
            found.append(
                (
                    seq,
                    ChainProblem(
                        stored[0] if stored is not None else head_id,
                        seq,
                        f"the chain was rewritten: the record at seq {seq} no longer has the hash the "
                        f"checkpoint of {when} signed, so records between seq {matched + 1} and {seq} "
                        "were changed and their hashes recomputed",
                    ),
                )
            )
            continue
        matched = seq
    return found


async def verify_trail(
    db: Database, checkpoints: Iterable[Mapping[str, Any]] = (), *, keyring: Keyring | None = None
) -> TrailVerdict:
    """Walk the whole stored chain and hold it against ``checkpoints``.

    Args:
        db: The database.
        checkpoints: Parsed checkpoints (:func:`load_checkpoints`).
        keyring: Checks each checkpoint's MAC and each keyed record's MAC when given; without it
            keyed records are checked for links only (``report.unchecked``).

    Returns:
        The verdict; ``problem`` is the first (lowest seq) break found.
    """
    checkpoints = list(checkpoints)
    wanted = {int(d["head_seq"]) for d in checkpoints}
    hashes: dict[int, tuple[int, str]] = {}
    walker = ChainWalker(keys=chain_keys(keyring))
    async for record in iter_records(db):
        if not walker.feed(record):
            break
        if record.seq in wanted:
            hashes[record.seq] = (record.id, record.record_hash)
    walker.finish(at_head=True)  # the whole chain: every erasure record was read
    report = walker.report()
    last_seq = report.last.seq if report.last is not None else 0
    problems = _checkpoint_problems(checkpoints, hashes, last_seq, keyring)
    if report.problem is not None and report.problem.seq is not None:
        # A checkpoint at or beyond the break is a consequence of the break, not a second finding: an
        # edited head record stops the walk before it, and the checkpoint of that seq would call it a
        # truncation when the walker says what it is (its content does not match its hash).
        problems = [p for p in problems if p[0] < report.problem.seq]
        problems.append((report.problem.seq, report.problem))
    problems.sort(key=lambda p: p[0])
    return TrailVerdict(report, problems[0][1] if problems else None, len(checkpoints))


class Checkpointer:
    """Signs checkpoints of the chain head; one per worker (replicas' checkpoints agree)."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        *,
        directory: str | os.PathLike[str] | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """Args:
        db: The database.
        keyring: Signs the checkpoints (HMAC key derived per keyring key id) and checks the keyed
            records' MACs before signing.
        directory: Where ``checkpoints.jsonl`` is appended (``<data_dir>/audit-checkpoints``);
            ``None`` keeps no local file.
        clock: Time source for the checkpoint time.
        """
        self._db = db
        self._keyring = keyring
        self._keys = ChainKeys(keyring)
        self._clock = clock
        self._file = Path(directory) / CHECKPOINT_FILE if directory is not None else None
        # The last head this process verified: later checkpoints only walk what was appended since.
        self._trusted_seq = 0
        self._trusted_hash = GENESIS
        # Where the chain became keyed, once seen: a legacy record after it is a forgery.
        self._keyed_from: int | None = None
        # Where it became erasable (version 3), once seen: a version 2 record after it is a downgrade.
        self._erasable_from: int | None = None

    @property
    def path(self) -> Path | None:
        """The local JSONL file, if any."""
        return self._file

    async def checkpoint(self) -> dict[str, Any]:
        """Verify the records appended since the last checkpoint, seal a legacy head, sign the head.

        Returns:
            The signed checkpoint (also appended to the local file).

        Raises:
            ChainBroken: The records since the last trusted head do not verify (a modified record,
                or one forged without the chain key); nothing was signed.
            StoreUnavailable: The database cannot be read.
        """
        head = await chain_head(self._db)
        walker = await self._verify_up_to(head)
        if head is not None and head.version == LEGACY_VERSION:
            head = await self._seal(head, walker)
        head_seq = head.seq if head is not None else 0
        head_hash = head.record_hash if head is not None else GENESIS
        body = {
            "head_id": head.id if head is not None else 0,
            "head_seq": head_seq,
            "head_hash": head_hash,
            "count": await count_records(self._db),
            "at": iso(self._clock.now()),
        }
        doc = sign_checkpoint(body, self._keyring)
        self._trusted_seq, self._trusted_hash = head_seq, head_hash
        self._keyed_from = walker.keyed_from
        self._erasable_from = walker.erasable_from
        if self._file is not None:
            await asyncio.to_thread(_append_line, self._file, json.dumps(doc, sort_keys=True))
        return doc

    async def _verify_up_to(self, head: ChainRecord | None) -> ChainWalker:
        """Walk from the last trusted head to ``head`` with the chain keys; raise on any break."""
        head_seq = head.seq if head is not None else 0
        head_hash = head.record_hash if head is not None else GENESIS
        if head_seq < self._trusted_seq or (
            head_seq == self._trusted_seq and head_hash != self._trusted_hash
        ):
            raise ChainBroken(
                f"the chain now ends at seq {head_seq}, but this worker signed seq {self._trusted_seq} "
                "earlier: records were removed or rewritten"
            )
        walker = ChainWalker(
            keys=self._keys,
            after_seq=self._trusted_seq,
            after_hash=self._trusted_hash,
            keyed_from=self._keyed_from,
            erasable_from=self._erasable_from,
        )
        async for record in iter_records(self._db, from_seq=self._trusted_seq + 1, to_seq=head_seq):
            if not walker.feed(record):
                raise ChainBroken(str(walker.problem))
        # Not at_head: an erasure appended after the head was read may already have erased records
        # of this walk. Erasures whose records lie before it stay unchecked here; `audit verify`
        # checks them over the whole chain.
        if not walker.finish(at_head=False):
            raise ChainBroken(str(walker.problem))
        reached = walker.last.seq if walker.last is not None else self._trusted_seq
        if reached != head_seq:
            raise ChainBroken(f"records seq {reached + 1}..{head_seq} are missing")
        return walker

    async def _seal(self, head: ChainRecord, walker: ChainWalker) -> ChainRecord:
        """Close the verified legacy ``head`` with a keyed record; the new head (or ``head``)."""
        sealed = await seal_legacy(
            self._db, self._keys, at=self._clock.now(), head_seq=head.seq, head_hash=head.record_hash
        )
        if sealed is None:
            # Another writer appended after the verified head: sign what was verified; the next
            # checkpoint walks (and seals, if still needed) from there.
            return head
        if not walker.feed(sealed):  # pragma: no cover - written just now under the chain lock
            raise ChainBroken(str(walker.problem))
        logger.info("audit chain keyed from seq %d on (legacy records 1..%d sealed)", sealed.seq, head.seq)
        return sealed

    async def run_checkpoints(self, emit: Callable[[dict[str, Any]], None], interval: float) -> None:
        """Every ``interval`` seconds, make a checkpoint and hand it to ``emit`` (the sinks).

        Runs until cancelled. A failure is logged and alerted (``audit.chain_broken``) but never ends
        the loop: the next interval tries again.
        """
        if interval <= 0:
            raise ValueError(f"checkpoint interval must be positive, not {interval}")
        while True:
            await asyncio.sleep(interval)
            try:
                emit(await self.checkpoint())
            except ChainBroken as exc:
                logger.error("audit chain broken, no checkpoint signed: %s", exc.detail)
                with contextlib.suppress(Exception):
                    emit({"type": "audit.chain_broken", "at": iso(self._clock.now()), "problem": exc.detail})
            except Exception:
                logger.exception("audit checkpoint failed")


def _range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _append_line(path: Path, line: str) -> None:
    private_dir(path.parent)
    # O_APPEND: lines from several workers land whole and never overwrite each other.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
