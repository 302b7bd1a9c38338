"""Consent records and objections over the database, and pushing their effect to the person's sessions.

A consent is one ``consent_records`` row per answer (never updated: the history is the proof of what was
agreed to and when); the newest row per purpose is the current answer. An objection is a purpose name in
``users.objections``. Every change is written to the audit trail (``privacy.consent.<decision>``,
``privacy.objection.added|withdrawn``: the purpose, its version and how the choice was made, never the
notice text) and then applied: :meth:`Consents.apply_optout` recomputes what not to process for the
person (:func:`gateway.privacy.purposes.optout`) and writes it into every live session of theirs, so the
data plane honours it from the next request on, on every replica.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.trail import AuditLog
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import BadRequest
from gateway.identity.accounts import UnknownAccount
from gateway.identity.ledger import AccountLedger, Entry, State
from gateway.identity.models import User
from gateway.identity.sessions import SessionStore
from gateway.privacy.models import ConsentRecord
from gateway.privacy.purposes import (
    DECISIONS,
    ConsentView,
    Decision,
    format_objections,
    optout,
    parse_objections,
    pending,
)
from gateway.settings.schema import Purpose
from gateway.store.db import Database, StoreUnavailable, store_errors

__all__ = [
    "BadDecision",
    "ConsentRefused",
    "ConsentView",
    "Consents",
    "NotConsentBased",
    "NotObjectable",
    "UnknownPurpose",
    "purpose_named",
]

logger = logging.getLogger("gateway.privacy")

# Two writers changing one person's objections at once (two tabs, an admin) retry on a lost race.
_CAS_ATTEMPTS: Final = 20


class ConsentRefused(BadRequest):
    """A consent or objection that cannot be recorded as asked; the detail says why, for a person."""

    status = 422
    reason = "consent-refused"
    title = "This choice cannot be recorded"


class UnknownPurpose(ConsentRefused):
    """No purpose is configured under this name."""

    reason = "unknown-purpose"
    title = "No such purpose"


class BadDecision(ConsentRefused):
    """A consent answer other than granted, refused or withdrawn."""

    reason = "bad-decision"
    title = "Not a consent answer"


class NotConsentBased(ConsentRefused):
    """The purpose does not rest on consent, so there is nothing to give or withdraw (409)."""

    status = 409
    reason = "not-consent-based"
    title = "This purpose is not based on consent"


class NotObjectable(ConsentRefused):
    """The purpose cannot be objected to (contract, legal obligation, consent, or not objectable) (409)."""

    status = 409
    reason = "not-objectable"
    title = "This purpose cannot be objected to"


def purpose_named(purposes: Iterable[Purpose], name: str) -> Purpose:
    """The purpose called ``name`` among ``purposes``.

    Raises:
        UnknownPurpose: none is called that.
    """
    for purpose in purposes:
        if purpose.name == name:
            return purpose
    raise UnknownPurpose(f"There is no purpose named {name[:64]!r}.")


def _view(row: ConsentRecord) -> ConsentView:
    # A value written by something other than record() reads as the one answer that allows nothing.
    decision: Decision = "refused"
    for known in ("granted", "refused", "withdrawn"):
        if row.decision == known:
            decision = known
    return ConsentView(row.purpose, row.version, decision, row.at, row.method)


class Consents:
    """Read and change a person's consents and objections; keep their sessions' opt-outs current.

    One instance per process (``IdentityServices.consents``). ``purposes`` returns the configured
    purposes in force (the live configuration), read at every call, so a reload that bumps a notice's
    version asks again from the next sign-in on.
    """

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        sessions: SessionStore | None,
        *,
        purposes: Callable[[], Sequence[Purpose]],
        clock: Clock = SYSTEM_CLOCK,
        ledger: AccountLedger | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        self._sessions = sessions
        self._purposes = purposes
        self._clock = clock
        # Withdrawals and objections a restore from an earlier backup must not undo (identity.ledger).
        self._ledger = ledger

    # -- the configured purposes ------------------------------------------------------------------

    def purposes(self) -> tuple[Purpose, ...]:
        """The purposes configured now (``privacy.purposes``)."""
        return tuple(self._purposes())

    def purpose(self, name: str) -> Purpose:
        """The configured purpose named ``name``.

        Raises:
            UnknownPurpose: none is configured under that name.
        """
        return purpose_named(self._purposes(), name)

    # -- reading ----------------------------------------------------------------------------------

    async def history(self, user_id: int) -> list[ConsentView]:
        """Every answer the person gave, oldest first (for the export)."""
        query = select(ConsentRecord).where(ConsentRecord.user_id == user_id).order_by(ConsentRecord.id)
        async with self._db.session() as session:
            with store_errors("cannot read consent records"):
                rows = (await session.scalars(query)).all()
        return [_view(row) for row in rows]

    async def current(self, user_id: int) -> dict[str, ConsentView]:
        """The newest answer per purpose name (also for purposes no longer configured)."""
        # Oldest first, so the newest row of each purpose is the one left in the dict.
        return {view.purpose: view for view in await self.history(user_id)}

    async def pending(self, user_id: int) -> tuple[Purpose, ...]:
        """The consent purposes the person has not answered in their current version."""
        return pending(self._purposes(), await self.current(user_id))

    async def optout_of(self, user: User) -> tuple[str, ...]:
        """What not to process for this account, sorted: what a new session carries."""
        consents = await self.current(user.id)
        names = optout(
            self._purposes(),
            restricted=user.restricted,
            objections=parse_objections(user.objections),
            consents=consents,
        )
        return tuple(sorted(names))

    async def allows(self, username: str, purpose: str) -> bool:
        """Whether ``purpose`` may be processed for the account named ``username`` (canonical).

        For processing outside a request (the threat detector's geolocation of a sign-in): an unknown
        account is processed for nothing.
        """
        async with self._db.session() as session:
            with store_errors("cannot read accounts"):
                user = (await session.scalars(select(User).where(User.username == username))).first()
        return user is not None and purpose not in await self.optout_of(user)

    # -- changing ---------------------------------------------------------------------------------

    async def record(
        self,
        user_id: int,
        purpose: Purpose,
        decision: str,
        method: str,
        *,
        actor: str,
        ip: str = "",
    ) -> ConsentView:
        """Record an answer to the purpose's current notice and apply it to the person's sessions.

        A withdrawal is this same call with ``"withdrawn"``: as easy as giving.

        Args:
            user_id: The person.
            purpose: The configured purpose (its current version is what is answered).
            decision: ``granted``, ``refused`` or ``withdrawn``.
            method: How it was given ("sign-in prompt", "api", "account page", "admin:<name>").
            actor: Who made the change, for the audit trail (``user:<name>``, ``admin:<name>``).
            ip: The client address, for the audit trail.

        Raises:
            BadDecision: ``decision`` is none of the three.
            NotConsentBased: the purpose does not rest on consent.
            UnknownAccount: no such user.
            StoreUnavailable: the database cannot answer.
            StateUnavailable: the sessions could not be updated (the answer is recorded).
        """
        if decision not in DECISIONS:
            raise BadDecision(f"{decision[:32]!r} is not an answer; use one of {', '.join(DECISIONS)}.")
        if purpose.basis != "consent":
            raise NotConsentBased(
                f"{purpose.title!r} is based on {purpose.basis.replace('_', ' ')}, not on consent."
            )
        now = self._clock.now()
        async with self._db.session(write=True) as session:
            with store_errors("cannot record a consent"):
                user = await session.get(User, user_id)
                if user is None:
                    raise UnknownAccount(f"No account has id {user_id}.")
                row = ConsentRecord(
                    user_id=user_id,
                    purpose=purpose.name,
                    version=purpose.version,
                    decision=decision,
                    at=now,
                    method=method,
                )
                session.add(row)
                # A refusal stops processing as a withdrawal does: both are made again after a restore.
                state: State = "consent-given" if decision == "granted" else "consent-withdrawn"
                noted = await self._note(session, user, state, purpose.name)
                await session.commit()
                username = user.username
        await self._appended(noted)
        await self._audit.record(
            f"privacy.consent.{decision}",
            actor=actor,
            subject=username,
            ip=ip,
            details={"purpose": purpose.name, "version": purpose.version, "method": method},
        )
        await self.apply_optout(user_id)
        return _view(row)

    async def object(self, user_id: int, purpose: Purpose, *, method: str, actor: str, ip: str = "") -> bool:
        """Object to a legitimate-interest purpose (GDPR Art. 21); applied to the person's sessions.

        Returns:
            False if the person had already objected (nothing recorded).

        Raises:
            NotObjectable: the purpose cannot be objected to.
            UnknownAccount: no such user.
            StoreUnavailable: the database cannot answer.
            StateUnavailable: the sessions could not be updated (the objection is stored).
        """
        return await self._objection(user_id, purpose, True, method=method, actor=actor, ip=ip)

    async def withdraw_objection(
        self, user_id: int, purpose: Purpose, *, method: str, actor: str, ip: str = ""
    ) -> bool:
        """Withdraw an objection: the purpose is processed again; applied to the person's sessions.

        Returns:
            False if there was no objection to withdraw.

        Raises:
            NotObjectable: the purpose cannot be objected to (so no objection to it counts).
            UnknownAccount: no such user.
            StoreUnavailable: the database cannot answer.
            StateUnavailable: the sessions could not be updated (the change is stored).
        """
        return await self._objection(user_id, purpose, False, method=method, actor=actor, ip=ip)

    async def _objection(
        self, user_id: int, purpose: Purpose, add: bool, *, method: str, actor: str, ip: str
    ) -> bool:
        if not purpose.objectable:
            raise NotObjectable(
                f"{purpose.title!r} cannot be objected to"
                + (": withdraw your consent instead." if purpose.basis == "consent" else ".")
            )
        username = await self._set_objection(user_id, purpose.name, add)
        if username is None:
            return False
        await self._objection_changed(
            user_id, username, purpose.name, purpose.version, add, method=method, actor=actor, ip=ip
        )
        return True

    async def object_again(self, user_id: int, name: str, *, actor: str) -> bool:
        """Object again to the purpose ``name`` (configured or not any more: the person objected), as
        the account ledger's replay does on a database restored from a backup that predates it.

        Returns:
            False if the objection is there (nothing recorded).

        Raises:
            UnknownAccount: no such user.
            StoreUnavailable: the database cannot answer.
            StateUnavailable: the sessions could not be updated (the objection is stored).
        """
        username = await self._set_objection(user_id, name, True)
        if username is None:
            return False
        configured = {purpose.name: purpose for purpose in self._purposes()}.get(name)
        version = configured.version if configured is not None else ""
        await self._objection_changed(
            user_id, username, name, version, True, method="account ledger", actor=actor
        )
        return True

    async def _objection_changed(
        self,
        user_id: int,
        username: str,
        purpose: str,
        version: int | str,
        add: bool,
        *,
        method: str,
        actor: str,
        ip: str = "",
    ) -> None:
        await self._audit.record(
            "privacy.objection.added" if add else "privacy.objection.withdrawn",
            actor=actor,
            subject=username,
            ip=ip,
            details={"purpose": purpose, "version": version, "method": method},
        )
        await self.apply_optout(user_id)

    async def _set_objection(self, user_id: int, name: str, add: bool) -> str | None:
        """Add or remove ``name`` in ``users.objections`` by compare-and-set; the username if it changed.

        The read and the conditional write are two transactions: a read transaction that then writes
        would, on SQLite, have two concurrent writers each waiting for the other's read lock to go
        ("database is locked" at once); the write alone waits its turn, and the condition catches a
        change that landed in between.
        """
        for _ in range(_CAS_ATTEMPTS):
            async with self._db.session() as session:
                with store_errors("cannot read objections"):
                    user = await session.get(User, user_id)
            if user is None:
                raise UnknownAccount(f"No account has id {user_id}.")
            before = user.objections
            names = parse_objections(before)
            after = names | {name} if add else names - {name}
            if after == names:
                return None
            async with self._db.session() as session:
                with store_errors("cannot change objections"):
                    won = (
                        await session.scalars(
                            update(User)
                            .where(User.id == user_id, User.objections == before)
                            .values(objections=format_objections(after), updated_at=self._clock.now())
                            .returning(User.id)
                        )
                    ).first()
                    state: State = "objected" if add else "objection-withdrawn"
                    noted = await self._note(session, user, state, name) if won is not None else None
                    await session.commit()
            if won is not None:
                await self._appended(noted)
                return user.username
        raise StoreUnavailable(f"the objections of user {user_id} kept changing; nothing was changed")

    async def _note(self, session: AsyncSession, user: User, state: State, purpose: str) -> Entry | None:
        if self._ledger is None:
            return None
        return await self._ledger.note_purpose(session, user, state, purpose)

    async def _appended(self, noted: Entry | None) -> None:
        if self._ledger is not None and noted is not None:
            await self._ledger.append([noted])

    # -- applying ---------------------------------------------------------------------------------

    async def apply_optout(self, user_id: int) -> int:
        """Recompute what not to process for the person and write it into every live session of theirs.

        Called after every consent, objection or restriction change (a restriction's code calls it
        too). Returns how many sessions changed; an unknown account has none, and so has a process
        whose sessions live in another process (``sessions`` ``None``: the CLI with ``state.embedded:
        memory``), where the next sign-in carries the new opt-out.

        Raises:
            StoreUnavailable: the database cannot answer.
            StateUnavailable: the fast state cannot answer.
        """
        async with self._db.session() as session:
            with store_errors("cannot read accounts"):
                user = await session.get(User, user_id)
        if user is None or self._sessions is None:
            return 0
        changed = await self._sessions.set_optout(user_id, await self.optout_of(user))
        if changed:
            logger.info("opt-out of user %d applied to %d session(s)", user_id, changed)
        return changed
