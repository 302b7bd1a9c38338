"""Users: find, create, disable and enable accounts, force a password change, reset second factors,
set roles, see and end sessions, read the account's audit history (``/users``, ``/users/{username}``
and their twins under ``/api/users``).

Every change is the account service's own operation (:class:`gateway.identity.accounts.AccountService`,
the one ``gateway user …`` uses), run as the signed-in admin, and recorded twice in the audit trail:
the domain's event (``user.disabled``, ``user.mfa_reset``, …, actor ``user:<admin>``) and an
``admin.user.<action>`` event with the admin's reason and outcome, also when the action is refused.

Destructive actions (disable, which ends every session; reset second factors; end all sessions) need a
reason and a second factor used within ``admin.destructive_reauth_max_age``. So, without a required
reason, do the other ways to the same ends or to more power: enabling an account (it lifts a lock a
threat response may have set), setting local roles and creating an account with roles (a local role
can be the admin role), and a forced password change that also ends the sessions. The others take an
optional reason.

With ``admin.approvals: 2`` one admin must not be able to act as two: making an account an admin
(through its local roles, or a new account whose name the policy already makes an admin) and resetting
an admin's credentials (their second factors, or their password for an invitation link) are refused
(403 ``second-admin-required``): the first is proposed as a policy change another admin approves, the
second is done on the host with ``gateway user reset-mfa`` / ``set-password``.

A new account gets a one-time password, shown once in the answer and never stored or logged in the
clear; the user must choose a new one at the first sign-in (the gateway's password page holds the
session until then). Or (``mode: "invitation"``) it gets no password and an invitation link, shown
once: ``<public_url>/.gateway/invite/<token>``, where the user chooses their own password
(:mod:`gateway.identity.invitations`, :mod:`gateway.web.invite`). ``POST /api/users/{username}/invite``
sends a new link (the old one stops working) to an account without a password, or, with
``clear_password`` (destructive), withdraws the password first. The token is never stored, logged or
audited; ``user.invitation.issued`` and ``admin.user.<action>`` keep a prefix of its hash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from litestar import Request, delete, get, post, put
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Template

from admin.access import holds_role
from admin.actions import (
    OwnAccountRefused,
    OwnAdminRoleRefused,
    SecondAdminRequired,
    admin_of,
    audit,
    confirm_destructive,
)
from admin.console.render import PAGE_OPT, page
from admin.deps import AdminServices, Policy
from gateway.audit.models import AuditEvent
from gateway.authz.rules import PolicyRules
from gateway.errors import BadRequest, GatewayError
from gateway.identity.accounts import (
    AccountFactors,
    FactorInfo,
    UnknownAccount,
    UserSummary,
    account_name,
    account_roles,
)
from gateway.identity.invitations import INVITE_PATH, Invitation, Invitations, IssuedInvitation
from gateway.identity.models import User
from gateway.identity.passwords import one_time_password
from gateway.identity.reinvite import AccountInvite, invite_account, shut_by_privacy
from gateway.identity.sessions import Session, browser_label
from gateway.pipeline.authorize import AUTHENTICATED
from gateway.reasons import OPTIONAL_REASON_PATTERN, REASON_PATTERN
from gateway.services import Services
from gateway.web.deps import Config

__all__ = ["HANDLERS", "UserDetail", "UserList", "user_detail", "user_list"]

#: How many audit events the user page shows (the Audit section has the rest).
HISTORY_LIMIT: Final = 50
_SESSION_HASH = re.compile(r"[0-9a-f]{64}")
# Longer than any username or email alias (64 and 254): anything longer names nobody.
_MAX_LOGIN = 320


class UnknownSession(GatewayError):
    """The session to end is not a live session of that account."""

    status = 404
    reason = "unknown-session"
    title = "No such session"


Username = Annotated[
    str, PathParameter(description="The account's username or email address.", max_length=_MAX_LOGIN)
]
SessionId = Annotated[
    str, PathParameter(description="A session's id as listed by GET /api/users/{username} (64 hex).")
]
Reason = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        pattern=REASON_PATTERN,
        max_length=2000,
        description="Why: kept in the audit trail. Required.",
    ),
]
OptionalReason = Annotated[
    str,
    msgspec.Meta(
        max_length=2000, pattern=OPTIONAL_REASON_PATTERN, description="Why: kept in the audit trail."
    ),
]
RoleName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Roles = Annotated[list[RoleName], msgspec.Meta(max_length=64, description="Local role names.")]


# -- request bodies ---------------------------------------------------------------------------------


class CreateUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new local account: with a one-time password it must change at the first sign-in, or with no
    password and an invitation link where the user chooses one."""

    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    display_name: Annotated[str, msgspec.Meta(max_length=128)] = ""
    roles: Roles = msgspec.field(default_factory=list)
    mode: Annotated[
        Literal["password", "invitation"],
        msgspec.Meta(
            description=(
                "'password': a one-time password, shown once in the answer. 'invitation': no password; "
                "an invitation link, shown once, valid for admin.invitation_ttl."
            )
        ),
    ] = "password"
    reason: OptionalReason = ""


class Change(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: OptionalReason = ""


class DestructiveChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason


class PasswordChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: OptionalReason = ""
    end_sessions: Annotated[
        bool, msgspec.Meta(description="Also end the sessions signed in now (they sign in again).")
    ] = False


class ResetFactorsChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason
    invite: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "Also withdraw the password and answer with a new invitation link, in that order: "
                "whoever holds a phished password cannot sign in and enrol a factor of their own."
            )
        ),
    ] = False


class InviteChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: OptionalReason = ""
    clear_password: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "Withdraw the account's password first (and end its sessions). Destructive: needs a "
                "reason and a recent second factor. Without it an account with a password is a 409."
            )
        ),
    ] = False


class RolesChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    roles: Roles
    reason: OptionalReason = ""


# -- answers ----------------------------------------------------------------------------------------


class UserRow(msgspec.Struct, kw_only=True):
    username: str
    email: str | None
    display_name: str
    roles: list[str]
    status: Literal["active", "disabled"]
    # "set", "must-change" (a one-time password still to change) or "none" (identity provider, passkey).
    password: Literal["set", "must-change", "none"]
    totp: int
    webauthn: int
    recovery_codes_left: int
    created_at: datetime


class UserList(msgspec.Struct, kw_only=True):
    users: list[UserRow]
    q: str
    limit: int
    offset: int
    # Another page follows (this one is full).
    more: bool


class FactorView(msgspec.Struct, kw_only=True):
    kind: Literal["totp", "webauthn"]
    label: str
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    confirmed: bool


class SessionView(msgspec.Struct, kw_only=True):
    # The session's id hash (never the cookie value): what revoking one takes.
    id: str
    browser: str
    user_agent: str
    ip: str
    host: str
    level: str
    created_at: datetime
    last_seen: datetime
    second_factor_at: datetime | None
    password_change: bool
    groups: list[str]


class RoleGrantView(msgspec.Struct, kw_only=True):
    role: str
    # The principal that reaches it: "user:alice", a local role, "group:<idp group>", "authenticated".
    via: str


class PolicyLinkView(msgspec.Struct, kw_only=True):
    role: str
    line: int | None
    csv: str


class RolesView(msgspec.Struct, kw_only=True):
    # Local roles on the account (``gateway user add --role``, PUT .../roles).
    direct: list[str]
    # The policy's g-lines naming this user (``g, user:<name>, <role>``).
    policy: list[PolicyLinkView]
    # Groups an identity provider asserted for the live sessions.
    groups: list[str]
    # Every role the account reaches through the policy's g-lines, and from where.
    effective: list[RoleGrantView]
    admin_role: str
    is_admin: bool


class EventView(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime
    kind: str
    actor: str
    subject: str
    ip: str
    outcome: str
    details: dict[str, Any]


class InvitationView(msgspec.Struct, kw_only=True):
    issued_at: datetime
    expires_at: datetime
    # The first hex digits of the token's hash, as the audit trail names it (never the token).
    fingerprint: str


class UserDetail(UserRow, kw_only=True):
    # The account's id: what the privacy API's per-person calls take (/api/privacy/users/{id}/...).
    id: int
    # Privacy: processing restricted (no sign-in, data kept), and when the registration was closed.
    restricted: bool
    closed_at: datetime | None
    updated_at: datetime
    password_changed_at: datetime | None
    factors: list[FactorView]
    recovery_codes_total: int
    sessions: list[SessionView]
    roles_view: RolesView
    history: list[EventView]
    # The invitation link the account can still be opened with, if any.
    invitation: InvitationView | None = None


class Created(msgspec.Struct, kw_only=True):
    username: str
    # Shown once: it is not stored in the clear and cannot be read again. None with an invitation.
    one_time_password: str | None
    must_change_password: bool
    sign_in_url: str
    # mode "invitation": the link, shown once (only its hash is stored), and when it stops working.
    invitation_url: str | None = None
    invitation_expires_at: datetime | None = None


class ActionResult(msgspec.Struct, kw_only=True):
    username: str
    action: str
    message: str
    # Sessions ended by the action; None when it ends none.
    sessions_ended: int | None = None


class Invited(ActionResult, kw_only=True):
    # Shown once: only its hash is stored. The previous link, if any, no longer works.
    invitation_url: str
    invitation_expires_at: datetime


_R = TypeVar("_R", bound=ActionResult)


# -- reading ----------------------------------------------------------------------------------------


def _password_state(has_password: bool, must_change: bool) -> Literal["set", "must-change", "none"]:
    if not has_password:
        return "none"
    return "must-change" if must_change else "set"


def _row(s: UserSummary) -> UserRow:
    return UserRow(
        username=s.username,
        email=s.email,
        display_name=s.display_name,
        roles=list(s.roles),
        status="disabled" if s.disabled else "active",
        password=_password_state(s.has_password, s.must_change_password),
        totp=s.totp,
        webauthn=s.webauthn,
        recovery_codes_left=s.recovery_codes_left,
        created_at=s.created_at,
    )


async def user_list(services: Services, *, q: str = "", limit: int = 50, offset: int = 0) -> UserList:
    """What the list shows; the page and ``GET /api/users`` both answer with it."""
    # One more than asked: whether another page follows, without counting every account.
    found = await services.identity.accounts.list(limit=limit + 1, offset=offset, search=q)
    return UserList(
        users=[_row(s) for s in found[:limit]], q=q, limit=limit, offset=offset, more=len(found) > limit
    )


def _factor_label(f: FactorInfo) -> str:
    if f.kind == "totp":
        return "Authenticator app" + ("" if f.confirmed else " (not confirmed)")
    return "Passkey" if f.discoverable else "Security key"


def _factors(factors: AccountFactors) -> list[FactorView]:
    return [
        FactorView(
            kind="totp" if f.kind == "totp" else "webauthn",
            label=_factor_label(f),
            id=f.id,
            name=f.name,
            created_at=f.created_at,
            last_used_at=f.last_used_at,
            confirmed=f.confirmed,
        )
        for f in (*factors.totp, *factors.webauthn)
    ]


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _invitations(services: Services) -> Invitations:
    # Built per request: it is two references, and the admin process needs no long-lived one.
    return Invitations(services.fast, services.identity.clock)


def _invitation_view(invitation: Invitation | None) -> InvitationView | None:
    if invitation is None:
        return None
    return InvitationView(
        issued_at=_utc(invitation.issued_at),
        expires_at=_utc(invitation.expires_at),
        fingerprint=invitation.fingerprint,
    )


async def _invite(
    services: Services,
    config: Config,
    user: User,
    actor: str,
    *,
    clear_password: bool = False,
    reset: bool = False,
) -> AccountInvite:
    """A new invitation link for ``user`` (replacing any earlier one), recorded without its token."""
    identity = services.identity
    return await invite_account(
        identity.accounts,
        _invitations(services),
        identity.audit,
        user,
        actor=actor,
        ttl=float(config.settings.admin.invitation_ttl),
        clear_password=clear_password,
        reset_factors=reset,
    )


def _invited(config: Config, username: str, action: str, invite: AccountInvite, done: str = "") -> Invited:
    expires = _utc(invite.issued.invitation.expires_at)
    ended = invite.sessions_ended
    return Invited(
        username=username,
        action=action,
        sessions_ended=ended,
        message=(
            f"{done}A new invitation link for {username}, valid until "
            f"{expires.strftime('%Y-%m-%d %H:%M UTC')}; earlier links no longer work."
            f"{_ended(ended) if invite.password_cleared else ''}"
        ),
        invitation_url=_invitation_url(config, invite.issued.token),
        invitation_expires_at=expires,
    )


def _invitation_url(config: Config, token: str) -> str:
    return f"{config.public_url}{INVITE_PATH}{token}"


def _session(s: Session) -> SessionView:
    second = s.second_factor_at
    return SessionView(
        id=s.id_hash,
        browser=browser_label(s.user_agent),
        user_agent=s.user_agent,
        ip=s.ip,
        host=s.host,
        level=s.level.name.lower().replace("_", "-"),
        created_at=_utc(s.created_at),
        last_seen=_utc(s.last_seen),
        second_factor_at=_utc(second) if second is not None else None,
        password_change=s.password_change,
        groups=list(s.groups),
    )


def _event(e: AuditEvent) -> EventView:
    try:
        details = json.loads(e.details)
    except ValueError:
        details = {"raw": e.details}
    return EventView(
        seq=e.seq,
        at=e.at,
        kind=e.kind,
        actor=e.actor,
        subject=e.subject,
        ip=e.ip,
        outcome=e.outcome,
        details=details if isinstance(details, dict) else {"value": details},
    )


async def _roles(user: User, sessions: list[Session], live_policy: Policy, admin_role: str) -> RolesView:
    direct = user.roles.split()
    member = f"user:{user.username}"
    stored = await live_policy.store.current()
    links = [
        PolicyLinkView(role=r.role, line=r.line, csv=r.to_csv())
        for r in stored.rules.links
        if r.member == member
    ]
    groups = _groups(sessions)
    principals = _principals(user.username, direct, groups)
    index = live_policy.authorizer.index
    effective: dict[str, str] = {role: "local role" for role in direct}
    for principal in principals:
        for role in sorted(index.roles_of(principal) - {principal}):
            effective.setdefault(role, principal)
    return RolesView(
        direct=direct,
        policy=links,
        groups=groups,
        effective=[RoleGrantView(role=r, via=v) for r, v in sorted(effective.items())],
        admin_role=admin_role,
        is_admin=admin_role in effective or admin_role == member,
    )


def _groups(sessions: list[Session]) -> list[str]:
    return sorted({g for s in sessions for g in s.groups})


def _principals(username: str, roles: Iterable[str], groups: Iterable[str]) -> list[str]:
    # As a session of this account would speak (gateway.pipeline.authorize.principals_of), with the
    # groups its live sessions were given by an identity provider.
    return [f"user:{username}", *roles, *(f"group:{g}" for g in groups), AUTHENTICATED]


def _would_be_admin(
    live_policy: Policy, config: Config, username: str, roles: Iterable[str], groups: Iterable[str]
) -> bool:
    principals = _principals(username, roles, groups)
    return holds_role(principals, config.settings.admin.role, live_policy.authorizer.index)


async def _is_admin(services: Services, live_policy: Policy, config: Config, user: User) -> bool:
    """Whether the account is an admin as its sessions are: by its local roles, its live sessions'
    groups and the roles those sessions carry (a re-attack run: an admin by a provider's role_map
    alone was "not an admin" here, and was disabled by the other one)."""
    return _admin_in(live_policy, config, user, await services.identity.sessions.list_user(user.id))


def _admin_in(live_policy: Policy, config: Config, user: User, sessions: list[Session]) -> bool:
    """:func:`_is_admin` with the account's live sessions read (what a provider's ``role_map`` gave a
    session is among its roles)."""
    roles = [*user.roles.split(), *(r for s in sessions for r in s.roles)]
    return _would_be_admin(live_policy, config, user.username, roles, _groups(sessions))


async def other_admins_addresses(
    services: Services, live_policy: Policy, config: Config, *, except_user: int
) -> dict[str, set[str]]:
    """Under ``admin.approvals: 2``: every other admin's username → the addresses of their live sessions
    (a block covering them shut the other approver out of the console: a re-attack run). Empty
    otherwise. Admins are found among the accounts holding local roles and those the policy names."""
    if not _second_admin_required(config):
        return {}
    names = set((await services.identity.accounts.role_holders()).keys())
    rules = (await live_policy.store.current()).rules
    names |= {n.removeprefix("user:") for n in (r.member for r in rules.links) if n.startswith("user:")}
    if _admin_by_group(live_policy, config, rules):
        # An admin by a provider's group is known only by their sessions: every account is asked (a
        # block is rare, and a re-attack run blocked such an admin's network unasked).
        names |= {u.username for u in await services.identity.accounts.list(limit=_ALL_ACCOUNTS)}
    found: dict[str, set[str]] = {}
    for name in sorted(names):
        user = await services.identity.accounts.find(name)
        if user is None or user.id == except_user:
            continue
        sessions = await services.identity.sessions.list_user(user.id)
        if _admin_in(live_policy, config, user, sessions):
            found[name] = {s.ip for s in sessions if s.ip}
    return found


async def refuse_shutting_out(
    services: Services, live_policy: Policy, config: Config, user: User, what: str, on_host: str
) -> None:
    """Under ``admin.approvals: 2`` one admin does not disable, sign out, strip or block the other:
    the acting one would be left alone to approve or reject (re-attack runs did each)."""
    await refuse_admin_takeover(
        services, live_policy, config, user, what, on_host=on_host,
        why="which would leave them the only one to approve or reject",
    )  # fmt: skip


async def _refuse_signing_out(
    request: Request[Any, Any, Any], services: Services, live_policy: Policy, config: Config, user: User
) -> None:
    """Another admin's sessions end on the host under ``admin.approvals: 2``: an admin by a provider
    group is known as one only by their live sessions, and their addresses only so too (a re-attack
    run signed the other approver out first, then disabled and blocked them)."""
    if user.id != admin_of(request).session.user_id:
        await refuse_shutting_out(
            services, live_policy, config, user, "end the sessions", "gateway user disable"
        )


_ALL_ACCOUNTS: Final = 1_000_000


def _admin_by_group(live_policy: Policy, config: Config, rules: PolicyRules) -> bool:
    """Whether a provider's group can make someone an admin: a ``group:`` member of the policy, or a
    role ``role_map`` gives, reaches ``admin.role``."""
    index, role = live_policy.authorizer.index, config.settings.admin.role
    groups = [r.member for r in rules.links if r.member.startswith("group:")]
    mapped = [
        r for idp in config.settings.identity_providers for g in idp.role_map for r in idp.roles_for((g,))
    ]
    return any(holds_role([name], role, index) for name in (*groups, *mapped))


def _second_admin_required(config: Config) -> bool:
    return config.settings.admin.approvals > 1


# What an admin does instead of changing their own credentials from the console.
_ON_YOUR_ACCOUNT_PAGE: Final = (
    "Change your own factors and password on your account page (/.gateway/account); another admin, or "
    "`gateway user` on the gateway's host, can do it for you."
)


def _refuse_own(
    request: Request[Any, Any, Any], user: User, why: str, instead: str = _ON_YOUR_ACCOUNT_PAGE
) -> None:
    """409 ``own-account`` for an action on the acting admin's own account: it would end this session or
    shut them out of this console."""
    if user.id == admin_of(request).session.user_id:
        raise OwnAccountRefused(f"That is your own account ({user.username}): {why}. {instead}")


def _refuse_new_admin(config: Config, username: str) -> None:
    """Making an admin is a policy change, which ``admin.approvals: 2`` gives two admins."""
    role = config.settings.admin.role
    raise SecondAdminRequired(
        f"This would make {username} an admin, and this gateway needs two admins for that "
        f"(admin.approvals: 2): propose 'g, user:{username}, {role}' on the Policies page (POST "
        "/api/policy/proposals), and another admin approves it."
    )


async def refuse_admin_takeover(
    services: Services,
    live_policy: Policy,
    config: Config,
    user: User,
    what: str,
    on_host: str = "gateway user reset-mfa / set-password",
    why: str = "which would let them act as both",
) -> None:
    """One admin resetting another admin's credentials could then sign in as them, and approve alone."""
    if _second_admin_required(config) and await _is_admin(services, live_policy, config, user):
        raise SecondAdminRequired(
            f"{user.username} is an admin, and this gateway needs two admins for a policy change "
            f"(admin.approvals: 2): one admin may not {what} of another, {why}. Do it on the gateway's "
            f"host: {on_host} {user.username}."
        )


async def _account(services: Services, username: str) -> User:
    user = await services.identity.accounts.find(username) if len(username) <= _MAX_LOGIN else None
    if user is None:
        raise UnknownAccount(f"There is no account named {username[:80]!r}: search the list of users.")
    return user


async def user_detail(services: Services, live_policy: Policy, config: Config, username: str) -> UserDetail:
    """What the user page shows; the page and ``GET /api/users/{username}`` both answer with it."""
    identity = services.identity
    user = await _account(services, username)
    factors = await identity.accounts.factors(user.id)
    sessions = await identity.sessions.list_user(user.id)
    history = await identity.accounts.history(user.username, limit=HISTORY_LIMIT)
    return UserDetail(
        id=user.id,
        username=user.username,
        email=user.email,
        display_name=user.display_name,
        roles=user.roles.split(),
        status="disabled" if user.disabled else "active",
        password=_password_state(user.password_hash is not None, user.must_change_password),
        totp=len([f for f in factors.totp if f.confirmed]),
        webauthn=len(factors.webauthn),
        recovery_codes_left=factors.recovery_codes_left,
        recovery_codes_total=factors.recovery_codes_total,
        created_at=user.created_at,
        restricted=user.restricted,
        closed_at=user.closed_at,
        updated_at=user.updated_at,
        password_changed_at=user.password_changed_at,
        factors=_factors(factors),
        sessions=[_session(s) for s in sessions],
        roles_view=await _roles(user, sessions, live_policy, config.settings.admin.role),
        history=[_event(e) for e in history],
        invitation=_invitation_view(await _invitations(services).pending(user.id)),
    )


# -- changing ---------------------------------------------------------------------------------------


async def _act(
    request: Request[Any, Any, Any],
    services: Services,
    config: Config,
    username: str,
    action: str,
    reason: str,
    work: Callable[[User, str], Awaitable[_R]],
    *,
    destructive: bool = False,
    noted: dict[str, object] | None = None,
) -> _R:
    """Run one action on an account as this admin, auditing it with the reason, also when refused.

    ``noted``: filled by ``work`` with more for the audit record of a success (never a secret)."""
    admin = admin_of(request)
    subject = username[:80]
    try:
        if destructive:
            confirm_destructive(admin, config, services.identity.clock)
        user = await _account(services, username)
        subject = user.username
        result = await work(user, admin.actor)
    except GatewayError as err:
        await audit(
            services.identity,
            request,
            f"admin.user.{action}",
            actor=admin.actor,
            subject=subject,
            outcome="failure",
            details={"reason": reason, "error": err.reason},
        )
        raise
    details: dict[str, object] = {"reason": reason}
    if result.sessions_ended is not None:
        details["sessions_ended"] = result.sessions_ended
    details.update(noted or {})
    await audit(
        services.identity,
        request,
        f"admin.user.{action}",
        actor=admin.actor,
        subject=subject,
        details=details,
    )
    return result


def _ended(count: int | None) -> str:
    if count is None:
        # The admin listener always has the session store: None means it did not answer, and the
        # sessions are owed an end (gateway.identity.owed).
        return " The session store did not answer: the sessions end within a second of it answering again."
    return f" {count} session{'' if count == 1 else 's'} ended."


# -- the JSON API -----------------------------------------------------------------------------------


@get("/api/users", cache=False, tags=["users"])
async def list_users(
    services: AdminServices,
    q: Annotated[str, QueryParameter(max_length=200, description="Part of a username, email or name.")] = "",
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParameter(ge=0, le=10_000_000)] = 0,
) -> UserList:
    """Accounts ordered by username, with status, password state and factor counts (``?q=`` searches)."""
    return await user_list(services, q=q, limit=limit, offset=offset)


@get("/api/users/{username:str}", cache=False, tags=["users"])
async def get_user(
    services: AdminServices, live_policy: Policy, config: Config, username: Username
) -> UserDetail:
    """One account: facts, second factors, live sessions, roles (local, policy, effective), the latest
    audit events about or by it."""
    return await user_detail(services, live_policy, config, username)


@post("/api/users", status_code=201, tags=["users"])
async def create_user(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    data: JSONBody[CreateUser],
) -> Created:
    """Create an account. ``mode: "password"``: with a one-time password, shown once here; the user must
    change it at the first sign-in. ``mode: "invitation"``: with no password and an invitation link,
    shown once here, where the user chooses one (valid once, for ``admin.invitation_ttl``). 409 if the
    username or email is taken, 400 for a name or role the gateway refuses. With ``roles``, a recent
    second factor is needed (a local role can be the admin role); with ``admin.approvals: 2`` an
    account that would be an admin is refused (403 ``second-admin-required``: propose it instead)."""
    admin = admin_of(request)
    invited = data.mode == "invitation"
    password = None if invited else one_time_password()
    details: dict[str, object] = {"reason": data.reason, "mode": data.mode, "roles": " ".join(data.roles)}
    issued: IssuedInvitation | None = None
    try:
        # The policy may already name this username as an admin (a g-line left from an earlier account).
        # Checked as stored: "GHOST" is ghost, " admin" is admin.
        made_admin = _would_be_admin(
            live_policy, config, account_name(data.username), account_roles(data.roles), ()
        )
        if data.roles or made_admin:
            confirm_destructive(admin, config, services.identity.clock)
        if made_admin and _second_admin_required(config):
            _refuse_new_admin(config, data.username)
        user = await services.identity.accounts.create(
            username=data.username,
            password=password,
            email=data.email,
            display_name=data.display_name,
            roles=data.roles,
            must_change_password=not invited,
            actor=admin.actor,
        )
        if invited:
            # If this fails (the fast state is down) the account stays, without a password: POST
            # .../invite sends it a link once the store answers again.
            issued = (await _invite(services, config, user, admin.actor)).issued
            details["invitation"] = issued.invitation.fingerprint
    except GatewayError as err:
        await audit(
            services.identity,
            request,
            "admin.user.create",
            actor=admin.actor,
            subject=data.username[:80],
            outcome="failure",
            details={**details, "error": err.reason},
        )
        raise
    await audit(
        services.identity,
        request,
        "admin.user.create",
        actor=admin.actor,
        subject=user.username,
        details=details,
    )
    return Created(
        username=user.username,
        one_time_password=password,
        must_change_password=not invited,
        sign_in_url=f"{config.public_url}/.gateway/login",
        invitation_url=_invitation_url(config, issued.token) if issued else None,
        invitation_expires_at=_utc(issued.invitation.expires_at) if issued else None,
    )


@post("/api/users/{username:str}/invite", status_code=200, tags=["users"])
async def invite_user(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    username: Username,
    data: JSONBody[InviteChange],
) -> Invited:
    """Send a new invitation link (shown once here; the previous link stops working) to an account
    without a password, where the user chooses one. 409 for a disabled account, or one with a password
    unless ``clear_password`` withdraws it (and ends its sessions): that is destructive, and needs a
    reason and a recent second factor."""
    noted: dict[str, object] = {"clear_password": data.clear_password}

    async def work(user: User, actor: str) -> Invited:
        _refuse_own(request, user, "replacing your password with a link here would end this session")
        # Whoever holds the link sets the password: for an admin's account, one admin would hold a
        # second admin's sign-in (an account without a password signs in through a provider or a
        # passkey, or has an invitation pending).
        await refuse_admin_takeover(services, live_policy, config, user, "send an invitation for the account")
        if user.password_hash is not None and data.clear_password and not data.reason.strip():
            raise BadRequest("Clearing a password needs a reason: it is kept in the audit trail.")
        invite = await _invite(services, config, user, actor, clear_password=data.clear_password)
        noted["invitation"] = invite.issued.invitation.fingerprint
        return _invited(config, user.username, "invite", invite)

    result: Invited = await _act(
        request,
        services,
        config,
        username,
        "invite",
        data.reason,
        work,
        destructive=data.clear_password,
        noted=noted,
    )
    return result


@post("/api/users/{username:str}/disable", status_code=200, tags=["users"])
async def disable_user(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    username: Username,
    data: JSONBody[DestructiveChange],
) -> ActionResult:
    """Disable an account: it cannot sign in, and every session ends at once on every replica.

    Destructive: needs a reason and a recent second factor (403 step-up otherwise). Under
    ``admin.approvals: 2`` another admin's account is disabled on the host (403 ``second-admin-required``)."""

    async def work(user: User, actor: str) -> ActionResult:
        _refuse_own(
            request,
            user,
            "disabling it would shut you out of this console",
            "Another admin, or `gateway user disable` on the gateway's host, can.",
        )
        # As restricting is refused: the other approver shut out leaves one admin holding every
        # proposal and every rejection (an attack run).
        await refuse_shutting_out(
            services, live_policy, config, user, "disable the account", "gateway user disable"
        )
        ended = await services.identity.accounts.disable(user.id, actor=actor)
        return ActionResult(
            username=user.username,
            action="disable",
            sessions_ended=ended,
            message=f"{user.username} is disabled.{_ended(ended)}",
        )

    return await _act(request, services, config, username, "disable", data.reason, work, destructive=True)


@post("/api/users/{username:str}/enable", status_code=200, tags=["users"])
async def enable_user(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    username: Username,
    data: JSONBody[Change],
) -> ActionResult:
    """Allow a disabled account to sign in again. Needs a recent second factor: it lifts a lock (a threat
    response's ``lock_account`` disables the account) as surely as lifting an incident does."""

    async def work(user: User, actor: str) -> ActionResult:
        # A session of a disabled account is ended, or refused while the end is owed; a session that
        # still reaches this (a re-attack run's, while the state file's write lock was held) must not
        # undo the disable that was meant to stop it.
        _refuse_own(
            request,
            user,
            "an account enables itself only by another admin",
            "Another admin, or `gateway user enable` on the gateway's host, can.",
        )
        await services.identity.accounts.enable(user.id, actor=actor)
        shut = shut_by_privacy(user)
        # Enabling lifts the disable alone: a restricted or closed account still cannot sign in, and
        # the answer must not say it can (an attack run was told "may sign in again" for both).
        message = (
            f"{user.username} may sign in again."
            if shut is None
            else f"{user.username} is no longer disabled, but still cannot sign in: {shut}."
        )
        return ActionResult(username=user.username, action="enable", message=message)

    return await _act(request, services, config, username, "enable", data.reason, work, destructive=True)


@post("/api/users/{username:str}/password-change", status_code=200, tags=["users"])
async def require_password_change(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    username: Username,
    data: JSONBody[PasswordChange],
) -> ActionResult:
    """Make the user choose a new password at the next sign-in (``end_sessions``: sign them out now,
    so that is at once; like ending all sessions, that needs a recent second factor). 400 for an
    account without a password."""

    async def work(user: User, actor: str) -> ActionResult:
        identity = services.identity
        if data.end_sessions:
            await _refuse_signing_out(request, services, live_policy, config, user)
        await identity.accounts.require_password_change(user.id, actor=actor)
        ended = await identity.accounts.end_sessions(user.id, actor=actor) if data.end_sessions else None
        return ActionResult(
            username=user.username,
            action="password-change",
            sessions_ended=ended,
            # Only a request to end the sessions has an outcome to report (a first-day run read "the
            # session store did not answer" after a plain password change).
            message=f"{user.username} must choose a new password at the next sign-in."
            + (_ended(ended) if data.end_sessions else ""),
        )

    return await _act(
        request,
        services,
        config,
        username,
        "password_change",
        data.reason,
        work,
        destructive=data.end_sessions,
    )


@post("/api/users/{username:str}/reset-factors", status_code=200, tags=["users"])
async def reset_factors(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    username: Username,
    data: JSONBody[ResetFactorsChange],
) -> ActionResult | Invited:
    """Remove every authenticator app, passkey, security key and recovery code, and end the sessions; the
    user enrols again at the next sign-in. With ``invite``, the password is withdrawn first and the answer
    carries a new invitation link (409 ``invitation-refused`` for a disabled, restricted or closed
    account, before anything changes): for a lost device when the password may be known to someone
    else. Destructive: needs a reason and a recent second factor. With ``admin.approvals: 2``, refused
    for an admin's account (403 ``second-admin-required``)."""
    noted: dict[str, object] = {"invite": data.invite}

    async def work(user: User, actor: str) -> ActionResult | Invited:
        _refuse_own(request, user, "resetting your second factors here would end this session")
        await refuse_admin_takeover(services, live_policy, config, user, "reset the second factors")
        if data.invite:
            invite = await _invite(services, config, user, actor, reset=True)
            noted["invitation"] = invite.issued.invitation.fingerprint
            return _invited(
                config, user.username, "reset-factors", invite, _removed(invite.factors_removed) + " "
            )
        removed = await services.identity.accounts.reset_mfa(user.id, actor=actor)
        ended = removed.get("sessions")
        return ActionResult(
            username=user.username,
            action="reset-factors",
            sessions_ended=ended,
            message=f"{_removed(removed)}{_ended(ended)}",
        )

    return await _act(
        request, services, config, username, "reset_factors", data.reason, work, destructive=True, noted=noted
    )


def _removed(removed: dict[str, int]) -> str:
    return (
        f"Removed {removed['totp']} authenticator app(s), {removed['webauthn']} passkey(s) or "
        f"security key(s) and {removed['recovery_codes']} recovery code(s)."
    )


@put("/api/users/{username:str}/roles", status_code=200, tags=["users"])
async def set_roles(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    username: Username,
    data: JSONBody[RolesChange],
) -> ActionResult:
    """Replace the account's local roles. Removing one ends the user's sessions (they carry the roles they
    signed in with); added roles apply from the next sign-in. Roles from the policy's g-lines are changed
    with ``/api/policy/roles``. Needs a recent second factor (a local role can be the admin role); with
    ``admin.approvals: 2``, roles that would make a non-admin an admin, or take the admin role from
    another admin, are refused (403 ``second-admin-required``: propose it instead, or the host)."""

    async def work(user: User, actor: str) -> ActionResult:
        own = user.id == admin_of(request).session.user_id
        if own or _second_admin_required(config):
            groups = _groups(await services.identity.sessions.list_user(user.id))
            after = account_roles(data.roles)  # as stored: "admin " is admin
            admin_after = _would_be_admin(live_policy, config, user.username, after, groups)
            if own and not admin_after:
                raise OwnAdminRoleRefused(
                    f"That would take the {config.settings.admin.role!r} role from your own account, "
                    "and with it this console: nothing was changed. Another admin, or `gateway policy` "
                    "on the gateway's host, can."
                )
            before = _would_be_admin(live_policy, config, user.username, user.roles.split(), groups)
            if _second_admin_required(config) and not before and admin_after:
                _refuse_new_admin(config, user.username)
            if _second_admin_required(config) and not own and before and not admin_after:
                # Taken first, the other approver's account was then no admin's to protect: disabled
                # next, one admin held every decision (a re-attack run).
                await refuse_shutting_out(
                    services, live_policy, config, user, "take the admin role", "gateway user disable"
                )
        changed = await services.identity.accounts.set_roles(user.id, data.roles, actor=actor)
        ended = changed.sessions_ended if changed.removed else None
        roles = ", ".join(changed.roles) or "none"
        return ActionResult(
            username=user.username,
            action="roles",
            sessions_ended=ended,
            # Only a removed role ends sessions: with none removed there is nothing to report.
            message=f"Local roles of {user.username}: {roles}.{_ended(ended) if changed.removed else ''}",
        )

    return await _act(request, services, config, username, "roles", data.reason, work, destructive=True)


@delete("/api/users/{username:str}/sessions/{session:str}", status_code=200, tags=["users"])
async def revoke_session(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    username: Username,
    session: SessionId,
    data: JSONBody[Change],
) -> ActionResult:
    """End one session of the account (its next request needs a sign-in). 404 if it is not theirs or over."""
    if not _SESSION_HASH.fullmatch(session):
        raise BadRequest("A session id is 64 hexadecimal digits, as GET /api/users/{username} lists them.")

    async def work(user: User, actor: str) -> ActionResult:
        await _refuse_signing_out(request, services, live_policy, config, user)
        sessions = services.identity.sessions
        # Only this account's: an id hash of someone else's session ends nothing here.
        target = next((s for s in await sessions.list_user(user.id) if s.id_hash == session), None)
        if target is None:
            raise UnknownSession(f"{user.username} has no live session with that id; reload the page.")
        # The whole sign-in, every host's session of it: ending one row left the app-host sessions of
        # that sign-in working (a re-attack run, from the portal's list).
        ended = await sessions.revoke_family(target.family)
        await services.identity.audit.record(
            "session.revoked", actor=actor, subject=user.username, details={"session": session[:12]}
        )
        return ActionResult(
            username=user.username,
            action="revoke-session",
            sessions_ended=ended,
            message=f"The session of {user.username} has ended.",
        )

    return await _act(request, services, config, username, "revoke_session", data.reason, work)


@delete("/api/users/{username:str}/sessions", status_code=200, tags=["users"])
async def revoke_sessions(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    username: Username,
    data: JSONBody[DestructiveChange],
) -> ActionResult:
    """End every session of the account on every replica. Destructive: needs a reason and a recent
    second factor."""

    async def work(user: User, actor: str) -> ActionResult:
        await _refuse_signing_out(request, services, live_policy, config, user)
        # Audited by the account service; a store that does not answer leaves them owed an end.
        ended = await services.identity.accounts.end_sessions(user.id, actor=actor)
        return ActionResult(
            username=user.username,
            action="revoke-sessions",
            sessions_ended=ended,
            message=f"Every session of {user.username} has ended.{_ended(ended)}",
        )

    return await _act(
        request, services, config, username, "revoke_sessions", data.reason, work, destructive=True
    )


# -- the pages --------------------------------------------------------------------------------------


@get("/users", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def users_page(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    q: Annotated[str, QueryParameter(max_length=200)] = "",
    offset: Annotated[int, QueryParameter(ge=0, le=10_000_000)] = 0,
) -> Template:
    view = await user_list(services, q=q.strip(), limit=50, offset=offset)
    return page(
        request,
        "users.html",
        title="Users",
        section="users",
        view=view,
        invitation_hours=max(1, int(config.settings.admin.invitation_ttl) // 3600),
    )


@get("/users/{username:str}", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def user_page(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    username: Username,
) -> Template:
    view = await user_detail(services, live_policy, config, username)
    return page(
        request,
        "user.html",
        title=view.username,
        section="users",
        view=view,
        destructive_minutes=max(1, int(config.settings.admin.destructive_reauth_max_age) // 60),
        # For recording an objection or a consent withdrawal the person sent in (the Privacy card).
        purposes=config.settings.privacy.purposes,
    )


HANDLERS = (
    list_users,
    get_user,
    create_user,
    invite_user,
    disable_user,
    enable_user,
    require_password_change,
    reset_factors,
    set_roles,
    revoke_session,
    revoke_sessions,
    users_page,
    user_page,
)
