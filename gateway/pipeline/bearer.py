"""The bearer stage: a request that authenticates with ``Authorization: Bearer <token>`` (RFC 6750).

Runs instead of identify and mfa when the route takes bearer tokens (``auth: [bearer]`` or
``[session, bearer]``) and the request carries a Bearer ``Authorization`` header; on a route that
takes only tokens it runs for every request, cookie or not (a browser never gets a token-only route's
data with a cookie it did not present as a token). A request with both a token and a session cookie
is decided by the token alone. The token goes to the :class:`~gateway.machine.verifier.Verifiers`
chain (the gateway's own ``gwt_`` tokens, then an identity provider's JWT or introspected access
tokens, behind the same interface); what it returns is a client's principals for the authorize stage.

Refusals carry the RFC 6750 challenge (``WWW-Authenticate: Bearer realm="gateway", error=...``) besides
the gateway's usual error body: 401 ``invalid_token`` for a malformed, unknown, expired or revoked
token, 403 ``insufficient_scope`` for a token not valid on this route or denied by the policy, and a
bare challenge (no error, §3.1) when a token-only route gets no token at all.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.errors import AuthenticationRequired, BadRequest, ErrorReason, Forbidden
from gateway.machine.verifier import TokenOutOfScope, TokenRefused, VerifiedToken, Verifiers
from gateway.pipeline.headers import authorization_parts

__all__ = [
    "BearerChallenge",
    "InsufficientScope",
    "InvalidToken",
    "MalformedAuthorization",
    "authenticate_bearer",
    "bearer_token",
    "brings_token",
    "challenge",
]

_REALM: Final = b'Bearer realm="gateway"'
# RFC 6750 §2.1: the credentials are one token68 (RFC 7235 §2.1).
_TOKEN68: Final = re.compile(rb"[A-Za-z0-9._~+/-]+=*")
_MAX_TOKEN: Final = 4096


def challenge(error: str = "", description: str = "") -> bytes:
    """The ``WWW-Authenticate`` value; ``description`` is the gateway's own ASCII text, never the client's."""
    if not error:
        return _REALM
    value = _REALM + b', error="' + error.encode("ascii") + b'"'
    if description:
        value += b', error_description="' + description.replace('"', "'").encode("ascii", "replace") + b'"'
    return value


class BearerChallenge:
    """A refusal that tells the client how to authenticate: the ``WWW-Authenticate`` value to send."""

    challenge: bytes = _REALM


class InvalidToken(BearerChallenge, AuthenticationRequired):
    """No usable token (401): missing on a token-only route, malformed, unknown, expired or revoked."""

    reason = ErrorReason.INVALID_TOKEN
    title = "Access token required"

    def __init__(self, detail: str, *, error: str = "invalid_token") -> None:
        """``error=""``: the bare challenge, for a request that sent no token at all (RFC 6750 §3.1)."""
        super().__init__(detail)
        self.challenge = challenge(error, detail)


class InsufficientScope(BearerChallenge, Forbidden):
    """A valid token that may not do this (403): another route's token, or the policy denies it."""

    reason = ErrorReason.INSUFFICIENT_SCOPE
    title = "Access denied"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.challenge = challenge("insufficient_scope", detail)


class MalformedAuthorization(BearerChallenge, BadRequest):
    """More than one ``Authorization`` header (400 ``invalid_request``): which one counts is ambiguous."""

    reason = ErrorReason.INVALID_TOKEN

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.challenge = challenge("invalid_request", detail)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of a ``Bearer`` ``Authorization`` header; None when the request has no such header.

    Another scheme (``Basic …``) is no bearer token: None, and the session (if the route takes it) decides.

    Raises:
        InvalidToken: ``Bearer`` with no token, spaces inside it, or characters outside token68.
        MalformedAuthorization: more than one ``Authorization`` header.
    """
    found: bytes | None = None
    for name, value in headers:
        if len(name) == 13 and name.lower() == b"authorization":
            if found is not None:
                raise MalformedAuthorization("Send one Authorization header.")
            found = value
    if found is None:
        return None
    scheme, credentials = authorization_parts(found)
    if scheme != b"bearer":
        return None
    if not credentials or len(credentials) > _MAX_TOKEN or not _TOKEN68.fullmatch(credentials):
        raise InvalidToken("The Authorization header does not carry a well-formed bearer token.")
    return credentials.decode("ascii")


def brings_token(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request comes with a bearer token, well-formed or not (on a route that takes both,
    the token decides it, not the session: :func:`bearer_token`)."""
    try:
        return bearer_token(headers) is not None
    except (InvalidToken, MalformedAuthorization):
        return True


async def authenticate_bearer(
    token: str | None, *, verifiers: Verifiers, route: str, ip: str
) -> VerifiedToken:
    """Who the token speaks for on ``route``, or the refusal to answer with.

    Raises:
        InvalidToken: no token, or one that authenticates nobody (401).
        InsufficientScope: a valid token scoped to other routes (403).
        StateUnavailable | StoreUnavailable: the token cannot be checked now (503, never access).
    """
    if token is None:
        # RFC 6750 §3.1: a request with no credentials gets the bare challenge, no error code.
        raise InvalidToken(
            "This application takes an access token: send Authorization: Bearer <token>.", error=""
        )
    try:
        return await verifiers.verify(token, route=route, ip=ip)
    except TokenOutOfScope as refused:
        raise InsufficientScope(refused.description) from None
    except TokenRefused as refused:
        raise InvalidToken(refused.description) from None
