"""The register of data-subject requests: what was asked, when, by whom, by when, and what was done.

Every right exercised through the gateway (portal, admin API, CLI) leaves one row here, with the
dates an auditor or a regulator asks for: received, identity verified, due (per law, from
``privacy.due``) and completed. A request that is still open after its due date is *overdue*;
:meth:`Register.overdue` finds those (the worker's periodic check sends each once to the sinks).

Rows never hold secrets, and an erased person's rows keep only their pseudonym (``pseudonymise``),
so the register can prove the erasure without undoing it.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.identity.accounts import UnknownAccount
from gateway.identity.models import User
from gateway.privacy.models import PrivacyRequest
from gateway.settings.schema import PRIVACY_LAWS, PrivacySettings
from gateway.store.db import Database, store_errors

__all__ = [
    "Channel",
    "Kind",
    "Register",
    "RequestNotPending",
    "RequestView",
    "Status",
    "UnknownRequest",
    "belongs_to",
    "is_ref",
]


class Kind(StrEnum):
    """The rights a request exercises (GDPR Art. 15-21, CCPA, DPDP s. 11-13)."""

    ACCESS = "access"
    PORTABILITY = "portability"
    RECTIFICATION = "rectification"
    ERASURE = "erasure"
    RESTRICTION = "restriction"
    OBJECTION = "objection"
    CONSENT_WITHDRAWAL = "consent_withdrawal"
    # Not a right of its own: the person (or an admin) cancels the registration; the data goes after
    # privacy.retention.registration.
    CLOSURE = "closure"


class Status(StrEnum):
    """Where a request is. Open: received, verified, on_hold."""

    RECEIVED = "received"
    VERIFIED = "verified"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    REJECTED = "rejected"


class Channel(StrEnum):
    """How the request reached the gateway."""

    PORTAL = "portal"
    ADMIN = "admin"
    CLI = "cli"
    # The gateway acting on a rule of its own (the retention run erasing a closed account).
    SYSTEM = "system"


OPEN: Final = (Status.RECEIVED, Status.VERIFIED, Status.ON_HOLD)


@dataclass(frozen=True, slots=True)
class _Step:
    """A step of a request: the statuses it may be taken from, and what a refusal says."""

    allowed: tuple[Status, ...]
    refusal: str


_VERIFY: Final = _Step((Status.RECEIVED,), "there is no identity left to verify")
_REJECT: Final = _Step(OPEN, "only an open request can be rejected")
_HOLD: Final = _Step(OPEN, "only an open request can be held")
# What new_ref makes: "PR-" and 10 characters of the base32 alphabet.
_REF: Final = re.compile(r"PR-[A-Z2-7]{10}")


class UnknownRequest(GatewayError):
    """No request has that reference (404)."""

    status = 404
    reason = "unknown-privacy-request"
    title = "No such privacy request"


class RequestNotPending(GatewayError):
    """The request is past the step asked for (verified already, or closed): 409, nothing changed."""

    status = 409
    reason = "privacy-request-not-pending"
    title = "The request is past that step"


@dataclass(frozen=True, slots=True)
class RequestView:
    """One register row as the API, the CLI and the export show it."""

    ref: str
    kind: str
    law: str
    subject: str
    user_id: int | None
    channel: str
    status: str
    received_at: datetime
    verified_at: datetime | None
    verified_by: str
    due_at: datetime
    completed_at: datetime | None
    details: dict[str, Any]
    outcome: str
    hold_ref: str

    @classmethod
    def of(cls, row: PrivacyRequest) -> RequestView:
        """The view of a stored row."""
        return cls(
            row.ref,
            row.kind,
            row.law,
            row.subject,
            row.user_id,
            row.channel,
            row.status,
            row.received_at,
            row.verified_at,
            row.verified_by,
            row.due_at,
            row.completed_at,
            json.loads(row.details or "{}"),
            row.outcome,
            row.hold_ref,
        )

    def overdue(self, now: datetime) -> bool:
        """Still open after its due date."""
        return self.status in OPEN and now > self.due_at

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        """JSON-ready (times ISO 8601 UTC); ``overdue`` when ``now`` is given."""
        doc: dict[str, Any] = {
            "ref": self.ref,
            "kind": self.kind,
            "law": self.law,
            "subject": self.subject,
            "channel": self.channel,
            "status": self.status,
            "received_at": _iso(self.received_at),
            "verified_at": _iso(self.verified_at),
            "verified_by": self.verified_by,
            "due_at": _iso(self.due_at),
            "completed_at": _iso(self.completed_at),
            "details": self.details,
            "outcome": self.outcome,
            "hold_ref": self.hold_ref,
        }
        if now is not None:
            doc["overdue"] = self.overdue(now)
        return doc


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


async def _hold_account(session: AsyncSession, user_id: int, username: str) -> None:
    """Refuse a request for an account erased (or replaced) meanwhile, and hold the account's row until
    the request is stored, so an erasure pseudonymises it with the rest: PostgreSQL's ``FOR SHARE``,
    which the erasure's ``DELETE`` waits for; on SQLite the write transaction (a re-attack run's
    rectification racing the person's own erasure left a row naming them for three years).

    Raises:
        UnknownAccount: No account ``user_id`` named ``username``.
    """
    query = select(User.id).where(User.id == user_id, User.username == username).with_for_update(read=True)
    if (await session.execute(query)).first() is None:
        raise UnknownAccount(f"No account has id {user_id}.")


def new_ref() -> str:
    """``PR-`` and 10 random base32 characters: unguessable, easy to read out on the phone."""
    return "PR-" + base64.b32encode(secrets.token_bytes(10)).decode("ascii")[:10]


def is_ref(text: str) -> bool:
    """Whether ``text`` has the shape :func:`new_ref` gives (checked before anything is looked up)."""
    return _REF.fullmatch(text) is not None


def mine(user: User) -> Any:
    """The condition on register rows for ``user``'s own account: its id, from its creation on. The
    register outlives accounts, and SQLite gives a deleted account's id to the next new one: a later
    account must not see (or export) an earlier one's requests."""
    return and_(PrivacyRequest.user_id == user.id, PrivacyRequest.received_at >= user.created_at)


def belongs_to(request: RequestView, user: User) -> bool:
    """:func:`mine` for one request already read: ``user``'s own account, from its creation on."""
    return request.user_id == user.id and request.received_at >= user.created_at


class Register:
    """Reads and writes the request register. One per process; stateless apart from the database."""

    def __init__(self, db: Database, *, clock: Clock = SYSTEM_CLOCK) -> None:
        """Args:
        db: The database holding ``privacy_requests``.
        clock: Time source for the dates.
        """
        self._db = db
        self._clock = clock

    async def open(
        self,
        kind: Kind,
        *,
        settings: PrivacySettings,
        user_id: int | None,
        subject: str,
        channel: Channel,
        law: str | None = None,
        details: Mapping[str, object] | None = None,
        verified_by: str = "",
    ) -> RequestView:
        """Record a new request; due per its law. ``verified_by`` set: identity already verified.

        Raises:
            ValueError: ``law`` has no due time in ``settings`` (the caller checked it at the edge).
            UnknownAccount: ``user_id`` is given and no account with it is named ``subject``.
        """
        chosen = law or settings.default_law
        if chosen not in PRIVACY_LAWS:
            raise ValueError(f"unknown law {chosen!r}")
        now = self._clock.now()
        row = PrivacyRequest(
            ref=new_ref(),
            kind=str(kind),
            law=chosen,
            user_id=user_id,
            subject=subject,
            channel=str(channel),
            status=str(Status.VERIFIED if verified_by else Status.RECEIVED),
            received_at=now,
            verified_at=now if verified_by else None,
            verified_by=verified_by,
            due_at=now + timedelta(seconds=float(settings.due.of(chosen))),
            completed_at=None,
            details=json.dumps(dict(details or {}), sort_keys=True, default=str),
            outcome="",
            hold_ref="",
            overdue_alerted_at=None,
        )
        async with self._db.session(write=True) as session:
            with store_errors("cannot record the privacy request"):
                if user_id is not None:
                    await _hold_account(session, user_id, subject)
                session.add(row)
                await session.commit()
        return RequestView.of(row)

    async def get(self, ref: str) -> RequestView:
        """One request by reference.

        Raises:
            UnknownRequest: No such reference.
        """
        async with self._db.session() as session:
            with store_errors("cannot read the privacy register"):
                row = (await session.scalars(select(PrivacyRequest).where(PrivacyRequest.ref == ref))).first()
        if row is None:
            raise UnknownRequest(f"No privacy request has reference {ref[:40]!r}.")
        return RequestView.of(row)

    async def find(
        self,
        *,
        user_id: int | None = None,
        status: str | None = None,
        limit: int = 200,
        owner: User | None = None,
    ) -> list[RequestView]:
        """Requests, newest first; ``status`` "open" means received, verified or on hold; ``owner``: only
        that account's own (see :func:`mine`)."""
        query = select(PrivacyRequest).order_by(PrivacyRequest.id.desc()).limit(limit)
        if user_id is not None:
            query = query.where(PrivacyRequest.user_id == user_id)
        if owner is not None:
            query = query.where(mine(owner))
        if status == "open":
            query = query.where(PrivacyRequest.status.in_([str(s) for s in OPEN]))
        elif status is not None:
            query = query.where(PrivacyRequest.status == status)
        async with self._db.session() as session:
            with store_errors("cannot read the privacy register"):
                rows = (await session.scalars(query)).all()
        return [RequestView.of(row) for row in rows]

    async def verify(self, ref: str, *, by: str) -> RequestView:
        """Record that the requester's identity was verified (and how).

        Raises:
            UnknownRequest: No such reference.
            RequestNotPending: The request is no longer ``received`` (verified or closed meanwhile).
        """
        return await self._set(
            ref, _VERIFY, status=Status.VERIFIED, verified_at=self._clock.now(), verified_by=by
        )

    async def complete(
        self, ref: str, *, outcome: str, details: Mapping[str, object] | None = None
    ) -> RequestView:
        """Close a request as done, saying what was done.

        From any status: the work is done by the time this is called (an erasure cannot be undone),
        so the register says so even if an admin rejected the request while it ran.
        """
        values: dict[str, object] = {
            "status": Status.COMPLETED,
            "completed_at": self._clock.now(),
            "outcome": outcome,
        }
        if details is not None:
            values["details"] = json.dumps(dict(details), sort_keys=True, default=str)
        return await self._set(ref, None, **values)

    async def reject(self, ref: str, *, outcome: str) -> RequestView:
        """Close an open request as refused, saying why (the person is told).

        Raises:
            UnknownRequest: No such reference.
            RequestNotPending: The request is closed already (completed or rejected meanwhile).
        """
        return await self._set(
            ref, _REJECT, status=Status.REJECTED, completed_at=self._clock.now(), outcome=outcome
        )

    async def hold(self, ref: str, *, hold_ref: str, outcome: str) -> RequestView:
        """Keep an open request open because a legal hold suspends what it asks (erasure).

        Raises:
            RequestNotPending: The request was closed meanwhile.
        """
        return await self._set(ref, _HOLD, status=Status.ON_HOLD, hold_ref=hold_ref, outcome=outcome)

    async def overdue(self) -> list[RequestView]:
        """Open requests past their due date that were not reported yet, and mark them reported."""
        now = self._clock.now()
        query = select(PrivacyRequest).where(
            PrivacyRequest.status.in_([str(s) for s in OPEN]),
            PrivacyRequest.due_at < now,
            PrivacyRequest.overdue_alerted_at.is_(None),
        )
        async with self._db.session(write=True) as session:
            with store_errors("cannot read the privacy register"):
                rows = list((await session.scalars(query)).all())
                if not rows:
                    return []
                # Marked in the same transaction: two replicas checking at once report each once
                # (the second one's UPDATE finds alerted rows and reports only what it marked).
                ids = [r.id for r in rows]
                marked = (
                    await session.scalars(
                        update(PrivacyRequest)
                        .where(PrivacyRequest.id.in_(ids), PrivacyRequest.overdue_alerted_at.is_(None))
                        .values(overdue_alerted_at=now)
                        .returning(PrivacyRequest.id)
                    )
                ).all()
                await session.commit()
        return [RequestView.of(r) for r in rows if r.id in set(marked)]

    async def pseudonymise(self, user_id: int, pseudonym: str) -> int:
        """Replace the erased person's username by ``pseudonym`` and drop the account id (SQLite may
        hand the id to the next account); returns the rows changed."""
        async with self._db.session(write=True) as session:
            with store_errors("cannot update the privacy register"):
                changed = (
                    await session.scalars(
                        update(PrivacyRequest)
                        .where(PrivacyRequest.user_id == user_id)
                        .values(subject=pseudonym, user_id=None)
                        .returning(PrivacyRequest.id)
                    )
                ).all()
                await session.commit()
        return len(changed)

    async def _set(self, ref: str, step: _Step | None, **values: object) -> RequestView:
        """Change a request in one conditional UPDATE: only while its status is one ``step`` allows
        (None: any). The check and the change are one statement, so a step taken on a stale read (an
        admin verifying what another admin rejected meanwhile) changes nothing; a check read first
        and written after would let the second undo the first. The callers check nothing themselves."""
        changes = {
            name: str(value) if isinstance(value, StrEnum) else value for name, value in values.items()
        }
        change = update(PrivacyRequest).where(PrivacyRequest.ref == ref)
        if step is not None:
            change = change.where(PrivacyRequest.status.in_([str(s) for s in step.allowed]))
        async with self._db.session(write=True) as session:
            with store_errors("cannot update the privacy register"):
                changed = (await session.scalars(change.values(**changes).returning(PrivacyRequest.id))).all()
                await session.commit()
                row = (await session.scalars(select(PrivacyRequest).where(PrivacyRequest.ref == ref))).first()
        if row is None:
            raise UnknownRequest(f"No privacy request has reference {ref[:40]!r}.")
        if not changed:
            assert step is not None  # an unconditional change always changes the row it found
            status = row.status.replace("_", " ")
            raise RequestNotPending(f"{row.ref} is {status}: {step.refusal}; nothing was changed.")
        return RequestView.of(row)
