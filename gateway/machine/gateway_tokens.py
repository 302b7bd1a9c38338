"""Verifying the gateway's own API tokens on the hot path, and hearing about revocations at once.

A token is looked up by its SHA-256 in the database on the first request of a worker, and then
trusted from the worker's cache for at most ``cache_ttl`` (1 s): the hot path is one hash and one dict
look-up, and the database sees at most one query per token per second per worker. Unknown hashes are
cached the same way, so a client retrying a bad token does not query the database on every request.

Revocation stamps the row and announces the hash on ``token-revoked`` (:mod:`gateway.machine.accounts`);
:meth:`GatewayTokens.run_invalidation_listener` drops it from this worker's cache at once, like the
session store's listener. A lost announcement is bounded by ``cache_ttl``; while the subscription is
down the cache is cleared on every reconnect.

The audit trail: ``token.used`` at most once per token per ``use_interval`` (a minute) per process,
with ``last_used_at`` written at the same time (every request would flood the trail and the
database); ``token.refused`` for every refused use of a token the gateway issued (expired, revoked,
outside its routes), with the reason; unknown tokens of the gateway's shape at most once a minute per
process with how many were refused since (a flood of guesses must not become a flood of audit
writes). The records are written in the background, never on the request's path, and the number of
writes in flight is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select, update

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.machine.background import BackgroundWrites
from gateway.machine.models import ApiToken, ServiceAccount
from gateway.machine.tally import RefusalTally
from gateway.machine.tokens import REVOCATION_CHANNEL, hash_token, is_gateway_token, meant_as_gateway_token
from gateway.machine.verifier import TokenOutOfScope, TokenRefused, VerifiedToken
from gateway.store.db import Database, store_errors
from gateway.store.fast.base import FastState
from gateway.store.fast.follow import follow_evictions

__all__ = ["GatewayTokens"]

ISSUER: Final = "gateway"
_INVALID: Final = "The access token is not valid."
_EXPIRED: Final = "The access token has expired."
_OUT_OF_SCOPE: Final = "The access token is not valid for this application."
_MAX_NOTED: Final = 10_000
# Who the audit trail names for a token nobody issued (no service account may be called "unknown").
_NOBODY: Final = "client:unknown"


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the database said about one token hash (``row_id`` 0: no such token)."""

    row_id: int
    verified: VerifiedToken | None
    revoked: bool


_UNKNOWN: Final = _Entry(0, None, False)


class GatewayTokens:
    """The :class:`~gateway.machine.verifier.TokenVerifier` of the gateway's own ``gwt_`` tokens."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        fast: FastState,
        clock: Clock,
        *,
        cache_ttl: float = 1.0,
        cache_size: int = 10_000,
        use_interval: float = 60.0,
    ) -> None:
        if cache_ttl < 0 or cache_size < 0 or use_interval < 0:
            raise ValueError("cache_ttl, cache_size and use_interval must not be negative")
        self._db = db
        self._audit = audit
        self._fast = fast
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._use_interval = use_interval
        self._cache: dict[str, tuple[_Entry, float]] = {}
        self._used: dict[int, float] = {}
        self._writes = BackgroundWrites("token audit record")
        # Refusals by (token, reason, route), and of unknown tokens: recorded once per interval each.
        self._refusals = RefusalTally(use_interval, self._write_refusal)
        self._listening = asyncio.Event()

    # -- the verifier ----------------------------------------------------------------------------

    def recognises(self, token: str) -> bool:
        # Every value with the prefix, a malformed one too: refused here, never passed on.
        return meant_as_gateway_token(token)

    async def verify(self, token: str, *, route: str, ip: str) -> VerifiedToken:
        """Who the token speaks for (see :class:`~gateway.machine.verifier.TokenVerifier`)."""
        mono = self._clock.monotonic()
        if not is_gateway_token(token):
            # Audited too (a spoiled token is kept from the provider, so here is its only record).
            details = {"reason": "malformed", "route": route}
            self._refusals.refused(("malformed", route), actor=_NOBODY, ip=ip, details=details, mono=mono)
            raise TokenRefused("malformed", _INVALID)
        token_hash = hash_token(token)
        hit = self._cache.get(token_hash)
        if hit is not None and 0 <= mono - hit[1] <= self._cache_ttl:
            entry = hit[0]
        else:
            entry = await self._load(token_hash)
            self._remember(token_hash, entry, mono)
        verified = entry.verified
        if verified is None:
            details = {"reason": "unknown", "route": route}
            self._refusals.refused(("unknown", route), actor=_NOBODY, ip=ip, details=details, mono=mono)
            raise TokenRefused("unknown", _INVALID)
        if entry.revoked:
            self._refused(entry.row_id, verified, "revoked", route, ip, mono)
            raise TokenRefused("revoked", _INVALID)
        if verified.expires_at <= self._clock.time():
            self._refused(entry.row_id, verified, "expired", route, ip, mono)
            raise TokenRefused("expired", _EXPIRED)
        if not verified.allows_route(route):
            self._refused(entry.row_id, verified, "route-out-of-scope", route, ip, mono)
            raise TokenOutOfScope("route-out-of-scope", _OUT_OF_SCOPE)
        last = self._used.get(entry.row_id)
        if last is None or not 0 <= mono - last < self._use_interval:
            if len(self._used) >= _MAX_NOTED:
                self._used.clear()
            self._used[entry.row_id] = mono
            self._writes.spawn(self._record_use(entry.row_id, verified, route, ip))
        return verified

    async def _load(self, token_hash: str) -> _Entry:
        query = (
            select(ApiToken, ServiceAccount.name, ServiceAccount.roles)
            .join(ServiceAccount, ApiToken.account_id == ServiceAccount.id)
            .where(ApiToken.token_hash == token_hash)
        )
        async with self._db.session() as session:
            with store_errors("cannot verify the access token"):
                found = (await session.execute(query)).first()
        if found is None:
            return _UNKNOWN
        row, name, roles_text = found
        roles = tuple(roles_text.split())
        verified = VerifiedToken(
            subject=name,
            principals=frozenset((f"client:{name}", *roles)),
            roles=roles,
            routes=frozenset(row.routes.split()),
            expires_at=row.expires_at.timestamp(),
            token_id=row.prefix,
            issuer=ISSUER,
        )
        return _Entry(row.id, verified, row.revoked_at is not None)

    # -- cache -----------------------------------------------------------------------------------

    def _remember(self, token_hash: str, entry: _Entry, mono: float) -> None:
        if self._cache_size == 0 or self._cache_ttl == 0:
            return
        cache = self._cache
        cache.pop(token_hash, None)
        while len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[token_hash] = (entry, mono)

    def forget(self, hashes: Iterable[str]) -> None:
        """Drop these token hashes from the cache (the next use reads the database)."""
        for token_hash in hashes:
            self._cache.pop(token_hash, None)

    @property
    def cached(self) -> int:
        return len(self._cache)

    # -- audit, in the background ----------------------------------------------------------------

    async def _record_use(self, row_id: int, verified: VerifiedToken, route: str, ip: str) -> None:
        now = self._clock.now()
        async with self._db.session(write=True) as session:
            with store_errors("cannot note the token's use"):
                await session.execute(update(ApiToken).where(ApiToken.id == row_id).values(last_used_at=now))
                await session.commit()
        await self._audit.record(
            "token.used", actor=verified.actor, subject=verified.actor, ip=ip,
            details={"token": verified.token_id, "route": route},
        )  # fmt: skip

    def _refused(
        self, row_id: int, verified: VerifiedToken, reason: str, route: str, ip: str, mono: float
    ) -> None:
        """A refused use of a known token, recorded once per token, reason and route per interval
        (:mod:`gateway.machine.tally`)."""
        details = {"token": verified.token_id, "reason": reason, "route": route}
        self._refusals.refused(
            (row_id, reason, route), actor=verified.actor, ip=ip, details=details, mono=mono
        )

    def _write_refusal(self, actor: str, ip: str, details: dict[str, Any]) -> None:
        self._writes.spawn(
            self._audit.record(
                "token.refused", actor=actor, subject=actor, ip=ip, outcome="failure", details=details
            )
        )

    async def close(self) -> None:
        """Record the refusals not recorded yet, let the audit writes in flight finish (bounded), then stop."""
        self._refusals.flush()
        await self._writes.close()

    # -- invalidation listener -------------------------------------------------------------------

    async def wait_listening(self) -> None:
        """Wait until the listener is subscribed (wrap in ``asyncio.timeout``)."""
        await self._listening.wait()

    async def run_invalidation_listener(self, *, retry_delay: float = 1.0) -> None:
        """Drop revoked tokens from this worker's cache as they are announced; runs until cancelled."""
        await follow_evictions(
            self._fast, REVOCATION_CHANNEL, forget=self.forget, clear=self._cache.clear,
            listening=self._listening, wake_every=self._cache_ttl, retry_delay=retry_delay,
            what="token revocation",
        )  # fmt: skip
