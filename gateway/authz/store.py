"""The policy store: the live policy in the database, every version of it, and the change broadcast.

The database is the source of truth. Each change is one transaction that appends a row to
``policy_versions`` (the whole policy as CSV, the unified diff against the previous version, who, when
and why) and rewrites ``policy_rules`` to match (casbin's rule-table shape, for casbin tooling). The
current policy is the highest version; reading it is one row, so a reader never sees half a change.

Replicas write concurrently without a lock: a change takes "previous max + 1" as its version, and two
writers that read the same max collide on the primary key. The loser rolls back and starts over from
the now-current policy, so an ``add`` is re-applied on top of the other writer's change instead of
overwriting it (no lost update). On SQLite writers take the write lock at ``BEGIN`` and never collide.

After a change commits it is audited and broadcast on the fast state's ``policy-changed`` channel.
The broadcast is best effort: :meth:`PolicyStore.watch` also polls the version, so a replica that
missed it (Redis down, message dropped) catches up within one poll interval.

Errors::

    GatewayError (gateway.errors)
    ├── BadRequest (400)
    │   ├── PolicyRejected        the new policy has error-severity findings (422)
    │   ├── RuleNotFound          remove: a rule is not in the policy
    │   └── RuleExists            add: a rule is already in the policy
    ├── UnknownVersion            no such version (404)
    ├── PolicyConflict            too many concurrent writers; nothing changed (409)
    └── ServiceUnavailable
        └── StoreUnavailable      the database failed (gateway.store.db)
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.trail import AuditLog
from gateway.authz.models import PolicyRuleRow, PolicyVersion
from gateway.authz.rules import PolicyRules, Rule, parse_policy
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import BadRequest, GatewayError
from gateway.store.db import SQLITE_BEGIN_OPTION, Database, store_errors
from gateway.store.fast import FastState

if TYPE_CHECKING:
    from gateway.authz.validate import Finding

__all__ = [
    "CHANNEL",
    "NOTHING_STORED",
    "Keep",
    "PolicyConflict",
    "PolicyRejected",
    "PolicyStore",
    "PolicyVersionInfo",
    "RuleExists",
    "RuleNotFound",
    "StoredPolicy",
    "UnknownVersion",
    "VersionStamp",
    "policy_diff",
]

logger = logging.getLogger("gateway.policy")

#: Fast-state channel announcing a new version (payload: the version number as ASCII digits).
CHANNEL: Final = "policy-changed"
#: Attempts of one change against concurrent writers before giving up with PolicyConflict.
_ATTEMPTS: Final = 10
#: The diff in an audit record is cut here: the full text is in policy_versions.
_AUDIT_DIFF_LIMIT: Final = 8 * 1024
_RESUBSCRIBE_BACKOFF: Final = (0.5, 30.0)
_BOOTSTRAP_ACTOR: Final = "system:bootstrap"


class PolicyRejected(BadRequest):
    """The policy would have error-severity findings; ``findings`` lists them. Nothing changed."""

    status = 422
    reason = "policy-rejected"
    title = "Policy rejected"

    def __init__(self, findings: Sequence[Finding], *, then: str = "force to store it anyway") -> None:
        self.findings = tuple(findings)
        errors = [f for f in self.findings if f.severity == "error"]
        lines = "\n".join(f"  {f}" for f in errors)
        super().__init__(f"the policy has {len(errors)} error(s); nothing was changed ({then}):\n{lines}")


class RuleNotFound(BadRequest):
    """``remove`` named rules that are not in the policy. Nothing changed."""

    reason = "policy-rule-not-found"
    title = "Rule not in the policy"

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        listed = "; ".join(rule.to_csv() for rule in self.rules)
        super().__init__(f"not in the policy, nothing was changed: {listed}")


class RuleExists(BadRequest):
    """``add`` named rules that are already in the policy. Nothing changed."""

    reason = "policy-rule-exists"
    title = "Rule already in the policy"

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        listed = "; ".join(rule.to_csv() for rule in self.rules)
        super().__init__(f"already in the policy, nothing was changed: {listed}")


class UnknownVersion(GatewayError):
    """No stored policy has this version."""

    status = 404
    reason = "policy-version-not-found"
    title = "No such policy version"


class PolicyConflict(GatewayError):
    """Other writers kept changing the policy at the same time; this change was not made."""

    status = 409
    reason = "policy-conflict"
    title = "Policy changed concurrently"


class VersionStamp(NamedTuple):
    """A stored version as the poll tells versions apart: its number and when it was stored."""

    version: int
    created_at: datetime | None


#: The stamp of an empty store.
NOTHING_STORED: Final = VersionStamp(0, None)


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """One stored version of the policy.

    Attributes:
        version: 1, 2, …; 0 when nothing is stored (then ``rules`` is empty and ``created_at`` None).
        rules: the parsed policy.
        csv: the policy exactly as stored (casbin CSV).
        created_at: when this version was stored.
    """

    version: int
    rules: PolicyRules
    csv: str
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class PolicyVersionInfo:
    """One entry of the history: a change and what it did.

    ``added`` and ``removed`` count rules (a rule moved to another line counts as neither).
    """

    version: int
    created_at: datetime
    actor: str
    reason: str
    lines: int
    restored_from: int | None
    added: int
    removed: int
    diff: str


@dataclass(frozen=True, slots=True)
class _Current:
    version: int
    csv: str


# What a change computes from the current policy: the new rules, or None for "nothing to do".
_Change = Callable[[PolicyRules], PolicyRules | None]
#: A last check of the policy about to be stored (after validation); what it raises refuses the change.
Keep = Callable[[PolicyRules], None]


class PolicyStore:
    """Reads, changes and watches the stored policy. One per worker (or per CLI command)."""

    def __init__(
        self,
        db: Database,
        fast: FastState,
        audit: AuditLog,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """Wire the store.

        Args:
            db: The relational store holding ``policy_rules`` and ``policy_versions``.
            fast: Carries the ``policy-changed`` broadcast between replicas.
            audit: Records every change.
            clock: Timestamps of versions (Unix time) and :attr:`last_confirmed` (monotonic, as the
                readiness check).
        """
        self._db = db
        self._fast = fast
        self._audit = audit
        self._clock = clock
        #: ``monotonic()`` of the last successful version check or load (0.0 before the first): the
        #: worker reports not-ready when this is older than ``policy.max_staleness``.
        self.last_confirmed: float = 0.0

    # -- reading ---------------------------------------------------------------------------------

    async def version(self) -> int:
        """The current version (0 when nothing is stored): one cheap query.

        Raises:
            StoreUnavailable: the database failed.
        """
        with store_errors("policy version check failed"):
            async with self._db.session() as session:
                latest = await session.scalar(select(func.max(PolicyVersion.version)))
        self.last_confirmed = self._clock.monotonic()
        return int(latest or 0)

    async def stamp(self) -> VersionStamp:
        """The current version and when it was stored: one cheap query, what the poll compares.

        The number alone does not name a version: a database restored from a backup numbers new
        versions on from the backup's, so "version 7" after a restore and two changes is not the
        "version 7" a worker still decides on.

        Raises:
            StoreUnavailable: the database failed.
        """
        query = select(PolicyVersion.version, PolicyVersion.created_at).order_by(PolicyVersion.version.desc())
        with store_errors("policy version check failed"):
            async with self._db.session() as session:
                row = (await session.execute(query.limit(1))).first()
        self.last_confirmed = self._clock.monotonic()
        return NOTHING_STORED if row is None else VersionStamp(int(row.version), row.created_at)

    async def current(self) -> StoredPolicy:
        """The current policy (version 0 and no rules when nothing is stored).

        Raises:
            StoreUnavailable: the database failed.
        """
        with store_errors("policy load failed"):
            async with self._db.session() as session:
                row = await session.scalar(
                    select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1)
                )
        self.last_confirmed = self._clock.monotonic()
        if row is None:
            return StoredPolicy(version=0, rules=PolicyRules(), csv="", created_at=None)
        return _stored(row)

    async def get(self, version: int) -> StoredPolicy:
        """The policy as it was at ``version``.

        Raises:
            UnknownVersion: no such version.
            StoreUnavailable: the database failed.
        """
        with store_errors("policy load failed"):
            async with self._db.session() as session:
                row = await session.get(PolicyVersion, version)
        if row is None:
            raise UnknownVersion(f"there is no policy version {version}")
        return _stored(row)

    async def history(self, limit: int = 20) -> list[PolicyVersionInfo]:
        """The latest ``limit`` changes, newest first."""
        if limit < 1:
            return []
        with store_errors("policy history failed"):
            async with self._db.session() as session:
                rows = list(
                    (
                        await session.scalars(
                            select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(limit + 1)
                        )
                    ).all()
                )
        # Each entry's counts compare it with the next-older row (hence the one extra row read).
        return [
            _info(row, rows[i + 1].policy if i + 1 < len(rows) else "") for i, row in enumerate(rows[:limit])
        ]

    async def describe(self, version: int) -> PolicyVersionInfo:
        """The history entry of one version.

        Raises:
            UnknownVersion: no such version.
        """
        with store_errors("policy history failed"):
            async with self._db.session() as session:
                rows = list(
                    (
                        await session.scalars(
                            select(PolicyVersion)
                            .where(PolicyVersion.version <= version)
                            .order_by(PolicyVersion.version.desc())
                            .limit(2)
                        )
                    ).all()
                )
        if not rows or rows[0].version != version:
            raise UnknownVersion(f"there is no policy version {version}")
        return _info(rows[0], rows[1].policy if len(rows) > 1 else "")

    # -- changing --------------------------------------------------------------------------------

    async def replace(
        self,
        rules: PolicyRules,
        *,
        actor: str,
        reason: str,
        force: bool = False,
        expected_version: int | None = None,
        keep: Keep | None = None,
    ) -> int:
        """Make ``rules`` the whole policy.

        Args:
            rules: The new policy.
            actor: Who changes it (``user:alice``, ``cli:root``).
            reason: Why; kept in the history and the audit trail.
            force: Store it even when validation reports errors.
            expected_version: Store it only on top of this version (an edit made, reviewed or
                approved against it must not silently undo a change stored since).
            keep: Called with the policy about to be stored; what it raises refuses the change
                (nothing is stored). The admin API refuses a change that takes the acting admin's
                own admin role.

        Returns:
            The new version; the current one when ``rules`` equal the stored policy (nothing stored).

        Raises:
            PolicyRejected: validation found errors and ``force`` is false.
            PolicyConflict: concurrent writers won every attempt, or the policy is no longer at
                ``expected_version``.
            StoreUnavailable: the database failed.
        """
        return await self._change(
            lambda _current: rules,
            actor=actor,
            reason=reason,
            force=force,
            expected_version=expected_version,
            keep=keep,
        )

    async def add(
        self, rules: Iterable[Rule], *, actor: str, reason: str, force: bool = False, keep: Keep | None = None
    ) -> int:
        """Append ``rules`` to the current policy.

        Raises:
            RuleExists: a rule is already in the policy (nothing changed).
            PolicyRejected, PolicyConflict, StoreUnavailable: as :meth:`replace`.
        """
        new = list(dict.fromkeys(rules))

        def change(current: PolicyRules) -> PolicyRules:
            present = set(current)
            if clash := [rule for rule in new if rule in present]:
                raise RuleExists(clash)
            return current.with_rules(*new)

        return await self._change(change, actor=actor, reason=reason, force=force, keep=keep)

    async def remove(
        self, rules: Iterable[Rule], *, actor: str, reason: str, force: bool = False, keep: Keep | None = None
    ) -> int:
        """Remove ``rules`` (every line equal to one of them) from the current policy.

        Raises:
            RuleNotFound: a rule is not in the policy (nothing changed).
            PolicyRejected, PolicyConflict, StoreUnavailable: as :meth:`replace`.
        """
        gone = list(dict.fromkeys(rules))

        def change(current: PolicyRules) -> PolicyRules:
            present = set(current)
            if missing := [rule for rule in gone if rule not in present]:
                raise RuleNotFound(missing)
            dropped = set(gone)
            return PolicyRules.from_rules(rule for rule in current if rule not in dropped)

        return await self._change(change, actor=actor, reason=reason, force=force, keep=keep)

    async def restore(
        self, version: int, *, actor: str, reason: str, force: bool = False, keep: Keep | None = None
    ) -> int:
        """Store a new version whose policy is that of ``version`` (``restored_from`` records it).

        Returns:
            The new version; the current one when the policy already equals that version.

        Raises:
            UnknownVersion: no such version.
            PolicyRejected, PolicyConflict, StoreUnavailable: as :meth:`replace`.
        """
        old = await self.get(version)
        return await self._change(
            lambda _current: old.rules,
            actor=actor,
            reason=reason,
            force=force,
            restored_from=version,
            keep=keep,
        )

    async def bootstrap(self, path: str | Path) -> int | None:
        """Import a CSV file as version 1, only when no policy is stored.

        Safe when several replicas start at once: exactly one stores version 1, the others return
        None. A stored policy wins over the file, which is then not even read.

        Returns:
            1 when this call imported the file; None when a policy was already stored.

        Raises:
            PolicyError: the file is malformed (the message names the line).
            PolicyRejected: validation found errors.
            OSError: the file cannot be read.
            StoreUnavailable: the database failed.
        """
        if await self.version() > 0:
            return None
        source = Path(path)
        text = await asyncio.to_thread(source.read_text, encoding="utf-8")
        rules = parse_policy(text, source=str(source))
        try:
            version = await self._change(
                lambda _current: rules,
                actor=_BOOTSTRAP_ACTOR,
                reason=f"imported {source} into an empty store",
                force=False,
                only_if_empty=True,
            )
        except PolicyRejected as exc:
            # `serve` has no force: what the operator can do is mend the file.
            raise PolicyRejected(exc.findings, then=f"correct {source} and start again") from None
        return version or None

    async def _change(
        self,
        change: _Change,
        *,
        actor: str,
        reason: str,
        force: bool,
        restored_from: int | None = None,
        only_if_empty: bool = False,
        expected_version: int | None = None,
        keep: Keep | None = None,
    ) -> int:
        # Optimistic: compute and validate the new policy outside any transaction (validation can
        # take a while on a big policy and must not hold the write lock), then write it only if the
        # version it was computed from is still the latest. Otherwise start over from the new one.
        validated: set[str] = set()
        for attempt in range(_ATTEMPTS):
            previous = await self._read_latest()
            if only_if_empty and previous.version > 0:
                return 0
            if expected_version is not None and previous.version != expected_version:
                raise PolicyConflict(
                    f"the policy is at version {previous.version} now, not {expected_version}:"
                    " nothing was changed; review the change against the current policy"
                )
            after = change(parse_policy(previous.csv, source=f"policy version {previous.version}"))
            if after is None:
                return previous.version
            csv = after.to_csv()
            if csv == previous.csv:
                return previous.version
            if not force and csv not in validated:
                await self.check(after)
                validated.add(csv)
            if keep is not None:
                keep(after)
            version = previous.version + 1
            diff = _diff(previous, csv, version)
            try:
                async with self._write() as conn:
                    if (await _latest(conn)).version != previous.version:
                        raise _VersionClash
                    # The version row first: on PostgreSQL a concurrent writer that read the same
                    # max collides here, before either has touched policy_rules.
                    await conn.execute(
                        insert(PolicyVersion).values(
                            version=version,
                            created_at=self._clock.now(),
                            actor=actor,
                            reason=reason,
                            diff=diff,
                            policy=csv,
                            lines=len(after),
                            restored_from=restored_from,
                        )
                    )
                    await conn.execute(delete(PolicyRuleRow))
                    if len(after):
                        await conn.execute(insert(PolicyRuleRow), [_row(rule) for rule in after])
            except _VersionClash:
                # Another replica stored a version meanwhile: start over from its policy.
                logger.info("policy: version clash with a concurrent writer (attempt %d)", attempt + 1)
                await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))  # noqa: S311 - jitter only
                continue
            added, removed = _counts(previous.csv, csv)
            await self._announce(
                version, actor=actor, reason=reason, added=added, removed=removed, diff=diff,
                restored_from=restored_from,
            )  # fmt: skip
            return version
        raise PolicyConflict(f"the policy was changed concurrently {_ATTEMPTS} times; try again")

    async def _read_latest(self) -> _Current:
        with store_errors("policy load failed"):
            async with self._db.engine.connect() as conn:
                return await _latest(conn)

    @staticmethod
    async def check(rules: PolicyRules) -> None:
        """Raise PolicyRejected when ``rules`` have error-severity findings (what every save checks)."""
        from gateway.authz.validate import validate

        # In a thread: checking a large policy is CPU work the event loop should not wait on.
        findings = await asyncio.to_thread(validate, rules)
        if any(f.severity == "error" for f in findings):
            raise PolicyRejected(findings)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        # A primary-key clash becomes _VersionClash (the caller retries); every other driver error
        # is a StoreUnavailable (503); errors of the change itself pass through unchanged.
        with store_errors("policy change failed"):
            try:
                async with self._db.engine.connect() as conn:
                    if conn.dialect.name == "sqlite":
                        # Take the write lock at BEGIN: a deferred transaction that read first could
                        # not upgrade once another writer committed (SQLITE_BUSY_SNAPSHOT, no wait).
                        await conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                    async with conn.begin():
                        yield conn
            except IntegrityError as exc:
                raise _VersionClash from exc

    async def _announce(
        self,
        version: int,
        *,
        actor: str,
        reason: str,
        added: int,
        removed: int,
        diff: str,
        restored_from: int | None,
    ) -> None:
        details: dict[str, object] = {
            "version": version,
            "reason": reason,
            "added": added,
            "removed": removed,
            "diff": _truncate(diff, _AUDIT_DIFF_LIMIT),
        }
        if restored_from is not None:
            details["restored_from"] = restored_from
        try:
            await self._audit.record("policy.changed", actor=actor, subject="policy", details=details)
        except Exception:
            # The change is committed and its version row names actor, reason and diff; failing the
            # call now would make the caller retry a change that was made.
            logger.exception("policy: version %d stored but its audit record failed", version)
        try:
            await self._fast.publish(CHANNEL, str(version).encode())
        except Exception as exc:  # noqa: BLE001 - best effort: every worker also polls the version
            logger.warning("policy: version %d stored; broadcast failed (workers poll): %s", version, exc)

    # -- watching --------------------------------------------------------------------------------

    async def watch(
        self,
        on_version: Callable[[int], Awaitable[None]],
        *,
        poll_interval: float,
        since: VersionStamp = NOTHING_STORED,
        on_announced: Callable[[int], None] | None = None,
    ) -> None:
        """Call ``on_version(v)`` whenever a version higher than the last one seen is stored (and
        ``on_announced(v)`` as soon as a broadcast names one, before it is read from the database).

        Runs until cancelled. A broadcast on ``policy-changed`` triggers a version check at once; the
        version is also checked every ``poll_interval`` seconds, the backstop for lost broadcasts and
        fast-state outages. Database and fast-state errors are logged and retried, never raised.
        Calls of ``on_version`` never overlap; one that raises is retried at the next check.

        Args:
            on_version: Loads the new policy (typically ``current()`` and an index swap).
            poll_interval: Seconds between version checks.
            since: The version the caller already has (its number and when it was stored).
        """
        seen = _Seen(since)
        wake = asyncio.Event()
        listener = asyncio.ensure_future(self._listen(wake, on_announced))
        try:
            await self._poll(on_version, wake, seen, poll_interval)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _poll(
        self,
        on_version: Callable[[int], Awaitable[None]],
        wake: asyncio.Event,
        seen: _Seen,
        poll_interval: float,
    ) -> None:
        failing = False
        while True:
            # Cleared before the check: a broadcast arriving during it wakes the next one at once.
            wake.clear()
            try:
                latest = await self.stamp()
                if failing:
                    logger.info("policy: version checks work again")
                    failing = False
                # Any other number, not only a higher one, and the same number stored at another
                # time: a restored database numbers on from an earlier version.
                if latest != seen.stamp:
                    await on_version(latest.version)
                    seen.stamp = latest
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any outage
                if not failing:
                    logger.warning(
                        "policy: version check failed (retrying every %gs): %s", poll_interval, exc
                    )
                failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_interval):
                    await wake.wait()

    async def _listen(self, wake: asyncio.Event, on_announced: Callable[[int], None] | None = None) -> None:
        delay = _RESUBSCRIBE_BACKOFF[0]
        while True:
            try:
                async with self._fast.subscribe(CHANNEL) as subscription:
                    delay = _RESUBSCRIBE_BACKOFF[0]
                    # Anything published before the subscription was live is found by a check now.
                    wake.set()
                    async for message in subscription:
                        # Every announcement wakes a check, also one naming the version in hand: after
                        # a restore the same number may be another policy (only the database can tell).
                        wake.set()
                        if on_announced is not None and message.isdigit():
                            on_announced(int(message))
            except Exception as exc:  # noqa: BLE001 - polling covers the outage; keep resubscribing
                logger.warning("policy: change broadcast unavailable (polling meanwhile): %s", exc)
            await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter only
            delay = min(delay * 2, _RESUBSCRIBE_BACKOFF[1])


class _VersionClash(Exception):
    """Another writer stored the same version number first."""


@dataclass(slots=True)
class _Seen:
    stamp: VersionStamp


async def _latest(conn: AsyncConnection) -> _Current:
    row = (
        await conn.execute(
            select(PolicyVersion.version, PolicyVersion.policy)
            .order_by(PolicyVersion.version.desc())
            .limit(1)
        )
    ).first()
    return _Current(0, "") if row is None else _Current(int(row.version), str(row.policy))


def _stored(row: PolicyVersion) -> StoredPolicy:
    rules = parse_policy(row.policy, source=f"policy version {row.version}")
    return StoredPolicy(version=row.version, rules=rules, csv=row.policy, created_at=row.created_at)


def _info(row: PolicyVersion, previous_csv: str) -> PolicyVersionInfo:
    added, removed = _counts(previous_csv, row.policy)
    return PolicyVersionInfo(
        version=row.version,
        created_at=row.created_at,
        actor=row.actor,
        reason=row.reason,
        lines=row.lines,
        restored_from=row.restored_from,
        added=added,
        removed=removed,
        diff=row.diff,
    )


def _row(rule: Rule) -> dict[str, str]:
    values: dict[str, str] = {"ptype": rule.ptype}
    for i in range(6):
        values[f"v{i}"] = rule.fields[i] if i < len(rule.fields) else ""
    return values


def _lines(csv: str) -> Counter[str]:
    return Counter(line for line in csv.splitlines() if line.strip() and not line.startswith("#"))


def _counts(old_csv: str, new_csv: str) -> tuple[int, int]:
    old, new = _lines(old_csv), _lines(new_csv)
    return (new - old).total(), (old - new).total()


def _diff(previous: _Current, csv: str, version: int) -> str:
    if previous.version == 0:
        return ""
    return policy_diff(previous.csv, csv, before=f"version {previous.version}", after=f"version {version}")


def policy_diff(old_csv: str, new_csv: str, *, before: str, after: str) -> str:
    """A unified diff of two policies' CSV text, as history and proposals show it."""
    return "".join(
        difflib.unified_diff(
            old_csv.splitlines(keepends=True),
            new_csv.splitlines(keepends=True),
            fromfile=before,
            tofile=after,
        )
    )


def _truncate(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore") + f"\n… ({len(data) - limit} more bytes in the version)"
