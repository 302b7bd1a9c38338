"""Who is acting and the trail they leave: the admin of a request and its ``admin.<action>`` audit record.

The admin guard (:class:`admin.app.AdminGuard`) stores the :class:`~admin.access.Admin` in the
connection state, the request context middleware the client address; handlers of the app and of
the console's sections read them here, and record every action, also a refused one, through
:func:`audit`, so every section's trail has the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

from litestar.connection import ASGIConnection

from admin.access import Admin, holds_role, require_recent_factor
from gateway.authz.index import PolicyIndex
from gateway.authz.rules import PolicyRules
from gateway.authz.store import Keep
from gateway.clock import Clock
from gateway.errors import Forbidden, GatewayError
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig

__all__ = [
    "ADMIN_KEY",
    "CLIENT_IP_KEY",
    "OwnAccountRefused",
    "OwnAdminRoleRefused",
    "SecondAdminRequired",
    "admin_of",
    "audit",
    "audited",
    "client_ip",
    "confirm_destructive",
    "keeps_admin",
]

logger = logging.getLogger("gateway.admin")
_T = TypeVar("_T")

#: Connection state keys: the authenticated Admin (set by the guard) and the client address.
ADMIN_KEY: Final = "admin"
CLIENT_IP_KEY: Final = "client_ip"


def admin_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Admin:
    """The admin making this request (the guard ran before every non-public handler)."""
    admin = connection.scope.get("state", {}).get(ADMIN_KEY)
    if not isinstance(admin, Admin):  # pragma: no cover - the guard runs before every /api handler
        raise GatewayError("the admin guard did not run")
    return admin


class SecondAdminRequired(Forbidden):
    """``admin.approvals: 2``: this would let one admin act as two (a new admin, a machine client holding
    the admin role, another admin's credentials reset)."""

    reason = "second-admin-required"
    title = "Another admin must take part"


class OwnAccountRefused(GatewayError):
    """An action that would shut the admin out of the console (disabling their own account): 409,
    nothing done. Another admin, or the command line on the gateway's host, can."""

    status = 409
    reason = "own-account"
    title = "Not your own account"


class OwnAdminRoleRefused(OwnAccountRefused):
    """A change that would take the acting admin's own admin role, through the policy or their local
    roles (409, nothing changed): the last admins removing themselves one after the other left a
    console nobody could use (an attack run)."""

    reason = "own-admin-role"


def keeps_admin(admin: Admin, role: str) -> Keep:
    """The store's last check of a policy change: the admin making it still holds ``role`` after it.

    Like disabling one's own account: an attack run had the last two admins each remove their own
    admin line, after which every console call was 403 and only ``gateway policy restore`` on the
    host brought the console back. Another admin, or the command line, may still take it. Every
    admin-side way to a new policy passes it: a change, a restore (also an incident's), an approval
    (the approver is the one acting)."""

    def keep(after: PolicyRules) -> None:
        if not holds_role(admin.principals, role, PolicyIndex.roles_only(after)):
            raise OwnAdminRoleRefused(
                f"This change would take the {role!r} role from you, and with it the console: nothing "
                "was changed. Another admin can make it, or an operator with `gateway policy` on the "
                "gateway's host."
            )

    return keep


def confirm_destructive(admin: Admin, config: CurrentConfig, clock: Clock) -> None:
    """Ask again for the second factor before a destructive action: one used within
    ``admin.destructive_reauth_max_age`` (403 ``step-up-required`` otherwise, see
    :func:`admin.access.require_recent_factor`)."""
    require_recent_factor(
        admin,
        now=clock.time(),
        max_age=float(config.settings.admin.destructive_reauth_max_age),
        public_url=config.public_url,
    )


def client_ip(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return str(connection.scope.get("state", {}).get(CLIENT_IP_KEY, ""))


async def audit(
    identity: IdentityServices,
    connection: ASGIConnection[Any, Any, Any, Any],
    kind: str,
    *,
    actor: str,
    subject: str,
    outcome: str = "success",
    details: Mapping[str, object] | None = None,
) -> None:
    """Record ``kind`` (``admin.<action>``) about ``subject`` (``policy``, a user, the request's path for
    a refusal) for this request; a failing record is logged, never raised."""
    try:
        await identity.audit.record(
            kind, actor=actor, subject=subject, ip=client_ip(connection), outcome=outcome, details=details
        )
    except Exception:
        # The action itself is done (a policy change is also in the history, with actor and reason).
        logger.exception("admin: audit record %s failed", kind)


async def audited(
    connection: ASGIConnection[Any, Any, Any, Any],
    identity: IdentityServices,
    kind: str,
    *,
    subject: str,
    details: Mapping[str, object],
    work: Callable[[Admin], Awaitable[_T]],
) -> _T:
    """Run ``work`` as this request's admin and record ``kind``, also when it is refused (then with
    ``outcome: failure`` and the error's reason). ``work`` may add to ``details`` (never a secret)."""
    admin = admin_of(connection)
    try:
        result = await work(admin)
    except GatewayError as err:
        await audit(
            identity, connection, kind, actor=admin.actor, outcome="failure", subject=subject,
            details={**details, "error": err.reason},
        )  # fmt: skip
        raise
    await audit(identity, connection, kind, actor=admin.actor, subject=subject, details=details)
    return result
