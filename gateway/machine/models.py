"""Tables of machine clients: service accounts and the API tokens they call the applications with.

A token itself is never stored: only its SHA-256 (``token_hash``) and a short public prefix
(``prefix``) that names it in lists and logs. See :mod:`gateway.machine.tokens` for why a fast hash is
right for these tokens and wrong for passwords.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["ApiToken", "ServiceAccount"]


class ServiceAccount(Base):
    """A script, job or service that calls applications behind the gateway without a person."""

    __tablename__ = "service_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The policy's principal is client:<name>; canonical like a username (gateway.identity.names).
    name: Mapped[str] = mapped_column(unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # Who answers for it (a person or team: free text, e.g. "ops@example.com").
    owner: Mapped[str] = mapped_column(Text, default="")
    # Roles for the policy, space separated (as users.roles).
    roles: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    # "cli:root", "user:alice": who created it.
    created_by: Mapped[str] = mapped_column(Text)


class ApiToken(Base):
    """One bearer token of a service account, valid on the routes it names until it expires."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("service_accounts.id", ondelete="CASCADE"), index=True)
    # "gwt_" and the first characters of the secret part: how a person recognises the token.
    prefix: Mapped[str] = mapped_column(Text, unique=True)
    # SHA-256 of the whole token, hex.
    token_hash: Mapped[str] = mapped_column(Text, unique=True)
    # Route names, space separated: the token works on these routes only.
    routes: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime]
    # Written at most once a minute per token per worker (not on every request).
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str] = mapped_column(Text, default="")
