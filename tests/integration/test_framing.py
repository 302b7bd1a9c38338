"""Request framing through a real gateway (RFC 9112 §6): where a body ends is never ambiguous.

Request smuggling lives in disagreements about where one request's body ends and the next request
begins. Every row of the table below is sent byte-exact over a raw socket to a running gateway
(granian in front of the data plane), followed on the same connection by a second request for
``/smuggled``. The route's upstream is a recording HTTP/1.1 server that keeps every request it
receives, complete or cut off, so each row shows both what the client was answered and everything
the upstream saw.

Who refuses what: granian's parser (hyper/httparse) answers some inputs itself with a 400 and closes;
it frames ``identity, chunked``, ``gzip, chunked`` and repeated ``chunked`` as chunked and hands them
on, and reports a malformed chunked body (bad or overflowing size, bare LF) to the app as a client
disconnect. The data plane refuses the first (``bad-framing``) and answers the second with a 400
(``bad-body``); both close the connection so nothing after them is read as a request.

What granian decides and the gateway cannot see (the ``granian`` rows): it drops ``Content-Length``
when ``Transfer-Encoding`` is present, frames by the latter and closes the connection after the
answer (RFC 9112 §6.3 allows this instead of a 400); and it accepts a bare LF as the end of a line in
the request head (§2.2 allows that too). Neither lets a second request through: the tests show it.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.harness import Gateway, echo_route, free_port, gateway_config, run_gateway

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
HOST = b"Host: 127.0.0.1\r\n"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"

# --------------------------------------------------------------------------------------------------
# The recording upstream: a strict HTTP/1.1 server (CRLF only) that keeps every request it receives
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    body: bytes
    complete: bool  # False: the connection ended before the request did


class _Truncated(Exception):
    pass


class _Recorder(socketserver.StreamRequestHandler):
    server: RecordingUpstream

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            try:
                body = self._body(self._headers())
            except _Truncated as cut:
                self.server.record(Seen(method, target, cut.args[0] if cut.args else b"", complete=False))
                return
            self.server.record(Seen(method, target, body, complete=True))
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def _line(self) -> bytes:
        line = self.rfile.readline(65536)
        if not line.endswith(b"\r\n"):
            raise _Truncated
        return line[:-2]

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def _body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                try:
                    size = int(self._line().split(b";")[0], 16)
                except _Truncated:
                    raise _Truncated(body) from None
                if size == 0:
                    while self._line():  # trailer section
                        pass
                    return body
                chunk = self.rfile.read(size + 2)
                if len(chunk) < size + 2:
                    raise _Truncated(body + chunk[:size])
                body += chunk[:size]
        length = int(headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if len(body) < length:
            raise _Truncated(body)
        return body


class RecordingUpstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self._lock = threading.Lock()
        self._seen: list[Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def take(self) -> list[Seen]:
        """Everything received since the last call."""
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("framing")
    port = free_port()
    # A short wait for the next piece of a body, so the stalled-body rows end quickly.
    config = gateway_config(
        tmp, port, [echo_route(upstream.url)], limits={"body_timeout": f"{BODY_TIMEOUT}s"}
    )
    with run_gateway(tmp, config) as gateway:
        yield gateway


# --------------------------------------------------------------------------------------------------
# The client side: raw bytes in, every response out, and whether the server closed the connection
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[list[Answer], bool]:
    """Send ``data``; return every response read and whether the server closed the connection.

    The server closing is the expected end of every row (after the 400, or after the second request,
    which asks for ``Connection: close``); the timeout only bounds a failing run.
    """
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except ConnectionResetError:  # closed with our unread bytes still queued: a reset
            closed = True
        except TimeoutError:
            closed = False
    return parse_answers(received), closed


def parse_answers(data: bytes) -> list[Answer]:
    answers = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response: {data!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        assert "transfer-encoding" not in headers, "the answers here all have a length"
        answers.append(Answer(int(status_line.split(" ", 2)[1]), headers, rest[:length]))
        data = rest[length:]
    return answers


def request(head: bytes, body: bytes = b"", *, method: bytes = b"POST", path: bytes = b"/a") -> bytes:
    """A request line, the Host header, ``head`` (more header lines), the blank line and the body."""
    return method + b" " + path + b" HTTP/1.1\r\n" + HOST + head + b"\r\n" + body


# --------------------------------------------------------------------------------------------------
# The table: malformed framing → one 400, the connection closed, no request reaches the upstream
# --------------------------------------------------------------------------------------------------

# (id, request, reason the gateway answers with; None where granian's parser answers first)
REFUSED: list[tuple[str, bytes, str | None]] = [
    # Transfer-Encoding other than one final `chunked` (RFC 9112 §6.1)
    (
        "te-identity-chunked",
        request(b"Transfer-Encoding: identity, chunked\r\n", CHUNKED_HELLO),
        "bad-framing",
    ),
    ("te-chunked-twice", request(b"Transfer-Encoding: chunked, chunked\r\n", CHUNKED_HELLO), "bad-framing"),
    (
        "te-chunked-in-two-fields",
        request(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO),
        "bad-framing",
    ),
    ("te-gzip-chunked", request(b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED_HELLO), "bad-framing"),
    (
        "te-unknown-then-chunked",
        request(b"Transfer-Encoding: x-custom, chunked\r\n", CHUNKED_HELLO),
        "bad-framing",
    ),
    ("te-chunked-gzip", request(b"Transfer-Encoding: chunked, gzip\r\n", CHUNKED_HELLO), None),
    ("te-gzip", request(b"Transfer-Encoding: gzip\r\n", CHUNKED_HELLO), None),
    ("te-unknown", request(b"Transfer-Encoding: foo\r\n", CHUNKED_HELLO), None),
    ("te-xchunked", request(b"Transfer-Encoding: xchunked\r\n", CHUNKED_HELLO), None),
    ("te-empty", request(b"Transfer-Encoding: \r\n", CHUNKED_HELLO), None),
    ("te-space-before-colon", request(b"Transfer-Encoding : chunked\r\n", CHUNKED_HELLO), None),
    ("te-obs-fold", request(b"Transfer-Encoding: identity,\r\n chunked\r\n", CHUNKED_HELLO), None),
    (
        "te-on-http-1.0",
        b"POST /a HTTP/1.0\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO,
        None,
    ),
    # Content-Length that is not one plain decimal (§6.3 item 5)
    ("cl-two-values", request(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello"), None),
    ("cl-list", request(b"Content-Length: 5, 5\r\n", b"hello"), None),
    ("cl-plus-sign", request(b"Content-Length: +5\r\n", b"hello"), None),
    ("cl-overflow", request(b"Content-Length: 99999999999999999999999\r\n", b"hello"), None),
    # Chunk sizes: not hex, signed, overflowing 64 bits (§7.1)
    (
        "chunk-size-not-hex",
        request(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"),
        "bad-body",
    ),
    ("chunk-size-0x", request(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"), "bad-body"),
    (
        "chunk-size-negative",
        request(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),
        "bad-body",
    ),
    (
        "chunk-size-overflow",
        request(b"Transfer-Encoding: chunked\r\n", b"FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"),
        "bad-body",
    ),
    (
        "chunk-size-wraps-to-5",
        request(b"Transfer-Encoding: chunked\r\n", b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        "bad-body",
    ),
    # Bare LF and bare CR as line endings (§2.2, §7.1)
    ("bare-lf-in-chunks", request(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n"), "bad-body"),
    (
        "bare-lf-after-chunk-data",
        request(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\n0\r\n\r\n"),
        "bad-body",
    ),
    (
        "bare-lf-hides-te-after-cl",  # a proxy that does not split at LF sees one header and CL 5
        request(b"Content-Length: 5\r\nX-A: a\nTransfer-Encoding: chunked\r\n", b"hello"),
        "bad-body",
    ),
    ("bare-cr-ends-request-line", b"POST /a HTTP/1.1\r" + HOST + b"Content-Length: 5\r\n\r\nhello", None),
]

# The same on the gateway's own endpoints: the control app and forward-auth.
REFUSED_CONTROL: list[tuple[str, bytes, str]] = [
    (
        "control-te-identity-chunked",
        request(b"Transfer-Encoding: identity, chunked\r\n", CHUNKED_HELLO, path=b"/.gateway/login"),
        "bad-framing",
    ),
    (
        "control-chunk-size-not-hex",
        request(
            b"Transfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
            path=b"/.gateway/login",
        ),
        "bad-body",
    ),
    (
        "control-chunk-size-overflow",
        request(
            b"Transfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded\r\n",
            b"FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n",
            path=b"/.gateway/login",
        ),
        "bad-body",
    ),
    (
        "forward-auth-te-chunked-twice",
        request(
            b"Transfer-Encoding: chunked, chunked\r\n", CHUNKED_HELLO, method=b"GET", path=b"/.gateway/auth"
        ),
        "bad-framing",
    ),
]


def _assert_refused(answers: list[Answer], closed: bool, reason: str | None) -> None:
    assert [a.status for a in answers] == [400], answers  # one answer: the smuggled one never ran
    assert closed, "the connection must close after a framing error"
    if reason is not None:  # the gateway's own answer says why and promises the close
        assert answers[0].headers.get("connection") == "close"
        assert f'"error": "{reason}"'.encode() in answers[0].body, answers[0].body


@pytest.mark.parametrize(("data", "reason"), [(d, r) for _, d, r in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_malformed_framing_is_one_400_and_reaches_no_upstream(
    gw: Gateway, upstream: RecordingUpstream, data: bytes, reason: str | None
) -> None:
    upstream.take()
    answers, closed = exchange(gw.port, data + SMUGGLED)
    _assert_refused(answers, closed, reason)
    # The data plane streams a body as it arrives, so a body found broken halfway may have opened an
    # upstream request: it is cut off there, never completed, and nothing follows it.
    seen = upstream.take()
    assert all(not s.complete for s in seen), seen
    assert all(s.target == "/a" for s in seen), seen


@pytest.mark.parametrize(
    ("data", "reason"), [(d, r) for _, d, r in REFUSED_CONTROL], ids=[i for i, _, _ in REFUSED_CONTROL]
)
def test_malformed_framing_on_gateway_endpoints_is_one_400(
    gw: Gateway, upstream: RecordingUpstream, data: bytes, reason: str
) -> None:
    upstream.take()
    answers, closed = exchange(gw.port, data + SMUGGLED)
    _assert_refused(answers, closed, reason)
    # An upstream request the previous test's broken body opened and cut off (never complete, always
    # to /a) may be recorded only now on a loaded machine; nothing these requests say goes to /a.
    late = [s for s in upstream.take() if not (s.target == "/a" and not s.complete)]
    assert late == []


BODY_TIMEOUT = 1


@pytest.mark.parametrize("path", [b"/a", b"/.gateway/login"], ids=["proxied", "gateway-page"])
@pytest.mark.parametrize(
    "framing", [b"Content-Length: 10000\r\n", b"Transfer-Encoding: chunked\r\n"], ids=["length", "chunked"]
)
def test_a_body_that_stops_coming_is_a_408_that_closes(
    gw: Gateway, upstream: RecordingUpstream, path: bytes, framing: bytes
) -> None:
    """Outside review: a request whose body stopped halfway held its slot for as long as the client
    liked; about a thousand such connections locked everyone out. Now the wait for the next piece of a
    body is bounded (limits.body_timeout): a 408 that closes the connection, and nothing upstream."""
    upstream.take()
    part = b"username=a" if framing.startswith(b"Content-Length") else b"a\r\nusername=a\r\n"
    head = framing + b"Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n"
    # Read for a few seconds more than the limit: the answer must have come by then. (granian closes
    # the connection after the answer's "Connection: close" most of the time; when the body's read was
    # cut short on the gateway's own pages it sometimes waits for the client, with the request done.)
    answers, _closed = exchange(gw.port, request(head, part, path=path), timeout=BODY_TIMEOUT + 4)
    assert [a.status for a in answers] == [408], answers
    assert answers[0].headers.get("connection") == "close"
    assert b'"error": "body-timeout"' in answers[0].body, answers[0].body
    assert all(not s.complete for s in upstream.take())


# --------------------------------------------------------------------------------------------------
# What is accepted: exactly the request the client framed, then the pipelined one it really sent
# --------------------------------------------------------------------------------------------------

SECOND = b"GET /second HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

ACCEPTED: list[tuple[str, bytes]] = [
    ("chunked", request(b"Transfer-Encoding: chunked\r\n", CHUNKED_HELLO)),
    (
        "chunked-upper-case",
        request(b"Transfer-Encoding: CHUNKED\r\n", CHUNKED_HELLO),
    ),  # names are case-insensitive
    ("chunked-with-ows", request(b"Transfer-Encoding: \t chunked \r\n", CHUNKED_HELLO)),
    ("chunk-extension", request(b"Transfer-Encoding: chunked\r\n", b"5;name=value\r\nhello\r\n0\r\n\r\n")),
    ("chunk-trailer", request(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")),
    ("content-length", request(b"Content-Length: 5\r\n", b"hello")),
    ("get-with-chunked-body", request(b"Transfer-Encoding: chunked\r\n", CHUNKED_HELLO, method=b"GET")),
]


@pytest.mark.parametrize("data", [d for _, d in ACCEPTED], ids=[i for i, _ in ACCEPTED])
def test_well_framed_request_and_its_pipelined_successor_reach_the_upstream_exactly(
    gw: Gateway, upstream: RecordingUpstream, data: bytes
) -> None:
    """The witness for the table above: a pipelined request after a well-framed one is seen."""
    upstream.take()
    answers, closed = exchange(gw.port, data + SECOND)
    assert [a.status for a in answers] == [200, 200]
    assert closed
    seen = upstream.take()
    method = data.split(b" ", 1)[0].decode()
    assert seen == [Seen(method, "/a", b"hello", True), Seen("GET", "/second", b"", True)]


# --------------------------------------------------------------------------------------------------
# What granian decides before the gateway sees the request
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["te-then-cl", "cl-then-te"],
)
def test_content_length_beside_transfer_encoding_frames_by_te_and_closes(
    gw: Gateway, upstream: RecordingUpstream, head: bytes
) -> None:
    """granian removes Content-Length (the app never sees both), frames by Transfer-Encoding and closes
    the connection after the answer (RFC 9112 §6.3 item 3). Built so that framing by Content-Length
    would read ``0\\r\\n\\r\\n`` as the whole body and the smuggled request as the next one."""
    upstream.take()
    answers, closed = exchange(gw.port, request(head, b"0\r\n\r\n") + SMUGGLED)
    assert [a.status for a in answers] == [200]
    assert closed
    assert upstream.take() == [Seen("POST", "/a", b"", True)]


def test_te_hidden_behind_a_bare_lf_does_not_smuggle(gw: Gateway, upstream: RecordingUpstream) -> None:
    """A proxy in front that does not end lines at a bare LF sees ``X-A`` with a long value and
    Content-Length 5; granian sees Transfer-Encoding too. Either way the next request never runs:
    granian frames by TE and closes, as above."""
    upstream.take()
    data = request(b"Content-Length: 5\r\nX-A: a\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n") + SMUGGLED
    answers, closed = exchange(gw.port, data)
    assert [a.status for a in answers] == [200]
    assert closed
    assert upstream.take() == [Seen("POST", "/a", b"", True)]


def test_bare_lf_head_is_refused_or_read_as_crlf_and_never_splits_a_request(
    gw: Gateway, upstream: RecordingUpstream
) -> None:
    """granian (httparse) ends head lines at a bare LF, as RFC 9112 §2.2 allows; the gateway only sees
    the parsed headers and cannot refuse it. The upstream gets the request re-framed with CRLF and
    exactly the pipelined request that followed, nothing else (a 400 would be fine too)."""
    upstream.take()
    data = b"POST /a HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 5\n\nhello" + SECOND
    answers, closed = exchange(gw.port, data)
    assert closed
    statuses = [a.status for a in answers]
    assert statuses in ([400], [200, 200]), statuses
    seen = upstream.take()
    expected = (
        [] if statuses == [400] else [Seen("POST", "/a", b"hello", True), Seen("GET", "/second", b"", True)]
    )
    assert seen == expected
