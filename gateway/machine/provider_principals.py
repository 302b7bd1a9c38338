"""Who an identity provider's access token speaks for, as the policy sees it; and why one is refused.

Both provider verifiers (:mod:`.provider_jwt` for RFC 9068 JWTs, :mod:`.provider_introspection` for
opaque tokens) end here with the token's verified claims:

* **A client's own token** (client credentials: no ``sub``, or ``sub`` equal to ``client_id``) is
  ``client:<provider>:<client_id>``. The provider's name is part of it because the gateway's own
  service accounts are ``client:<name>`` too: a provider client called ``ci`` must not get the rules
  written for the service account ``ci`` (nor one provider's client another's). Neither a service
  account's name nor a role may contain ``:``, so the spellings cannot meet. The ``client_id``
  ``unknown`` is refused (``client-id-reserved``): ``client:<provider>:unknown`` is who the audit
  trail names for a refused token of the provider, and a real client's records would mix with the
  forgeries (as the service account name ``unknown`` is reserved for ``client:unknown``).
* **A person's token** (``sub`` is someone, not the client) is ``user:<name>`` of the account linked
  to ``(provider, sub)`` by an earlier OIDC sign-in (:mod:`.provider_accounts`), with ``users: linked``;
  no linked account, a disabled one, or ``users: refuse`` → refused. The person's roles and
  ``authenticated`` are *not* added: a token carries what the client was granted, and a rule for every
  signed-in person must not open an application to every token (as for the gateway's own tokens).
* **Scopes**: one principal ``scope:<provider>:<name>`` per scope (``scope`` claim, space
  separated), so ``p, scope:corp:reports.read, api, /reports/*, GET, allow`` lets any token of the
  provider ``corp`` with that scope read the reports, and a token without it gets the policy's 403
  ``insufficient_scope``. The provider is part of the name because scope names are the provider's to
  choose: with a second provider (a partner's, a test realm), a bare ``scope:reports.read`` would let
  whoever administers that one mint tokens for rules written about the first. Provider names hold no
  ``:``, so ``scope:corp:api:read`` is provider ``corp``'s scope ``api:read``.

Refusal reasons (the audit trail's ``details.reason``) and the short ``error_description`` the client
reads are in :data:`REFUSALS`; they name the reason class, never the token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.machine.verifier import TokenRefused, VerifiedToken

__all__ = [
    "CLIENT",
    "REFUSALS",
    "SCOPE",
    "USER",
    "LinkedPerson",
    "client_principal",
    "refuse",
    "scope_principal",
    "scopes_of",
    "verified_token",
]

CLIENT: Final = "client:"
USER: Final = "user:"
SCOPE: Final = "scope:"
# What a client id, subject or scope may look like to become a principal: printable, no spaces or
# commas (casbin's CSV), bounded. Anything else is refused rather than squeezed into a name.
_NAME: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,255}")
_MAX_SCOPES: Final = 64
# The client_id of the actor a refused token is recorded as (gateway.machine.provider_audit).
_RESERVED_CLIENT_ID: Final = "unknown"

# reason → what the client reads (RFC 6750 error_description: ASCII, no secrets, no token contents).
REFUSALS: Final[Mapping[str, str]] = {
    "malformed": "The access token is not a well-formed token.",
    "unknown-issuer": "The access token's issuer is not trusted here.",
    "algorithm": "The access token's signature algorithm is not allowed.",
    "type": "The access token's type is not at+jwt.",
    "key": "The access token is signed with a key the provider does not publish.",
    "signature": "The access token's signature does not verify.",
    "issuer": "The access token's issuer is not trusted here.",
    "audience": "The access token is for another audience.",
    "expired": "The access token has expired.",
    "not-yet-valid": "The access token is not valid yet.",
    "claims": "The access token lacks a required claim or has an invalid one.",
    "inactive": "The access token is not active (revoked, expired or unknown).",
    "no-introspection": "The access token is not one this gateway accepts.",
    "user-not-linked": "The access token's user has no account here.",
    "user-tokens-refused": "Only client tokens are accepted from this provider.",
    "client-id-reserved": "The access token's client_id is reserved here; the client needs another id.",
}


def refuse(reason: str) -> TokenRefused:
    """The refusal for ``reason`` (one of :data:`REFUSALS`)."""
    return TokenRefused(reason, REFUSALS[reason])


def _string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and _NAME.fullmatch(value) else None


def scopes_of(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The token's scopes: ``scope`` as RFC 9068 §2.2.3 / RFC 7662 §2.2 write it (space separated).

    Raises:
        TokenRefused: ``scope`` is not a string of well-formed names, or too many of them.
    """
    value = claims.get("scope")
    if value is None:
        return ()
    if not isinstance(value, str):
        raise refuse("claims")
    scopes = tuple(dict.fromkeys(value.split()))
    if len(scopes) > _MAX_SCOPES or not all(_NAME.fullmatch(s) for s in scopes):
        raise refuse("claims")
    return scopes


def scope_principal(provider: str, scope: str) -> str:
    """``scope:<provider>:<scope>``: a scope as the provider that granted it (never another's)."""
    return f"{SCOPE}{provider}:{scope}"


def client_principal(provider: str, client_id: str) -> str:
    """``client:<provider>:<client_id>``: never the same as a service account's ``client:<name>``."""
    return f"{CLIENT}{provider}:{client_id}"


@dataclass(frozen=True, slots=True)
class LinkedPerson:
    """The account a person's token speaks for, and the purposes not to process for them."""

    username: str
    optout: tuple[str, ...] = ()


def verified_token(
    *,
    provider: str,
    claims: Mapping[str, Any],
    person: LinkedPerson | None,
    token_id: str,
    expires_at: float,
) -> VerifiedToken:
    """The :class:`VerifiedToken` of verified claims (see the module docstring for the principals).

    Args:
        provider: The provider's configured name.
        claims: The token's verified claims (JWT payload, or the introspection answer).
        person: For a person's token, the linked account and what not to process for them (the
            caller looked it up: :class:`~gateway.machine.provider_accounts.LinkedAccounts`).
        token_id: A public id for logs (a hash prefix or the ``jti``, never the token).
        expires_at: Unix time the token stops being accepted.

    Raises:
        TokenRefused: no usable ``client_id``, the reserved one, or a person's token without a linked account.
    """
    client_id = _string(claims, "client_id")
    if client_id is None:
        raise refuse("claims")
    if client_id == _RESERVED_CLIENT_ID:
        raise refuse("client-id-reserved")
    scopes = frozenset(scope_principal(provider, s) for s in scopes_of(claims))
    if is_client_token(claims):
        name = f"{provider}:{client_id}"
        principals = frozenset((client_principal(provider, client_id), *scopes))
    else:
        if person is None:
            raise refuse("user-not-linked")
        name = person.username
        principals = frozenset((f"{USER}{name}", *scopes))
    return VerifiedToken(
        subject=name,
        principals=principals,
        roles=(),
        routes=None,
        expires_at=expires_at,
        token_id=token_id,
        issuer=provider,
        client_id=f"{provider}:{client_id}" if person is not None else name,
        person=person is not None,
        optout=person.optout if person is not None else (),
    )


def is_client_token(claims: Mapping[str, Any]) -> bool:
    """A client-credentials token: no ``sub``, or ``sub`` is the client itself (RFC 9068 §2.2)."""
    sub = claims.get("sub")
    return sub is None or sub == claims.get("client_id")


def subject_of(claims: Mapping[str, Any]) -> str | None:
    """The person's ``sub`` of a user token (None for a client's own token, or an unusable ``sub``)."""
    if is_client_token(claims):
        return None
    return _string(claims, "sub")
