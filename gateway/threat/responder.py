"""Carry out a rule's responses, record the incident, and lift incidents again.

Shared by the running gateway (automatic responses) and ``gateway incident`` (admin actions), so
both record the same incidents and audit events. Every step is audited: the incident itself as
``threat.<rule>`` (with the actions and their outcome in its details), an admin's block, unblock and
lift as ``incident.block_ip``, ``incident.unblock_ip`` and ``incident.lifted``.

Forced step-up: the session's second-factor uses are dropped and its level set back to one factor,
then its id is broadcast on the session-revocation channel so every replica drops its cached copy.
The MFA stage then sends the user to the MFA page on the next request to a route that needs a
second factor; succeeding there rotates the session id as any elevation does. The session itself
(and the user's work in it) survives: cheaper for a false positive than a revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import aiohttp
import msgspec

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.identity.accounts import AccountService
from gateway.identity.levels import AuthLevel
from gateway.identity.sessions import (
    Session,
    SessionStore,
)
from gateway.reasons import reason_problem
from gateway.settings.schema import ThreatRule
from gateway.store.fast.base import FastState, StateUnavailable
from gateway.threat.addresses import counted_as
from gateway.threat.blocks import BlockEntry, BlockStore
from gateway.threat.incidents import Action, Incident, IncidentStore, new_incident_id
from gateway.threat.lockdown import Change, LockdownState, LockdownStore
from gateway.threat.manual import BlockRefused, manual_network, parse_network

__all__ = ["Emitter", "Responder", "Webhook"]

logger = logging.getLogger("gateway.threat")

# Receives each incident as a flat JSON-able mapping (the runtime's event sinks).
Emitter = Callable[[Mapping[str, object]], None]


class Webhook:
    """POSTs incidents as JSON from a bounded queue; a full queue drops (and counts) the newest."""

    def __init__(self, url: str, *, queue_size: int, timeout: float) -> None:
        self.url = url
        self.dropped = 0
        self.sent = 0
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue_size)
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    def enqueue(self, document: Mapping[str, object]) -> None:
        try:
            self._queue.put_nowait(json.dumps(dict(document), default=str).encode())
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                body = await self._queue.get()
                try:
                    async with http.post(
                        self.url, data=body, headers={"content-type": "application/json"}
                    ) as resp:
                        if resp.status >= 300:
                            logger.warning("threat webhook answered %d", resp.status)
                        else:
                            self.sent += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    logger.warning("threat webhook failed: %s", exc or type(exc).__name__)


# Passes of a step-up over a sign-in's sessions: one, and again for hand-offs redeemed during it.
_STEP_UP_PASSES: Final = 3


class Responder:
    """Applies responses and lifts them."""

    def __init__(
        self,
        *,
        state: FastState,
        audit: AuditLog,
        accounts: AccountService | None,
        sessions: SessionStore | None,
        clock: Clock,
        emit: Emitter | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        self._state = state
        self._audit = audit
        self._accounts = accounts
        self._sessions = sessions
        self._clock = clock
        self.emit = emit
        self.webhook = webhook
        self.blocks = BlockStore(state, clock, db=audit.db)
        self.incidents = IncidentStore(state)
        self.lockdown = LockdownStore(state, clock, audit, db=audit.db)
        # Told of every incident a rule raises (the durable incident records of gateway.response,
        # which this floor cannot import); a listener that fails is logged, never the detection's end.
        self.listeners: list[Callable[[Incident], Awaitable[object]]] = []

    # -- automatic responses -----------------------------------------------------------------------

    async def respond(
        self,
        rule_name: str,
        rule: ThreatRule,
        *,
        subject: str = "",
        ip: str = "",
        session: str = "",
        network: str = "",
        summary: str,
        evidence: Mapping[str, str | int | float],
    ) -> Incident:
        """Record an incident for ``rule`` and carry out its responses (each one audited).

        ``network``: what the rule counted ``ip`` under (its /64, or a wider IPv6 network), which a
        ``block_ip`` response blocks; by default the address as the rules count it."""
        incident_id = new_incident_id()
        actions: list[Action] = []
        for response in rule.responses:
            if response in ("alert", "webhook"):
                continue
            action = await self._act(
                response,
                rule,
                incident_id,
                subject=subject,
                ip=ip,
                session=session,
                rule_name=rule_name,
                network=network,
            )
            if action is not None:
                actions.append(action)
        incident = Incident(
            id=incident_id,
            rule=rule_name,
            at=self._clock.time(),
            subject=subject,
            ip=ip,
            session=session,
            summary=summary,
            evidence=dict(evidence),
            actions=tuple(actions),
        )
        try:
            await self.incidents.save(incident, new=True)
        except StateUnavailable:
            logger.error("incident %s could not be stored (it is in the audit trail)", incident_id)
        document = incident_document(incident)
        await self._audit.record(
            f"threat.{rule_name}",
            actor="system:threat",
            subject=subject,
            ip=ip,
            outcome="detected",
            details={k: v for k, v in document.items() if k not in ("subject", "ip")},
        )
        if self.emit is not None:
            try:
                self.emit(document)
            except Exception:
                logger.exception("threat alert emitter failed")
        if self.webhook is not None and "webhook" in rule.responses:
            self.webhook.enqueue(document)
        for listener in self.listeners:
            try:
                await listener(incident)
            except Exception:
                logger.exception("incident %s: a listener failed (the detection stands)", incident_id)
        logger.warning("threat %s: %s (incident %s)", rule_name, summary, incident_id)
        return incident

    async def _act(
        self,
        response: str,
        rule: ThreatRule,
        incident_id: str,
        *,
        subject: str,
        ip: str,
        session: str,
        rule_name: str,
        network: str = "",
    ) -> Action | None:
        try:
            if response == "lockdown":
                return await self._lockdown(incident_id, rule_name)
            if response == "block_ip":
                return await self._block(ip, rule, incident_id, network)
            if response == "lock_account":
                return await self._lock(subject, incident_id)
            if response == "revoke_session":
                return await self._revoke_session(subject, session)
            if response == "revoke_sessions":
                return await self._revoke_sessions(subject)
            if response == "revoke_unfinished":
                return await self._revoke_unfinished(subject)
            if response == "step_up":
                return await self._step_up(subject, session)
        except Exception as exc:
            # One failed response must not stop the others; the incident records the failure.
            logger.exception("threat response %s failed", response)
            return Action(response, subject or ip, ok=False, note=str(exc) or type(exc).__name__)
        return None

    async def _block(self, ip: str, rule: ThreatRule, incident_id: str, network: str = "") -> Action | None:
        if not ip:
            return None
        until = self._clock.time() + float(rule.block_for)
        # What the rule counted (an IPv6 address's /64, or the network a wider rule counts): a block of
        # the one address would be left by the next address of the same subscriber.
        entry = await self.blocks.add(
            network or counted_as(ip),
            until=until,
            incident=incident_id,
            reason="threat",
            actor="system:threat",
        )
        return Action("block_ip", entry.cidr, until=until)

    async def _lockdown(self, incident_id: str, rule_name: str) -> Action:
        # Every route: a rule knows what it saw, not which application the attacker is after. A person
        # narrows it (`gateway lockdown on --route`) or lifts it once the incident is understood.
        # A lockdown already on is kept: one of every route is held by this incident too (a person's
        # is left as it is), one of some routes is widened and put back when the incidents are lifted
        # (an attack run's rule replaced an operator's lockdown, and lifting the incident opened every
        # route). One atomic change (LockdownStore.update): a lift racing it loses neither.
        reason = f"threat rule {rule_name} ({incident_id})"
        store = self.lockdown

        def lock(current: LockdownState) -> Change | None:
            if not (current.on and current.routes is None):
                return store.widened(current, incident=incident_id, reason=reason), None
            if current.incident and incident_id not in current.incidents:
                return store.held(current, (*current.incidents, incident_id)), ("system:threat", reason)
            return None

        new = await store.update(lock)
        note = "" if new.incident == incident_id else f"on already ({new.actor})"
        return Action("lockdown", "all routes", note=note)

    async def _revoke_session(self, subject: str, session: str) -> Action | None:
        if not session or self._sessions is None:
            return None
        count = await self._revoke_each(await self.find_sessions(subject, session))
        return Action("revoke_session", session, ok=count > 0, note=f"{count} revoked")

    async def _revoke_each(self, sessions: list[Session]) -> int:
        """End each session with its whole sign-in (its sessions on every host): a stolen sign-in's
        app-host sessions must not outlive the one the detection named."""
        assert self._sessions is not None
        return sum([await self._sessions.revoke_family(s.family) for s in sessions])

    async def _revoke_sessions(self, subject: str) -> Action | None:
        user_id = await self._user(subject)
        if user_id is None or self._sessions is None:
            return None
        if self._accounts is None:
            count: int | None = await self._sessions.revoke_user(user_id)
        else:
            # Through the account service: a store that does not answer leaves them owed an end.
            count = await self._accounts.end_sessions(user_id, actor="system:threat")
        return Action("revoke_sessions", subject, note=f"{count if count is not None else 'owed'} revoked")

    async def _revoke_unfinished(self, subject: str) -> Action | None:
        """The account's sessions still owing their second factor, not the owner's finished ones.

        Failed second factors come from a sign-in that has the password and not the factor: ending
        the owner's two-factor sessions as well let a stolen password alone sign the owner out every
        window (a re-attack run), where the one who holds those sessions passed the factor.
        """
        if self._sessions is None:
            return None
        unfinished = [s for s in await self.find_sessions(subject) if s.level < AuthLevel.TWO_FACTOR]
        count = await self._revoke_each(unfinished)
        return Action("revoke_unfinished", subject, note=f"{count} revoked")

    async def _step_up(self, subject: str, session: str) -> Action | None:
        """Demote the session the rule saw and every session of its sign-in: the auth host's session
        hands new sessions to every app host, and an attack run stepped up on an app host's session
        got a two-factor one back from the auth host's at once. Read again after each pass: a hand-off
        redeemed meanwhile joined the family (it copies its issuer as it is now, see the hand-off)."""
        if not subject or self._sessions is None:
            return None
        families = {s.family for s in await self.find_sessions(subject, session)}
        demoted: set[str] = set()
        for _ in range(_STEP_UP_PASSES):
            targets = [
                s
                for s in await self.find_sessions(subject)
                if s.family in families and s.id_hash not in demoted
            ]
            if not targets:
                break
            for s in targets:
                if await self._sessions.demote(s.id_hash):
                    demoted.add(s.id_hash)
        count = len(demoted)
        return Action("step_up", session or subject, ok=count > 0, note=f"{count} session(s)")

    async def _lock(self, subject: str, incident_id: str) -> Action | None:
        user_id = await self._user(subject)
        if user_id is None or self._accounts is None:
            return None
        await self._accounts.disable(user_id, actor=f"system:threat:{incident_id}")
        return Action("lock_account", subject)

    async def _user(self, username: str) -> int | None:
        if not username or self._accounts is None:
            return None
        user = await self._accounts.find(username)
        return user.id if user is not None else None

    async def find_sessions(self, username: str, prefix: str = "") -> list[Session]:
        """The user's live sessions whose id hash starts with ``prefix`` (all of them for "")."""
        user_id = await self._user(username)
        if user_id is None or self._sessions is None:
            return []
        return [s for s in await self._sessions.list_user(user_id) if s.id_hash.startswith(prefix)]

    # -- admin actions -----------------------------------------------------------------------------

    async def block_ip(self, cidr: str, *, seconds: float, actor: str, reason: str = "") -> Incident:
        """Block ``cidr`` for ``seconds`` by hand: recorded as a ``manual`` incident.

        Raises:
            BlockRefused: not an address or network, or too broad to block by hand
                (:mod:`gateway.threat.manual`), or a reason that is not one line of text.
            StateUnavailable: the fast state cannot answer.
        """
        text = str(manual_network(cidr))
        problem = reason_problem(reason) if reason else None
        if problem is not None:
            raise BlockRefused(problem)
        incident_id = new_incident_id()
        until = self._clock.time() + seconds
        await self.blocks.add(text, until=until, incident=incident_id, reason=reason or "manual", actor=actor)
        incident = Incident(
            id=incident_id,
            rule="manual",
            at=self._clock.time(),
            ip=text,
            summary=reason or f"blocked by {actor}",
            actions=(Action("block_ip", text, until=until),),
            actor=actor,
        )
        await self.incidents.save(incident, new=True)
        await self._audit.record(
            "incident.block_ip",
            actor=actor,
            subject=text,
            ip=text,
            details={"incident": incident_id, "seconds": seconds, "reason": reason},
        )
        return incident

    async def unblock_ip(self, cidr: str, *, actor: str) -> int:
        """Lift the block of exactly ``cidr``; returns 0 if it was not blocked.

        Raises:
            BlockRefused: not an address or network.
            StateUnavailable: the fast state cannot answer.
        """
        text = str(parse_network(cidr))
        removed = await self.blocks.remove(text)
        # A request to lift what was not blocked changed nothing: recorded as refused, not as done.
        await self._audit.record(
            "incident.unblock_ip",
            actor=actor,
            subject=text,
            ip=text,
            outcome="success" if removed else "failure",
            details={"removed": removed} if removed else {"removed": 0, "error": "not-blocked"},
        )
        return removed

    async def _unlock(self, incident_id: str, actor: str) -> None:
        """Let go of the lockdown for ``incident_id``: only one it holds (a person's stays); it ends,
        or comes back as the one it widened, once no other incident holds it."""
        reason = f"incident {incident_id} lifted"
        store = self.lockdown

        def unlock(current: LockdownState) -> Change | None:
            if not (current.on and incident_id in current.incidents):
                return None
            if others := tuple(i for i in current.incidents if i != incident_id):
                return store.held(current, others), (actor, reason)
            if current.previous is not None:
                return store.restored(current.previous), (actor, reason)
            return store.opened(actor=actor, reason=reason), None

        await store.update(unlock)

    async def lift(self, incident_id: str, *, actor: str) -> Incident | None:
        """Undo what can be undone of an incident (unblock, re-enable); None if unknown.

        Raises:
            StateUnavailable: the fast state cannot answer.
        """
        incident = await self.incidents.get(incident_id)
        if incident is None:
            return None
        actions: list[Action] = []
        for action in incident.actions:
            if not action.liftable:
                actions.append(action)
                continue
            note = action.note
            if action.kind == "block_ip":
                note = await self._release_block(incident.id, action.target) or note
            elif action.kind == "lock_account":
                note = await self._release_lock(incident.id, action.target, actor) or note
            elif action.kind == "lockdown":
                await self._unlock(incident.id, actor)
            actions.append(msgspec.structs.replace(action, lifted=True, note=note))
        lifted = msgspec.structs.replace(
            incident,
            actions=tuple(actions),
            status="lifted",
            lifted_by=actor,
            lifted_at=self._clock.time(),
        )
        await self.incidents.save(lifted)
        await self._audit.record(
            "incident.lifted",
            actor=actor,
            subject=incident.subject or incident.ip,
            ip=incident.ip,
            details={
                "incident": incident.id,
                "rule": incident.rule,
                "lifted": [f"{a.kind}:{a.target}" for a in actions if a.lifted],
            },
        )
        return lifted

    async def _release_block(self, incident_id: str, cidr: str) -> str:
        """Lift the block ``incident_id`` holds on ``cidr``; another open incident's claim on it stays in
        force (the longest one). Returns a note when the address stays blocked."""
        now = self._clock.time()
        claims = [
            (action.until, other)
            for other in await self.incidents.latest(_CLAIMS_SCANNED)
            if other.id != incident_id and other.status == "open"
            for action in other.actions
            if action.kind == "block_ip" and action.target == cidr and action.liftable
            and action.until is not None and action.until > now
        ]  # fmt: skip
        successor = None
        if claims:
            until, other = max(claims, key=lambda claim: claim[0])
            reason = "threat" if other.rule != "manual" else other.summary or "manual"
            successor = BlockEntry(cidr, until, other.id, reason, other.actor or "system:threat")
        held = await self.blocks.release(cidr, incident=incident_id, successor=successor)
        return f"block kept: {held.incident or held.actor or 'another block'} holds it" if held else ""

    async def _release_lock(self, incident_id: str, username: str, actor: str) -> str:
        """Enable the account again only if this incident's lock is what keeps it disabled: not when
        someone (an admin, another incident) disabled it after, nor when it was already disabled before
        (the incident's lock then changed nothing). Returns a note when the account stays disabled."""
        if self._accounts is None:
            return ""
        user = await self._accounts.find(username)
        if user is None:
            return ""
        history = sorted(
            [
                *await self._audit.events(subject=user.username, kind="user.disabled", limit=20),
                *await self._audit.events(subject=user.username, kind="user.enabled", limit=20),
            ],
            key=lambda event: event.id,
            reverse=True,
        )
        ours = f"system:threat:{incident_id}"
        latest = next((e for e in history if e.kind == "user.disabled"), None)
        if latest is None:  # the record is gone (erased): nothing shows the lock is this incident's
            return "account kept disabled: the audit trail does not show this lock; enable it by hand"
        if latest.actor != ours:
            return f"account kept disabled: disabled since by {latest.actor}"
        before = next((e for e in history if e.id < latest.id), None)
        if before is not None and before.kind == "user.disabled":
            return f"account kept disabled: already disabled by {before.actor}"
        await self._accounts.enable(user.id, actor=actor)
        return ""


#: How many of the newest incidents are searched for other claims on an address being unblocked.
_CLAIMS_SCANNED: Final = 200


def incident_document(incident: Incident) -> dict[str, object]:
    """The incident as one flat event for sinks and webhooks."""
    return {
        "event": "threat.detected",
        "incident": incident.id,
        "rule": incident.rule,
        "at": incident.at,
        "subject": incident.subject,
        "ip": incident.ip,
        "session": incident.session,
        "summary": incident.summary,
        "evidence": dict(incident.evidence),
        "actions": [
            {"kind": a.kind, "target": a.target, "ok": a.ok, "note": a.note, "until": a.until}
            for a in incident.actions
        ],
    }
