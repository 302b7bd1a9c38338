"""Tables of people and their factors: users, TOTP and WebAuthn credentials, recovery codes.

Secrets never sit here in the clear: TOTP seeds are AES-256-GCM ciphertext under the keyring
(``gateway.crypto.keyring``), passwords and recovery codes are argon2id hashes. Usernames and emails are
stored canonical (NFKC, case-folded, trimmed), so the unique constraints mean "one account per person".
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, LargeBinary, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gateway.store.models import Base

__all__ = [
    "AccountLedgerRow",
    "CredentialIssuer",
    "RecoveryCode",
    "RetiredUsername",
    "TotpCredential",
    "User",
    "WebAuthnCredential",
]


class User(Base):
    """A local account (or, later, one provisioned from an identity provider)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Canonical form (see gateway.identity.names): what people type is folded to this before lookup.
    username: Mapped[str] = mapped_column(unique=True)
    email: Mapped[str | None] = mapped_column(unique=True)
    display_name: Mapped[str] = mapped_column(default="")
    # argon2id PHC string; None for accounts that can only sign in through an identity provider.
    password_hash: Mapped[str | None]
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set for a bootstrap or admin-reset password: the user must choose a new one after sign-in.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    # Roles granted locally (comma-free names, space separated); groups from IdPs are added per session.
    roles: Mapped[str] = mapped_column(default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    password_changed_at: Mapped[datetime | None]
    # Privacy (gateway.privacy): when the registration was cancelled or withdrawn (the account is
    # closed and its data deleted privacy.retention.registration later), whether processing is
    # restricted (no sign-in, data kept), and the optional purposes the person objected to.
    closed_at: Mapped[datetime | None]
    # Server defaults as in migration 0009, which added them to existing rows.
    restricted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    objections: Mapped[str] = mapped_column(default="", server_default=text("''"))

    @property
    def can_sign_in(self) -> bool:
        """Not disabled, not restricted (privacy), not closed: every sign-in path asks this."""
        return not (self.disabled or self.restricted or self.closed_at is not None)

    totp_credentials: Mapped[list[TotpCredential]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )
    webauthn_credentials: Mapped[list[WebAuthnCredential]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class TotpCredential(Base):
    """An authenticator app. ``confirmed`` only after the first valid code (enrollment proof)."""

    __tablename__ = "totp_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str]
    # Keyring ciphertext of the base32 seed (AAD binds it to this user id).
    secret_enc: Mapped[str]
    confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last accepted RFC 6238 time step: a code is accepted only for a later step (no replay).
    last_step: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="totp_credentials")


class WebAuthnCredential(Base):
    """A passkey or security key registered with py_webauthn."""

    __tablename__ = "webauthn_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str]
    credential_id: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(Integer, default=0)
    # Space-separated transports the authenticator reported (usb nfc ble internal hybrid).
    transports: Mapped[str] = mapped_column(default="")
    aaguid: Mapped[str] = mapped_column(default="")
    discoverable: Mapped[bool] = mapped_column(Boolean, default=False)
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)
    user_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="webauthn_credentials")


class RecoveryCode(Base):
    """One single-use recovery code (argon2id hash). A new batch replaces the whole old set."""

    __tablename__ = "recovery_codes"
    __table_args__ = (UniqueConstraint("user_id", "batch", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    batch: Mapped[str]
    position: Mapped[int] = mapped_column(Integer)
    code_hash: Mapped[str]
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class RetiredUsername(Base):
    """The keyed digest of a deleted account's username (``gateway.identity.retired``)."""

    __tablename__ = "retired_usernames"

    # "<kid>:<hex HMAC-SHA256>" under a key derived from that keyring key: names nobody without it.
    name_key: Mapped[str] = mapped_column(primary_key=True)
    retired_at: Mapped[datetime]


class AccountLedgerRow(Base):
    """One account's latest deletion, erasure, disable or enable (``gateway.identity.ledger``)."""

    __tablename__ = "account_ledger"

    # "<kid>:<hex HMAC-SHA256>" of the username and creation time: names nobody without the keyring.
    account_key: Mapped[str] = mapped_column(primary_key=True)
    # The account's id, to find it again (the key says whether the row of that id is still it).
    user_id: Mapped[int]
    # deleted, erased, disabled or enabled.
    state: Mapped[str]
    at: Mapped[datetime]
    # The privacy request an erasure answered, else "".
    ref: Mapped[str] = mapped_column(default="")


class OwedRevocation(Base):
    """An account whose sessions must still be ended: the state store did not answer when its change
    (disable, delete, role removal, restriction) was made (``gateway.identity.owed``)."""

    __tablename__ = "owed_revocations"

    user_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    since: Mapped[datetime]


class CredentialIssuer(Base):
    """An admin who issued credentials of an account: set its password (a one-time password, a reset),
    sent its invitation link, or set the email address an identity provider's sign-in finds it by.
    Under ``admin.approvals: 2`` that admin and the account are one approver
    (``AccountService.lineage``). Every issuer is kept, never only the last: what one admin issued may
    still work after another issued something else (an address at the identity provider, a passkey
    enrolled with the first password), and nobody can tell the person's own later change from the
    issuer's. Ids, not names: an admin's erasure leaves no name here, and an account's deletion takes
    its rows (either side) with it."""

    __tablename__ = "credential_issuers"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
