"""Talking to one OpenID provider: discovery, keys, the token endpoint and userinfo.

Errors (converted at this boundary; nothing from aiohttp escapes)::

    GatewayError
    ├── ProviderUnavailable (ServiceUnavailable, 503 idp-unavailable)  down, slow, 5xx, or unusable answer
    └── ProviderRefused     (401 idp-refused)       the token endpoint said no (invalid_grant: a used code)

Discovery is cached for an hour; if the provider cannot be reached, the last good document keeps
serving for a day, so a short outage does not stop sign-ins whose provider answered recently. The
document's ``issuer`` must equal the configured one exactly (OIDC Discovery §4.3: otherwise one
provider could speak for another), and its endpoints must be https (http only on loopback, as the
config allows for the issuer).

Keys (JWKS) are cached for ``jwks_max_age`` and re-fetched sooner when a token names a key id the
cache does not know, at most once per ``jwks_cooldown``: a provider rotating its keys is followed at
once, a stream of tokens with made-up key ids cannot turn the gateway into a request amplifier, and a
key the provider removed stops verifying within ``jwks_max_age`` (an attack run kept using a removed
key's id, which never asked for a fetch, until the gateway restarted). When the fetch of stale keys
fails, the cached ones serve for up to a day after the last fetch that worked, as discovery does.

Every request has the provider's ``timeout`` and reads at most 1 MiB. The token request's form and
client authentication are authlib's (``prepare_token_request``, ``ClientAuth``); the HTTP stays here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oidc.discovery import get_well_known_url
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from gateway.clock import Clock
from gateway.errors import GatewayError, ServiceUnavailable
from gateway.settings.schema import IdentityProvider

__all__ = [
    "ProviderClient",
    "ProviderMetadata",
    "ProviderRefused",
    "ProviderUnavailable",
    "TokenResponse",
]

_log = logging.getLogger("gateway.oidc")

METADATA_TTL: Final = 3600.0
METADATA_STALE_LIMIT: Final = 86400.0
MAX_RESPONSE_BYTES: Final = 1024 * 1024
_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})
# Errors of a token introspection request that are about the token sent, not the gateway's client
# (invalid_client, unauthorized_client and the rest stay an outage: nothing can be introspected).
_ABOUT_THE_TOKEN: Final = frozenset({"invalid_request", "invalid_token", "unsupported_token_type"})
_KEY_CLASSES: Final[Mapping[str, type[RSAKey] | type[ECKey] | type[OKPKey]]] = {
    "RSA": RSAKey,
    "EC": ECKey,
    "OKP": OKPKey,
}


class ProviderUnavailable(ServiceUnavailable):
    """The provider could not be reached, was too slow, or answered with something unusable."""

    reason = "idp-unavailable"
    title = "The identity provider is not answering"


class ProviderRefused(GatewayError):
    """The token endpoint refused the code (used twice, expired, wrong PKCE verifier…)."""

    status = 401
    reason = "idp-refused"
    title = "The identity provider did not accept this sign-in"

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(detail or f"the token endpoint answered {error}")
        self.error = error


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The parts of the discovery document the gateway uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    fetched_at: float
    # RFC 7662, for opaque access tokens on bearer routes (gateway/machine/provider_introspection.py).
    introspection_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A successful answer of the token endpoint."""

    id_token: str
    access_token: str | None


def _endpoint_ok(url: object, issuer: str) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname:
        return True
    # http only where the issuer itself is a loopback http URL (development and tests).
    return (
        parts.scheme == "http"
        and parts.hostname in _LOOPBACK
        and urlsplit(issuer).scheme == "http"
        and urlsplit(issuer).hostname in _LOOPBACK
    )


def _authenticated(form: str, method: str, client_id: str, secret: str) -> tuple[str, dict[str, str]]:
    """A form for the token or introspection endpoint with the client's authentication (``method``:
    client_secret_basic, client_secret_post or none), and the headers to send it with."""
    if method == "client_secret_basic":
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic (authlib's encoder does not).
        client_id, secret = quote(client_id, safe=""), quote(secret, safe="")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    _uri, headers, body = ClientAuth(client_id, secret, method).prepare("POST", "", headers, form)
    return body, headers


def _import_key(data: Mapping[str, Any]) -> Key | None:
    """One JWK, or None if it is not a usable public signature key (skipped, never fatal)."""
    cls = _KEY_CLASSES.get(str(data.get("kty")))
    if cls is None:
        return None
    public = {k: v for k, v in data.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
    try:
        with warnings.catch_warnings():
            # A weak key (RSA below 2048 bits) is refused rather than warned about.
            warnings.simplefilter("error", SecurityWarning)
            return cls.import_key(public)
    except (JoseError, SecurityWarning, ValueError, TypeError):
        _log.warning("ignoring an unusable key (kid %r) in the provider's JWKS", data.get("kid"))
        return None


class ProviderClient:
    """HTTP conversations with one configured provider; one instance per worker and provider config."""

    def __init__(self, idp: IdentityProvider, clock: Clock) -> None:
        """Create a client.

        Args:
            idp: The provider's settings.
            clock: Unix time for the caches.
        """
        self.idp = idp
        self._clock = clock
        self._metadata: ProviderMetadata | None = None
        self._metadata_lock = asyncio.Lock()
        self._keys: list[Key] = []
        self._keys_fetched_at: float | None = None  # the last attempt (the cooldown counts from it)
        self._keys_loaded_at: float | None = None  # the last fetch that worked
        self._keys_lock = asyncio.Lock()
        self.jwks_fetches = 0

    # -- HTTP --------------------------------------------------------------------------------------

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=float(self.idp.timeout))

    async def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        data: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one request; return (status, parsed JSON body or None). Transport failures → 503."""
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout()) as http,
                http.request(
                    method,
                    url,
                    data=data,
                    headers={"Accept": "application/json", **(headers or {})},
                    allow_redirects=False,
                ) as resp,
            ):
                body = await self._read(resp, what)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ProviderUnavailable(f"{self.idp.name}: {what} failed: {type(exc).__name__} {exc}") from exc
        try:
            parsed = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            parsed = None
        return status, parsed

    async def _read(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        length = resp.content_length
        if length is not None and length > MAX_RESPONSE_BYTES:
            raise ProviderUnavailable(f"{self.idp.name}: {what} answer is larger than 1 MiB")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise ProviderUnavailable(f"{self.idp.name}: {what} answer is larger than 1 MiB")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _get_json(self, url: str, *, what: str) -> dict[str, Any]:
        status, body = await self._request("GET", url, what=what)
        if status != 200 or not isinstance(body, dict):
            raise ProviderUnavailable(f"{self.idp.name}: {what} answered HTTP {status} without a JSON object")
        return body

    # -- discovery ---------------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """The discovery document (cached; the last good one serves through a short outage).

        Raises:
            ProviderUnavailable: not cached and the provider cannot be reached, or its document is invalid.
        """
        now = self._clock.time()
        cached = self._metadata
        if cached is not None and 0 <= now - cached.fetched_at < METADATA_TTL:
            return cached
        async with self._metadata_lock:
            cached = self._metadata
            if cached is not None and 0 <= now - cached.fetched_at < METADATA_TTL:
                return cached
            try:
                fresh = await self._discover()
            except ProviderUnavailable:
                if cached is not None and now - cached.fetched_at < METADATA_STALE_LIMIT:
                    _log.warning("%s: discovery failed; using the document from earlier", self.idp.name)
                    return cached
                raise
            self._metadata = fresh
            return fresh

    async def _discover(self) -> ProviderMetadata:
        issuer = self.idp.issuer
        doc = await self._get_json(get_well_known_url(issuer, external=True), what="discovery")
        if doc.get("issuer") != issuer:
            # OIDC Discovery §4.3: the document must be the configured issuer's own.
            raise ProviderUnavailable(
                f"{self.idp.name}: discovery names issuer {doc.get('issuer')!r}, not the configured {issuer!r}"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not _endpoint_ok(doc.get(key), issuer):
                raise ProviderUnavailable(f"{self.idp.name}: discovery has no usable {key}")
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise ProviderUnavailable(f"{self.idp.name}: the provider does not support PKCE with S256")
        optional = {
            key: doc.get(key) if _endpoint_ok(doc.get(key), issuer) else None
            for key in ("userinfo_endpoint", "end_session_endpoint", "introspection_endpoint")
        }
        return ProviderMetadata(
            issuer=issuer,
            authorization_endpoint=doc["authorization_endpoint"],
            token_endpoint=doc["token_endpoint"],
            jwks_uri=doc["jwks_uri"],
            userinfo_endpoint=optional["userinfo_endpoint"],
            end_session_endpoint=optional["end_session_endpoint"],
            fetched_at=self._clock.time(),
            introspection_endpoint=optional["introspection_endpoint"],
        )

    # -- keys --------------------------------------------------------------------------------------

    async def keys(self, kid: str | None, alg: str) -> Sequence[Key]:
        """Keys that may have signed a token with this ``kid`` (all keys when it has none).

        An unknown kid re-fetches the JWKS unless the last fetch is more recent than ``jwks_cooldown``.

        Raises:
            ProviderUnavailable: the keys cannot be fetched and none are cached.
        """
        found = self._select(kid)
        if found and self._fresh():
            return found
        async with self._keys_lock:
            found = self._select(kid)
            if found and self._fresh():
                return found
            last = self._keys_fetched_at
            now = self._clock.time()
            if last is not None and 0 <= now - last < self.idp.jwks_cooldown:
                return found
            try:
                await self._fetch_keys()
            except ProviderUnavailable as exc:
                loaded = self._keys_loaded_at
                if not found or loaded is None or not 0 <= now - loaded < METADATA_STALE_LIMIT:
                    raise
                _log.warning(
                    "%s: could not refresh the signing keys, using the cached ones: %s", self.idp.name, exc
                )
                return found
            return self._select(kid)

    def _fresh(self) -> bool:
        loaded = self._keys_loaded_at
        return loaded is not None and 0 <= self._clock.time() - loaded < self.idp.jwks_max_age

    def _select(self, kid: str | None) -> list[Key]:
        if kid is None:
            return list(self._keys)
        return [key for key in self._keys if key.kid == kid]

    async def _fetch_keys(self) -> None:
        metadata = await self.metadata()
        self.jwks_fetches += 1
        self._keys_fetched_at = self._clock.time()
        doc = await self._get_json(metadata.jwks_uri, what="JWKS")
        entries = doc.get("keys")
        if not isinstance(entries, list):
            raise ProviderUnavailable(f"{self.idp.name}: the JWKS has no keys list")
        keys = [
            key for entry in entries if isinstance(entry, dict) and (key := _import_key(entry)) is not None
        ]
        self._keys = keys
        self._keys_loaded_at = self._clock.time()

    # -- token endpoint and userinfo -----------------------------------------------------------------

    async def exchange_code(self, *, code: str, verifier: str, redirect_uri: str) -> TokenResponse:
        """Redeem an authorization code (with its PKCE verifier) for tokens.

        Raises:
            ProviderRefused: the provider answered with an OAuth error (the code is used, expired…).
            ProviderUnavailable: no usable answer.
        """
        metadata = await self.metadata()
        form, headers = _authenticated(
            prepare_token_request(
                "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=verifier
            ),
            self.idp.auth_method,
            self.idp.client_id,
            self.idp.client_secret or "",
        )
        status, body = await self._request(
            "POST", metadata.token_endpoint, what="token request", data=form, headers=headers
        )
        if status != 200:
            if isinstance(body, dict) and isinstance(body.get("error"), str) and 400 <= status < 500:
                raise ProviderRefused(body["error"][:64])
            raise ProviderUnavailable(f"{self.idp.name}: the token endpoint answered HTTP {status}")
        if not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            raise ProviderUnavailable(f"{self.idp.name}: the token response has no id_token")
        access = body.get("access_token")
        return TokenResponse(
            id_token=body["id_token"], access_token=access if isinstance(access, str) else None
        )

    async def introspect(self, token: str, *, client_id: str, client_secret: str) -> dict[str, Any]:
        """The provider's answer about an access token (RFC 7662), authenticated by client_secret_basic.

        The token is sent only to the discovered ``introspection_endpoint`` (https, or loopback http).

        Raises:
            ProviderUnavailable: no introspection endpoint, or no usable answer (the caller fails closed).
        """
        metadata = await self.metadata()
        if metadata.introspection_endpoint is None:
            raise ProviderUnavailable(f"{self.idp.name}: the provider announces no introspection_endpoint")
        # RFC 7662 §2.1: the gateway authenticates as a client, with client_secret_basic.
        form, headers = _authenticated(
            urlencode({"token": token, "token_type_hint": "access_token"}),
            "client_secret_basic",
            client_id,
            client_secret,
        )
        status, body = await self._request(
            "POST", metadata.introspection_endpoint, what="introspection", data=form, headers=headers
        )
        if status == 400 and isinstance(body, dict) and body.get("error") in _ABOUT_THE_TOKEN:
            # The provider refused this token, not the gateway (RFC 6749 §5.2 errors of the request):
            # an answer about the token, cached and counted like "inactive". Read as an outage, a
            # token bent to draw one (an attack run: a JWT with ".." appended, which oidc-provider
            # will not introspect) cost a provider call per request, never cached nor counted.
            return {"active": False}
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise ProviderUnavailable(f"{self.idp.name}: introspection answered HTTP {status} without active")
        return body

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """Claims from the userinfo endpoint (plain JSON; signed userinfo is not supported).

        Raises:
            ProviderUnavailable: no userinfo endpoint, or no usable answer.
        """
        metadata = await self.metadata()
        if metadata.userinfo_endpoint is None:
            raise ProviderUnavailable(f"{self.idp.name}: userinfo is configured but the provider has none")
        status, body = await self._request(
            "GET",
            metadata.userinfo_endpoint,
            what="userinfo",
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if status != 200 or not isinstance(body, dict):
            raise ProviderUnavailable(
                f"{self.idp.name}: userinfo answered HTTP {status} without a JSON object"
            )
        return body
