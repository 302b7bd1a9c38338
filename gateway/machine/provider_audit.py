"""The audit trail of identity-provider access tokens: uses and refusals, rate-limited, in the background.

``token.used`` at most once per provider principal (``client:<provider>:<id>`` or ``user:<name>``) per
``interval`` (a minute) per process; ``token.refused`` as the gateway's own tokens' refusals are
(:mod:`gateway.machine.tally`): the first of each (provider, reason, route) at once, the rest of its
interval summed (count and addresses) when the interval ends or the process stops. A flood of forged
or expired tokens must not become a flood of audit writes, and an attacker choosing the claims must not
choose how many records are written: the key is the reason class and the configured route, never a
value read from the token. An attack run's 50 bad JWTs had left one record per worker, counting 1 or
3: the rest of the minute was written only if another refusal came after it, and never at a stop.

Records carry the provider, the reason, the route and the public token id (a hash prefix or the
``jti``), never the token or its claims. The writes run outside the request, bounded in number.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.machine.background import BackgroundWrites
from gateway.machine.tally import RefusalTally
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
        self._writes = BackgroundWrites("provider token audit record")
        # Refusals by (provider, reason, route): recorded once per interval each, the rest summed.
        self._refusals = RefusalTally(interval, self._write_refusal)

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
        """Note a refused token (recorded at once the first time per provider, reason and route in an
        interval; the rest of the interval's summed)."""
        actor = f"client:{provider}:unknown"
        details = {"issuer": provider, "reason": reason, "route": route}
        self._refusals.refused(
            (provider, reason, route), actor=actor, ip=ip, details=details, mono=self._clock.monotonic()
        )

    def _write_refusal(self, actor: str, ip: str, details: dict[str, Any]) -> None:
        self._writes.spawn(
            self._audit.record(
                "token.refused", actor=actor, subject=actor, ip=ip, outcome="failure", details=details
            )
        )

    async def close(self) -> None:
        """Record the refusals not recorded yet, let the writes in flight finish (bounded), then stop."""
        self._refusals.flush()
        await self._writes.close()
