"""The audit chain's status at a glance: the newest signed checkpoint, and whether it still holds.

The admin overview answers "is the audit trail intact?" without walking the whole chain (that is
``gateway audit verify`` and the audit page's button, seconds on a large trail). What it can say
cheaply: when the newest checkpoint of this node was signed (a worker signs one only over a chain it
has just verified, :mod:`gateway.audit.checkpoint`), whether that checkpoint's MAC verifies under the
keyring, and whether the stored chain still holds the checkpointed head with the same hash (one row
read: a truncated or rewritten trail no longer does). Only the tail of the append-only file is read,
so its size does not matter.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from gateway.audit.chain import GENESIS, iter_records
from gateway.audit.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE, CHECKPOINT_TYPE, check_signature
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

__all__ = ["CheckpointStatus", "chain_status"]

# Enough for many checkpoint lines (each ~400 bytes); the newest complete one is all that is needed.
_TAIL: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    """The newest checkpoint in the node's file, and what holding it against the chain showed."""

    at: datetime
    head_seq: int
    count: int
    # None if the MAC verifies under the keyring, else why not.
    signature_problem: str | None
    # Whether the stored chain still has the checkpointed head, with the same hash.
    chain_reaches: bool

    @property
    def ok(self) -> bool:
        return self.signature_problem is None and self.chain_reaches


async def chain_status(db: Database, keyring: Keyring, data_dir: Path) -> CheckpointStatus | None:
    """The newest checkpoint of the node whose ``data_dir`` this is, held against ``db``; None if none
    was signed yet.

    Raises:
        OSError: The file exists but cannot be read.
        StoreUnavailable: The database cannot be read.
    """
    doc = await asyncio.to_thread(_newest, data_dir / CHECKPOINT_DIR / CHECKPOINT_FILE)
    if doc is None:
        return None
    seq, head_hash = int(doc["head_seq"]), str(doc["head_hash"])
    if seq == 0:
        reaches = head_hash == GENESIS
    else:
        found = [record async for record in iter_records(db, from_seq=seq, to_seq=seq)]
        reaches = len(found) == 1 and found[0].record_hash == head_hash
    return CheckpointStatus(
        at=datetime.fromisoformat(str(doc["at"]).replace("Z", "+00:00")),
        head_seq=seq,
        count=int(doc["count"]),
        signature_problem=check_signature(doc, keyring),
        chain_reaches=reaches,
    )


def _newest(path: Path) -> dict[str, Any] | None:
    """The last complete checkpoint line of ``path``, or None (no file, or no checkpoint in its tail)."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - _TAIL))
            tail = file.read()
    except FileNotFoundError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            doc = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # the cut first line of the tail, or a line being written
        if _is_checkpoint(doc):
            found: dict[str, Any] = doc
            return found
    return None


def _is_checkpoint(doc: Any) -> bool:
    if not isinstance(doc, dict) or doc.get("type") != CHECKPOINT_TYPE:
        return False
    numbers = all(
        isinstance(doc.get(n), int) and not isinstance(doc.get(n), bool) for n in ("head_seq", "count")
    )
    return numbers and isinstance(doc.get("head_hash"), str) and isinstance(doc.get("at"), str)
