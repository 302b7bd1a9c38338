"""The gateway's own API tokens: their format, their hash, their public prefix.

A token is ``gwt_`` and 32 random bytes in unpadded base64url (43 characters), 47 characters in all.
The ``gwt_`` prefix lets a secret scanner (and a person) recognise a leaked token, and lets the
bearer stage hand a token to the verifier that issued it without a look-up. The first
:data:`PREFIX_CHARS` characters of the random part, with ``gwt_``, are the token's public id
(``gwt_Ab3dE9xQ``): shown once with the token, then in every list and log, never enough to use it.

Only the SHA-256 of a token is stored. A password needs a slow, salted hash because people choose
guessable ones: an attacker with the table tries likely passwords against it. A token has 256 bits
chosen by the machine: there is nothing to guess, so a slow hash would only slow down every request
(argon2 costs ~50 ms; SHA-256 well under a microsecond) without making a stolen table more useful,
and no salt is needed because no two tokens are alike. The hash is also what makes a look-up by
token possible at all (an index on it), which a salted hash would not.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PREFIX_CHARS",
    "REVOCATION_CHANNEL",
    "TOKEN_PREFIX",
    "NewToken",
    "hash_token",
    "is_gateway_token",
    "is_token_id",
    "meant_as_gateway_token",
    "new_token",
    "prefix_of",
]

TOKEN_PREFIX: Final = "gwt_"  # noqa: S105 - the public marker of a token, not a secret
_SECRET_BYTES: Final = 32
#: Characters of the random part in the public id.
PREFIX_CHARS: Final = 8
_TOKEN: Final = re.compile(r"gwt_[A-Za-z0-9_-]{43}")
_ID: Final = re.compile(rf"gwt_[A-Za-z0-9_-]{{{PREFIX_CHARS}}}")


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just made: ``token`` is shown once; ``prefix`` and ``token_hash`` are stored."""

    token: str
    prefix: str
    token_hash: str

    def __repr__(self) -> str:
        # Never the token: a NewToken in a traceback or a debug log must not leak it.
        return f"NewToken(prefix={self.prefix!r})"


def new_token() -> NewToken:
    """A fresh random token with its public id and hash."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode("ascii")
    token = TOKEN_PREFIX + secret
    return NewToken(token=token, prefix=prefix_of(token), token_hash=hash_token(token))


def meant_as_gateway_token(value: str) -> bool:
    """Whether ``value`` looks like a gateway token, spoiled or not: decided by the gateway alone, a
    malformed one refused, never sent to an identity provider. An attack run had a token with a
    character added, its prefix upper-cased, a character put before it or its underscore changed
    introspected, the whole secret in the request. So: a value that starts with ``gwt`` in any case,
    or holds ``gwt_`` anywhere in any case, but for a JWT (three dot-separated parts: a provider's, whose base64
    would hold ``gwt_`` about once in 15,000 tokens). A random 100-character opaque provider token
    matches by chance about once in 20,000 (and is then refused here, every time); the bare secret
    without its prefix cannot be told apart."""
    if value[:3].lower() == TOKEN_PREFIX[:3]:
        return True
    # A JWT's header is a JSON object: base64 of '{"' is "eyJ".
    return TOKEN_PREFIX in value.lower() and not (value.startswith("eyJ") and value.count(".") == 2)


def is_gateway_token(value: str) -> bool:
    """Whether ``value`` has the shape of a gateway token (refused before any hashing or look-up)."""
    return _TOKEN.fullmatch(value) is not None


def is_token_id(value: str) -> bool:
    """Whether ``value`` is a token's public id (``gwt_`` and 8 characters)."""
    return _ID.fullmatch(value) is not None


def prefix_of(token: str) -> str:
    """The public id of a token."""
    return token[: len(TOKEN_PREFIX) + PREFIX_CHARS]


def hash_token(token: str) -> str:
    """SHA-256 of the token, hex: what is stored and looked up (see the module docstring)."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


#: The fast-state channel a revoked token's hash is announced on; every worker of every replica drops
#: it from its cache (gateway.machine.gateway_tokens).
REVOCATION_CHANNEL: Final = "token-revoked"
