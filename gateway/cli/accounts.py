"""The account services ``gateway user`` and ``gateway incident`` work with, built like ``serve`` builds them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.cli.harness import open_store

if TYPE_CHECKING:
    from gateway.audit.trail import AuditLog
    from gateway.identity.accounts import AccountService
    from gateway.identity.passwords import PasswordHasher
    from gateway.identity.sessions import SessionStore
    from gateway.settings.schema import Settings
    from gateway.store.db import Database
    from gateway.store.fast import FastState

__all__ = ["AccountServices", "account_services"]


@dataclass(frozen=True, slots=True)
class AccountServices:
    """What account-changing commands work with."""

    settings: Settings
    db: Database
    fast: FastState
    audit: AuditLog
    hasher: PasswordHasher
    accounts: AccountService
    # None only with state.embedded: memory, where the sessions live inside the gateway process:
    # this command's own, empty store would report "0 sessions ended" while the gateway keeps them.
    sessions: SessionStore | None


@asynccontextmanager
async def account_services(settings: Settings) -> AsyncIterator[AccountServices]:
    """Open the store (database, fast state, keyring) and build the account services on it."""
    from gateway.clock import SYSTEM_CLOCK
    from gateway.identity.accounts import AccountService
    from gateway.identity.invitations import Invitations
    from gateway.identity.ledger import AccountLedger, ledger_path
    from gateway.identity.passwords import PasswordHasher
    from gateway.identity.regulation import Regulator
    from gateway.identity.sessions import SessionStore
    from gateway.store.fast import shares_state

    async with open_store(settings, fast=True, keyring=True) as store:
        audit = store.audit()
        hasher = PasswordHasher(settings.passwords)
        regulator = Regulator(store.fast, lambda: settings.regulation, audit, SYSTEM_CLOCK)
        sessions = (
            SessionStore(store.fast, settings.session, SYSTEM_CLOCK) if shares_state(settings) else None
        )
        accounts = AccountService(
            store.db,
            hasher,
            regulator,
            audit,
            SYSTEM_CLOCK,
            sessions=sessions,
            keyring=store.keyring,
            ledger=(
                AccountLedger(store.db, store.keyring, ledger_path(settings), SYSTEM_CLOCK)
                if store.keyring is not None
                else None
            ),
            # In-process state (state.embedded: memory) holds the gateway's invitations in its own
            # process: this command's would be another, empty store.
            invitations=Invitations(store.fast, SYSTEM_CLOCK) if shares_state(settings) else None,
        )
        yield AccountServices(settings, store.db, store.fast, audit, hasher, accounts, sessions)
