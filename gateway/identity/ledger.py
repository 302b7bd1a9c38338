"""The account ledger: the changes a restore must not undo.

A backup holds the database as it was. Restoring one brings back every account deleted or erased
since, with its password hash and factors, and enables every account disabled since: an offboarded
employee, or a person who exercised their right to erasure, is back. So are a password changed
because it leaked, factors reset or removed because a device was lost, recovery codes spent or
replaced, roles taken away, API tokens revoked and signing keys pulled because they leaked. The ledger
remembers those changes *outside* the database, so that a gateway started on a restored database makes
them again before it serves (:mod:`gateway.privacy.ledger_replay`).

What it records, by state (an entry's *kind* follows from its state):

- an account's ``deleted``, ``erased``, ``disabled`` and ``enabled`` (kind ``account``);
- ``password-set`` (kind ``password``): the account's password was set or cleared. The new hash is not
  in the ledger (no secret leaves the database), so it is made again by clearing the password: the
  person gets a new one through an invitation or an administrator;
- ``factors-reset`` (kind ``factors``): every second factor enrolled before it was removed;
- ``factor-removed`` (kind ``factor``): one second factor was removed (an authenticator app or a passkey
  the person took off their account, say because the device was lost), or one recovery code was spent.
  Named by the factor's owner, row id and creation time (a code: its batch and position), so that a
  factor enrolled later under a reused row id is not touched; ``ref`` is ``<totp|webauthn|code>:<row id>``;
- ``codes-replaced`` (kind ``codes``): the account's recovery codes were replaced by a new batch (every
  code created before it is void: the old sheet may be in someone else's hands);
- ``roles-set`` (kind ``roles``): the account's local roles became ``ref`` (role names, never a
  person's);
- ``token-revoked`` (kind ``token``): the API token whose public id is ``ref`` was revoked;
- ``keys-deleted`` (kind ``keys``): a rotation of leaked signing keys deleted the kids listed in
  ``ref`` (comma-separated, public ids);
- ``restricted`` and ``unrestricted`` (kind ``restriction``): processing was restricted (no sign-in)
  or the restriction lifted; ``closed`` and ``reopened`` (kind ``closure``): the registration was
  cancelled or the cancellation undone. A replay makes a restriction and a closure again, never a
  lifting or a reopening (an attack run signed in restricted and closed people on a restored database);
- ``consent-withdrawn`` and ``consent-given`` (kind ``consent``), ``objected`` and
  ``objection-withdrawn`` (kind ``objection``): one entry per account and purpose, ``ref`` the
  purpose's configured name. A consent withdrawn or refused, or an objection made, since a backup
  would otherwise be undone by restoring it (GDPR Art. 7(3), 21(3)): a replay makes the withdrawal
  and the objection again, never a consent or the lifting of an objection.

It is kept twice:

- a table (``account_ledger``, one row per account: its latest state), written in the transaction
  that makes the change, so every replica sees it;
- a file per node (``backup.ledger``, default ``<data_dir>/account-ledger.jsonl``, mode 0600, one
  JSON line per change, appended and synced), outside the database, so a restore leaves it alone. Each
  gateway copies the table's rows it lacks into its own file every ``SYNC_INTERVAL``, so a change made
  on another replica or by the CLI on another host reaches every node's file. Readers keep only each
  account's latest state, so once the file holds ``COMPACT_AT`` lines and at least half of them are
  superseded (or unreadable), the sync rewrites it with the lines a reader still uses, in their order,
  under an exclusive lock, and renames it into place (:meth:`AccountLedger.compact`). Appends take the
  same lock and write to the file the path names then, so no line lands in a file being replaced.

An account is named by a key, never by its name: ``<kid>:<hex HMAC-SHA256>`` of the username and the
account's creation time (and the kind, but for ``account``) under a key derived from the keyring; a
token by its public id, a key rotation by the new key's kid, a factor as ``gateway.factors.ledgered``
says, under the same key. The creation time makes it this account row and no other: an administrator
who creates an account of the same name later is not touched. The file names nobody to someone without
the keyring (usernames are guessable, so a plain digest would confirm a guess). Every line of the file carries an HMAC over all its fields under another key derived
from the keyring, and a line whose MAC does not check is ignored and logged: one who can write the file
but has no keyring can neither name an account nor turn an ``enabled`` into an ``erased`` (the re-attack
run erased an account that way before). A later change of an account always outranks its earlier one,
also when the host that wrote the earlier one had its clock ahead.

A line MACed under a keyring key marked compromised (:meth:`Keyring.mark_compromised
<gateway.crypto.keyring.Keyring.mark_compromised>`) counts as one whose MAC does not check: whoever
holds the leaked key can write any line under it, say an ``erased`` or a ``factors-reset`` that a
restore would make. The changes written before the mark are not lost with those lines: the table holds
every account's latest state, and a sync writes the table's entries the file lacks under the active key,
then drops the lines under marked keys (:meth:`AccountLedger.resign`). ``gateway keys rotate --keyring
--compromised``, ``keys mark-compromised``, ``keys activate --compromised`` and ``incident case
rotate-keys --compromised`` do it for their own node's file right after the mark; every other node does
it at its next sync once its keyring has the mark (the rotation tells the running workers to read the
keyring file again). The
table, never the file, vouches for what is written again (it carries no MAC: whoever can write it can
write the accounts themselves): a line under a marked key that the table does not hold is not written
again, and moves with the others to ``<file>.compromised`` (evidence, never read). That is a line forged
since the leak, a superseded change, a line of another copy's lineage sharing the file, or a change this
node's file held and its database lacked: a restore whose replay had not run yet. A mark is refused
while there are such changes (:func:`gateway.crypto.lifecycle.refuse_unsettled`: start a gateway on the
restored database first, or give them up with ``--drop-unsettled``). A leak's time (``leaked_since``)
does not help tell lines apart: a line's time is inside the MAC the leaked key makes.

Every line also names its **lineage**, inside the MAC: the database it was written for. A copy of the
deployment restored into another data directory (a disaster-recovery copy, a drill) holds the same
keyring, accounts and creation times, so without it every line the copy wrote would be valid in
production too: a re-attack run had a role granted on a drill copy replayed onto production through a
shared ``backup.ledger``. A deployment's lineage is ``root`` (the same in every backup of it; another
deployment's lines do not verify under this keyring anyway); ``gateway backup restore`` into a new data
directory gives the copy a lineage of its own that remembers the one it came from (kept in
``kv_settings``). A node reads the lines of its own lineage and of the ones it descends from, never a
copy's; lines written before lineages existed carry none and are read by every node, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.identity.models import AccountLedgerRow, User
from gateway.settings.schema import Settings
from gateway.store.db import Database, store_errors
from gateway.store.models import KvSetting
from gateway.store.private import private_dirs

__all__ = [
    "COMPACT_AT",
    "KIND",
    "OPENING",
    "PER_PURPOSE",
    "SYNC_INTERVAL",
    "AccountLedger",
    "Entry",
    "Kind",
    "Lineage",
    "State",
    "ledger_path",
    "merge",
    "newer",
    "read_lines",
    "stored_lineage",
]

logger = logging.getLogger("gateway.identity.ledger")

State = Literal[
    "deleted",
    "erased",
    "disabled",
    "enabled",
    "password-set",
    "email-set",
    "factors-reset",
    "factor-removed",
    "codes-replaced",
    "roles-set",
    "token-revoked",
    "keys-deleted",
    "restricted",
    "unrestricted",
    "closed",
    "reopened",
    "consent-withdrawn",
    "consent-given",
    "objected",
    "objection-withdrawn",
]
Kind = Literal[
    "account",
    "password",
    "email",
    "factors",
    "factor",
    "codes",
    "roles",
    "token",
    "keys",
    "restriction",
    "closure",
    "consent",
    "objection",
]

_INFO: Final = b"gateway account ledger v1"
# The key each line of the file is MACed under (a line is read only with a MAC that checks: someone who
# can write the file but has no keyring cannot name an account's state, nor change a line's).
_LINE_INFO: Final = b"gateway account ledger lines v1"
# A line's user id is a row id of ``users``.
_MAX_ID: Final = 2**63 - 1
# Terminal states outrank any later disable or enable; an erasure outranks a plain deletion. The other
# kinds have one state each: of two entries, the later one.
_RANK: Final[Mapping[str, int]] = {
    "enabled": 0,
    "disabled": 1,
    "deleted": 2,
    "erased": 3,
    "password-set": 0,
    "email-set": 0,
    "factors-reset": 0,
    "factor-removed": 0,
    "codes-replaced": 0,
    "roles-set": 0,
    "token-revoked": 0,
    "keys-deleted": 0,
    "restricted": 0,
    "unrestricted": 0,
    "closed": 0,
    "reopened": 0,
    "consent-withdrawn": 0,
    "consent-given": 0,
    "objected": 0,
    "objection-withdrawn": 0,
}
KIND: Final[Mapping[str, Kind]] = {
    "enabled": "account",
    "disabled": "account",
    "deleted": "account",
    "erased": "account",
    "password-set": "password",
    "email-set": "email",
    "factors-reset": "factors",
    "factor-removed": "factor",
    "codes-replaced": "codes",
    "roles-set": "roles",
    "token-revoked": "token",
    "keys-deleted": "keys",
    "restricted": "restriction",
    "unrestricted": "restriction",
    "closed": "closure",
    "reopened": "closure",
    "consent-withdrawn": "consent",
    "consent-given": "consent",
    "objected": "objection",
    "objection-withdrawn": "objection",
}
# The kinds with one entry per account and purpose (``ref`` names the purpose, a configured name).
PER_PURPOSE: Final[frozenset[Kind]] = frozenset({"consent", "objection"})
# The states that open an account, or a purpose's processing, again: never made again by a replay (a
# restore must not let in someone the database it replaced shut out, nor process what a person had
# stopped), so an administrator or the person does them again.
OPENING: Final = frozenset({"enabled", "unrestricted", "reopened", "consent-given", "objection-withdrawn"})
# How often each gateway copies the table's rows into its node's file and looks for accounts to fix.
SYNC_INTERVAL: Final = 60.0
# Lines from which a file is worth compacting: about 2.2 MB, read and checked in about 0.12 s (100,000
# lines: 22 MB, 1.2 s, compacted in 1.1 s to one line per account; measured on the 2-core CI machine).
COMPACT_AT: Final = 10_000
# A copy's own lineage, once ``gateway backup restore`` made one (see the module docstring).
_LINEAGE_KEY: Final = "account_ledger.lineage"
# The lineage of a database no restore has branched: the deployment itself.
ROOT_LINEAGE: Final = "root"
# Ancestors kept: restores of restores of ... (a bound, not a need).
_MAX_ANCESTORS: Final = 32


@dataclass(frozen=True, slots=True)
class Entry:
    """One account's latest state in the ledger."""

    account: str
    # The account's id then: where to look for it (the key tells whether the row of that id is it);
    # 0 for a token or a key rotation (a factor's: its owner's).
    user_id: int
    state: State
    at: datetime
    # The privacy request an erasure answered (re-used when it is made again); the roles of roles-set;
    # the token's public id; the deleted kids; the removed factor's kind and row id; else "".
    ref: str = ""
    # The lineage of the database it was written for (a file's line; "" in the table, and in lines
    # written before lineages existed).
    lineage: str = ""

    def record(self) -> dict[str, object]:
        """The entry's fields as the file keeps them (without the line's MAC)."""
        record: dict[str, object] = {
            "account": self.account,
            "user_id": self.user_id,
            "state": self.state,
            "at": self.at.isoformat(),
            "ref": self.ref,
        }
        if self.lineage:  # absent from lines written before lineages, whose MACs do not cover one
            record["lineage"] = self.lineage
        return record

    def signed_part(self) -> bytes:
        """What a line's MAC is computed over: every field, canonical JSON."""
        return json.dumps(self.record(), sort_keys=True).encode("utf-8")

    def outranks(self, other: Entry) -> bool:
        """Whether this entry is the account's state rather than ``other`` (see :func:`merge`)."""
        if _RANK[self.state] >= 2 or _RANK[other.state] >= 2:
            return _RANK[self.state] > _RANK[other.state]
        # A disable and an enable: the later one; at the same instant, the disable (fail closed).
        return (self.at, _RANK[self.state]) > (other.at, _RANK[other.state])


@dataclass(frozen=True, slots=True)
class Lineage:
    """Which database this node's ledger is for, and the ones it was restored from."""

    id: str
    ancestors: tuple[str, ...] = ()

    def reads(self, lineage: str) -> bool:
        """Whether a line of ``lineage`` is this database's history ("" : a line from before lineages)."""
        return not lineage or lineage == self.id or lineage in self.ancestors


def merge(*sources: Iterable[Entry]) -> dict[str, Entry]:
    """Each account's state over every source: erased over deleted over the later of disabled/enabled."""
    merged: dict[str, Entry] = {}
    for source in sources:
        for entry in source:
            known = merged.get(entry.account)
            if known is None or entry.outranks(known):
                merged[entry.account] = entry
    return merged


def newer(entries: Mapping[str, Entry], than: Mapping[str, Entry]) -> list[Entry]:
    """The entries of ``entries`` that ``than`` lacks or that outrank its own."""
    return [entry for key, entry in entries.items() if key not in than or entry.outranks(than[key])]


async def stored_lineage(db: Database) -> Lineage:
    """The lineage ``db`` carries (see the module docstring).

    Raises:
        StoreUnavailable: The database cannot be reached.
    """
    async with db.session() as session:
        with store_errors("cannot read the account ledger's lineage"):
            row = await session.get(KvSetting, _LINEAGE_KEY)
    if row is None:
        # A deployment and every backup of it (another deployment's lines do not verify under this
        # keyring; a copy of this one is told apart by the lineage a restore gives it).
        return Lineage(ROOT_LINEAGE)
    doc = json.loads(row.value)
    return Lineage(str(doc["id"]), tuple(str(a) for a in doc.get("ancestors", ())))


def ledger_path(settings: Settings) -> Path:
    """This node's ledger file: ``backup.ledger``, or the one in the data directory."""
    return Path(settings.backup.ledger or Path(settings.data_dir) / "account-ledger.jsonl")


def _created(user: User) -> str:
    created = user.created_at
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)
    return created.isoformat(timespec="microseconds")


class AccountLedger:
    """The ledger's table and this node's file (see the module docstring)."""

    def __init__(self, db: Database, keyring: Keyring, path: Path, clock: Clock) -> None:
        """``path`` is this node's file (``backup.ledger``)."""
        self._db = db
        self._keyring = keyring
        self.path = path
        self._clock = clock
        # Serialises this process's appends: two lines must never interleave.
        self._lock = asyncio.Lock()
        # The file as last parsed, by its identity, size, time, the lineage it was read for and the
        # keyring keys marked compromised then: the sync reads it every minute, and it changes only when
        # an account does (or a mark makes some of its lines unreadable).
        self._parsed: tuple[tuple[int, int, int, str, frozenset[str]], dict[str, Entry]] | None = None
        self._lineage: Lineage | None = None
        # Derived keys by keyring key id (a file of many lines costs one derivation per key, not per line).
        self._derived: dict[tuple[bytes, str], bytes] = {}
        # Lines in the file as last parsed, and the count from which compacting is tried (again).
        self._lines = 0
        self._compact_above = COMPACT_AT
        # Lines in the file as last parsed under a keyring key marked compromised: dropped by the sync.
        self._marked = 0

    # -- naming accounts --------------------------------------------------------------------------------

    def key(self, user: User, *, kid: str | None = None, kind: Kind = "account", purpose: str = "") -> str:
        """The account's name in the ledger for entries of ``kind`` (and ``purpose``, for a kind of
        :data:`PER_PURPOSE`), under key ``kid`` (the active one by default)."""
        name = f"{user.username}\0{_created(user)}"
        if kind in PER_PURPOSE:
            return self._name(f"{kind}\0{purpose}\0{name}", kid)
        return self._name(name if kind == "account" else f"{kind}\0{name}", kid)

    def thing_key(self, kind: Kind, public_id: str, *, kid: str | None = None) -> str:
        """The ledger's name of a token (``kind`` token), a key rotation (``keys``) or a factor
        (``factor``) by its public id."""
        return self._name(f"{kind}\0{public_id}", kid)

    def _name(self, message: str, kid: str | None) -> str:
        kid = kid if kid is not None else self._keyring.active_id
        mac = hmac.new(self._derive(_INFO, kid), message.encode(), hashlib.sha256)
        return f"{kid}:{mac.hexdigest()}"

    def _derive(self, info: bytes, kid: str) -> bytes:
        key = self._derived.get((info, kid))
        if key is None:
            key = self._derived[(info, kid)] = self._keyring.derive(info, kid=kid)
        return key

    def line(self, entry: Entry) -> bytes:
        """The entry as one line of the file, with its MAC under the active keyring key."""
        kid = self._keyring.active_id
        record = {**entry.record(), "mac_kid": kid, "mac": self._mac(entry, kid)}
        return json.dumps(record, sort_keys=True).encode("utf-8") + b"\n"

    def _mac(self, entry: Entry, kid: str) -> str:
        return hmac.new(self._derive(_LINE_INFO, kid), entry.signed_part(), hashlib.sha256).hexdigest()

    def verified(self, lines: Iterable[Line], lineage: Lineage) -> list[Entry]:
        """The entries of ``lineage``'s history whose MAC checks under a key the keyring holds and has
        not marked compromised; the others are dropped, and counted in one log line each (a file of junk
        must not flood the log)."""
        kept = []
        kids = set(self._keyring.key_ids)
        marked = frozenset(self._keyring.compromised)
        forged = leaked = foreign = 0
        for entry, kid, mac in lines:
            if kid in marked:
                # Whoever holds the leaked key can make this MAC (see the module docstring).
                leaked += 1
            elif not (kid in kids and hmac.compare_digest(mac, self._mac(entry, kid))):
                forged += 1
            elif not lineage.reads(entry.lineage):
                foreign += 1
            else:
                kept.append(entry)
        if forged:
            logger.error(
                "account ledger: %s has %d line(s) whose MAC does not check; ignored. Lines the gateway "
                "did not write, or made under a keyring key this keyring lacks.",
                self.path,
                forged,
            )
        if leaked:
            logger.error(
                "account ledger: %s has %d line(s) MACed under a keyring key marked compromised; ignored "
                "(whoever holds that key can write them). The next sync writes the table's entries again "
                "under the active key and drops these lines.",
                self.path,
                leaked,
            )
        if foreign:
            logger.warning(
                "account ledger: %s has %d line(s) written for another copy of this deployment (a "
                "restore into another data directory, a drill); ignored. Give each copy its own "
                "backup.ledger.",
                self.path,
                foreign,
            )
        return kept

    def carry_from(self, source: Path, lineage: Lineage) -> int:
        """Append to this node's file what the ledger file at ``source`` knows of ``lineage``'s history
        and it does not (a restore into a new data directory takes the node's ledger along); return how
        many entries were added.

        Raises:
            OSError: A file cannot be read or written.
        """
        if source.resolve() == self.path.resolve():
            return 0
        have = merge(self.verified(read_lines(self.path), lineage))
        added = newer(merge(self.verified(read_lines(source), lineage)), have)
        if added:
            _append(self.path, b"".join(self.line(entry) for entry in added))
        return len(added)

    # -- lineage ----------------------------------------------------------------------------------------

    async def lineage(self) -> Lineage:
        """This database's lineage (see the module docstring); read once per process.

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        if self._lineage is None:
            self._lineage = await stored_lineage(self._db)
        return self._lineage

    async def branch(self) -> Lineage:
        """Give this database (a restored copy in a new data directory) a lineage of its own that reads
        the history of the one it was restored from; lines it writes are then never read by that one.

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        parent = await self.lineage()
        child = Lineage("c-" + secrets.token_hex(12), (*parent.ancestors, parent.id)[-_MAX_ANCESTORS:])
        await self.adopt(child)
        return child

    async def restored(self, node: Lineage | None, source: Path | None, *, copy: bool) -> Lineage:
        """Set up the ledger of a database just restored; return its lineage. It continues ``node``'s
        (the node it replaces, or the deployment a copy is made of: the backup may carry an older
        one), takes the lines of ``source`` (the node's ledger file) it lacks, and as a ``copy``
        beside the deployment (a disaster-recovery copy, a drill) gets a lineage of its own below it,
        whose lines the deployment never reads (a re-attack run had a role granted on a drill replayed
        onto production).

        Raises:
            OSError: A ledger file cannot be read or written.
            StoreUnavailable: The database cannot be reached.
        """
        if node is not None:
            await self.adopt(node)
        if source is not None:
            self.carry_from(source, await self.lineage())
        return await self.branch() if copy else await self.lineage()

    async def adopt(self, lineage: Lineage) -> None:
        """Give this database (restored in place of the node's) the lineage the node had: a backup's
        database carries the lineage it had when it was made, and a copy adopted as the deployment
        since wrote its ledger lines under its own (an attack run restored an older backup there, and
        the disable made since was no longer read).

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        value = json.dumps({"id": lineage.id, "ancestors": list(lineage.ancestors)})
        async with self._db.session(write=True) as session:
            with store_errors("cannot write the account ledger's lineage"):
                row = await session.get(KvSetting, _LINEAGE_KEY)
                if row is None:
                    session.add(KvSetting(key=_LINEAGE_KEY, value=value, updated_at=self._clock.now()))
                else:
                    row.value, row.updated_at = value, self._clock.now()
                await session.commit()
        self._lineage = lineage

    def keys(self, user: User, kind: Kind = "account", purpose: str = "") -> list[str]:
        """The account's names under every key the keyring holds (a rotated keyring keeps old ones)."""
        return [self.key(user, kid=kid, kind=kind, purpose=purpose) for kid in self._keyring.key_ids]

    # -- recording --------------------------------------------------------------------------------------

    async def note(self, session: AsyncSession, user: User, state: State, *, ref: str = "") -> Entry:
        """Record ``state`` for ``user`` in the caller's transaction; :meth:`append` it after the commit."""
        return await self._note(session, self.key(user, kind=KIND[state]), user.id, state, ref)

    async def note_purpose(self, session: AsyncSession, user: User, state: State, purpose: str) -> Entry:
        """Record a consent's or an objection's ``state`` for ``user`` and ``purpose`` in the caller's
        transaction; :meth:`append` it after the commit."""
        key = self.key(user, kind=KIND[state], purpose=purpose)
        return await self._note(session, key, user.id, state, purpose)

    async def note_thing(self, session: AsyncSession, state: State, public_id: str, *, ref: str) -> Entry:
        """Record ``state`` of a token or a key rotation (named by ``public_id``) in the caller's
        transaction; :meth:`append` it after the commit."""
        return await self._note(session, self.thing_key(KIND[state], public_id), 0, state, ref)

    async def note_factor(self, session: AsyncSession, user_id: int, public_id: str, *, ref: str) -> Entry:
        """Record in the caller's transaction that the factor ``public_id`` (``gateway.factors.ledgered``)
        of account ``user_id`` was removed or spent; :meth:`append` it after the commit."""
        return await self._note(session, self.thing_key("factor", public_id), user_id, "factor-removed", ref)

    async def record_thing(self, state: State, public_id: str, *, ref: str) -> Entry:
        """:meth:`note_thing` in a transaction of its own, then in the file."""
        async with self._db.session(write=True) as session:
            with store_errors("cannot write the account ledger"):
                entry = await self.note_thing(session, state, public_id, ref=ref)
                await session.commit()
        await self.append([entry])
        return entry

    async def keys_deleted(self, new_kid: str, deleted: Sequence[str]) -> Entry:
        """Remember a rotation of leaked signing keys: ``deleted`` (public kids) must stay deleted."""
        return await self.record_thing("keys-deleted", new_kid, ref=",".join(deleted))

    async def _note(self, session: AsyncSession, key: str, user_id: int, state: State, ref: str) -> Entry:
        at = self._clock.now()
        row = await session.get(AccountLedgerRow, key)
        if row is not None and row.at >= at:
            # This change comes after the row's, whatever the clocks say (a host whose clock runs
            # ahead wrote it): it must outrank it (the re-attack run: an enable on a fast host
            # outranked a later disable, and a restore enabled the offboarded person again).
            at = row.at + timedelta(microseconds=1)
        entry = Entry(key, user_id, state, at, ref)
        await _put(session, entry)
        return entry

    async def record(self, user: User, state: State, *, ref: str = "") -> Entry:
        """Record ``state`` for ``user`` in a transaction of its own, then in the file."""
        async with self._db.session(write=True) as session:
            with store_errors("cannot write the account ledger"):
                entry = await self.note(session, user, state, ref=ref)
                await session.commit()
        await self.append([entry])
        return entry

    async def append(self, entries: Iterable[Entry]) -> bool:
        """Append ``entries`` to this node's file and sync it; whether they were written. A failure is
        logged, not raised: the table holds the change, and the next :meth:`sync` writes it here again."""
        entries = list(entries)
        if not entries:
            return True
        # Stamped with this database's lineage (a line carried from the file keeps its own).
        own = (await self.lineage()).id
        data = b"".join(
            self.line(entry if entry.lineage else replace(entry, lineage=own)) for entry in entries
        )
        async with self._lock:
            try:
                await asyncio.to_thread(_append, self.path, data)
            except OSError as exc:
                logger.error(
                    "account ledger: cannot write %s (%s); the next sync tries again", self.path, exc
                )
                return False
        return True

    # -- reading ----------------------------------------------------------------------------------------

    async def table(self) -> dict[str, Entry]:
        """The table's entries."""
        async with self._db.session() as session:
            with store_errors("cannot read the account ledger"):
                rows = (await session.scalars(select(AccountLedgerRow))).all()
        return {row.account_key: _entry(row) for row in rows}

    async def file(self) -> dict[str, Entry]:
        """This node's file's entries, merged (an empty ledger when there is no file yet); parsed again
        only when the file changed."""
        try:
            info = await asyncio.to_thread(os.lstat, self.path)
        except FileNotFoundError:
            return {}
        lineage = await self.lineage()
        marked = frozenset(self._keyring.compromised)
        mark = (info.st_ino, info.st_size, info.st_mtime_ns, lineage.id, marked)
        if self._parsed is not None and self._parsed[0] == mark:
            return dict(self._parsed[1])
        # Off the event loop: a long file costs a MAC per line.
        lines = await asyncio.to_thread(read_lines, self.path)
        entries = await asyncio.to_thread(lambda: merge(self.verified(lines, lineage)))
        self._parsed = (mark, entries)
        self._lines = len(lines)
        self._marked = sum(1 for _, kid, _ in lines if kid in marked)
        return dict(entries)

    async def sync(self) -> list[Entry]:
        """Copy the table's entries this node's file lacks into it, and return the file's entries the
        table lacks: after a restore, the changes made since the backup, which :mod:`gateway.privacy.
        ledger_replay` makes again and then :meth:`settles <settle>` (not before: a change whose
        making-again failed is found again by the next sync)."""
        table, file = await self.table(), await self.file()
        await self._write_missing(table, file)
        return newer(file, table)

    async def resign(self) -> int:
        """A keyring key was just marked compromised: its lines in this node's file are no longer read
        (see the module docstring). Write the table's entries the file now lacks under the active key,
        at once rather than at the next sync, and drop the lines under marked keys; return how many
        entries were written.

        Raises:
            StoreUnavailable: The database cannot be reached (the next sync does it).
            KeyringError: The keyring file changed and cannot be read.
        """
        # Take up the mark when this keyring is not the object the rotation marked (one stat otherwise).
        self._keyring.follow_file()
        return await self._write_missing(await self.table(), await self.file())

    async def _write_missing(self, table: Mapping[str, Entry], file: Mapping[str, Entry]) -> int:
        """Append the table's entries ``file`` (this node's, as read) lacks; compact the file when it
        is long, or holds lines under a marked key (only once the table's were written again: a full
        disk must not leave the changes in neither form)."""
        missing = newer(table, file)
        written = await self.append(missing)
        if written and (self._marked or self._lines >= self._compact_above):
            await self.compact(always=self._marked > 0)
        return len(missing)

    async def unsettled(self) -> list[Entry]:
        """The changes this node's file holds that the table lacks: a database restored from a backup
        that no gateway has started on yet (a gateway makes them again, then settles them). A mark of
        the key they are under would leave them unread (see the module docstring)."""
        return newer(await self.file(), await self.table())

    @property
    def quarantine(self) -> Path:
        """Where a compaction moves the lines under marked keys: kept as evidence, never read."""
        return self.path.with_name(self.path.name + ".compromised")

    async def compact(self, *, always: bool = False) -> tuple[int, int] | None:
        """Rewrite this node's file with only the lines a reader still uses: per lineage and account
        (or thing), the line :func:`merge` picks, in file order; superseded lines, lines that are no
        entry, lines whose MAC does not check and lines under a keyring key marked compromised (every
        reader ignores them) go. A line under a keyring key this process does not hold stays: it may be
        one added since the process started.

        Args:
            always: Rewrite it whenever a line would go, not only when at least half would (a mark:
                lines no reader trusts must not stay where a reader with an older keyring meets them).

        Returns:
            (lines before, lines after), or None when there is no file or too few would go.
        """
        async with self._lock:
            try:
                counted = await asyncio.to_thread(self._compact_file, always)
            except OSError as exc:
                logger.error("account ledger: cannot compact %s (%s); it stays as it is", self.path, exc)
                return None
        if counted is None:
            return None
        before, after = counted
        # Tried again at twice what the file holds now: a file of live lines is not read every minute.
        self._compact_above = max(COMPACT_AT, 2 * after)
        if after == before:
            return None
        logger.info("account ledger: compacted %s from %d to %d lines", self.path, before, after)
        return counted

    def _compact_file(self, always: bool = False) -> tuple[int, int] | None:
        """(lines before, lines after): the same count when too few would go to rewrite it; None
        without a file."""
        with _locked(self.path) as fd:
            if fd is None:
                return None
            with os.fdopen(os.dup(fd), "rb") as src:
                lines = src.read().splitlines()
            kept = self._still_read(lines)
            if len(kept) == len(lines) or (not always and 2 * len(kept) > len(lines)):
                return len(lines), len(lines)
            marked = frozenset(self._keyring.compromised)
            leaked = [line for line in lines if (parsed := _parse(line)) is not None and parsed[1] in marked]
            if leaked:
                # Moved, not deleted: what an intruder wrote with the leaked key is evidence, and a line
                # the table lacked can still be read by hand (mode 0600, as the ledger).
                _append(self.quarantine, b"".join(line + b"\n" for line in leaked))
            _replace(self.path, b"".join(lines[number] + b"\n" for number in kept))
        return len(lines), len(kept)

    def _still_read(self, lines: Sequence[bytes]) -> list[int]:
        """The numbers of the lines a reader of any lineage still uses (see :meth:`compact`)."""
        kids = set(self._keyring.key_ids)
        marked = frozenset(self._keyring.compromised)
        keep: list[int] = []
        best: dict[tuple[str, str], tuple[int, Entry]] = {}
        for number, line in enumerate(lines):
            parsed = _parse(line)
            if parsed is None:
                continue
            entry, kid, mac = parsed
            if kid in marked:
                continue  # no reader trusts it; what the table held was written again under a new key
            if kid not in kids:
                # Under a keyring key this process does not hold (yet: one added since it started, by
                # a rotation on another node or the CLI): not ours to judge, kept as it is.
                keep.append(number)
                continue
            if not hmac.compare_digest(mac, self._mac(entry, kid)):
                continue
            # merge() keeps the first entry no later one outranks: the first of the best, per group.
            group = (entry.lineage, entry.account)
            known = best.get(group)
            if known is None or entry.outranks(known[1]):
                best[group] = (number, entry)
        return sorted([*keep, *(number for number, _ in best.values())])

    async def settle(self, entry: Entry) -> None:
        """Put ``entry`` into the table (its change is made, or has nothing left to make)."""
        async with self._db.session(write=True) as session:
            with store_errors("cannot write the account ledger"):
                await _put(session, entry)
                await session.commit()

    def names(self, user: User, entry: Entry) -> bool:
        """Whether ``entry`` is about ``user`` (under any key the keyring holds)."""
        kind = KIND[entry.state]
        purpose = entry.ref if kind in PER_PURPOSE else ""
        return any(hmac.compare_digest(entry.account, key) for key in self.keys(user, kind, purpose))

    def names_thing(self, public_id: str, entry: Entry) -> bool:
        """Whether ``entry`` is about the token, key rotation or factor ``public_id``."""
        return any(
            hmac.compare_digest(entry.account, self.thing_key(KIND[entry.state], public_id, kid=kid))
            for kid in self._keyring.key_ids
        )


async def _put(session: AsyncSession, entry: Entry) -> None:
    row = await session.get(AccountLedgerRow, entry.account)
    if row is None:
        session.add(
            AccountLedgerRow(
                account_key=entry.account,
                user_id=entry.user_id,
                state=entry.state,
                at=entry.at,
                ref=entry.ref,
            )
        )
    elif entry.outranks(_entry(row)):
        row.state, row.at, row.ref = entry.state, entry.at, entry.ref


def _entry(row: AccountLedgerRow) -> Entry:
    state: State = row.state  # type: ignore[assignment]
    return Entry(row.account_key, row.user_id, state, row.at, row.ref)


def _append(path: Path, data: bytes) -> None:
    private_dirs(path.parent)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A compaction renamed a new file into place while this waited for the lock: write there.
            if not _names(path, fd):
                continue
            os.write(fd, data)
            os.fsync(fd)
            return
        finally:
            os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd``."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int | None]:
    """The file ``path`` names, open and exclusively locked (appends wait); None if there is none."""
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _names(path, fd):
                yield fd
                return
        finally:
            os.close(fd)


def _replace(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` in one step: a new private file, synced, renamed over the old one."""
    fresh = path.with_name(f"{path.name}.compact-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as out:  # a file object writes it all (os.write may stop short)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        fresh.unlink(missing_ok=True)
        raise
    os.replace(fresh, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


Line = tuple[Entry, str, str]


def read_lines(path: Path) -> list[Line]:
    """The lines of a ledger file, in order, as (entry, MAC key id, MAC), not yet checked
    (:meth:`AccountLedger.verified`); a line that is not a well-formed entry (a torn last write, a
    value of the wrong type or range) is skipped and logged. No file: none.

    Raises:
        OSError: The file exists but cannot be read (a link is not followed).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as src:
        lines = src.read().splitlines()
    found: list[Line] = []
    skipped: list[int] = []
    for number, line in enumerate(lines, 1):
        parsed = _parse(line)
        if parsed is None:
            skipped.append(number)
        else:
            found.append(parsed)
    if skipped:
        # One line for all of them: a file of junk must not multiply into the log (a re-attack run
        # turned 1 MB of junk into 50 MB of log lines).
        logger.warning(
            "account ledger: %s has %d line(s) that are no entry (first: line %d); skipped",
            path,
            len(skipped),
            skipped[0],
        )
    return found


def _parse(line: bytes) -> Line | None:
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            return None
        account, user_id, state = record["account"], record["user_id"], record["state"]
        at, ref, kid, mac = record["at"], record["ref"], record["mac_kid"], record["mac"]
        lineage = record.get("lineage", "")
        if not all(isinstance(v, str) for v in (account, state, at, ref, kid, mac, lineage)):
            return None
        if type(user_id) is not int or not 0 <= user_id <= _MAX_ID or state not in _RANK:
            return None
        moment = datetime.fromisoformat(at)
    except (ValueError, KeyError, TypeError):
        return None
    if moment.tzinfo is None:
        return None
    return Entry(account, user_id, state, moment, ref, lineage), kid, mac
