"""What passes as a browser's CORS preflight: OPTIONS, Origin and Access-Control-Request-Method, no body."""

from __future__ import annotations

import pytest

from gateway.observe.record import RequestKind
from gateway.pipeline.context import RequestContext
from gateway.pipeline.preflight import PREFLIGHT, is_preflight, let_preflight_through
from gateway.pipeline.proxy import BodyFraming

BROWSER = [(b"origin", b"https://spa.example.com"), (b"access-control-request-method", b"PUT")]


def _ctx(method: str = "OPTIONS", framing: BodyFraming | None = None) -> RequestContext:
    ctx = RequestContext(RequestKind.HTTP, method)
    if framing is not None:
        ctx.framing = framing
    return ctx


def test_a_browsers_preflight_passes_and_is_noted() -> None:
    ctx = _ctx()
    assert let_preflight_through({"headers": BROWSER}, ctx)
    assert ctx.rec.reason == PREFLIGHT
    # Header names as a client may spell them (ASGI servers lower-case them; the check does not rely on it).
    assert is_preflight({"headers": [(b"Origin", b"x"), (b"Access-Control-Request-Method", b"GET")]}, _ctx())


@pytest.mark.parametrize(
    ("method", "headers", "framing"),
    [
        ("GET", BROWSER, None),
        ("OPTIONS", BROWSER[:1], None),
        ("OPTIONS", BROWSER[1:], None),
        ("OPTIONS", [(b"origin", b"  "), BROWSER[1]], None),
        ("OPTIONS", [BROWSER[0], (b"access-control-request-method", b"")], None),
        ("OPTIONS", BROWSER, BodyFraming(content_length=7)),
        ("OPTIONS", BROWSER, BodyFraming(chunked=True)),
    ],
)
def test_anything_else_is_not_a_preflight(
    method: str, headers: list[tuple[bytes, bytes]], framing: BodyFraming | None
) -> None:
    ctx = _ctx(method, framing)
    assert not let_preflight_through({"headers": headers}, ctx)
    assert ctx.rec.reason != PREFLIGHT


def test_an_empty_body_is_still_a_preflight() -> None:
    assert is_preflight({"headers": BROWSER}, _ctx(framing=BodyFraming(content_length=0)))
