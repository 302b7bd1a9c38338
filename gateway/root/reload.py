"""Keeping the live configuration current: SIGHUP reload, and the upstream health checks that follow it.

A reload builds a new snapshot off the request path and swaps it in; a config that fails validation,
or that changes what only a restart can apply, is refused and the old one keeps serving (the refusal
is logged, audited and shown in the readiness report). In a gateway worker the upstream health checks
follow the snapshot: the new pools are checked before the swap, the old checks stop after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

from gateway.audit.trail import AuditLog, record_quietly
from gateway.errors import ConfigError
from gateway.pipeline.snapshot import LiveState, Snapshot, build_snapshot
from gateway.settings.loader import pin_accepted, read_settings
from gateway.settings.schema import Settings
from gateway.upstream import HealthChecker

__all__ = ["HealthChecks", "Reloader"]

logger = logging.getLogger("gateway")

# Bound when the process starts (sockets, files, connections); pretending to apply them live would
# leave the running gateway different from its config.
_RESTART_ONLY = (
    "listen",
    "tls",
    "data_dir",
    "storage",
    "state",
    "server",
    "policy",
    "assertion",
    "admin",
    "logging",
    "tracing",
    # Read once by the services built at start (the hasher, the factor services, the token service, the
    # checkpointer, the threat responder's webhook, the lockdown listener): a reload accepted with a
    # change here had said "success" and changed nothing (an attack run tightened them mid-incident).
    "passwords",
    "mfa.totp",
    "mfa.webauthn",
    "mfa.recovery_codes",
    "tokens",
    "audit",
    "threat.enabled",
    "threat.webhook_url",
    "threat.webhook_queue",
    "threat.webhook_timeout",
    "lockdown.refresh_interval",
    # Read once at start too: the keyring (a reload to a missing file was accepted, and the next worker
    # restarted from it made an empty keyring, could not read a secret and took the whole gateway down
    # in granian's crash loop), the assertion issuer and WebAuthn origin (public_url: half the workers
    # signed with the old issuer), the account ledger's file, and the session cookie's name (a rename
    # stopped keeping the old cookie, still a live session, from the apps).
    "keyring",
    "public_url",
    "backup.ledger",
    "session.cookie_name",
)


class HealthChecks:
    """The active health checks of the live snapshot's upstream pools (gateway workers only)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._checker: HealthChecker | None = None

    async def follow(self, snapshot: Snapshot) -> HealthChecker | None:
        """Start checking ``snapshot``'s pools; returns the checker they replace (the caller stops it
        once the new snapshot is live)."""
        checker = HealthChecker(snapshot.pools, self._session)
        await checker.start()
        old, self._checker = self._checker, checker
        return old

    async def close(self) -> None:
        if self._checker is not None:
            await self._checker.stop()
            self._checker = None


class Reloader:
    """Re-reads the config file on request (SIGHUP) and swaps the snapshot in if it is valid."""

    def __init__(
        self,
        config_path: Path,
        live: LiveState,
        *,
        audit: AuditLog,
        health: HealthChecks | None,
        policy_note: Callable[[], Awaitable[str | None]] | None = None,
        appliers: Sequence[Callable[[Settings], None]] = (),
    ) -> None:
        """Wire the reloader.

        Args:
            config_path: The file to re-read.
            live: The holder whose snapshot is swapped.
            audit: Where ``config.reloaded`` is recorded (success and refusal).
            health: The upstream health checks to move to the new pools; None where no upstream is
                checked (the admin listener).
            policy_note: Says when ``policy.file`` differs from the stored policy: a reload does not
                import it, and an operator who edited it and reloaded must hear that nothing changed.
            appliers: Hand an accepted config, after the swap, to what keeps part of it outside the
                live snapshot (the session store's lifetimes, the process-wide NAT64 prefixes).
        """
        self.config_path = config_path
        self.live = live
        self._audit = audit
        self._health = health
        self._policy_note = policy_note
        self._appliers = tuple(appliers)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()
        # The first line goes to the readiness report until a reload succeeds.
        self.last_error: str | None = None

    def on_sighup(self) -> None:
        """The SIGHUP handler: reload in a task (signal handlers must not block the loop)."""
        task = asyncio.ensure_future(self.reload())
        # Keep a reference until done: the loop only holds tasks weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def listen(self) -> bool:
        """Reload on SIGHUP from now on. Returns False where signals cannot be handled."""
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.on_sighup)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread or Windows
            logger.warning("SIGHUP reload is not available in this process")
            return False
        return True

    async def reload(self) -> bool:
        """Re-read the config file; swap it in if valid. Returns whether the new config is live."""
        async with self._lock:
            current = self.live.current
            try:
                text, settings = await asyncio.to_thread(read_settings, self.config_path)
                new = build_snapshot(
                    settings, generation=current.generation + 1, source=str(self.config_path)
                )
            except (ConfigError, ValueError) as exc:
                self.last_error = str(exc)
                logger.error("config reload refused, the previous config keeps serving:\n%s", exc)
                await self._record("failure", str(exc))
                return False
            refused = _restart_only_change(current.settings, settings)
            if refused:
                self.last_error = refused
                logger.error("config reload refused: %s", refused)
                await self._record("failure", refused)
                return False
            old_checker = await self._health.follow(new) if self._health is not None else None
            self.live.swap(new)
            for apply in self._appliers:
                apply(settings)
            # A worker started again after a crash starts with this text, not with the file on disk.
            await asyncio.to_thread(pin_accepted, text)
            if old_checker is not None:
                await old_checker.stop()
            self.last_error = None
            logger.info("config reloaded (generation %d, %d routes)", new.generation, len(new.routes))
            note = await self._policy_note() if self._policy_note is not None else None
            if note is not None:
                logger.warning("policy: %s", note)
            await self._record(
                "success",
                f"generation {new.generation}",
                # What changed, for the SIEM: a reload that loosened a route or trusted_proxies had left
                # only "generation N" (an attack run), and the file's digest ties it to a review.
                changed=_changed(current.settings, settings),
                sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            )
            return True

    async def _record(self, outcome: str, detail: str, **more: object) -> None:
        details = {
            "config": str(self.config_path),
            "detail": detail.splitlines()[0] if detail else "",
            "pid": os.getpid(),
            **more,
        }
        await record_quietly(self._audit, "config.reloaded", actor="system", outcome=outcome, details=details)


def _restart_only_change(old: Settings, new: Settings) -> str | None:
    for key in _RESTART_ONLY:
        if _at(old, key) != _at(new, key):
            return f"'{key}' changed; it only takes effect on restart. Restart the gateway to apply it."
    return None


def _changed(old: Settings, new: Settings) -> list[str]:
    """The top-level settings that differ, and for routes the names of those added, removed or changed."""
    changed = [
        name
        for name in type(new).__struct_fields__
        if name != "routes" and getattr(old, name) != getattr(new, name)
    ]
    before = {route.name: route for route in old.routes}
    after = {route.name: route for route in new.routes}
    changed += [
        f"routes.{name}"
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    ]
    return changed


def _at(settings: Settings, dotted: str) -> object:
    value: object = settings
    for name in dotted.split("."):
        value = getattr(value, name)
    return value
