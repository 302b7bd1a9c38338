"""Listing and rotating the node's keys: what ``gateway keys list|rotate`` and the admin console share.

Two kinds of key, two rotations (see :mod:`gateway.crypto.keyring` and :mod:`gateway.crypto.signing`):

* **signing**: a new ES256 key, published at once, signing after ``assertion.publish_ahead``; running
  gateways pick it up within 30 s.
* **keyring**: a new AES-256-GCM key in the keyring file, active for new secrets; older keys stay for
  decryption. Processes that read the same file take it up the first time they meet it (the keyring
  reads its file again for a key id it does not know). Replicas with their own copy of the file
  stage the key first (``stage``: in the file, not active), get the file, then activate it.

A keyring key that leaked is *marked compromised* (:func:`mark_compromised`, ``gateway keys rotate
--keyring --compromised``): it is no longer active and never will be again, and the keyring file
records what it had signed until then (the backups, the audit chain's head), so that whatever the
leaked key signs later is refused. The signing keys' private halves are keyring ciphertext: one under a
leaked keyring key is the leak's too (whoever holds the key decrypts it from any copy of the database),
so it is rotated as compromised with the mark (:func:`retire_exposed_signing`), after the keyring, so
the new signing key is encrypted under the new keyring key.

Rotating both (without a leak) rotates the signing key first, so its private half is encrypted under
the keyring key every running gateway already holds. Neither list nor rotation ever exposes private key material: a
signing key is described by its public facts, the keyring by its key ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from gateway.clock import SYSTEM_CLOCK, Clock, as_utc
from gateway.crypto.keyring import Compromise, Keyring, KeyringError, held_mark
from gateway.crypto.signing import KeySet, PublishedKey, SigningKeys
from gateway.errors import BadRequest, GatewayError

__all__ = [
    "BackupsSigned",
    "LeakTimeRefused",
    "LedgerUnsettled",
    "Rotation",
    "RotationTarget",
    "SigningRotation",
    "Trail",
    "describe_key",
    "leak_time",
    "leaked_with",
    "mark_compromised",
    "refuse_unsettled",
    "resign_ledger",
    "retire_exposed_signing",
    "rotate_keys",
    "signing_keys_under",
]

logger = logging.getLogger("gateway.keys")

#: The backups a keyring key signed before a time (the leak's, when known; else the mark's), id →
#: manifest MAC (:func:`gateway.backup.sets.vouching`, a floor above this one, bound to the
#: deployment's backup directory and audit trail).
BackupsSigned = Callable[[str, datetime | None], Awaitable[Mapping[str, str]]]


class RotationTarget(StrEnum):
    """What to rotate."""

    ALL = "all"
    SIGNING = "signing"
    KEYRING = "keyring"


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def describe_key(keyset: KeySet, key: PublishedKey, now: float) -> dict[str, Any]:
    """One signing key's public facts and its state at ``now`` (times ISO 8601, UTC; ``None`` if unset).

    ``published_until`` is when it leaves ``jwks.json`` (retired plus ``assertion.grace``);
    ``keyring_key`` the keyring key id its private half is encrypted under.
    """
    return {
        "kid": key.kid,
        "state": str(keyset.state(key, now)),
        "created_at": _iso(key.created_at),
        "active_from": _iso(key.active_from),
        "retired_at": _iso(key.retired_at),
        "published_until": _iso(key.retired_at + keyset.grace if key.retired_at is not None else None),
        "keyring_key": key.keyring_kid,
    }


@dataclass(frozen=True, slots=True)
class SigningRotation:
    """The new signing key and the key sets around its rotation."""

    kid: str
    before: KeySet
    after: KeySet


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did."""

    signing: SigningRotation | None = None
    keyring_key: str | None = None
    # The new keyring key was added without becoming active (activate it once every replica has it).
    staged: bool = False
    # The old signing keys were deleted at once (a leak), not handed over.
    compromised: bool = False
    # The published signing keys whose private half was encrypted under a leaked keyring key: why the
    # signing key was rotated as compromised with the keyring.
    signing_exposed: tuple[str, ...] = ()
    # The keyring key that was active before, marked compromised (a leak), with what it had signed, and
    # the older keys of the file marked with it (they were in the leaked file too).
    keyring_compromised: str | None = None
    keyring_mark: Compromise | None = None
    keyring_also: tuple[str, ...] = ()

    def details(self) -> dict[str, object]:
        """The new key ids, for the audit record (``keys.rotated``)."""
        found: dict[str, object] = {}
        if self.signing is not None:
            found["signing_key"] = self.signing.kid
            if self.compromised:
                found["old_keys_deleted"] = sorted(
                    k.kid for k in self.signing.before.keys if k.kid != self.signing.kid
                )
        if self.keyring_key is not None:
            found["keyring_key"] = self.keyring_key
            if self.staged:
                found["staged"] = True
        if self.keyring_compromised is not None:
            found["keyring_key_compromised"] = self.keyring_compromised
        if self.signing_exposed:
            found["signing_keys_under_leaked_keyring_key"] = list(self.signing_exposed)
        return found


class Trail(Protocol):
    """Where a rotation is recorded (:class:`gateway.audit.trail.AuditLog`, a floor above this one)."""

    async def record(
        self, kind: str, *, actor: str, subject: str = "", details: Mapping[str, object] | None = None
    ) -> None: ...

    async def record_at_head(
        self,
        prepare: Callable[[int, str], Awaitable[None]],
        kind: str,
        *,
        actor: str,
        subject: str = "",
        details: Mapping[str, object] | None = None,
    ) -> None: ...


class Ledger(Protocol):
    """Where a rotation of leaked keys is remembered outside the database
    (:class:`gateway.identity.ledger.AccountLedger`, a floor above this one)."""

    async def keys_deleted(self, new_kid: str, deleted: Sequence[str]) -> object: ...

    async def resign(self) -> object: ...

    async def unsettled(self) -> Sequence[Change]: ...


class Change(Protocol):
    """What a refused mark names of a ledger change the database lacks
    (:class:`gateway.identity.ledger.Entry`)."""

    @property
    def state(self) -> str: ...

    @property
    def user_id(self) -> int: ...

    @property
    def at(self) -> datetime: ...


async def rotate_keys(
    target: RotationTarget,
    *,
    signing: SigningKeys,
    keyring: Keyring,
    keyring_file: Path,
    audit: Trail,
    actor: str,
    stage: bool = False,
    compromised: bool = False,
    announce: Callable[[float], Awaitable[None]] | None = None,
    ledger: Ledger | None = None,
    backups_signed: BackupsSigned | None = None,
    clock: Clock = SYSTEM_CLOCK,
    leaked_since: datetime | None = None,
    drop_unsettled: bool = False,
) -> Rotation:
    """Rotate the signing key, the keyring or both (signing first, but for a leaked keyring).

    With ``compromised`` and the keyring, the keyring is rotated first and the signing key after it,
    as compromised, under the new keyring key: with ``ALL``, and with ``KEYRING`` when a published
    signing key's private half is under the leaked key or another key of the leaked file (an attack
    run decrypted it from a database backup and forged assertions for anyone). Never the other way
    round: the new signing key would be encrypted under the leaked key.

    Args:
        target: What to rotate.
        signing: The signing keys (only public data is read; the new key is encrypted under the
            keyring they were built with, or, after a compromised keyring rotation, under ``keyring``).
        keyring: Rotated in place and written to ``keyring_file`` (merged with what the file holds).
            A long-running process that must go on encrypting under the key every other process
            holds passes a copy freshly loaded from the file instead of its own.
        keyring_file: The keyring file.
        audit: Records ``keys.rotated`` with the new key ids, under ``actor``: one kind for the fact
            whichever channel (CLI, console, incident response) rotated.
        actor: Who rotated.
        stage: Add the new keyring key without making it active (:meth:`Keyring.rotate`).
        compromised: The old keys may be in someone else's hands. Signing: the new one signs at once
            and the old ones are deleted (:meth:`SigningKeys.rotate`). Keyring: the key that was
            active is marked compromised with the file's older keys (:func:`mark_compromised`,
            :func:`leaked_with`), and the signing key rotated as compromised if its private half is
            under one of them; refused with ``stage``.
        announce: With ``compromised``, tells the running workers (:func:`announce_compromise` over
            the caller's fast state), so one that cannot reload stops signing with the old key, and
            every one reads the keyring file again.
        ledger: With ``compromised``, remembers the deleted kids outside the database, so a gateway
            started on a database restored from an earlier backup deletes them again before it serves;
            after a keyring key is marked, writes its lines again under the new key (their MACs under
            the leaked key no longer count: :meth:`AccountLedger.resign`).
        backups_signed: With ``compromised``, the backups a keyring key signed (none without it).
        leaked_since: With ``compromised``, the earliest the keys could have leaked, when known: the
            backups made since are not vouched for (:func:`mark_compromised`).
        drop_unsettled: With ``compromised``, mark even though the node's ledger holds changes the
            database lacks, and give them up (:func:`refuse_unsettled`).
        clock: When a key is marked.

    Returns:
        The new key ids, and the signing key sets around the rotation.

    Raises:
        StoreUnavailable: The database cannot be reached.
        KeyringError: The keyring file cannot be read or written, or ``stage`` with ``compromised``
            for the keyring (a leaked key must stop encrypting now).
        LeakTimeRefused: ``leaked_since`` is later than now (nothing was rotated).
        LedgerUnsettled: the node's account ledger holds changes the database lacks (nothing was
            rotated).
    """
    rotate_keyring = target in (RotationTarget.ALL, RotationTarget.KEYRING)
    leaked_since = leak_time(leaked_since, clock)  # before anything is rotated
    if rotate_keyring and compromised and ledger is not None:
        await refuse_unsettled(ledger, drop=drop_unsettled, audit=audit, actor=actor)
    if rotate_keyring and compromised and stage:
        raise KeyringError(
            "a compromised keyring key must stop encrypting now: rotate in one step, or activate the "
            "staged key first and then mark the old one (`gateway keys activate KID --compromised`)"
        )
    rotate_signing = target in (RotationTarget.ALL, RotationTarget.SIGNING)
    rotation = Rotation()
    if rotate_signing and not (rotate_keyring and compromised):
        made = await _rotate_signing(signing, compromised=compromised, announce=announce, ledger=ledger)
        rotation = Rotation(signing=made, compromised=compromised)
    if rotate_keyring:
        old = keyring.active_id
        # File I/O under an exclusive lock (and an fsync): off the event loop.
        new_id = await asyncio.to_thread(keyring.rotate, keyring_file, activate=not stage)
        rotation = replace(rotation, keyring_key=new_id, staged=stage)
        if compromised:
            older = leaked_with(keyring, old, new_id)
            rotation = replace(rotation, keyring_compromised=old, keyring_also=older)
            try:
                # Under the new keyring key now, before the mark (one audit record names both).
                leaked = {old, *older, *keyring.compromised}
                exposed = await signing_keys_under(signing, leaked, clock.time())
                if rotate_signing or exposed:
                    made = await _rotate_signing(
                        signing.under(keyring), compromised=True, announce=announce, ledger=ledger
                    )
                    rotation = replace(rotation, signing=made, compromised=True, signing_exposed=exposed)
                mark = await mark_compromised(
                    keyring, keyring_file, old, audit=audit, actor=actor,
                    backups_signed=backups_signed, details=rotation.details(), kind="keys.rotated",
                    clock=clock, also=older, leaked_since=leaked_since,
                )  # fmt: skip
            except GatewayError as exc:
                # The new key is active now: running the rotation again would mark the new one (a
                # re-attack run's database, locked by the attacker, failed the mark that way).
                state = (
                    "is marked compromised in the keyring file, but the audit trail does not say so"
                    if old in keyring.compromised
                    else "is NOT marked compromised"
                )
                signed = (
                    ""
                    if rotation.signing is not None or old in keyring.compromised
                    else " (it also rotates the signing key if its private half is under the leaked key)"
                )
                raise KeyringError(
                    f"{exc.detail}. The new keyring key {new_id} is active, and the leaked key {old} {state}: "
                    f"run `gateway keys mark-compromised {old}` once that is mended{signed}"
                ) from exc
            if announce is not None:
                # The running workers read the keyring file again now, instead of encrypting under the
                # leaked key until they meet the new one.
                await announce(time.time())
            if ledger is not None:
                await resign_ledger(ledger)
            return replace(rotation, keyring_mark=mark)
    await audit.record("keys.rotated", actor=actor, subject="keys", details=rotation.details())
    return rotation


async def resign_ledger(ledger: Ledger) -> None:
    """Write this node's account ledger lines again under the new keyring key, now that the ones under
    the marked key are no longer read (a restore must still make the changes they held). A failure is
    logged, not raised: the key is rotated and marked, and every gateway's next ledger sync does it."""
    try:
        await ledger.resign()
    except GatewayError as exc:
        logger.error(
            "account ledger: cannot write its lines again under the new keyring key (%s); each "
            "gateway's next ledger sync does it. Do not restore a backup on this node before one has run.",
            exc.detail,
        )


async def _rotate_signing(
    signing: SigningKeys,
    *,
    compromised: bool,
    announce: Callable[[float], Awaitable[None]] | None,
    ledger: Ledger | None,
) -> SigningRotation:
    """Rotate the signing key (:meth:`SigningKeys.rotate`); a compromised rotation is announced to the
    running workers and its deleted kids remembered in ``ledger``."""
    before = await signing.load(with_private=False)
    kid = await signing.rotate(compromised=compromised)
    if compromised and announce is not None:
        await announce(time.time())
    after = await signing.load(with_private=False)
    if compromised and ledger is not None:
        await ledger.keys_deleted(kid, [k.kid for k in before.keys if k.kid != kid])
    return SigningRotation(kid, before, after)


async def signing_keys_under(
    signing: SigningKeys, keyring_kids: Collection[str], now: float
) -> tuple[str, ...]:
    """The signing keys published at ``now`` whose private half is encrypted under one of
    ``keyring_kids``: whoever holds one of those keyring keys can sign assertions with them.

    Raises:
        StoreUnavailable: The database cannot be reached.
    """
    keyset = await signing.load(with_private=False)
    return tuple(k.kid for k in keyset.published(now) if k.keyring_kid in keyring_kids)


async def retire_exposed_signing(
    signing: SigningKeys,
    keyring: Keyring,
    leaked: Collection[str],
    *,
    announce: Callable[[float], Awaitable[None]] | None = None,
    ledger: Ledger | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Rotation | None:
    """Keyring keys ``leaked`` are being marked compromised: rotate the signing key as compromised
    (signing at once, every old key deleted: :meth:`SigningKeys.rotate`) if a published one's private
    half is under one of them or under a key marked before, for ``gateway keys activate --compromised``
    and ``mark-compromised``. The new key is encrypted under ``keyring``'s active key (never a marked
    one), whichever keyring ``signing`` was built with.

    Returns:
        The signing rotation, naming the exposed kids (``signing_exposed``), or ``None`` when no
        published key was exposed.

    Raises:
        StoreUnavailable: The database cannot be reached.
    """
    exposed = await signing_keys_under(signing, {*leaked, *keyring.compromised}, clock.time())
    if not exposed:
        return None
    made = await _rotate_signing(signing.under(keyring), compromised=True, announce=announce, ledger=ledger)
    return Rotation(signing=made, compromised=True, signing_exposed=exposed)


class LedgerUnsettled(GatewayError):
    """A keyring key cannot be marked compromised yet (409): this node's account ledger holds changes
    the database lacks, under the key about to be marked; nothing was changed."""

    status = 409
    reason = "ledger-unsettled"
    title = "Account ledger not replayed yet"


async def refuse_unsettled(
    ledger: Ledger, *, drop: bool = False, audit: Trail | None = None, actor: str = ""
) -> int:
    """Refuse a mark while this node's account ledger holds changes the database lacks; how many there
    were (given up, with ``drop``).

    A database restored from a backup lacks the disables, erasures and resets made since; the ledger
    file holds them, and a gateway started on the database makes them again. Lines under a key marked
    compromised are no longer read, and only what the table holds is written again under the new key,
    so a mark made before that replay lost every one of them (a re-attack run: restore, mark, start;
    the disabled account was back). A change a started gateway could not make (a consent of a purpose
    no longer configured, a line forged with the leaked key that names no row) stays too: the
    refusal names each, and ``drop`` (``--drop-unsettled``) marks anyway, recorded as
    ``keys.ledger_unsettled_dropped``; the lines move to the ledger's ``.compromised`` file with the
    others under the marked key. An intruder who holds the key and can write the ledger file can
    otherwise keep every mark refused.

    Raises:
        LedgerUnsettled: There are such changes and not ``drop``.
    """
    try:
        pending = list(await ledger.unsettled())
    except OSError as exc:  # a ledger file that cannot be read (a symbolic link, its mode): no traceback
        if not drop:
            raise LedgerUnsettled(
                f"cannot read this node's account ledger file ({exc.strerror or exc}): fix it and mark "
                "again, or mark with --drop-unsettled to go on without it"
            ) from None
        logger.warning("keys: marking without reading this node's account ledger file (%s)", exc)
        return 0
    if not pending:
        return 0
    named = "; ".join(f"{c.state} of account {c.user_id} at {c.at.isoformat()}" for c in pending[:10])
    more = f"; and {len(pending) - 10} more" if len(pending) > 10 else ""
    if not drop:
        raise LedgerUnsettled(
            f"this node's account ledger holds {len(pending)} change(s) the database lacks ({named}{more}). "
            "Marking the key now would leave them unread. On a database restored from a backup: start "
            "a gateway on it once (it makes them again before it serves), then mark the key. If a "
            "gateway has run and they remain, it could not make them (its log says why; a line forged "
            "with the leaked key is one): mark with --drop-unsettled (drop_unsettled in the admin API) "
            "to give them up."
        )
    logger.warning(
        "keys: marking despite %d unsettled account ledger change(s): %s%s", len(pending), named, more
    )
    if audit is not None:
        await audit.record(
            "keys.ledger_unsettled_dropped",
            actor=actor,
            subject="keys",
            details={"changes": len(pending), "first": named},
        )
    return len(pending)


class LeakTimeRefused(BadRequest):
    """A leak's time later than now (400): a typo, not a leak; nothing was changed."""

    title = "Leak time refused"


def leak_time(leaked_since: datetime | None, clock: Clock) -> datetime | None:
    """The leak's time in UTC (without an offset: UTC), checked before anything is rotated or marked.

    Raises:
        LeakTimeRefused: It is later than now.
    """
    if leaked_since is None:
        return None
    leaked_since = as_utc(leaked_since)
    if leaked_since > clock.now():
        raise LeakTimeRefused(f"The leak's time {leaked_since.isoformat()} is in the future.")
    return leaked_since


def leaked_with(keyring: Keyring, *besides: str) -> tuple[str, ...]:
    """The keys of the file not marked yet, but ``besides``: a leaked copy of the file held them all
    (a re-attack run forged a backup and records under a key rotated out before the leak)."""
    return tuple(sorted(k for k in keyring.key_ids if k not in besides and k not in keyring.compromised))


async def mark_compromised(
    keyring: Keyring,
    keyring_file: Path,
    kid: str,
    *,
    audit: Trail,
    actor: str,
    backups_signed: BackupsSigned | None,
    details: Mapping[str, object] | None = None,
    kind: str = "keys.compromised",
    clock: Clock = SYSTEM_CLOCK,
    also: Sequence[str] = (),
    leaked_since: datetime | None = None,
) -> Compromise:
    """Mark a keyring key that is no longer active as compromised (:meth:`Keyring.mark_compromised`),
    and the keys ``also`` names with it.

    The mark records the backups the key had signed (``backups_signed``; a backup under the key that
    is not among them is refused from then on) and the audit chain's head: the mark is written under
    the chain lock and the audit record (``kind``) follows the head directly, keyed under the new
    active key, so no record under the leaked key can come between them, and any that comes later is
    named by ``gateway audit verify``. ``also``: the older keys of a leaked file, which were in it too
    (a re-attack run forged a backup and records under a key rotated out before the leak).
    ``leaked_since``: the earliest the key could have leaked, when the operator knows it. Backups made
    from then on are not vouched for: they cannot be told from what the leaked key signed (with write
    access to the database too, its holder can record a planted backup as made by the gateway).

    Raises:
        KeyringError: ``kid`` is not in the file or is the active key; the file cannot be written.
        LeakTimeRefused: ``leaked_since`` is later than now.
        StoreUnavailable: The database cannot be reached (nothing was marked).
    """
    leaked_since = leak_time(leaked_since, clock)
    kids = [kid, *(k for k in also if k != kid)]
    vouched = {
        k: dict(await backups_signed(k, leaked_since)) if backups_signed is not None else {} for k in kids
    }
    since = leaked_since.isoformat(timespec="seconds") if leaked_since is not None else ""
    marked: dict[str, Compromise] = {}

    async def prepare(seq: int, head: str) -> None:
        at = clock.now().astimezone(UTC).isoformat(timespec="seconds")
        for k in kids:
            mark = Compromise(at, seq, MappingProxyType(vouched[k]), head, since)
            marked[k] = await asyncio.to_thread(keyring.mark_compromised, keyring_file, k, mark)

    # The record says what the file will hold, not what this call asked for: a key marked before keeps
    # its mark, narrowed only by an earlier leak (held_mark). Worked out before the record is written
    # (its details are encoded before `prepare` runs: a re-attack run's record named a leak time the
    # file did not hold).
    keyring.follow_file()
    asked = {
        k: Compromise(
            clock.now().astimezone(UTC).isoformat(timespec="seconds"),
            0,
            MappingProxyType(vouched[k]),
            "",
            since,
        )
        for k in kids
    }
    held = {k: held_mark(keyring.compromised.get(k), asked[k]) for k in kids}
    record: dict[str, object] = {
        **(details or {"keyring_key_compromised": kid}),
        "backups_vouched": sum(len(h.backups) for h in held.values()),
    }
    if len(kids) > 1:
        record["keyring_keys_also_compromised"] = kids[1:]
    if kid in keyring.compromised:
        record["marked_before_at"] = keyring.compromised[kid].at
    if held[kid].leaked_since:
        record["leaked_since"] = held[kid].leaked_since
    await audit.record_at_head(prepare, kind, actor=actor, subject="keys", details=record)
    return marked[kid]
