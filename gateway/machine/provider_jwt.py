"""JWT access tokens of identity providers (RFC 9068), verified against the provider's own keys.

A token is this verifier's when it looks like a compact JWS (three dot-separated parts whose first is
a JSON object header with an ``alg``) and at least one configured provider has ``access_tokens``.
Checked in this order; the first failure is the refusal's reason (:data:`.provider_principals.REFUSALS`):

1. **Shape**: at most 16 KiB, a JSON header, no ``crit`` (joserfc's parser, via
   :func:`gateway.identity.oidc.tokens.jws_header`).
2. **Issuer**: the unverified payload's ``iss`` must be exactly a configured provider's issuer (only
   to pick the provider and its keys; the signature is checked against that provider's keys next, so
   naming a trusted issuer gains nothing). Another issuer: ``unknown-issuer``.
3. **Algorithm** from the provider's ``access_tokens.algorithms``, read *before* any key is touched;
   ``none`` and every HMAC algorithm are refused whatever the configuration says (an HS256 token
   "signed" with the provider's public key is the key-confusion attack).
4. **Type** ``at+jwt`` (RFC 9068 §4: an ID token or any other JWT of the provider is not an access
   token); plain ``JWT`` or no ``typ`` only with ``allow_jwt_typ``.
5. **Key** from the provider's JWKS by ``kid``, type and curve (:func:`~gateway.identity.oidc.tokens.key_matches`).
   The keys come from the sign-in code's :class:`~gateway.identity.oidc.provider.ProviderClient`, one per
   worker and provider: one discovery and JWKS cache, and an unknown ``kid`` re-fetches the JWKS at most
   once per ``jwks_cooldown`` (made-up kids cannot make the gateway hammer the provider).
6. **Signature** (joserfc, restricted to that one algorithm).
7. **Claims** (authlib's RFC 9068 ``JWTAccessTokenClaims`` on joserfc's registry): ``iss`` exact,
   ``aud`` contains ``access_tokens.audience``, ``exp`` (required), ``nbf`` and ``iat`` within
   ``access_tokens.clock_skew``, ``client_id`` present.
8. **Who**: :func:`.provider_principals.verified_token` (a client's own token, or a linked person's).

A JWT is verified on every request (one signature check, no I/O once the keys are cached): it cannot
be revoked at the provider anyway (RFC 9068 tokens live until ``exp``), so there is nothing to cache.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from authlib.oauth2.rfc9068.claims import JWTAccessTokenClaims
from joserfc import jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.clock import Clock
from gateway.identity.oidc.provider import ProviderClient
from gateway.identity.oidc.tokens import TokenRejected, jws_header, key_matches
from gateway.machine.provider_accounts import LinkedAccounts
from gateway.machine.provider_audit import ProviderAudit
from gateway.machine.provider_principals import refuse, verified_token
from gateway.machine.tokens import hash_token
from gateway.machine.verifier import TokenRefused, VerifiedToken
from gateway.settings.schema import AccessTokens, IdentityProvider

__all__ = ["ProviderJwtTokens", "looks_like_jose", "looks_like_jwt"]

# Whatever a configuration says: "none" is no signature, and an HMAC key would be a public key read
# as a shared secret (the key-confusion attack).
_NEVER: Final = frozenset({"none", "HS256", "HS384", "HS512"})
_AT_JWT: Final = frozenset({"at+jwt", "application/at+jwt"})
_PLAIN_JWT: Final = frozenset({"jwt", "application/jwt"})
_CLAIM_REASONS: Final[Mapping[str, str]] = {
    "iss": "issuer",
    "aud": "audience",
    "exp": "expired",
    "nbf": "not-yet-valid",
    "typ": "type",
}

Providers = Callable[[], Sequence[IdentityProvider]]
Clients = Callable[[IdentityProvider], ProviderClient]


def _segment(part: str) -> Any:
    if not part or any(c in part for c in "=+/"):
        raise ValueError("not base64url without padding")
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts whose first decodes to a JSON object with ``alg`` (no verification)."""
    return token.count(".") == 2 and looks_like_jose(token)


def looks_like_jose(token: str) -> bool:
    """Dot-separated parts, however many, the first a JOSE header (a JSON object with ``alg``): a JWT,
    a JWE, or one bent out of shape (``<jwt>..``). Never sent to introspection: a JWT is never sent to
    the provider, and a bent one drew a provider call per request (an attack run)."""
    head, dot, _ = token.partition(".")
    if not dot:
        return False
    try:
        header = _segment(head)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


class ProviderJwtTokens:
    """The :class:`~gateway.machine.verifier.TokenVerifier` of providers' RFC 9068 JWT access tokens."""

    def __init__(
        self,
        providers: Providers,
        clients: Clients,
        accounts: LinkedAccounts,
        audit: ProviderAudit,
        clock: Clock,
    ) -> None:
        """Wire the verifier.

        Args:
            providers: The configured identity providers, read on every use (a reload applies).
            clients: The worker's :class:`ProviderClient` of a provider (the sign-in code's, shared).
            accounts: ``(provider, sub)`` → linked account, for a person's token.
            audit: Where uses and refusals are recorded (rate-limited).
            clock: Unix time for ``exp``/``nbf``/``iat``.
        """
        self._providers = providers
        self._clients = clients
        self._accounts = accounts
        self._audit = audit
        self._clock = clock

    def recognises(self, token: str) -> bool:
        return any(idp.access_tokens is not None for idp in self._providers()) and looks_like_jwt(token)

    async def verify(self, token: str, *, route: str, ip: str) -> VerifiedToken:
        """Who the token speaks for (see the module docstring for the checks, in order).

        Raises:
            TokenRefused: any check failed; ``reason`` names it.
            ProviderUnavailable: the provider's keys cannot be had and none are cached (503).
            StoreUnavailable: a person's account cannot be looked up (503).
        """
        provider = "unknown"
        try:
            idp, tokens = self._provider_of(token)
            provider = idp.name
            verified = await self._verify(token, idp, tokens)
        except TokenRefused as refused:
            self._audit.refused(provider, refused.reason, route, ip)
            raise
        self._audit.used(verified, route, ip)
        return verified

    def _provider_of(self, token: str) -> tuple[IdentityProvider, AccessTokens]:
        try:
            payload = _segment(token.split(".")[1])
        except (ValueError, binascii.Error, UnicodeDecodeError, IndexError):
            raise refuse("malformed") from None
        issuer = payload.get("iss") if isinstance(payload, dict) else None
        for idp in self._providers():
            if idp.access_tokens is not None and isinstance(issuer, str) and issuer == idp.issuer:
                return idp, idp.access_tokens
        raise refuse("unknown-issuer")

    async def _verify(self, token: str, idp: IdentityProvider, tokens: AccessTokens) -> VerifiedToken:
        try:
            header = jws_header(token)
        except TokenRejected:
            raise refuse("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg in _NEVER or alg not in tokens.algorithms:
            raise refuse("algorithm")
        if "crit" in header:
            raise refuse("malformed")
        typ = header.get("typ")
        types = _AT_JWT | _PLAIN_JWT if tokens.allow_jwt_typ else _AT_JWT
        if (typ is None and not tokens.allow_jwt_typ) or (typ is not None and str(typ).lower() not in types):
            raise refuse("type")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise refuse("key")
        keys = [key for key in await self._clients(idp).keys(kid, alg) if key_matches(key, alg)]
        if not keys:
            raise refuse("key")
        claims = _signed_claims(token, keys, alg)
        _check_claims(claims, header, idp, tokens, now=self._clock.time())
        return verified_token(
            provider=idp.name,
            claims=claims,
            person=await self._accounts.person(idp.name, claims, tokens),
            token_id="sha256:" + hash_token(token)[:16],
            expires_at=float(claims["exp"]),
        )


def _signed_claims(token: str, keys: Sequence[Any], alg: str) -> dict[str, Any]:
    for key in keys:
        assert isinstance(key, (RSAKey, ECKey, OKPKey))
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except JoseError:
            continue
        if not isinstance(decoded.claims, dict):
            raise refuse("malformed")
        return dict(decoded.claims)
    raise refuse("signature")


def _check_claims(
    claims: dict[str, Any], header: dict[str, Any], idp: IdentityProvider, tokens: AccessTokens, *, now: float
) -> None:
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": idp.issuer},
        "aud": {"essential": True, "value": tokens.audience},
        "exp": {"essential": True},
        "iat": {"essential": True},
        "client_id": {"essential": True},
    }
    # The type was checked above (at+jwt, or JWT when allowed); authlib's own check knows only at+jwt.
    checked = JWTAccessTokenClaims(claims, {"alg": header["alg"]}, options)
    try:
        checked.validate(now=int(now), leeway=int(tokens.clock_skew))
    except ExpiredTokenError:
        raise refuse("expired") from None
    except MissingClaimError:
        raise refuse("claims") from None
    except ClaimError as err:
        raise refuse(_CLAIM_REASONS.get(err.claim.split(",")[0], "claims")) from None
