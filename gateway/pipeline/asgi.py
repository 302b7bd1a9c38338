"""ASGI type aliases shared by the data plane (kept loose: servers add their own keys)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import BodyTimeout

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "receive_body_within"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def receive_body_within(receive: Receive, seconds: float) -> Message:
    """The next ASGI message while a request body is still coming, waiting at most ``seconds``
    (``limits.body_timeout``): a client that stops sending mid-body must not hold its request slot.

    Raises:
        BodyTimeout: nothing came in time (408; the connection closes).
    """
    try:
        async with asyncio.timeout(seconds):
            return await receive()
    except TimeoutError:
        raise BodyTimeout(f"No part of the request body came for {seconds:g} s.") from None
