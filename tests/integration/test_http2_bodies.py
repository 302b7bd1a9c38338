"""Request bodies over HTTP/2, where a body may end with its stream instead of a Content-Length.

An attack run: ``curl --http2 -X POST -T -`` (no ``content-length``) was answered 200 and the app got
the POST with no body at all, since the gateway read a body's presence from the HTTP/1.1 framing
headers only. Now the first read decides: a body goes upstream chunked, none goes as none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.harness import Gateway, echo_route, free_port, gateway_config, run_echo, run_gateway
from tests.support.certs import self_signed
from tests.support.recording_app import recording_app


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("http2-bodies")
    cert, key = self_signed(tmp, ips=["127.0.0.1"])
    port = free_port()
    with run_echo() as echo, recording_app() as app:
        route = echo_route(echo, cors_preflight=True, public_paths=["/open/*"])
        # Preflights go to an app that records what it got: their answer's body is not relayed.
        recorded = echo_route(app.url, name="recorded", path="/api", cors_preflight=True, public_paths=[])
        config = gateway_config(
            tmp,
            port,
            [recorded, route],
            tls={"certificate": str(cert), "key": str(key), "http2": True},
            public_url=f"https://127.0.0.1:{port}",
        )
        with run_gateway(tmp, config, scheme="https") as gateway:
            gateway.extra["app"] = app
            yield gateway


def _h2(gw: Gateway, method: str, path: str, **kw: Any) -> tuple[httpx.Response, dict[str, Any]]:
    with httpx.Client(http2=True, verify=False, timeout=30.0) as client:
        resp = client.request(method, f"https://127.0.0.1:{gw.port}{path}", **kw)
    assert resp.http_version == "HTTP/2", resp.http_version
    assert resp.status_code == 200, resp.text
    return resp, resp.json()


def _pieces(data: bytes) -> Iterator[bytes]:
    yield from (data[i : i + 1000] for i in range(0, len(data), 1000))


@pytest.mark.parametrize("size", [1, 5000, 300_000])
def test_an_http2_body_without_content_length_reaches_the_app(gw: Gateway, size: int) -> None:
    body = b"x" * size
    _, seen = _h2(gw, "POST", "/open/upload", content=_pieces(body))  # a generator: no content-length
    headers = dict(seen["headers"])
    assert "content-length" not in headers  # it went out chunked, as the client sent no length
    assert seen["body_bytes"] == size


def test_an_http2_body_with_content_length_keeps_it(gw: Gateway) -> None:
    _, seen = _h2(gw, "PUT", "/open/upload", content=b"y" * 1234)
    assert dict(seen["headers"])["content-length"] == "1234"
    assert seen["body_bytes"] == 1234


def test_an_http2_request_without_a_body_goes_without_one(gw: Gateway) -> None:
    _, seen = _h2(gw, "GET", "/open/page")
    headers = dict(seen["headers"])
    assert "transfer-encoding" not in headers
    assert "content-length" not in headers
    assert seen["body_bytes"] == 0
    # An empty POST too: nothing is invented for it.
    _, empty = _h2(gw, "POST", "/open/empty", content=b"")
    assert empty["body_bytes"] == 0


def test_a_preflight_over_http2_never_hands_the_app_a_body(gw: Gateway) -> None:
    """A preflight goes to the app without credentials; over HTTP/2 it could carry a body its headers
    do not announce (an HTTP/1.1 one with a body is no preflight at all)."""
    with httpx.Client(http2=True, verify=False, timeout=30.0) as client:
        resp = client.request(
            "OPTIONS",
            f"https://127.0.0.1:{gw.port}/api",
            headers={"Origin": "https://other.example", "Access-Control-Request-Method": "PUT"},
            content=_pieces(b"z" * 4000),
        )
    assert resp.http_version == "HTTP/2"
    assert resp.status_code == 200
    got = gw.extra["app"].last("/api")
    assert got.method == "OPTIONS"
    assert "content-length" not in got.headers
    assert "transfer-encoding" not in got.headers
