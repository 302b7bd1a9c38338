"""Opaque access tokens of an identity provider, asked about at its introspection endpoint (RFC 7662).

A token is this verifier's when it is neither the gateway's own (``gwt_``) nor shaped like a JWT, and
one provider has ``access_tokens.introspection`` (the settings allow only one: an opaque token does not
say whose it is, and asking several providers would show each one the others' tokens). The gateway
POSTs ``token`` to the ``introspection_endpoint`` of the provider's discovery document, authenticated
as the configured client with ``client_secret_basic`` (:meth:`ProviderClient.introspect`: the sign-in
code's HTTP, timeouts, 1 MiB limit, no redirects). The answer is accepted when:

* ``active`` is true (else ``inactive``: revoked, expired or never issued, alike);
* ``iss``, when present, is the provider's issuer exactly; ``aud`` contains ``access_tokens.audience``
  (required: a token meant for another resource server is not one for this gateway);
* ``exp`` and ``nbf``, when present, hold within ``clock_skew``; ``token_type``, when present, is
  ``Bearer`` (a DPoP- or otherwise sender-constrained token, ``cnf``, needs a proof this gateway does
  not check, and is refused); ``client_id`` is present.

**The cache.** Answers are kept per worker in a bounded LRU (``cache_size`` entries) keyed by the
token's SHA-256, never the token: an accepted token until the earliest of its ``exp`` and
``cache_ttl`` (60 s by default; a token revoked at the provider stops working within it), a refused
one for ``negative_ttl`` (5 s: a client retrying a bad token does not cost a provider call per
request). Concurrent first uses of one token share a single call. What an entry holds: the hash, the
expiry, and the few claims the principals come from (``client_id``, ``sub``, ``scope``, ``exp``), in
memory only. A provider that cannot answer is a 503 and nothing is cached (fail closed).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from gateway.clock import Clock
from gateway.identity.oidc.provider import ProviderClient
from gateway.machine.provider_accounts import LinkedAccounts
from gateway.machine.provider_audit import ProviderAudit
from gateway.machine.provider_jwt import looks_like_jose
from gateway.machine.provider_principals import refuse, scopes_of, verified_token
from gateway.machine.tokens import hash_token, meant_as_gateway_token
from gateway.machine.verifier import TokenRefused, VerifiedToken
from gateway.settings.schema import AccessTokens, IdentityProvider, TokenIntrospection

__all__ = ["AddressLimit", "Answer", "IntrospectionCache", "ProviderIntrospection", "check_answer"]


class AddressLimit(Protocol):
    """What a client address may cause (``gateway.threat.attempts.AddressAttempts``, a floor above)."""

    async def reserve(self, kind: Literal["introspection"], ip: str) -> None:
        """Count one; raise (429) past the address's limit."""

    async def release(self, kind: Literal["introspection"], ip: str) -> None:
        """Take one back."""


# The claims kept from an accepted answer: what the principals and the expiry are made of.
_KEPT: Final = ("client_id", "sub", "scope", "exp")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the provider said about one token: the kept claims, or the refusal's reason."""

    claims: Mapping[str, Any] | None
    reason: str = ""


class IntrospectionCache:
    """A bounded LRU of answers keyed by token hash, each with its own deadline (Unix time)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[Answer, float]] = OrderedDict()

    def get(self, key: str, now: float) -> Answer | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if now >= hit[1]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return hit[0]

    def put(self, key: str, answer: Answer, until: float) -> None:
        if self._size <= 0:
            return
        self._entries.pop(key, None)
        while len(self._entries) >= self._size:
            self._entries.popitem(last=False)
        self._entries[key] = (answer, until)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_answer(
    body: Mapping[str, Any], *, idp: IdentityProvider, tokens: AccessTokens, now: float
) -> Answer:
    """Judge an introspection answer (see the module docstring); never raises."""
    if body.get("active") is not True:
        return Answer(None, "inactive")
    if "iss" in body and body["iss"] != idp.issuer:
        return Answer(None, "issuer")
    aud = body.get("aud")
    if not (aud == tokens.audience or (isinstance(aud, list) and tokens.audience in aud)):
        return Answer(None, "audience")
    exp, nbf = _number(body.get("exp")), _number(body.get("nbf"))
    if ("exp" in body and exp is None) or ("nbf" in body and nbf is None):
        return Answer(None, "claims")
    if exp is not None and exp <= now - tokens.clock_skew:
        return Answer(None, "expired")
    if nbf is not None and nbf > now + tokens.clock_skew:
        return Answer(None, "not-yet-valid")
    token_type = body.get("token_type")
    if (token_type is not None and str(token_type).lower() != "bearer") or "cnf" in body:
        return Answer(None, "claims")
    if not isinstance(body.get("client_id"), str):
        return Answer(None, "claims")
    try:
        scopes_of(body)
    except TokenRefused as refused:
        return Answer(None, refused.reason)
    return Answer({k: body[k] for k in _KEPT if k in body})


class ProviderIntrospection:
    """The :class:`~gateway.machine.verifier.TokenVerifier` of one provider's opaque access tokens."""

    def __init__(
        self,
        providers: Callable[[], Sequence[IdentityProvider]],
        clients: Callable[[IdentityProvider], ProviderClient],
        accounts: LinkedAccounts,
        audit: ProviderAudit,
        clock: Clock,
        asking: AddressLimit | None = None,
    ) -> None:
        """Wire the verifier (arguments as for :class:`~gateway.machine.provider_jwt.ProviderJwtTokens`);
        ``asking`` counts the provider calls a client address causes (the threat floor's limit)."""
        self._asking = asking
        self._providers = providers
        self._clients = clients
        self._accounts = accounts
        self._audit = audit
        self._clock = clock
        self._cache: IntrospectionCache | None = None
        self._cache_for: tuple[str, str, AccessTokens] | None = None
        self._inflight: dict[str, asyncio.Future[Answer]] = {}
        self.calls = 0

    def _introspecting(self) -> tuple[IdentityProvider, AccessTokens, TokenIntrospection] | None:
        for idp in self._providers():
            tokens = idp.access_tokens
            if tokens is not None and tokens.introspection is not None:
                return idp, tokens, tokens.introspection
        return None

    def recognises(self, token: str) -> bool:
        return (
            self._introspecting() is not None
            and not meant_as_gateway_token(token)
            and not looks_like_jose(token)
        )

    def cache(self, idp: IdentityProvider, tokens: AccessTokens) -> IntrospectionCache:
        """The cache for this provider and these settings: a reload that changes either (another
        provider introspects now, with an identical block) starts an empty one, so no answer of one
        provider is read under another's name."""
        owner = (idp.name, idp.issuer, tokens)
        if self._cache is None or self._cache_for != owner:
            self._cache, self._cache_for = IntrospectionCache(tokens.cache_size), owner
        return self._cache

    async def verify(self, token: str, *, route: str, ip: str) -> VerifiedToken:
        """Who the token speaks for, from the provider's (cached) answer.

        Raises:
            TokenRefused: the provider says inactive, or its answer fails a check; or no provider introspects.
            ProviderUnavailable: the provider cannot answer (503; nothing cached).
            StoreUnavailable: a person's account cannot be looked up (503).
        """
        found = self._introspecting()
        if found is None:
            raise refuse("no-introspection")
        idp, tokens, introspection = found
        try:
            verified = await self._verify(token, idp, tokens, introspection, ip)
        except TokenRefused as refused:
            self._audit.refused(idp.name, refused.reason, route, ip)
            raise
        self._audit.used(verified, route, ip)
        return verified

    async def _verify(
        self,
        token: str,
        idp: IdentityProvider,
        tokens: AccessTokens,
        introspection: TokenIntrospection,
        ip: str,
    ) -> VerifiedToken:
        key = hash_token(token)
        cache = self.cache(idp, tokens)
        answer = cache.get(key, self._clock.time())
        if answer is None:
            asking = self._asking
            if asking is not None:
                # Counted before the call (a burst cannot all pass), taken back for an active token
                # and for a provider that did not answer (a re-attack run: an outage and a client's
                # retries locked its address out after the provider was back).
                await asking.reserve("introspection", ip)
            try:
                answer = await self._ask(token, key, idp, tokens, introspection, cache)
            finally:
                if asking is not None and (answer is None or answer.claims is not None):
                    await asking.release("introspection", ip)
        if answer.claims is None:
            raise refuse(answer.reason)
        claims = answer.claims
        now = self._clock.time()
        exp = _number(claims.get("exp"))
        return verified_token(
            provider=idp.name,
            claims=claims,
            person=await self._accounts.person(idp.name, claims, tokens),
            token_id="sha256:" + key[:16],
            expires_at=exp if exp is not None else now + tokens.cache_ttl,
        )

    async def _ask(
        self,
        token: str,
        key: str,
        idp: IdentityProvider,
        tokens: AccessTokens,
        introspection: TokenIntrospection,
        cache: IntrospectionCache,
    ) -> Answer:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            self.calls += 1
            body = await self._clients(idp).introspect(
                token,
                client_id=introspection.client_id or idp.client_id,
                client_secret=introspection.client_secret or idp.client_secret or "",
            )
            now = self._clock.time()
            answer = check_answer(body, idp=idp, tokens=tokens, now=now)
            if answer.claims is None:
                until = now + tokens.negative_ttl
            else:
                exp = _number(answer.claims.get("exp"))
                until = min(now + tokens.cache_ttl, exp if exp is not None else now + tokens.cache_ttl)
            cache.put(key, answer, until)
            future.set_result(answer)
            return answer
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            # Retrieved here so a failure nobody else waited for is not reported as "never retrieved".
            future.exception()
            raise
        finally:
            del self._inflight[key]
