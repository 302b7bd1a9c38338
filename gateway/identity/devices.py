"""Known devices: a browser that completed a sign-in for an account has failed attempts of its own.

The regulator (:mod:`gateway.identity.regulation`) locks an account after ``regulation.max_failures``
failures, from wherever they come. An attack run kept three people's password sign-in locked for as
long as it liked from one address: a few wrong passwords every back-off, never enough to be blocked.
Microsoft's smart lockout and Okta's unknown-device lockout answer this the same way: a browser that
has signed in to the account before is counted apart from everyone else.

So a completed sign-in leaves a cookie (``__Host-gateway_device``, a year, HttpOnly) naming a random
device id and an HMAC of the account's username and that id under a key derived from the keyring. A
password or second-factor attempt that carries a valid one for the account is regulated under the
account *and* that device (``alice|device:<id>``); every other attempt under the account alone. The
attacker without the cookie locks the account's shared bucket, and the person's own browser still
signs in. The cookie proves nothing about who is at the keyboard: it only chooses the counter, and a
stolen one buys its own ``max_failures`` guesses per ``lock_time``, no more. Only a request that has
just proven a credential gets a new one: a finished session asking the sign-in page again keeps the
cookie it has (an attack run minted 20 with one session cookie, 20 allowances of guesses). Completed
means every factor the account owes (``web.flows.sign_in_complete``): an account without a second
factor owes its enrollment, so its password alone names no device (an attack run collected four so,
and once the owner enrolled an authenticator app, guessed its codes four allowances at a time). And the MAC
covers the account's password generation (when it was set, and whether there is one): a password
changed, set by an admin or withdrawn (``reset-mfa --invite``) ends every device cookie of the account,
so those an intruder collected while they had the account buy no guesses at the new password. A
rehash of the same password (stronger parameters) is no new generation: it would end the person's own
browsers' cookies with nothing gained. It is the gateway's own: no app receives it, and no app may set it.
A cookie MACed under a keyring key marked compromised counts as none (whoever holds the key can make
one for any account and device, each a fresh allowance of guesses), as CSRF tokens under one do.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Final

from gateway.crypto.keyring import Keyring

__all__ = ["KnownDevices", "account_of", "password_generation"]

_INFO: Final = b"gateway known devices v2"
# Not a username character (identity.names): a regulation key with it is an account and a device.
_DEVICE_SEPARATOR: Final = "|device:"
_ID_BYTES: Final = 12


class KnownDevices:
    """Issues and reads the known-device cookie's value for one keyring."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    def token(self, username: str, generation: str) -> str:
        """A new cookie value naming this browser as a known device of ``username`` while its password
        is of this ``generation`` (:func:`password_generation`)."""
        device = secrets.token_urlsafe(_ID_BYTES)
        return f"{device}.{self._mac(username, generation, device, self._keyring.active_id)}"

    def regulation_key(self, username: str, generation: str, token: str | None) -> str:
        """What an attempt on ``username`` is counted under: with a valid ``token`` for it (issued
        under its password's ``generation``, under a keyring key not marked compromised), the account
        and the device; otherwise the account alone."""
        if token:
            device, _, mac = token.partition(".")
            compromised = self._keyring.compromised
            for kid in self._keyring.key_ids:
                if kid in compromised:
                    continue  # its holder can mint one: no cookie (the account's shared budget)
                if device and hmac.compare_digest(mac, self._mac(username, generation, device, kid)):
                    return f"{username}{_DEVICE_SEPARATOR}{device}"
        return username

    def _mac(self, username: str, generation: str, device: str, kid: str) -> str:
        key = self._keyring.derive(_INFO, kid=kid)
        message = f"{username}\0{generation}\0{device}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def password_generation(has_password: bool, changed_at: datetime | None) -> str:
    """Which password an account has: none, or the one set at ``changed_at``."""
    if not has_password:
        return "none"
    return changed_at.isoformat() if changed_at is not None else "set"


def account_of(regulation_key: str) -> str:
    """The account a regulation key counts for (the key without its device)."""
    return regulation_key.partition(_DEVICE_SEPARATOR)[0]
