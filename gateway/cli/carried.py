"""What a restore carries over from the node it replaces: the lockdown switch and the address blocks.

Both are the response to something happening now, not to the past a backup holds: a restore made
during an incident must not open every route again (the embedded node's shared state file, where both
live, is removed with the rest of the old node's state), and one made after a lockdown was lifted must
not switch the backup's lockdown back on (an attack run restored a backup made during a lockdown a day
after it had been lifted: every route was shut again, while the restore said the lockdown was gone).
So the node's switch and blocks are read before its database is replaced, and written into the
restored node after: the switch with an audit record on the restored chain (``lockdown.on`` or
``lockdown.off``, by the operator, "carried across the restore"), the blocks as they were (each until
its own end).

The legal holds too: an order to keep data does not end because a backup predates it (an attack run
restored a backup made before two holds were placed; the next retention run anonymised what one of them
held). The node's holds are read before its database is replaced, and the restored database's follow
them (:meth:`gateway.privacy.holds.Holds.carry`): each active hold it lacks placed again as it was, each
hold released on the node released. The privacy requests opened on the node since the backup are not
(the register rows of work in progress): the restore names them, to be opened again. Only from a
database that descends from the backup (its audit trail holds the backup's last record, as the
manifest names it): a new empty one where the node's was (a rebuilt host, where any command made one
before the restore) was read as the node's, "0 placed since this backup" said without a warning and
the holds the backup lacks were lost (a re-attack run); such a database is said loudly, as an
unreadable one is.

A PostgreSQL point-in-time restore (``gateway pgbackrest restore``) makes a new cluster the operator
starts and checks before the gateways use it; ``gateway privacy hold carry`` then carries the live
database's holds into it the same way (:func:`carry_from_live`), from a live database whose audit trail
the restored one's is an earlier state of.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from gateway.cli.harness import operator, storage_url
from gateway.clock import SYSTEM_CLOCK
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.audit.trail import AuditLog
    from gateway.backup.manifest import Manifest
    from gateway.crypto.keyring import Keyring
    from gateway.privacy.holds import CarriedHolds, HoldRecord, Holds
    from gateway.settings.schema import Settings
    from gateway.store.db import Database
    from gateway.store.fast.base import FastState
    from gateway.threat.blocks import BlockEntry
    from gateway.threat.lockdown import LockdownState

__all__ = [
    "Emergency",
    "LiveCarry",
    "NodePrivacy",
    "carry_emergency",
    "carry_from_live",
    "carry_privacy",
    "node_emergency",
    "node_privacy",
]


@dataclass(frozen=True, slots=True)
class Emergency:
    """The node's lockdown switch and address blocks in force; ``None`` for what could not be read."""

    lockdown: LockdownState | None
    blocks: list[BlockEntry] | None


def _fast_state(settings: Settings, data_dir: Path) -> FastState:
    """The fast state a gateway on ``data_dir`` uses: the deployment's Redis, or that directory's file."""
    from gateway.store.fast import open_fast_state, state_file

    local = state_file(data_dir) if settings.state.embedded == "file" else None
    return open_fast_state(settings.state.redis_url, namespace=settings.state.namespace, local_path=local)


async def node_emergency(settings: Settings) -> Emergency:
    """The configured node's lockdown and blocks, read before a restore replaces its database (from
    its fast state, and the database's copy of the switch while that can be read)."""
    from gateway.backup.snapshot import sqlite_path
    from gateway.store.db import Database
    from gateway.threat.blocks import BlockStore
    from gateway.threat.lockdown import LockdownStore

    url = storage_url(settings)
    db = None
    with contextlib.suppress(ValueError):
        db = Database.open(url, pool_size=1) if sqlite_path(url).is_file() else None
    fast = _fast_state(settings, Path(settings.data_dir))
    lockdown: LockdownState | None = None
    blocks: list[BlockEntry] | None = None
    try:
        try:
            lockdown = await LockdownStore(fast, SYSTEM_CLOCK, db=db).read()
        except Exception as exc:  # noqa: BLE001 - a damaged node is what a restore is for
            print(
                f"  cannot read the node's lockdown switch ({exc}); the restored one stands", file=sys.stderr
            )
        try:
            blocks = await BlockStore(fast, SYSTEM_CLOCK, db=db).entries()
        except Exception as exc:  # noqa: BLE001
            print(f"  cannot read the node's address blocks ({exc}): block them again", file=sys.stderr)
    finally:
        await fast.close()
        if db is not None:
            await db.close()
    return Emergency(lockdown, blocks)


async def carry_emergency(
    settings: Settings, data_dir: Path, db: Database, audit: AuditLog, node: Emergency, backup_id: str
) -> list[str]:
    """Write ``node``'s switch and blocks into the node restored on ``data_dir`` (its database ``db``,
    its trail ``audit``); return what was carried, as lines for the operator."""
    from gateway.threat.blocks import BlockStore
    from gateway.threat.lockdown import LockdownStore

    said: list[str] = []
    fast = _fast_state(settings, data_dir)
    try:
        if node.lockdown is not None:
            store = LockdownStore(fast, SYSTEM_CLOCK, audit, db=db)
            restored = await store.read()
            wanted = node.lockdown
            if _timeless(restored) != _timeless(wanted):
                carried = msgspec.structs.replace(wanted, since=SYSTEM_CLOCK.time())
                why = f"carried across the restore of backup {backup_id}"
                await store.update(lambda _now: (carried, (operator(), why)))
            said.append(_told(wanted))
        if node.blocks:
            blocks = BlockStore(fast, SYSTEM_CLOCK, db=db)
            for entry in node.blocks:
                await blocks.add(
                    entry.cidr,
                    until=entry.until,
                    incident=entry.incident,
                    reason=entry.reason,
                    actor=entry.actor,
                )
        if node.blocks is not None:
            said.append(f"address blocks in force carried over: {len(node.blocks)}")
    finally:
        await fast.close()
    return said


def _timeless(state: LockdownState) -> LockdownState:
    """The switch but its time: who set it, why and what it shuts (an off switch is off whatever said so:
    the backup's lift must not be written again as the node's)."""
    from gateway.threat.lockdown import OFF

    return msgspec.structs.replace(state, since=0.0) if state.on else OFF


def _told(state: LockdownState) -> str:
    if not state.on:
        return "lockdown: off, as on the node (a lockdown in the backup is not switched on again)"
    routes = "every route" if state.routes is None else ", ".join(state.routes)
    return f"lockdown: ON for {routes}, as on the node (`gateway lockdown off` opens them)"


@dataclass(frozen=True, slots=True)
class NodePrivacy:
    """The node's legal holds and the privacy requests in its register (ref -> kind); ``problem`` says
    why they could not be read (then both are empty). ``head`` is the node's audit record at the
    backup's head seq, ``(seq, record hash)``, None when it has none (or, for a backup of an empty
    trail, when the node's trail is empty too); ``database`` where they were read."""

    holds: list[HoldRecord]
    requests: dict[str, str]
    problem: str | None = None
    head: tuple[int, str] | None = None
    database: str = ""


async def node_privacy(settings: Settings, backup: Path) -> NodePrivacy:
    """The configured node's legal holds and privacy requests, read before a restore of ``backup``
    replaces its database, with the node's audit record at the backup's head (its manifest read
    here unverified: :func:`carry_privacy` compares with the verified one)."""
    from sqlalchemy import select

    from gateway.audit.models import AuditEvent
    from gateway.backup.manifest import MANIFEST_NAME, BackupError, parse_manifest
    from gateway.backup.snapshot import sqlite_path
    from gateway.privacy.holds import stored_holds
    from gateway.store.db import Database

    url = storage_url(settings)
    database = sqlite_path(url)
    if not database.is_file():
        return NodePrivacy([], {}, f"the node's database {database} is missing")
    try:
        seq: int | None = parse_manifest((backup / MANIFEST_NAME).read_bytes())[0].audit_head_seq
    except (BackupError, OSError):
        seq = None  # the restore refuses the backup, before anything is carried
    db = Database.open(url, pool_size=1)
    try:
        holds, requests = await stored_holds(db), await _request_kinds(db)
        async with db.session() as session:
            head: tuple[int, str] | None = None
            if seq == 0:
                # A backup of an empty trail: any trail descends from it, but an empty one (a new
                # database) is not the deployment's.
                if (await session.scalars(select(AuditEvent.seq).limit(1))).first() is not None:
                    head = (0, "")
            elif seq is not None:
                found = (
                    await session.scalars(select(AuditEvent.record_hash).where(AuditEvent.seq == seq))
                ).first()
                head = (seq, found) if found is not None else None
        return NodePrivacy(holds, requests, head=head, database=str(database))
    except Exception as exc:  # noqa: BLE001 - a damaged node is what a restore is for
        return NodePrivacy([], {}, f"cannot read the node's database {database}: {exc}")
    finally:
        await db.close()


async def carry_privacy(
    db: Database, audit: AuditLog, keyring: Keyring, node: NodePrivacy, manifest: Manifest
) -> tuple[list[str], list[str]]:
    """Make the restored database's (``db``, its trail ``audit``) legal holds follow ``node``'s, when
    the node's database descends from the backup (``manifest``, verified); return what was carried, as
    lines for the operator, and the privacy requests the node has and the restored database lacks
    (``REF (kind)``). Holds that could not be read, or were read from a database that is not the
    deployment's, are said on stderr, loudly: what they held is deleted by the next retention run
    otherwise."""
    from gateway.privacy.holds import Holds

    if node.problem is not None:
        return _holds_not_carried(node.problem), []
    if node.head != (manifest.audit_head_seq, manifest.audit_head_hash):
        return _holds_not_carried(
            f"the node's database {node.database} does not descend from this backup (its audit trail "
            f"lacks the backup's last record, seq {manifest.audit_head_seq}): a new database, or another "
            "deployment's, not the one this backup was made of, so its holds are not the deployment's"
        ), []
    why = f"carried across the restore of backup {manifest.backup_id}"
    try:
        carried = await Holds(db, keyring, audit).carry(node.holds, by=operator(), why=why)
    except GatewayError as exc:
        return _holds_not_carried(f"cannot write them into the restored database ({exc})"), []
    return [_carried_line(carried, "this backup")], await _lacking(db, node.requests)


def _carried_line(carried: CarriedHolds, since: str) -> str:
    """What a carry changed, for the operator: the holds placed again and released, by reference."""
    return (
        f"legal holds carried over: {len(carried.placed)} placed since {since}"
        + (f" ({', '.join(carried.placed)})" if carried.placed else "")
        + f", {len(carried.released)} released since"
        + (f" ({', '.join(carried.released)})" if carried.released else "")
    )


async def _request_kinds(db: Database) -> dict[str, str]:
    """The privacy requests in ``db``'s register: ref -> kind."""
    from sqlalchemy import select

    from gateway.privacy.models import PrivacyRequest

    async with db.session() as session:
        rows = (
            await session.execute(select(PrivacyRequest.ref, PrivacyRequest.kind).order_by(PrivacyRequest.id))
        ).all()
    return {ref: kind for ref, kind in rows}


async def _lacking(db: Database, requests: dict[str, str]) -> list[str]:
    """The requests of ``requests`` (ref -> kind) that ``db``'s register lacks, as ``REF (kind)``."""
    here = await _request_kinds(db)
    return [f"{ref} ({kind})" for ref, kind in requests.items() if ref not in here]


def _holds_not_carried(problem: str) -> list[str]:
    """Say on stderr, loudly, that the node's holds were not carried over, and what to do; the line
    for the operator's summary."""
    print(
        f"  WARNING: legal holds NOT carried over: {problem}. A hold placed after this backup is "
        "missing from the restored database, and the next retention run or erasure deletes what it "
        "holds: before a gateway starts on it, compare `gateway privacy hold list` with the orders in "
        "force (the old trail or the sinks: privacy.hold.placed) and place the missing ones again "
        "(`gateway privacy hold place`). Privacy requests opened since are not listed either.",
        file=sys.stderr,
    )
    return ["legal holds: NOT carried over (see the warning)"]


@dataclass(frozen=True, slots=True)
class LiveCarry:
    """What ``gateway privacy hold carry`` did: lines for the operator, and the privacy requests the
    live database has and this one lacks (``REF (kind)``)."""

    said: list[str]
    lost: list[str]


async def carry_from_live(live_url: str, db: Database, holds: Holds, *, by: str) -> LiveCarry:
    """Make ``db``'s legal holds (a database restored to a point in time) follow the live database's at
    ``live_url``, as :func:`carry_privacy` does for a restore of a backup.

    Only when ``db``'s audit trail is an earlier state of the live one: it holds a record the live
    trail holds alike (:func:`gateway.audit.descent.shared_trail`); the records it has written since
    (a gateway started on it, an earlier carry) are its own. Another deployment's database, or a new
    one, shares none: its holds are not this deployment's, and a release carried from it would let the
    next retention run delete what a hold here still keeps.

    Raises:
        Failed: The trails share no record (nothing was changed).
        StoreUnavailable: A database cannot be read, or ``db`` written.
    """
    from gateway.audit.descent import shared_trail
    from gateway.cli.harness import Failed
    from gateway.privacy.holds import stored_holds
    from gateway.store.db import Database

    live = Database.open(live_url, pool_size=1)
    try:
        shared = await shared_trail(db, live)
        if shared.shared is None:
            raise Failed(
                "the restored database's audit trail shares no record with the live one: it is not an "
                "earlier state of this deployment's database (another deployment's, or a new one), so the "
                "live holds are not carried into it. Check --config and --from-config; place holds by hand "
                "with `gateway privacy hold place`"
            )
        node = await stored_holds(live)
        requests = await _request_kinds(live)
    finally:
        await live.close()
    carried = await holds.carry(
        node, by=by, why="carried from the live database after a point-in-time restore"
    )
    said = [
        f"audit trails: the restored one is the live one up to record {shared.shared}"
        + (f", and has {shared.own} record(s) of its own since" if shared.own else ""),
        _carried_line(carried, "the restore's target"),
    ]
    return LiveCarry(said, await _lacking(db, requests))
