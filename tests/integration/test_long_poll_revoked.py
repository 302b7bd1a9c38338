"""A long poll whose access ends before its answer comes: a real ``gateway serve``, a held upstream.

An attack run's note: "a long-poll revoked before its first byte answers 500, not 403". An answer that
took longer than ``WATCH_INTERVAL`` to come is checked again before it goes out
(``gateway/pipeline/proxy.py``); while no byte of it has reached the client, a refusal can still be a
proper answer: 403 ``access-ended``, never a 500 and never the app's answer. Once the head went out,
only cutting the connection is left. Each way an app can be slow is played by an upstream that holds
its answer (all of it, or all but its head) until the test lets it go, after the revocation is in
force for a new request.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gateway.pipeline.proxy import WATCH_INTERVAL
from tests.integration.harness import (
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, cookie, login, post_form

# The answers the held upstream gives, by the request's path: what it sends at once, what it holds.
_SMALL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
_LARGE = 100_000  # past the proxy's one-read answers: streamed, with Content-Length
_ANSWERS: dict[str, tuple[bytes, bytes]] = {
    # Nothing at all until released (a long poll): a small answer, a chunked one, a large one, none.
    "/poll/small": (b"", _SMALL + b"app-answer!"),
    "/poll/chunked": (b"", _CHUNKED + b"b\r\napp-answer!\r\n0\r\n\r\n"),
    "/poll/large": (
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % _LARGE + b"a" * _LARGE,
    ),
    "/poll/empty": (b"", b"HTTP/1.1 204 No Content\r\n\r\n"),
    # The head at once, the body held: nothing reached the client of a small answer yet.
    "/poll/small-body-late": (_SMALL, b"app-answer!"),
    # A streamed answer's head at once, its body held (Server-Sent Events): the head goes out at once,
    # so the client has its 200 and the rest can only be cut.
    "/poll/streamed-body-late": (_CHUNKED, b"b\r\napp-answer!\r\n0\r\n\r\n"),
    # A streamed answer's head and first chunk at once: its head went out, so it can only be cut.
    "/poll/streamed": (_CHUNKED + b"5\r\nfirst\r\n", b"b\r\napp-answer!\r\n0\r\n\r\n"),
}


@dataclass
class _Held:
    """One request the upstream holds: its path, and the event that lets its answer go."""

    path: str
    release: threading.Event = field(default_factory=threading.Event)


class _HeldUpstream:
    """An HTTP/1.1 upstream that answers each request by its path (:data:`_ANSWERS`), holding what
    it holds until the test releases it; one request per connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.arrived: queue.Queue[_Held] = queue.Queue()
        self._held: list[_Held] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the test is over
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1].decode()
            if path not in _ANSWERS:  # a probe of whether access ended: answered at once
                conn.sendall(_SMALL + b"not held...")
                return
            now, later = _ANSWERS[path]
            held = _Held(path)
            self._held.append(held)
            try:
                conn.sendall(now)
                self.arrived.put(held)
                if held.release.wait(timeout=60):
                    conn.sendall(later)
                    conn.shutdown(socket.SHUT_WR)
                    conn.recv(1)  # until the gateway closes its side
            except OSError:
                pass  # the gateway gave up on the answer: what some tests expect

    def close(self) -> None:
        self.sock.close()
        for held in self._held:
            held.release.set()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture(scope="module")
def upstream() -> Iterator[_HeldUpstream]:
    held = _HeldUpstream()
    try:
        yield held
    finally:
        held.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: _HeldUpstream) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("long-poll-revoked")
    route = echo_route(f"http://127.0.0.1:{upstream.port}", public_paths=[])
    config = gateway_config(tmp, free_port(), [route], session={"insecure_cookies": True})
    with run_gateway(tmp, config) as gateway:
        yield gateway


class _Poll:
    """One request in the background, as the client sees it: the answer, or the error that ended it."""

    def __init__(self, gw: Gateway, path: str, session: str) -> None:
        self.status = 0
        self.body = b""
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(gw, path, session), daemon=True)
        self._thread.start()

    def _run(self, gw: Gateway, path: str, session: str) -> None:
        try:
            with httpx.stream(
                "GET",
                f"{gw.url}{path}",
                headers={"Cookie": f"{SESSION_COOKIE}={session}", "Accept": "application/json"},
                timeout=30,
            ) as resp:
                self.status = resp.status_code
                for chunk in resp.iter_raw():
                    self.body += chunk
        except httpx.HTTPError as exc:
            self.error = exc

    def done(self) -> None:
        self._thread.join(timeout=40)
        assert not self._thread.is_alive(), "the client never got an answer"


def _signed_in(gw: Gateway, user: str) -> tuple[httpx.Client, str]:
    add_user(gw.config_path, user, PASSWORD)
    client = browser(gw)
    assert login(client, user).status_code == 302
    session = cookie(client, SESSION_COOKIE)
    assert session
    return client, session


def _refused_now(gw: Gateway, session: str) -> bool:
    """Whether a new request of the session is refused: the revocation is in force in the worker."""
    answer = httpx.get(f"{gw.url}/refused-now", headers={"Cookie": f"{SESSION_COOKIE}={session}"}, timeout=10)
    return answer.status_code in (401, 403)


def _revoke(gw: Gateway, how: str, user: str, client: httpx.Client, session: str) -> None:
    if how == "disable":
        result = run_cli("user", "disable", user, "--config", str(gw.config_path))
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert post_form(client, "/.gateway/logout").status_code == 303
    wait_until(lambda: _refused_now(gw, session), timeout=10, what="the revocation in force")


def _long_poll(gw: Gateway, upstream: _HeldUpstream, path: str, user: str, how: str = "disable") -> _Poll:
    """A long poll of ``path`` revoked while the upstream holds it; its outcome once released."""
    client, session = _signed_in(gw, user)
    try:
        poll = _Poll(gw, path, session)
        held = upstream.arrived.get(timeout=30)
        arrived = time.monotonic()
        assert held.path == path
        _revoke(gw, how, user, client, session)
    finally:
        client.close()
    # The answer must have taken longer than the watch interval: that is what has it checked again.
    while time.monotonic() - arrived <= WATCH_INTERVAL + 0.2:
        time.sleep(0.05)
    held.release.set()
    poll.done()
    return poll


def _access_event(gw: Gateway, user: str) -> dict[str, Any]:
    """The access log's event for the user's one proxied request (the probes of the revocation
    are on another path)."""
    events = wait_until(
        lambda: [
            e
            for line in gw.log().splitlines()
            if line.startswith("{") and '"gateway.access"' in line and f'"{user}"' in line
            for e in [json.loads(line)]
            if e["url"]["path"].startswith("/poll/")
        ],
        what=f"the access event of {user}'s long poll",
    )
    event: dict[str, Any]
    (event,) = events
    return event


def _assert_refused(gw: Gateway, poll: _Poll, user: str) -> None:
    assert poll.error is None, poll.error
    assert poll.status == 403, (poll.status, poll.body[:200])
    answer = json.loads(poll.body)
    assert answer["error"] == "access-ended"
    assert b"app-answer" not in poll.body
    event = _access_event(gw, user)
    assert event["http"]["response"]["status_code"] == 403
    assert (event["gateway"]["decision"], event["gateway"]["reason"]) == ("deny", "access-ended")


@pytest.mark.parametrize(
    "path",
    [
        "/poll/small",
        "/poll/chunked",
        "/poll/large",
        "/poll/empty",
        "/poll/small-body-late",
    ],
)
def test_a_long_poll_of_a_disabled_account_gets_403_before_its_first_byte(
    gw: Gateway, upstream: _HeldUpstream, path: str
) -> None:
    user = "lp-" + path.rsplit("/", 1)[1]
    poll = _long_poll(gw, upstream, path, user)
    _assert_refused(gw, poll, user)


@pytest.mark.parametrize("path", ["/poll/small", "/poll/chunked"])
def test_a_long_poll_signed_out_meanwhile_gets_403(gw: Gateway, upstream: _HeldUpstream, path: str) -> None:
    user = "lp-out-" + path.rsplit("/", 1)[1]
    poll = _long_poll(gw, upstream, path, user, how="sign-out")
    _assert_refused(gw, poll, user)


@pytest.mark.parametrize("path", ["/poll/streamed", "/poll/streamed-body-late"])
def test_a_streamed_answer_whose_head_went_out_is_cut_off(
    gw: Gateway, upstream: _HeldUpstream, path: str
) -> None:
    """Its 200 reached the client before access ended: the rest of it never does."""
    user = "lp-cut-" + path.rsplit("/", 1)[1]
    poll = _long_poll(gw, upstream, path, user)
    assert poll.status == 200
    assert poll.error is not None  # the connection was aborted, not ended as if the body were complete
    assert b"app-answer" not in poll.body
    event = _access_event(gw, user)
    assert (event["gateway"]["decision"], event["gateway"]["reason"]) == ("deny", "access-ended")


def test_a_streamed_answers_head_reaches_the_client_before_its_first_chunk(
    gw: Gateway, upstream: _HeldUpstream
) -> None:
    """A Server-Sent Events stream sends its head, then its first event minutes later: the client
    (EventSource's open, a proxy's header timeout) has the head at once. A re-attack run measured it
    5 s late when the head waited for the first chunk."""
    client, session = _signed_in(gw, "lp-sse")
    client.close()
    with httpx.stream(
        "GET",
        f"{gw.url}/poll/streamed-body-late",
        headers={"Cookie": f"{SESSION_COOKIE}={session}"},
        timeout=30,
    ) as resp:
        held = upstream.arrived.get(timeout=30)
        assert held.path == "/poll/streamed-body-late"
        # The head is here while the upstream still holds every byte of the body.
        assert resp.status_code == 200
        assert not held.release.is_set()
        held.release.set()
        assert resp.read() == b"app-answer!"
