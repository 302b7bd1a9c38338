"""How the privacy records name a person without naming them: keyed subject digests and pseudonyms.

A legal hold may be placed on a person after their erasure (an order arrives later), and it must
still find their removed content, which keeps no username. Both carry a *subject key*: HMAC-SHA256
of the canonical username under a key derived from the keyring, prefixed with the keyring key id it
was made under (so a rotation does not orphan older rows: :func:`subject_keys` gives one per key).
Without the keyring the digest names no one; with it, only a known name can be checked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from gateway.crypto.keyring import Keyring

__all__ = ["new_pseudonym", "subject_key", "subject_keys"]

_INFO: Final = b"gateway privacy subject v1"


def subject_key(keyring: Keyring, username: str, *, kid: str | None = None) -> str:
    """``<kid>:<hex HMAC>`` of ``username`` (already canonical) under the active (or ``kid``) key."""
    key_id = kid if kid is not None else keyring.active_id
    mac = hmac.new(keyring.derive(_INFO, kid=key_id), username.encode("utf-8"), hashlib.sha256)
    return f"{key_id}:{mac.hexdigest()}"


def subject_keys(keyring: Keyring, username: str) -> list[str]:
    """The subject key of ``username`` under every key the keyring holds (for look-ups)."""
    return [subject_key(keyring, username, kid=kid) for kid in sorted(keyring.key_ids)]


def new_pseudonym() -> str:
    """12 random hex digits: what an erased person is called from then on (``[erased:<p>]``)."""
    return secrets.token_hex(6)
