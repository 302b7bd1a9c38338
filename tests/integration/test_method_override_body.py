"""A POST whose *body* names another method (``_method``) needs that method allowed too, over real HTTP.

An attack run: Laravel, Symfony and Rails run a POST as the method a ``_method`` form field names, and
the gateway read only the query string's, so a form post deleted where the policy allowed POST and
refused DELETE. The body is read as it streams: a refused request is answered 403 and the application
never has its whole body (a recording upstream counts what arrived).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, cookie, login

POLICY = """\
p, authenticated, app, /*, GET|POST, allow
p, authenticated, app, /put/*, PUT, allow
p, authenticated, rec, /*, GET|POST, allow
p, authenticated, open, /*, *, allow
"""


@dataclass
class Recorder:
    """An upstream that never answers and keeps every byte each connection sent it."""

    sock: socket.socket
    received: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                self.received.append(data)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    rec = Recorder(sock)
    thread = threading.Thread(target=rec.serve, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[tuple[Gateway, str]]:
    tmp = tmp_path_factory.mktemp("override")
    (tmp / "policy.csv").write_text(POLICY)
    port = free_port()
    with run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"},
            {"name": "open", "host": "open.localhost", "upstreams": [echo.url], "mfa": "none"},
            {
                "name": "rec",
                "host": "rec.localhost",
                "upstreams": [recorder.url],
                "mfa": "none",
                "timeouts": {"response": "1s"},
                "passive_health_check": {"consecutive_failures": 1000},
            },
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            session={"insecure_cookies": True},
            policy={"file": str(tmp / "policy.csv")},
        )
        with run_gateway(tmp, config) as gw:
            add_user(gw.config_path, "ann", PASSWORD)
            with browser(gw) as client:
                assert login(client, "ann").status_code == 302
                session = cookie(client, SESSION_COOKIE)
            assert session
            yield gw, session


def post(site: tuple[Gateway, str], path: str, host: str = "127.0.0.1", **kwargs: Any) -> httpx.Response:
    gw, session = site
    headers = {"host": host, "cookie": f"{SESSION_COOKIE}={session}", **kwargs.pop("headers", {})}
    return httpx.post(gw.url + path, headers=headers, timeout=30, **kwargs)


def refused(resp: httpx.Response, method: str = "DELETE") -> bool:
    return resp.status_code == 403 and f"run it as {method}" in resp.json()["message"]


def multipart(name: str, value: str) -> tuple[bytes, str]:
    body = (
        f'--b0undary\r\nContent-Disposition: form-data; name="title"\r\n\r\nhello\r\n'
        f'--b0undary\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n--b0undary--\r\n'
    )
    return body.encode(), "multipart/form-data; boundary=b0undary"


def test_a_form_field_asking_for_a_refused_method_is_refused(site: tuple[Gateway, str]) -> None:
    assert refused(post(site, "/items/1", data={"title": "x", "_method": "DELETE"}))
    assert refused(post(site, "/items/1", data={".method": "delete"}))  # PHP's reading of the name
    body, ctype = multipart("_method", "DELETE")
    assert refused(post(site, "/items/1", content=body, headers={"content-type": ctype}))
    assert refused(post(site, "/items/1", json={"_method": "DELETE", "id": 1}))
    # Rack reads a POST without a Content-Type as a form.
    assert refused(post(site, "/items/1", content=b"_method=DELETE", headers={"content-type": ""}))


def test_a_field_split_over_chunks_is_found(site: tuple[Gateway, str]) -> None:
    def pieces() -> Iterator[bytes]:
        yield b"title=x&_me"
        yield b"thod=DEL"
        yield b"ETE"

    resp = post(
        site, "/items/1", content=pieces(), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert refused(resp)


def test_allowed_posts_reach_the_app_whole(site: tuple[Gateway, str]) -> None:
    for resp, length in (
        (post(site, "/items/1", data={"title": "x", "note": "_method=DELETE"}), None),
        (post(site, "/put/1", data={"_method": "PUT", "title": "x"}), None),
        (post(site, "/items/1", json={"note": "_method"}), None),
        (post(site, "/items/1", content=b"\0" * 300_000, headers={"content-type": "image/png"}), 300_000),
    ):
        assert resp.status_code == 200, resp.text
        echoed = resp.json()
        assert echoed["method"] == "POST"
        if length is not None:
            assert echoed["body_bytes"] == length
    body, ctype = multipart("file", "_method=DELETE")
    resp = post(site, "/items/1", content=body, headers={"content-type": ctype})
    assert resp.status_code == 200
    assert resp.json()["body_bytes"] == len(body)
    # A route whose policy allows every method lets any override through.
    assert post(site, "/items/1", host="open.localhost", data={"_method": "DELETE"}).status_code == 200


def test_a_json_body_too_large_to_read_that_may_name_the_key(site: tuple[Gateway, str]) -> None:
    big = "x" * (1024 * 1024 + 10)
    resp = post(site, "/items/1", content=json.dumps({"data": big, "_method": "DELETE"}).encode(),
                headers={"content-type": "application/json"})  # fmt: skip
    assert resp.status_code == 403
    assert "too large or malformed" in resp.json()["message"]
    ok = post(
        site,
        "/items/1",
        content=json.dumps({"data": big}).encode(),
        headers={"content-type": "application/json"},
    )
    assert ok.status_code == 200


def test_the_app_never_has_the_whole_body_of_a_refused_post(
    site: tuple[Gateway, str], recorder: Recorder
) -> None:
    recorder.received.clear()
    body = b"title=x&_method=DELETE"
    resp = post(site, "/items/1", host="rec.localhost", content=body,
                headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert refused(resp)
    (sent,) = wait_until(lambda: recorder.received, timeout=10, what="the upstream connection closed")
    head, _, arrived = sent.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(body) in head.lower()
    assert len(arrived) < len(body)
    # The control: an allowed form's whole body arrives (the recorder never answers: a 504).
    recorder.received.clear()
    allowed = b"title=x&comment=fine"
    resp = post(site, "/items/1", host="rec.localhost", content=allowed,
                headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert resp.status_code == 504
    (sent,) = wait_until(lambda: recorder.received, timeout=10, what="the upstream connection closed")
    assert sent.endswith(b"\r\n\r\n" + allowed)


def test_an_allowed_override_is_refused_nothing(site: tuple[Gateway, str]) -> None:
    resp = post(site, "/put/2", json={"_method": "PUT"})
    assert resp.status_code == 200
    assert resp.json()["body_bytes"] == len(b'{"_method":"PUT"}')
