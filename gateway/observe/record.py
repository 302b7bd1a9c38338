"""One record per request, filled by the data plane and handed to every observer when it ends.

Observers (the access log, metrics, threat detection) are plain callables registered on the runtime.
They run on the event loop right after the response, so they must only count or enqueue: no I/O, no
waiting. An observer that raises is logged and skipped; it never affects the response (already sent)
or the other observers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Observer", "RequestRecord", "notify"]

logger = logging.getLogger("gateway.observe")


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times: ``at`` Unix seconds; durations in seconds.

    ``decision`` is ``allow`` (policy allowed), ``public`` (a public path or a gateway endpoint),
    ``deny`` (policy or MFA refused), ``unauthenticated`` (no valid session), ``invalid`` (refused as
    malformed before routing) or ``error`` (the gateway or the upstream failed). ``reason`` is the
    stable reason id the error page and JSON body carry (``policy-allow`` for allowed requests).
    ``query`` is the raw query string: observers that write it out must redact secret-looking
    parameters (see the access log).
    """

    at: float
    kind: str  # "http", "websocket", "forward-auth", "control"
    request_id: str = ""
    client_ip: str = ""
    user_agent: str = ""
    host: str = ""
    method: str = ""
    path: str = ""
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
    decision: str = ""
    reason: str = ""
    policy_version: int = 0


Observer = Callable[[RequestRecord], None]


def notify(observers: Sequence[Observer], record: RequestRecord) -> None:
    """Hand ``record`` to every observer; one that fails is logged and does not stop the others."""
    for observer in observers:
        try:
            observer(record)
        except Exception:
            logger.exception("observer %r failed", observer)
