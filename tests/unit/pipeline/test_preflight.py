"""What passes as a browser's CORS preflight: OPTIONS, Origin and Access-Control-Request-Method, no body."""

from __future__ import annotations

import pytest

from gateway.observe.record import RequestKind
from gateway.pipeline.context import RequestContext
from gateway.pipeline.preflight import PREFLIGHT, is_preflight, let_preflight_through, preflight_answer
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
        # A browser never sends credentials on a preflight (an attack run's forward-auth "preflight"
        # got the app's cookies back, and the proxy passed its Authorization on).
        ("OPTIONS", [*BROWSER, (b"cookie", b"app=1")], None),
        ("OPTIONS", [*BROWSER, (b"Cookie", b"")], None),
        ("OPTIONS", [*BROWSER, (b"authorization", b"Basic eDp5")], None),
        ("OPTIONS", [(b"proxy-authorization", b"Basic eDp5"), *BROWSER], None),
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


async def test_the_answer_to_a_preflight_is_its_status_and_cors_headers_only() -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    answer = preflight_answer(send, [(b"strict-transport-security", b"max-age=2")])  # type: ignore[arg-type]
    headers = [
        (b"access-control-allow-origin", b"https://spa.example.com"),
        (b"vary", b"Origin"),
        (b"set-cookie", b"app=1"),
        (b"content-type", b"text/html"),
        (b"content-length", b"5"),
        (b"strict-transport-security", b"max-age=1"),
        (b"x-request-id", b"r1"),
    ]
    await answer({"type": "http.response.start", "status": 200, "headers": headers})
    await answer({"type": "http.response.body", "body": b"PA", "more_body": True})
    await answer({"type": "http.response.body", "body": b"GE", "more_body": False})
    assert sent == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"access-control-allow-origin", b"https://spa.example.com"),
                (b"vary", b"Origin"),
                (b"strict-transport-security", b"max-age=1"),
                (b"x-request-id", b"r1"),
                (b"content-length", b"0"),
            ],
        },
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    sent.clear()
    await answer({"type": "http.response.start", "status": 204, "headers": []})
    assert sent[0]["headers"] == []  # no Content-Length on a 204
