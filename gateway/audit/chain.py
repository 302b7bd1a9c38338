"""The audit hash chain: how a record is hashed, how appends stay linear, how a chain is verified.

Every record carries ``seq`` (1, 2, 3, … without gaps), ``prev_hash`` (the previous record's hash;
:data:`GENESIS` for the first) and ``record_hash`` = SHA-256 over :func:`canonical` content, which
includes ``id``, ``seq``, the time, kind, actor, subject, ip, outcome, details and ``prev_hash``. So:

* a **modified** field changes the record's hash (it no longer matches ``record_hash``);
* a **deleted** record leaves a gap in ``seq`` and the next record's ``prev_hash`` points at nothing;
* an **inserted** or **reordered** record either has no valid hash or does not link to its neighbour;
* a **truncated** tail, or a chain rewritten from some point on with freshly computed hashes, is what
  the plain chain cannot show: signed checkpoints kept outside the database do
  (``gateway.audit.checkpoint``).

One chain, many writers: appends from every worker and replica serialize on a database-wide lock
(``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) held from reading the head to
commit, and ``seq`` is unique, so two appends can never both follow the same head.

The canonical form is frozen (version 1): migration ``0005`` has its own copy, and evidence bundles
are verified with it offline. Change it only with a new version number.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.identity.models import AuditEvent
from gateway.store.db import SQLITE_BEGIN_OPTION, Database, store_errors

__all__ = [
    "GENESIS",
    "ChainProblem",
    "ChainRecord",
    "ChainReport",
    "ChainWalker",
    "append",
    "canonical",
    "chain_head",
    "count_records",
    "iso",
    "iter_records",
    "verify_database",
]

#: ``prev_hash`` of the first record.
GENESIS: Final = "0" * 64
CANONICAL_VERSION: Final = 1
# Arbitrary, fixed key for pg_advisory_xact_lock; distinct from the migration and signing-key locks.
_PG_CHAIN_LOCK: Final = 0x6777617564636861  # b"gwaudcha"
_BATCH: Final = 1000
_RESTORE_HINT: Final = (
    "treat the trail as tampered: keep this database as evidence, compare it with a backup or an "
    "exported bundle, and find who had write access to the database"
)


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
) -> bytes:
    """The bytes a record's hash covers: compact JSON with sorted keys, UTF-8."""
    doc = {
        "v": CANONICAL_VERSION,
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
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ChainRecord:
    """One stored record as the chain sees it (from the database or from an evidence bundle)."""

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
        )

    def computed_hash(self) -> str:
        """SHA-256 (hex) of this record's canonical content."""
        return hashlib.sha256(
            canonical(
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
            )
        ).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """As one line of an exported ``events.jsonl``."""
        return {
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

    @classmethod
    def from_json(cls, doc: Any) -> ChainRecord:
        """Parse :meth:`to_json` output; raises ``ValueError`` naming what is wrong."""
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
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rid, seq)):
            raise ValueError("a record's id and seq must be integers")
        texts = (kind, actor, subject, ip, outcome, details, prev, digest)
        if not all(isinstance(v, str) for v in texts):
            raise ValueError("a record's text fields must be strings")
        return cls(rid, seq, at, kind, actor, subject, ip, outcome, details, prev, digest)


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
    """What a walk over the chain found. ``problem`` is ``None`` when every link holds."""

    records: int
    first: ChainRecord | None
    last: ChainRecord | None
    problem: ChainProblem | None

    @property
    def ok(self) -> bool:
        """Whether the chain is intact."""
        return self.problem is None

    @property
    def head_hash(self) -> str:
        """The hash a next record would link to."""
        return self.last.record_hash if self.last is not None else GENESIS


class ChainWalker:
    """Checks records fed in ``seq`` order, stopping at the first break (later ones follow from it)."""

    __slots__ = ("_expect_prev", "_expect_seq", "first", "last", "problem", "records")

    def __init__(self, *, after_seq: int = 0, after_hash: str = GENESIS) -> None:
        """Start after a known record (the genesis by default; an anchor for an exported range)."""
        self._expect_seq = after_seq + 1
        self._expect_prev = after_hash
        self.records = 0
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
        self.records += 1
        self.first = self.first or record
        self.last = record
        self._expect_seq = record.seq + 1
        self._expect_prev = record.record_hash
        return True

    def _check(self, r: ChainRecord) -> ChainProblem | None:
        if r.seq > self._expect_seq:
            missing = _range(self._expect_seq, r.seq - 1)
            return ChainProblem(
                r.id, r.seq, f"record(s) seq {missing} before it are missing (deleted from the middle)"
            )
        if r.seq < self._expect_seq:  # only possible in a bundle: the database keeps seq unique
            return ChainProblem(r.id, r.seq, f"seq {r.seq} repeats or goes backwards (inserted record)")
        if r.computed_hash() != r.record_hash:
            return ChainProblem(
                r.id, r.seq, "its content does not match its hash (a field was modified, or the row forged)"
            )
        if r.prev_hash != self._expect_prev:
            return ChainProblem(
                r.id,
                r.seq,
                "it does not link to the record before it (a record was inserted, replaced or the "
                "chain rewritten here)",
            )
        return None

    def report(self) -> ChainReport:
        """The result so far."""
        return ChainReport(self.records, self.first, self.last, self.problem)


def _range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


# -- the database ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _chain_lock(db: Database) -> AsyncIterator[AsyncConnection]:
    """A transaction holding the database-wide chain lock from before the head is read until commit."""
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


async def append(
    db: Database,
    *,
    at: datetime,
    kind: str,
    actor: str,
    subject: str,
    ip: str,
    outcome: str,
    details: str,
) -> ChainRecord:
    """Append one record to the chain and commit it.

    Raises:
        StoreUnavailable: The database cannot be reached or refused the write.
    """
    with store_errors("audit trail"):
        async with _chain_lock(db) as conn:
            head = (
                await conn.execute(
                    select(AuditEvent.seq, AuditEvent.record_hash).order_by(AuditEvent.seq.desc()).limit(1)
                )
            ).first()
            seq, prev = (head[0] + 1, head[1]) if head is not None else (1, GENESIS)
            # The id is part of the hash, so the row goes in first (with a placeholder hash, inside
            # this uncommitted transaction) and gets its hash once the id is known.
            rid = (
                await conn.execute(
                    insert(AuditEvent)
                    .values(
                        at=at,
                        kind=kind,
                        actor=actor,
                        subject=subject,
                        ip=ip,
                        outcome=outcome,
                        details=details,
                        seq=seq,
                        prev_hash=prev,
                        record_hash="",
                    )
                    .returning(AuditEvent.id)
                )
            ).scalar_one()
            record = ChainRecord(rid, seq, at, kind, actor, subject, ip, outcome, details, prev, "")
            digest = record.computed_hash()
            await conn.execute(update(AuditEvent).where(AuditEvent.id == rid).values(record_hash=digest))
    return ChainRecord(rid, seq, at, kind, actor, subject, ip, outcome, details, prev, digest)


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


async def verify_database(db: Database) -> ChainReport:
    """Walk the whole stored chain.

    Returns:
        The report; its ``problem`` names the first broken record. Truncation of the tail is not
        visible here: check checkpoints too (``gateway.audit.checkpoint.check_checkpoints``).
    """
    walker = ChainWalker()
    async for record in iter_records(db):
        if not walker.feed(record):
            break
    return walker.report()
