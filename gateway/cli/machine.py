"""``gateway service-account …`` and ``gateway token …``: machine clients and their API tokens.

    gateway service-account create NAME [--role R]... [--description TEXT] [--owner TEXT]
    gateway service-account list [--json]
    gateway service-account delete NAME              its tokens stop working everywhere at once
    gateway token create ACCOUNT --route R... --expires 90d    prints the token once
    gateway token list [ACCOUNT] [--json]
    gateway token revoke ID                          ID: the token's public id (gwt_ and 8 characters)

Every action takes ``--config FILE`` and writes an audit record with the operator as the actor. A
revocation is announced on the fast state the running gateways use (Redis, or the node's shared file
in ``data_dir``): every worker of every replica refuses the token within a second.

Exit codes: 0 done, 1 runtime failure (store unreachable), 2 invalid input (bad name, unknown route
or account, lifetime above ``tokens.max_lifetime``, bad configuration), 3 stored but the running
gateways were not told (the revocation's broadcast failed; they find it within a second).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from gateway.cli.harness import (
    EXIT_OK,
    Action,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    load_config,
    note_roles_without_rules,
    open_store,
    operator,
    run,
)
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.machine.accounts import ServiceAccounts
    from gateway.settings.schema import Settings

__all__ = ["register"]

Work = Callable[[argparse.Namespace, "ServiceAccounts"], Awaitable[int]]


def _runner(work: Work) -> Action:
    def command(args: argparse.Namespace) -> int:
        settings = load_config(args)
        args.settings = settings
        return run(_with_accounts(settings, args, work))

    return command


async def _with_accounts(settings: Settings, args: argparse.Namespace, work: Work) -> int:
    from gateway.clock import SYSTEM_CLOCK
    from gateway.identity.ledger import AccountLedger, ledger_path
    from gateway.machine.accounts import ServiceAccounts

    async with open_store(settings, fast=True, keyring=True) as store:
        args.store = store  # `create` reads the policy, to note roles no rule names
        accounts = ServiceAccounts(
            store.db,
            store.audit(),
            store.fast,
            SYSTEM_CLOCK,
            max_lifetime=float(settings.tokens.max_lifetime),
            keyring=store.keyring,
            ledger=(
                AccountLedger(store.db, store.keyring, ledger_path(settings), SYSTEM_CLOCK)
                if store.keyring is not None
                else None
            ),
        )
        try:
            return await work(args, accounts)
        except GatewayError as err:
            if err.status < 500:
                raise UserError(err.detail) from None
            raise


def _json(value: object) -> str:
    return json.dumps(msgspec.to_builtins(value), indent=2)


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19].replace("T", " ")


async def _create_account(args: argparse.Namespace, accounts: ServiceAccounts) -> int:
    view = await accounts.create_account(
        args.name, description=args.description, owner=args.owner, roles=args.roles or (), actor=operator()
    )
    print(f"service account {view.name} created (policy principal client:{view.name}; roles: "
          f"{', '.join(view.roles) or '-'})")  # fmt: skip
    await note_roles_without_rules(args.store.db, args.store.fast, args.store.audit(), view.roles)
    return EXIT_OK


async def _list_accounts(args: argparse.Namespace, accounts: ServiceAccounts) -> int:
    views = await accounts.list_accounts()
    if args.json:
        print(_json(views))
        return EXIT_OK
    for view in views:
        print(f"{view.name}\troles={','.join(view.roles) or '-'}\tactive_tokens={view.active_tokens}"
              f"\towner={view.owner or '-'}\t{view.description}")  # fmt: skip
    if not views:
        print("no service accounts")
    return EXIT_OK


async def _delete_account(args: argparse.Namespace, accounts: ServiceAccounts) -> int:
    revoked = await accounts.delete_account(args.name, actor=operator())
    print(f"service account {args.name.strip().lower()} deleted; {revoked} active token(s) revoked")
    return EXIT_OK


async def _create_token(args: argparse.Namespace, accounts: ServiceAccounts) -> int:
    from gateway.settings.units import parse_duration

    settings: Settings = args.settings
    try:
        lifetime = float(parse_duration(args.expires))
    except (TypeError, ValueError) as exc:
        raise UserError(f"--expires {args.expires!r}: {exc}") from None
    view, token = await accounts.create_token(
        args.account,
        routes=args.routes,
        lifetime=lifetime,
        known_routes=[r.name for r in settings.routes],
        actor=operator(),
    )
    # The token on stdout alone (scripts capture it); what it is on stderr.
    print(token)
    print(
        f"token {view.id} for {view.account} on {', '.join(view.routes)}, expires {_when(view.expires_at)} UTC; "
        "it is shown only now: store it in your secret manager",
        file=sys.stderr,
    )
    return EXIT_OK


async def _list_tokens(args: argparse.Namespace, accounts: ServiceAccounts) -> int:
    views = await accounts.list_tokens(args.account)
    if args.json:
        print(_json(views))
        return EXIT_OK
    for view in views:
        print(f"{view.id}\t{view.account}\t{view.state}\troutes={','.join(view.routes)}"
              f"\texpires={_when(view.expires_at)}\tlast_used={_when(view.last_used_at)}")  # fmt: skip
    if not views:
        print("no tokens")
    return EXIT_OK


async def _revoke_token(args: argparse.Namespace, accounts: ServiceAccounts) -> int:
    view = await accounts.revoke_token(args.id, actor=operator())
    print(f"token {view.id} of {view.account} revoked")
    return EXIT_OK


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway service-account …`` and ``gateway token …``."""
    accounts = command_group(
        sub,
        "service-account",
        help="machine clients that call applications with API tokens",
        description="Service accounts: scripts and CI jobs with roles for the policy (principal "
        "client:<name>); their tokens are made with 'gateway token create'.",
    )
    tokens = command_group(
        sub,
        "token",
        help="API tokens of service accounts (bearer authentication)",
        description="API tokens: shown once at creation, scoped to routes, expiring, revocable.",
    )

    def action(
        group: SubParsers[argparse.ArgumentParser], name: str, work: Work, summary: str
    ) -> argparse.ArgumentParser:
        parser = group.add_parser(name, help=summary, description=summary + ".", allow_abbrev=False)
        config_arg(parser)
        parser.set_defaults(func=_runner(work))
        return parser

    p = action(accounts, "create", _create_account, "create a service account")
    p.add_argument("name", metavar="NAME", help="lower-case a-z 0-9 . _ - (the policy sees client:NAME)")
    p.add_argument("--role", dest="roles", action="append", metavar="ROLE", help="a policy role (repeat)")
    p.add_argument("--description", default="", metavar="TEXT", help="what the client is for")
    p.add_argument("--owner", default="", metavar="TEXT", help="who answers for it")
    p = action(accounts, "list", _list_accounts, "list the service accounts")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = action(accounts, "delete", _delete_account, "delete a service account and revoke its tokens")
    p.add_argument("name", metavar="NAME")

    p = action(tokens, "create", _create_token, "issue a token (printed once, on stdout)")
    p.add_argument("account", metavar="ACCOUNT", help="the service account")
    p.add_argument(
        "--route", dest="routes", action="append", required=True, metavar="ROUTE",
        help="a route the token may be used on (repeat)",
    )  # fmt: skip
    p.add_argument(
        "--expires",
        required=True,
        metavar="DURATION",
        help="lifetime, e.g. 90d (at most tokens.max_lifetime)",
    )
    p = action(tokens, "list", _list_tokens, "list tokens (ids, never the tokens)")
    p.add_argument("account", nargs="?", default=None, metavar="ACCOUNT", help="only this account's")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = action(tokens, "revoke", _revoke_token, "revoke a token everywhere within a second")
    p.add_argument(
        "id",
        metavar="ID",
        help="the token's id, e.g. gwt_Ab3dE9xQ, or the whole token (a leaked one: never echoed)",
    )
