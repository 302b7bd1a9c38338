"""One interface for everything that can verify a bearer token, whoever issued it.

The bearer stage (:mod:`gateway.pipeline.bearer`) asks a :class:`Verifiers` chain; the first verifier
that recognises the token's shape decides it. In order (``gateway.root.start``): the gateway's own API
tokens (:class:`gateway.machine.gateway_tokens.GatewayTokens`, the ``gwt_`` prefix), an identity
provider's RFC 9068 JWT access tokens (:class:`gateway.machine.provider_jwt.ProviderJwtTokens`, a
compact JWS naming a configured issuer), and its opaque tokens by RFC 7662 introspection
(:class:`gateway.machine.provider_introspection.ProviderIntrospection`). Each returns a
:class:`VerifiedToken` whose ``principals`` are what the policy sees and whose ``routes`` (or
``None``) say where the token may be used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["TokenOutOfScope", "TokenRefused", "TokenVerifier", "VerifiedToken", "Verifiers"]


class TokenRefused(Exception):
    """The token does not authenticate anyone: ``reason`` for the audit trail, ``description`` for the client.

    ``description`` goes into ``WWW-Authenticate`` (RFC 6750 §3): plain ASCII, no secret, no detail
    that would help guessing (an unknown token and a revoked one read alike to the client).
    """

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


class TokenOutOfScope(TokenRefused):
    """A valid token used on a route it is not scoped to (403 ``insufficient_scope``)."""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """Who a verified token speaks for, and where it may be used.

    Attributes:
        subject: The client's name (``X-Gateway-User``, the assertion's ``sub``).
        principals: What the policy sees: ``client:<subject>`` and the client's roles.
        roles: The roles the token's client holds itself (the policy may add more through ``g`` rules).
        routes: The route names the token is scoped to; ``None`` when the issuer does not scope by route.
        expires_at: Unix time the token stops working.
        token_id: A public id for logs and the audit trail (never the token).
        issuer: Which verifier decided it (``gateway`` for the gateway's own tokens).
        client_id: The OAuth client the token was issued to; empty when that is ``subject`` itself.
        person: ``subject`` is a person's account (an identity provider's user token for a linked
            account), not a machine client: the log and the assertion name the person.
        optout: For a person, the purposes not to process for them (the assertion's ``optout``).
    """

    subject: str
    principals: frozenset[str]
    roles: tuple[str, ...]
    routes: frozenset[str] | None
    expires_at: float
    token_id: str
    issuer: str
    client_id: str = ""
    person: bool = False
    optout: tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        """Who the request is in the access log, the audit trail and to threat detection.

        ``client:<name>`` for a machine client: never mistaken for a person of the same name (usernames
        cannot hold ``:``), whose sessions a rule might act on; the person's name for a linked person's
        provider token.
        """
        return self.subject if self.person else f"client:{self.subject}"

    def allows_route(self, route: str) -> bool:
        """Whether the token's scope includes ``route``."""
        return self.routes is None or route in self.routes


class TokenVerifier(Protocol):
    """Verifies the bearer tokens of one issuer."""

    def recognises(self, token: str) -> bool:
        """Whether this verifier decides tokens of this shape (cheap: no I/O, no hashing)."""
        ...

    async def verify(self, token: str, *, route: str, ip: str) -> VerifiedToken:
        """Who the token speaks for.

        Args:
            token: The token as the client sent it.
            route: The route asked for (for the refusal's audit record).
            ip: The client's address (for the audit trail).

        Raises:
            TokenRefused: unknown, expired, revoked or malformed.
            TokenOutOfScope: valid, but not for ``route``.
            StateUnavailable | StoreUnavailable: the verifier cannot decide now (503, fail closed).
        """
        ...


class Verifiers:
    """The verifiers in the order they are asked; a token nobody recognises is refused."""

    __slots__ = ("_verifiers",)

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self._verifiers = tuple(verifiers)

    async def verify(self, token: str, *, route: str, ip: str) -> VerifiedToken:
        """The first recognising verifier's answer.

        Raises:
            TokenRefused: no verifier recognises the token, or the one that does refuses it.
        """
        for verifier in self._verifiers:
            if verifier.recognises(token):
                return await verifier.verify(token, route=route, ip=ip)
        raise TokenRefused("unrecognised", "The access token is not one this gateway accepts.")
