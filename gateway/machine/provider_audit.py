"""The audit trail of identity-provider access tokens: uses and refusals, rate-limited, in the background.

``token.used`` at most once per provider principal (``client:<provider>:<id>`` or ``user:<name>``) per
``interval`` (a minute) per process; ``token.refused`` at most once per (provider, reason) per
``interval`` with how many were refused since the last record. A flood of forged or expired tokens
must not become a flood of audit writes, and an attacker choosing the claims must not choose how
many records are written: the key is the reason class, never a value read from the token.

Records carry the provider, the reason, the route and the public token id (a hash prefix or the
``jti``), never the token or its claims. The writes run outside the request, bounded in number.
"""

from __future__ import annotations

from typing import Final

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.machine.background import BackgroundWrites
from gateway.machine.verifier import VerifiedToken

__all__ = ["ProviderAudit"]

_MAX_NOTED: Final = 10_000


class ProviderAudit:
    """Rate-limited ``token.used`` / ``token.refused`` records for provider tokens, per process."""

    def __init__(self, audit: AuditLog, clock: Clock, *, interval: float = 60.0) -> None:
        self._audit = audit
        self._clock = clock
        self._interval = interval
        self._used: dict[str, float] = {}
        # (provider, reason) → (time of the last record, refusals since it)
        self._refused: dict[tuple[str, str], tuple[float, int]] = {}
        self._writes = BackgroundWrites("provider token audit record")

    def used(self, token: VerifiedToken, route: str, ip: str) -> None:
        """Note an accepted token (recorded at most once per principal per interval)."""
        who = token.actor
        mono = self._clock.monotonic()
        last = self._used.get(who)
        if last is not None and 0 <= mono - last < self._interval:
            return
        if len(self._used) >= _MAX_NOTED:
            self._used.clear()
        self._used[who] = mono
        details = {"issuer": token.issuer, "token": token.token_id, "route": route}
        self._writes.spawn(self._audit.record("token.used", actor=who, subject=who, ip=ip, details=details))

    def refused(self, provider: str, reason: str, route: str, ip: str) -> None:
        """Note a refused token (recorded at most once per provider and reason per interval)."""
        key = (provider, reason)
        mono = self._clock.monotonic()
        last = self._refused.get(key)
        if last is not None and 0 <= mono - last[0] < self._interval:
            self._refused[key] = (last[0], last[1] + 1)
            return
        count = 1 if last is None else last[1] + 1
        if len(self._refused) >= _MAX_NOTED:
            self._refused.clear()
        self._refused[key] = (mono, 0)
        self._writes.spawn(
            self._audit.record(
                "token.refused",
                actor=f"client:{provider}:unknown",
                subject=f"client:{provider}:unknown",
                ip=ip,
                outcome="failure",
                details={
                    "issuer": provider,
                    "reason": reason,
                    "route": route,
                    "refused_since_last_record": count,
                },
            )
        )

    async def close(self) -> None:
        """Let the writes in flight finish (bounded), then stop."""
        await self._writes.close()
