"""What-if: the decisions of recent traffic, re-evaluated under a draft policy.

A policy change is understood before it bites when its effect on real requests is visible: which
requests that are allowed today would be denied, and which denied ones would be let through. The
gateway keeps an aggregated sample of what it decided (:mod:`gateway.authz.sample`); this module
replays that sample through the live policy and through the draft, with the same decision index the
data plane uses, and reports every request shape whose verdict flips, with counts per route.

Both sides are evaluated now, under the live policy as it is now, not compared with the verdicts
recorded at the time: a flip then means "this draft changes this", never "the policy changed since".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.authz.decision import Decision
from gateway.authz.index import PolicyIndex

__all__ = ["DEFAULT_FLIP_LIMIT", "Flip", "RouteImpact", "Sampled", "WhatIf", "what_if"]

# A draft that flips thousands of request shapes is understood from its per-route counts; the list
# of individual flips is for reading, so it is bounded (the largest first).
DEFAULT_FLIP_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Sampled:
    """One request shape from the decision sample, and how many requests had it."""

    principals: frozenset[str]
    route: str
    method: str
    path: str
    count: int


@dataclass(frozen=True, slots=True)
class Flip:
    """A request shape whose verdict differs between the live policy and the draft."""

    route: str
    method: str
    path: str
    principals: tuple[str, ...]
    count: int
    live: Decision
    draft: Decision

    @property
    def to_deny(self) -> bool:
        """Allowed today, denied under the draft."""
        return self.live.allowed and not self.draft.allowed


@dataclass(frozen=True, slots=True)
class RouteImpact:
    """Per route: how many sampled requests there were, and how many would flip each way."""

    route: str
    requests: int
    to_deny: int
    to_allow: int


@dataclass(frozen=True, slots=True)
class WhatIf:
    """The replay of one sample under the live policy and a draft."""

    live_version: int
    requests: int
    shapes: int
    to_deny: int
    to_allow: int
    routes: tuple[RouteImpact, ...]
    # The largest flips first, at most ``limit`` of them; ``omitted`` counts the shapes left out.
    flips: tuple[Flip, ...]
    omitted: int

    @property
    def changes_anything(self) -> bool:
        return bool(self.to_deny or self.to_allow)


def what_if(
    live: PolicyIndex, draft: PolicyIndex, sample: Iterable[Sampled], *, limit: int = DEFAULT_FLIP_LIMIT
) -> WhatIf:
    """Replay ``sample`` through ``live`` and ``draft``; see the module docstring."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    flips: list[Flip] = []
    per_route: dict[str, list[int]] = {}
    requests = shapes = 0
    for shape in sample:
        requests += shape.count
        shapes += 1
        counts = per_route.setdefault(shape.route, [0, 0, 0])
        counts[0] += shape.count
        before = live.decide_request(shape.principals, shape.route, shape.method, shape.path)
        after = draft.decide_request(shape.principals, shape.route, shape.method, shape.path)
        if before.allowed == after.allowed:
            continue
        flip = Flip(
            route=shape.route,
            method=shape.method,
            path=shape.path,
            principals=tuple(sorted(shape.principals)),
            count=shape.count,
            live=before,
            draft=after,
        )
        counts[1 if flip.to_deny else 2] += shape.count
        flips.append(flip)
    flips.sort(key=lambda f: (-f.count, f.route, f.path, f.method, f.principals))
    routes = tuple(
        RouteImpact(route, requests=c[0], to_deny=c[1], to_allow=c[2])
        for route, c in sorted(per_route.items(), key=lambda item: (-(item[1][1] + item[1][2]), item[0]))
    )
    return WhatIf(
        live_version=live.version,
        requests=requests,
        shapes=shapes,
        to_deny=sum(r.to_deny for r in routes),
        to_allow=sum(r.to_allow for r in routes),
        routes=routes,
        flips=tuple(flips[:limit]),
        omitted=max(0, len(flips) - limit),
    )
