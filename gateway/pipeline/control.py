"""Requests for the gateway's own pages and API (``/.gateway/``): handed to the control-plane app.

The control app sees the canonical path, the real client address (as decided from the trusted
proxies) and never a client-supplied identity header or request id. Its pages answer only on the
auth host and the routes' hosts (:mod:`gateway.pipeline.page_hosts`, checked before this).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from gateway.errors import BodyTimeout, GatewayError
from gateway.observe.record import AccessDecision
from gateway.pipeline.asgi import ASGIApp, Receive, Scope, Send, receive_body_within
from gateway.pipeline.context import RequestContext
from gateway.pipeline.headers import normalize_name
from gateway.pipeline.receive import BrokenBody

__all__ = ["hand_to_control"]


class _ControlBody:
    """The control app's ``receive``: a broken request body becomes :class:`BrokenBody` (a 400).

    granian reports a malformed chunked body as ``http.disconnect`` (see the data plane's sequence);
    Litestar would answer that with a 500. Raised from ``receive``, the gateway's own error handler
    answers it.
    """

    __slots__ = ("_receive", "broken", "complete", "read", "timeout")

    def __init__(self, receive: Receive, timeout: float) -> None:
        self._receive = receive
        self.timeout = timeout
        # The refusal of an incomplete body (malformed, or stopped coming), once there is one.
        self.broken: GatewayError | None = None
        self.complete = False
        # The body's bytes the control app read (``http.request.body.bytes``).
        self.read = 0

    async def receive(self) -> MutableMapping[str, Any]:
        if self.complete:  # afterwards receive() waits for the client to leave: no time limit
            return await self._receive()
        try:
            message = await receive_body_within(self._receive, self.timeout)
        except BodyTimeout as timeout:
            self.broken = timeout
            raise
        if message["type"] == "http.request":
            self.read += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect" and not self.complete:
            self.broken = BrokenBody("The request body is malformed or ended early.")
            raise self.broken
        return message


async def hand_to_control(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    path: str,
    ctx: RequestContext,
    body_timeout: float,
) -> None:
    """Run the control app on this request, noting its status (and a broken body) in the record, and
    its body's size and the request body's it read in the outcome (``http.response.body.bytes``,
    ``http.request.body.bytes``: an attack run found a sign-in form's body logged as 0 bytes)."""
    headers = [
        (n, v)
        for n, v in scope["headers"]
        if not normalize_name(n).startswith(b"x-gateway-") and n != b"x-request-id"
    ]
    if ctx.fwd is not None:
        headers.append((b"x-request-id", ctx.fwd.request_id.encode()))
    inner = dict(scope)
    inner.update(path=path, raw_path=path.encode(), headers=headers, root_path="")
    if ctx.fwd is not None:
        inner["client"] = (ctx.fwd.client_ip, 0)
    inner.setdefault("state", {})
    rec = ctx.rec
    body = _ControlBody(receive, body_timeout)

    async def send_and_note(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            rec.status = int(message["status"])
            if body.broken:  # see answer_error: nothing after a broken body may count as a request
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
                rec.decision, rec.reason = AccessDecision.INVALID, body.broken.reason
        elif message["type"] == "http.response.body":
            ctx.outcome.bytes_out += len(message.get("body", b""))
        await send(message)

    framing = ctx.framing
    try:
        await app(inner, body.receive if framing.has_body or framing.unsized else receive, send_and_note)
    finally:
        ctx.outcome.bytes_in = body.read
