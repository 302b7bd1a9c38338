"""The proxy stage gives a target's slot back on every way out, also on cancellation.

A slot that never came back would count as an outstanding request for ever; a target on probation
(one request at a time after an ejection) would then stay out of rotation for good.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.pipeline.proxy import NO_BODY, ProxyOutcome, forward_http
from gateway.pipeline.snapshot import RouteRuntime
from gateway.settings.schema import Duration, PassiveHealthCheck
from gateway.upstream import UpstreamPool
from gateway.upstream.http1 import Http1Client

TARGET = "http://10.0.0.1:8080"


class _Raising:
    """An upstream client whose request raises what the test says (never a network call)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc


def _route(pool: UpstreamPool) -> RouteRuntime:
    return cast(
        RouteRuntime,
        SimpleNamespace(
            pool=pool,
            route=SimpleNamespace(preserve_host=False),
            connect_timeout=1.0,
            read_timeout=1.0,
            max_body_size=1024,
        ),
    )


async def _nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _ignore(message: Any) -> None:
    return None


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), RuntimeError("a bug of ours")])
async def test_the_slot_comes_back_when_the_request_is_abandoned(exc: BaseException) -> None:
    pool = UpstreamPool(
        "app",
        (TARGET,),
        balance="round_robin",
        passive=PassiveHealthCheck(consecutive_failures=1, ejection_time=Duration(30)),
        active=None,
    )
    with pytest.raises(type(exc)):
        await forward_http(
            method="GET",
            path_and_query="/",
            headers=[(b"host", b"app")],
            receive=_nothing,
            send=_ignore,
            rt=_route(pool),
            client=cast(Http1Client, _Raising(exc)),
            request_id="r",
            outcome=ProxyOutcome(),
            body_framing=NO_BODY,
        )
    (row,) = pool.snapshot()
    assert row["outstanding"] == 0
    # Not the target's fault: it is neither counted as failing nor ejected.
    assert row["consecutive_failures"] == 0
    assert row["ejected"] is False
