"""CORS preflights on routes that let them through (``routes[].cors_preflight``).

A browser asks before a cross-origin request that is not "simple" (a JSON POST, a custom header, a
PUT): ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method`` (Fetch standard, §3.2.2), and
never with credentials, so the gateway, which wants a session, would answer 401 and the browser would
never send the real request. On a route with ``cors_preflight: true`` such a request goes to the app
without sign-in, for the app to state its CORS policy; the real request that follows is decided as
any other.

Only what a browser sends passes as a preflight: ``OPTIONS``, both headers, no body. It reaches the
app as the browser sends it, without credentials: the client's ``Cookie`` and ``Authorization`` are
removed (the snapshot's ``strip_preflight``) besides what every request loses, so a script cannot use
the exemption to reach the app with the app's own cookie or a password in ``Authorization``, and no
identity header is added. The access log writes it as ``public`` with the reason ``cors-preflight``.
"""

from __future__ import annotations

from typing import Final

from gateway.pipeline.asgi import Scope
from gateway.pipeline.context import RequestContext
from gateway.pipeline.proxy import NO_BODY

__all__ = ["PREFLIGHT", "is_preflight", "let_preflight_through"]

# The access log's gateway.reason for a preflight let through (a value on the wire: never rename it).
PREFLIGHT: Final = "cors-preflight"
_ORIGIN: Final = b"origin"
_REQUEST_METHOD: Final = b"access-control-request-method"


def is_preflight(scope: Scope, ctx: RequestContext) -> bool:
    """Whether the request is a CORS preflight as a browser sends it (see the module docstring)."""
    if ctx.method != "OPTIONS" or ctx.framing.has_body:
        return False
    origin = method = False
    for name, value in scope["headers"]:
        lname = name.lower()
        if lname == _ORIGIN:
            origin = bool(value.strip())
        elif lname == _REQUEST_METHOD:
            method = bool(value.strip())
    return origin and method


def let_preflight_through(scope: Scope, ctx: RequestContext) -> bool:
    """On a route with ``cors_preflight``: whether the request is a preflight, noted in the access
    record's reason when it is (which also tells the upstream stage to send it without credentials)."""
    if not is_preflight(scope, ctx):
        return False
    ctx.rec.reason = PREFLIGHT
    # Without credentials, and without a body: an HTTP/2 preflight could carry one its headers do not
    # announce, which an app would otherwise receive from anyone.
    ctx.framing = NO_BODY
    return True
