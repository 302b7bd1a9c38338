"""Giving an account an invitation link, from the console or the CLI: the one set of rules for both.

An invitation is how a person chooses a password no administrator knows (:mod:`gateway.identity.
invitations`). It is also the safe end of a lost-device recovery: removing the second factors alone
lets whoever holds the (perhaps phished) password sign in and enrol first, so
``reset_factors=True`` withdraws the password as well and hands the person a link instead. In that
order (password, factors, link): from the first step on, nobody can sign in with the old password,
so nobody can enrol a factor of their own between the steps.

Refused (:class:`InvitationRefused`, 409) before anything changes:

* a disabled account (enable it first);
* an account the person's own privacy request keeps from signing in (restricted or closed): the link
  would answer 410, and withdrawing the password for it would only destroy it;
* an account with a password, unless ``clear_password`` (or ``reset_factors``) withdraws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.audit.trail import AuditLog
from gateway.errors import GatewayError
from gateway.identity.accounts import AccountService
from gateway.identity.invitations import Invitations, IssuedInvitation
from gateway.identity.models import User

__all__ = ["AccountInvite", "InvitationRefused", "invite_account", "shut_by_privacy"]


class InvitationRefused(GatewayError):
    """The account cannot be given an invitation as it is (it has a password, or is disabled,
    restricted or closed)."""

    status = 409
    reason = "invitation-refused"
    title = "No invitation for this account"


@dataclass(frozen=True, slots=True)
class AccountInvite:
    """What :func:`invite_account` did: the link (its token in the clear, shown once) and the rest."""

    issued: IssuedInvitation
    # Sessions ended by withdrawing the password (None: none withdrawn, or no session store reached).
    sessions_ended: int | None
    password_cleared: bool
    # Second factors removed, by kind ({} unless reset_factors).
    factors_removed: dict[str, int]


def shut_by_privacy(user: User) -> str | None:
    """Why a person's own privacy request keeps the account from signing in, if one does."""
    if user.closed_at is not None:
        return "the account is closed at the person's request (see the Privacy page)"
    if user.restricted:
        return "processing is restricted at the person's request (lift it on the Privacy page)"
    return None


async def invite_account(
    accounts: AccountService,
    invitations: Invitations,
    audit: AuditLog,
    user: User,
    *,
    actor: str,
    ttl: float,
    clear_password: bool = False,
    reset_factors: bool = False,
) -> AccountInvite:
    """Issue a new invitation link for ``user`` (the previous one stops working), recorded as
    ``user.invitation.issued`` with the link's fingerprint, never its token.

    Args:
        accounts: The account service (withdraws the password, removes the factors).
        invitations: Where the link's token is kept.
        audit: The audit trail.
        user: The account, as read just before.
        actor: Who does it, for the audit trail.
        ttl: Seconds the link works (``admin.invitation_ttl``).
        clear_password: Withdraw the account's password first (its sessions end).
        reset_factors: Also remove every second factor (after the password): a lost-device recovery
            that a phished password cannot finish. Implies ``clear_password``.

    Raises:
        InvitationRefused: See the module docstring; nothing was changed.
    """
    if user.disabled:
        raise InvitationRefused(f"{user.username} is disabled: enable the account first.")
    shut = shut_by_privacy(user)
    if shut is not None:
        # Before any password is withdrawn: the link would answer 410 anyway (an attack run had
        # clear_password take a closed account's password for a link that could not be used).
        raise InvitationRefused(f"{user.username} cannot sign in: {shut}.")
    withdraw = user.password_hash is not None
    if withdraw and not (clear_password or reset_factors):
        raise InvitationRefused(
            f"{user.username} has a password. To replace it with an invitation, withdraw it (it ends "
            "their sessions): clear_password: true with a reason, or gateway user invite --clear-password."
        )
    ended = await accounts.clear_password(user.id, actor=actor) if withdraw else None
    removed: dict[str, int] = {}
    if reset_factors:
        removed = await accounts.reset_mfa(user.id, actor=actor)
        more = removed.pop("sessions", None)
        if more is not None:
            ended = (ended or 0) + more
    issued = await invitations.issue(user_id=user.id, username=user.username, ttl=ttl)
    # Whoever holds the link can set the password: its issuer is the credentials' issuer.
    await accounts.note_issued(user.id, actor=actor)
    await audit.record(
        "user.invitation.issued",
        actor=actor,
        subject=user.username,
        details={
            "invitation": issued.invitation.fingerprint,
            "expires_at": datetime.fromtimestamp(issued.invitation.expires_at, UTC).isoformat(),
            "password_cleared": withdraw,
            "factors_reset": reset_factors,
        },
    )
    return AccountInvite(
        issued=issued, sessions_ended=ended, password_cleared=withdraw, factors_removed=removed
    )
