"""The authorize stage: may these principals do this method on this path of this route?

A session's principals are ``user:<name>``, ``authenticated`` (every signed-in session), its locally
granted roles by their bare names, and ``group:<provider>:<name>`` for each group an identity provider
asserted (the session keeps them with their provider).
The decision comes from the worker's :class:`~gateway.authz.cache.Authorizer` (decision cache in
front of the compiled policy index), keyed by the policy version, so a policy change applies to the
very next request. Anything but an explicit allow is a 403 carrying the decision's reason id — never
the policy itself. Only an allowed request gets the identity headers for the upstream.

Every decided request, allowed or denied, is counted in the worker's decision sample (one dict
update, no I/O: measured at ~0.4 µs), so the policy what-if can replay real traffic under a draft;
except a session whose person opted out of the "policy_analytics" purpose (``Session.optout``, decided
at sign-in and on every change of consent: here it is one tuple membership test).
Public paths never reach this stage: no policy decides them, so a draft cannot change them either.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway.authz.decision import Decision, Reason
from gateway.authz.live import LivePolicy
from gateway.authz.principals import principals_of
from gateway.authz.sample import DecisionSample
from gateway.authz.validate import AUTHENTICATED
from gateway.errors import Forbidden, ServiceUnavailable
from gateway.identity.assertion import AssertionSigner
from gateway.identity.sessions import Session
from gateway.machine.provider_principals import USER
from gateway.machine.verifier import VerifiedToken
from gateway.observe.record import RequestRecord
from gateway.pipeline.bearer import InsufficientScope
from gateway.pipeline.headers import DEFAULT_IDENTITY_NAMES, IdentityNames
from gateway.pipeline.overrides import UNREADABLE, method_overrides
from gateway.privacy.purposes import POLICY_ANALYTICS

if TYPE_CHECKING:
    from gateway.pipeline.context import RequestContext

__all__ = [
    "AUTHENTICATED",
    "AccessDenied",
    "BodyOverrides",
    "authorize",
    "authorize_client",
    "client_identity_headers",
    "decided_as",
    "denial",
    "identity_headers",
    "principals_of",
]

_MESSAGES: Final[dict[str, str]] = {
    Reason.POLICY_DENY: "A policy rule denies this request.",
    Reason.NO_MATCHING_RULE: "No policy rule allows this request.",
    Reason.NO_POLICY: "No access policy is loaded, so every request is denied.",
}


class AccessDenied(Forbidden):
    """The policy did not allow the request (403)."""

    reason: str = Reason.POLICY_DENY
    title = "Access denied"


def _message(decision: Decision) -> str:
    return _MESSAGES.get(decision.reason, "Access denied by policy.")


def denial(decision: Decision) -> AccessDenied:
    """The error for a decision that is not an allow (the reason id is also what the access log carries)."""
    return AccessDenied(_message(decision), reason=decision.reason)


_NONE: Final[frozenset[str]] = frozenset()


class PolicyBehind(ServiceUnavailable):
    """503: a newer policy version was announced and this worker cannot load it."""

    reason = "policy-behind"


def _decide(
    principals: frozenset[str],
    route: str,
    method: str,
    path: str,
    policy: LivePolicy,
    rec: RequestRecord,
    sample: DecisionSample | None,
    without_roles: frozenset[str] = _NONE,
) -> Decision:
    """The policy's decision, its time, version and reason noted in ``rec``; the request's shape in
    ``sample`` unless it is None (the person opted out of policy analytics). ``without_roles``: a
    person's access token's ``user:<name>``, decided without the roles the policy's ``g`` lines give
    it (:func:`authorize_client`)."""
    if policy.behind:
        # A newer policy is known to exist and cannot be loaded (the database is out of reach): the one
        # in hand may allow what the new one denies, so nothing is decided on it (fail closed).
        raise PolicyBehind("The access policy could not be brought up to date.")
    started = time.perf_counter()
    if without_roles:
        decision = policy.authorizer.decide_without_roles(principals, without_roles, route, method, path)
    else:
        decision = policy.authorizer.decide(principals, route, method, path)
    rec.authz_seconds = time.perf_counter() - started
    rec.policy_version = decision.version
    rec.reason = decision.reason
    if sample is not None:
        sample.note(principals, route, method, path)
    return decision


def identity_headers(
    session: Session,
    roles: tuple[str, ...],
    assertion: str,
    names: IdentityNames = DEFAULT_IDENTITY_NAMES,
) -> tuple[tuple[bytes, bytes], ...]:
    """What the upstream learns about the user, under the configured ``names`` (only the gateway sets
    these; see headers.py)."""
    return (
        (names.user, session.username.encode()),
        (names.email, session.email.encode()),
        (names.roles, ",".join(roles).encode()),
        (b"x-gateway-assertion", assertion.encode()),
    )


def authorize(
    *,
    session: Session,
    route: str,
    method: str,
    path: str,
    policy: LivePolicy,
    signer: AssertionSigner,
    request: RequestContext,
    sample: DecisionSample,
    names: IdentityNames = DEFAULT_IDENTITY_NAMES,
) -> tuple[tuple[bytes, bytes], ...]:
    """Raise unless the policy explicitly allows this request (invariant 2: deny by default).

    Notes the decision's time, policy version and reason in the request's record, and the request's
    shape in ``sample``. A POST's ``_method`` query parameters are decided here; what its body names,
    by the proxy stage as it reads it (``request.overrides``; :func:`authorize_overrides`).

    Returns:
        The identity headers for the upstream (or for the proxy, on forward-auth).

    Raises:
        AccessDenied: a deny rule matched, no rule allows it, or no policy is loaded (403).
    """
    principals = principals_of(session)
    rec = request.rec
    decision = _decide(
        principals, route, method, path, policy, rec, None if POLICY_ANALYTICS in session.optout else sample
    )
    if not decision.allowed:
        raise denial(decision)
    if method == "POST":
        _post(request, BodyOverrides(principals, route, path, policy, rec))
    roles = policy.roles_for(principals)
    assertion = signer.assertion_for(session, route, session.email, roles)
    return identity_headers(session, roles, assertion, names)


def authorize_overrides(
    methods: Iterable[str],
    *,
    principals: frozenset[str],
    route: str,
    path: str,
    policy: LivePolicy,
    rec: RequestRecord,
    bearer: bool = False,
    without_roles: frozenset[str] = frozenset(),
) -> None:
    """For a POST: the policy must also allow each method its ``_method`` parameters name
    (:mod:`gateway.pipeline.overrides`).

    Laravel, Symfony (with ``http_method_override``) and Rails' Rack::MethodOverride run a POST as the
    method ``_method`` names: a re-attack run had ``POST /x/1?_method=DELETE`` delete where the
    policy allowed POST and refused DELETE.

    Raises:
        AccessDenied: the policy does not allow one of the methods (403; InsufficientScope for a
            ``bearer`` request).
    """
    for method in sorted(methods):
        decision = _decide(principals, route, method, path, policy, rec, None, without_roles)
        if not decision.allowed:
            if method == UNREADABLE:
                asked = "another method, in a body too large or malformed to read which"
            else:
                asked = method[:20]
            message = f"{_message(decision)} (the request asks the app to run it as {asked})"
            if bearer:
                raise InsufficientScope(message, reason=decision.reason)
            raise AccessDenied(message, reason=decision.reason)


@dataclass(frozen=True, slots=True)
class BodyOverrides:
    """A POST's body may name methods too: what the proxy stage holds them to, once it has read it."""

    principals: frozenset[str]
    route: str
    path: str
    policy: LivePolicy
    rec: RequestRecord
    bearer: bool = False
    without_roles: frozenset[str] = frozenset()

    def check(self, methods: frozenset[str]) -> None:
        """Raise (403) unless the policy allows every one of ``methods`` as well."""
        if methods:
            authorize_overrides(
                methods,
                principals=self.principals,
                route=self.route,
                path=self.path,
                policy=self.policy,
                rec=self.rec,
                bearer=self.bearer,
                without_roles=self.without_roles,
            )


def _post(request: RequestContext, overrides: BodyOverrides) -> None:
    """An allowed POST: the methods its query names are decided now, its body's as it is read."""
    if request.query:
        overrides.check(method_overrides(request.query))
    request.overrides = overrides


def client_identity_headers(
    client: VerifiedToken,
    roles: tuple[str, ...],
    assertion: str,
    names: IdentityNames = DEFAULT_IDENTITY_NAMES,
) -> tuple[tuple[bytes, bytes], ...]:
    """What the upstream learns about a machine client: its name, roles, and that a token (not a person) came."""
    return (
        (names.user, client.subject.encode()),
        (b"x-gateway-auth", b"bearer"),
        (names.roles, ",".join(roles).encode()),
        (b"x-gateway-assertion", assertion.encode()),
    )


def decided_as(client: VerifiedToken) -> tuple[frozenset[str], frozenset[str]]:
    """The principals a bearer client is decided with, and those of them whose ``g`` roles allow
    nothing: a person's token is its ``user:<name>`` without the account's roles (README, "Access
    tokens of an identity provider"), the rest as they are. The authorize stage and the re-decision
    of an open exchange (:mod:`gateway.pipeline.watch`) both ask this."""
    if not client.person:
        return client.principals, frozenset()
    without_roles = frozenset(p for p in client.principals if p.startswith(USER))
    return client.principals - without_roles, without_roles


def authorize_client(
    *,
    client: VerifiedToken,
    route: str,
    method: str,
    path: str,
    policy: LivePolicy,
    signer: AssertionSigner,
    request: RequestContext,
    sample: DecisionSample,
    names: IdentityNames = DEFAULT_IDENTITY_NAMES,
) -> tuple[tuple[bytes, bytes], ...]:
    """:func:`authorize` for a request authenticated by a bearer token.

    The principals are ``client:<name>`` and the client's roles, never ``authenticated``: a rule
    written for every signed-in person must not open an application to every script too.

    A person's token (an identity provider's, for a linked account) is ``user:<name>`` *without* the
    account's roles, also those the policy's ``g`` lines give it: an attack run's token for alice,
    issued to any application she authorised, was allowed by ``g, user:alice, deployers`` and sent
    ``deployers`` upstream. Its ``user:`` principal is decided without its roles (the rules naming it
    allow; the denies of its roles still refuse) and adds no role to ``X-Gateway-Roles``; its scopes
    (and their ``g`` roles) are what the application was granted.

    Raises:
        InsufficientScope: the policy does not allow it (403 with the decision's reason id and the
            RFC 6750 ``insufficient_scope`` challenge).
    """
    principals, without_roles = decided_as(client)
    rec = request.rec
    # A person's own token (an identity provider's access token for a linked account) carries no
    # session, so not their choices about "policy_analytics": it is never sampled, which honours an
    # objection or a withdrawal without reading them on every request. Machine clients are sampled.
    decision = _decide(
        principals, route, method, path, policy, rec, None if client.person else sample, without_roles
    )
    if not decision.allowed:
        raise InsufficientScope(_message(decision), reason=decision.reason)
    if method == "POST":
        _post(request, BodyOverrides(principals, route, path, policy, rec, True, without_roles))
    roles = policy.roles_for(principals)
    assertion = signer.assertion_for_client(
        client.subject,
        client.token_id,
        route,
        roles,
        client.expires_at,
        client_id=client.client_id,
        optout=client.optout,
    )
    return client_identity_headers(client, roles, assertion, names)
