"""Every erased field must be backed by an erasure record on the chain: the check a chain walk runs.

Erasing fields of a version 3 record keeps its MAC valid (``gateway.audit.erasable``), so the MAC
alone cannot tell a genuine erasure from someone with database access who tombstones a field and
moves its commitment into ``erased`` by hand (the salt gives them the commitment) to hide their
tracks. What they cannot do is append the keyed ``privacy.audit_erased`` record that every genuine
erasure writes in the same transaction, naming how many records it erased and the SHA-256 of their
seqs. So, while a walk feeds records in seq order:

* every erased field names its erasure record (``by``), which must come after the record (the erasure
  record is appended after the records it erases are found) and be a version 3 ``privacy.audit_erased``
  record whose pseudonym the field's tombstone carries;
* when that record is reached, the records naming it must be exactly the ones it counted and hashed.

A walk over part of the chain (a checkpoint's increment, an evidence bundle's range) checks what lies
inside it and counts the rest as unchecked: records before the range may name an erasure record in it,
and an erased record in it may name an erasure record after the range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from gateway.audit.erasable import (
    ERASURE_KIND,
    Erased,
    ErasureFormatError,
    parse_erasure_details,
    pseudonym_of,
    seqs_digest,
)

__all__ = ["ErasureLedger", "Finding"]

_RACE_HINT: Final = (
    "if an erasure was committed while this walk read the trail, run it again; if this is still "
    "reported, treat the trail as tampered: keep this database as evidence, compare it with a backup "
    "or an exported bundle, and find who had write access to the database"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """A record whose erasure is not backed; ``action`` ``None`` means the chain's usual advice."""

    record_id: int
    seq: int
    what: str
    action: str | None = None


@dataclass(frozen=True, slots=True)
class _Named:
    """A record that names an erasure record, with the pseudonyms its tombstones carry for it."""

    seq: int
    record_id: int
    pseudonyms: frozenset[str]


@dataclass(slots=True)
class ErasureLedger:
    """Pairs erased fields with their erasure records as a walk feeds records in ``seq`` order.

    ``from_genesis``: the walk starts at the first record, so an erasure record's count can be held
    against every record that names it.
    """

    from_genesis: bool
    #: Records with at least one erased field.
    erased: int = 0
    #: ``privacy.audit_erased`` records seen.
    erasures: int = 0
    #: Erased records and erasure records whose other side lies outside the walk.
    unchecked: int = 0
    _pending: dict[int, list[_Named]] = field(default_factory=dict)

    def feed(
        self,
        *,
        seq: int,
        record_id: int,
        kind: str,
        erasable: bool,
        details: str,
        values: Mapping[str, str],
        erased: Mapping[str, Erased],
    ) -> Finding | None:
        """Account for the next record (already checked for hash and link); a finding if unbacked.

        Args:
            seq: Its chain position.
            record_id: Its id.
            kind: Its kind.
            erasable: Whether it is a version 3 record (only those can be erasure records).
            details: Its details (an erasure record's claim).
            values: Its stored personal fields (tombstones for the erased ones).
            erased: Its erased fields.
        """
        if erased:
            self.erased += 1
            found = self._note(seq, record_id, values, erased)
            if found is not None:
                return found
        named = self._pending.pop(seq, [])
        if kind == ERASURE_KIND and erasable:
            self.erasures += 1
            return self._settle(seq, record_id, details, named)
        if named:
            first = named[0]
            return Finding(
                first.record_id,
                first.seq,
                f"its fields are marked erased by seq {seq}, which is a {kind[:64]!r} record, not an "
                "erasure record (fields erased by hand)",
            )
        return None

    def finish(self, *, at_head: bool) -> Finding | None:
        """After the last record. ``at_head``: nothing follows it, so a missing erasure record is gone."""
        if not self._pending:
            return None
        if not at_head:
            self.unchecked += sum(len(named) for named in self._pending.values())
            self._pending.clear()
            return None
        by = min(self._pending)
        first = self._pending[by][0]
        return Finding(
            first.record_id,
            first.seq,
            f"its fields are marked erased by seq {by}, after the end of the chain: no erasure record "
            "backs them (erased by hand)",
        )

    def _note(
        self, seq: int, record_id: int, values: Mapping[str, str], erased: Mapping[str, Erased]
    ) -> Finding | None:
        groups: dict[int, set[str]] = {}
        for name, entry in erased.items():
            if entry.by <= seq:
                return Finding(
                    record_id,
                    seq,
                    f"field {name!r} is marked erased by seq {entry.by}, which is not after it (an "
                    "erasure record follows the records it erases): erased by hand",
                )
            groups.setdefault(entry.by, set()).add(pseudonym_of(values[name]) or "")
        for by, pseudonyms in groups.items():
            self._pending.setdefault(by, []).append(_Named(seq, record_id, frozenset(pseudonyms)))
        return None

    def _settle(self, seq: int, record_id: int, details: str, named: list[_Named]) -> Finding | None:
        try:
            claim = parse_erasure_details(details)
        except ErasureFormatError as exc:
            return Finding(record_id, seq, f"it is an erasure record, but {exc}")
        for record in named:
            if record.pseudonyms != {claim.pseudonym}:
                return Finding(
                    record.record_id,
                    record.seq,
                    f"its fields erased by seq {seq} do not carry that erasure's pseudonym in their "
                    "tombstones (changed by hand)",
                )
        seqs = [record.seq for record in named]
        if len(seqs) == claim.records and seqs_digest(seqs) == claim.seqs_sha256:
            return None
        if len(seqs) < claim.records and not self.from_genesis:
            # Records before the walk's range may name it too.
            self.unchecked += 1
            return None
        return Finding(
            record_id,
            seq,
            f"this erasure record says it erased {claim.records} record(s), but the records marked "
            f"erased by it are {len(seqs)} (seqs {_listing(seqs)}), or not the ones it hashed: fields "
            "were erased by hand or an erasure was undone",
            _RACE_HINT,
        )


def _listing(seqs: list[int]) -> str:
    if not seqs:
        return "none"
    shown = ", ".join(str(s) for s in seqs[:10])
    return shown if len(seqs) <= 10 else f"{shown}, … ({len(seqs) - 10} more)"
