"""Lockdown: the switch that shuts the gateway's applications in an emergency, and who still gets in.

The switch lives in the fast state under one key, ``lockdown:state`` (JSON, no expiry: a lockdown
ends only when someone switches it off, never by itself). Every change is announced on the
``lockdown`` channel; each worker of every replica keeps the switch in memory (:class:`Lockdown`),
re-reads the key when it hears the broadcast, and every ``refresh_every`` seconds anyway, so a lost
broadcast or a dropped subscription is bounded by that interval. The data plane asks only the
in-memory copy: no fast-state read per request (invariant 5).

The switch is also kept in the database (``kv_settings``, key ``lockdown``), written with every change:
a fast state that lost it (Redis restarted without persistence, a failover that dropped the write)
gets it back from there at the next read, and a worker that cannot read the fast state reads the
database instead, so a replica cut off from Redis still closes its public paths (both were attack-run
findings: the lockdown silently off after a Redis restart, and public routes served on a cut-off
replica). Only when neither can be read does a worker keep the last state it knew (on stays on, off
stays off): failing closed on every hiccup would turn a blip into a full outage, and while the fast
state is down no session can be read either.

Who passes a lockdown (:func:`is_break_glass`): a session that speaks for the ``lockdown.break_glass_group``
(an identity provider's group, written ``<provider>:<group>`` as sessions keep it, or the role of that
name as the policy sees it: a local role of the account, or reached through the policy's ``g`` lines) *and* used a WebAuthn factor
(passkey or security key) in this session within ``lockdown.max_factor_age``. A TOTP code or a recovery
code is not enough: those can be phished or read off a stolen phone, a WebAuthn assertion cannot.

Every switch is an audit record, ``lockdown.on`` / ``lockdown.off`` (actor, routes, reason), which the
audit listener also sends to the security-event sinks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable
from typing import Final

import msgspec

from gateway.audit.trail import AuditLog
from gateway.authz.live import LivePolicy
from gateway.authz.principals import principals_of
from gateway.clock import Clock
from gateway.errors import BadRequest
from gateway.identity.levels import Factor
from gateway.identity.sessions import Session
from gateway.reasons import reason_problem
from gateway.settings.schema import LockdownSettings
from gateway.store.db import Database
from gateway.store.fast.base import FastState, StateUnavailable
from gateway.store.fast.follow import follow_channel
from gateway.store.kv import read_kv_or_none, write_kv

__all__ = [
    "LOCKDOWN_CHANNEL",
    "LOCKDOWN_KEY",
    "MAX_REASON",
    "Change",
    "Lockdown",
    "LockdownRefused",
    "LockdownState",
    "LockdownStore",
    "NewPasskeys",
    "breaks_glass",
    "check_request",
    "in_break_glass_group",
    "is_break_glass",
    "passkey_held_back",
    "recent_passkey",
]

logger = logging.getLogger("gateway.lockdown")

LOCKDOWN_KEY: Final = "lockdown:state"
# The database's copy (kv_settings).
_DB_KEY: Final = "lockdown"
LOCKDOWN_CHANNEL: Final = "lockdown"
#: The longest reason kept with a switch (it goes into the audit trail and every status answer).
MAX_REASON: Final = 2000


class LockdownRefused(BadRequest):
    """A switch that cannot be made as asked (unknown route, no reason): 400, nothing changed."""

    reason = "lockdown-refused"
    title = "Lockdown not changed"


class LockdownState(msgspec.Struct, frozen=True, omit_defaults=True):
    """The switch as stored. ``routes`` None: every route; otherwise only these route names."""

    on: bool = False
    routes: tuple[str, ...] | None = None
    since: float = 0.0
    actor: str = ""
    reason: str = ""
    # The incident whose threat rule switched it on ("" when a person did).
    incident: str = ""
    # Other incidents whose rules found it on: it ends only once every one is lifted (a re-attack
    # run's lift of the first opened every route while the second was still unlifted).
    also: tuple[str, ...] = ()
    # The lockdown a threat rule widened to every route (a person's, on some routes): put back when
    # the incident is lifted, never dropped with it (an attack run's lift opened every route).
    previous: LockdownState | None = None

    @property
    def incidents(self) -> tuple[str, ...]:
        """Every incident holding it (none: a person's)."""
        return (self.incident, *self.also) if self.incident else self.also

    def covers(self, route: str) -> bool:
        """Whether a request to ``route`` is locked now."""
        return self.on and (self.routes is None or route in self.routes)

    def to_json(self) -> dict[str, object]:
        """The status document of the CLI's ``--json`` and ``GET /api/lockdown``."""
        return {
            "on": self.on,
            "all_routes": self.on and self.routes is None,
            "routes": list(self.routes) if self.routes is not None else [],
            "since": self.since or None,
            "actor": self.actor,
            "reason": self.reason,
            "incident": self.incident,
            # Every incident holding it, and what lifting them all puts back (None: it goes off).
            "incidents": list(self.incidents),
            "restores": None if self.previous is None else self.previous.to_json(),
        }


OFF: Final = LockdownState()
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(LockdownState).decode


def check_request(*, routes: Iterable[str], known: Collection[str], reason: str) -> tuple[str, ...] | None:
    """The route selection of a switch, checked: None for every route, else the named ones (sorted).

    Raises:
        LockdownRefused: a name no configured route has, or an empty or over-long reason.
    """
    text = reason.strip()
    if not text:
        raise LockdownRefused("Give a reason: it is kept in the audit trail and shown in the status.")
    problem = reason_problem(text)
    if problem is not None:
        raise LockdownRefused(f"The reason is not usable: {problem}.")
    if len(text) > MAX_REASON:
        raise LockdownRefused(f"The reason is longer than {MAX_REASON} characters.")
    chosen = sorted(set(routes))
    if not chosen:
        return None
    unknown = [name for name in chosen if name not in known]
    if unknown:
        names = ", ".join(sorted(known)) or "none"
        raise LockdownRefused(
            f"No route is named {', '.join(repr(n) for n in unknown)}; the configured routes are: {names}."
        )
    return tuple(chosen)


def in_break_glass_group(session: Session, *, group: str | None, roles: Collection[str]) -> bool:
    """Whether ``session`` speaks for ``group``: a provider's group it holds, or a role of that name."""
    return group is not None and (group in session.groups or group in roles)


def is_break_glass(
    session: Session, *, group: str | None, roles: Collection[str], max_factor_age: float, now: float
) -> bool:
    """Whether ``session`` may pass a lockdown (see the module docstring).

    Args:
        session: The request's session.
        group: ``lockdown.break_glass_group``; None lets nobody through.
        roles: The roles the session's principals hold as the policy sees them (its local roles and
            those reached through ``g`` lines; :meth:`gateway.authz.live.LivePolicy.roles_for`).
        max_factor_age: How long ago the WebAuthn factor may have been used, in seconds.
        now: Unix time.
    """
    return in_break_glass_group(session, group=group, roles=roles) and recent_passkey(
        session, max_age=max_factor_age, now=now
    )


def recent_passkey(session: Session, *, max_age: float, now: float) -> bool:
    """Whether ``session`` used a WebAuthn factor (a passkey or security key) within ``max_age``."""
    oldest = now - max_age
    # A factor "used in the future" is a clock step or a forged record: it does not count.
    return any(use.factor is Factor.WEBAUTHN and oldest <= use.at <= now + 60 for use in session.factors)


def breaks_glass(session: Session, *, policy: LivePolicy, settings: LockdownSettings, now: float) -> bool:
    """Whether ``session`` may pass a lockdown (the group or its role, and a recent WebAuthn factor)."""
    return is_break_glass(
        session,
        group=settings.break_glass_group,
        roles=policy.roles_for(principals_of(session)),
        max_factor_age=float(settings.max_factor_age),
        now=now,
    )


def passkey_held_back(
    session: Session, *, state: LockdownState, settings: LockdownSettings, now: float
) -> bool:
    """Whether a lockdown holds back a new passkey for ``session``: while one is on, anyone adds a
    passkey only from a session that used one within ``lockdown.max_factor_age``.

    A passkey is what breaks the glass, and what the admin API asks for during a lockdown
    (``admin.access.require_lockdown_passkey``), because a password, an authenticator code and an
    identity provider's sign-in can be phished. An account without a passkey may add its first with
    exactly those, so an attacker holding a break-glass admin's phished sign-in would add theirs and
    pass the lockdown switched on against them.

    Who could break the glass is not a question a session can answer for its account: the group comes
    from one provider's claims for one sign-in, and the passkey belongs to the account. An attack run
    registered the passkey from a session of the same account without the group (another provider
    entry linked to it, or a local password), then used it in a session with the group, and switched
    the lockdown off. So the hold is for everyone: a person who never had a passkey adds their first
    once the lockdown is off.
    """
    return state.on and not recent_passkey(session, max_age=float(settings.max_factor_age), now=now)


class NewPasskeys:
    """:func:`passkey_held_back` on the worker's lockdown switch, for the pages."""

    __slots__ = ("_lockdown",)

    def __init__(self, lockdown: Lockdown) -> None:
        self._lockdown = lockdown

    def held_back(self, session: Session, settings: LockdownSettings, now: float) -> bool:
        """Whether the lockdown in force holds back a new passkey for ``session``."""
        return passkey_held_back(session, state=self._lockdown.state, settings=settings, now=now)


class Lockdown:
    """A worker's in-memory copy of the switch; the data plane reads ``state`` and nothing else."""

    __slots__ = ("state",)

    def __init__(self, state: LockdownState = OFF) -> None:
        self.state = state

    def set(self, state: LockdownState) -> None:
        if state != self.state:
            logger.warning(
                "lockdown %s (%s) by %s: %s",
                "ON" if state.on else "off",
                "all routes" if state.routes is None else ", ".join(state.routes),
                state.actor or "-",
                state.reason or "-",
            )
        # One assignment: a request in flight sees the old or the new state, never a mix.
        self.state = state


# A change of the switch: the new state, and who made it and why when not its own actor and reason.
Change = tuple[LockdownState, tuple[str, str] | None]
_CAS_ROUNDS: Final = 32


def _kind(state: LockdownState) -> str:
    return "lockdown.on" if state.on else "lockdown.off"


class LockdownStore:
    """The switch in the fast state: read it, flip it (audited), and mirror it into a worker."""

    def __init__(
        self, state: FastState, clock: Clock, audit: AuditLog | None = None, *, db: Database | None = None
    ) -> None:
        self._state = state
        self._clock = clock
        self._audit = audit
        self._db = db

    async def read(self) -> LockdownState:
        """The switch as stored (off when never switched): the newer of the fast state's and the
        database's, and the database's when the fast state cannot answer.

        The newer by ``since``: a switch made while the fast state did not answer is only in the
        database, and an older value still in the fast state must not hide it (the re-attack run: a
        lockdown reported on while every worker stayed open).

        Raises:
            StateUnavailable: neither the fast state nor the database can answer.
        """
        stored = await self._from_db()
        try:
            raw = await self._state.get(LOCKDOWN_KEY)
        except StateUnavailable:
            if stored is None:
                raise
            return stored
        fast = self._decoded(raw) if raw is not None else None
        if stored is None or (fast is not None and fast.since >= stored.since):
            return fast if fast is not None else OFF
        # The database's is newer (or the fast state lost the switch): put it back for every reader,
        # unless the fast state changed meanwhile.
        with contextlib.suppress(StateUnavailable):
            await self._state.compare_and_set(LOCKDOWN_KEY, raw, _encode(stored))
        if stored.on and (fast is None or not fast.on):
            logger.warning("lockdown: the fast state did not hold the current switch; took the database's")
        return stored

    @staticmethod
    def _decoded(raw: bytes) -> LockdownState:
        try:
            return _decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Someone wrote junk into the key by hand: keep the gateway shut rather than guess open.
            logger.error("unreadable lockdown state in the fast state; treating it as on for every route")
            return LockdownState(on=True, reason="unreadable lockdown state")

    async def switch_on(
        self, routes: tuple[str, ...] | None, *, actor: str, reason: str, ip: str = ""
    ) -> LockdownState:
        """A person locks ``routes`` (None: every route), replacing any earlier selection; audited
        ``lockdown.on``. A threat rule's lockdown goes through :meth:`update` (:meth:`widened`).

        Raises:
            StateUnavailable: the fast state cannot answer (nothing was switched).
        """
        new = LockdownState(on=True, routes=routes, since=self._clock.time(), actor=actor, reason=reason)
        await self._write(new, "lockdown.on", ip=ip)
        return new

    def held(self, current: LockdownState, incidents: tuple[str, ...]) -> LockdownState:
        """``current``, kept on for ``incidents`` (the first named as the one that switched it on)."""
        # A new time: ``read`` keeps the newer of the database's and the fast state's copies by it,
        # and a change written only to the database (the fast state down) must win when it is back
        # (a re-attack run's lift during an outage came undone).
        return msgspec.structs.replace(
            current,
            incident=incidents[0],
            also=incidents[1:],
            since=self._clock.time(),
            # What holds it now, not the first rule's words (which may name an incident lifted since).
            reason=f"threat rules: held until incidents {', '.join(incidents)} are lifted",
        )

    def restored(self, previous: LockdownState) -> LockdownState:
        """The lockdown a threat rule widened (``LockdownState.previous``), as it was: its routes,
        actor and reason (at a new time, as :meth:`held`)."""
        return msgspec.structs.replace(
            previous, incident="", also=(), previous=None, since=self._clock.time()
        )

    def widened(self, current: LockdownState, *, incident: str, reason: str) -> LockdownState:
        """Every route locked by ``incident``'s rule, keeping ``current`` (when on) to put back."""
        previous = msgspec.structs.replace(current, previous=None) if current.on else None
        return LockdownState(
            on=True,
            since=self._clock.time(),
            actor="system:threat",
            reason=reason,
            incident=incident,
            previous=previous,
        )

    def opened(self, *, actor: str, reason: str) -> LockdownState:
        """Every route open."""
        return LockdownState(on=False, since=self._clock.time(), actor=actor, reason=reason)

    async def update(self, change: Callable[[LockdownState], Change | None]) -> LockdownState:
        """Change the switch from what it is, atomically: ``change`` gets the state now and answers
        the new one with who made it and why when that is not the new state's own actor and reason
        (``(state, (actor, reason))``, or ``(state, None)``), or None to leave it. Compared and set on
        the fast state and tried again when another writer came first (a re-attack run: a rule firing
        while an incident was lifted lost one of the two changes, leaving every route open or locked for
        good). While the fast state does not answer, written to the database alone, as every switch.

        Raises:
            StateUnavailable: neither store can answer, or the switch kept changing.
        """
        for _ in range(_CAS_ROUNDS):
            current = await self.read()  # also puts a newer database copy back into the fast state
            try:
                raw = await self._state.get(LOCKDOWN_KEY)
            except StateUnavailable:
                decided = change(current)
                if decided is not None:
                    await self._write(decided[0], _kind(decided[0]), ip="", by=decided[1])
                    return decided[0]
                return current
            if (self._decoded(raw) if raw is not None else OFF) != current:
                continue  # the database's copy was newer and is being put back: read again
            decided = change(current)
            if decided is None:
                return current
            new, by = decided
            if await self._state.compare_and_set(LOCKDOWN_KEY, raw, _encode(new)):
                await self._to_db(new)
                await self._announce(new, _kind(new), ip="", by=by)
                return new
        raise StateUnavailable("the lockdown switch kept changing; giving up")

    async def switch_off(self, *, actor: str, reason: str, ip: str = "") -> LockdownState:
        """Open every route again; audited ``lockdown.off`` (also when it was off already).

        Raises:
            StateUnavailable: the fast state cannot answer (nothing was switched).
        """
        new = LockdownState(on=False, since=self._clock.time(), actor=actor, reason=reason)
        await self._write(new, "lockdown.off", ip=ip)
        return new

    async def _from_db(self) -> LockdownState | None:
        """The database's copy; None when there is none or it cannot be read."""
        value = await read_kv_or_none(self._db, _DB_KEY, what="the lockdown switch")
        if value is None:
            return None
        try:
            return _decode(value.encode("utf-8"))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return LockdownState(on=True, reason="unreadable lockdown state")

    async def _to_db(self, new: LockdownState) -> bool:
        if self._db is None:
            return False
        try:
            value = _encode(new).decode("utf-8")
            await write_kv(self._db, _DB_KEY, value, at=self._clock.now(), what="the lockdown switch")
        except Exception:  # reported; the fast state's copy is the one read first
            logger.exception("lockdown: could not keep the switch in the database")
            return False
        return True

    async def _write(
        self, new: LockdownState, kind: str, *, ip: str, by: tuple[str, str] | None = None
    ) -> None:
        """Store ``new`` and audit it, as done by its actor for its reason, or by ``by`` (actor, reason)."""
        in_db = await self._to_db(new)
        try:
            await self._state.set(LOCKDOWN_KEY, _encode(new))
        except StateUnavailable:
            if not in_db:
                raise
            # In the database: every worker that cannot read the fast state reads it there.
            logger.warning("lockdown: the fast state did not answer; the switch is in the database")
        await self._announce(new, kind, ip=ip, by=by)

    async def _announce(self, new: LockdownState, kind: str, *, ip: str, by: tuple[str, str] | None) -> None:
        """Audit a stored switch and broadcast it to every worker."""
        if self._audit is not None:
            details: dict[str, object] = {
                "routes": "all" if new.routes is None else list(new.routes),
                "reason": new.reason,
            }
            if not new.on:
                details["routes"] = []
            if new.incident:
                details["incident"] = new.incident
            if new.also:
                details["also"] = list(new.also)
            actor = new.actor
            if by is not None:
                actor, details["reason"] = by
                details["state"] = f"{new.actor}: {new.reason}"
            await self._audit.record(kind, actor=actor, subject="lockdown", ip=ip, details=details)
        try:
            await self._state.publish(LOCKDOWN_CHANNEL, b"changed")
        except StateUnavailable:
            # Stored already: every worker's periodic re-read picks it up within its interval.
            logger.warning("could not broadcast a lockdown change")

    async def refresh(self, lockdown: Lockdown) -> None:
        """Load the stored switch into ``lockdown``.

        Raises:
            StateUnavailable: the fast state cannot answer (``lockdown`` keeps what it had).
        """
        lockdown.set(await self.read())

    async def run_listener(self, lockdown: Lockdown, *, refresh_every: float) -> None:
        """Keep ``lockdown`` current: re-read on every broadcast, and every ``refresh_every`` s anyway;
        an outage keeps the last known state."""
        await follow_channel(
            self._state,
            LOCKDOWN_CHANNEL,
            lambda: self.refresh(lockdown),
            refresh_every=refresh_every,
            what="lockdown",
        )
