"""The ES256 keys that sign identity assertions (``X-Gateway-Assertion``), shared by every replica.

The private key is keyring ciphertext (AES-256-GCM, AAD ``signing:<kid>``), so a database dump does not
hand out the power to mint identities. Rotation adds a key that is published in ``/.gateway/jwks.json``
from ``created_at`` but signs only from ``active_from`` (upstreams fetch it before they meet it); the
replaced key stays published until ``retired_at`` plus the grace period, so tokens it signed still
verify.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["SigningKey"]


class SigningKey(Base):
    """One assertion-signing key pair."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(Text, primary_key=True)
    algorithm: Mapped[str] = mapped_column(Text, default="ES256")
    # The public JWK (JSON), as served in jwks.json.
    public_jwk: Mapped[str] = mapped_column(Text)
    # Keyring token of the PKCS#8 DER private key.
    private_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    active_from: Mapped[datetime]
    retired_at: Mapped[datetime | None]
