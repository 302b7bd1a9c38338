"""The authorize stage: may these principals do this method on this path of this route?

A session's principals are ``user:<name>``, ``authenticated`` (every signed-in session), its locally
granted roles by their bare names, and ``group:<name>`` for each group an identity provider asserted.
The decision comes from the worker's :class:`~gateway.authz.cache.Authorizer` (decision cache in
front of the compiled policy index), keyed by the policy version, so a policy change applies to the
very next request. Anything but an explicit allow is a 403 carrying the decision's reason id — never
the policy itself.
"""

from __future__ import annotations

from functools import lru_cache

from gateway.authz.decision import Decision
from gateway.errors import Forbidden
from gateway.identity.sessions import Session

__all__ = ["AUTHENTICATED", "AccessDenied", "denial", "principals_of"]

AUTHENTICATED = "authenticated"

_MESSAGES = {
    "policy-deny": "A policy rule denies this request.",
    "no-matching-rule": "No policy rule allows this request.",
    "no-policy": "No access policy is loaded, so every request is denied.",
}


class AccessDenied(Forbidden):
    """The policy did not allow the request (403)."""

    reason = "policy-deny"
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
