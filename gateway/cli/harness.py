"""What the ``gateway`` sub-command modules share: exit codes, command groups, the operator, services."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.audit.trail import AuditLog
    from gateway.identity.accounts import AccountService
    from gateway.identity.passwords import PasswordHasher
    from gateway.identity.sessions import SessionStore
    from gateway.settings.schema import Settings
    from gateway.store.fast import FastState

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "AccountServices",
    "SubParsers",
    "account_services",
    "command_group",
    "config_arg",
    "operator",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

SubParsers = argparse._SubParsersAction


def command_group(
    sub: SubParsers[argparse.ArgumentParser], name: str, *, help: str, description: str
) -> SubParsers[argparse.ArgumentParser]:
    """Add ``gateway NAME ACTION …``; ``gateway NAME`` alone prints its help and exits with 2.

    Returns:
        The group's sub-parsers, to add the actions to (each sets ``func``).
    """
    group = sub.add_parser(name, help=help, description=description)

    def usage(_args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return EXIT_USAGE

    group.set_defaults(func=usage)
    return group.add_subparsers(dest=f"{name}_action", metavar="ACTION")


def config_arg(parser: argparse.ArgumentParser, *, required: bool = True, help_suffix: str = "") -> None:
    """The ``--config`` option every command shares (``./gateway.yaml`` unless it is optional)."""
    default_note = " (default: ./gateway.yaml)" if required else ""
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("gateway.yaml") if required else None,
        metavar="FILE",
        help="path to the YAML configuration file" + default_note + help_suffix,
    )


def operator() -> str:
    """Who runs the command, for the audit trail: ``cli:<OS user>``, or ``cli`` when the OS cannot tell."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


@dataclass(frozen=True, slots=True)
class AccountServices:
    """What account-changing commands work with, opened like ``serve`` opens them."""

    settings: Settings
    fast: FastState
    audit: AuditLog
    hasher: PasswordHasher
    accounts: AccountService
    # None only with state.embedded: memory, where the sessions live inside the gateway process:
    # this command's own, empty store would report "0 sessions ended" while the gateway keeps them.
    sessions: SessionStore | None


@asynccontextmanager
async def account_services(settings: Settings) -> AsyncIterator[AccountServices]:
    """Open the database and fast state and build the account services; close them afterwards."""
    from gateway.audit.trail import AuditLog
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.keyring import Keyring
    from gateway.factors.regulation import Regulator
    from gateway.identity.accounts import AccountService
    from gateway.identity.passwords import PasswordHasher
    from gateway.identity.services import keyring_path
    from gateway.identity.sessions import SessionStore
    from gateway.runtime import storage_url
    from gateway.store.db import Database
    from gateway.store.fast import open_configured_state, shares_state
    from gateway.store.migrate import ensure_schema

    url = storage_url(settings)
    # Same policy as `serve`: SQLite upgrades itself, PostgreSQL only through `gateway migrate`.
    await ensure_schema(url, auto=url.startswith("sqlite"))
    # The audit chain is keyed: like `serve`, only the embedded default may create the keyring.
    keyring = Keyring.load_or_create(keyring_path(settings), allow_create=url.startswith("sqlite"))
    db = Database.open(url, pool_size=2)
    # The same fast state as the running gateways (Redis, or the node's file in data_dir), so what
    # this command ends or lifts ends or lifts there too, announced on the same broadcast.
    fast = open_configured_state(settings)
    try:
        audit = AuditLog(db, clock=SYSTEM_CLOCK, keyring=keyring)
        hasher = PasswordHasher(settings.passwords)
        regulator = Regulator(fast, settings.regulation, audit, SYSTEM_CLOCK)
        sessions = SessionStore(fast, settings.session, SYSTEM_CLOCK) if shares_state(settings) else None
        accounts = AccountService(db, hasher, regulator, audit, SYSTEM_CLOCK, sessions=sessions)
        yield AccountServices(settings, fast, audit, hasher, accounts, sessions)
    finally:
        await fast.close()
        await db.close()
