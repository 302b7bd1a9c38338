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

if TYPE_CHECKING:
    from gateway.audit.trail import AuditLog
    from gateway.settings.schema import Settings
    from gateway.store.db import Database
    from gateway.store.fast.base import FastState
    from gateway.threat.blocks import BlockEntry
    from gateway.threat.lockdown import LockdownState

__all__ = ["Emergency", "carry_emergency", "node_emergency"]


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
