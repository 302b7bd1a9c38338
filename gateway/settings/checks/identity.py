"""Checks for ``identity_providers``: each OIDC provider is safe to sign users in with.

Names and issuers are well formed, ID tokens are verified with asymmetric algorithms only, client
authentication matches the secret, MFA is trusted only on proof, and no parameter the flow's security
rests on can be overridden.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from gateway.settings.checks.values import NAME_RULE, host_problem, url_problem
from gateway.settings.report import SLUG, KeyPath, Report, quote
from gateway.settings.schema import AccessTokens, IdentityProvider, Settings

__all__ = ["check_providers"]

_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})

# Asymmetric JWS algorithms an ID token may be signed with. Never "none", never HS*: an HMAC key would
# be the client secret, or (the key-confusion attack) the provider's public key read as a secret.
_ID_TOKEN_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)

# Authorization request parameters the flow's security rests on; extra_params cannot override them.
_RESERVED_AUTH_PARAMS: Final = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "response_mode",
        "request",
        "request_uri",
    }
)


def check_providers(settings: Settings, report: Report) -> None:
    """Every provider on its own, plus unique names and e-mail domains across providers."""
    seen: dict[str, int] = {}
    domains: dict[str, str] = {}
    for index, idp in enumerate(settings.identity_providers):
        at: KeyPath = ("identity_providers", index)
        if not SLUG.fullmatch(idp.name):
            report.bad((*at, "name"), f"{quote(idp.name)} is not a valid name", NAME_RULE)
        elif idp.name in seen:
            report.add((*at, "name"), f"duplicate identity provider name (first at line {seen[idp.name]})")
        else:
            seen[idp.name] = report.line((*at, "name"))
        problem = url_problem(idp.issuer, allow_path=True)
        host = urlsplit(idp.issuer).hostname
        if problem is None and urlsplit(idp.issuer).scheme != "https" and host not in _LOCAL_HOSTS:
            problem = "must use https (http is only allowed for localhost)"
        if problem:
            report.bad((*at, "issuer"), problem, "expected the issuer URL such as https://idp.example.com")
        if not idp.client_id:
            report.add((*at, "client_id"), "must not be empty; use the client id registered at the provider")
        if "openid" not in idp.scopes:
            report.add((*at, "scopes"), 'must include "openid"; without it the provider returns no ID token')
        _check_security(idp, at, report)
        for d_index, domain in enumerate(idp.email_domains):
            name = domain.strip().lower().rstrip(".")
            path = (*at, "email_domains", d_index)
            if "*" in name or host_problem(name):
                report.add(path, f"{quote(domain)} is not a domain name such as example.com")
            elif name in domains:
                report.add(path, f"{quote(domain)} already routes to identity provider {domains[name]}")
            else:
                domains[name] = idp.name
    introspecting = [
        i for i, idp in enumerate(settings.identity_providers)
        if idp.access_tokens is not None and idp.access_tokens.introspection is not None
    ]  # fmt: skip
    if len(introspecting) > 1:
        # An opaque token names no issuer: asking several providers would show each one the others' tokens.
        report.add(
            ("identity_providers", introspecting[1], "access_tokens", "introspection"),
            "only one identity provider may introspect opaque tokens (an opaque token does not say whose it is)",
        )


def _check_algorithms(algorithms: Sequence[str], at: KeyPath, report: Report) -> None:
    """ID-token and access-token algorithms alike: at least one, each asymmetric (no HMAC, no none)."""
    if not algorithms:
        report.add(at, "must name at least one algorithm, e.g. [RS256]")
    for a_index, alg in enumerate(algorithms):
        if alg not in _ID_TOKEN_ALGORITHMS:
            report.add(
                (*at, a_index),
                f"{quote(alg)} is not allowed; use asymmetric algorithms only: "
                + ", ".join(sorted(_ID_TOKEN_ALGORITHMS)),
            )


def _check_security(idp: IdentityProvider, at: KeyPath, report: Report) -> None:
    _check_algorithms(idp.allowed_algorithms, (*at, "allowed_algorithms"), report)
    method = idp.auth_method
    if method == "none" and idp.client_secret is not None:
        report.add((*at, "token_endpoint_auth"), "is none, but a client_secret is set; remove one of them")
    if method != "none" and idp.client_secret is None:
        report.add((*at, "client_secret"), f"is required for token_endpoint_auth {method}")
    if idp.trust_mfa and not (idp.mfa_amr or idp.mfa_acr):
        report.add((*at, "trust_mfa"), "needs mfa_amr or mfa_acr values that prove the provider's MFA")
    if idp.link_by_email and idp.provisioning != "jit":
        report.add(
            (*at, "link_by_email"),
            "only applies to provisioning: jit (pre-provisioned accounts are always found by verified email)",
        )
    _check_limits(idp, at, report)
    if idp.access_tokens is not None:
        _check_access_tokens(idp, idp.access_tokens, (*at, "access_tokens"), report)


def _check_access_tokens(idp: IdentityProvider, tokens: AccessTokens, at: KeyPath, report: Report) -> None:
    """A provider's access tokens (gateway/machine/provider_*): audience, algorithms, introspection, caches."""
    if not tokens.audience.strip():
        report.add(
            (*at, "audience"), "must not be empty; use the gateway's resource identifier at the provider"
        )
    _check_algorithms(tokens.algorithms, (*at, "algorithms"), report)
    if not 0 <= tokens.clock_skew <= 60:
        report.add((*at, "clock_skew"), "must be between 0 and 1m")
    if not 0 < tokens.cache_ttl <= 3600:
        report.add(
            (*at, "cache_ttl"), "must be greater than 0 and at most 1h (a revoked token works until it ends)"
        )
    if not 0 <= tokens.negative_ttl <= tokens.cache_ttl:
        report.add((*at, "negative_ttl"), "must be between 0 and cache_ttl")
    if not 1 <= tokens.cache_size <= 1_000_000:
        report.add((*at, "cache_size"), "must be between 1 and 1000000 entries")
    introspection = tokens.introspection
    if introspection is not None and (introspection.client_secret or idp.client_secret) is None:
        report.add(
            (*at, "introspection", "client_secret"),
            "is required: the provider's introspection endpoint authenticates the gateway (client_secret_basic)",
        )
    if introspection is not None and introspection.client_id == "":
        report.add(
            (*at, "introspection", "client_id"), "must not be empty (omit it to use the provider's client_id)"
        )


def _check_limits(idp: IdentityProvider, at: KeyPath, report: Report) -> None:
    if not 0 <= idp.clock_skew <= 300:
        report.add((*at, "clock_skew"), "must be between 0 and 5m")
    if not 0 < idp.timeout <= 60:
        report.add((*at, "timeout"), "must be greater than 0 and at most 1m")
    if idp.jwks_cooldown < 0:
        report.add((*at, "jwks_cooldown"), "must not be negative")
    if not idp.groups_claim:
        report.add((*at, "groups_claim"), "must not be empty")
    for group, roles in idp.role_map.items():
        for role in (roles,) if isinstance(roles, str) else roles:
            if not role or any(c.isspace() or c == "," for c in role):
                report.add((*at, "role_map", group), f"invalid role name {quote(role)}: no spaces or commas")
    for key in idp.extra_params:
        if key in _RESERVED_AUTH_PARAMS:
            report.add(
                (*at, "extra_params", key),
                f"{quote(key)} is set by the gateway itself and cannot be changed",
            )
