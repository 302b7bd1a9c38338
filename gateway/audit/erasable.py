"""Chain version 3: per-field commitments that let a record's personal fields be erased later.

A version 3 record's MAC does not cover its personal fields (``actor``, ``subject``, ``ip``,
``details``) in the clear but a commitment to each::

    commit(field, salt, value) = HMAC-SHA256(key = salt, field ‖ 0x00 ‖ UTF-8 value)   (hex)

with a fresh 16-byte random salt per field and record, kept in the row's ``salts`` column. Erasing a
field replaces its value with a tombstone (``[erased:<pseudonym>]``), moves its commitment into the
row's ``erased`` column and drops its salt: the MAC still verifies (it covers the commitment, which is
unchanged), and nobody can confirm a guessed value any more, because the salt is gone. Keeping the salt
would defeat the erasure: usernames and IP addresses are guessable, and salt + commitment would confirm
a guess.

Column formats (compact JSON, sorted keys):

* ``salts``: ``{"<field>": "<32 hex: the 16-byte salt>", …}`` for every field not erased; ``{}`` for
  version 1 and 2 records.
* ``erased``: ``{"<field>": {"c": "<64 hex: the commitment>", "by": <seq>}, …}`` for every erased field;
  ``by`` is the chain position of the ``privacy.audit_erased`` record that erased it. Per field, not per
  record, because a record can name two people (an admin acting on a user) erased at different times.

Every personal field of a version 3 record is in exactly one of the two. The erasure itself is a record
on the chain (``gateway.audit.erase``), so erasing fields by hand with database access only is found
(``gateway.audit.backing``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ERASURE_KIND",
    "PERSONAL_FIELDS",
    "SALT_BYTES",
    "Erased",
    "ErasureClaim",
    "ErasureFormatError",
    "commit",
    "commitments",
    "dump_erased",
    "dump_salts",
    "erased_value",
    "fields_digest",
    "new_salts",
    "parse_erased",
    "parse_erasure_details",
    "parse_salts",
    "pseudonym_of",
    "seqs_digest",
]

#: The fields a version 3 record commits to instead of holding them in its MAC'd bytes.
PERSONAL_FIELDS: Final = ("actor", "subject", "ip", "details")
#: Salt length: 128 bits, far beyond guessing, and what the commitment's HMAC key is.
SALT_BYTES: Final = 16
#: The kind of the record that erases fields of earlier records.
ERASURE_KIND: Final = "privacy.audit_erased"

_PSEUDONYM: Final = re.compile(r"[0-9a-f]{1,32}")
_TOMBSTONE: Final = re.compile(r"\[erased:([0-9a-f]{1,32})\]")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_SALT_HEX: Final = re.compile(rf"[0-9a-f]{{{2 * SALT_BYTES}}}")


class ErasureFormatError(ValueError):
    """A version 3 record's salts, erased fields or tombstones are not what erasure writes."""


def commit(field: str, salt: bytes, value: str) -> str:
    """The commitment to ``value`` of ``field`` under ``salt`` (hex HMAC-SHA256 keyed by the salt).

    The field name is bound in so that one field's commitment never verifies for another.
    """
    return hmac.new(salt, field.encode() + b"\0" + value.encode("utf-8"), hashlib.sha256).hexdigest()


def erased_value(pseudonym: str) -> str:
    """What an erased field holds: ``[erased:<pseudonym>]``.

    Raises:
        ValueError: ``pseudonym`` is not 1-32 lowercase hex digits (anything else could carry the
            very data erasure removes).
    """
    if _PSEUDONYM.fullmatch(pseudonym) is None:
        raise ValueError("an erasure pseudonym is 1 to 32 lowercase hex digits")
    return f"[erased:{pseudonym}]"


def pseudonym_of(value: str) -> str | None:
    """The pseudonym of a tombstone, or ``None`` when ``value`` is not exactly a tombstone."""
    found = _TOMBSTONE.fullmatch(value)
    return found.group(1) if found is not None else None


def new_salts() -> dict[str, bytes]:
    """Fresh random salts, one per personal field."""
    return {field: secrets.token_bytes(SALT_BYTES) for field in PERSONAL_FIELDS}


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def dump_salts(salts: Mapping[str, bytes]) -> str:
    """The ``salts`` column text."""
    return _dump({field: salt.hex() for field, salt in salts.items()})


@dataclass(frozen=True, slots=True)
class Erased:
    """An erased field: its commitment and the seq of the erasure record that erased it."""

    commitment: str
    by: int


def dump_erased(erased: Mapping[str, Erased]) -> str:
    """The ``erased`` column text."""
    return _dump({field: {"c": e.commitment, "by": e.by} for field, e in erased.items()})


def _object(text: str, column: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise ErasureFormatError(f"its {column} column is not JSON") from None
    if not isinstance(doc, dict):
        raise ErasureFormatError(f"its {column} column is not a JSON object")
    unknown = sorted(set(doc) - set(PERSONAL_FIELDS))
    if unknown:
        raise ErasureFormatError(f"its {column} column names {unknown[0][:40]!r}, not a personal field")
    return doc


def parse_salts(text: str) -> dict[str, bytes]:
    """The ``salts`` column, field → salt.

    Raises:
        ErasureFormatError: Not a JSON object of personal fields to 32 hex digits.
    """
    salts = {}
    for field, salt in _object(text, "salts").items():
        if not isinstance(salt, str) or _SALT_HEX.fullmatch(salt) is None:
            raise ErasureFormatError(f"the salt of field {field!r} is not {2 * SALT_BYTES} hex digits")
        salts[field] = bytes.fromhex(salt)
    return salts


def parse_erased(text: str) -> dict[str, Erased]:
    """The ``erased`` column, field → :class:`Erased`.

    Raises:
        ErasureFormatError: Not a JSON object of personal fields to ``{"c": 64 hex, "by": seq}``.
    """
    erased = {}
    for field, entry in _object(text, "erased").items():
        if not isinstance(entry, dict) or set(entry) != {"c", "by"}:
            raise ErasureFormatError(f'the erased entry of field {field!r} is not {{"c": …, "by": …}}')
        c, by = entry["c"], entry["by"]
        if not isinstance(c, str) or _HEX64.fullmatch(c) is None:
            raise ErasureFormatError(f"the erased commitment of field {field!r} is not 64 hex digits")
        if not isinstance(by, int) or isinstance(by, bool) or by < 1:
            raise ErasureFormatError(f"the erased field {field!r} names no erasure record (by)")
        erased[field] = Erased(c, by)
    return erased


def commitments(values: Mapping[str, str], salts_text: str, erased_text: str) -> dict[str, str]:
    """The commitment of each personal field of a version 3 record, as its MAC covers them.

    An erased field's commitment is the stored one (its value is gone); any other field's is computed
    from its salt and its stored value, so a changed value changes the commitment and breaks the MAC.

    Raises:
        ErasureFormatError: Malformed columns; a field both salted and erased (the salt must go, or the
            commitment confirms guesses), or neither; an erased field that holds anything but a tombstone.
    """
    salts, erased = parse_salts(salts_text), parse_erased(erased_text)
    found: dict[str, str] = {}
    for field in PERSONAL_FIELDS:
        if field in erased:
            if field in salts:
                raise ErasureFormatError(
                    f"field {field!r} is marked erased but still has its salt (with the salt anyone can "
                    "confirm a guessed value)"
                )
            if pseudonym_of(values[field]) is None:
                raise ErasureFormatError(f"field {field!r} is marked erased but holds a value")
            found[field] = erased[field].commitment
        elif field in salts:
            found[field] = commit(field, salts[field], values[field])
        else:
            raise ErasureFormatError(
                f"field {field!r} has neither a salt nor an erased commitment (the row was written or "
                "changed by hand)"
            )
    return found


@dataclass(frozen=True, slots=True)
class ErasureClaim:
    """What a ``privacy.audit_erased`` record says it did (its details).

    ``fields_sha256`` (:func:`fields_digest`) fixes which fields of which records the erasure erased.
    Without it, the count and the seqs' hash were all a record committed to, and someone with database
    access could tombstone a further field of a record the erasure covered (say the actor of an admin
    action on the erased person, or the admin's reason in its details), move its commitment into
    ``erased`` naming that erasure and pass verification: the seqs were still the same. Erasure records
    written before it existed have it ``None`` and keep that weaker check (``gateway.audit.backing``).
    """

    request: str
    pseudonym: str
    records: int
    seqs_sha256: str
    fields_sha256: str | None = None

    def details(self) -> str:
        """The record's details text (without ``fields_sha256`` when it is ``None``: the old format)."""
        doc: dict[str, object] = {
            "request": self.request,
            "pseudonym": self.pseudonym,
            "records": self.records,
            "seqs_sha256": self.seqs_sha256,
        }
        if self.fields_sha256 is not None:
            doc["fields_sha256"] = self.fields_sha256
        return _dump(doc)


_CLAIM_KEYS: Final = frozenset({"request", "pseudonym", "records", "seqs_sha256"})


def parse_erasure_details(text: str) -> ErasureClaim:
    """The claim in an erasure record's details, in the current format or the one before ``fields_sha256``.

    Accepting the older format cannot be used to weaken a new record: its details are under its MAC, so
    dropping ``fields_sha256`` from them breaks the chain at that record.

    Raises:
        ErasureFormatError: Not the JSON object :meth:`ErasureClaim.details` writes.
    """
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise ErasureFormatError("its details are not JSON") from None
    if not isinstance(doc, dict) or set(doc) not in (_CLAIM_KEYS, _CLAIM_KEYS | {"fields_sha256"}):
        raise ErasureFormatError(
            "its details are not request, pseudonym, records, seqs_sha256 (and fields_sha256)"
        )
    request, pseudonym, records, digest = doc["request"], doc["pseudonym"], doc["records"], doc["seqs_sha256"]
    fields = doc.get("fields_sha256")
    if not isinstance(request, str) or not isinstance(pseudonym, str) or not isinstance(digest, str):
        raise ErasureFormatError("its request, pseudonym and seqs_sha256 must be strings")
    if "fields_sha256" in doc and not isinstance(fields, str):
        raise ErasureFormatError("its fields_sha256 must be a string")
    if not isinstance(records, int) or isinstance(records, bool) or records < 0:
        raise ErasureFormatError("its record count is not a non-negative integer")
    return ErasureClaim(request, pseudonym, records, digest, fields)


def seqs_digest(seqs: Iterable[int]) -> str:
    """SHA-256 (hex) of the seqs in ascending order, joined by ``,`` (no spaces)."""
    return hashlib.sha256(",".join(str(s) for s in sorted(seqs)).encode()).hexdigest()


def fields_digest(erased: Iterable[tuple[int, Iterable[str]]]) -> str:
    """SHA-256 (hex) of which fields of which records one erasure erased.

    One line ``<seq>:<field>,<field>`` per record (its field names sorted), the lines in ascending seq
    order joined by ``\n`` (no trailing newline; no records hash the empty string). Field names are
    bare words and seqs integers, so no two different sets spell the same text.
    """
    lines = sorted((seq, ",".join(sorted(fields))) for seq, fields in erased)
    return hashlib.sha256("\n".join(f"{seq}:{names}" for seq, names in lines).encode()).hexdigest()
