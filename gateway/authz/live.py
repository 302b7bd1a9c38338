"""A worker's live policy: the index it decides with, kept current from the policy store.

At start-up the stored policy is loaded (after importing ``policy.file`` into an empty store); a
policy the worker cannot load at start is a failed start, never a worker that allows by accident.
Afterwards :meth:`PolicyStore.watch` reports new versions (broadcast through the fast state, with a
database poll as backstop); each new index is compiled in a thread, off the event loop, and swapped
in with one assignment, so requests in flight finish on the index they started with.

When neither the broadcast nor the database can be reached, the last good index keeps deciding (a
store outage must not open anything, nor close everything), and the worker reports not-ready once
the policy could not be confirmed current for longer than ``policy.max_staleness``. But once a newer
version is *known* (announced, or seen by the poll) and cannot be loaded, the index in hand may allow
what the new policy denies: the worker is :attr:`LivePolicy.behind`, and the authorize stage answers
503 until the load succeeds (an attack run saw a replica cut off from PostgreSQL allow for half a
minute what the other replica already denied).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.authz.cache import Authorizer
from gateway.authz.index import PolicyIndex
from gateway.authz.rules import PolicyError, PolicyRules, parse_policy
from gateway.authz.store import PolicyStore, VersionStamp
from gateway.authz.validate import is_principal, user_findings
from gateway.settings.schema import PolicySettings

__all__ = ["LivePolicy"]

logger = logging.getLogger("gateway.policy")

_ROLES_MEMO = 10_000
# How long an announced version may take to load before the worker counts as behind (a load takes
# tens of milliseconds; README: 56 ms median, 106 ms max across two replicas).
_LOAD_GRACE = 2.0


class LivePolicy:
    """Owns a worker's :class:`Authorizer` and keeps it on the newest stored policy."""

    def __init__(self, store: PolicyStore, settings: PolicySettings) -> None:
        self.store = store
        self.settings = settings
        self.authorizer = Authorizer(
            PolicyIndex.build(PolicyRules(), version=0), max_entries=settings.cache_size
        )
        self._watcher: asyncio.Task[None] | None = None
        self._swap_lock = asyncio.Lock()
        self._roles: dict[tuple[int, frozenset[str]], tuple[str, ...]] = {}
        # When the version deciding was stored: with its number, what names it (see PolicyStore.stamp).
        self._stored_at: datetime | None = None
        self.loaded_at = time.monotonic()
        # A newer version than the one deciding is known and could not be loaded (see the docstring).
        self.behind = False
        self._announced = 0
        self._announced_at = 0.0
        self._load_failed = False

    @property
    def version(self) -> int:
        return self.authorizer.version

    async def start(self) -> None:
        """Import the bootstrap file into an empty store, load the policy, start watching."""
        if self.settings.file is not None:
            version = await self.store.bootstrap(self.settings.file)
            if version is not None:
                logger.info("policy: imported %s as version %d", self.settings.file, version)
        await self.load()
        note = await self.file_differs()
        if note is not None:
            logger.warning("policy: %s", note)
        self._watcher = asyncio.ensure_future(
            self.store.watch(
                self._on_version,
                poll_interval=self.settings.poll_interval,
                since=VersionStamp(self.version, self._stored_at),
                on_announced=self._announce,
            )
        )

    async def file_differs(self) -> str | None:
        """What an operator must know when ``policy.file`` no longer says what the stored policy says
        (None when it does, or there is no file): the file is read only into an empty store, so an edit
        of it, even followed by a reload, changes nothing until it is imported."""
        path = self.settings.file
        if path is None:
            return None
        try:
            text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
            rules = parse_policy(text, source=str(path))
        except (OSError, UnicodeDecodeError, PolicyError) as exc:
            return f"policy.file {path} cannot be read as a policy ({exc}); the stored policy decides"
        stored = await self.store.current()
        if _lines(rules) == _lines(stored.rules):
            return None
        return (
            f"policy.file {path} differs from the stored policy (version {stored.version}), which is the "
            f"one deciding: the file is read only into an empty store. Run `gateway policy import {path}` "
            "to make it live (or edit the policy in the console)."
        )

    async def load(self) -> None:
        """Load the stored policy and swap it in if it is newer than the one deciding now."""
        async with self._swap_lock:
            stored = await self.store.current()
            # Equal, not lower: a database restored to an earlier version numbers new versions below
            # the one deciding here (an attack run: the workers ignored every change until the number
            # passed the old one), and numbers them again: the same number stored at another time is
            # another policy.
            if stored.version == self.version and stored.created_at == self._stored_at:
                self.loaded_at = time.monotonic()
                return
            index = await asyncio.to_thread(PolicyIndex.build, stored.rules, version=stored.version)
            self.authorizer.swap(index)
            self._stored_at = stored.created_at
            # Keyed by the number, which a restored database gives again.
            self._roles.clear()
            self.loaded_at = time.monotonic()
            logger.info("policy: version %d is live (%d lines)", stored.version, len(stored.rules))
            await self._report_errors(stored.version, stored.rules)

    @staticmethod
    async def _report_errors(version: int, rules: PolicyRules) -> None:
        """Log the ``user:`` spelling errors of a policy stored before they were errors (or with force):
        it decides as stored, and its operator is told (a re-attack run: a deny written for user:Mallory, stored
        before the upgrade that calls it an error, never applied and nobody was told)."""
        for finding in await asyncio.to_thread(user_findings, rules):
            where = f"line {finding.line}: " if finding.line is not None else ""
            logger.error("policy: version %d has an error, %s%s", version, where, finding.message)

    def roles_for(self, principals: frozenset[str]) -> tuple[str, ...]:
        """The roles these principals hold, directly or through the policy's ``g`` hierarchy.

        What upstreams see in ``X-Gateway-Roles`` and the assertion's ``roles``: role names only, not
        the principals themselves (``user:…``, ``group:…``, ``client:…``, ``scope:…``, ``authenticated``:
        an attack run saw a provider's scopes sent as roles). Memoised per policy version, so the hot
        path pays for it once per principal set.
        """
        index = self.authorizer.index
        key = (index.version, principals)
        found = self._roles.get(key)
        if found is None:
            reached: set[str] = set()
            for principal in principals:
                reached |= index.roles_of(principal)
            found = tuple(sorted(r for r in reached if not is_principal(r)))
            if len(self._roles) >= _ROLES_MEMO:
                self._roles.clear()
            self._roles[key] = found
        return found

    def _announce(self, version: int) -> None:
        """A broadcast named ``version``: unless it is live within ``_LOAD_GRACE``, or the database has
        answered since and knows no such version (an announcement is a hint: anyone who can publish on
        the fast state could name any number), the worker is behind."""
        if version > self.version and version > self._announced:
            self._announced, self._announced_at = version, time.monotonic()
            asyncio.get_running_loop().call_later(_LOAD_GRACE, self._check_behind)

    def _check_behind(self) -> None:
        if self._announced <= self.version:
            self.behind = False
            return
        if self.store.last_confirmed > self._announced_at and not self._load_failed:
            # The database answered since the announcement and had nothing newer to load: a stale or
            # forged announcement (an attack run's one PUBLISH put every worker at 503).
            self._announced = self.version
            self.behind = False
            return
        if not self.behind:
            logger.error(
                "policy: version %d was announced and is not loaded (is the database reachable?); "
                "requests get 503 until it is",
                self._announced,
            )
            self.behind = True
        asyncio.get_running_loop().call_later(_LOAD_GRACE, self._check_behind)

    async def _on_version(self, version: int) -> None:
        # Also for the number deciding now: the poll calls only when the version's stamp changed.
        self._announced = max(self._announced, version)
        try:
            await self.load()
        except Exception:
            self._load_failed = True
            if not self.behind:
                logger.error(
                    "policy: version %d exists and cannot be loaded; requests get 503 until it is",
                    self._announced,
                )
            self.behind = True
            raise
        # Loaded: the store's newest is what decides now (a restored database may even hold a
        # lower version than the one announced).
        if self.behind:
            logger.warning("policy: version %d loaded; deciding again", self.version)
        self.behind = self._load_failed = False
        self._announced = self.version

    def staleness(self) -> float:
        """Seconds since the policy was last confirmed current (by a load or a version check)."""
        confirmed = max(self.loaded_at, self.store.last_confirmed)
        return max(0.0, time.monotonic() - confirmed)

    def readiness(self) -> dict[str, Any]:
        """What /.gateway/ready reports about the policy."""
        age = self.staleness()
        ok = age <= self.settings.max_staleness
        check: dict[str, Any] = {"ok": ok, "version": self.version}
        if not ok:
            check["error"] = f"policy not confirmed current for {age:.0f}s"
        return check

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher


def _lines(rules: PolicyRules) -> list[str]:
    """The rules as their CSV lines, in order (line numbers and spacing aside)."""
    return [rule.to_csv() for rule in (*rules.policies, *rules.links)]
