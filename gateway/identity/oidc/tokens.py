"""Validation of the two JWTs a provider sends: the ID token (sign-in) and the logout token.

OpenID Connect Core §3.1.3.7 and Back-Channel Logout 1.0 §2.6, checked in this order, and the first
failure names its :class:`Check` (the audit trail records it; the person sees one plain message):

1. **Shape**: three base64url segments, a JSON object header, at most 16 KiB.
2. **Algorithm** from the provider's allow-list, read from the header *before* any key is touched.
   ``none`` and every HMAC algorithm are refused whatever the configuration says: an HMAC key would be
   the provider's public key read as a secret (the key-confusion attack). Unknown ``crit`` headers too.
3. **Key**: from the provider's JWKS, matching ``kid``, key type and curve (an RSA key never verifies
   an EC signature, and a key announcing ``use: enc`` or another ``alg`` is not used).
4. **Signature** (joserfc, restricted to that one algorithm).
5. **Claims**, by authlib's OpenID Connect claim classes (``CodeIDToken``, which authlib 1.9 builds on
   joserfc's claims registry; its own ``authlib.jose`` is deprecated in favour of joserfc) with the
   gateway's options and hooks on top: ``iss`` equals the configured issuer exactly; ``aud`` contains
   the client id, and with several audiences ``azp`` must name it (``azp`` must name it whenever present); ``exp``, ``iat``
   and ``nbf`` within the allowed clock skew; ``nonce`` equal to the one this browser's flow sent;
   ``at_hash`` matching the access token when present. A logout token instead needs ``jti``, the
   back-channel ``events`` member, ``sub`` or ``sid``, and *no* ``nonce`` (so neither token can be
   passed off as the other).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Final, TypeGuard

from authlib.oidc.core import CodeIDToken
from authlib.oidc.core import IDToken as OidcClaims
from joserfc import jws
from joserfc.errors import ClaimError, JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from gateway.errors import GatewayError
from gateway.names import hidden_character

__all__ = [
    "BACKCHANNEL_EVENT",
    "Check",
    "IdToken",
    "KeyFinder",
    "LogoutToken",
    "TokenRejected",
    "jws_header",
    "key_matches",
    "verify_id_token",
    "verify_logout_token",
]

BACKCHANNEL_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"
MAX_TOKEN_BYTES: Final = 16 * 1024
# An ID token is fetched right after the code exchange; one issued longer ago than a whole sign-in
# may take (the flow's lifetime) is not the answer to this sign-in.
MAX_TOKEN_AGE: Final = 600.0
_NEVER: Final = frozenset({"none", "HS256", "HS384", "HS512"})
# Explicit types (RFC 8725 §3.11): an ID token may say JWT; a logout token logout+jwt (or JWT, from
# providers older than the final spec). Anything else (at+jwt, …) is another kind of token.
_ID_TYPES: Final = frozenset({"jwt"})
# An ID token's amr values (RFC 8176 names are a few letters) and acr: what is kept of each, and how many.
_MAX_AUTH_VALUE: Final = 256
_MAX_AUTH_VALUES: Final = 16
_LOGOUT_TYPES: Final = frozenset({"jwt", "logout+jwt"})
# JWS algorithm → (key type, curve or None).
_KEY_TYPES: Final[Mapping[str, tuple[str, str | None]]] = {
    **{f"{p}{n}": ("RSA", None) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
    "Ed25519": ("OKP", "Ed25519"),
}

KeyFinder = Callable[[str | None, str], Awaitable[Sequence[Key]]]
"""``(kid, alg) → candidate keys``: the provider's JWKS, re-fetched (rate-limited) on an unknown kid."""


class Check(StrEnum):
    """Which check refused a token (recorded in the audit trail)."""

    SHAPE = "shape"
    ALGORITHM = "alg"
    KEY = "key"
    SIGNATURE = "signature"
    ISSUER = "iss"
    AUDIENCE = "aud"
    AUTHORIZED_PARTY = "azp"
    EXPIRED = "exp"
    ISSUED_AT = "iat"
    NOT_BEFORE = "nbf"
    NONCE = "nonce"
    SUBJECT = "sub"
    ACCESS_TOKEN_HASH = "at_hash"  # noqa: S105 - a claim name
    TYPE = "typ"
    EVENTS = "events"
    TOKEN_ID = "jti"  # noqa: S105 - a claim name


class TokenRejected(GatewayError):
    """A token from the provider failed validation; ``check`` says which check, for the log only."""

    status = 401
    reason = "oidc-token-invalid"
    title = "The identity provider's answer could not be verified"

    def __init__(self, check: Check, detail: str) -> None:
        super().__init__(detail)
        self.check = check


@dataclass(frozen=True, slots=True)
class IdToken:
    """A verified ID token. ``claims`` is the whole payload; the rest are the parts the gateway uses."""

    claims: Mapping[str, Any]
    subject: str
    issued_at: float
    auth_time: float | None
    amr: tuple[str, ...]
    acr: str | None
    sid: str | None


@dataclass(frozen=True, slots=True)
class LogoutToken:
    """A verified back-channel logout token: end the sessions of ``subject`` and/or ``sid``."""

    jti: str
    issued_at: float
    expires_at: float | None
    subject: str | None
    sid: str | None


def _b64decode(segment: str) -> bytes:
    if not segment or any(c in segment for c in "=+/"):
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jws_header(token: str) -> dict[str, Any]:
    """The protected header of a compact JWS, parsed without verifying anything.

    Raises:
        TokenRejected: not a compact JWS with a JSON object header (``Check.SHAPE``).
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected(Check.SHAPE, f"token longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected(Check.SHAPE, "not a signed JWT (compact JWS with three parts)")
    try:
        header = json.loads(_b64decode(parts[0]))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise TokenRejected(Check.SHAPE, "unreadable JWT header") from exc
    if not isinstance(header, dict):
        raise TokenRejected(Check.SHAPE, "JWT header is not a JSON object")
    return header


def key_matches(key: Key, alg: str) -> bool:
    """Whether ``key`` may verify a signature made with ``alg`` (type, curve, use and alg agree)."""
    wanted = _KEY_TYPES.get(alg)
    if wanted is None:
        return False
    kty, crv = wanted
    if key.key_type != kty:
        return False
    if crv is not None and isinstance(key, (ECKey, OKPKey)) and key.curve_name != crv:
        return False
    if isinstance(key, OKPKey) and key.curve_name not in ("Ed25519", "Ed448"):
        return False
    if key.get("use") not in (None, "sig"):
        return False
    key_alg = key.get("alg")
    return key_alg is None or key_alg == alg


async def _verified_payload(
    token: str, *, algorithms: Sequence[str], find_keys: KeyFinder, types: frozenset[str]
) -> tuple[str, dict[str, Any]]:
    """Check shape, algorithm, key and signature; return the algorithm and the JSON claims."""
    header = jws_header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg in _NEVER or alg not in algorithms or alg not in _KEY_TYPES:
        raise TokenRejected(Check.ALGORITHM, f"signature algorithm {alg!r} is not allowed")
    if "crit" in header:
        raise TokenRejected(Check.SHAPE, "token has critical header parameters this gateway does not know")
    typ = header.get("typ")
    if typ is not None and str(typ).lower().removeprefix("application/") not in types:
        raise TokenRejected(Check.TYPE, f"token type {typ!r} is not one of {sorted(types)}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenRejected(Check.KEY, "kid is not a string")
    candidates = [key for key in await find_keys(kid, alg) if key_matches(key, alg)]
    if not candidates:
        raise TokenRejected(Check.KEY, f"no key of the provider matches kid {kid!r} and {alg}")
    for key in candidates:
        assert isinstance(key, (RSAKey, ECKey, OKPKey))
        try:
            verified = jws.deserialize_compact(token, key, algorithms=[alg])
        except JoseError:
            continue
        try:
            claims = json.loads(verified.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenRejected(Check.SHAPE, "token payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise TokenRejected(Check.SHAPE, "token payload is not a JSON object")
        return alg, claims
    raise TokenRejected(Check.SIGNATURE, "signature does not verify")


class _LogoutClaims(OidcClaims):  # type: ignore[misc]  # authlib has no type hints
    """Back-Channel Logout §2.4: authlib's ID token checks (aud, azp, exp when present) with its essentials."""

    ESSENTIAL_CLAIMS: ClassVar = ["iss", "aud", "iat", "jti"]


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _options(*, issuer: str, client_id: str, now: float, skew: float) -> dict[str, dict[str, Any]]:
    """The claim options both tokens share (joserfc compares exactly; an empty value is refused)."""
    return {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": client_id},
        # Present at all: then it must name this gateway (authlib requires it with several audiences).
        "azp": {"essential": False},
        # A token issued longer ago than a whole sign-in may take is not the answer to this one.
        "iat": {"essential": True, "validate": lambda _c, iat: now - iat <= MAX_TOKEN_AGE + skew},
    }


def _validate(claims: OidcClaims, *, now: float, skew: float) -> None:
    try:
        claims.validate(now=now, leeway=skew)
    except ClaimError as err:
        # The claim named (the first of several missing) is the check: Check's values are claim names.
        name = "iat" if err.claim == "auth_time" else err.claim.split(",")[0]
        check = Check(name) if name in Check._value2member_map_ else Check.SHAPE
        raise TokenRejected(check, f"{err.claim}: {err.description}") from err


def _plain(value: object) -> TypeGuard[str]:
    """A short string a reader sees as it is: ``amr`` and ``acr`` values go into the audit trail and the
    sinks (an attack run put U+2028 into both through them)."""
    return isinstance(value, str) and 0 < len(value) <= _MAX_AUTH_VALUE and hidden_character(value) is None


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value[:_MAX_AUTH_VALUES] if _plain(v))
    return ()


async def verify_id_token(
    token: str,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: Sequence[str],
    find_keys: KeyFinder,
    now: float,
    skew: float,
    access_token: str | None = None,
) -> IdToken:
    """Verify an ID token from the token endpoint (see the module docstring for the checks).

    Args:
        token: The compact JWS.
        issuer: The configured issuer (compared exactly).
        client_id: This gateway's client id at the provider.
        nonce: The nonce this browser's sign-in sent.
        algorithms: The provider's allowed signature algorithms.
        find_keys: The provider's keys for a kid and algorithm.
        now: Unix time.
        skew: Allowed clock difference in seconds.
        access_token: The access token issued with it, to check ``at_hash`` against when present.

    Raises:
        TokenRejected: a check failed; ``check`` names it.
    """
    alg, claims = await _verified_payload(token, algorithms=algorithms, find_keys=find_keys, types=_ID_TYPES)
    if "events" in claims:
        raise TokenRejected(Check.EVENTS, "a security event token (logout token) is not an ID token")
    options = _options(issuer=issuer, client_id=client_id, now=now, skew=skew)
    options.update(
        {
            "sub": {"essential": True, "validate": lambda _c, sub: len(sub) <= 255},
            # Compared in constant time here rather than by authlib's plain comparison.
            "nonce": {
                "essential": True,
                "validate": lambda _c, got: (
                    isinstance(got, str) and hmac.compare_digest(got.encode(), nonce.encode())
                ),
            },
            "auth_time": {"validate": lambda _c, at: _is_number(at) and at <= now + skew},
            "at_hash": {"essential": False, "validate": lambda _c, at_hash: isinstance(at_hash, str)},
        }
    )
    # authlib's at_hash helper knows the JWS name EdDSA; an Ed25519 signature hashes with SHA-512 too.
    header = {"alg": "EdDSA" if alg == "Ed25519" else alg}
    params = {"client_id": client_id, "access_token": access_token}
    _validate(CodeIDToken(claims, header, options, params), now=now, skew=skew)
    auth_time = claims.get("auth_time")
    acr = claims.get("acr")
    sid = claims.get("sid")
    return IdToken(
        claims=claims,
        subject=claims["sub"],
        issued_at=float(claims["iat"]),
        auth_time=float(auth_time) if _is_number(auth_time) else None,
        amr=_strings(claims.get("amr")),
        acr=acr if _plain(acr) else None,
        sid=sid if isinstance(sid, str) and sid else None,
    )


async def verify_logout_token(
    token: str,
    *,
    issuer: str,
    client_id: str,
    algorithms: Sequence[str],
    find_keys: KeyFinder,
    now: float,
    skew: float,
) -> LogoutToken:
    """Verify a back-channel logout token (Back-Channel Logout 1.0 §2.6). ``jti`` reuse is the caller's.

    Raises:
        TokenRejected: a check failed; ``check`` names it.
    """
    alg, claims = await _verified_payload(
        token, algorithms=algorithms, find_keys=find_keys, types=_LOGOUT_TYPES
    )
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise TokenRejected(Check.EVENTS, "events does not contain the back-channel logout event")
    if "nonce" in claims:
        raise TokenRejected(Check.NONCE, "a logout token must not contain a nonce")
    options = _options(issuer=issuer, client_id=client_id, now=now, skew=skew)
    options["jti"] = {"essential": True, "validate": lambda _c, jti: len(jti) <= 256}
    _validate(_LogoutClaims(claims, {"alg": alg}, options, {"client_id": client_id}), now=now, skew=skew)
    sub, sid = claims.get("sub"), claims.get("sid")
    subject = sub if isinstance(sub, str) and sub else None
    session = sid if isinstance(sid, str) and sid else None
    if subject is None and session is None:
        raise TokenRejected(Check.SUBJECT, "a logout token needs sub or sid")
    exp = claims.get("exp")
    return LogoutToken(
        jti=claims["jti"],
        issued_at=float(claims["iat"]),
        expires_at=float(exp) if _is_number(exp) else None,
        subject=subject,
        sid=session,
    )
