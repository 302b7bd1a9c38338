"""The threat rules: signals from requests and audit events, counted in the fast state.

Signals arrive from two hooks that must never slow anything down: the request observer
(``observe``) and the audit listener (``on_audit``). Both only filter and put a small tuple on a
bounded queue (a full queue drops and counts: detection degrades, traffic never does). One worker
task takes them off the queue and counts them in the fast state, so all replicas count together.

Rules (``threat:`` settings; thresholds are ``count`` signals within ``window``)::

    brute_force       failed sign-in steps (password or second factor) per account, and wrong
                      current passwords on the portal's password change (a stolen session guessing)
    spraying          failed sign-ins per address over distinct accounts (spraying, stuffing)
    mfa_failures      failed second-factor attempts per account (MFA fatigue)
    reconnaissance    policy denials per principal (user, or address without a session)
    session_hijack    a session used from a new address AND a new User-Agent (vs. its sign-in)
    impossible_travel two sign-ins of one account further apart than max_speed_kmh allows (a person who
                      opted out of the "geolocation" purpose is never looked up: ``may_locate``)

A counter rule fires when its fixed-window counter reaches ``count`` exactly, so it fires once per
window however many replicas count. A hijack fires once per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from gateway.audit.trail import SecurityEvent
from gateway.authz.decision import Reason
from gateway.clock import Clock
from gateway.observe.record import AccessDecision, AuthKind, RequestRecord
from gateway.settings.schema import ThreatRule, ThreatSettings
from gateway.store.fast.base import FastState, StateUnavailable
from gateway.threat.addresses import counted_as, network_of
from gateway.threat.blocks import IpBlocks
from gateway.threat.geo import GeoLocator, distance_km
from gateway.threat.responder import Responder

__all__ = ["ThreatDetector", "location_key", "person_keys"]

logger = logging.getLogger("gateway.threat")

# A password change refused for a wrong current password (the only failure it records): a password
# guessed through a stolen session, counted as a failed password step of the account. An attack run
# guessed it on /.gateway/account/password with no incident (the regulator's lock was the only limit).
_PASSWORD_CHANGE: Final = "user.password_changed"  # noqa: S105 - an audit kind
# Denials that are a principal probing the policy; not "go do MFA" or "your address is blocked".
_PROBE_REASONS: Final = frozenset({Reason.POLICY_DENY, Reason.NO_MATCHING_RULE})
_BASELINES: Final = 50_000
_UA_LIMIT: Final = 256  # sessions keep the first 256 characters of the User-Agent
_HIJACK_MEMORY: Final = 86400.0

_Signal = tuple[str, ...]


# The fast-state keys that name a person: their failure counters and their last sign-in's position
# (:func:`person_keys`, which an erasure, a restriction and an objection delete).
_COUNTER: Final = "threat:c:"
_FAILURES: Final = "bf:{}"
_MFA_FAILURES: Final = "mfa:{}"


def location_key(username: str) -> str:
    """Where the position of ``username``'s last sign-in is kept (impossible travel)."""
    return f"threat:geo:{username}"


def person_keys(username: str) -> tuple[str, ...]:
    """The detector's keys that name ``username`` (the counters by address and name go with their
    window: they cannot be found by the name alone)."""
    return (
        location_key(username),
        _COUNTER + _FAILURES.format(username),
        _COUNTER + _MFA_FAILURES.format(username),
    )


class ThreatDetector:
    """Counts signals, fires rules through the ``Responder``, keeps ``IpBlocks`` current."""

    def __init__(
        self,
        *,
        settings: Callable[[], ThreatSettings],
        state: FastState,
        responder: Responder,
        blocks: IpBlocks,
        clock: Clock,
        queue_size: int = 10_000,
        may_locate: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """Wire the detector.

        Args:
            settings: The current ``threat`` settings (read per signal, so a reload applies at once).
            state: The shared fast state (counters, block list).
            responder: Carries out the responses.
            blocks: The in-process matcher the data plane checks.
            clock: Unix time.
            queue_size: Signals waiting at most; beyond it they are dropped and counted.
            may_locate: Whether the account of this username may be geolocated (it has not objected
                to the "geolocation" purpose, nor is its processing restricted). Asked before every
                lookup; an error counts as no. None: everyone may be.
        """
        self._settings = settings
        self._may_locate = may_locate
        self._state = state
        self.responder = responder
        self.blocks = blocks
        self._clock = clock
        self._queue: asyncio.Queue[_Signal] = asyncio.Queue(maxsize=queue_size)
        self.dropped = 0
        # session hash prefix -> (sign-in address, sign-in User-Agent); None: being looked up / unknown.
        self._baselines: dict[str, tuple[str, str] | None] = {}
        self._geo: GeoLocator | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- hooks (on the event loop, right after a request or an audit write: enqueue only) -------------

    def observe(self, rec: RequestRecord) -> None:
        """Request observer: denials (reconnaissance) and session use (hijack)."""
        settings = self._settings()
        if not settings.enabled:
            return
        probing = rec.decision is AccessDecision.DENY and rec.reason in _PROBE_REASONS
        if probing and settings.reconnaissance.enabled:
            self._put(("deny", rec.user, rec.client_ip, rec.session))
        elif (
            rec.auth is AuthKind.BEARER
            and rec.decision is AccessDecision.UNAUTHENTICATED
            and settings.token_guessing.enabled
        ):
            self._put(("token", rec.client_ip))  # a token was sent and is none (an attack run's 3,000)
        if rec.session and settings.session_hijack.enabled:
            baselines = self._baselines
            if rec.session not in baselines:
                if len(baselines) >= _BASELINES:
                    baselines.clear()
                baselines[rec.session] = None
                self._put(("session", rec.user, rec.session, rec.client_ip, rec.user_agent[:_UA_LIMIT]))
                return
            base = baselines[rec.session]
            if base is not None and rec.client_ip != base[0] and rec.user_agent[:_UA_LIMIT] != base[1]:
                baselines[rec.session] = None  # fire once; the session is revoked or stepped up
                self._put(("hijack", rec.user, rec.session, rec.client_ip, rec.user_agent[:_UA_LIMIT]))

    def on_audit(self, event: SecurityEvent) -> None:
        """Audit listener: failed sign-in steps (and wrong current passwords), and successful sign-ins
        for impossible travel."""
        settings = self._settings()
        if not settings.enabled or event.kind.startswith(("threat.", "incident.")):
            return
        if event.outcome == "failure" and (
            event.kind.startswith(("signin.", "mfa.")) or event.kind == _PASSWORD_CHANGE
        ):
            self._put(("failure", event.kind, event.subject, event.ip))
        elif (
            event.outcome == "success"
            and event.kind.startswith("signin.")
            and settings.geoip_database is not None
            and settings.impossible_travel.enabled
            and event.subject
            and event.ip
        ):
            self._put(("signin", event.subject, event.ip, repr(event.at.timestamp())))

    def _put(self, signal: _Signal) -> None:
        try:
            self._queue.put_nowait(signal)
        except asyncio.QueueFull:
            self.dropped += 1

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background work. ``blocks`` is kept current by the worker's block feed
        (:class:`gateway.threat.blocks.BlockFeed`), which runs whether detection is on or not."""
        if self.responder.webhook is not None:
            self.responder.webhook.start()
        self._tasks = [asyncio.ensure_future(self._work())]

    async def close(self) -> None:
        """Stop the background tasks (signals still queued are dropped)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.responder.webhook is not None:
            await self.responder.webhook.close()
        if self._geo is not None:
            self._geo.close()

    async def drain(self) -> None:
        """Wait until every queued signal is handled (tests, graceful shutdown)."""
        await self._queue.join()

    async def process_pending(self) -> int:
        """Handle the queued signals now, in this task (tests drive the detector this way)."""
        handled = 0
        while not self._queue.empty():
            signal = self._queue.get_nowait()
            try:
                await self.handle(signal)
            finally:
                self._queue.task_done()
            handled += 1
        return handled

    async def _work(self) -> None:
        while True:
            signal = await self._queue.get()
            try:
                await self.handle(signal)
            except StateUnavailable as exc:
                logger.warning("threat signal %s not counted: %s", signal[0], exc)
            except Exception:
                logger.exception("threat signal %s failed", signal[0])
            finally:
                self._queue.task_done()

    # -- rules ---------------------------------------------------------------------------------------

    async def handle(self, signal: _Signal) -> None:
        """Count one signal and fire the rules it completes."""
        settings = self._settings()
        kind = signal[0]
        if kind == "failure":
            await self._failure(settings, *signal[1:])
        elif kind == "deny":
            await self._deny(settings, *signal[1:])
        elif kind == "token":
            await self._token(settings, signal[1])
        elif kind in ("session", "hijack"):
            await self._session(settings, kind, *signal[1:])
        elif kind == "signin":
            await self._travel(settings, signal[1], signal[2], float(signal[3]))

    async def _count(self, rule: ThreatRule, key: str) -> tuple[bool, int]:
        n = await self._state.incr_window(_COUNTER + key, window=float(rule.window))
        return n == rule.count, n

    async def _failure(self, settings: ThreatSettings, kind: str, subject: str, ip: str) -> None:
        rule = settings.brute_force
        if rule.enabled and subject:
            fire, n = await self._count(rule, _FAILURES.format(subject))
            if fire:
                await self.responder.respond(
                    "brute_force",
                    rule,
                    subject=subject,
                    ip=ip,
                    summary=f"{n} failed sign-in steps for {subject!r} within {rule.window:g}s",
                    evidence={"failures": n, "window": float(rule.window), "last_kind": kind},
                )
        if settings.spraying.enabled and ip:
            # Distinct accounts per address (an IPv6 one by its /64: threat.addresses).
            await self._spraying("spraying", settings.spraying, "sp", counted_as(ip), subject, ip)
        wide = settings.spraying_network
        network = network_of(ip, wide.prefix, wide.prefix_v4) if wide.enabled and ip else None
        if network is not None:
            await self._spraying("spraying_network", wide, "spn", network, subject, ip)
        rule = settings.mfa_failures
        if rule.enabled and subject and kind.startswith("mfa."):
            fire, n = await self._count(rule, _MFA_FAILURES.format(subject))
            if fire:
                await self.responder.respond(
                    "mfa_failures",
                    rule,
                    subject=subject,
                    ip=ip,
                    summary=f"{n} failed second-factor attempts for {subject!r} within {rule.window:g}s",
                    evidence={"failures": n, "window": float(rule.window)},
                )

    async def _spraying(
        self, name: str, rule: ThreatRule, tag: str, source: str, subject: str, ip: str
    ) -> None:
        """Count ``subject`` once per window among the accounts failing from ``source`` (an address or
        a network), and fire ``rule`` when that makes ``rule.count`` distinct accounts."""
        fresh = await self._state.set(
            f"threat:s:{tag}:{source}:{subject or '~'}", b"1", ttl=float(rule.window), only_if_absent=True
        )
        if not fresh:
            return
        fire, n = await self._count(rule, f"{tag}:{source}")
        if fire:
            await self.responder.respond(
                name,
                rule,
                ip=ip,
                network=source,
                summary=f"failed sign-ins for {n} accounts from {source} within {rule.window:g}s",
                evidence={"accounts": n, "window": float(rule.window), "network": source},
            )

    async def _deny(self, settings: ThreatSettings, user: str, ip: str, session: str) -> None:
        rule = settings.reconnaissance
        principal = f"user:{user}" if user else f"ip:{counted_as(ip)}"
        fire, n = await self._count(rule, f"rc:{principal}")
        if fire:
            await self.responder.respond(
                "reconnaissance",
                rule,
                subject=user,
                ip=ip,
                session=session,
                summary=f"{n} denied requests by {principal} within {rule.window:g}s",
                evidence={"denials": n, "window": float(rule.window), "principal": principal},
            )

    async def _token(self, settings: ThreatSettings, ip: str) -> None:
        rule = settings.token_guessing
        source = counted_as(ip)
        fire, n = await self._count(rule, f"tk:{source}")
        if fire:
            await self.responder.respond(
                "token_guessing",
                rule,
                subject="",
                ip=ip,
                session="",
                summary=f"{n} unusable API tokens from {source} within {rule.window:g}s",
                evidence={"tokens": n, "window": float(rule.window), "address": source},
            )

    async def _session(
        self, settings: ThreatSettings, kind: str, user: str, prefix: str, ip: str, agent: str
    ) -> None:
        rule = settings.session_hijack
        if kind == "session":
            found = await self.responder.find_sessions(user, prefix)
            if len(found) != 1 or not found[0].ip:
                return  # unknown (or ambiguous): leave the baseline unset, never guess
            base = (found[0].ip, found[0].user_agent[:_UA_LIMIT])
            if len(self._baselines) >= _BASELINES:
                self._baselines.clear()
            self._baselines[prefix] = base
            if ip == base[0] or agent == base[1]:
                return
        else:
            found = []
        # Once per session over all replicas.
        if not await self._state.set(f"threat:f:hj:{prefix}", b"1", ttl=_HIJACK_MEMORY, only_if_absent=True):
            return
        baseline = (found[0].ip, found[0].user_agent) if found else ("", "")
        await self.responder.respond(
            "session_hijack",
            rule,
            subject=user,
            ip=ip,
            session=prefix,
            summary=f"session {prefix} of {user!r} used from {ip} with a different User-Agent",
            evidence={"new_ip": ip, "new_user_agent": agent, "signin_ip": baseline[0]},
        )

    async def _travel(self, settings: ThreatSettings, subject: str, ip: str, at: float) -> None:
        path = settings.geoip_database
        if path is None:
            return
        key = location_key(subject)
        if not await self._locatable(subject):
            # The person opted out: no lookup, and the position kept from an earlier sign-in goes too.
            await self._state.delete(key)
            return
        if self._geo is None or self._geo.path != path:
            if self._geo is not None:
                self._geo.close()
            self._geo = GeoLocator(path)
        here = self._geo.locate(ip)
        if here is None:
            return
        rule = settings.impossible_travel
        raw = await self._state.get(key)
        await self._state.set(
            key,
            json.dumps({"lat": here[0], "lon": here[1], "t": at, "ip": ip}).encode(),
            ttl=float(rule.window),
        )
        if raw is None:
            return
        try:
            prev = json.loads(raw)
            there, then, prev_ip = (float(prev["lat"]), float(prev["lon"])), float(prev["t"]), str(prev["ip"])
        except (ValueError, KeyError, TypeError):
            return
        km = distance_km(there, here)
        hours = max(at - then, 1.0) / 3600
        if km < rule.min_distance_km or km / hours <= rule.max_speed_kmh:
            return
        await self.responder.respond(
            "impossible_travel",
            rule,
            subject=subject,
            ip=ip,
            summary=f"{subject!r} signed in {km:.0f} km from the previous sign-in ({prev_ip}) "
            f"{hours * 60:.0f} min later",
            evidence={"km": round(km), "minutes": round(hours * 60), "previous_ip": prev_ip},
        )

    async def _locatable(self, subject: str) -> bool:
        if self._may_locate is None:
            return True
        try:
            return await self._may_locate(subject)
        except Exception:
            # Not knowing whether the person objected is not permission: skip this sign-in.
            logger.warning("could not tell whether %r may be geolocated; not located", subject, exc_info=True)
            return False
