"""The audit chain's key: what makes writing to the database not enough to extend the chain.

A plain SHA-256 chain can be extended by anyone who can write to ``audit_events``: the canonical form
is public, so a forger computes the next hash and the forgery verifies. Keyed records (chain version
2) carry HMAC-SHA256 under a key derived from the keyring, which the database never holds::

    chain key(kid) = HKDF-SHA256(keyring key kid, info = "gateway keyring derive\\0audit-chain v2")
    record_hash    = HMAC-SHA256(chain key(kid), canonical bytes incl. "v": 2 and "kid": kid)

Each record names the keyring key id it was keyed under. ``gateway keys rotate`` adds a key and makes
it active; records keyed before keep verifying because the keyring keeps every old key (it needs them
to decrypt old secrets anyway). The chain key is derived per purpose, so it is never the key that
encrypts secrets nor the one that signs checkpoints.

The cost, as for checkpoints: whoever holds the keyring can both verify and forge. Keep the keyring
away from whoever you are guarding the trail against; the database credentials alone are not enough.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Final

from gateway.crypto.keyring import Compromise, Keyring, KeyringError

__all__ = ["CHAIN_KEY_LABEL", "ChainKeys"]

logger = logging.getLogger("gateway.audit")

#: HKDF ``info`` label of the chain key: distinct from every other ``derive`` purpose.
CHAIN_KEY_LABEL: Final = b"audit-chain v2"


class ChainKeys:
    """HMAC keys of the audit chain, one per keyring key id, derived once and remembered."""

    __slots__ = ("_derived", "_keyring")

    def __init__(self, keyring: Keyring) -> None:
        """Wrap the keyring; nothing is derived until a key id is used."""
        self._keyring = keyring
        # A key id always names the same key bytes (Keyring.rotate refuses to change one), so a
        # derived key never goes stale; the dict is bounded by the keyring's key count.
        self._derived: dict[str, bytes] = {}

    def __repr__(self) -> str:
        # Never key bytes: reprs end up in logs and tracebacks.
        return f"ChainKeys(active={self.active_id!r})"

    @property
    def active_id(self) -> str:
        """The key id new records are keyed under (follows the keyring after a rotation)."""
        return self._keyring.active_id

    def marks(self) -> Mapping[str, Compromise]:
        """Every key marked compromised, with its mark."""
        return self._keyring.compromised

    def compromised(self, kid: str) -> Compromise | None:
        """The mark of ``kid`` when it is marked compromised (records after its ``audit_seq`` are not
        trusted), else ``None``."""
        return self._keyring.compromised.get(kid)

    def catch_up(self, *, changed_only: bool = False) -> None:
        """Read the keyring file again, to key the next record under its active key: always for a
        writer that met a head keyed under another key, else when the file changed since it was read
        (``changed_only``, one stat: a rotation that died before its record left workers keying
        under the key it marked). A file that cannot be read leaves the keys as they were."""
        try:
            if changed_only:
                self._keyring.follow_file()
            else:
                self._keyring.reload()
        except KeyringError as exc:
            logger.warning("audit chain: cannot read the keyring again: %s", exc.detail)

    def mac(self, data: bytes, *, kid: str) -> str:
        """HMAC-SHA256 (hex) of ``data`` under the chain key of keyring key ``kid``.

        Raises:
            KeyringError: The keyring does not hold ``kid``.
        """
        key = self._derived.get(kid)
        if key is None:
            key = self._keyring.derive(CHAIN_KEY_LABEL, kid=kid)
            self._derived[kid] = key
        return hmac.new(key, data, hashlib.sha256).hexdigest()

    def matches(self, data: bytes, digest: str, *, kid: str) -> bool:
        """Whether ``digest`` is the MAC of ``data`` under ``kid``'s chain key.

        Raises:
            KeyringError: The keyring does not hold ``kid``.
        """
        # Constant time: a verifier answering many guesses must not say how much of one was right.
        return hmac.compare_digest(self.mac(data, kid=kid), digest)
