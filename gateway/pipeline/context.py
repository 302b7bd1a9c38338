"""What the stages learn about one request, handed from stage to stage.

One plain slotted object per request instead of arguments threaded through every stage: the stages
fill it in request order (receive: the headers it read and the client's address; route: the route and
the path to forward), and the access-log record travels in it. It is built
for every request, so it is a class with ``__slots__`` and plain assignments, not a dataclass.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.errors import ErrorReason
from gateway.observe.record import AccessDecision, AuthKind, RequestKind, RequestRecord
from gateway.observe.tracing import RequestTrace
from gateway.pipeline.headers import Forwarding
from gateway.pipeline.proxy import NO_BODY, ProxyOutcome
from gateway.pipeline.snapshot import RouteRuntime
from gateway.settings.schema import MfaPolicy

if TYPE_CHECKING:
    from gateway.pipeline.authorize import BodyOverrides
    from gateway.pipeline.watch import Rechecks

__all__ = ["RequestContext"]


class RequestContext:
    """One request on its way through the stages.

    Attributes:
        rec: The access-log record (finished and handed to the observers when the request ends).
        method: The method the policy sees: the request's own, the original request's for
            forward-auth, and ``GET`` for a WebSocket handshake (RFC 6455 §4.1).
        proto: ``http`` or ``https``, as the client reached the gateway (for the return URL).
        host_raw: The ``Host`` the request is for, as sent (the original one for forward-auth).
        cookies: The values of the request's ``Cookie`` headers (set by receive).
        query: The raw query string of the request the stages decide.
        path_and_query: The canonical path and the query: what the upstream is sent (set by route).
        rt: The matched route (set by route).
        fwd: Who the client is, after deciding which forwarding headers to trust (set by receive).
        outcome: What the proxy stage did, for the access log.
        trace: The request's trace when tracing is on (set first), else None.
        checks: The data plane's checks a long exchange is watched with (set before the proxy stage).
        token: The bearer token the request was let through with (set by the bearer stage).
        overrides: For an allowed POST: the methods its body names are held to the policy too.
    """

    __slots__ = (
        "accept",
        "checks",
        "cookies",
        "framing",
        "fwd",
        "host",
        "host_raw",
        "method",
        "outcome",
        "overrides",
        "path",
        "path_and_query",
        "proto",
        "query",
        "rec",
        "rt",
        "token",
        "trace",
        "user_agent",
    )

    def __init__(self, kind: RequestKind, method: str) -> None:
        self.rec = RequestRecord(at=time.time(), kind=kind, method=method)
        self.method = method
        self.proto = "http"
        self.user_agent = b""
        self.accept = b""
        self.cookies: tuple[bytes, ...] = ()
        self.host_raw = b""
        self.query = b""
        self.framing = NO_BODY
        self.fwd: Forwarding | None = None
        self.path = ""
        self.path_and_query = ""
        self.rt: RouteRuntime | None = None
        self.outcome = ProxyOutcome()
        self.trace: RequestTrace | None = None
        self.overrides: BodyOverrides | None = None
        # ``checks`` and ``token`` are set only where they are read (before the proxy stage; by the
        # bearer stage): every request pays for the constructor, few need them.
        self.checks: Rechecks
        self.token: str
        # The normalised host, set by the route stage (which every stage after it follows).
        self.host: str

    @property
    def client_ip(self) -> str:
        """The client's address (as receive decided it)."""
        return self.fwd.client_ip if self.fwd is not None else ""

    @property
    def route_name(self) -> str:
        """The matched route's name."""
        return self.rt.route.name if self.rt is not None else ""

    @property
    def mfa_policy(self) -> MfaPolicy | None:
        """The matched route's second-factor policy (None before route)."""
        return self.rt.mfa_policy if self.rt is not None else None

    @property
    def auth(self) -> AuthKind:
        """How the request was let through (session, bearer, none)."""
        return self.rec.auth

    @property
    def started_at(self) -> float:
        """When the request arrived (Unix time)."""
        return self.rec.at

    async def still_allowed(self) -> bool:
        """Whether a long exchange of this request may go on (:mod:`gateway.pipeline.watch`)."""
        if await self.checks.allowed(self):
            return True
        # Logged as refused, as a cut streamed answer is (its 403 is raised through the proxy): a
        # WebSocket closed for it read as allowed, status 101, in the access log.
        self.rec.reason, self.rec.decision = ErrorReason.ACCESS_ENDED, AccessDecision.DENY
        return False

    def original_url(self) -> str:
        """The URL the client asked for: where sign-in and MFA pages send the browser back to.

        Built only for refusals: percent-encoding it for every request was a measurable share of
        the signed-in hot path.
        """
        return f"{self.proto}://{self.host_raw.decode('latin-1')}{self.path_and_query}"
