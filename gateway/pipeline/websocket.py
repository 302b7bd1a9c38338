"""WebSocket proxying: one upstream WebSocket per client WebSocket, messages pumped both ways.

The upstream handshake happens before the client's is accepted, so a client only gets an open socket
when the application really accepted it; the subprotocol the upstream chose is passed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import aiohttp
from yarl import URL

from gateway.errors import UpstreamError
from gateway.pipeline.asgi import Receive, Scope, Send
from gateway.pipeline.proxy import WATCH_INTERVAL, Watched
from gateway.pipeline.snapshot import RouteRuntime

__all__ = ["forward_websocket"]

# "No status" passed on as a normal close; any other code a peer may not send (RFC 6455 §7.4: 1004,
# 1006, 1015, 1016-2999, 5000 and up) as an internal error.
_NO_STATUS: Final = 1005


def _sendable(code: int | None) -> int:
    """``code`` as a close frame may carry it (a re-attack run saw 1005 sent to the app, and an app's
    5000 reach the client as a dropped connection)."""
    if code is None or code == _NO_STATUS:
        return 1000
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1011


logger = logging.getLogger("gateway.proxy")


async def forward_websocket(
    *,
    scope: Scope,
    path_and_query: str,
    headers: list[tuple[bytes, bytes]],
    receive: Receive,
    send: Send,
    rt: RouteRuntime,
    session: aiohttp.ClientSession,
    watch: Watched | None = None,
) -> str:
    """Proxy a WebSocket, closed (1008) once ``watch`` no longer lets the request through (checked every
    ``WATCH_INTERVAL``). Returns the target URL used. Raises UpstreamError if the handshake fails."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return ""
    target = rt.pool.pick()
    base = target.url.replace("http", "ws", 1) + target.base_path
    str_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
    if not rt.route.preserve_host:
        host = target.authority.decode("latin-1")
        str_headers = [(k, host if k == "host" else v) for k, v in str_headers]
    # The route's upstream_tls as the HTTP client uses it (pin included: checked in the handshake).
    tls = target.tls
    try:
        upstream = await session.ws_connect(
            URL(base + path_and_query, encoded=True),
            headers=str_headers,
            protocols=tuple(scope.get("subprotocols") or ()),
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10),
            autoclose=False,
            autoping=True,
            max_msg_size=16 * 1024 * 1024,
            ssl=True if tls is None else tls.context,
            server_hostname=None if tls is None else tls.server_name,
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        rt.pool.release(target, ok=isinstance(exc, aiohttp.WSServerHandshakeError))
        if isinstance(exc, aiohttp.ClientSSLError):
            logger.warning("route %s: TLS with upstream %s failed: %s", rt.route.name, target.url, exc)
        # Closing before accepting makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1011})
        raise UpstreamError(f"The application refused the WebSocket ({type(exc).__name__}).") from exc
    rt.pool.responded(target)  # the handshake was answered: a probation ends now, not at close
    try:
        await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
        await _pump(upstream, receive, send, watch)
    finally:
        rt.pool.release(target, ok=True)
        await upstream.close()
    return target.url


async def _pump(
    upstream: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send, watch: Watched | None = None
) -> None:
    async def upstream_to_client() -> None:
        async for msg in upstream:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": msg.data})
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": msg.data})
            else:
                break

    client = asyncio.ensure_future(_client_to_upstream(receive, upstream))
    app = asyncio.ensure_future(upstream_to_client())
    watchdog = asyncio.ensure_future(_access_ends(watch)) if watch is not None else None
    tasks = [client, app] if watchdog is None else [client, app, watchdog]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    # The client's pump is stopped before a close goes out to the client: the server sends a close
    # only once the receive pending in it has returned, which is when the client sends again (attack
    # runs: a silent client kept its socket, and its next message, seconds later, still reached the
    # app, after access had ended or after the app had closed).
    if _ended(watchdog):
        await upstream.close(code=1000)
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": 1008, "reason": "access ended"})
    elif _ended(app):
        code = _sendable(upstream.close_code)
        await upstream.close()  # the app's close answered (autoclose is off)
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})


def _ended(task: asyncio.Future[None] | None) -> bool:
    """Whether ``task`` ran to its end (not cancelled, no exception)."""
    return task is not None and task.done() and not task.cancelled() and task.exception() is None


async def _client_to_upstream(receive: Receive, upstream: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(code=_sendable(message.get("code")))
            return
        if message.get("text") is not None:
            await upstream.send_str(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send_bytes(message["bytes"])


async def _access_ends(watched: Watched) -> None:
    """Return once access has ended: the stages decided at the handshake, and an account, a session,
    a token or an address can be shut out while the socket lasts (:mod:`gateway.pipeline.watch`)."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        if not await watched.still_allowed():
            return
