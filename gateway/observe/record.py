"""One record per request, filled by the data plane and handed to every observer when it ends.

Observers (the access log, metrics, threat detection) are plain callables registered on the runtime.
They run on the event loop right after the response, so they must only count or enqueue: no I/O, no
waiting. An observer that raises is logged and skipped; it never affects the response (already sent)
or the other observers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from enum import StrEnum

import msgspec

__all__ = ["AccessDecision", "AuthKind", "Observer", "RequestKind", "RequestRecord", "notify"]

logger = logging.getLogger("gateway.observe")


class RequestKind(StrEnum):
    """Which entry of the data plane a request came through (the access log's ``gateway.kind``)."""

    HTTP = "http"
    WEBSOCKET = "websocket"
    # A proxy's sub-request asking about another request (``/.gateway/auth``).
    FORWARD_AUTH = "forward-auth"
    # The gateway's own pages and API under ``/.gateway/``.
    CONTROL = "control"


class AuthKind(StrEnum):
    """How the request proved who it is (the access log's ``gateway.auth``, the metrics' ``auth``).

    ``session``: a browser session cookie; ``bearer``: an API token (a machine client); ``none``:
    nobody was identified (public paths, refusals before or at identification, the gateway's pages).
    """

    SESSION = "session"
    BEARER = "bearer"
    NONE = "none"


class AccessDecision(StrEnum):
    """Who decided a request's fate, and how (the access log's ``gateway.decision``).

    The values are on the wire (access log, metrics labels) where SIEM rules match them: never
    rename one. Only ``ALLOW`` and ``PUBLIC`` mean the request went on; everything else is a refusal.
    """

    # The policy explicitly allowed it (reason ``policy-allow``).
    ALLOW = "allow"
    # A public path of a route, or one of the gateway's own endpoints: no identity needed.
    PUBLIC = "public"
    # Signed in, but the policy, the MFA requirement or a pending password change refused it.
    DENY = "deny"
    # No valid session: go and sign in.
    UNAUTHENTICATED = "unauthenticated"
    # Refused as malformed (path, headers, framing, body) or not routable.
    INVALID = "invalid"
    # The gateway, a store or the upstream failed (5xx).
    ERROR = "error"
    # Nothing decided: the request ended by an unexpected failure before any stage did (written as "").
    UNDECIDED = ""


class RequestRecord(msgspec.Struct, gc=False):
    """What happened to one request. Times: ``at`` Unix seconds; durations in seconds.

    ``decision``: see :class:`AccessDecision`. ``reason`` is the stable reason id the error page and
    JSON body carry: a :class:`gateway.authz.decision.Reason` when the policy decided (``policy-allow``
    for allowed requests), else the refusing error's (a :class:`gateway.errors.ErrorReason` for the
    data plane's own refusals); empty for public requests.
    ``query`` is the raw query string: observers that write it out must redact secret-looking
    parameters (see the access log).

    A msgspec struct rather than a dataclass: one is made per request, and its 25 defaults cost the
    dataclass's generated ``__init__`` ~100 Python bytecodes where the struct's runs in C (it holds
    only strings and numbers, so the garbage collector need not track it).
    """

    at: float
    kind: RequestKind
    request_id: str = ""
    client_ip: str = ""
    user_agent: str = ""
    host: str = ""
    method: str = ""
    path: str = ""
    # The path the app was sent where the policy decided another: with its ";" parameters, which
    # the decision leaves out (gateway.pipeline.route); else "".
    original_path: str = ""
    query: str = ""
    route: str = ""
    user: str = ""
    session: str = ""  # a prefix of the session id's SHA-256, never the id
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    upstream: str = ""
    upstream_seconds: float | None = None
    authz_seconds: float | None = None
    total_seconds: float = 0.0
    decision: AccessDecision = AccessDecision.UNDECIDED
    reason: str = ""
    policy_version: int = 0
    auth: AuthKind = AuthKind.NONE
    # The request's trace and server span (32 and 16 hex digits) when tracing is on, else "".
    trace_id: str = ""
    span_id: str = ""


Observer = Callable[[RequestRecord], None]


def notify(observers: Sequence[Observer], record: RequestRecord) -> None:
    """Hand ``record`` to every observer; one that fails is logged and does not stop the others."""
    for observer in observers:
        try:
            observer(record)
        except Exception:
            logger.exception("observer %r failed", observer)
