"""Erasing a person's personal fields from the audit trail (GDPR), on the chain and verifiably.

:func:`erase_person` finds the version 3 records that name a user, tombstones their fields, drops
those fields' salts and keeps the commitments (``gateway.audit.erasable``), so the chain still
verifies and nobody can confirm what the fields held. In the same transaction, under the chain lock,
it appends a keyed ``privacy.audit_erased`` record saying how many records it erased, the SHA-256
of their seqs and the SHA-256 of which fields of each it erased (``fields_sha256``); every erased field
names that record. Someone with database access only cannot append such a record, so erasing fields by
hand to hide their tracks is found by the verifier (``gateway.audit.backing``): in records the erasure
did not touch, and also a further field of a record it did touch (an admin's name or reason in a record
about the erased person), which the count and the seqs alone did not show.

Which fields: a record whose ``subject`` is the user loses ``subject`` and ``details``; one whose
``actor`` is the user (``user:NAME``, ``admin:NAME`` or ``NAME``) loses ``actor``, ``ip`` and
``details``, except what they did as an admin to someone else (``admin.*``), which loses only ``ip``:
who made a change and why is the record of the change. An erasure record never loses its details:
they are what backs an erasure (they hold a request reference, a pseudonym, a count and a hash,
nothing about the person erased).

:func:`erase_expired` does the same for age instead of a person (the retention engine,
``gateway.privacy.retention``): every personal field of every version 3 record older than a cutoff,
backed by one erasure record whose pseudonym is the fixed :data:`EXPIRED_PSEUDONYM`.

What it cannot do: version 1 and 2 records hold the fields in their hash, so erasing them would break
the chain; they are counted (``kept_legacy``) and left alone. Mentions of the user inside other
people's records' details (but the owner a service account's record names), and copies the ``gateway.audit`` log and the sinks already received, are
outside the table and out of its reach.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any, Final
from urllib.parse import unquote

from sqlalchemy import Row, Select, Update, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.chain import ERASABLE_VERSION, ChainRecord, append_locked, chain_lock
from gateway.audit.chain_key import ChainKeys
from gateway.audit.erasable import (
    ERASURE_KIND,
    Erased,
    ErasureClaim,
    ErasureFormatError,
    commit,
    dump_erased,
    dump_salts,
    erased_value,
    fields_digest,
    parse_erased,
    parse_salts,
    seqs_digest,
)
from gateway.audit.models import AuditEvent
from gateway.errors import GatewayError
from gateway.store.db import Database, store_errors

__all__ = [
    "EXPIRED_PSEUDONYM",
    "NOT_ABOUT_PEOPLE",
    "ErasureRefused",
    "ErasureResult",
    "Expiring",
    "actor_spellings",
    "erase_expired",
    "erase_person",
    "expiring",
]

logger = logging.getLogger("gateway.audit")

# Records of things a person owns (their details name the owner): a service account's.
_OWNED_KINDS: Final = ("service_account.",)
_AS_SUBJECT: Final = ("subject", "details")
_AS_ACTOR: Final = ("actor", "ip", "details")
# What the person did as an admin to others (the admin API's ``admin.*`` records) keeps who did it and
# why, only their address goes: "every change is an audited act: who, what, why" (SOC 2's change
# records; GDPR Art. 17(3)(b) and (e) let an erasure keep them). An attack run: an admin erased their
# own account in the portal right after acting, and the trail could no longer say who had acted. The
# records still go with the audit trail's retention (``audit_events``), as every record does.
_AS_ADMIN: Final = ("ip",)
_ADMIN_ACTS: Final = "admin."
_NOT_AN_ACT: Final = "admin.refused"  # a refused request to the admin API, by anyone signed in
# The actor spellings that name a user (the web and CLI write "user:NAME", the admin API "admin:NAME";
# the CLI once wrote the bare name). The bare words the gateway writes as actors of its own ("system",
# "anonymous") can be nobody's username (gateway.identity.names.RESERVED_USERNAMES).
_ACTOR_PREFIXES: Final = ("user:", "admin:", "")
#: The pseudonym of fields erased for their age (:func:`erase_expired`): ``[erased:0]``. Fixed, so a
#: reader tells a retention erasure from a person's (whose pseudonym is 12 random hex digits), and
#: one, because the records it erases name many people and must not be linkable to each other.
EXPIRED_PSEUDONYM: Final = "0"


def actor_spellings(username: str) -> frozenset[str]:
    """The ``actor`` values that name ``username``: ``user:NAME``, ``admin:NAME`` and ``NAME``."""
    return frozenset(prefix + username for prefix in _ACTOR_PREFIXES)


class ErasureRefused(GatewayError):
    """A record to erase does not have the shape erasure needs (500); nothing was erased."""

    reason = "audit-erasure-refused"
    title = "Audit erasure refused"


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """What :func:`erase_person` did.

    ``record`` is the ``privacy.audit_erased`` record appended, ``erased`` the seqs of the records
    whose fields were erased and ``fields`` how many fields that was. ``kept_legacy`` counts version 1
    and 2 records naming the user, left readable because erasing them would break the chain.
    """

    record: ChainRecord
    erased: tuple[int, ...]
    fields: int
    kept_legacy: int


def _malformed(row: ChainRecord, exc: ErasureFormatError) -> ErasureRefused:
    return ErasureRefused(f"audit record seq {row.seq}: {exc}; run `gateway audit verify`")


@dataclass(frozen=True, slots=True)
class _Plan:
    row: ChainRecord
    fields: tuple[str, ...]


def _record(row: Row[Any]) -> ChainRecord:
    """A row of ``select(AuditEvent)`` read on a plain connection (the chain lock's), as the chain sees it."""
    m = row._mapping
    return ChainRecord(
        m["id"],
        m["seq"],
        m["at"],
        m["kind"],
        m["actor"],
        m["subject"],
        m["ip"],
        m["outcome"],
        m["details"],
        m["prev_hash"],
        m["record_hash"],
        m["chain_version"],
        m["key_id"],
        m["salts"],
        m["erased"],
    )


# The kinds of record whose subject is never a person: a backup's stanza or label, a drill's backup.
# A person named like one (a stanza called "main", a label is a valid username) must not take them.
NOT_ABOUT_PEOPLE: Final = ("backup.", "dr.")


def names_person(subject: str, names: frozenset[str]) -> bool:
    """Whether a record's ``subject`` names the person: their username or email as the subject, or as
    the account segment of a path, the one after ``users`` (``/api/users/NAME/…``, the console's
    ``/users/NAME``): an admin request refused before its account was found records what was typed,
    and a refused admin API request its path (a re-attack run found both left after erasure). Only
    that segment: a person named ``users`` or ``api`` must not take other people's records along.
    ``names`` are lower case."""
    if subject.lower() in names:
        return True
    segments = subject.partition("?")[0].split("/")
    return any(before == "users" and _decoded(segment) in names for before, segment in pairwise(segments))


def _decoded(segment: str) -> str:
    """A path segment as a name: percent-decoded until it no longer changes (a double encoding is
    stored decoded once), in lower case."""
    for _ in range(3):
        decoded = unquote(segment)
        if decoded == segment:
            break
        segment = decoded
    return segment.lower()


def _owned_by(row: ChainRecord, names: frozenset[str]) -> bool:
    """Whether ``row`` records a service account whose owner is the person (its details hold the owner:
    an attack run found an erased person's address there, which named them again)."""
    if not row.kind.startswith(_OWNED_KINDS):
        return False
    try:
        details = json.loads(row.details)
    except ValueError:
        return False  # erased already
    owner = details.get("owner") if isinstance(details, dict) else None
    return isinstance(owner, str) and owner.strip().lower() in names


def _fields_to_erase(row: ChainRecord, names: frozenset[str], actors: frozenset[str]) -> tuple[str, ...]:
    """The fields of ``row`` that name the user and are not erased yet, in ``PERSONAL_FIELDS`` order."""
    wanted: set[str] = set()
    about_them = not row.kind.startswith(NOT_ABOUT_PEOPLE) and names_person(row.subject, names)
    if about_them:
        wanted.update(_AS_SUBJECT)
    if _owned_by(row, names):
        wanted.add("details")
    if row.actor in actors:
        acted_as_admin = row.kind.startswith(_ADMIN_ACTS) and row.kind != _NOT_AN_ACT
        wanted.update(_AS_ADMIN if acted_as_admin and not about_them else _AS_ACTOR)
    if row.kind == ERASURE_KIND:
        wanted.discard("details")  # the claim that backs an earlier erasure must stay readable
    try:
        already = parse_erased(row.erased)
    except ErasureFormatError as exc:
        raise _malformed(row, exc) from None
    return tuple(f for f in ("actor", "subject", "ip", "details") if f in wanted and f not in already)


async def erase_person(
    db: Database,
    keys: ChainKeys,
    *,
    at: datetime,
    username: str,
    email: str | None = None,
    pseudonym: str,
    actor: str,
    request_ref: str,
    since: datetime | None = None,
) -> ErasureResult:
    """Erase ``username``'s personal fields from every version 3 record naming them, on the chain.

    Args:
        db: The database.
        keys: The chain keys (the erasure record is keyed like any record).
        at: The erasure record's time.
        username: Whose fields: records with this subject, or with ``user:``/``admin:`` + it (or it
            alone) as actor.
        email: Their email address: records with it as the subject (or in a path there) too.
        pseudonym: What the tombstones say (``[erased:<pseudonym>]``): 1-32 lowercase hex digits, so
            one person's erased records can still be told apart from another's.
        actor: Who erases (the erasure record's actor, e.g. ``admin:bob``).
        request_ref: The erasure request's reference (a ticket), recorded in the erasure record.
        since: Only records from this time on (the account's creation): earlier ones under the name
            are someone else's (a deleted account whose name was given again, a mistyped login).

    Returns:
        What was erased and what was kept; the erasure record is written even when nothing was found,
        as the trace that the request was carried out.

    Raises:
        ValueError: An empty ``username`` (it would match every record without a subject) or a
            malformed ``pseudonym``.
        ErasureRefused: A record naming the user has malformed salts or erased fields (the trail
            does not verify); nothing was written.
        StoreUnavailable: The database cannot be reached or refused the write.
    """
    if not username:
        raise ValueError("erasure needs a username")
    erased_value(pseudonym)  # a malformed pseudonym is refused before anything is read
    actors = actor_spellings(username)
    names = frozenset(name.lower() for name in (username, email) if name)
    subject = func.lower(AuditEvent.subject)
    # Candidates by SQL (a name as the subject, or any path naming an account, in any encoding),
    # decided by names_person.
    query = (
        select(AuditEvent)
        .where(
            or_(
                subject.in_(sorted(names)),
                AuditEvent.actor.in_(sorted(actors)),
                subject.contains("/users/", autoescape=True),
                AuditEvent.kind.startswith(_OWNED_KINDS[0], autoescape=True),
            )
        )
        .order_by(AuditEvent.seq)
    )
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    with store_errors("audit trail"):
        async with chain_lock(db) as conn:
            rows = [_record(row) for row in (await conn.execute(query)).all()]
            plans, kept_legacy = [], 0
            for row in rows:
                if row.version != ERASABLE_VERSION:
                    kept_legacy += 1
                    continue
                fields = _fields_to_erase(row, names, actors)
                if fields:
                    plans.append(_Plan(row, fields))
            record = await _erase_locked(
                conn, keys, plans, at=at, actor=actor, request_ref=request_ref, pseudonym=pseudonym
            )
    return _result(record, plans, kept_legacy)


@dataclass(frozen=True, slots=True)
class Expiring:
    """What :func:`erase_expired` would erase now (:func:`expiring`) or did.

    ``due`` holds the seq and time of each record whose fields go; ``spared`` counts, per username
    under a legal hold, the records left whole because they name that person.
    """

    due: tuple[tuple[int, datetime], ...]
    spared: Mapping[str, int]


def _expired_query(before: datetime) -> Select[AuditEvent]:
    return (
        select(AuditEvent)
        .where(
            AuditEvent.chain_version == ERASABLE_VERSION,
            AuditEvent.at < before,
            # Fully erased records have no salt left: with the index on ``at`` this keeps a daily run
            # to the day's new records (and the few erasure records, which keep their details' salt).
            AuditEvent.salts != dump_salts({}),
        )
        .order_by(AuditEvent.seq)
    )


def _expired_plans(rows: list[ChainRecord], spare: frozenset[str]) -> tuple[list[_Plan], dict[str, int]]:
    """The records older than the cutoff that lose fields, and what the legal holds spare."""
    plans: list[_Plan] = []
    spared: dict[str, int] = {}
    # Built once, not per record: a daily run reads every record of the day.
    held = [(name, actor_spellings(name)) for name in sorted(spare)]
    for row in rows:
        named = next((n for n, actors in held if row.subject == n or row.actor in actors), None)
        if named is not None:
            spared[named] = spared.get(named, 0) + 1
            continue
        fields = _expired_fields(row)
        if fields:
            plans.append(_Plan(row, fields))
    return plans, spared


def _expired_fields(row: ChainRecord) -> tuple[str, ...]:
    """Every personal field of ``row`` still salted (an erasure record's details excepted)."""
    try:
        salted = parse_salts(row.salts)
    except ErasureFormatError as exc:
        raise _malformed(row, exc) from None
    if row.kind == ERASURE_KIND:
        salted.pop("details", None)  # the claim that backs an earlier erasure must stay readable
    return tuple(f for f in ("actor", "subject", "ip", "details") if f in salted)


async def expiring(db: Database, *, before: datetime, spare: frozenset[str] = frozenset()) -> Expiring:
    """What :func:`erase_expired` would erase with these arguments, read without the chain lock.

    Raises:
        ErasureRefused: A record older than ``before`` has malformed salts or erased fields.
        StoreUnavailable: The database cannot be reached.
    """
    with store_errors("audit trail"):
        async with db.engine.connect() as conn:
            rows = [_record(row) for row in (await conn.execute(_expired_query(before))).all()]
    plans, spared = _expired_plans(rows, spare)
    return Expiring(tuple((plan.row.seq, plan.row.at) for plan in plans), spared)


async def erase_expired(
    db: Database,
    keys: ChainKeys,
    *,
    at: datetime,
    before: datetime,
    actor: str,
    request_ref: str,
    spare: frozenset[str] = frozenset(),
) -> tuple[ErasureResult | None, Expiring]:
    """Erase every personal field of every version 3 record older than ``before`` (retention).

    The records stay (their kind, outcome, time and place in the chain), so the chain keeps verifying;
    their actor, subject, ip and details become ``[erased:0]`` (:data:`EXPIRED_PSEUDONYM`), empty ones
    included, so an expired record has no salt left and is not looked at again. An erasure record
    keeps its details (they back an earlier erasure). One ``privacy.audit_erased`` record backs them
    all, appended in the same transaction under the chain lock, as :func:`erase_person` does.

    Args:
        db: The database.
        keys: The chain keys.
        at: The erasure record's time.
        before: Records with ``at`` before this lose their fields.
        actor: Who erases (``system:retention``).
        request_ref: The retention run's reference, recorded in the erasure record.
        spare: Usernames under a legal hold: records naming one of them (as subject or actor, spelled
            as :func:`erase_person` matches them) are left whole.

    Returns:
        What was erased (``None`` when nothing was due: no erasure record is written then, so a run
        with nothing to do leaves no trace on the chain) and what was erased or spared.

    Raises:
        ErasureRefused: A record to erase has malformed salts or erased fields; nothing was written.
        StoreUnavailable: The database cannot be reached or refused the write.
    """
    with store_errors("audit trail"):
        async with chain_lock(db) as conn:
            rows = [_record(row) for row in (await conn.execute(_expired_query(before))).all()]
            plans, spared = _expired_plans(rows, spare)
            done = Expiring(tuple((plan.row.seq, plan.row.at) for plan in plans), spared)
            if not plans:
                return None, done
            record = await _erase_locked(
                conn, keys, plans, at=at, actor=actor, request_ref=request_ref, pseudonym=EXPIRED_PSEUDONYM
            )
    return _result(record, plans, 0), done


async def _erase_locked(
    conn: AsyncConnection,
    keys: ChainKeys,
    plans: list[_Plan],
    *,
    at: datetime,
    actor: str,
    request_ref: str,
    pseudonym: str,
) -> ChainRecord:
    """Append the erasure record backing ``plans`` and erase their fields, on a connection holding
    :func:`~gateway.audit.chain.chain_lock` (one transaction: the record and its erasures go together)."""
    tombstone = erased_value(pseudonym)
    seqs = tuple(plan.row.seq for plan in plans)
    # Which fields of which records, not only which records: the verifier holds each record's erased
    # fields against it, so a field tombstoned later by hand under this record's name is found.
    erased = fields_digest((plan.row.seq, plan.fields) for plan in plans)
    claim = ErasureClaim(request_ref, pseudonym, len(seqs), seqs_digest(seqs), erased)
    draft = ChainRecord(0, 0, at, ERASURE_KIND, actor, "", "", "success", claim.details(), "", "")
    record = await append_locked(conn, keys, draft)
    for plan in plans:
        await conn.execute(_erasing(plan, tombstone, record.seq))
    return record


def _result(record: ChainRecord, plans: list[_Plan], kept_legacy: int) -> ErasureResult:
    """The result of a committed erasure, mirrored to the ``gateway.audit`` log as every record is."""
    _mirror(record)
    return ErasureResult(
        record, tuple(plan.row.seq for plan in plans), sum(len(plan.fields) for plan in plans), kept_legacy
    )


def _erasing(plan: _Plan, tombstone: str, by: int) -> Update:
    """The UPDATE that erases ``plan``'s fields: tombstones, commitments kept, salts dropped."""
    row = plan.row
    try:
        salts, erased = parse_salts(row.salts), parse_erased(row.erased)
    except ErasureFormatError as exc:
        raise _malformed(row, exc) from None
    values = row.personal()
    for field in plan.fields:
        salt = salts.pop(field, None)
        if salt is None:
            raise ErasureRefused(f"audit record seq {row.seq}: field {field!r} has no salt to erase it with")
        # The commitment of the stored value: a value changed by hand keeps failing its MAC.
        erased[field] = Erased(commit(field, salt, values[field]), by)
    tombstones = dict.fromkeys(plan.fields, tombstone)
    return (
        update(AuditEvent)
        .where(AuditEvent.id == row.id)
        .values(salts=dump_salts(salts), erased=dump_erased(erased), **tombstones)
    )


def _mirror(record: ChainRecord) -> None:
    """Log the erasure record as :class:`gateway.audit.trail.AuditLog` logs every record."""
    fields = {"actor": record.actor, "subject": record.subject, "ip": record.ip}
    logger.info(
        "%s",
        json.dumps({"event": record.kind, **fields, "outcome": record.outcome, "details": record.details}),
    )
