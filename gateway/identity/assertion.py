"""The identity assertion upstream apps receive: ``X-Gateway-Assertion``, an ES256 JWT.

Header ``{"alg": "ES256", "typ": "JWT", "kid": ...}``; claims::

    iss        the gateway's public_url          sub        the username
    aud        the route name                    email      the user's email (omitted if none)
    roles      the user's roles (list)           amr        RFC 8176 methods of this session
    auth_time  session start (Unix s)            iat, exp   exp = iat + ttl (ttl <= 300 s)
    jti        random, unique per token          optout     the purposes (``privacy.purposes``) not to
                                                            process for this person (omitted if none)

Upstreams verify it against ``/.gateway/jwks.json`` (see docs/assertion.md). Signing costs ~23 µs
(cryptography's ECDSA P-256; authlib.jose and joserfc took ~37 µs for the same token), so each
token is reused for its session, route and signing key until less than a fifth of its lifetime is
left: the hot path is one dict lookup. A change of roles, email, factors or opt-outs re-signs at once.

``optout`` is how an app learns a person's choices about the purposes it processes for: a consent
withdrawn or never given, an objection, a restriction. An attack run withdrew a consent to an app's
purpose and saw nothing change in what the app received.

``amr`` (RFC 8176) from the session's factor uses: password → ``pwd``, TOTP and recovery codes →
``otp``, WebAuthn → ``hwk``, an upstream OpenID provider → ``fed``; a two-factor session adds
``mfa``. Second factors are listed only when the session's level is two-factor (a factor list that
claims more than the level is not trusted, as in ``levels.check_requirement``).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.clock import Clock
from gateway.crypto.signing import ALGORITHM, KeySet, PublishedKey, SigningUnavailable
from gateway.errors import GatewayError
from gateway.identity.levels import SECOND_FACTORS, AuthLevel, Factor, FactorUse
from gateway.identity.sessions import Session

__all__ = ["MAX_TTL", "AssertionRefused", "AssertionSigner", "amr_for"]

MAX_TTL: Final = 300.0
_ECDSA: Final = ec.ECDSA(hashes.SHA256())
_AMR: Final[dict[Factor, str]] = {
    Factor.PASSWORD: "pwd",
    Factor.TOTP: "otp",
    Factor.RECOVERY: "otp",
    Factor.WEBAUTHN: "hwk",
    Factor.OIDC: "fed",
}
_encode = msgspec.json.Encoder().encode


class AssertionRefused(GatewayError):
    """No assertion can be made for this session and route (500: the request fails closed)."""

    reason = "assertion-refused"
    title = "Identity assertion unavailable"


def amr_for(level: AuthLevel, factors: Sequence[FactorUse]) -> tuple[str, ...]:
    """RFC 8176 ``amr`` values for a session, in the order the factors were first used."""
    two_factor = level >= AuthLevel.TWO_FACTOR
    methods: list[str] = []
    for use in factors:
        if use.factor in SECOND_FACTORS and not two_factor:
            continue
        method = _AMR.get(use.factor)
        if method is not None and method not in methods:
            methods.append(method)
    if two_factor and any(use.factor in SECOND_FACTORS for use in factors):
        methods.append("mfa")
    return tuple(methods)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _private_half(key: PublishedKey) -> ec.EllipticCurvePrivateKey:
    private = key.private_key
    if private is None:
        raise SigningUnavailable(f"the private half of signing key {key.kid} is not available")
    return private


class _Cached(msgspec.Struct, frozen=True, gc=False):
    token: str
    iat: int
    exp: int
    email: str | None
    roles: tuple[str, ...]
    factors: tuple[FactorUse, ...]
    optout: tuple[str, ...]


class AssertionSigner:
    """Makes (and reuses) the ``X-Gateway-Assertion`` token of a session for a route.

    One per worker. Not thread-safe (the event loop is one thread).
    """

    def __init__(
        self,
        keys: Callable[[], KeySet],
        *,
        issuer: str,
        ttl: float,
        clock: Clock,
        cache_size: int = 50_000,
    ) -> None:
        """Create a signer.

        Args:
            keys: Returns the current key set (``SigningKeys.current``); called on every assertion,
                so a reload is picked up at once.
            issuer: The ``iss`` claim: the gateway's ``public_url`` (without a trailing ``/``).
            ttl: Token lifetime in seconds, 1 to 300.
            clock: Unix time for ``iat``/``exp`` and for picking the signing key.
            cache_size: Most tokens kept for reuse; the oldest is dropped first.

        Raises:
            ValueError: ``ttl`` out of range, empty issuer, or a negative cache size.
        """
        if not 1 <= ttl <= MAX_TTL:
            raise ValueError(f"assertion ttl must be 1..{MAX_TTL:.0f} s, not {ttl}")
        if not issuer.rstrip("/"):
            raise ValueError("the assertion issuer (public_url) must not be empty")
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        self._keys = keys
        # One spelling of the issuer, whatever the config file had: upstreams compare it exactly.
        self._issuer = issuer.rstrip("/")
        self._ttl = int(ttl)
        # Reissue once less than a fifth of the lifetime is left: an upstream that receives the token
        # still has at least ttl/5 to check it, and most requests cost no signature.
        self._min_left = ttl / 5
        self._clock = clock
        self._cache_size = cache_size
        self._cache: dict[tuple[str, str, str], _Cached] = {}

    def clear_cache(self) -> None:
        """Forget every reusable token (e.g. after a user's roles changed everywhere)."""
        self._cache.clear()

    @property
    def cached(self) -> int:
        """Number of reusable tokens held."""
        return len(self._cache)

    def assertion_for(
        self, session: Session, route_name: str, email: str | None, roles: Sequence[str]
    ) -> str:
        """The signed assertion for this session on this route.

        Args:
            session: The signed-in session (gives ``sub``, ``auth_time`` and ``amr``).
            route_name: The route the request goes to: the ``aud`` claim.
            email: The user's email; omitted from the token when None or empty.
            roles: The user's roles.

        Returns:
            A compact JWS (``header.claims.signature``).

        Raises:
            AssertionRefused: Empty subject or route, or a session that is not signed in.
            SigningUnavailable: No key signs at this moment.
            KeyringError: The signing key could not be decrypted when it was loaded.
        """
        # A token with an empty subject would read as "someone" to a careless upstream: never make one.
        if not session.username or session.level < AuthLevel.ONE_FACTOR:
            raise AssertionRefused("no identity assertion for a session without a signed-in user")
        if not route_name:
            raise AssertionRefused("no identity assertion without a route (audience)")
        now = self._clock.time()
        key = self._keys().signing_key(now)
        if key is None:
            raise SigningUnavailable("no assertion-signing key is active")
        roles = tuple(roles)
        email = email or None
        cache_key = (session.id_hash, route_name, key.kid)
        hit = self._cache.get(cache_key)
        if (
            hit is not None
            and hit.exp - now >= self._min_left
            and hit.iat <= now  # the clock went back: the cached token would be "issued in the future"
            and hit.roles == roles
            and hit.email == email
            and hit.factors == session.factors
            and hit.optout == session.optout
        ):
            return hit.token
        iat = int(now)
        exp = iat + self._ttl
        token = self._sign(_private_half(key), key.kid, session, route_name, email, roles, iat, exp)
        self._keep(cache_key, _Cached(token, iat, exp, email, roles, session.factors, session.optout))
        return token

    def assertion_for_client(
        self,
        client: str,
        token_id: str,
        route_name: str,
        roles: Sequence[str],
        expires_at: float,
        *,
        client_id: str = "",
        optout: tuple[str, ...] = (),
    ) -> str:
        """The signed assertion for a request authenticated by a bearer token on this route.

        ``sub`` is who the token speaks for; ``client_id`` is the OAuth client it was issued to, the
        same as ``sub`` for a machine client's own token (RFC 9068 §2.2), the application for a
        person's provider token. ``amr`` is empty: no one authenticated to the gateway. The token's
        own expiry bounds ``exp``. Reused per token, route and key like a session's. ``optout`` is
        a person's, as a session's assertion carries it (a machine client has none).

        Raises:
            AssertionRefused: Empty client or route.
            SigningUnavailable: No key signs at this moment.
        """
        if not client or not route_name:
            raise AssertionRefused("no identity assertion without a client and a route")
        now = self._clock.time()
        key = self._keys().signing_key(now)
        if key is None:
            raise SigningUnavailable("no assertion-signing key is active")
        roles = tuple(roles)
        # The subject too, not only the token's public id (a prefix, or 64 bits of a provider token's
        # hash): a collision of ids must not hand one client's assertion to another.
        cache_key = (f"client:{token_id}\0{client}", route_name, key.kid)
        hit = self._cache.get(cache_key)
        if (
            hit is not None
            and hit.exp - now >= self._min_left
            and hit.iat <= now
            and hit.roles == roles
            and hit.optout == optout
        ):
            return hit.token
        iat = int(now)
        exp = min(iat + self._ttl, max(iat + 1, int(expires_at)))
        claims: dict[str, object] = {
            "iss": self._issuer, "sub": client, "aud": route_name, "client_id": client_id or client,
            "roles": list(roles), "amr": [], "gateway_auth": "bearer", "iat": iat, "exp": exp,
            "jti": secrets.token_urlsafe(16),
        }  # fmt: skip
        if optout:
            claims["optout"] = list(optout)
        token = self._encode_signed(_private_half(key), key.kid, claims)
        self._keep(cache_key, _Cached(token, iat, exp, None, roles, (), optout))
        return token

    def _keep(self, cache_key: tuple[str, str, str], cached: _Cached) -> None:
        """Keep a token for reuse; the oldest goes first when the cache is full."""
        if not self._cache_size:
            return
        cache = self._cache
        cache.pop(cache_key, None)
        while len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[cache_key] = cached

    def _sign(
        self,
        private: ec.EllipticCurvePrivateKey,
        kid: str,
        session: Session,
        route_name: str,
        email: str | None,
        roles: tuple[str, ...],
        iat: int,
        exp: int,
    ) -> str:
        claims: dict[str, object] = {"iss": self._issuer, "sub": session.username, "aud": route_name}
        if email:
            claims["email"] = email
        claims["roles"] = list(roles)
        claims["amr"] = list(amr_for(session.level, session.factors))
        claims["auth_time"] = int(session.created_at)
        claims["iat"] = iat
        claims["exp"] = exp
        claims["jti"] = secrets.token_urlsafe(16)
        if session.optout:
            claims["optout"] = list(session.optout)
        return self._encode_signed(private, kid, claims)

    @staticmethod
    def _encode_signed(private: ec.EllipticCurvePrivateKey, kid: str, claims: dict[str, object]) -> str:
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": kid}
        signing_input = _b64(_encode(header)) + b"." + _b64(_encode(claims))
        # JWS (RFC 7518 §3.4) wants r || s, each 32 bytes big-endian, not the DER cryptography returns.
        r, s = decode_dss_signature(private.sign(signing_input, _ECDSA))
        signature = _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return (signing_input + b"." + signature).decode("ascii")
