"""Service accounts and their API tokens: create, list, delete, issue, revoke; every change audited.

The CLI (``gateway service-account``, ``gateway token``) and the admin API (``/api/service-accounts``,
``/api/tokens``) both call this one class, so both check the same things and write the same audit
records: ``service_account.created|deleted``, ``token.created|revoked`` (the token's public id, never
the token). A token is shown once, in what :meth:`ServiceAccounts.create_token` returns.

Revoking a token (or deleting its account) stamps ``revoked_at`` and then announces the token's hash
on :data:`~gateway.machine.tokens.REVOCATION_CHANNEL`: every worker of every replica drops it from
its cache at once (the cache trusts an entry for at most a second if the announcement is lost).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import msgspec
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.errors import BadRequest, GatewayError
from gateway.identity.ledger import AccountLedger, Entry
from gateway.identity.machine_names import hold_names
from gateway.identity.models import User
from gateway.identity.retired import retire
from gateway.machine.models import ApiToken, ServiceAccount
from gateway.machine.tokens import (
    REVOCATION_CHANNEL,
    hash_token,
    is_gateway_token,
    is_token_id,
    new_token,
    prefix_of,
)
from gateway.names import hidden_character
from gateway.store.db import Database, store_errors
from gateway.store.fast.base import FastState, StateUnavailable

__all__ = [
    "AccountView",
    "InvalidMachineRequest",
    "ServiceAccountExists",
    "ServiceAccounts",
    "TokenView",
    "UnknownServiceAccount",
    "UnknownToken",
    "check_name",
    "check_roles",
]

_log = logging.getLogger(__name__)

# Lower-case ASCII: the name is the policy's client:<name> and X-Gateway-User, so it must read the same
# in a policy file, a header and a log line, with no look-alike spellings.
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# A role as the policy spells it: no spaces, no principal prefix (':' is not allowed).
_ROLE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@/-]{0,127}")
_RESERVED_ROLES: Final = frozenset({"authenticated"})
# The actor the audit trail writes for a refused unknown token (client:unknown): no account's (an attack
# run made one, and its records mixed with the guesses).
_RESERVED_NAMES: Final = frozenset({"unknown"})
_MAX_TEXT: Final = 500
_MAX_ROLES: Final = 64
_MAX_ROUTES: Final = 256


class InvalidMachineRequest(BadRequest):
    """A name, role, route, lifetime or text that cannot be used (400; nothing was changed)."""

    reason = "machine-invalid"


class UnknownServiceAccount(GatewayError):
    status = 404
    reason = "service-account-not-found"
    title = "No such service account"


class ServiceAccountExists(GatewayError):
    status = 409
    reason = "service-account-exists"
    title = "The service account exists"


class UnknownToken(GatewayError):
    status = 404
    reason = "token-not-found"
    title = "No such token"


class AccountView(msgspec.Struct, kw_only=True):
    """A service account as lists show it."""

    name: str
    description: str
    owner: str
    roles: list[str]
    created_at: datetime
    created_by: str
    # Tokens not revoked and not expired.
    active_tokens: int = 0


class TokenView(msgspec.Struct, kw_only=True):
    """A token as lists show it: its public id, never the token."""

    id: str
    account: str
    routes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str
    # active | expired | revoked
    state: str


def check_name(raw: str) -> str:
    """The canonical service-account name, or 400."""
    name = raw.strip().lower()
    if not _NAME.fullmatch(name):
        raise InvalidMachineRequest(
            f"{raw[:70]!r} is not a valid service-account name: 1-63 of a-z 0-9 . _ -, starting with a "
            "letter or digit"
        )
    return name


def check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    """The roles, each a bare policy role name (400 otherwise); duplicates dropped, order kept."""
    if len(roles) > _MAX_ROLES:
        raise InvalidMachineRequest(f"at most {_MAX_ROLES} roles")
    out: list[str] = []
    for role in roles:
        role = role.strip()
        if not _ROLE.fullmatch(role) or role in _RESERVED_ROLES:
            raise InvalidMachineRequest(
                f"{role[:70]!r} is not a usable role name: letters, digits, _ . @ / -, no 'user:', "
                "'group:' or 'client:' prefix, not 'authenticated'"
            )
        if role not in out:
            out.append(role)
    return tuple(out)


def _text(value: str, what: str) -> str:
    value = value.strip()
    # Nothing a reader cannot see either (a right-to-left override in a description made
    # "CI job exe.png" of "CI job gnp.exe" in the list: an attack run).
    if len(value) > _MAX_TEXT or hidden_character(value) is not None:
        raise InvalidMachineRequest(
            f"{what} must be at most {_MAX_TEXT} characters on one line, without characters a reader "
            "cannot see (control, zero-width or direction-changing ones)"
        )
    return value


def _state(row: ApiToken, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    return "expired" if row.expires_at <= now else "active"


def token_view(row: ApiToken, account: str, now: datetime) -> TokenView:
    return TokenView(
        id=row.prefix, account=account, routes=row.routes.split(), created_at=row.created_at,
        created_by=row.created_by, expires_at=row.expires_at, last_used_at=row.last_used_at,
        revoked_at=row.revoked_at, revoked_by=row.revoked_by, state=_state(row, now),
    )  # fmt: skip


class ServiceAccounts:
    """The management of service accounts and tokens (one instance per command or admin process)."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        fast: FastState,
        clock: Clock,
        *,
        max_lifetime: float,
        keyring: Keyring | None = None,
        ledger: AccountLedger | None = None,
    ) -> None:
        self._db = db
        # Retires a deleted account's name, as a person's is (identity.retired): the CLI and the console
        # pass it.
        self._keyring = keyring
        # Notes every revoked token, so a restore from an earlier backup does not bring it back
        # (identity.ledger): the CLI and the console pass it.
        self._ledger = ledger
        self._audit = audit
        self._fast = fast
        self._clock = clock
        self._max_lifetime = max_lifetime

    # -- accounts --------------------------------------------------------------------------------

    async def create_account(
        self,
        name: str,
        *,
        description: str = "",
        owner: str = "",
        roles: Sequence[str] = (),
        actor: str,
        ip: str = "",
    ) -> AccountView:
        """Create a service account (409 if the name is taken, 400 for a bad name or role)."""
        name = check_name(name)
        if name in _RESERVED_NAMES:
            raise InvalidMachineRequest(
                f"{name!r} is what the audit trail calls a token nobody issued (client:{name}); choose "
                "another name"
            )
        row = ServiceAccount(
            name=name, description=_text(description, "The description"), owner=_text(owner, "The owner"),
            roles=" ".join(check_roles(roles)), created_at=self._clock.now(), created_by=actor,
        )  # fmt: skip
        async with self._db.session(write=True) as session:
            with store_errors("cannot create the service account"):
                # Under the names' lock, so a person created at the same moment is seen (hold_names).
                await hold_names(session)
                person = (
                    await session.scalars(
                        select(User.id).where(or_(User.username == name, User.email == name)).limit(1)
                    )
                ).first()
                if person is not None:
                    # One namespace with people: the apps are told the name (X-Gateway-User, sub).
                    raise ServiceAccountExists(
                        f"A person's account is named {name!r}: the applications would not tell the two "
                        "apart. Choose another name."
                    )
                session.add(row)
                try:
                    await session.commit()
                except IntegrityError:
                    raise ServiceAccountExists(f"A service account named {name!r} exists already.") from None
        await self._audit.record(
            "service_account.created", actor=actor, subject=f"client:{name}", ip=ip,
            details={"roles": row.roles.split(), "owner": row.owner},
        )  # fmt: skip
        return self._account_view(row, 0)

    @staticmethod
    def _account_view(row: ServiceAccount, active: int) -> AccountView:
        return AccountView(
            name=row.name, description=row.description, owner=row.owner, roles=row.roles.split(),
            created_at=row.created_at, created_by=row.created_by, active_tokens=active,
        )  # fmt: skip

    async def list_accounts(self) -> list[AccountView]:
        """Every service account, by name, with its number of active tokens."""
        now = self._clock.now()
        active = (
            select(ApiToken.account_id, func.count().label("n"))
            .where(ApiToken.revoked_at.is_(None), ApiToken.expires_at > now)
            .group_by(ApiToken.account_id)
            .subquery()
        )
        query = (
            select(ServiceAccount, func.coalesce(active.c.n, 0))
            .outerjoin(active, active.c.account_id == ServiceAccount.id)
            .order_by(ServiceAccount.name)
        )
        async with self._db.session() as session:
            with store_errors("cannot list service accounts"):
                rows = (await session.execute(query)).all()
        return [self._account_view(row, int(n)) for row, n in rows]

    async def _account(self, name: str) -> ServiceAccount:
        name = check_name(name)
        async with self._db.session() as session:
            with store_errors("cannot read the service account"):
                row = await session.scalar(select(ServiceAccount).where(ServiceAccount.name == name))
        if row is None:
            raise UnknownServiceAccount(f"No service account is named {name!r}.")
        return row

    async def delete_account(self, name: str, *, actor: str, ip: str = "") -> int:
        """Delete a service account and its tokens; the live tokens are refused everywhere at once.

        Returns:
            How many tokens were still active.
        """
        row = await self._account(name)
        now = self._clock.now()
        async with self._db.session(write=True) as session:
            with store_errors("cannot delete the service account"):
                tokens = (await session.scalars(select(ApiToken).where(ApiToken.account_id == row.id))).all()
                hashes = [t.token_hash for t in tokens]
                live = sum(1 for t in tokens if _state(t, now) == "active")
                noted = [await self._note_revoked(session, t) for t in tokens if t.revoked_at is None]
                account = await session.get(ServiceAccount, row.id)
                if account is not None:
                    await session.delete(account)
                    if self._keyring is not None:
                        # The apps knew the name (X-Gateway-User, sub): no provider sign-in may hand it to
                        # a stranger afterwards (the re-attack run got a person named like a deleted one).
                        await retire(session, self._keyring, row.name, at=now)
                await session.commit()
        await self._append(noted)
        await self._announce(hashes)
        await self._audit.record(
            "service_account.deleted", actor=actor, subject=f"client:{row.name}", ip=ip,
            details={"tokens_revoked": live},
        )  # fmt: skip
        return live

    # -- tokens ----------------------------------------------------------------------------------

    async def create_token(
        self,
        account: str,
        *,
        routes: Sequence[str],
        lifetime: float,
        known_routes: Sequence[str],
        actor: str,
        ip: str = "",
    ) -> tuple[TokenView, str]:
        """Issue a token for ``account`` on ``routes`` that expires after ``lifetime`` seconds.

        Returns:
            The token's view and the token itself: the only time it is ever shown.

        Raises:
            InvalidMachineRequest: no route, an unknown route, or a lifetime not in (0, max].
            UnknownServiceAccount: no such account.
        """
        wanted = sorted({r.strip() for r in routes})
        if not wanted or len(wanted) > _MAX_ROUTES:
            raise InvalidMachineRequest(f"name 1 to {_MAX_ROUTES} routes the token may be used on")
        unknown = [r for r in wanted if r not in set(known_routes)]
        if unknown:
            raise InvalidMachineRequest(f"no route is named {unknown[0][:70]!r}")
        if not 0 < lifetime <= self._max_lifetime:
            raise InvalidMachineRequest(
                f"the lifetime must be more than 0 and at most tokens.max_lifetime "
                f"({self._max_lifetime / 86400:g}d)"
            )
        row = await self._account(account)
        made = new_token()
        now = self._clock.now()
        token = ApiToken(
            account_id=row.id, prefix=made.prefix, token_hash=made.token_hash, routes=" ".join(wanted),
            created_at=now, created_by=actor, expires_at=now + timedelta(seconds=lifetime),
            last_used_at=None, revoked_at=None, revoked_by="",
        )  # fmt: skip
        async with self._db.session() as session:
            session.add(token)
            with store_errors("cannot store the token"):
                await session.commit()
        view = token_view(token, row.name, now)
        await self._audit.record(
            "token.created", actor=actor, subject=f"client:{row.name}", ip=ip,
            details={"token": view.id, "routes": wanted, "expires_at": view.expires_at.isoformat()},
        )  # fmt: skip
        return view, made.token

    async def list_tokens(self, account: str | None = None) -> list[TokenView]:
        """Every token (or one account's), newest first."""
        query = select(ApiToken, ServiceAccount.name).join(
            ServiceAccount, ApiToken.account_id == ServiceAccount.id
        )
        if account is not None:
            query = query.where(ServiceAccount.id == (await self._account(account)).id)
        now = self._clock.now()
        async with self._db.session() as session:
            with store_errors("cannot list tokens"):
                rows = (
                    await session.execute(query.order_by(ApiToken.created_at.desc(), ApiToken.id.desc()))
                ).all()
        return [token_view(row, name, now) for row, name in rows]

    async def revoke_token(self, token_id: str, *, actor: str, ip: str = "") -> TokenView:
        """Revoke a token by its public id (``gwt_Ab3dE9xQ``), or by the whole token (what someone holding
        a leaked one has: a re-attack run's revoke by it was refused, with the secret echoed); it is
        refused everywhere within a second.

        Revoking a revoked token changes nothing and answers its view again.
        """
        value = token_id.strip()
        if is_gateway_token(value):
            which = ApiToken.token_hash == hash_token(value)
            token_id = prefix_of(value)
        elif is_token_id(value):
            which = ApiToken.prefix == value
            token_id = value
        else:
            # Never the value itself: it may be a token, spoiled.
            shown = value[:12] + ("…" if len(value) > 12 else "")
            raise InvalidMachineRequest(
                f"{shown!r} is neither a token id (gwt_ and 8 characters) nor a whole token"
            )
        now = self._clock.now()
        async with self._db.session(write=True) as session:
            with store_errors("cannot revoke the token"):
                found = (
                    await session.execute(
                        select(ApiToken, ServiceAccount.name)
                        .join(ServiceAccount, ApiToken.account_id == ServiceAccount.id)
                        .where(which)
                    )
                ).first()
                if found is None:
                    raise UnknownToken(f"No token has the id {token_id!r}.")
                row, name = found
                changed = row.revoked_at is None
                if changed:
                    row.revoked_at, row.revoked_by = now, actor
                    noted = [await self._note_revoked(session, row)]
                    await session.commit()
        view = token_view(row, name, now)
        if changed:
            await self._append(noted)
            await self._announce([row.token_hash])
            await self._audit.record(
                "token.revoked", actor=actor, subject=f"client:{name}", ip=ip, details={"token": view.id}
            )
        return view

    async def _note_revoked(self, session: AsyncSession, token: ApiToken) -> Entry | None:
        """Note the revocation in the account ledger, in the caller's transaction."""
        if self._ledger is None:
            return None
        return await self._ledger.note_thing(session, "token-revoked", token.prefix, ref=token.prefix)

    async def _append(self, noted: Sequence[Entry | None]) -> None:
        if self._ledger is not None:
            await self._ledger.append(entry for entry in noted if entry is not None)

    async def _announce(self, hashes: Sequence[str]) -> None:
        if not hashes:
            return
        try:
            await self._fast.publish(REVOCATION_CHANNEL, "\n".join(hashes).encode("ascii"))
        except StateUnavailable:
            # Already revoked in the database: every cache trusts an entry for at most a second.
            _log.warning("could not announce the revocation of %d token(s)", len(hashes))
