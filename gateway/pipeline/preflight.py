"""CORS preflights on routes that let them through (``routes[].cors_preflight``).

A browser asks before a cross-origin request that is not "simple" (a JSON POST, a custom header, a
PUT): ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method`` (Fetch standard, §3.2.2), and
never with credentials, so the gateway, which wants a session, would answer 401 and the browser would
never send the real request. On a route with ``cors_preflight: true`` such a request goes to the app
without sign-in, for the app to state its CORS policy; the real request that follows is decided as
any other.

Only what a browser sends passes as a preflight: ``OPTIONS``, both headers, no body, and no credentials
(a browser never sends ``Cookie``, ``Authorization`` or ``Proxy-Authorization`` on one): an ``OPTIONS``
with any of them is decided as any other request (an attack run's forward-auth "preflight" got the
app's cookies back in the answer, and nginx passed its ``Authorization`` on). It reaches the app with
only the headers a browser's preflight has (:func:`preflight_request`, besides those the gateway sets:
the app's ``X-Api-Key`` or ``X-Auth-Token`` a script adds do not pass), and no identity header is
added. What comes back is the
app's status and its CORS headers (``Access-Control-*``, ``Vary``) and the route's own response
headers, never its body or cookies (:func:`preflight_answer`: an app that serves ``OPTIONS`` with its
``GET`` handler would otherwise hand its page to anyone). The access log writes it as ``public`` with
the reason ``cors-preflight``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gateway.pipeline.asgi import Message, Scope, Send
from gateway.pipeline.context import RequestContext
from gateway.pipeline.headers import Headers
from gateway.pipeline.proxy import NO_BODY

__all__ = ["PREFLIGHT", "is_preflight", "let_preflight_through", "preflight_answer", "preflight_request"]

# The access log's gateway.reason for a preflight let through (a value on the wire: never rename it).
PREFLIGHT: Final = "cors-preflight"
_ORIGIN: Final = b"origin"
_REQUEST_METHOD: Final = b"access-control-request-method"
# A browser never sends these on a preflight (Fetch: a CORS-preflight request omits credentials).
_CREDENTIALS: Final = frozenset({b"cookie", b"authorization", b"proxy-authorization"})
# The client's headers a preflight reaches the app with: what a browser's preflight carries (never a
# credential: an OPTIONS with one is no preflight).
_BROWSER_HEADERS: Final = frozenset(
    {
        b"host",
        b"origin",
        b"access-control-request-method",
        b"access-control-request-headers",
        b"access-control-request-private-network",
        b"user-agent",
        b"accept",
        b"accept-language",
        b"accept-encoding",
        b"referer",
        b"sec-fetch-mode",
        b"sec-fetch-site",
        b"sec-fetch-dest",
        b"cache-control",
        b"pragma",
    }
)
# Of the app's answer, besides Access-Control-* and the route's own response headers.
_ANSWER_HEADERS: Final = frozenset({b"vary", b"x-request-id"})
_CORS_PREFIX: Final = b"access-control-"
# Answers that have no body, and so no Content-Length (RFC 9110 §8.6).
_BODILESS: Final = frozenset({204, 304})


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
        elif lname in _CREDENTIALS:
            return False
    return origin and method


def preflight_request(headers: Headers) -> Headers:
    """The client's headers of a preflight let through, as the app gets them: a browser's only."""
    return [(name, value) for name, value in headers if name.lower() in _BROWSER_HEADERS]


def preflight_answer(send: Send, route_headers: Sequence[tuple[bytes, bytes]]) -> Send:
    """``send`` for the answer to a preflight let through: the app's status, its CORS headers and
    ``Vary``, the route's own response headers (``route_headers``) and the request id; no body (an
    error page's neither). The body's messages are swallowed until the last."""
    kept = _ANSWER_HEADERS | {name for name, _ in route_headers}

    async def answer(message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [
                (name, value)
                for name, value in message["headers"]
                if name.startswith(_CORS_PREFIX) or name in kept
            ]
            if status not in _BODILESS and status >= 200:
                headers.append((b"content-length", b"0"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
        elif message["type"] == "http.response.body":
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send(message)

    return answer


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
