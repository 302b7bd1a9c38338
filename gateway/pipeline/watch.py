"""Long exchanges checked again while they last: a WebSocket, a streamed answer.

The stages decide once, at the request's head. A WebSocket or a download can go on for hours after
that, so without a second look a disabled account, a revoked session or token, a blocked address or a
lockdown would leave an open one flowing (an attack run kept a WebSocket echoing and a 2 GB download
running after each of them). Every :data:`gateway.pipeline.proxy.WATCH_INTERVAL` while one lasts, the checks a new request
would face that can change under it are made again: the route as configured (a reload that changes
it, e.g. a path no longer public, ends the exchange), the client's address against the blocks, the
lockdown (a break-glass session only), the session or the bearer token still valid, the session's
second factor still as fresh as the route asks (``mfa.max_age``: a step-up is not good for as long as
a connection lasts), and the policy still allowing the request's principals this method on this path
(a role removed, a deny rule added).
When one fails, the WebSocket is closed (1008, policy violation) and a streamed answer is cut off; a
store that cannot answer, or a policy this worker knows to be out of date (``behind``), ends it too
(fail closed). The decision comes from the worker's decision cache, so a check costs a dict lookup
while the policy does not change.
"""

from __future__ import annotations

from typing import Protocol

from gateway.authz.live import LivePolicy
from gateway.authz.principals import principals_of
from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.identity.cookies import cookie_in
from gateway.identity.levels import check_requirement
from gateway.identity.sessions import Session, SessionStore
from gateway.machine.verifier import Verifiers
from gateway.observe.record import AuthKind
from gateway.pipeline.authorize import decided_as
from gateway.pipeline.bearer import authenticate_bearer
from gateway.pipeline.headers import Forwarding, client_of
from gateway.pipeline.snapshot import LiveState, RouteRuntime, Snapshot
from gateway.settings.schema import MfaPolicy
from gateway.threat.blocks import IpBlocks
from gateway.threat.lockdown import Lockdown, breaks_glass

__all__ = ["Rechecks"]


class _Request(Protocol):
    """What :meth:`Rechecks.allowed` reads of the request context (it is set by the stages)."""

    @property
    def cookies(self) -> tuple[bytes, ...]: ...

    @property
    def token(self) -> str: ...

    @property
    def client_ip(self) -> str: ...

    @property
    def route_name(self) -> str: ...

    @property
    def method(self) -> str: ...

    @property
    def mfa_policy(self) -> MfaPolicy | None: ...

    @property
    def rt(self) -> RouteRuntime | None: ...

    @property
    def host(self) -> str: ...

    @property
    def fwd(self) -> Forwarding | None: ...

    @property
    def path(self) -> str: ...

    @property
    def auth(self) -> AuthKind: ...


class Rechecks:
    """The checks, over one worker's services (one object per data plane, no per-request state)."""

    __slots__ = ("_bearer", "_blocks", "_clock", "_live", "_lockdown", "_policy", "_sessions")

    def __init__(
        self,
        *,
        live: LiveState,
        blocks: IpBlocks,
        lockdown: Lockdown,
        sessions: SessionStore,
        policy: LivePolicy,
        bearer: Verifiers,
        clock: Clock,
    ) -> None:
        self._live = live
        self._blocks = blocks
        self._lockdown = lockdown
        self._sessions = sessions
        self._policy = policy
        self._bearer = bearer
        self._clock = clock

    async def allowed(self, request: _Request) -> bool:
        """Whether ``request`` would still get through; ``False`` also when a store cannot tell."""
        snap = self._live.current
        if request.client_ip in self._blocks or (
            request.fwd is not None and client_of(request.fwd.chain, snap.trusted) in self._blocks
        ):
            return False
        if not _route_as_decided(snap, request):
            return False
        try:
            session = None
            principals: frozenset[str] | None = None
            without_roles: frozenset[str] = frozenset()
            if request.auth is AuthKind.SESSION:
                session_id = cookie_in(request.cookies, snap.cookie_name)
                session = await self._sessions.get(session_id) if session_id else None
                if session is None or not self._fresh_enough(session, request.mfa_policy):
                    return False
                if session.password_change or session.owes_second_factor:
                    # What identify refuses on a request's head: a factor enrolled or a step-up forced
                    # since the exchange began (an attack run kept a WebSocket on an `mfa: none` app
                    # open with the password alone after the owner's first factor).
                    return False
                principals = principals_of(session)
            elif request.auth is AuthKind.BEARER:
                client = await authenticate_bearer(
                    request.token, verifiers=self._bearer, route=request.route_name, ip=request.client_ip
                )
                principals, without_roles = decided_as(client)
            if principals is not None and not self._still_decided(principals, request, without_roles):
                return False
            lock = self._lockdown.state
            if lock.on and lock.covers(request.route_name):
                return session is not None and breaks_glass(
                    session, policy=self._policy, settings=snap.settings.lockdown, now=self._clock.time()
                )
        except GatewayError:
            return False
        return True

    def _fresh_enough(self, session: Session, policy: MfaPolicy | None) -> bool:
        """Whether the session still meets the route's second-factor policy (the MFA stage's test)."""
        if policy is None:
            return False
        verdict = check_requirement(
            level=session.level, factors=session.factors, policy=policy, has_second_factor=True,
            now=self._clock.time(),
        )  # fmt: skip
        return verdict.ok

    def _still_decided(
        self, principals: frozenset[str], request: _Request, without_roles: frozenset[str]
    ) -> bool:
        """Whether the policy deciding now still allows what the request's head was allowed: the same
        decision the authorize stage asks for (a public path never gets here: it has no principals),
        a person's token without the account's roles as there (:func:`decided_as`)."""
        if self._policy.behind:
            return False
        authorizer = self._policy.authorizer
        route, method, path = request.route_name, request.method, request.path
        if without_roles:
            return authorizer.decide_without_roles(principals, without_roles, route, method, path).allowed
        return authorizer.decide(principals, route, method, path).allowed


def _route_as_decided(snap: Snapshot, request: _Request) -> bool:
    """Whether the request's route still decides requests as when its head was decided.

    A reload that removes the route, makes the path public no longer, asks for a second factor or
    changes how clients authenticate applies to new requests; an open exchange was decided under the
    old rules (an attack run kept a WebSocket on a path made private echoing after the reload), and so
    was one whose host and path a route added by the reload now takes (a re-attack run's `/admin`
    route with `mfa: required` in front of an open socket). A change to what decides ends the
    exchange, and the client's next request is decided under the new rules; any other change
    (headers, upstreams, timeouts) lets in-flight requests finish.
    """
    decided = request.rt
    if decided is None:
        return True
    current = snap.routes.get(decided.route.name)
    if current is decided:
        return True
    if current is None or _deciding(current) != _deciding(decided):
        return False
    match = snap.router.match(request.host, request.path)
    return match is not None and match.route.name == decided.route.name


def _deciding(rt: RouteRuntime) -> tuple[object, ...]:
    """What of a route decides who may reach what on it."""
    route = rt.route
    return (
        route.host,
        route.path,
        route.public_paths,
        route.allow_path_params,
        route.case_insensitive_paths,
        route.websockets,
        rt.websocket_origins,
        rt.cors_preflight,
        rt.mfa_policy,
        rt.session_auth,
        rt.bearer_auth,
    )
