"""Everything sign-in needs, built once per worker from the settings and the two stores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.audit.trail import AuditLog
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.crypto.keyring import Keyring
from gateway.factors.first_codes import FirstCodesGrants
from gateway.factors.recovery import RecoveryCodes
from gateway.factors.regulation import Regulator
from gateway.factors.totp import TotpService
from gateway.factors.webauthn import WebAuthnService
from gateway.identity.accounts import AccountService
from gateway.identity.handoff import HandoffCodes
from gateway.identity.oidc.service import OidcService
from gateway.identity.passwords import PasswordHasher
from gateway.identity.sessions import SessionStore
from gateway.settings.schema import Settings
from gateway.store.db import Database
from gateway.store.fast import FastState

__all__ = ["IdentityServices", "keyring_path"]


def keyring_path(settings: Settings) -> Path:
    """The configured keyring file, or the one in data_dir."""
    return Path(settings.keyring) if settings.keyring else Path(settings.data_dir) / "keys" / "keyring.json"


@dataclass(slots=True)
class IdentityServices:
    """The sign-in services of one worker."""

    clock: Clock
    audit: AuditLog
    keyring: Keyring
    hasher: PasswordHasher
    regulator: Regulator
    sessions: SessionStore
    handoff: HandoffCodes
    accounts: AccountService
    totp: TotpService
    webauthn: WebAuthnService
    recovery: RecoveryCodes
    oidc: OidcService
    first_codes: FirstCodesGrants

    @classmethod
    def build(
        cls, settings: Settings, db: Database, fast: FastState, *, clock: Clock = SYSTEM_CLOCK
    ) -> IdentityServices:
        """Wire the services. The keyring is created only for the embedded (SQLite) default."""
        embedded = settings.storage.url is None or settings.storage.url.startswith("sqlite")
        keyring = Keyring.load_or_create(keyring_path(settings), allow_create=embedded)
        # Keyed: every record carries an HMAC under a key the database does not hold.
        audit = AuditLog(db, clock=clock, keyring=keyring)
        hasher = PasswordHasher(settings.passwords)
        regulator = Regulator(fast, settings.regulation, audit, clock)
        sessions = SessionStore(fast, settings.session, clock)
        return cls(
            clock=clock,
            audit=audit,
            keyring=keyring,
            hasher=hasher,
            regulator=regulator,
            sessions=sessions,
            handoff=HandoffCodes(fast, clock),
            accounts=AccountService(db, hasher, regulator, audit, clock, sessions=sessions),
            totp=TotpService(db, keyring, settings.mfa, clock),
            webauthn=WebAuthnService(
                db, fast, settings.mfa.webauthn, public_url=settings.public_url, audit=audit, clock=clock
            ),
            recovery=RecoveryCodes(db, hasher, settings.mfa, clock),
            first_codes=FirstCodesGrants(fast),
            oidc=OidcService(
                db=db,
                fast=fast,
                audit=audit,
                sessions=sessions,
                clock=clock,
                session_lifetime=float(settings.session.lifetime),
            ),
        )
