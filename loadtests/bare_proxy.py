"""The bare ASGI pass-through: the baseline the gateway's data plane is measured against.

This is the minimal *correct* streaming reverse proxy, written as a plain ASGI app so that it runs on the
same server (granian) with the same flags as the gateway. It does nothing the gateway does (no session, no
policy, no identity headers, no access log); it only does what every reverse proxy must do:

- forward method, raw path, query string and headers (minus hop-by-hop headers, including any named in
  ``Connection``) to the upstream, keeping ``Host`` as the client sent it;
- stream the request body to the upstream and the response body back, never buffering a whole body;
- reuse upstream connections from one shared keep-alive pool (one ``aiohttp.ClientSession``);
- never follow redirects, never decompress, never keep cookies (a proxy must not have a cookie jar);
- answer 502 when the upstream cannot be reached.

It is lean on purpose (the gateway must keep 80% of its throughput), but it does not cut corners that a
real proxy could not cut. WebSockets are not proxied (closed with 1011): the benchmark is HTTP.

Two upstream clients, chosen with ``BARE_PROXY_CLIENT``: ``aiohttp`` (default; one
``aiohttp.ClientSession``, what a Python proxy is usually built on) or ``http1``, the gateway's own
upstream client (:mod:`gateway.upstream.http1`). The second shows what the gateway's pipeline costs
on top of the very same proxying: the gateway's guard measures against both.

The upstream comes from the environment variable ``BARE_PROXY_UPSTREAM`` (default
``http://127.0.0.1:9000``). Run it with::

    BARE_PROXY_UPSTREAM=http://127.0.0.1:9000 python -m granian --interface asgi --workers 1 \
        --loop uvloop --no-access-log loadtests.bare_proxy:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from yarl import URL

from gateway.upstream.http1 import Http1Client, UpstreamConnectError, UpstreamProtocolError
from gateway.upstream.target import Target

__all__ = ["HOP_BY_HOP", "app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM = os.environ.get("BARE_PROXY_UPSTREAM", "http://127.0.0.1:9000").rstrip("/")
CLIENT = os.environ.get("BARE_PROXY_CLIENT", "aiohttp")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_session: aiohttp.ClientSession | None = None


def _new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        # Forward exactly what the client sent: no invented User-Agent, Accept(-Encoding), Content-Type.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )


def _session_now() -> aiohttp.ClientSession:
    global _session
    if _session is None or _session.closed:
        _session = _new_session()
    return _session


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def _filter(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers, including any the ``Connection`` header names."""
    drop = HOP_BY_HOP | _connection_tokens(headers)
    return [(k, v) for k, v in headers if k.lower() not in drop]


def _may_have_body(scope: Scope) -> bool:
    """HTTP/1.1 frames a request body only with Content-Length or Transfer-Encoding (RFC 9112 §6.1).

    Skipping ``receive()`` for body-less requests saves a round trip through the server; HTTP/2 can
    carry a body without either header, so it always reads.
    """
    if scope.get("http_version", "1.1") not in ("1.1", "1.0"):
        return True
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _body_stream(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away during the request body")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    target = raw_path + (b"?" + query if query else b"")
    url = URL(UPSTREAM + target.decode("latin-1"), encoded=True)
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in _filter(scope["headers"])]

    data: bytes | AsyncIterator[bytes] | None = None
    if _may_have_body(scope):
        first = await receive()
        if first.get("more_body"):
            data = _body_stream(first.get("body", b""), receive)
        else:
            data = first.get("body", b"") or None

    try:
        async with _session_now().request(
            scope["method"], url, headers=headers, data=data, allow_redirects=False
        ) as resp:
            out = [(k.lower(), v) for k, v in resp.raw_headers]
            await send({"type": "http.response.start", "status": resp.status, "headers": _filter(out)})
            content = resp.content
            while True:
                chunk = await content.readany()
                if not chunk:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                more = not content.at_eof()
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        await _bad_gateway(send, exc)


_http1: Http1Client | None = None
_target: Target | None = None


async def _http_lean(scope: Scope, receive: Receive, send: Send) -> None:
    """The same pass-through on the gateway's HTTP/1.1 client (headers stay bytes end to end)."""
    if _http1 is None or _target is None:
        _start_http1()
    assert _http1 is not None
    assert _target is not None
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    target = (raw_path + (b"?" + query if query else b"")).decode("latin-1")
    headers = _filter(scope["headers"])
    chunked = False
    body: AsyncIterator[bytes] | None = None
    if _may_have_body(scope):
        chunked = not any(k == b"content-length" for k, _ in headers)
        body = _body_stream(b"", receive)
    try:
        resp = await _http1.request(
            _target,
            scope["method"],
            target,
            headers,
            body,
            chunked=chunked,
            connect_timeout=5,
            read_timeout=60,
        )
    except (UpstreamConnectError, UpstreamProtocolError, TimeoutError) as exc:
        await _bad_gateway(send, exc)
        return
    try:
        await send({"type": "http.response.start", "status": resp.status, "headers": _filter(resp.headers)})
        async for chunk in resp.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        resp.release()


def _start_http1() -> None:
    global _http1, _target
    _http1 = Http1Client(max_connections=512)
    _target = Target.from_url(UPSTREAM)


async def _bad_gateway(send: Send, exc: BaseException) -> None:
    body = f"bad gateway: {type(exc).__name__}\n".encode()
    headers_out = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    try:
        await send({"type": "http.response.start", "status": 502, "headers": headers_out})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # noqa: BLE001 - response already started or client gone; nothing to add
        return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI entry point."""
    global _session
    kind = scope["type"]
    if kind == "http":
        await (_http_lean if CLIENT == "http1" else _http)(scope, receive, send)
    elif kind == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1011})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _session_now()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                    _session = None
                await send({"type": "lifespan.shutdown.complete"})
                return
