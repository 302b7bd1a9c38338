"""The rights, one method each, for every channel: the portal, the admin API and console, the CLI.

Each call opens a row in the request register (:mod:`gateway.privacy.register`), does the work,
records what was done and writes one ``privacy.<kind>`` audit event naming the request; the
channel only decides who the actor is and how identity was verified. So the portal, the API and the
CLI cannot drift apart: they call the same method.

Identity verification: a person using the portal is verified by their signed-in session (with a
recent second factor for erasure and closure, which the portal checks before calling); an admin or
operator acting for a person writes who they are and, in the request, how they verified the person.

An objection or a consent withdrawal changes the person's choices through
:class:`~gateway.privacy.consent.Consents` (the same call the person's own page makes), so its effect
is the same whoever records it: the person's live sessions stop carrying the purpose at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from gateway.audit.trail import AuditLog
from gateway.clock import Clock, span_words
from gateway.crypto.keyring import Keyring
from gateway.errors import Forbidden, GatewayError
from gateway.identity.accounts import AccountService, UnknownAccount, account_exists
from gateway.identity.models import User
from gateway.identity.names import canonical_email
from gateway.identity.oidc.models import IdentityLink
from gateway.identity.sessions import SessionStore
from gateway.privacy.consent import Consents, purpose_named
from gateway.privacy.erasure import Erased, Eraser, Held, holding_erasure
from gateway.privacy.export import export_person
from gateway.privacy.holds import Holds
from gateway.privacy.incident_records import IncidentRecords
from gateway.privacy.register import Channel, Kind, Register, RequestView, belongs_to
from gateway.privacy.removed import RemovedArchive, RemovedView
from gateway.privacy.traces import forget_location, forget_purpose
from gateway.settings.schema import PrivacySettings
from gateway.store.db import Database, store_errors
from gateway.store.fast import FastState

__all__ = ["AlreadyClosed", "EmailNeedsAdmin", "Privacy", "ProviderOwned", "TooManyExports"]

# The fast-state counter of one person's own exports (``privacy.export_limit``): by the account's id
# and when it was made, since SQLite gives a deleted account's id to the next one (an attack run's new
# account was refused its first export on the erased one's count).
_EXPORTS_KEY = "privacy:exports:{}:{}"


class ProviderOwned(GatewayError):
    """The field comes from an identity provider (409): correct it there, not here."""

    status = 409
    reason = "field-owned-by-identity-provider"
    title = "Correct this at your identity provider"


class TooManyExports(GatewayError):
    """The person took ``privacy.export_limit`` exports within ``privacy.export_window`` (429)."""

    status = 429
    reason = "too-many-exports"
    title = "Too many exports"


class EmailNeedsAdmin(Forbidden):
    """A person may remove their email address themselves, not set a new one (403)."""

    reason = "email-change-needs-admin"
    title = "An administrator sets a new email address"


def _the_same(user: User) -> Callable[[User], bool]:
    """The check that an account read again is still ``user`` (same name, made at the same time):
    SQLite gives a deleted account's id to the next new one."""
    return lambda again: again.username == user.username and again.created_at == user.created_at


def _the_requesters(request: RequestView) -> Callable[[User], bool]:
    """The check that an account is still the one whose request ``request`` is (see
    :meth:`Privacy._still_the_requesters`)."""
    return lambda user: user.username == request.subject and belongs_to(request, user)


class AlreadyClosed(GatewayError):
    """Closing a closed account again would restart its retention period: 409, nothing changed (an
    attack run closed one twice from the CLI and moved its deletion half a year away)."""

    status = 409
    reason = "account-closed-already"
    title = "The account is closed already"


class Privacy:
    """The data-subject rights over one process's stores (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        keyring: Keyring,
        accounts: AccountService,
        sessions: SessionStore | None,
        audit: AuditLog,
        consents: Consents,
        incident_records: IncidentRecords,
        clock: Clock,
        fast: FastState | None = None,
    ) -> None:
        """Args are the stores and services the rights touch; ``incident_records`` are incident
        response's (``gateway.response.personal_data.CasePersonalData``), which an erasure pseudonymises
        and the retention run prunes; ``fast`` counts a person's own exports and holds the short-lived
        keys that name a person (:mod:`gateway.privacy.traces`; none: not counted, not reached)."""
        self._db = db
        self._fast = fast
        self._accounts = accounts
        self._sessions = sessions
        self._audit = audit
        self._consents = consents
        self._clock = clock
        self.incident_records = incident_records
        self.register = Register(db, clock=clock)
        self.holds = Holds(db, keyring, audit, clock=clock)
        self.removed = RemovedArchive(db, keyring, clock=clock)
        self.eraser = Eraser(
            db,
            keyring=keyring,
            accounts=accounts,
            sessions=sessions,
            audit=audit,
            holds=self.holds,
            register=self.register,
            incident_records=incident_records,
            removed=self.removed,
            clock=clock,
            fast=fast,
        )

    async def user(self, user_id: int) -> User:
        """The account, or :class:`UnknownAccount` (404)."""
        user = await self._accounts.get(user_id)
        if user is None:
            raise UnknownAccount(f"No account has id {user_id}.")
        return user

    async def _open(
        self,
        kind: Kind,
        user: User,
        *,
        settings: PrivacySettings,
        channel: Channel,
        verified_by: str,
        law: str | None,
        details: Mapping[str, object] | None = None,
    ) -> RequestView:
        return await self.register.open(
            kind,
            settings=settings,
            user_id=user.id,
            subject=user.username,
            channel=channel,
            law=law,
            details=details,
            verified_by=verified_by,
        )

    async def _done(
        self, request: RequestView, *, actor: str, outcome: str, **details: object
    ) -> RequestView:
        done = await self.register.complete(request.ref, outcome=outcome)
        # Not after the person's erasure, which raced this request (see account_exists).
        still = account_exists(request.user_id, request.subject) if request.user_id is not None else None
        kind, audited = (
            f"privacy.{request.kind}",
            {"request": request.ref, "law": request.law, "channel": request.channel, **details},
        )
        if still is None:
            await self._audit.record(kind, actor=actor, subject=request.subject, details=audited)
        else:
            await self._audit.record_if(still, kind, actor=actor, subject=request.subject, details=audited)
        return done

    # -- the register's steps, by any channel ---------------------------------------------------------

    async def verify_request(self, ref: str, *, by: str, actor: str) -> RequestView:
        """Record how the requester's identity was verified; audited ``privacy.request.verified`` under
        ``actor``, whichever channel (CLI, console) did it.

        Raises:
            UnknownRequest, RequestNotPending: as :meth:`Register.verify`; nothing is recorded.
        """
        request = await self.register.verify(ref, by=by)
        await self._audit.record(
            "privacy.request.verified", actor=actor, subject=request.subject, details={"request": request.ref}
        )
        return request

    async def reject_request(self, ref: str, *, reason: str, actor: str) -> RequestView:
        """Close an open request as refused; audited ``privacy.request.rejected`` under ``actor``.

        Raises:
            UnknownRequest, RequestNotPending: as :meth:`Register.reject`; nothing is recorded.
        """
        request = await self.register.reject(ref, outcome=reason)
        await self._audit.record(
            "privacy.request.rejected",
            actor=actor,
            subject=request.subject,
            details={"request": request.ref, "reason": reason},
        )
        return request

    # -- access and portability ---------------------------------------------------------------------

    async def export(
        self,
        user: User,
        *,
        settings: PrivacySettings,
        channel: Channel,
        actor: str,
        verified_by: str,
        law: str | None = None,
        portable: bool = False,
    ) -> tuple[RequestView, dict[str, Any]]:
        """Everything held about the person (``export.schema.json``), recorded as an access request.

        Raises:
            TooManyExports: A person's own export (``channel`` portal) past ``settings.export_limit``
                within ``settings.export_window``: nothing is read or recorded.
            StateUnavailable: The count cannot be kept now (503).
        """
        if channel is Channel.PORTAL:
            await self._count_export(user, settings)
        kind = Kind.PORTABILITY if portable else Kind.ACCESS
        request = await self._open(
            kind, user, settings=settings, channel=channel, verified_by=verified_by, law=law
        )
        document = await export_person(self._db, user, sessions=self._sessions, now=self._clock.now())
        done = await self._done(
            request,
            actor=actor,
            outcome="The export was handed to the requester.",
            events=len(document["audit_events"]),
        )
        return done, document

    async def _count_export(self, user: User, settings: PrivacySettings) -> None:
        if self._fast is None or settings.export_limit <= 0:
            return
        window = float(settings.export_window)
        key = _EXPORTS_KEY.format(user.id, int(user.created_at.timestamp()))
        taken = await self._fast.incr_window(key, window=window)
        if taken > settings.export_limit:
            raise TooManyExports(
                f"You have taken {settings.export_limit} exports of your data within {span_words(window)}; "
                "the newest one holds everything. Try again later, or ask the privacy contact."
            )

    # -- rectification ----------------------------------------------------------------------------------

    async def rectify(
        self,
        user: User,
        *,
        settings: PrivacySettings,
        channel: Channel,
        actor: str,
        verified_by: str,
        email: str | None = None,
        display_name: str | None = None,
        law: str | None = None,
    ) -> RequestView:
        """Correct the email and/or display name.

        Raises:
            ProviderOwned: The account signs in through an identity provider, which owns these fields.
            InvalidAccount: A value is not acceptable; AccountExists: the email is taken.
        """
        owned = await self.provider_owned(user)
        if owned is not None:
            raise owned
        if channel is Channel.PORTAL and email is not None and email.strip() and _changes_email(user, email):
            # An address the person typed is unverified: an identity provider would link dave's sign-in
            # to the account that claimed dave@ (preprovisioned or link_by_email), and apps that know
            # people by X-Gateway-Email would take its owner for dave. Removing one is always theirs.
            raise EmailNeedsAdmin(
                "A new email address is set by an administrator, who checks that it is yours (apps and "
                "identity providers know you by it); here you can remove yours. Nothing was changed."
            )
        fields = [
            name for name, value in (("email", email), ("display_name", display_name)) if value is not None
        ]
        request = await self._open(
            Kind.RECTIFICATION,
            user,
            settings=settings,
            channel=channel,
            verified_by=verified_by,
            law=law,
            details={"fields": fields},
        )
        await self._keep_under_hold(user, request, fields=fields, settings=settings)
        try:
            changed = await self._accounts.set_profile(
                user.id, email=email, display_name=display_name, actor=actor
            )
        except GatewayError as exc:
            # The title, not the detail: a detail may name the value refused ("the address
            # carol@example.com is used by another account"), which is another person's, kept here
            # for years and shown to this one (an attack run found it in the register and exports).
            await self.register.reject(
                request.ref, outcome=f"{exc.title} ({exc.reason}); nothing was changed."
            )
            raise
        outcome = (
            f"Corrected: {', '.join(changed)}."
            if changed
            else "Nothing to correct: the values were already so."
        )
        return await self._done(request, actor=actor, outcome=outcome, fields=" ".join(changed))

    async def _keep_under_hold(
        self, user: User, request: RequestView, *, fields: list[str], settings: PrivacySettings
    ) -> None:
        """Seal the values a correction replaces when a legal hold covers the person's registration.

        A hold keeps what it covers from deletion, and a correction deletes the old value as surely as
        an erasure would: an order placed to preserve an address would find only the new one. Sealed
        first, like an erasure's removed content, so a failure part-way leaves the old value kept.
        """
        if not fields:
            return
        hold = await self.holds.covering(username=user.username, data_class="registration")
        if hold is None:
            return
        was = {"email": user.email, "display_name": user.display_name}
        await self.removed.keep(
            {
                "format": "gateway.corrected/1",
                "request": request.ref,
                "hold": hold.reference,
                "account": {"id": user.id, "username": user.username, **{f: was[f] for f in fields}},
            },
            ref=request.ref,
            pseudonym="",
            username=user.username,
            reason=f"correction under legal hold {hold.reference}",
            until=self._clock.now() + timedelta(seconds=float(settings.retention.removed_content)),
        )

    async def open_removed(
        self, ref: str, *, reason: str, actor: str
    ) -> tuple[RemovedView, dict[str, object]]:
        """Decrypt one removed-content archive for an investigation, audited with ``reason`` first.

        The record comes before the plaintext leaves: a reading that left no record would be the one
        an insider wants. It names the archive's tombstone, or, for a correction's archive of a person
        still there, the person (whose erasure later tombstones it like every record naming them).

        Raises:
            UnknownRemoved: No archive has that reference.
        """
        view, document = await self.removed.read(ref)
        account = document.get("account")
        username = account.get("username") if isinstance(account, dict) else None
        subject = view.who if view.pseudonym or not isinstance(username, str) else username
        await self._audit.record(
            "privacy.removed_content_opened",
            actor=actor,
            subject=subject,
            details={"ref": view.ref, "reason": reason},
        )
        return view, document

    async def provider_owned(self, user: User) -> ProviderOwned | None:
        """The refusal a rectification of this account gets, or None when the gateway owns its fields.

        A page asks first, so it can show the reason instead of a form that could only fail.
        """
        providers = await self._providers(user.id)
        if not providers:
            return None
        return ProviderOwned(
            "Your email and name come from your identity provider ("
            + ", ".join(providers)
            + "): correct them there; they are read again at your next sign-in."
        )

    async def _providers(self, user_id: int) -> list[str]:
        async with self._db.session() as session:
            with store_errors("cannot read identity links"):
                rows = (
                    await session.scalars(
                        select(IdentityLink.provider).where(IdentityLink.user_id == user_id)
                    )
                ).all()
        return sorted(set(rows))

    # -- restriction ------------------------------------------------------------------------------------

    async def restrict(
        self,
        user: User,
        restricted: bool,
        *,
        settings: PrivacySettings,
        channel: Channel,
        actor: str,
        verified_by: str,
        law: str | None = None,
    ) -> RequestView:
        """Restrict processing (no sign-in, sessions end, data kept, no optional processing) or lift it."""
        request = await self._open(
            Kind.RESTRICTION,
            user,
            settings=settings,
            channel=channel,
            verified_by=verified_by,
            law=law,
            details={"restricted": restricted},
        )
        ended = await self._accounts.set_restricted(user.id, restricted, actor=actor)
        if restricted:
            await forget_location(self._fast, user.username)
        outcome = (
            "Processing is restricted: the account cannot sign in and its data is kept unchanged."
            if restricted
            else "The restriction was lifted."
        )
        return await self._done(
            request,
            actor=actor,
            outcome=outcome,
            restricted=restricted,
            sessions_ended=ended if ended is not None else "unknown",
        )

    # -- closure and erasure ----------------------------------------------------------------------------

    async def close(
        self,
        user: User,
        *,
        settings: PrivacySettings,
        channel: Channel,
        actor: str,
        verified_by: str,
        law: str | None = None,
    ) -> RequestView:
        """Cancel the registration: no sign-in from now; the data goes after ``retention.registration``.

        Raises:
            AlreadyClosed: it is closed already.
        """
        current = await self.user(user.id)
        if current.closed_at is not None:
            raise AlreadyClosed(
                f"{current.username} was closed on {current.closed_at:%Y-%m-%d}; nothing was changed."
            )
        request = await self._open(
            Kind.CLOSURE, user, settings=settings, channel=channel, verified_by=verified_by, law=law
        )
        await self._accounts.close(user.id, actor=actor)
        await forget_location(self._fast, user.username)
        days = float(settings.retention.registration) / 86400
        return await self._done(
            request,
            actor=actor,
            outcome=f"The account is closed; its data will be deleted {days:g} days from now unless reopened.",
        )

    async def erase(
        self,
        user: User,
        *,
        settings: PrivacySettings,
        channel: Channel,
        actor: str,
        verified_by: str,
        law: str | None = None,
    ) -> RequestView:
        """Erase the person now, subject to legal holds (see :mod:`gateway.privacy.erasure`).

        Returns:
            The request: completed, or ``on_hold`` naming the hold (the account is then restricted).
        """
        request = await self._open(
            Kind.ERASURE, user, settings=settings, channel=channel, verified_by=verified_by, law=law
        )
        result = await self.eraser.erase(
            user.id,
            actor=actor,
            ref=request.ref,
            keep_for=timedelta(seconds=float(settings.retention.removed_content)),
            reason="erasure request",
            expect=_the_same(user),
        )
        if isinstance(result, Held):
            held = await self.register.hold(
                request.ref,
                hold_ref=result.hold_ref,
                outcome=(
                    "A legal hold suspends this erasure; processing is restricted meanwhile. The data is "
                    "erased when the hold is released."
                ),
            )
            await self._audit.record(
                "privacy.erasure",
                actor=actor,
                subject=user.username,
                outcome="held",
                details={"request": request.ref, "hold": result.hold_ref},
            )
            return held
        return await self._finish_erasure(request, result)

    async def _finish_erasure(self, request: RequestView, result: Erased) -> RequestView:
        kept = (
            f" {result.audit_kept_legacy} older audit records (written before erasable records) keep their fields."
            if result.audit_kept_legacy
            else ""
        )
        outcome = (
            f"Erased. {result.audit_records} audit records no longer name the person."
            + kept
            + (
                f" What was removed is kept encrypted for investigation until {result.archived_until}."
                if result.archived_until
                else ""
            )
        )
        # The request row itself was pseudonymised by the eraser; complete it by reference.
        return await self.register.complete(request.ref, outcome=outcome, details=result.summary())

    async def resumable_erasures(self) -> list[RequestView]:
        """Held erasures whose holds were released: what :meth:`resume_held_erasures` carries out."""
        found: list[RequestView] = []
        for request in await self.register.find(status="on_hold"):
            if request.kind != Kind.ERASURE or request.user_id is None:
                continue
            if not await self._still_the_requesters(request):
                continue
            if await holding_erasure(self.holds, request.subject) is None:
                found.append(request)
        return found

    async def _still_the_requesters(self, request: RequestView) -> bool:
        """Whether the account with the request's id is still the person who asked: SQLite gives a
        deleted account's id to the next new one, and a held erasure resumed by id alone erased that
        stranger (an attack run: `gateway user delete` of the held person, a new account, release)."""
        user = await self._accounts.get(request.user_id) if request.user_id is not None else None
        return user is not None and _the_requesters(request)(user)

    async def resume_held_erasures(self, *, settings: PrivacySettings, actor: str) -> list[RequestView]:
        """Carry out held erasures whose holds were released (the retention run calls this)."""
        done: list[RequestView] = []
        for request in await self.resumable_erasures():
            assert request.user_id is not None  # resumable_erasures skips requests without an account
            try:
                # Still the requester's account when it is deleted (listed a moment ago: a re-attack
                # run deleted it meanwhile and made a new account, which SQLite gave its id).
                result = await self.eraser.erase(
                    request.user_id,
                    actor=actor,
                    ref=request.ref,
                    keep_for=timedelta(seconds=float(settings.retention.removed_content)),
                    reason="erasure request (hold released)",
                    expect=_the_requesters(request),
                )
            except UnknownAccount:
                continue
            if isinstance(result, Erased):
                done.append(await self._finish_erasure(request, result))
        return done

    # -- objection and consent withdrawal -----------------------------------------------------------

    async def object(
        self,
        user: User,
        purpose: str,
        *,
        settings: PrivacySettings,
        channel: Channel,
        actor: str,
        verified_by: str,
        method: str,
        law: str | None = None,
        ip: str = "",
        reason: str = "",
    ) -> RequestView:
        """Object to a legitimate-interest purpose (GDPR Art. 21): it is no longer processed for the
        person, from their sessions' next request on; registered as a completed objection request.

        Args:
            user: The person.
            purpose: The purpose's name (``privacy.purposes``).
            settings: The privacy settings in force (the purposes, the due times).
            channel: Where the objection arrived.
            actor: Who records it (``user:alice``, ``user:boss`` for an admin, ``cli:root``).
            verified_by: How the person's identity was verified (kept in the register).
            method: How the choice was made, for the audit record ("api", "admin:boss", "cli:root").
            law: The law the request falls under; default ``privacy.default_law``.
            ip: The client address, for the audit record.
            reason: Why, when someone records it for the person (kept in the register's details).

        Raises:
            UnknownPurpose: no purpose has that name (422); NotObjectable: it cannot be objected to
                (409). Nothing is recorded then.
        """
        chosen = purpose_named(settings.purposes, purpose)
        added = await self._consents.object(user.id, chosen, method=method, actor=actor, ip=ip)
        await forget_purpose(self._fast, user.username, chosen.name)
        request = await self._open(
            Kind.OBJECTION,
            user,
            settings=settings,
            channel=channel,
            verified_by=verified_by,
            law=law,
            details={"purpose": chosen.name, **({"reason": reason} if reason else {})},
        )
        outcome = (
            f"Objection recorded for {chosen.name}; in effect at once."
            if added
            else f"Objection recorded for {chosen.name}; it was in effect already."
        )
        return await self._done(request, actor=actor, outcome=outcome, purpose=chosen.name)

    async def withdraw_consent(
        self,
        user: User,
        purpose: str,
        *,
        settings: PrivacySettings,
        channel: Channel,
        actor: str,
        verified_by: str,
        method: str,
        law: str | None = None,
        ip: str = "",
        reason: str = "",
    ) -> RequestView:
        """Withdraw the person's consent to a consent-based purpose (GDPR Art. 7(3)): a ``withdrawn``
        answer to its current notice, in effect from their sessions' next request on; registered as a
        completed consent-withdrawal request. Arguments as :meth:`object`.

        Raises:
            UnknownPurpose: no purpose has that name (422); NotConsentBased: it does not rest on
                consent (409). Nothing is recorded then.
        """
        chosen = purpose_named(settings.purposes, purpose)
        await self._consents.record(user.id, chosen, "withdrawn", method, actor=actor, ip=ip)
        await forget_purpose(self._fast, user.username, chosen.name)
        request = await self._open(
            Kind.CONSENT_WITHDRAWAL,
            user,
            settings=settings,
            channel=channel,
            verified_by=verified_by,
            law=law,
            details={"purpose": chosen.name, **({"reason": reason} if reason else {})},
        )
        return await self._done(
            request,
            actor=actor,
            outcome=f"Consent withdrawn for {chosen.name}; in effect at once.",
            purpose=chosen.name,
        )

    async def report_overdue(self) -> int:
        """Send each newly overdue request once to the sinks (as a security event); returns how many."""
        overdue = await self.register.overdue()
        for request in overdue:
            await self._audit.record(
                "privacy.request_overdue",
                actor="system",
                subject=request.subject,
                outcome="failure",
                details={
                    "request": request.ref,
                    "kind": request.kind,
                    "law": request.law,
                    "due_at": request.due_at.isoformat(),
                    "status": request.status,
                },
            )
        return len(overdue)


def _changes_email(user: User, typed: str) -> bool:
    try:
        return canonical_email(typed) != user.email
    except ValueError:
        return True  # refused as new; the account service would refuse it as malformed anyway
