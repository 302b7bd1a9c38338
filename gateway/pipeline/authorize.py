"""The authorize stage: may these principals do this method on this path of this route?

A session's principals are ``user:<name>``, ``authenticated`` (every signed-in session), its locally
granted roles by their bare names, and ``group:<name>`` for each group an identity provider asserted.
The decision comes from the worker's :class:`~gateway.authz.cache.Authorizer` (decision cache in
front of the compiled policy index), keyed by the policy version, so a policy change applies to the
very next request. Anything but an explicit allow is a 403 carrying the decision's reason id — never
the policy itself. Only an allowed request gets the identity headers for the upstream.

Every decided request, allowed or denied, is counted in the worker's decision sample (one dict
update, no I/O: measured at ~0.4 µs), so the policy what-if can replay real traffic under a draft.
Public paths never reach this stage: no policy decides them, so a draft cannot change them either.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Final

from gateway.authz.decision import Decision, Reason
from gateway.authz.live import LivePolicy
from gateway.authz.sample import DecisionSample
from gateway.errors import Forbidden
from gateway.identity.assertion import AssertionSigner
from gateway.identity.sessions import Session
from gateway.observe.record import RequestRecord

__all__ = ["AUTHENTICATED", "AccessDenied", "authorize", "denial", "identity_headers", "principals_of"]

AUTHENTICATED = "authenticated"

_MESSAGES: Final[dict[str, str]] = {
    Reason.POLICY_DENY: "A policy rule denies this request.",
    Reason.NO_MATCHING_RULE: "No policy rule allows this request.",
    Reason.NO_POLICY: "No access policy is loaded, so every request is denied.",
}


class AccessDenied(Forbidden):
    """The policy did not allow the request (403)."""

    reason: str = Reason.POLICY_DENY
    title = "Access denied"


def principals_of(session: Session) -> frozenset[str]:
    """Everything a session speaks for, as the policy names it."""
    return _principals(session.username, session.roles, session.groups)


@lru_cache(maxsize=10_000)
def _principals(username: str, roles: tuple[str, ...], groups: tuple[str, ...]) -> frozenset[str]:
    # One shared set per identity: the decision and role caches hash it on every request, and a
    # frozenset computes its hash once per object.
    return frozenset((f"user:{username}", AUTHENTICATED, *roles, *(f"group:{g}" for g in groups)))


def denial(decision: Decision) -> AccessDenied:
    """The error for a decision that is not an allow (the reason id is also what the access log carries)."""
    return AccessDenied(_MESSAGES.get(decision.reason, "Access denied by policy."), reason=decision.reason)


def identity_headers(
    session: Session, roles: tuple[str, ...], assertion: str
) -> tuple[tuple[bytes, bytes], ...]:
    """What the upstream learns about the user (only the gateway sets these; see headers.py)."""
    return (
        (b"x-gateway-user", session.username.encode()),
        (b"x-gateway-email", session.email.encode()),
        (b"x-gateway-roles", ",".join(roles).encode()),
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
    rec: RequestRecord,
    sample: DecisionSample,
) -> tuple[tuple[bytes, bytes], ...]:
    """Raise unless the policy explicitly allows this request (invariant 2: deny by default).

    Notes the decision's time, policy version and reason in ``rec``, and the request's shape in
    ``sample``.

    Returns:
        The identity headers for the upstream (or for the proxy, on forward-auth).

    Raises:
        AccessDenied: a deny rule matched, no rule allows it, or no policy is loaded (403).
    """
    principals = principals_of(session)
    started = time.perf_counter()
    decision = policy.authorizer.decide(principals, route, method, path)
    rec.authz_seconds = time.perf_counter() - started
    rec.policy_version = decision.version
    rec.reason = decision.reason
    sample.note(principals, route, method, path)
    if not decision.allowed:
        raise denial(decision)
    roles = policy.roles_for(principals)
    return identity_headers(session, roles, signer.assertion_for(session, route, session.email, roles))
