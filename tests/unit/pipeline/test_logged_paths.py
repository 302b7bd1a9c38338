"""A failed upstream is logged with the request's path redacted as the access log redacts it: a token
in a WebSocket URL's path reached the application log (an attack run)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from gateway.errors import UpstreamError
from gateway.pipeline.entries import HTTP, WEBSOCKET

if TYPE_CHECKING:
    from gateway.pipeline.context import RequestContext

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
PATH = f"/live/{TOKEN}/feed;token=s3cr3t-v4lue"


def context() -> RequestContext:
    return cast(
        "RequestContext",
        SimpleNamespace(
            rec=SimpleNamespace(status=0), outcome=SimpleNamespace(status=0), fwd=None, accept=b""
        ),
    )


async def ignore(message: Any) -> None:
    return None


async def test_a_failed_websocket_upstream_logs_the_path_redacted(caplog: Any) -> None:
    scope = {"type": "websocket", "path": PATH}
    with caplog.at_level(logging.WARNING, "gateway.pipeline"):
        await WEBSOCKET.refuse(
            context(), scope, ignore, UpstreamError("The application refused the WebSocket.")
        )
    assert "/live/[REDACTED]/feed;token=[REDACTED]" in caplog.text
    assert TOKEN not in caplog.text
    assert "s3cr3t" not in caplog.text


async def test_a_failed_http_upstream_logs_the_path_redacted(caplog: Any) -> None:
    scope = {"type": "http", "method": "GET", "path": PATH}
    with caplog.at_level(logging.WARNING, "gateway.pipeline"):
        await HTTP.refuse(context(), scope, ignore, UpstreamError("Could not connect to the application."))
    assert "GET /live/[REDACTED]/feed;token=[REDACTED]" in caplog.text
    assert TOKEN not in caplog.text
    assert "s3cr3t" not in caplog.text
