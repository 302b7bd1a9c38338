"""Removed content: sealed copies of what was deleted, kept restricted for an investigation.

Two things put a copy here, each sealed AES-256-GCM under the keyring and bound to its reference:

* an **erasure** seals the person's export before it deletes anything (``gateway.privacy.erasure``);
* a **correction under a legal hold** seals the values it replaces (``gateway.privacy.service``): a
  hold keeps what it covers from deletion, and overwriting an address deletes the old one.

A row names no one: its subject key is a keyed digest of the username (found by a hold placed later),
and an erasure's row carries the person's pseudonym. Opening one is an audited act with a reason
(``gateway privacy removed open``); the retention run deletes a row at its ``expires_at`` unless a hold
covers it (``gateway.privacy.retention_rules.RemovedContentRule``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.errors import GatewayError
from gateway.privacy.models import RemovedContent
from gateway.privacy.subjects import subject_key, subject_keys
from gateway.store.db import Database, store_errors

__all__ = ["RemovedArchive", "RemovedView", "UnknownRemoved", "removed_content_aad"]


class UnknownRemoved(GatewayError):
    """No removed content has that reference (404)."""

    status = 404
    reason = "unknown-removed-content"
    title = "No such removed content"


def removed_content_aad(ref: str) -> bytes:
    """What a removed-content payload's ciphertext is bound to: a row cannot be swapped for another."""
    return b"gateway removed-content v1:" + ref.encode("utf-8")


@dataclass(frozen=True, slots=True)
class RemovedView:
    """One archive as a listing shows it: never its payload, never a name."""

    ref: str
    # ``[erased:<pseudonym>]`` for an erasure's archive; empty for values a correction replaced.
    pseudonym: str
    reason: str
    removed_at: datetime
    expires_at: datetime

    @property
    def who(self) -> str:
        """How the listing names the person: the erasure's tombstone, or that they are still there."""
        return f"[erased:{self.pseudonym}]" if self.pseudonym else "(account kept)"

    def to_json(self) -> dict[str, str]:
        """For ``--json``."""
        return {
            "ref": self.ref,
            "person": self.who,
            "reason": self.reason,
            "removed_at": self.removed_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


class RemovedArchive:
    """The ``removed_content`` table: keep, list and open sealed copies."""

    def __init__(self, db: Database, keyring: Keyring, *, clock: Clock) -> None:
        """Args: the database holding the table, the keyring that seals, the clock of ``removed_at``."""
        self._db = db
        self._keyring = keyring
        self._clock = clock

    async def keep(
        self,
        document: dict[str, object],
        *,
        ref: str,
        pseudonym: str,
        username: str,
        reason: str,
        until: datetime,
    ) -> None:
        """Seal ``document`` under ``ref`` until ``until``; ``pseudonym`` is empty for a person still there."""
        payload = self._keyring.encrypt(
            json.dumps(document, sort_keys=True).encode("utf-8"), aad=removed_content_aad(ref)
        )
        row = RemovedContent(
            ref=ref,
            pseudonym=pseudonym,
            subject_key=subject_key(self._keyring, username),
            reason=reason,
            removed_at=self._clock.now(),
            expires_at=until,
            payload=payload.encode("ascii"),
        )
        async with self._db.session() as session:
            session.add(row)
            with store_errors("cannot keep the removed content"):
                await session.commit()

    async def pseudonymise(self, username: str, pseudonym: str) -> int:
        """Give the person's archives of corrections (made while they were there) their erasure's
        pseudonym: opening one afterwards records the tombstone, never the name (a re-attack run's
        reading of one, after the erasure, wrote the name beside the pseudonym into the trail)."""
        query = (
            update(RemovedContent)
            .where(
                RemovedContent.subject_key.in_(subject_keys(self._keyring, username)),
                RemovedContent.pseudonym == "",
            )
            .values(pseudonym=pseudonym)
        )
        async with self._db.session() as session:
            with store_errors("cannot pseudonymise removed content"):
                result = await session.execute(query)
                await session.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def find(self, username: str | None = None) -> list[RemovedView]:
        """Every archive, newest first, or those of ``username`` (by their subject keys, also erased)."""
        query = select(RemovedContent).order_by(RemovedContent.removed_at.desc(), RemovedContent.id.desc())
        if username is not None:
            query = query.where(RemovedContent.subject_key.in_(subject_keys(self._keyring, username)))
        async with self._db.session() as session:
            with store_errors("cannot read removed content"):
                rows = (await session.scalars(query)).all()
        return [RemovedView(r.ref, r.pseudonym, r.reason, r.removed_at, r.expires_at) for r in rows]

    async def read(self, ref: str) -> tuple[RemovedView, dict[str, object]]:
        """Decrypt one archive (the caller audits the reading).

        Raises:
            UnknownRemoved: No archive has that reference (never kept, or deleted by the retention run).
        """
        async with self._db.session() as session:
            with store_errors("cannot read removed content"):
                row = (await session.scalars(select(RemovedContent).where(RemovedContent.ref == ref))).first()
        if row is None:
            raise UnknownRemoved(f"No removed content has the reference {ref[:40]!r}.")
        plain = self._keyring.decrypt(row.payload.decode("ascii"), aad=removed_content_aad(ref))
        document: dict[str, object] = json.loads(plain)
        return RemovedView(row.ref, row.pseudonym, row.reason, row.removed_at, row.expires_at), document
