"""Every erased field must be backed by an erasure record on the chain: the check a chain walk runs.

Erasing fields of a version 3 record keeps its MAC valid (``gateway.audit.erasable``), so the MAC
alone cannot tell a genuine erasure from someone with database access who tombstones a field and
moves its commitment into ``erased`` by hand (the salt gives them the commitment) to hide their
tracks. What they cannot do is append the keyed ``privacy.audit_erased`` record that every genuine
erasure writes in the same transaction, naming how many records it erased, the SHA-256 of their seqs
and the SHA-256 of which fields of each it erased (``fields_sha256``). So, while a walk feeds records in
seq order:

* every erased field names its erasure record (``by``), which must come after the record (the erasure
  record is appended after the records it erases are found) and be a version 3 ``privacy.audit_erased``
  record whose pseudonym the field's tombstone carries;
* when that record is reached, the records naming it must be exactly the ones it counted and hashed,
  and the fields each of them marks erased by it exactly the ones it hashed. Without the second half, a
  further field of a record the erasure covered (the admin who acted on the erased person, the reason
  they gave) could be tombstoned by hand under the genuine erasure's name: same records, same count,
  same pseudonym, and the record's MAC still holds.

Erasure records written before ``fields_sha256`` existed keep the older, weaker check (records, count
and pseudonym only): which fields they erased was never committed to, so it cannot be checked now. A
new erasure record cannot be passed off as an old one: its details are under its MAC.

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
    fields_digest,
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
    """A record naming an erasure record: the fields it marks erased by it, their tombstones' pseudonyms."""

    seq: int
    record_id: int
    pseudonyms: frozenset[str]
    fields: frozenset[str]


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
        groups: dict[int, tuple[set[str], set[str]]] = {}
        for name, entry in erased.items():
            if entry.by <= seq:
                return Finding(
                    record_id,
                    seq,
                    f"field {name!r} is marked erased by seq {entry.by}, which is not after it (an "
                    "erasure record follows the records it erases): erased by hand",
                )
            pseudonyms, fields = groups.setdefault(entry.by, (set(), set()))
            pseudonyms.add(pseudonym_of(values[name]) or "")
            fields.add(name)
        for by, (pseudonyms, fields) in groups.items():
            named = _Named(seq, record_id, frozenset(pseudonyms), frozenset(fields))
            self._pending.setdefault(by, []).append(named)
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
            return _check_fields(seq, record_id, claim.fields_sha256, named)
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


def _check_fields(seq: int, record_id: int, committed: str | None, named: list[_Named]) -> Finding | None:
    """The fields marked erased by an erasure record (``seq``) against the ones it committed to.

    Called only once every record it hashed was seen (a partial walk that misses some counts the
    erasure as unchecked instead), so a mismatch is never the edge of a range.
    """
    if committed is None:
        return None  # written before fields_sha256: which fields it erased was never committed to
    if fields_digest((record.seq, record.fields) for record in named) == committed:
        return None
    # No race hint: an erasure writes its record and every field it erases in one transaction and a
    # row is read whole, so a walk sees all of one erasure's fields on a record or none (which the
    # seqs' check reports first). A difference here was made by hand.
    return Finding(
        record_id,
        seq,
        f"the fields marked erased by this erasure record in seqs {_listing([r.seq for r in named])} "
        "are not the ones it says it erased: a field was erased by hand under its name (to hide who did "
        "something) or an erasure was partly undone",
    )


def _listing(seqs: list[int]) -> str:
    if not seqs:
        return "none"
    shown = ", ".join(str(s) for s in seqs[:10])
    return shown if len(seqs) <= 10 else f"{shown}, … ({len(seqs) - 10} more)"
