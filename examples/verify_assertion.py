"""Verify the gateway's ``X-Gateway-Assertion`` in an upstream app (Python, joserfc).

Copy this file into your app. It needs one package: ``pip install joserfc`` (the JOSE library of the
authlib project, which replaces the deprecated ``authlib.jose``).

    verifier = AssertionVerifier("https://auth.example.com", audience="wiki")
    identity = verifier.verify(request.headers["X-Gateway-Assertion"])   # raises InvalidAssertion
    identity["sub"], identity["email"], identity["roles"], identity["amr"]

What it checks, and why each check matters:

* the signature, with **ES256 only** and only with a key from the gateway's JWKS: a token saying
  ``"alg": "none"`` or ``"HS256"`` (signed with the public key as an HMAC secret) is refused;
* ``iss`` is the gateway's URL and ``aud`` is this app's route name: a token the gateway made for
  another app cannot be replayed here;
* ``exp`` (and ``iat``) with a small leeway for clock skew: a captured token dies within minutes;
* ``sub`` is present and not empty.

The JWKS is cached for the ``max-age`` the gateway answers it with (60 s), at most ``jwks_max_age``
seconds; a token whose ``kid`` is unknown makes it refetch (at most every ``refetch_interval`` seconds,
so junk tokens cannot make you hammer the gateway). The gateway publishes a new key ``publish_ahead``
(default 10 min) before it signs with it, so a rotation never causes a failure. When a signing key
leaks, ``gateway keys rotate --compromised`` deletes it from the JWKS at once: a token forged with it is
accepted here only until the cache is fetched again, so keep the cache short (an attack run forged
tokens for 5 minutes against an earlier version of this file, which cached for 300 s).

Run it from the command line to check a token by hand::

    python verify_assertion.py https://auth.example.com wiki "$TOKEN"
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from joserfc.jwt import JWTClaimsRegistry

__all__ = ["AssertionVerifier", "InvalidAssertion"]


class InvalidAssertion(Exception):
    """The token is not a valid assertion for this app: answer 401, never trust its claims."""


class AssertionVerifier:
    """Verifies assertions from one gateway for one route. Thread-safe; create one per process."""

    def __init__(
        self,
        gateway_url: str,
        *,
        audience: str,
        jwks_max_age: float = 60.0,
        refetch_interval: float = 30.0,
        leeway: int = 30,
        timeout: float = 5.0,
    ) -> None:
        self.issuer = gateway_url.rstrip("/")
        self.audience = audience
        self.jwks_url = f"{self.issuer}/.gateway/jwks.json"
        self.jwks_max_age = jwks_max_age
        self.refetch_interval = refetch_interval
        self.timeout = timeout
        self._claims = JWTClaimsRegistry(
            leeway=leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        )
        self._lock = threading.Lock()
        self._keys: dict[str, ECKey] = {}
        self._fetched_at = float("-inf")
        # The gateway's own Cache-Control max-age when shorter than jwks_max_age.
        self._max_age = jwks_max_age

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``.

        Raises:
            InvalidAssertion: Bad signature, wrong algorithm, unknown key, wrong issuer or audience,
                expired, or malformed.
        """
        if not token:
            raise InvalidAssertion("no assertion")
        try:
            decoded = jwt.decode(token, self._key_for, algorithms=["ES256"])
            if decoded.header.get("alg") != "ES256":  # belt and braces: never any other algorithm
                raise InvalidAssertion("not an ES256 token")
            self._claims.validate(decoded.claims)
        except JoseError as exc:
            raise InvalidAssertion(f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # malformed base64 or JSON
            raise InvalidAssertion(f"malformed token: {exc}") from exc
        claims: dict[str, Any] = dict(decoded.claims)
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidAssertion("empty subject")
        return claims

    def _key_for(self, token: Any) -> ECKey:
        kid = token.headers().get("kid")
        if not isinstance(kid, str):
            raise InvalidAssertion("the token names no key")
        with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at > self._max_age
            unknown = kid not in self._keys and now - self._fetched_at > self.refetch_interval
            if stale or unknown:
                self._keys = self._fetch()
                self._fetched_at = now
            key = self._keys.get(kid)
        if key is None:
            raise InvalidAssertion(f"unknown key id {kid!r}")
        return key

    def _fetch(self) -> dict[str, ECKey]:
        with urllib.request.urlopen(self.jwks_url, timeout=self.timeout) as resp:  # noqa: S310
            document = json.load(resp)
            self._max_age = min(self.jwks_max_age, _max_age(resp.headers.get("Cache-Control", "")))
        keys: dict[str, ECKey] = {}
        for key in KeySet.import_key_set(document).keys:
            # Only P-256 signing keys for ES256; anything else in the set is ignored.
            if isinstance(key, ECKey) and key.get("crv") == "P-256" and key.kid:
                keys[key.kid] = key
        return keys


def _max_age(cache_control: str) -> float:
    """The ``max-age`` of a Cache-Control header in seconds (infinity when it has none)."""
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        if name.lower() == "max-age" and value.strip().isdigit():
            return float(value.strip())
    return float("inf")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: verify_assertion.py GATEWAY_URL ROUTE_NAME TOKEN", file=sys.stderr)
        return 2
    gateway_url, route, token = argv
    try:
        claims = AssertionVerifier(gateway_url, audience=route).verify(token)
    except InvalidAssertion as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(claims, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
