"""The audit hash chain: how a record is hashed, how appends stay linear, how a chain is verified.

Every record carries ``seq`` (1, 2, 3, … without gaps), ``prev_hash`` (the previous record's hash;
:data:`GENESIS` for the first) and ``record_hash`` over :func:`canonical` content, which includes
``id``, ``seq``, the time, kind, actor, subject, ip, outcome, details and ``prev_hash``. So:

* a **modified** field changes the record's hash (it no longer matches ``record_hash``);
* a **deleted** record leaves a gap in ``seq`` and the next record's ``prev_hash`` points at nothing;
* an **inserted** or **reordered** record either has no valid hash or does not link to its neighbour;
* a **truncated** tail, or a chain rewritten from some point on, is what the chain alone cannot show:
  signed checkpoints kept outside the database do (``gateway.audit.checkpoint``).

Three chain versions, named per record in ``chain_version``:

* **1, legacy**: ``record_hash`` = SHA-256 of the canonical bytes. No secret, so anyone who can write
  to the database can append a record that verifies. Only records written before the chain was keyed
  (migration ``0006``) are version 1.
* **2, keyed**: ``record_hash`` = HMAC-SHA256 under a key derived from the keyring key ``key_id``
  (``gateway.audit.chain_key``), which the database does not hold; the canonical bytes also carry
  ``"v": 2`` and ``"kid"``. Writing to the database is no longer enough to extend the chain.
* **3, keyed, erasable**: the MAC of version 2, but the canonical bytes carry a commitment to each
  personal field (``actor_c``, ``subject_c``, ``ip_c``, ``details_c``: HMAC-SHA256 keyed by a random
  per-field salt, ``gateway.audit.erasable``) instead of the field itself, and ``"v": 3``. Erasing a
  field (``gateway.audit.erase``) tombstones its value and destroys its salt; the commitment stays, so
  the MAC still verifies, and a keyed ``privacy.audit_erased`` record on the chain backs every erasure
  (``gateway.audit.backing``). Every writer holding the chain key writes version 3.

The changeovers are one-way: once a keyed record is in the chain, a version 1 record after it is a
forgery (a downgrade), and writers without the chain key refuse to append (:class:`ChainKeyMissing`);
a version 2 record after version 3 is accepted when its MAC verifies: during a rolling deploy a
replica still on the previous release writes version 2 records beside the new ones' version 3, and
the chain key it needs is what makes it genuine. Such a record's personal fields cannot be erased;
an erasure counts it among the records it had to keep.

One chain, many writers: appends from every worker and replica serialize on a database-wide lock
(``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) held from reading the head to
commit, and ``seq`` is unique, so two appends can never both follow the same head.

The canonical form is frozen per version: migration ``0005`` has its own copy of version 1, and
evidence bundles are verified with it offline. Change it only with a new version number.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.backing import ErasureLedger, Finding
from gateway.audit.chain_key import ChainKeys
from gateway.audit.erasable import (
    PERSONAL_FIELDS,
    ErasureFormatError,
    commitments,
    dump_salts,
    new_salts,
    parse_erased,
)
from gateway.audit.models import AuditEvent
from gateway.crypto.keyring import Compromise, Keyring, KeyringError
from gateway.errors import GatewayError
from gateway.store.db import SQLITE_BEGIN_OPTION, Database, store_errors

__all__ = [
    "ERASABLE_VERSION",
    "GENESIS",
    "KEYED_VERSION",
    "LEGACY_VERSION",
    "SEAL_KIND",
    "ChainKeyMissing",
    "ChainProblem",
    "ChainRecord",
    "ChainReport",
    "ChainWalker",
    "Precondition",
    "append",
    "append_locked",
    "canonical",
    "chain_head",
    "chain_keys",
    "chain_lock",
    "count_records",
    "iso",
    "iter_records",
    "seal_legacy",
    "verify_database",
]

#: ``prev_hash`` of the first record.
GENESIS: Final = "0" * 64
#: SHA-256 over the canonical form: records written before the chain was keyed.
LEGACY_VERSION: Final = 1
#: HMAC-SHA256 under the chain key of the record's ``key_id``, personal fields in the clear.
KEYED_VERSION: Final = 2
#: The MAC of version 2 over per-field commitments instead of the personal fields: erasable.
ERASABLE_VERSION: Final = 3
#: ``salts`` and ``erased`` of a record without commitments (versions 1 and 2).
_NO_COMMITMENTS: Final = "{}"
#: The keyed record that closes an all-legacy chain (``seal_legacy``): the changeover point.
SEAL_KIND: Final = "audit.chain_keyed"
#: What `gateway backup restore` records first on the restored chain.
RESTORED_KIND: Final = "backup.restored"
# Arbitrary, fixed key for pg_advisory_xact_lock; distinct from the migration and signing-key locks.
_PG_CHAIN_LOCK: Final = 0x6777617564636861  # b"gwaudcha"
_BATCH: Final = 1000
_RESTORE_HINT: Final = (
    "treat the trail as tampered: keep this database as evidence, compare it with a backup or an "
    "exported bundle, and find who had write access to the database"
)
_KEYRING_HINT: Final = (
    "verify with the keyring the gateways use (it holds every key id ever active); if this is that "
    "keyring, the record was forged: " + _RESTORE_HINT
)


#: What must still be true when a record is written (:func:`append`'s ``only_if``), read on the
#: connection that holds the chain lock.
Precondition = Callable[[AsyncConnection], Awaitable[bool]]


class ChainKeyMissing(GatewayError):
    """A writer without the chain key tried to extend a keyed chain (500); nothing was written.

    Its record would be unkeyed after keyed ones, which verification reports as a forgery.
    """

    reason = "audit-chain-key-missing"
    title = "Audit trail key unavailable"


def chain_keys(keyring: Keyring | None) -> ChainKeys | None:
    """The chain keys of ``keyring`` (``None`` without one)."""
    return ChainKeys(keyring) if keyring is not None else None


def iso(at: datetime) -> str:
    """The canonical spelling of a record time: UTC, microseconds, ``+00:00``."""
    if at.tzinfo is None:
        # The store hands back aware UTC; a naive value here can only be UTC read from SQLite raw.
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(
    *,
    id: int,
    seq: int,
    at: datetime,
    kind: str,
    actor: str,
    subject: str,
    ip: str,
    outcome: str,
    details: str,
    prev_hash: str,
    version: int = LEGACY_VERSION,
    key_id: str = "",
    commitments: Mapping[str, str] | None = None,
) -> bytes:
    """The bytes a record's hash covers: compact JSON with sorted keys, UTF-8.

    Version 1 bytes are exactly those written before keyed chains existed; version 2 adds ``"kid"``
    and says ``"v": 2``, so a keyed record's MAC also binds its version and key id. Version 3 is
    version 2 with ``actor``, ``subject``, ``ip`` and ``details`` replaced by ``commitments`` (field →
    hex commitment) under ``actor_c``, ``subject_c``, ``ip_c`` and ``details_c``.

    Raises:
        ValueError: Version 3 without a commitment for every personal field.
    """
    doc: dict[str, object] = {
        "v": version,
        "id": id,
        "seq": seq,
        "at": iso(at),
        "kind": kind,
        "actor": actor,
        "subject": subject,
        "ip": ip,
        "outcome": outcome,
        "details": details,
        "prev": prev_hash,
    }
    if version != LEGACY_VERSION:
        doc["kid"] = key_id
    if version == ERASABLE_VERSION:
        if commitments is None or set(commitments) != set(PERSONAL_FIELDS):
            raise ValueError("a version 3 record commits to every personal field")
        for field in PERSONAL_FIELDS:
            del doc[field]
            doc[f"{field}_c"] = commitments[field]
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ChainRecord:
    """One stored record as the chain sees it (from the database or from an evidence bundle).

    ``salts`` and ``erased`` are the stored JSON texts of those columns (``gateway.audit.erasable``);
    ``"{}"`` for versions 1 and 2.
    """

    id: int
    seq: int
    at: datetime
    kind: str
    actor: str
    subject: str
    ip: str
    outcome: str
    details: str
    prev_hash: str
    record_hash: str
    version: int = LEGACY_VERSION
    key_id: str = ""
    salts: str = _NO_COMMITMENTS
    erased: str = _NO_COMMITMENTS

    @classmethod
    def of(cls, row: AuditEvent) -> ChainRecord:
        """The chain view of a stored event."""
        return cls(
            row.id,
            row.seq,
            row.at,
            row.kind,
            row.actor,
            row.subject,
            row.ip,
            row.outcome,
            row.details,
            row.prev_hash,
            row.record_hash,
            row.chain_version,
            row.key_id,
            row.salts,
            row.erased,
        )

    def personal(self) -> dict[str, str]:
        """The stored personal fields, field → value (tombstones for erased ones)."""
        return {"actor": self.actor, "subject": self.subject, "ip": self.ip, "details": self.details}

    def canonical(self) -> bytes:
        """This record's canonical bytes (what its hash covers).

        Raises:
            ErasureFormatError: A version 3 record whose salts, erased fields or tombstones are not
                what appends and erasure write (the message says which field).
        """
        committed = None
        if self.version == ERASABLE_VERSION:
            committed = commitments(self.personal(), self.salts, self.erased)
        return canonical(
            id=self.id,
            seq=self.seq,
            at=self.at,
            kind=self.kind,
            actor=self.actor,
            subject=self.subject,
            ip=self.ip,
            outcome=self.outcome,
            details=self.details,
            prev_hash=self.prev_hash,
            version=self.version,
            key_id=self.key_id,
            commitments=committed,
        )

    def digest(self, keys: ChainKeys | None = None) -> str:
        """The hash this record should carry: SHA-256 (version 1) or its MAC (versions 2 and 3).

        Raises:
            KeyringError: A keyed record and no ``keys``, or ``keys`` lack its key id.
        """
        if self.version == LEGACY_VERSION:
            return hashlib.sha256(self.canonical()).hexdigest()
        if keys is None:
            raise KeyringError("a keyed audit record needs the keyring")
        return keys.mac(self.canonical(), kid=self.key_id)

    def to_json(self) -> dict[str, Any]:
        """As one line of an exported ``events.jsonl``; version 3 adds ``salts`` and ``erased``.

        Those two are the columns' JSON texts as stored, like ``details``: a verifier needs them to
        recompute the commitments, and versions 1 and 2 keep the lines older bundles had.
        """
        doc: dict[str, Any] = {
            "v": self.version,
            "kid": self.key_id,
            "id": self.id,
            "seq": self.seq,
            "at": iso(self.at),
            "kind": self.kind,
            "actor": self.actor,
            "subject": self.subject,
            "ip": self.ip,
            "outcome": self.outcome,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "record_hash": self.record_hash,
        }
        if self.version == ERASABLE_VERSION:
            doc["salts"], doc["erased"] = self.salts, self.erased
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> ChainRecord:
        """Parse :meth:`to_json` output; raises ``ValueError`` naming what is wrong.

        Lines without ``v`` and ``kid`` (bundles exported before keyed chains) are version 1; lines
        without ``salts`` and ``erased`` (versions 1 and 2, bundles exported before version 3) hold
        ``"{}"``.
        """
        if not isinstance(doc, dict):
            raise ValueError("a record must be a JSON object")
        try:
            at = datetime.fromisoformat(doc["at"])
            values = [doc[k] for k in ("id", "seq", "kind", "actor", "subject", "ip", "outcome")]
            details, prev, digest = doc["details"], doc["prev_hash"], doc["record_hash"]
        except KeyError as exc:
            raise ValueError(f"a record lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a record has a malformed time: {exc}") from None
        if at.tzinfo is None:
            raise ValueError("a record time has no time zone")
        rid, seq, kind, actor, subject, ip, outcome = values
        version, kid = doc.get("v", LEGACY_VERSION), doc.get("kid", "")
        salts, erased = doc.get("salts", _NO_COMMITMENTS), doc.get("erased", _NO_COMMITMENTS)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rid, seq, version)):
            raise ValueError("a record's id, seq and v must be integers")
        texts = (kind, actor, subject, ip, outcome, details, prev, digest, kid, salts, erased)
        if not all(isinstance(v, str) for v in texts):
            raise ValueError("a record's text fields must be strings")
        head = (rid, seq, at, kind, actor, subject, ip, outcome, details, prev, digest)
        return cls(*head, version, kid, salts, erased)


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """The first place the chain is broken: which record, what is wrong, what to do."""

    record_id: int | None
    seq: int | None
    what: str
    action: str = _RESTORE_HINT

    def __str__(self) -> str:
        where = f"record id {self.record_id} (seq {self.seq})" if self.record_id is not None else "chain"
        return f"{where}: {self.what}. What to do: {self.action}."


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What a walk over the chain found. ``problem`` is ``None`` when every link holds.

    ``legacy`` counts version 1 records (protected by checkpoints only), ``keyed_from`` is the seq of
    the first keyed record, ``unchecked`` counts keyed records whose MAC could not be checked (no
    keyring given: their links were checked, their content was not). ``erasable_from`` is the seq of
    the first version 3 record, ``erased`` counts records with erased personal fields and ``erasures``
    the ``privacy.audit_erased`` records backing them; ``erasures_unchecked`` counts erased records
    and erasure records whose counterpart lies outside a partial walk (a range), so their backing was
    not checked.
    """

    records: int
    first: ChainRecord | None
    last: ChainRecord | None
    problem: ChainProblem | None
    legacy: int = 0
    keyed_from: int | None = None
    unchecked: int = 0
    key_ids: frozenset[str] = frozenset()
    erasable_from: int | None = None
    erased: int = 0
    erasures: int = 0
    erasures_unchecked: int = 0

    @property
    def ok(self) -> bool:
        """Whether the chain is intact."""
        return self.problem is None

    @property
    def head_hash(self) -> str:
        """The hash a next record would link to."""
        return self.last.record_hash if self.last is not None else GENESIS


class ChainWalker:
    """Checks records fed in ``seq`` order, stopping at the first break (later ones follow from it).

    Call :meth:`finish` after the last record: whether every erasure is backed is only known then.
    """

    __slots__ = (
        "_expect_prev",
        "_expect_seq",
        "_keys",
        "_ledger",
        "_restored",
        "erasable_from",
        "first",
        "key_ids",
        "keyed_from",
        "last",
        "legacy",
        "problem",
        "records",
        "unchecked",
    )

    def __init__(
        self,
        *,
        keys: ChainKeys | None = None,
        after_seq: int = 0,
        after_hash: str = GENESIS,
        keyed_from: int | None = None,
        erasable_from: int | None = None,
    ) -> None:
        """Start after a known record (the genesis by default; an anchor for an exported range).

        Args:
            keys: Checks keyed records' MACs; without them only their links are checked.
            after_seq: The seq of the record before the first one fed.
            after_hash: That record's hash.
            keyed_from: Where the chain became keyed, if that is before ``after_seq``: a legacy
                record fed later is then a forgery.
            erasable_from: Where the chain became erasable (version 3), if that is before
                ``after_seq``: a version 1 or 2 record fed later is then a downgrade.
        """
        self._keys = keys
        self._expect_seq = after_seq + 1
        self._expect_prev = after_hash
        # When a backup was restored, by a record keyed under a key not marked compromised: the chain
        # after a restore to before a mark is not the chain the mark saw.
        self._restored: list[datetime] = []
        self.records = 0
        self.legacy = 0
        self.unchecked = 0
        self.keyed_from = keyed_from
        self.erasable_from = erasable_from
        self.key_ids: set[str] = set()
        # Erasure records' counts hold against every record naming them only in a walk from genesis.
        self._ledger = ErasureLedger(from_genesis=after_seq == 0)
        self.first: ChainRecord | None = None
        self.last: ChainRecord | None = None
        self.problem: ChainProblem | None = None

    def feed(self, record: ChainRecord) -> bool:
        """Check the next record; returns ``False`` once a problem is found."""
        if self.problem is not None:
            return False
        self.problem = self._check(record)
        if self.problem is not None:
            return False
        # Erased records are only fed to the ledger once their format was checked in _check.
        erased = parse_erased(record.erased) if record.version == ERASABLE_VERSION else {}
        found = self._ledger.feed(
            seq=record.seq,
            record_id=record.id,
            kind=record.kind,
            erasable=record.version == ERASABLE_VERSION,
            details=record.details,
            values=record.personal(),
            erased=erased,
        )
        if found is not None:
            self.problem = _problem(found)
            return False
        self._count(record)
        return True

    def finish(self, *, at_head: bool, live: bool = True) -> bool:
        """After the last record: check erased records whose erasure record was not fed.

        Args:
            at_head: The walk reached the chain's head, so nothing follows: an erased field naming an
                erasure record beyond it is unbacked. A walk of a range passes ``False``, and such
                records are counted as unchecked instead.
            live: The chain is the deployment's now, not a backup's from before a key was marked
                compromised: it must reach the record each mark saw as the head.

        Returns:
            ``False`` if there is a problem (now or from before).
        """
        if self.problem is not None:
            return False
        found = self._ledger.finish(at_head=at_head)
        if found is not None:
            self.problem = _problem(found)
        elif at_head and live:
            self.problem = self._cut_before_a_mark()
        return self.problem is None

    def _restores(self, record: ChainRecord) -> bool:
        """Whether ``record`` is a restore's own record, keyed under a key the leak did not give away:
        not compromised, or compromised only later (written before its own mark, at or before the
        head that mark saw: such a record cannot rewind that mark, only earlier ones)."""
        if record.kind != RESTORED_KIND or self._keys is None or record.version == LEGACY_VERSION:
            return False
        mark = self._keys.compromised(record.key_id)
        return mark is None or (record.seq <= mark.audit_seq and record.at < mark.time)

    def _rewound(self, mark: Compromise) -> bool:
        """Whether a restore made after ``mark`` was seen: the chain since is not the one it saw."""
        return any(at > mark.time for at in self._restored)

    def _anchors(self, now: ChainRecord | None = None) -> list[tuple[str, Compromise]]:
        """The marks whose head the chain must hold: not one a backup restored since has rewound (the
        restore's record is keyed under a key the leak did not give away, which it cannot forge),
        ``now`` included when it is that record."""
        if self._keys is None:
            return []
        restored_at = now.at if now is not None and self._restores(now) else None
        return [
            (kid, mark)
            for kid, mark in self._keys.marks().items()
            if mark.audit_hash
            and not self._rewound(mark)
            and not (restored_at is not None and restored_at > mark.time)
        ]

    def _cut_before_a_mark(self) -> ChainProblem | None:
        """A walk to the head that ends before a mark's ``audit_seq``: records were cut."""
        last = self.last.seq if self.last is not None else 0
        for kid, mark in self._anchors():
            if mark.audit_seq > last:
                return ChainProblem(
                    self.last.id if self.last is not None else 0,
                    last,
                    f"the chain ends at record {last}, before record {mark.audit_seq}, its head when key "
                    f"{kid!r} was marked compromised at {mark.at}: records were cut",
                )
        return None

    def _count(self, record: ChainRecord) -> None:
        self.records += 1
        if record.version == LEGACY_VERSION:
            self.legacy += 1
        else:
            self.keyed_from = self.keyed_from or record.seq
            self.key_ids.add(record.key_id)
            if self._keys is None:
                self.unchecked += 1
        if record.version == ERASABLE_VERSION:
            self.erasable_from = self.erasable_from or record.seq
        if self._restores(record):
            self._restored.append(record.at)
        self.first = self.first or record
        self.last = record
        self._expect_seq = record.seq + 1
        self._expect_prev = record.record_hash

    def _check(self, r: ChainRecord) -> ChainProblem | None:
        if r.seq > self._expect_seq:
            missing = _range(self._expect_seq, r.seq - 1)
            return ChainProblem(
                r.id, r.seq, f"record(s) seq {missing} before it are missing (deleted from the middle)"
            )
        if r.seq < self._expect_seq:  # only possible in a bundle: the database keeps seq unique
            return ChainProblem(r.id, r.seq, f"seq {r.seq} repeats or goes backwards (inserted record)")
        problem = self._check_hash(r)
        if problem is not None:
            return problem
        if r.prev_hash != self._expect_prev:
            return ChainProblem(
                r.id,
                r.seq,
                "it does not link to the record before it (a record was inserted, replaced or the "
                "chain rewritten here)",
            )
        return self._check_anchor(r)

    def _check_anchor(self, r: ChainRecord) -> ChainProblem | None:
        """Record ``audit_seq`` of a key marked compromised is the one the mark saw: whoever holds the
        leaked key can rewrite the chain up to the mark and cut what follows (a re-attack run), which
        no link shows."""
        for kid, mark in self._anchors(r):
            if r.seq == mark.audit_seq and r.record_hash != mark.audit_hash:
                return ChainProblem(
                    r.id,
                    r.seq,
                    f"it is not the record {r.seq} that was the chain's head when key {kid!r} was marked "
                    f"compromised at {mark.at}: the chain was rewritten up to there (with the leaked key?)",
                )
        return None

    def _check_hash(self, r: ChainRecord) -> ChainProblem | None:
        if r.version == LEGACY_VERSION:
            if self.keyed_from is not None:
                # The attack keyed chains exist for: SHA-256 over the public canonical form is what
                # anyone with write access to the database can compute, the chain key is not.
                return ChainProblem(
                    r.id,
                    r.seq,
                    "it is an unkeyed (version 1) record after the chain became keyed at seq "
                    f"{self.keyed_from}: it was written without the chain key (forged by someone "
                    "with access to the database)",
                )
            if hashlib.sha256(r.canonical()).hexdigest() != r.record_hash:
                return ChainProblem(
                    r.id,
                    r.seq,
                    "its content does not match its hash (a field was modified, or the row forged)",
                )
            return self._check_no_commitments(r)
        if r.version not in (KEYED_VERSION, ERASABLE_VERSION):
            return ChainProblem(r.id, r.seq, f"unknown chain version {r.version} (the row was forged)")
        try:
            data = r.canonical()
        except ErasureFormatError as exc:
            return ChainProblem(r.id, r.seq, str(exc))
        problem = self._check_mac(r, data)
        if problem is not None or r.version == ERASABLE_VERSION:
            return problem
        # A version 2 record after version 3 is accepted (module docstring: rolling deploys); its MAC,
        # checked above, is what a forger lacks.
        return self._check_no_commitments(r)

    @staticmethod
    def _check_no_commitments(r: ChainRecord) -> ChainProblem | None:
        # Versions 1 and 2 have no commitments: salts or erased fields on them were written by hand
        # (and would claim an erasure that nothing backs).
        if (r.salts, r.erased) == (_NO_COMMITMENTS, _NO_COMMITMENTS):
            return None
        return ChainProblem(
            r.id,
            r.seq,
            f"it is a version {r.version} record, which has no erasable fields, but its salts or erased "
            "column is set (written by hand)",
        )

    def _check_mac(self, r: ChainRecord, data: bytes) -> ChainProblem | None:
        if self._keys is None:
            return None
        try:
            intact = self._keys.matches(data, r.record_hash, kid=r.key_id)
        except KeyringError:
            return ChainProblem(
                r.id,
                r.seq,
                f"it is keyed under key id {r.key_id[:64]!r}, which this keyring does not hold",
                _KEYRING_HINT,
            )
        if not intact:
            return ChainProblem(
                r.id,
                r.seq,
                "its content does not match its hash (the HMAC under the chain key): a field was "
                "modified, or the row was written without the chain key (forged)",
            )
        mark = self._keys.compromised(r.key_id)
        if mark is not None and (r.seq > mark.audit_seq or self._rewound(mark)):
            # Whoever holds the leaked key can key any record: after the mark, one under it is not ours;
            # nor after a restore since, whose rewound numbers the mark's seq no longer guards (a
            # re-attack run wrote records at seq below it after a restore).
            return ChainProblem(
                r.id,
                r.seq,
                f"it is keyed under key {r.key_id!r}, marked compromised at {mark.at} after record "
                f"{mark.audit_seq}: written with the leaked key (forged), or by a gateway that had not "
                "yet read the rotation",
            )
        return None

    def report(self) -> ChainReport:
        """The result so far."""
        return ChainReport(
            self.records,
            self.first,
            self.last,
            self.problem,
            self.legacy,
            self.keyed_from,
            self.unchecked,
            frozenset(self.key_ids),
            self.erasable_from,
            self._ledger.erased,
            self._ledger.erasures,
            self._ledger.unchecked,
        )


def _problem(found: Finding) -> ChainProblem:
    if found.action is None:
        return ChainProblem(found.record_id, found.seq, found.what)
    return ChainProblem(found.record_id, found.seq, found.what, found.action)


def _range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


# -- the database ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Head:
    seq: int
    record_hash: str
    version: int
    key_id: str = ""


@contextlib.asynccontextmanager
async def chain_lock(db: Database) -> AsyncIterator[AsyncConnection]:
    """A transaction holding the database-wide chain lock from before the head is read until commit.

    Appends (:func:`append_locked`) and erasures (``gateway.audit.erase``) run inside it, so an
    erasure and the records it counts are one consistent step of the chain.
    """
    async with db.engine.connect() as conn:
        if db.backend == "sqlite":
            # SQLite has one writer at a time; IMMEDIATE takes that write lock at BEGIN, before the
            # head is read, so two workers cannot both read the same head (busy_timeout makes the
            # second one wait instead of failing).
            await conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        async with conn.begin():
            if db.backend == "postgresql":
                # Transaction-scoped: released by COMMIT or ROLLBACK, even if this process dies.
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_CHAIN_LOCK})")
            yield conn


async def _head(conn: AsyncConnection) -> _Head | None:
    query = (
        select(AuditEvent.seq, AuditEvent.record_hash, AuditEvent.chain_version, AuditEvent.key_id)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).first()
    return _Head(row[0], row[1], row[2], row[3] or "") if row is not None else None


async def head_of(conn: AsyncConnection) -> tuple[int, str]:
    """The chain's last record number and hash (0 and "" when it is empty), on a connection holding
    :func:`chain_lock`."""
    head = await _head(conn)
    return (head.seq, head.record_hash) if head is not None else (0, "")


async def _insert(
    conn: AsyncConnection, keys: ChainKeys | None, head: _Head | None, draft: ChainRecord
) -> ChainRecord:
    """Write ``draft`` (content only) as the record after ``head``; the chain lock is held."""
    if keys is None and head is not None and head.version != LEGACY_VERSION:
        raise ChainKeyMissing(
            "this writer holds no keyring, so it cannot append to the keyed audit chain; "
            "give it the gateways' keyring"
        )
    if keys is not None:
        # The record before keyed under another key: another process rotated (or marked ours
        # compromised). Go on under the file's active key, not the one this process loaded; and
        # whenever the file changed since it was read.
        keys.catch_up(changed_only=head is None or not head.key_id or head.key_id == keys.active_id)
    seq, prev = (head.seq + 1, head.record_hash) if head is not None else (1, GENESIS)
    version, kid = (ERASABLE_VERSION, keys.active_id) if keys is not None else (LEGACY_VERSION, "")
    # Fresh salts per field and record: one HMAC each when hashing, no extra round trip.
    salts = dump_salts(new_salts()) if version == ERASABLE_VERSION else _NO_COMMITMENTS
    # The id is part of the hash, so the row goes in first (with a placeholder hash, inside this
    # uncommitted transaction) and gets its hash once the id is known.
    rid = (
        await conn.execute(
            insert(AuditEvent)
            .values(
                at=draft.at,
                kind=draft.kind,
                actor=draft.actor,
                subject=draft.subject,
                ip=draft.ip,
                outcome=draft.outcome,
                details=draft.details,
                seq=seq,
                prev_hash=prev,
                record_hash="",
                chain_version=version,
                key_id=kid,
                salts=salts,
                erased=_NO_COMMITMENTS,
            )
            .returning(AuditEvent.id)
        )
    ).scalar_one()
    record = replace(
        draft,
        id=rid,
        seq=seq,
        prev_hash=prev,
        version=version,
        key_id=kid,
        salts=salts,
        erased=_NO_COMMITMENTS,
    )
    record = replace(record, record_hash=record.digest(keys))
    await conn.execute(update(AuditEvent).where(AuditEvent.id == rid).values(record_hash=record.record_hash))
    return record


async def append_locked(conn: AsyncConnection, keys: ChainKeys | None, draft: ChainRecord) -> ChainRecord:
    """Append ``draft`` (content only) after the current head, on a connection holding :func:`chain_lock`.

    Commits with the caller's transaction, so other writes in it (an erasure's updates) are atomic
    with the record.

    Raises:
        ChainKeyMissing: ``keys`` is ``None`` and the chain is already keyed.
    """
    return await _insert(conn, keys, await _head(conn), draft)


async def append(
    db: Database,
    *,
    keys: ChainKeys | None,
    at: datetime,
    kind: str,
    actor: str,
    subject: str,
    ip: str,
    outcome: str,
    details: str,
    only_if: Precondition | None = None,
) -> ChainRecord | None:
    """Append one record to the chain and commit it.

    Args:
        db: The database.
        keys: Keys the record (version 3, erasable). ``None`` writes a legacy version 1 record, which
            is only allowed while the chain has no keyed record yet (tests and tools that predate
            keying).
        at: The event time; the other arguments are the record's content.
        only_if: Checked on the locked connection before anything is written; ``False`` writes
            nothing and returns ``None``. Every erasure of the audit trail runs under the same lock
            (``gateway.audit.erase``), so a record whose precondition holds here is either committed
            before such an erasure reads the trail, or sees the state the erasure's caller committed
            before it (an account already deleted).

    Raises:
        ChainKeyMissing: ``keys`` is ``None`` and the chain is already keyed; nothing was written.
        StoreUnavailable: The database cannot be reached or refused the write.
    """
    draft = ChainRecord(0, 0, at, kind, actor, subject, ip, outcome, details, "", "")
    with store_errors("audit trail"):
        async with chain_lock(db) as conn:
            if only_if is not None and not await only_if(conn):
                # Nothing written; the transaction ends without a change.
                return None
            return await append_locked(conn, keys, draft)


async def seal_legacy(
    db: Database, keys: ChainKeys, *, at: datetime, head_seq: int, head_hash: str
) -> ChainRecord | None:
    """Close an all-legacy chain with a keyed ``audit.chain_keyed`` record naming the legacy head.

    Until a keyed record follows them, legacy records can still be extended by a forger; a gateway
    that writes nothing for a while would leave that window open, so the checkpointer seals the
    chain as soon as it has verified its head. The seal is written only if the head is still the
    verified one (``head_seq``, ``head_hash``) and still legacy.

    Returns:
        The seal, or ``None`` when the head moved or is already keyed.

    Raises:
        StoreUnavailable: The database cannot be reached or refused the write.
    """
    details = json.dumps({"legacy_head_hash": head_hash, "legacy_records": head_seq}, sort_keys=True)
    draft = ChainRecord(0, 0, at, SEAL_KIND, "system", "", "", "success", details, "", "")
    with store_errors("audit trail"):
        async with chain_lock(db) as conn:
            head = await _head(conn)
            if head is None or (head.seq, head.record_hash, head.version) != (
                head_seq,
                head_hash,
                LEGACY_VERSION,
            ):
                return None
            return await _insert(conn, keys, head, draft)


async def iter_records(
    db: Database, *, from_seq: int = 1, to_seq: int | None = None
) -> AsyncIterator[ChainRecord]:
    """Every record from ``from_seq`` (to ``to_seq``), in ``seq`` order, read in batches."""
    after = from_seq - 1
    while True:
        query = select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(_BATCH)
        if to_seq is not None:
            query = query.where(AuditEvent.seq <= to_seq)
        with store_errors("audit trail"):
            async with db.session() as session:
                rows = list((await session.scalars(query)).all())
        for row in rows:
            yield ChainRecord.of(row)
        if len(rows) < _BATCH:
            return
        after = rows[-1].seq


async def chain_head(db: Database) -> ChainRecord | None:
    """The last record of the chain (highest ``seq``), or ``None`` for an empty trail."""
    with store_errors("audit trail"):
        async with db.session() as session:
            row = (await session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))).first()
    return ChainRecord.of(row) if row is not None else None


async def count_records(db: Database) -> int:
    """How many records the table holds."""
    with store_errors("audit trail"):
        async with db.session() as session:
            return int((await session.execute(select(func.count()).select_from(AuditEvent))).scalar_one())


async def verify_database(db: Database, *, keyring: Keyring | None = None, live: bool = True) -> ChainReport:
    """Walk the whole stored chain.

    Args:
        db: The database.
        keyring: Checks keyed records' MACs; without it only their links are (``report.unchecked``).
        live: The deployment's database (it must reach the head each compromised key's mark saw);
            ``False`` for a backup's, which may be older than a mark.

    Returns:
        The report; its ``problem`` names the first broken record. Truncation of the tail is not
        visible here: check checkpoints too (``gateway.audit.checkpoint.verify_trail``).
    """
    walker = ChainWalker(keys=chain_keys(keyring))
    async for record in iter_records(db):
        if not walker.feed(record):
            break
    # iter_records stops only when no record follows: the walk ended at the head.
    walker.finish(at_head=True, live=live)
    return walker.report()
