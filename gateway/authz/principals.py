"""What a session speaks for, as the policy names it: ``user:<name>``, ``authenticated``, its local roles
and ``group:<provider>:<group>`` for each group a provider asserted.

Shared by the authorize stage, the lockdown's break-glass test and the pages that ask it (a new
passkey during a lockdown), so the three agree on who someone is.
"""

from __future__ import annotations

from functools import lru_cache

from gateway.authz.validate import AUTHENTICATED
from gateway.identity.sessions import Session

__all__ = ["principals_of"]


def principals_of(session: Session) -> frozenset[str]:
    """Everything a session speaks for, as the policy names it."""
    return _principals(session.username, session.roles, session.groups)


@lru_cache(maxsize=10_000)
def _principals(username: str, roles: tuple[str, ...], groups: tuple[str, ...]) -> frozenset[str]:
    # One shared set per identity: the decision and role caches hash it on every request, and a
    # frozenset computes its hash once per object. A role spelled as a principal ("client:deployer",
    # "user:boss": stored before accounts refused them) is not a principal of this session.
    own = (r for r in roles if not r.startswith(("user:", "group:", "client:", "scope:")))
    return frozenset((f"user:{username}", AUTHENTICATED, *own, *(f"group:{g}" for g in groups)))
