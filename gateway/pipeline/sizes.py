"""Response sizes of the answers the gateway writes itself, for the access log.

The proxy stage counts what it streams from an upstream; refusals, error pages and forward-auth
answers are written by the gateway, and their bodies are counted here as they go out, so
``http.response.body.bytes`` is the real size for every request, not 0 for the gateway's own answers.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from gateway.pipeline.asgi import Send
from gateway.pipeline.proxy import ProxyOutcome

__all__ = ["counting"]


def counting(send: Send, outcome: ProxyOutcome) -> Send:
    """``send``, adding every response body's length to ``outcome.bytes_out``."""

    async def send_counted(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            outcome.bytes_out += len(message.get("body", b""))
        await send(message)

    return send_counted
