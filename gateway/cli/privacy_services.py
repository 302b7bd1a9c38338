"""The privacy services ``gateway privacy`` and ``gateway retention`` work with, built like ``serve`` builds
them: the rights service (register, holds, eraser) and the retention engine over the account services.

Every action here acts as the operator (``cli:<OS user>``) on channel ``cli``; the retention engine's own
erasures act as ``system:retention`` whoever runs it.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.cli.accounts import account_services
from gateway.cli.harness import Action, UserError, load_config, load_keyring, operator, run

if TYPE_CHECKING:
    from gateway.audit.trail import AuditLog
    from gateway.identity.accounts import AccountService
    from gateway.identity.models import User
    from gateway.privacy.retention import Retention
    from gateway.privacy.service import Privacy
    from gateway.settings.schema import Settings
    from gateway.store.db import Database

__all__ = ["PrivacyContext", "privacy_runner", "when"]


@dataclass(frozen=True, slots=True)
class PrivacyContext:
    """What a privacy or retention action works with."""

    settings: Settings
    accounts: AccountService
    audit: AuditLog
    privacy: Privacy
    retention: Retention
    # Who runs the command, for the register and the audit trail.
    actor: str
    # Whether the running gateways' sessions are out of this command's reach (state.embedded: memory).
    sessions_out_of_reach: bool
    # The database the services work on (``hold carry`` compares its audit trail with another's).
    db: Database

    async def user(self, login: str) -> User:
        """The account ``login`` names (username or email), or a :class:`UserError` (exit 2)."""
        user = await self.accounts.find(login)
        if user is None:
            raise UserError(f"no user {login!r} (give a username or email address)")
        return user


@asynccontextmanager
async def privacy_services(settings: Settings) -> AsyncIterator[PrivacyContext]:
    """Open the store (database, fast state, keyring) and build the privacy services on it."""
    from gateway.clock import SYSTEM_CLOCK
    from gateway.privacy.consent import Consents
    from gateway.privacy.retention import Retention
    from gateway.privacy.service import Privacy
    from gateway.response.personal_data import CasePersonalData
    from gateway.threat.incidents import IncidentStore

    async with account_services(settings) as svc:
        # Loaded (never created) a second time: the account services keep theirs to the audit trail.
        keyring = load_keyring(settings, may_create=False)
        consents = Consents(
            svc.db,
            svc.audit,
            svc.sessions,
            purposes=lambda: settings.privacy.purposes,
            clock=SYSTEM_CLOCK,
            ledger=svc.accounts.ledger,
        )
        privacy = Privacy(
            svc.db,
            keyring=keyring,
            accounts=svc.accounts,
            sessions=svc.sessions,
            audit=svc.audit,
            consents=consents,
            incident_records=CasePersonalData(svc.db, detections=IncidentStore(svc.fast)),
            clock=SYSTEM_CLOCK,
            # The short-lived keys naming the person go with them (gateway.privacy.traces): a re-attack
            # run's CLI erasure left every one.
            fast=svc.fast,
        )
        retention = Retention(
            svc.db,
            privacy,
            keyring=keyring,
            audit=svc.audit,
            incidents=IncidentStore(svc.fast),
            settings=lambda: settings.privacy,
            clock=SYSTEM_CLOCK,
        )
        yield PrivacyContext(
            settings, svc.accounts, svc.audit, privacy, retention, operator(), svc.sessions is None, svc.db
        )


def _user_errors() -> tuple[type[Exception], ...]:
    # Errors of the domain that are the operator's input to change (exit 2), not a failure.
    from gateway.errors import BadRequest
    from gateway.identity.accounts import AccountExists, InvalidAccount, UnknownAccount
    from gateway.privacy.holds import HoldExists, UnknownHold
    from gateway.privacy.register import UnknownRequest
    from gateway.privacy.removed import UnknownRemoved
    from gateway.privacy.service import ProviderOwned

    return (
        AccountExists,
        BadRequest,
        HoldExists,
        InvalidAccount,
        ProviderOwned,
        UnknownAccount,
        UnknownHold,
        UnknownRemoved,
        UnknownRequest,
    )


def privacy_runner(action: Callable[[argparse.Namespace, PrivacyContext], Awaitable[int]]) -> Action:
    """The ``func`` of a privacy or retention action: load the config, open the services, run it."""

    def command(args: argparse.Namespace) -> int:
        errors = _user_errors()
        settings = load_config(args)

        async def work() -> int:
            async with privacy_services(settings) as ctx:
                return await action(args, ctx)

        return run(work(), errors=errors)

    return command


def when(moment: datetime | None) -> str:
    """A time as the tables show it (UTC, to the minute), or ``-``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "-"
