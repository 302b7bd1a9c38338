"""Forward-auth: deciding for a proxy that keeps its own routing (``/.gateway/auth``).

nginx ``auth_request``, Traefik ForwardAuth, Caddy ``forward_auth`` and Envoy's HTTP ext_authz send the
gateway a sub-request describing the original one in ``X-Forwarded-Method``, ``-Proto``, ``-Host`` and
``-Uri``, with the client's own headers (its cookie). The gateway decides it with the same route,
identify, MFA and authorize stages as a proxied request, on the same canonical path.

Those headers are believed only from a trusted proxy (``trusted_proxies``): from anyone else they are
a forgery, and the answer is 403. Missing, repeated or malformed values are 400. The answer is 200 —
with the identity headers for the proxy to copy — only for an explicit allow (or a public path);
everything else is 401 (with ``Location``, the sign-in or MFA page) or 403, so a proxy that treats
"not 2xx" as "deny" can never be talked into letting a request through.

In the data plane's stage sequence, forward-auth is an entry of its own: :func:`retarget` makes the
original request the one the stages decide, :func:`answer_allowed` and :func:`answer_refused` are
how it answers instead of proxying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from gateway.errors import BadHeaders, ErrorReason, Forbidden, GatewayError
from gateway.pipeline.asgi import Scope, Send
from gateway.pipeline.bearer import BearerChallenge
from gateway.pipeline.context import RequestContext
from gateway.pipeline.headers import (
    DEFAULT_IDENTITY_NAMES,
    REROUTING,
    foreign_identity,
    normalize_name,
    speaks_identity,
    without_cookies,
)
from gateway.pipeline.lockdown import LockedDown
from gateway.web.error_pages import wants_html

__all__ = [
    "FORWARD_AUTH_PATH",
    "ClientIdentityHeaders",
    "ClientReroutingHeaders",
    "ForwardedRequest",
    "UnknownTarget",
    "UntrustedProxy",
    "answer_allowed",
    "answer_refused",
    "app_cookies",
    "forwarded_request",
    "is_forward_auth",
    "refuse_client_headers",
    "retarget",
]

FORWARD_AUTH_PATH = "/.gateway/auth"


def is_forward_auth(path: str) -> bool:
    """Whether a control path asks a forward-auth question: the path itself, or one below it (Envoy's
    ``ext_authz`` appends the request's path to its ``path_prefix``; the question is still the one the
    ``X-Forwarded-*`` headers describe, never that path)."""
    return path == FORWARD_AUTH_PATH or path.startswith(FORWARD_AUTH_PATH + "/")


_METHOD = re.compile(rb"[A-Z]{1,20}")
_PROTO = (b"http", b"https")
_WANTED = {
    b"x-forwarded-method": "method",
    b"x-forwarded-proto": "proto",
    b"x-forwarded-host": "host",
    b"x-forwarded-uri": "uri",
}


class UntrustedProxy(Forbidden):
    """A forward-auth request from an address that is not a trusted proxy (403)."""

    reason: str = ErrorReason.UNTRUSTED_PROXY
    title = "Not a trusted proxy"


class ClientIdentityHeaders(Forbidden):
    """The request a proxy asks about carries identity headers from the client (403).

    On a proxied request the gateway strips them; here it cannot, since the proxy forwards the
    original itself, and a proxy that does not set or remove every name (a route's own
    ``identity_headers`` names, an example that lists only some) would hand them to the app.
    """

    reason: str = "client-identity-headers"
    title = "Identity headers from the client"


class ClientReroutingHeaders(Forbidden):
    """The request a proxy asks about carries a header that makes apps serve another path or method
    (``X-Original-URL``, ``X-HTTP-Method-Override``, ``X-Script-Name`` …, 403).

    The decision is for the method and path in ``X-Forwarded-Method`` and ``-Uri``; an app that honours
    one of these would serve something else with it (an attack run: a GET allowed on ``/x`` reached the
    app with ``X-HTTP-Method-Override: DELETE`` and ``X-Original-URL: /admin/users/1``). A proxied
    request loses them; here the proxy forwards the original itself.
    """

    reason: str = "client-rerouting-headers"
    title = "Path or method override headers from the client"


class UnknownTarget(Forbidden):
    """No route for the request a proxy asks about: 403 ``no-route`` (a proxy turns a 404 into a 500)."""

    reason: str = ErrorReason.NO_ROUTE


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """The original request a proxy asks about."""

    method: str
    proto: str
    host: bytes
    raw_path: bytes
    query: bytes


def forwarded_request(headers: list[tuple[bytes, bytes]], *, peer_trusted: bool) -> ForwardedRequest:
    """Read the original request from the forward-auth headers.

    ``X-Forwarded-Host`` is required. It fell back to the sub-request's own ``Host`` once, which names
    the gateway as the proxy reached it, not the application: nginx leaves the header out when the
    client sent no Host (HTTP/1.0), and an attack run had such a request decided against the route of
    the ``proxy_pass`` host instead of the application's, which allowed a POST the application's
    route denies.

    Raises:
        UntrustedProxy: the sender is not a trusted proxy.
        BadHeaders: a header is missing, repeated or malformed.
    """
    if not peer_trusted:
        raise UntrustedProxy("Forward-auth answers only the proxies listed in trusted_proxies.")
    seen: dict[str, bytes] = {}
    for name, value in headers:
        key = _WANTED.get(normalize_name(name))
        if key is None:
            continue
        if key in seen:
            # Two values: the proxy and something before it disagree about the request. Refuse.
            raise BadHeaders(f"Forward-auth got more than one X-Forwarded-{key.title()} header.")
        seen[key] = value.strip()
    method = seen.get("method", b"")
    if not _METHOD.fullmatch(method):
        raise BadHeaders("Forward-auth needs X-Forwarded-Method with the original request's method.")
    proto = seen.get("proto", b"http").lower()
    if proto not in _PROTO:
        raise BadHeaders("X-Forwarded-Proto must be http or https.")
    uri = seen.get("uri", b"")
    if not uri.startswith(b"/") or uri.startswith(b"//"):
        # Absolute or scheme-relative URIs name another authority: never guess which one counts.
        raise BadHeaders("Forward-auth needs X-Forwarded-Uri with the original path (starting with '/').")
    if b"#" in uri or any(c < 0x21 or c == 0x7F for c in uri):
        raise BadHeaders("X-Forwarded-Uri contains characters a request target cannot have.")
    host = seen.get("host", b"")
    if not host:
        raise BadHeaders("Forward-auth needs X-Forwarded-Host with the original request's host.")
    raw_path, _, query = uri.partition(b"?")
    return ForwardedRequest(
        method=method.decode(),
        proto=proto.decode(),
        host=host,
        raw_path=raw_path,
        query=query,
    )


def retarget(scope: Scope, ctx: RequestContext) -> bytes:
    """The forward-auth entry's receive: the request the proxy asks about becomes the one decided.

    Its method, scheme, host and query replace the sub-request's in ``ctx``; returns its raw path
    for the canonical stage.

    Raises:
        UntrustedProxy, BadHeaders: see :func:`forwarded_request`.
    """
    original = forwarded_request(scope["headers"], peer_trusted=ctx.fwd is not None and ctx.fwd.peer_trusted)
    ctx.method = original.method
    ctx.proto = original.proto
    ctx.host_raw = original.host
    ctx.query = original.query
    return original.raw_path


# The names outside ``identity_headers`` an allowed answer may carry (identity_headers fixes the other three).
_ALWAYS_NAMED: Final = (b"x-gateway-assertion", b"x-gateway-auth")
# The proxy must not cache an answer about one request for another; there is never a body.
_NO_STORE: Final = ((b"cache-control", b"no-store"), (b"content-length", b"0"))


def refuse_client_headers(headers: list[tuple[bytes, bytes]], names: frozenset[bytes]) -> None:
    """Raise :class:`ClientIdentityHeaders` if the client sent a header the gateway speaks identity
    in, in any spelling (case, ``_`` for ``-``): exactly those a proxied request loses
    (``names``: the snapshot's ``strip_identity``, every route's configured names), or one other
    gateways speak it in (``Remote-User``, ``X-Forwarded-User``: apps written for them trust these); and
    :class:`ClientReroutingHeaders` for a path or method override (``REROUTING``), also lost there, and
    for an upgrade to another protocol than WebSocket (``Upgrade: h2c``, ``HTTP2-Settings``): the proxy
    would tunnel the connection to the app after its 101, and every request sent in the tunnel reached
    the app undecided, with any identity headers (an attack run, through nginx and Caddy to hypercorn)."""
    for name, value in headers:
        normal = normalize_name(name)
        if normal == b"http2-settings" or (normal == b"upgrade" and value.strip().lower() != b"websocket"):
            raise ClientReroutingHeaders(
                f"The request asks the app to switch to another protocol ({name.decode('latin-1')[:40]}: "
                f"{value.decode('latin-1')[:40]}): requests sent after the switch would reach the app without "
                "being decided. The proxy in front must not pass it on (README, Forward-auth)."
            )
        if speaks_identity(normal, names) or foreign_identity(normal):
            raise ClientIdentityHeaders(
                f"The request carries {name.decode('latin-1')[:60]!r}, an identity header only the gateway "
                "sets: the proxy in front must remove it from what clients send (README, Forward-auth)."
            )
        if normal in REROUTING:
            raise ClientReroutingHeaders(
                f"The request carries {name.decode('latin-1')[:60]!r}, which makes apps serve another path, "
                "method or host than the one decided, or skip their own checks: the proxy in front must "
                "remove it from what clients send (README, Forward-auth)."
            )


#: The answer's copy of the request's cookies without the gateway's own, for the proxy to send the app.
APP_COOKIE: Final = b"x-gateway-cookie"


def app_cookies(headers: list[tuple[bytes, bytes]], own: frozenset[bytes]) -> bytes:
    """The request's ``Cookie`` headers as one value, without the gateway's own cookies (``own``).

    A proxied request loses those cookies; in forward-auth the proxy forwards the client's request
    itself, and an attack run read the session cookie off the app and replayed it on another route.
    The proxy sets ``Cookie`` to this value (:data:`APP_COOKIE` in the answer; README, Forward-auth).
    """
    found = [value for name, value in headers if name == b"cookie"]  # ASGI names are lower-case
    return without_cookies(b"; ".join(found), own) if found else b""


async def answer_allowed(
    send: Send, ctx: RequestContext, identity: tuple[tuple[bytes, bytes], ...], cookies: bytes
) -> None:
    """200, with the identity headers for the proxy to copy onto the request it forwards: every name
    the gateway may send, empty where this request has none (a public path, a person's session has
    no ``X-Gateway-Auth``, a machine client no email). A proxy copies a fixed list: nginx then drops
    each empty one, the client's copy included, and Caddy sets it empty; a name missing from the
    answer would leave the client's own value (or Caddy's unresolved placeholder) for the app.
    ``cookies``: the request's cookies but the gateway's own (:func:`app_cookies`), always named."""
    request_id = ctx.fwd.request_id if ctx.fwd else ""
    ctx.rec.status = 200
    names = ctx.rt.identity_names if ctx.rt is not None else DEFAULT_IDENTITY_NAMES
    present = {name for name, _ in identity}
    every = dict.fromkeys((*names, *DEFAULT_IDENTITY_NAMES, *_ALWAYS_NAMED))
    empty = [(name, b"") for name in every if name not in present]
    request = (b"x-request-id", request_id.encode())
    # Also as ``Cookie``, for proxies that copy an answer's header under its own name only (Traefik's
    # authResponseHeaders replaces the request's copy of each name it lists).
    await _answer(
        send, 200, [*_NO_STORE, *identity, *empty, (APP_COOKIE, cookies), (b"cookie", cookies), request]
    )


async def answer_refused(send: Send, scope: Scope, ctx: RequestContext, err: GatewayError) -> None:
    """401 or 403 (or 400/5xx as they are) with the reason id; never a 2xx."""
    # Proxies understand 2xx, 401 and 403 (nginx turns anything else into a 500): a missing
    # route is a 403, a sign-in or MFA page is a 401 with Location. ``?redirect=1`` (Caddy,
    # Traefik, which pass the answer on to the client) makes it a 302 for browsers instead.
    headers = [*_NO_STORE, (b"x-gateway-reason", err.reason.encode())]
    if err.location:
        headers.append((b"location", err.location.encode("latin-1")))
        redirect = b"redirect=1" in scope.get("query_string", b"").split(b"&")
        status = 302 if redirect and wants_html(ctx.accept) else 401
    elif err.status in (400, 401, 403) or err.status >= 500:
        status = err.status
    else:
        status = 403
    if isinstance(err, BearerChallenge):
        headers.append((b"www-authenticate", err.challenge))
    if isinstance(err, LockedDown):
        # The proxy in front may pass it on (Caddy, Traefik): clients then know when to come back.
        headers.append((b"retry-after", str(err.retry_after).encode()))
    ctx.rec.status = status
    request_id = ctx.fwd.request_id if ctx.fwd else ""
    headers.append((b"x-request-id", request_id.encode()))
    await _answer(send, status, headers)


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
