"""The bundled echo app: shows what the gateway passed on.

It answers every request with the request line and the headers it received (HTML for browsers,
JSON otherwise), so a quick-start user sees exactly which identity and forwarding headers an upstream
gets. It also serves a few endpoints the tests and benchmarks use:

- ``/__echo/bytes/{n}``  streams n bytes (download tests; memory stays flat),
- ``/__echo/upload``     counts the bytes of the request body without keeping them,
- ``/__echo/status/{code}`` answers with that status,
- ``/__echo/sleep/{seconds}`` waits, then answers (timeout tests),
- a WebSocket on any path that echoes each message back.

Run it alone with ``gateway echo --listen 127.0.0.1:9000``.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

__all__ = ["CLOSE_MESSAGE", "app"]

#: A WebSocket text message the echo app answers by closing the socket itself (code 4000).
CLOSE_MESSAGE: Final = "__echo/close"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CHUNK = b"x" * 65536


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI entry point."""
    if scope["type"] == "http":
        await _http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _websocket(receive, send)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    if path.startswith("/__echo/"):
        await _special(path[len("/__echo/") :], scope, receive, send)
        return
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    raw_path = scope.get("raw_path") or path.encode()
    query = scope.get("query_string", b"")
    target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    accept = next((v for k, v in headers if k == "accept"), "")
    info = {
        "method": scope["method"],
        "target": target,
        "http_version": scope.get("http_version", "1.1"),
        "headers": headers,
        "body_bytes": received,
        "client": list(scope["client"]) if scope.get("client") else None,
    }
    if "text/html" in accept:
        body = _page(info).encode()
        ctype = b"text/html; charset=utf-8"
    else:
        body = json.dumps(info).encode()
        ctype = b"application/json"
    await _respond(send, 200, body, ctype)


async def _special(rest: str, scope: Scope, receive: Receive, send: Send) -> None:
    verb, _, arg = rest.partition("/")
    if verb == "bytes":
        await _drain(receive)
        remaining = int(arg or "0")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(remaining).encode()),
                ],
            }
        )
        while remaining > 0:
            chunk = _CHUNK if remaining >= len(_CHUNK) else _CHUNK[:remaining]
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
        if not int(arg or "0"):
            await send({"type": "http.response.body", "body": b""})
    elif verb == "upload":
        count = await _drain(receive)
        await _respond(send, 200, json.dumps({"body_bytes": count}).encode(), b"application/json")
    elif verb == "status":
        await _drain(receive)
        await _respond(send, int(arg), b"status " + arg.encode(), b"text/plain")
    elif verb == "sleep":
        await _drain(receive)
        await asyncio.sleep(float(arg))
        await _respond(send, 200, b"slept", b"text/plain")
    else:
        await _respond(send, 404, b"unknown echo endpoint", b"text/plain")


async def _drain(receive: Receive) -> int:
    count = 0
    while True:
        message = await receive()
        count += len(message.get("body", b""))
        if not message.get("more_body"):
            return count


async def _respond(send: Send, status: int, body: bytes, ctype: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _websocket(receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == CLOSE_MESSAGE:
            # The app closing first (what a test of a proxy's close handling needs).
            await send({"type": "websocket.close", "code": 4000, "reason": "echo closed"})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


def _page(info: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in info["headers"])
    line = html.escape(f"{info['method']} {info['target']} HTTP/{info['http_version']}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Echo app</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2433}}
main{{max-width:920px;margin:40px auto;padding:0 20px}}
h1{{font-size:1.4rem;margin:0 0 4px}} p{{color:#5b6475;margin:0 0 20px}}
code.line{{display:block;background:#1d2433;color:#e8ecf3;padding:14px 16px;border-radius:8px;font-size:.95rem}}
table{{width:100%;border-collapse:collapse;margin-top:20px;background:#fff;border-radius:8px;overflow:hidden;
box-shadow:0 1px 3px rgba(0,0,0,.08)}}
th,td{{text-align:left;padding:8px 14px;border-bottom:1px solid #eceef2;font-size:.9rem;vertical-align:top}}
th{{width:32%;font-weight:600;color:#394257;font-family:ui-monospace,monospace}}
td{{font-family:ui-monospace,monospace;word-break:break-all}}
</style></head><body><main>
<h1>Echo app</h1>
<p>This is what the upstream received from the gateway.</p>
<code class="line">{line}</code>
<table>{rows}</table>
</main></body></html>"""
