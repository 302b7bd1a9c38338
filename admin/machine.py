"""The admin API for machine clients: ``/api/service-accounts`` and ``/api/tokens``.

The same operations as ``gateway service-account`` and ``gateway token`` (:class:`gateway.machine.accounts
.ServiceAccounts`), with the admin as the actor of their audit records (``service_account.created``,
``token.created``, ``token.revoked``, ``service_account.deleted``). A created token is in the answer
to its ``POST`` only: it is never shown again. Revoking a token and deleting an account (which revokes
its tokens) are destructive: they cut a running job off, so they need a second factor used within
``admin.destructive_reauth_max_age`` (403 ``step-up-required``). Every refused attempt is recorded as
``admin.<action>`` with outcome ``failure`` and the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, delete, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter

from admin.access import holds_role
from admin.actions import SecondAdminRequired, admin_of, audit, client_ip, confirm_destructive
from admin.deps import AdminServices, Policy
from gateway.errors import GatewayError
from gateway.machine.accounts import (
    AccountView,
    InvalidMachineRequest,
    ServiceAccounts,
    TokenView,
    check_name,
    check_roles,
)
from gateway.services import Services
from gateway.settings.units import parse_duration
from gateway.web.deps import Config

__all__ = ["HANDLERS", "NewAccount", "NewToken", "TokenIssued", "accounts_of"]

_NAME = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_ROLE = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_ROUTE = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_ACCOUNT_PATH = Annotated[str, PathParameter(description="The service account's name.")]
_TOKEN_PATH = Annotated[str, PathParameter(description="The token's id: gwt_ and 8 characters.")]


class NewAccount(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A service account to create."""

    name: _NAME
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    owner: Annotated[str, msgspec.Meta(max_length=500)] = ""
    roles: Annotated[list[_ROLE], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)


class NewToken(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A token to issue: for ``account``, on ``routes``, expiring after ``expires`` (``90d``, ``12h``)."""

    account: _NAME
    routes: Annotated[list[_ROUTE], msgspec.Meta(min_length=1, max_length=256)]
    expires: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class TokenIssued(msgspec.Struct, kw_only=True):
    """The token, shown this once, and what lists will show of it."""

    token: str
    details: TokenView


def accounts_of(services: Services, config: Config) -> ServiceAccounts:
    """The machine-client operations over this process's stores, with the configured maximum lifetime."""
    return ServiceAccounts(
        services.db,
        services.identity.audit,
        services.fast,
        services.identity.clock,
        max_lifetime=float(config.settings.tokens.max_lifetime),
        keyring=services.identity.keyring,
        ledger=services.identity.accounts.ledger,
    )


async def _refused(
    services: Services, request: Request[Any, Any, Any], action: str, subject: str, err: GatewayError
) -> None:
    admin = admin_of(request)
    await audit(
        services.identity, request, f"admin.{action}", actor=admin.actor, outcome="failure",
        subject=subject, details={"error": err.reason},
    )  # fmt: skip


@get("/api/service-accounts", cache=False, tags=["machine clients"])
async def list_service_accounts(services: AdminServices, config: Config) -> list[AccountView]:
    """Every service account with its roles and number of active tokens."""
    return await accounts_of(services, config).list_accounts()


def _refuse_admin_client(live_policy: Policy, config: Config, name: str, roles: Iterable[str]) -> None:
    """Under ``admin.approvals: 2`` an admin is made by a policy change two admins approve: a service
    account whose roles reach the admin role would be one admin's way around that (its tokens open every
    application the admin role opens)."""
    role = config.settings.admin.role
    # Read as stored ("Ops" is ops, " admin" is admin): the g-lines name the stored spelling.
    name = check_name(name)
    principals = [f"client:{name}", *check_roles(list(roles))]
    if config.settings.admin.approvals > 1 and holds_role(principals, role, live_policy.authorizer.index):
        raise SecondAdminRequired(
            f"client:{name} would hold the role {role}, and this gateway needs two admins for that "
            f"(admin.approvals: 2): create the account without it and propose 'g, client:{name}, {role}' "
            "on the Policies page (POST /api/policy/proposals), or create it on the gateway's host "
            "(gateway service-account create)."
        )


@post("/api/service-accounts", status_code=201, tags=["machine clients"])
async def create_service_account(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    data: JSONBody[NewAccount],
) -> AccountView:
    """Create a service account (400 ``machine-invalid`` for a bad name or role, 409 if it exists). With
    roles, destructive: a recent second factor; under ``admin.approvals: 2``, 403
    ``second-admin-required`` for roles that reach the admin role."""
    admin = admin_of(request)
    try:
        if data.roles:  # a grant, as setting a person's roles is
            confirm_destructive(admin, config, services.identity.clock)
        # Also without roles: the policy may already name the account (a g-line left from an earlier one).
        _refuse_admin_client(live_policy, config, data.name, data.roles)
        return await accounts_of(services, config).create_account(
            data.name, description=data.description, owner=data.owner, roles=data.roles,
            actor=admin.actor, ip=client_ip(request),
        )  # fmt: skip
    except GatewayError as err:
        await _refused(services, request, "service_account.create", f"client:{data.name[:64]}", err)
        raise


@delete("/api/service-accounts/{name:str}", status_code=200, tags=["machine clients"])
async def delete_service_account(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, name: _ACCOUNT_PATH
) -> dict[str, int]:
    """Delete a service account and revoke its tokens everywhere. Destructive: a recent second factor."""
    admin = admin_of(request)
    try:
        confirm_destructive(admin, config, services.identity.clock)
        revoked = await accounts_of(services, config).delete_account(
            name, actor=admin.actor, ip=client_ip(request)
        )
    except GatewayError as err:
        await _refused(services, request, "service_account.delete", f"client:{name[:64]}", err)
        raise
    return {"tokens_revoked": revoked}


@get("/api/tokens", cache=False, tags=["machine clients"])
async def list_tokens(
    services: AdminServices,
    config: Config,
    account: Annotated[str | None, QueryParameter(name="account", max_length=64)] = None,
) -> list[TokenView]:
    """Every token (or one account's), newest first: ids, routes, state and last use, never a token."""
    return await accounts_of(services, config).list_tokens(account)


@post("/api/tokens", status_code=201, tags=["machine clients"])
async def create_token(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    data: JSONBody[NewToken],
) -> TokenIssued:
    """Issue a token; the answer holds it once. 400 for an unknown route or a lifetime above the maximum.
    Destructive: a recent second factor (a credential that outlives the session that made it). Under
    ``admin.approvals: 2``, 403 ``second-admin-required`` for a service account holding the admin role
    (one admin would hold an admin's credential: the host issues it)."""
    admin = admin_of(request)
    try:
        confirm_destructive(admin, config, services.identity.clock)
        held = next(
            (a for a in await accounts_of(services, config).list_accounts() if a.name == data.account), None
        )
        if held is not None:
            _refuse_admin_client(live_policy, config, held.name, held.roles)
        try:
            lifetime = float(parse_duration(data.expires))
        except (TypeError, ValueError):
            raise InvalidMachineRequest(
                f"expires {data.expires[:32]!r} is not a duration such as 90d"
            ) from None
        view, token = await accounts_of(services, config).create_token(
            data.account, routes=data.routes, lifetime=lifetime,
            known_routes=[r.name for r in config.settings.routes], actor=admin.actor, ip=client_ip(request),
        )  # fmt: skip
    except GatewayError as err:
        await _refused(services, request, "token.create", f"client:{data.account[:64]}", err)
        raise
    return TokenIssued(token=token, details=view)


@post("/api/tokens/{token_id:str}/revoke", status_code=200, tags=["machine clients"])
async def revoke_token(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, token_id: _TOKEN_PATH
) -> TokenView:
    """Revoke a token by its id: refused on every worker and replica within a second. Destructive."""
    admin = admin_of(request)
    try:
        confirm_destructive(admin, config, services.identity.clock)
        return await accounts_of(services, config).revoke_token(
            token_id, actor=admin.actor, ip=client_ip(request)
        )
    except GatewayError as err:
        await _refused(services, request, "token.revoke", token_id[:32], err)
        raise


#: The machine-client calls, registered by :mod:`admin.app`.
HANDLERS: Final = (
    list_service_accounts,
    create_service_account,
    delete_service_account,
    list_tokens,
    create_token,
    revoke_token,
)
