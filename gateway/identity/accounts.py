"""Local accounts: create, find, sign in with a password, change, disable, delete.

Errors (all :class:`~gateway.errors.GatewayError`, so each knows its HTTP status)::

    GatewayError
    ├── SignInFailed        401 invalid-credentials   the ONE answer to every failed password sign-in
    ├── AccountExists       409 account-exists        username or email already taken (by either column)
    ├── UnknownAccount      404 unknown-account       admin operation on a user id that does not exist
    └── BadRequest
        ├── InvalidAccount  400 invalid-account       username, email, display name or role refused
        ├── WeakPassword    400 weak-password         the password policy refused the new password
        └── WrongPassword   400 wrong-password        the current password given to set_password is wrong
    (gateway.identity.regulation.AccountLocked, 429, comes through authenticate unchanged)

Sign-in gives nothing away about who has an account. Unknown user, wrong password, no password set
and disabled account all raise the same :class:`SignInFailed` (same status, reason and message) after
the same work: the password is always hashed (against a dummy hash when there is no account), and the
failure is always counted. Which of them it was goes to the audit trail only.

Lock-outs, and why they are shown: a locked account answers ``AccountLocked`` (429, "try again in N
minutes") *before* the password is checked. NIST SP 800-63B allows telling the user, and people
otherwise keep typing and keep failing. It does not reveal whether an account exists, because unknown
logins are counted and locked exactly like real ones (under their canonical spelling), so "locked"
says only "someone failed here often", true for any name. Checking the lock first (rather than after
verifying the password) means a locked account costs no argon2 work, so an attacker cannot use a
locked account to burn CPU, and learns nothing new about the password while it is locked.
The counter is per person (whichever spelling was typed, the account's), so each spelling is not a
budget of guesses of its own. An alias typed (the email) is also counted under its own spelling, and
only that counter answers 429: the account's lock is enforced silently for it (a wrong-password answer
after a dummy hash of the same cost). Otherwise failing ``alice`` and then trying ``alice@example.com``
told whether the two are one account (429) or not (401), as an attack run did to map emails to names.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from gateway.audit.chain import Precondition
from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.errors import BadRequest, GatewayError
from gateway.identity import issuers
from gateway.identity.confusables import look_alike_shape, skeleton
from gateway.identity.devices import KnownDevices, password_generation
from gateway.identity.invitations import Invitations
from gateway.identity.ledger import AccountLedger, Entry, State
from gateway.identity.machine_names import hold_names, service_account_names
from gateway.identity.models import RecoveryCode, TotpCredential, User, WebAuthnCredential
from gateway.identity.names import (
    AUTHORITY_USERNAMES,
    RESERVED_USERNAMES,
    canonical_email,
    canonical_username,
    mixed_script,
    system_shaped,
)
from gateway.identity.owed import owe
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import AccountLocked, Regulator
from gateway.identity.retired import retire, retired_among
from gateway.names import hidden_character
from gateway.observe.redact import looks_secret
from gateway.store.db import Database, store_errors
from gateway.store.fast import StateUnavailable

logger = logging.getLogger("gateway.identity")

__all__ = [
    "AccountExists",
    "AccountFactors",
    "AccountService",
    "FactorInfo",
    "InvalidAccount",
    "NoPassword",
    "RolesChanged",
    "SessionRevoker",
    "SignInFailed",
    "SignInResult",
    "UnknownAccount",
    "UserSummary",
    "WeakPassword",
    "WrongPassword",
    "account_exists",
    "account_name",
    "account_roles",
    "look_alikes",
]

#: What every failed password sign-in says, whatever the cause.
SIGN_IN_FAILED_MESSAGE: Final = "The username or password is not correct."
MAX_DISPLAY_NAME_LENGTH: Final = 128
#: Why a password change that keeps the current password is refused.
SAME_PASSWORD_MESSAGE: Final = "Choose a new password: this is your current one."  # noqa: S105 - a message
# The factor name passed to the regulator for password steps.
_PASSWORD_FACTOR: Final = "password"  # noqa: S105 - a factor name, not a password
# The keyring subkey of the digests unknown logins are counted and audited under.
_UNKNOWN_LOGIN_INFO: Final = b"gateway unknown login v1"


class SignInFailed(GatewayError):
    """A password sign-in failed. Deliberately says nothing about why (see the module docstring)."""

    status = 401
    reason = "invalid-credentials"
    title = SIGN_IN_FAILED_MESSAGE


class AccountExists(GatewayError):
    """The username or email is already used by another account (in either column)."""

    status = 409
    reason = "account-exists"
    title = "An account with that username or email already exists"


class UnknownAccount(GatewayError):
    """No account has this id (admin operations; sign-in never raises this)."""

    status = 404
    reason = "unknown-account"
    title = "No such account"


class InvalidAccount(BadRequest):
    """A username, email, display name or role was refused; the detail says why, for a human."""

    reason = "invalid-account"
    title = "Invalid account data"


class WeakPassword(BadRequest):
    """The password policy refused the new password; the detail is the policy's message."""

    reason = "weak-password"
    title = "The password is too weak"


class WrongPassword(BadRequest):
    """The current password given to confirm a password change is not correct."""

    reason = "wrong-password"
    title = "The current password is not correct."


class NoPassword(BadRequest):
    """A password change was forced on an account that has no password (it signs in elsewhere)."""

    reason = "no-password"
    title = "The account has no password"


class SessionRevoker(Protocol):
    """What accounts need from the session store: end every session of a user, correct their email
    (``SessionStore`` is one), and refuse the sessions owed an end (:mod:`gateway.identity.owed`)."""

    owed: frozenset[int]

    async def revoke_user(self, user_id: int) -> int:
        """Revoke all sessions of ``user_id`` on every replica; returns how many were ended."""
        ...

    async def set_email(self, user_id: int, email: str) -> int:
        """Give the live sessions of ``user_id`` a corrected email; returns how many changed."""
        ...


@dataclass(frozen=True, slots=True)
class SignInResult:
    """A successful password sign-in: who, and whether they must choose a new password first."""

    user: User
    must_change_password: bool
    # What the attempt was regulated under (the account, or the account and a known device): the
    # second factor's attempts and the completed sign-in's reset use the same.
    regulation_key: str


@dataclass(frozen=True, slots=True)
class UserSummary:
    """One line of the account list: no secrets, only what an admin needs to see."""

    id: int
    username: str
    email: str | None
    display_name: str
    roles: tuple[str, ...]
    disabled: bool
    has_password: bool
    must_change_password: bool
    totp: int
    webauthn: int
    recovery_codes_left: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class FactorInfo:
    """A second factor as shown to people: name and dates, never the secret or public key."""

    kind: str  # "totp" | "webauthn"
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    # TOTP: enrollment was proven with a first code. WebAuthn credentials are confirmed on creation.
    confirmed: bool = True
    # WebAuthn: a passkey (discoverable) rather than a security key.
    discoverable: bool = False


@dataclass(frozen=True, slots=True)
class RolesChanged:
    """What :meth:`AccountService.set_roles` did."""

    roles: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    # Sessions ended because they carried a removed role; None without a session store, 0 when no
    # role was removed (added roles reach the user at the next sign-in).
    sessions_ended: int | None


@dataclass(frozen=True, slots=True)
class AccountFactors:
    """All second factors of one account."""

    totp: tuple[FactorInfo, ...]
    webauthn: tuple[FactorInfo, ...]
    recovery_codes_left: int
    recovery_codes_total: int


def account_exists(user_id: int, username: str, *, created_at: datetime | None = None) -> Precondition:
    """An audit record's ``only_if``: the account ``user_id`` named ``username`` still exists.

    Stops a sign-in that raced an erasure from naming the person after it: the erasure deletes the
    account, then tombstones the person's audit records under the chain lock, once. A sign-in already
    past its password check wrote its ``signin.password`` success afterwards, in the clear (an attack
    run signing in from 8 threads left 4 such records, the last 1.2 s after the account was gone).
    Checked under the same lock, a record is either in the trail before the erasure reads it (and is
    tombstoned with the rest) or not written at all. The name (and, given, the creation time) is
    compared too, so an account made again under a recycled id is not taken for the erased one.
    """
    query = select(User.id).where(User.id == user_id, User.username == username)
    if created_at is not None:
        query = query.where(User.created_at == created_at)

    async def still_there(conn: AsyncConnection) -> bool:
        return (await conn.execute(query)).first() is not None

    return still_there


def _invalid(exc: ValueError) -> InvalidAccount:
    return InvalidAccount(str(exc))


def _check_display_name(raw: str) -> str:
    name = raw.strip()
    if len(name) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidAccount(f"The display name is longer than {MAX_DISPLAY_NAME_LENGTH} characters.")
    # The joiners are how names are written in some scripts (Persian's zero-width non-joiner) and
    # emoji are built (the joiner, the variation selectors); nothing else a reader cannot see: control
    # characters and bidi overrides make the console or a log line read differently, and a Hangul filler
    # or a line separator passed here while every other name refused them (an attack run).
    for char in name:
        if char not in _NAME_JOINERS and hidden_character(char) is not None:
            if unicodedata.category(char) == "Cc":
                raise InvalidAccount("The display name contains a control character.")
            raise InvalidAccount(
                f"The display name contains a character a reader cannot see (U+{ord(char):04X})."
            )
    return name


_NAME_JOINERS: Final = frozenset("\u200c\u200d\ufe0e\ufe0f")


def account_name(raw: str) -> str:
    """The username an account created as ``raw`` is stored under (400 ``InvalidAccount`` if none).

    A check made before creating the account (is it an admin already by the policy's g-lines?) must
    read the name as it will be stored: ``GHOST`` is ``ghost``.
    """
    try:
        return canonical_username(raw)
    except ValueError as exc:
        raise _invalid(exc) from exc


def account_roles(roles: Sequence[str]) -> list[str]:
    """The local roles as they will be stored (``" admin"`` is ``admin``), or 400 ``InvalidAccount``:
    what a check of the roles before a change must read."""
    return _check_roles(roles).split()


# As the console's RoleName: a role is a name, not a paragraph (the CLI took 100,000 characters).
_MAX_ROLE_LENGTH: Final = 128
_ROLE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@/:-]*")


def _check_roles(roles: Sequence[str]) -> str:
    cleaned: list[str] = []
    for role in roles:
        name = role.strip()
        # Stored space-separated: a role with a space or comma would silently become two roles.
        # Nor a character a reader cannot see (gateway.names): "admin\u200b" reads as "admin" wherever
        # it is shown, and is another role (a fuzzing run stored it).
        # ASCII only, as service accounts' roles: "\u0430dmin" (a Cyrillic a) read as "admin" in the
        # proposal that linked it to the admin role, and the approver made its holder an admin (an
        # attack run).
        if not name or len(name) > _MAX_ROLE_LENGTH or not _ROLE_NAME.fullmatch(name):
            raise InvalidAccount(
                f"Invalid role name {role[:40]!r}: 1-{_MAX_ROLE_LENGTH} of the ASCII letters, digits and "
                "_ . @ / : - (no spaces, commas or other scripts), starting with a letter or digit."
            )
        if _speaks_for_another(name):
            # A role is added to the person's principals as it is: "client:deployer" or "user:boss" would
            # give them a machine client's or another person's grants (an attack run did both).
            raise InvalidAccount(
                f"Invalid role name {role!r}: a role is a bare name, not 'authenticated' and without a "
                "'user:', 'group:', 'client:' or 'scope:' prefix (those name principals, not roles)."
            )
        if name not in cleaned:
            cleaned.append(name)
    return " ".join(cleaned)


def _speaks_for_another(role: str) -> bool:
    """Whether a role name is spelled as a principal of its own (any case: no reason to allow them)."""
    folded = role.casefold()
    return folded == "authenticated" or folded.startswith(("user:", "group:", "client:", "scope:"))


def _same_password(new: str, current: str | None) -> bool:
    # Compared as they are hashed (NFKC): a different Unicode spelling of the same password is the same.
    if current is None:
        return False
    return unicodedata.normalize("NFKC", new) == unicodedata.normalize("NFKC", current)


def _login_candidates(login: str) -> tuple[str, ...]:
    # A login may be a username or an email alias. Usernames may contain "@", so both readings are
    # tried; they differ only in the details of folding (case folding vs lower-casing).
    candidates: list[str] = []
    for fold in (canonical_username, canonical_email):
        try:
            value = fold(login)
        except ValueError:
            continue
        if value not in candidates:
            candidates.append(value)
    return tuple(candidates)


def _search_terms(text: str) -> str:
    # What is stored is canonical (NFKC, case-folded), so the search term is folded the same way.
    return unicodedata.normalize("NFKC", text).casefold().strip()


def device_generation(user: User) -> str:
    """The account's password generation, which its known-device cookies are bound to."""
    return password_generation(user.password_hash is not None, user.password_changed_at)


def _failure_reason(user: User | None, *, correct: bool) -> str:
    # For the audit trail only; the answer to the client is the same for all of them.
    if user is None:
        return "unknown-user"
    if user.password_hash is None:
        return "no-password"
    if not correct:
        return "bad-password"
    if user.restricted:
        return "restricted"
    if user.closed_at is not None:
        return "closed"
    return "disabled"


def _spelling_key(login: str, candidates: tuple[str, ...]) -> str:
    """What a known account's alias (the email typed for the username) is counted under as well: its
    canonical spelling (a hash of it in the odd case it looks like a secret)."""
    if candidates and not looks_secret(candidates[0]):
        return candidates[0]
    return _unmatchable_key(login)


def _unmatchable_key(login: str, key: bytes = b"") -> str:
    # "~" plus hex is neither a valid username (no "~") nor an email (no "@"), so it cannot collide
    # with one; keyed (HMAC) where the keyring is at hand, so the digest of a password typed into the
    # username box cannot be reversed by trying a dictionary against it.
    folded = unicodedata.normalize("NFKC", login).casefold().strip().encode("utf-8", "surrogatepass")
    digest = hmac.new(key, folded, hashlib.sha256) if key else hashlib.sha256(folded)
    return "~" + digest.hexdigest()[:32]


class AccountService:
    """Local accounts on the relational store.

    Args:
        db: The open database.
        hasher: Password hashing and policy.
        regulator: Failed-attempt limits per canonical account.
        audit: The audit trail.
        clock: Time source for timestamps.
        sessions: Session store, so disabling or deleting an account ends its sessions at once.
            ``None`` where none is reachable (a CLI without Redis); the caller then tells the operator.
    """

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        regulator: Regulator,
        audit: AuditLog,
        clock: Clock,
        *,
        sessions: SessionRevoker | None = None,
        keyring: Keyring | None = None,
        ledger: AccountLedger | None = None,
        invitations: Invitations | None = None,
    ) -> None:
        self._db = db
        self._hasher = hasher
        self._regulator = regulator
        self._audit = audit
        self._clock = clock
        self._sessions = sessions
        # Retires a deleted account's name (identity.retired); every gateway and CLI writer passes it.
        self._keyring = keyring
        # A browser that signed in before has failed attempts of its own (identity.devices).
        self.devices = KnownDevices(keyring) if keyring is not None else None
        # Deletions and disables a restore must not undo (identity.ledger); every gateway and CLI
        # writer passes it.
        self._ledger = ledger
        # An account shut out (disabled, restricted, closed) loses its pending invitation: the link
        # must not work again once the account is opened again (an attack run set the password of a
        # re-enabled account through the link it had been disabled for).
        self._invitations = invitations

    @property
    def ledger(self) -> AccountLedger | None:
        """The account ledger deletions and disables are noted in (``None`` in tests that need none)."""
        return self._ledger

    @property
    def revokes_sessions(self) -> bool:
        """Whether disable/delete can end sessions (a session store was given)."""
        return self._sessions is not None

    # -- creating and finding -------------------------------------------------------------------------

    async def create(
        self,
        *,
        username: str,
        password: str | None,
        email: str | None = None,
        display_name: str = "",
        roles: Sequence[str] = (),
        must_change_password: bool = False,
        actor: str,
    ) -> User:
        """Create a local account.

        Args:
            username: As typed; stored canonical (see :mod:`gateway.identity.names`).
            password: The initial password, or ``None`` for an account that signs in only through an
                identity provider or a passkey.
            email: Optional email address; also accepted as a login.
            display_name: Shown in the portal and to upstreams' users.
            roles: Locally granted roles.
            must_change_password: The user must choose a new password after the first sign-in.
            actor: Who is doing this, for the audit trail (``"admin:bob"``, ``"cli:root"``).

        Returns:
            The new user.

        Raises:
            InvalidAccount: The username, email, display name or a role is not acceptable.
            AccountExists: The username or email is taken, as a username or as an email.
            WeakPassword: The password does not meet the policy.
        """
        try:
            name = canonical_username(username)
            address = canonical_email(email) if email is not None and email.strip() else None
        except ValueError as exc:
            raise _invalid(exc) from exc
        if (mixed := mixed_script(name) or look_alike_shape(name)) is not None:
            raise InvalidAccount(mixed)
        if name in RESERVED_USERNAMES:
            raise InvalidAccount(
                f"{name!r} is what the audit trail calls the gateway itself; choose another username."
            )
        if (looks_like := system_shaped(name)) is not None:
            raise InvalidAccount(
                f"{name!r} reads as {looks_like} in the audit trail; choose another username."
            )
        shown_name = _check_display_name(display_name)
        role_list = _check_roles(roles)
        password_hash: str | None = None
        if password is not None:
            # Checked against what the account is known by too (SP 800-63B: context-specific words).
            problem = await self._hasher.check_new(password, personal=(name, address or "", shown_name))
            if problem is not None:
                raise WeakPassword(problem)
        # Read first, so a taken name fails before the password is hashed; checked again below.
        async with self._db.session() as session:
            with store_errors("cannot read accounts"):
                await self._refuse_taken(session, name, address)
        if password is not None:
            # Hashed outside the transaction: it takes tens of milliseconds and holds no lock meanwhile.
            password_hash = await self._hasher.hash(password)
        now = self._clock.now()
        # An admin who sets the first password knows it (see :meth:`lineage`); written with the
        # account, so no failure in between leaves it unrecorded.
        issuer = await self._issuer(actor, 0) if password_hash is not None else None
        user = User(
            username=name,
            email=address,
            display_name=shown_name,
            password_hash=password_hash,
            disabled=False,
            must_change_password=must_change_password,
            roles=role_list,
            created_at=now,
            updated_at=now,
            password_changed_at=now if password_hash is not None else None,
        )
        async with self._db.session(write=True) as session:
            with store_errors("cannot create the account"):
                # Under the names' lock: a service account, or a username equal to this email, made
                # since the read above is seen here (no constraint spans the two tables or columns).
                await hold_names(session)
                await self._refuse_taken(session, name, address)
                session.add(user)
                try:
                    if issuer is not None:
                        await session.flush()  # the new account's id
                        await issuers.note_issuer(session, user.id, issuer)
                    await session.commit()
                except IntegrityError as exc:
                    raise AccountExists(
                        f"An account named {name!r} or with that email already exists."
                    ) from exc
        await self._audit.record(
            "user.created",
            actor=actor,
            subject=name,
            details={
                "email": address or "",
                "roles": role_list,
                "has_password": password_hash is not None,
                "must_change_password": must_change_password,
            },
        )
        return user

    async def _refuse_taken(self, session: AsyncSession, name: str, address: str | None) -> None:
        """Raise AccountExists if a person holds the name or the email (as either), or a service
        account the name."""
        identifiers = {name} if address is None else {name, address}
        taken = (
            await session.scalars(
                select(User).where(or_(User.username.in_(identifiers), User.email.in_(identifiers)))
            )
        ).first()
        if taken is not None:
            raise self._exists(taken, name, address)
        if await service_account_names(session, [name]):
            raise AccountExists(
                f"A service account is named {name!r}: the applications would not tell the two apart "
                "(X-Gateway-User, the assertion's sub). Choose another username."
            )
        if read := (await look_alikes(session, [name])).get(name):
            raise InvalidAccount(
                f"{name!r} reads as {read!r}, a name already in use: choose another username."
            )

    @staticmethod
    def _exists(taken: User, name: str, address: str | None) -> AccountExists:
        if name in (taken.username, taken.email):
            return AccountExists(f"An account named {name!r} already exists.")
        return AccountExists(f"The email address {address!r} is already used by another account.")

    async def find(self, login: str) -> User | None:
        """The account a login names: a username or an email alias, in any spelling that folds to it.

        Args:
            login: What was typed (``ALICE``, ``alice@Example.com``, full-width letters all work).

        Returns:
            The user, or ``None`` when no account matches (or the login is not a valid name at all).
        """
        return await self._find(_login_candidates(login))

    async def _find(self, candidates: tuple[str, ...]) -> User | None:
        if not candidates:
            return None
        async with self._db.session() as session:
            with store_errors("cannot read accounts"):
                users = (
                    await session.scalars(
                        select(User).where(or_(User.username.in_(candidates), User.email.in_(candidates)))
                    )
                ).all()
        # Usernames and emails are kept disjoint at creation, so at most one user matches a single
        # spelling; if two readings of a login hit two users, the username is the stronger claim.
        for user in users:
            if user.username in candidates:
                return user
        return users[0] if users else None

    async def get(self, user_id: int) -> User | None:
        """The account with this id, or ``None``."""
        async with self._db.session() as session:
            with store_errors("cannot read accounts"):
                return await session.get(User, user_id)

    async def _require(self, user_id: int) -> User:
        user = await self.get(user_id)
        if user is None:
            raise UnknownAccount(f"No account has id {user_id}.")
        return user

    # -- signing in -----------------------------------------------------------------------------------

    async def authenticate(
        self, login: str, password: str, *, ip: str, device: str | None = None
    ) -> SignInResult:
        """Check a login and password: the first factor of a sign-in.

        Args:
            login: Username or email alias, as typed.
            password: The password, as typed.
            ip: The client address, for regulation and the audit trail.
            device: The browser's known-device cookie, if it sent one: a valid one for the account
                counts the attempt apart from everyone else's (:mod:`gateway.identity.devices`).

        Returns:
            The user, and whether they must change their password before going on.

        Raises:
            SignInFailed: Unknown login, wrong password, no password set or account disabled; one
                answer for all (the audit trail records which).
            AccountLocked: Too many failures in a row for this account (or login); raised before
                the password is checked. Says when to try again.
        """
        candidates = _login_candidates(login)
        user = await self._find(candidates)
        # The counter is per person: whichever alias was typed, a known account counts under its
        # username. An unknown login counts under a keyed digest of what was typed, so locks behave
        # the same whether or not the account exists, and what was typed is never kept: a password
        # typed into the username box is often a valid username (an attack run found passphrases in
        # the audit trail and the sinks), and a login holding the known-device separator made the
        # lock's record name a real account that was never locked (another attack run).
        typed = _spelling_key(login, candidates) if user is not None else self._unknown_key(login)
        key = user.username if user is not None else typed
        regulated = self.regulation_key(user, device) if user is not None else key
        async with contextlib.AsyncExitStack() as stack:
            # An alias (the email) also counts under its own spelling, and only that spelling's counter
            # answers "too many attempts"; the account's is enforced silently. Otherwise failing one
            # spelling and trying the other told whether the two are one account (429) or not (401):
            # an attack run mapped email addresses to usernames that way.
            spelled = (
                await stack.enter_async_context(self._regulator.attempt(typed))
                if user is not None and typed != user.username
                else None
            )
            try:
                attempt = await stack.enter_async_context(self._regulator.attempt(regulated))
            except AccountLocked:
                if spelled is None:
                    raise
                await self._hasher.verify(None, password)  # the time a wrong password takes
                await spelled.fail(ip=ip, factor=_PASSWORD_FACTOR)
                await self._failed(user, key, ip, reason="locked")
                raise SignInFailed(SIGN_IN_FAILED_MESSAGE) from None
            stored = user.password_hash if user is not None else None
            # Always hash, also with no account or no password (None = dummy hash of equal cost): the
            # answer time must not tell an unknown user from a wrong password.
            correct = await self._hasher.verify(stored, password)
            if user is None or stored is None or not correct or not user.can_sign_in:
                await attempt.fail(ip=ip, factor=_PASSWORD_FACTOR)
                if spelled is not None:
                    await spelled.fail(ip=ip, factor=_PASSWORD_FACTOR)
                await self._failed(user, key, ip, reason=_failure_reason(user, correct=correct))
                raise SignInFailed(SIGN_IN_FAILED_MESSAGE)
        # No reset of the failure counter here: a correct password is only half of a sign-in for a
        # user with a second factor, and resetting on it let an attacker who knows the password guess
        # codes without end (sign in again, guess again). The caller resets it once the whole sign-in
        # is done (see ``Regulator.record_success``).
        rehashed = False
        if self._hasher.needs_rehash(stored):
            rehashed = await self._rehash(user, stored, password)
        if not await self._audit.record_if(
            account_exists(user.id, user.username, created_at=user.created_at),
            "signin.password",
            actor=f"user:{user.username}",
            subject=user.username,
            ip=ip,
            details={"rehashed": rehashed} if rehashed else None,
        ):
            # Erased (or deleted) while the password was checked: the answer a deleted account gets,
            # and no record naming the person the erasure has just tombstoned (see account_exists).
            await self._failed_unnamed(ip)
            raise SignInFailed(SIGN_IN_FAILED_MESSAGE)
        return SignInResult(
            user=user, must_change_password=user.must_change_password, regulation_key=regulated
        )

    async def _failed(self, user: User | None, key: str, ip: str, *, reason: str) -> None:
        details = {"reason": reason}
        if user is None:
            await self._audit.record(
                "signin.password",
                actor="anonymous",
                # The keyed digest of what was typed: detection still tells the logins of a spraying
                # run apart, and nothing typed (often a password in the wrong box) is kept.
                subject=key,
                ip=ip,
                outcome="failure",
                details=details,
            )
            return
        if not await self._audit.record_if(
            account_exists(user.id, user.username, created_at=user.created_at),
            "signin.password",
            actor=f"user:{user.username}",
            subject=key,
            ip=ip,
            outcome="failure",
            details=details,
        ):
            await self._failed_unnamed(ip)

    async def _failed_unnamed(self, ip: str) -> None:
        # The account was erased meanwhile (see account_exists): the attempt is still recorded, for
        # detection, but as a login no account answers to and without the erased name.
        await self._audit.record(
            "signin.password", actor="anonymous", ip=ip, outcome="failure", details={"reason": "unknown-user"}
        )

    def _unknown_key(self, login: str) -> str:
        """What a login no account answers to is counted and audited under (:func:`_unmatchable_key`)."""
        key = self._keyring.derive(_UNKNOWN_LOGIN_INFO) if self._keyring is not None else b""
        return _unmatchable_key(login, key)

    def regulation_key(self, user: User, device: str | None) -> str:
        """What a sign-in step of ``user`` from a browser with this known-device cookie is counted
        under (:mod:`gateway.identity.devices`)."""
        if self.devices is None:
            return user.username
        return self.devices.regulation_key(user.username, device_generation(user), device)

    async def _rehash(self, user: User, stored: str, password: str) -> bool:
        # The password is only known in the clear at sign-in: the one moment to move an old hash to
        # the current cost parameters.
        new_hash = await self._hasher.hash(password)
        async with self._db.session(write=True) as session:
            with store_errors("cannot update the password hash"):
                # Compare-and-set: a password change that landed meanwhile must not be overwritten.
                updated = (
                    await session.scalars(
                        update(User)
                        .where(User.id == user.id, User.password_hash == stored)
                        .values(password_hash=new_hash)
                        .returning(User.id)
                    )
                ).all()
                await session.commit()
        if updated:
            user.password_hash = new_hash
        return bool(updated)

    # -- changing accounts ----------------------------------------------------------------------------

    async def set_password(
        self,
        user_id: int,
        new_password: str,
        *,
        actor: str,
        current_password: str | None = None,
        must_change_password: bool = False,
        ip: str = "",
        regulate_as: str | None = None,
    ) -> None:
        """Set a new password.

        Sessions are left alone: the caller decides (the portal ends the user's other sessions; an
        admin reset may want to disable the account instead).

        Args:
            user_id: The account.
            new_password: The new password; checked against the policy.
            actor: Who is doing this, for the audit trail.
            current_password: When given (the user changing their own password), it must be correct;
                a wrong one counts as a failed sign-in step. ``None`` for an admin reset.
            must_change_password: Make the user choose another password at the next sign-in (an admin
                handing out a temporary password).
            ip: The client address, for regulation and the audit trail.
            regulate_as: What a wrong ``current_password`` is counted under (:meth:`regulation_key`:
                the account and the person's known device); the account by default.

        Raises:
            UnknownAccount: No such user.
            WeakPassword: The new password does not meet the policy, or is ``current_password``.
            WrongPassword: ``current_password`` is not correct.
            AccountLocked: Too many failures for this account (only when ``current_password`` is given).
        """
        user = await self._require(user_id)
        problem = await self._hasher.check_new(
            new_password, personal=(user.username, user.email or "", user.display_name)
        )
        if problem is None and _same_password(new_password, current_password):
            # Keeping the current password would make a forced change a no-op: whoever handed out a
            # one-time password would still know it.
            problem = SAME_PASSWORD_MESSAGE
        if problem is not None:
            raise WeakPassword(problem)
        if current_password is not None:
            # A stolen session must not become a way to guess the password without limit.
            async with self._regulator.attempt(regulate_as or user.username) as attempt:
                if not await self._hasher.verify(user.password_hash, current_password):
                    await attempt.fail(ip=ip, factor=_PASSWORD_FACTOR)
                    await self._audit.record(
                        "user.password_changed",
                        actor=actor,
                        subject=user.username,
                        ip=ip,
                        outcome="failure",
                        details={"reason": "bad-current-password"},
                    )
                    raise WrongPassword(WrongPassword.title)
            # A correct current password resets nothing: like at sign-in, it is one factor, and a
            # forced change happens before the second factor (the counter must keep its codes).
        new_hash = await self._hasher.hash(new_password)
        now = self._clock.now()
        # An admin who sets it knows it (the person redeeming an invitation sets their own: who
        # issued the link stays the issuer).
        issuer = await self._issuer(actor, user_id) if current_password is None else None
        # Noted in the ledger: a restore from an earlier backup must not bring the old password back.
        await self._update_noted(
            user_id,
            (user, "password-set"),
            {
                "password_hash": new_hash,
                "password_changed_at": now,
                "must_change_password": must_change_password,
                "updated_at": now,
            },
            issuer=issuer,
        )
        await self._audit.record(
            "user.password_changed",
            actor=actor,
            subject=user.username,
            ip=ip,
            details={"by_admin": current_password is None, "must_change_password": must_change_password},
        )

    async def _update(self, user_id: int, **values: object) -> None:
        await self._update_noted(user_id, None, values)

    async def note_issued(self, user_id: int, *, actor: str) -> None:
        """Record that the admin's account ``actor`` names (``user:<name>``) issued credentials of
        ``user_id`` (a one-time password, an invitation link, a new email address). The host's operator
        (``cli:``) and the gateway itself record nothing. Read by :meth:`lineage`."""
        if (issuer := await self._issuer(actor, user_id)) is not None:
            async with self._db.session(write=True) as session:
                with store_errors("cannot record who issued the account's credentials"):
                    await issuers.note_issuer(session, user_id, issuer)
                    await session.commit()

    async def _issuer(self, actor: str, user_id: int) -> int | None:
        """The account of the admin ``actor`` names when it is not ``user_id`` itself; else None
        (:meth:`note_issued`)."""
        issuer = await self._actor_account(actor)
        return None if issuer is None or issuer.id == user_id else issuer.id

    async def role_holders(self) -> dict[str, tuple[str, ...]]:
        """Every account that holds local roles: username → its roles (for what a policy change does
        to them: who it makes an admin, which roles are held although no ``g`` line names them)."""
        async with self._db.session() as session:
            with store_errors("cannot read the accounts' roles"):
                rows = (
                    await session.execute(select(User.username, User.roles).where(User.roles != ""))
                ).all()
        return {name: tuple(roles.split()) for name, roles in rows if roles.strip()}

    async def gone_since(self, actor: str, since: datetime) -> bool:
        """Whether the account the actor ``user:<name>`` named at ``since`` is gone: the one holding
        the name now was made after (a re-attack run had a second admin make a new account under a
        deleted proposer's name, which took the proposer's place), or none does and the name was
        retired (deleted; that needs the keyring)."""
        if not actor.startswith("user:"):
            return False
        name = actor.removeprefix("user:")
        holder = await self.find(name)
        if holder is not None:
            return holder.created_at > since
        if self._keyring is None:
            return False
        async with self._db.session() as session:
            with store_errors("cannot read retired usernames"):
                return bool(await retired_among(session, self._keyring, [name]))

    async def _actor_account(self, actor: str) -> User | None:
        """The account an actor ``user:<name>`` names; None for other actors."""
        return await self.find(actor.removeprefix("user:")) if actor.startswith("user:") else None

    async def lineage(self, actor: str) -> frozenset[int]:
        """The account ``actor`` names (``user:<name>``), every admin's account that issued its
        credentials, every one that issued theirs, and so on: whoever holds one of them may hold the
        others (an attack run had an admin make an account, set its password and, once a second admin
        made it an admin, approve his own proposals with it). Empty for other actors."""
        user = await self._actor_account(actor)
        return frozenset() if user is None else await issuers.lineage(self._db, user.id)

    async def _update_noted(
        self,
        user_id: int,
        ledger: tuple[User, State] | None,
        values: dict[str, object],
        *,
        ref: str = "",
        issuer: int | None = None,
    ) -> None:
        """Set ``values``; with ``ledger``, note that state (and ``ref``) in the account ledger, and with
        ``issuer``, who issued the credentials set, in the same transaction."""
        noted: list[Entry] = []
        async with self._db.session(write=True) as session:
            with store_errors("cannot update the account"):
                changed = (
                    await session.scalars(
                        update(User).where(User.id == user_id).values(**values).returning(User.id)
                    )
                ).all()
                if changed and ledger is not None and self._ledger is not None:
                    noted.append(await self._ledger.note(session, *ledger, ref=ref))
                if changed and issuer is not None:
                    await issuers.note_issuer(session, user_id, issuer)
                await session.commit()
        if not changed:
            raise UnknownAccount(f"No account has id {user_id}.")
        if self._ledger is not None:
            await self._ledger.append(noted)

    async def disable(self, user_id: int, *, actor: str) -> int | None:
        """Disable an account and end all its sessions.

        Args:
            user_id: The account.
            actor: Who is doing this, for the audit trail.

        Returns:
            How many sessions were ended, or ``None`` without a session store (they then end only
            when the gateways that cache them are restarted, or by their idle timeout).

        Raises:
            UnknownAccount: No such user.
        """
        user = await self._require(user_id)
        # Disabled first, sessions second: once the flag is committed no new sign-in can succeed, so
        # no session can be created after the revocation sweep has passed.
        await self._update_noted(
            user_id, (user, "disabled"), {"disabled": True, "updated_at": self._clock.now()}
        )
        revoked = await self._shut_out(user_id)
        await self._audit.record(
            "user.disabled",
            actor=actor,
            subject=user.username,
            details={"sessions_revoked": revoked if revoked is not None else "unknown"},
        )
        return revoked

    async def enable(self, user_id: int, *, actor: str) -> None:
        """Enable a disabled account again.

        Raises:
            UnknownAccount: No such user.
        """
        user = await self._require(user_id)
        await self._update_noted(
            user_id, (user, "enabled"), {"disabled": False, "updated_at": self._clock.now()}
        )
        await self._audit.record("user.enabled", actor=actor, subject=user.username)

    async def require_password_change(self, user_id: int, *, actor: str) -> None:
        """Make the user choose a new password at their next sign-in.

        Sessions already signed in are left alone (the caller may end them): the hold is placed on
        a session when it signs in, from the account's flag.

        Raises:
            UnknownAccount: No such user.
            NoPassword: The account has no password to change (identity provider or passkey only).
        """
        user = await self._require(user_id)
        if user.password_hash is None:
            raise NoPassword(
                f"{user.username} has no password (they sign in through an identity provider or a "
                "passkey): there is nothing to change."
            )
        # Noted as a password set: a restore from an earlier backup clears the password it ordered
        # changed (a re-attack run's restore let the suspected-leaked one sign in again).
        await self._update_noted(
            user_id, (user, "password-set"), {"must_change_password": True, "updated_at": self._clock.now()}
        )
        await self._audit.record("user.password_change_required", actor=actor, subject=user.username)

    async def clear_password(self, user_id: int, *, actor: str) -> int | None:
        """Remove the account's password, so that it can sign in with one only after choosing a new one
        (an admin re-inviting the user: :mod:`gateway.identity.invitations`). Its sessions end too:
        they may have been signed in with the password being withdrawn.

        Returns:
            How many sessions were ended, or ``None`` without a session store.

        Raises:
            UnknownAccount: No such user.
        """
        user = await self._require(user_id)
        # Cleared first, sessions second (as in disable): a sign-in racing this finds no password.
        await self._update_noted(
            user_id,
            (user, "password-set"),
            {
                "password_hash": None,
                "must_change_password": False,
                "password_changed_at": None,
                "updated_at": self._clock.now(),
            },
        )
        revoked = await self._revoke(user_id)
        await self._audit.record(
            "user.password_cleared",
            actor=actor,
            subject=user.username,
            details={"sessions_revoked": revoked if revoked is not None else "unknown"},
        )
        return revoked

    async def set_roles(self, user_id: int, roles: Sequence[str], *, actor: str) -> RolesChanged:
        """Replace the account's local roles.

        A session carries the roles it signed in with, so a removed role would live on in it: when a
        role is removed, the user's sessions end (invariant 4: authorization changes take effect at
        once). Added roles reach the user at the next sign-in.

        Raises:
            UnknownAccount: No such user.
            InvalidAccount: A role name is not acceptable (spaces, commas, control characters).
        """
        user = await self._require(user_id)
        cleaned = _check_roles(roles)
        before, after = user.roles.split(), cleaned.split()
        added = tuple(r for r in after if r not in before)
        removed = tuple(r for r in before if r not in after)
        if added or removed or cleaned != user.roles:
            # Noted in the ledger: a restore from an earlier backup must not give a removed role back.
            await self._update_noted(
                user_id, (user, "roles-set"), {"roles": cleaned, "updated_at": self._clock.now()}, ref=cleaned
            )
        # Roles first, sessions second (as in disable): a sign-in racing the change either reads the new
        # roles or, having read the old ones, sees the change once its session exists and ends it
        # (web.flows.still_allowed).
        ended = await self._revoke(user_id) if removed else 0
        if added or removed:
            await self._audit.record(
                "user.roles_changed",
                actor=actor,
                subject=user.username,
                details={
                    "roles": cleaned,
                    "added": " ".join(added),
                    "removed": " ".join(removed),
                    "sessions_revoked": ended if ended is not None else "unknown",
                },
            )
        return RolesChanged(roles=tuple(after), added=added, removed=removed, sessions_ended=ended)

    async def delete(
        self,
        user_id: int,
        *,
        actor: str,
        expect: Callable[[User], bool] | None = None,
        recorded_as: str | None = None,
    ) -> int | None:
        """Delete an account with all its factors (TOTP, WebAuthn, recovery codes) and sessions.

        Audit events about the user stay: the trail is append-only and outlives the account.

        Args:
            user_id: The account.
            actor: Who is doing this, for the audit trail.
            expect: What the account must still be, checked in the deleting transaction (a retention
                run chose it minutes earlier: since reopened, or deleted and its id given to a new one).
            recorded_as: The subject of the ``user.deleted`` record instead of the username: an
                erasure's tombstone. The record reaches the log sinks at once, where the erasure's
                later rewrite of the trail never comes (an attack run found the name in the sink's
                copy, at the erasure and again at every restore that made it again).

        Returns:
            How many sessions were ended, or ``None`` without a session store.

        Raises:
            UnknownAccount: No such user, or not as ``expect`` wants it.
        """
        async with self._db.session(write=True) as session:
            with store_errors("cannot delete the account"):
                user = await session.get(User, user_id)
                if user is None or (expect is not None and not expect(user)):
                    raise UnknownAccount(f"No account has id {user_id}.")
                username = user.username
                # Noted before the row goes (its key needs the row): a restore deletes it again.
                noted = (
                    [await self._ledger.note(session, user, "deleted")] if self._ledger is not None else []
                )
                # The factor rows go with the user through ON DELETE CASCADE (SQLite has foreign
                # keys turned on per connection by the store); so do its credential issuers, whose
                # lineages are joined around it first.
                await issuers.bridge(session, user_id)
                await session.delete(user)
                if self._keyring is not None:
                    # The name keeps its meaning elsewhere (policy lines, the apps' data): no
                    # provider sign-in may hand it to someone else (identity.retired).
                    await retire(session, self._keyring, username, at=self._clock.now())
                await session.commit()
        if self._ledger is not None:
            await self._ledger.append(noted)
        # Deleted first (see disable): no sign-in can create a session after the sweep.
        revoked = await self._revoke(user_id)
        await self._audit.record(
            "user.deleted",
            actor=actor,
            subject=recorded_as or username,
            details={"sessions_revoked": revoked if revoked is not None else "unknown"},
        )
        return revoked

    async def end_sessions(self, user_id: int, *, actor: str) -> int | None:
        """End every session of an account, on every worker and replica (a new password for a
        compromised account does not end the sessions the old one opened by itself).

        Returns:
            How many sessions were ended, or ``None`` without a session store.

        Raises:
            UnknownAccount: No such user.
        """
        user = await self._require(user_id)
        revoked = await self._revoke(user_id)
        await self._audit.record(
            "session.revoked",
            actor=actor,
            subject=user.username,
            details={"all": revoked if revoked is not None else "unknown"},
        )
        return revoked

    async def _shut_out(self, user_id: int) -> int | None:
        """End the account's sessions and withdraw its pending invitation (see ``_revoke``)."""
        revoked = await self._revoke(user_id)
        if self._invitations is not None:
            try:
                await self._invitations.withdraw(user_id)
            except StateUnavailable:
                # The link answers 410 while the account is shut out; an administrator who opens it
                # again before the store answers must issue a new invitation to end the old link.
                logger.warning(
                    "account %d: the invitation store did not answer; its link was not withdrawn", user_id
                )
        return revoked

    async def _revoke(self, user_id: int) -> int | None:
        """End every session of the account: how many, or ``None`` when that is not known now (no
        session store; or it did not answer, and the sessions are owed an end: identity.owed)."""
        if self._sessions is None:
            return None
        try:
            return await self._sessions.revoke_user(user_id)
        except StateUnavailable:
            # The account change is committed already: every gateway ends the sessions once the
            # store answers again, and a retry of the command is not needed (a delete's would fail).
            await owe(self._db, user_id, self._clock, self._sessions)
            logger.warning(
                "account %d: the session store did not answer; its sessions are owed an end", user_id
            )
            return None

    # -- privacy: rectification, restriction, closure ----------------------------------------------------

    async def set_profile(
        self, user_id: int, *, email: str | None = None, display_name: str | None = None, actor: str
    ) -> tuple[str, ...]:
        """Correct the email and/or display name (rectification); ``None`` leaves a field as it is.

        An empty email removes it. The audit record names the fields changed, never their values.

        Returns:
            The fields that changed.

        Raises:
            UnknownAccount: No such user.
            InvalidAccount: The email or display name is not acceptable.
            AccountExists: The email belongs to another account (as its email or username).
        """
        user = await self._require(user_id)
        values: dict[str, object] = {}
        issuer: int | None = None
        if email is not None:
            try:
                address = canonical_email(email) if email.strip() else None
            except ValueError as exc:
                raise _invalid(exc) from exc
            if address != user.email:
                values["email"] = address  # checked where it is written (_update_email)
                if address is not None:
                    # An identity provider's sign-in with that address finds this account (link by
                    # email, preprovisioned accounts): an admin who chose it may hold it (a re-attack
                    # run made a second approver so).
                    issuer = await self._issuer(actor, user_id)
        if display_name is not None:
            shown = _check_display_name(display_name)
            if shown != user.display_name:
                values["display_name"] = shown
        if not values:
            return ()
        if values.get("email") is not None:
            await self._update_email(
                user, str(values["email"]), {**values, "updated_at": self._clock.now()}, issuer=issuer
            )
        else:
            # An address removed is noted in the ledger too: a restore must not bring it back.
            noted: tuple[User, State] | None = (user, "email-set") if "email" in values else None
            await self._update_noted(user_id, noted, {**values, "updated_at": self._clock.now()})
        if "email" in values and self._sessions is not None:
            # Live sessions carry the email to the apps (identity headers, assertion): correct them too.
            await self._sessions.set_email(user_id, str(values["email"] or ""))
        changed = tuple(sorted(values))
        await self._record_about(
            user, "user.profile_changed", actor=actor, details={"fields": " ".join(changed)}
        )
        return changed

    async def _update_email(
        self, user: User, address: str, values: dict[str, object], *, issuer: int | None
    ) -> None:
        """Set ``values`` with a new email, checked again under the names' lock: a username equal to the
        address created meanwhile is seen (no constraint spans the two columns; a re-attack run got
        15 of 20 such pairs through before). ``issuer``: the admin who chose the address, recorded in the
        same transaction."""
        user_id = user.id
        noted: list[Entry] = []
        async with self._db.session(write=True) as session:
            with store_errors("cannot update the account"):
                await hold_names(session)
                taken = (
                    await session.scalars(
                        select(User.id).where(
                            or_(User.username == address, User.email == address), User.id != user_id
                        )
                    )
                ).first()
                if taken is not None:
                    raise AccountExists(f"The email address {address!r} is already used by another account.")
                changed = (
                    await session.scalars(
                        update(User).where(User.id == user_id).values(**values).returning(User.id)
                    )
                ).all()
                if changed and issuer is not None:
                    await issuers.note_issuer(session, user_id, issuer)
                if changed and self._ledger is not None:
                    # A restore from an earlier backup must not bring the old address back (an identity
                    # provider's sign-in with it would find the account again: a re-attack run).
                    noted.append(await self._ledger.note(session, user, "email-set"))
                await session.commit()
        if not changed:
            raise UnknownAccount(f"No account has id {user_id}.")
        if self._ledger is not None:
            await self._ledger.append(noted)

    async def set_restricted(self, user_id: int, restricted: bool, *, actor: str) -> int | None:
        """Restrict processing (no sign-in, data kept, no optional processing), or lift it.

        Restricting ends every session, as disabling does, flag first so no sign-in slips between.

        Returns:
            Sessions ended (0 when lifting; ``None`` without a session store).

        Raises:
            UnknownAccount: No such user.
        """
        user = await self._require(user_id)
        state: State = "restricted" if restricted else "unrestricted"
        await self._update_noted(
            user_id, (user, state), {"restricted": restricted, "updated_at": self._clock.now()}
        )
        revoked = await self._shut_out(user_id) if restricted else 0
        await self._record_about(
            user,
            "user.restricted" if restricted else "user.unrestricted",
            actor=actor,
            details={"sessions_revoked": revoked if revoked is not None else "unknown"},
        )
        return revoked

    async def close(self, user_id: int, *, actor: str) -> int | None:
        """Cancel the registration: no sign-in from now on; the data goes after the retention period.

        Returns:
            Sessions ended (``None`` without a session store).

        Raises:
            UnknownAccount: No such user.
        """
        user = await self._require(user_id)
        now = self._clock.now()
        await self._update_noted(user_id, (user, "closed"), {"closed_at": now, "updated_at": now})
        revoked = await self._shut_out(user_id)
        await self._record_about(
            user,
            "user.closed",
            actor=actor,
            details={"sessions_revoked": revoked if revoked is not None else "unknown"},
        )
        return revoked

    async def _record_about(
        self, user: User, kind: str, *, actor: str, details: dict[str, object] | None = None
    ) -> None:
        """Audit a change to ``user``'s account, naming them, unless the account was erased meanwhile
        (see :func:`account_exists`): a re-attack run's rectifications racing the person's own
        erasure left records naming them after it had tombstoned the trail."""
        await self._audit.record_if(
            account_exists(user.id, user.username, created_at=user.created_at),
            kind,
            actor=actor,
            subject=user.username,
            details=details,
        )

    async def reopen(self, user_id: int, *, actor: str) -> None:
        """Undo a closure before its retention period ends (the person changed their mind).

        Raises:
            UnknownAccount: No such user.
        """
        user = await self._require(user_id)
        await self._update_noted(
            user_id, (user, "reopened"), {"closed_at": None, "updated_at": self._clock.now()}
        )
        await self._audit.record("user.reopened", actor=actor, subject=user.username)

    async def reset_mfa(self, user_id: int, *, actor: str, before: datetime | None = None) -> dict[str, int]:
        """Remove every second factor of an account: TOTP, WebAuthn credentials and recovery codes.

        For a user who lost their devices. The user's sessions end too: each one holds the
        second-factor level that the removed factors granted, and the lost device may itself hold a
        signed-in browser. The user signs in again and enrols at the next sign-in.

        Args:
            user_id: The account.
            actor: Who is doing this, for the audit trail.
            before: Only the factors enrolled before this time (the account ledger making a reset
                again on a restored database leaves a factor enrolled since alone); ``None``: every one.
                Only a reset of every factor is noted in the ledger.

        Returns:
            How many of each were removed: ``{"totp": n, "webauthn": n, "recovery_codes": n}``, plus
            ``"sessions": n`` ended (absent without a session store).

        Raises:
            UnknownAccount: No such user.
        """
        user = await self._require(user_id)
        removed = await self._remove_factors(user, before, note=before is None)
        if before is not None and not any(removed.values()):
            return removed  # nothing enrolled before it: nothing to reset
        # Factors first, sessions second (as in disable): a sign-in racing the reset cannot reach the
        # second-factor level with a removed factor once the sweep has passed.
        revoked = await self._revoke(user_id)
        # And the factors once more: one a session stored while the first removal ran (a passkey
        # registered by a phished session, say) is gone now, and its session ended with the sweep, so
        # none is stored from now on (a re-attack run kept two passkeys past a reset that way).
        again = await self._remove_factors(user, before, note=False)
        removed = {kind: count + again[kind] for kind, count in removed.items()}
        if revoked is not None:
            removed["sessions"] = revoked
        await self._audit.record(
            "user.mfa_reset",
            actor=actor,
            subject=user.username,
            details={**removed, "sessions_revoked": revoked if revoked is not None else "unknown"},
        )
        return removed

    async def _remove_factors(self, user: User, before: datetime | None, *, note: bool) -> dict[str, int]:
        """Delete the account's factors (enrolled before ``before``, if given) in one transaction, noted
        in the ledger if ``note``; how many of each."""
        user_id = user.id
        removed: dict[str, int] = {}
        async with self._db.session(write=True) as session:
            with store_errors("cannot reset the second factors"):
                # One transaction: a failure halfway must not leave recovery codes without the rest.
                removed["totp"] = len(
                    (
                        await session.scalars(
                            delete(TotpCredential)
                            .where(
                                TotpCredential.user_id == user_id, *_enrolled_before(TotpCredential, before)
                            )
                            .returning(TotpCredential.id)
                        )
                    ).all()
                )
                removed["webauthn"] = len(
                    (
                        await session.scalars(
                            delete(WebAuthnCredential)
                            .where(
                                WebAuthnCredential.user_id == user_id,
                                *_enrolled_before(WebAuthnCredential, before),
                            )
                            .returning(WebAuthnCredential.id)
                        )
                    ).all()
                )
                removed["recovery_codes"] = len(
                    (
                        await session.scalars(
                            delete(RecoveryCode)
                            .where(RecoveryCode.user_id == user_id, *_enrolled_before(RecoveryCode, before))
                            .returning(RecoveryCode.id)
                        )
                    ).all()
                )
                await session.execute(
                    update(User).where(User.id == user_id).values(updated_at=self._clock.now())
                )
                # Noted in the ledger: a restore from an earlier backup must not bring a lost device's
                # factor back.
                noted = (
                    [await self._ledger.note(session, user, "factors-reset")]
                    if self._ledger is not None and note
                    else []
                )
                await session.commit()
        if self._ledger is not None:
            await self._ledger.append(noted)
        return removed

    # -- reading --------------------------------------------------------------------------------------

    async def list(
        self, *, limit: int = 100, offset: int = 0, search: str | None = None
    ) -> builtins.list[UserSummary]:
        """Accounts ordered by username, with their factor counts.

        Args:
            limit: At most this many.
            offset: Skip this many first (paging).
            search: Only accounts whose username, email or display name contains this (any case).

        Returns:
            One summary per account.
        """
        totp = (
            select(func.count(TotpCredential.id))
            .where(TotpCredential.user_id == User.id, TotpCredential.confirmed.is_(True))
            .scalar_subquery()
        )
        webauthn = (
            select(func.count(WebAuthnCredential.id))
            .where(WebAuthnCredential.user_id == User.id)
            .scalar_subquery()
        )
        codes = (
            select(func.count(RecoveryCode.id))
            .where(RecoveryCode.user_id == User.id, RecoveryCode.used_at.is_(None))
            .scalar_subquery()
        )
        query = (
            select(User, totp, webauthn, codes)
            .order_by(User.username)
            .limit(max(0, limit))
            .offset(max(0, offset))
        )
        term = _search_terms(search or "")
        if term:
            # autoescape: a "%" or "_" typed into the search box is a character, not a wildcard.
            query = query.where(
                or_(
                    User.username.contains(term, autoescape=True),
                    User.email.contains(term, autoescape=True),
                    func.lower(User.display_name).contains(term, autoescape=True),
                )
            )
        async with self._db.session() as session:
            with store_errors("cannot list accounts"):
                rows = (await session.execute(query)).all()
        return [
            UserSummary(
                id=user.id,
                username=user.username,
                email=user.email,
                display_name=user.display_name,
                roles=tuple(user.roles.split()),
                disabled=user.disabled,
                has_password=user.password_hash is not None,
                must_change_password=user.must_change_password,
                totp=int(n_totp),
                webauthn=int(n_webauthn),
                recovery_codes_left=int(n_codes),
                created_at=user.created_at,
            )
            for user, n_totp, n_webauthn, n_codes in rows
        ]

    async def history(self, username: str, *, limit: int = 50) -> builtins.list[AuditEvent]:
        """The latest audit events about the account or done by it, newest first.

        Args:
            username: The canonical username (``User.username``).
            limit: At most this many.
        """
        query = (
            select(AuditEvent)
            .where(or_(AuditEvent.subject == username, AuditEvent.actor == f"user:{username}"))
            .order_by(AuditEvent.id.desc())
            .limit(max(0, limit))
        )
        async with self._db.session() as session:
            with store_errors("cannot read the audit trail"):
                return builtins.list((await session.scalars(query)).all())

    async def factors(self, user_id: int) -> AccountFactors:
        """The second factors of one account, for display (names and dates, never secrets).

        Raises:
            UnknownAccount: No such user.
        """
        await self._require(user_id)
        async with self._db.session() as session:
            with store_errors("cannot read second factors"):
                totps = (
                    await session.scalars(
                        select(TotpCredential)
                        .where(TotpCredential.user_id == user_id)
                        .order_by(TotpCredential.id)
                    )
                ).all()
                keys = (
                    await session.scalars(
                        select(WebAuthnCredential)
                        .where(WebAuthnCredential.user_id == user_id)
                        .order_by(WebAuthnCredential.id)
                    )
                ).all()
                codes = (
                    await session.execute(
                        select(func.count(RecoveryCode.id), func.count(RecoveryCode.used_at)).where(
                            RecoveryCode.user_id == user_id
                        )
                    )
                ).one()
        total, used = int(codes[0]), int(codes[1])
        return AccountFactors(
            totp=tuple(
                FactorInfo(
                    kind="totp",
                    id=c.id,
                    name=c.name,
                    created_at=c.created_at,
                    last_used_at=c.last_used_at,
                    confirmed=c.confirmed,
                )
                for c in totps
            ),
            webauthn=tuple(
                FactorInfo(
                    kind="webauthn",
                    id=c.id,
                    name=c.name,
                    created_at=c.created_at,
                    last_used_at=c.last_used_at,
                    discoverable=c.discoverable,
                )
                for c in keys
            ),
            recovery_codes_left=total - used,
            recovery_codes_total=total,
        )


def _enrolled_before(
    model: type[TotpCredential] | type[WebAuthnCredential] | type[RecoveryCode], before: datetime | None
) -> tuple[ColumnElement[bool], ...]:
    """The condition "enrolled before ``before``" on a factor table (none: every row)."""
    return () if before is None else (model.created_at < before,)


async def look_alikes(session: AsyncSession, names: Iterable[str]) -> dict[str, str]:
    """Each of ``names`` that reads as another name in use (:mod:`gateway.identity.confusables`), with
    what it reads as: an account's username or email, a service account's name, or a name the audit
    trail gives authority. For a new local account and for an identity provider's candidate names."""
    reads = {name: read for name in names if (read := skeleton(name)) != name}
    if not reads:
        return {}
    wanted = set(reads.values())
    rows = await session.execute(
        select(User.username, User.email).where(or_(User.username.in_(wanted), User.email.in_(wanted)))
    )
    used = {value for row in rows for value in row if value is not None}
    used |= await service_account_names(session, list(wanted))
    used |= wanted & (AUTHORITY_USERNAMES | RESERVED_USERNAMES)
    return {name: read for name, read in reads.items() if read in used}
