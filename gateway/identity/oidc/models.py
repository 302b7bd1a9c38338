"""The identity link: which account a person at an identity provider is.

``(provider, subject)`` is the only thing that ever finds an account for an OIDC sign-in: ``sub`` is
the one claim a provider promises never to reassign. Emails and usernames change hands; they are used
at most once, to make the link, and only when the provider has verified the email.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["IdentityLink"]


class IdentityLink(Base):
    """One provider account linked to one local account (at most one per provider and account)."""

    __tablename__ = "identity_links"
    __table_args__ = (
        UniqueConstraint("provider", "subject"),
        # One account per provider: a second subject claiming the same account (a reassigned email)
        # is refused rather than silently added.
        UniqueConstraint("provider", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The provider's configured name (identity_providers[].name).
    provider: Mapped[str]
    # The ID token's `sub`, exactly as issued.
    subject: Mapped[str]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
