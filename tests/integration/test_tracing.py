"""Tracing against real processes: a gateway, the echo app behind it and an OTLP/HTTP collector in the test.

The collector is a plain HTTP server that decodes what the gateway's OpenTelemetry exporter POSTs
(``ExportTraceServiceRequest``, protobuf); the echo app answers with the headers it received, so the
test sees the ``traceparent`` the application got. Each gateway runs one worker: spans of one worker
leave in the order the requests ended, which is how a span that was *not* sent is shown: a later
request's span arrives, and the earlier one is not there.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.integration.harness import (
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    stop,
    wait_until,
)
from tests.integration.http_client import PASSWORD, browser, login

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], Span]] = []
        self.requests = 0
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_error(404)
                    return
                collector.receive(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def receive(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)

    def snapshot(self) -> list[Span]:
        with self._lock:
            return [span for _, span in self.spans]

    def servers(self, path: str) -> list[Span]:
        """The server spans of requests for ``path``."""
        return [
            s for s in self.snapshot() if s.kind == Span.SPAN_KIND_SERVER and attrs(s).get("url.path") == path
        ]

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.int_value if value.HasField("int_value") else value.string_value
    return out


def _config(tmp: Path, collector: Collector, routes: list[dict[str, Any]], **tracing: Any) -> dict[str, Any]:
    return gateway_config(
        tmp,
        free_port(),
        routes,
        session={"insecure_cookies": True},
        logging={"sinks": [{"type": "file", "path": str(tmp / "access.log")}]},
        tracing={"enabled": True, "endpoint": collector.endpoint, "export_interval": "100ms", **tracing},
    )


def _access_line(gw: Gateway, tmp: Path, path: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        log = tmp / "access.log"
        for line in log.read_text().splitlines() if log.exists() else []:
            entry = json.loads(line)
            if entry.get("url", {}).get("path") == path:
                return dict(entry)
        return None

    return wait_until(find, what=f"the access log line for {path}")


def _sent_traceparents(resp: httpx.Response) -> list[str]:
    """The traceparent header(s) the echo app received."""
    return [value for name, value in resp.json()["headers"] if name == "traceparent"]


@contextmanager
def _signed_in_gateway(
    tmp: Path, collector: Collector, **tracing: Any
) -> Iterator[tuple[Gateway, httpx.Client]]:
    with run_echo() as echo:
        route = echo_route(echo, public_paths=[], mfa="none")
        with run_gateway(tmp, _config(tmp, collector, [route], **tracing)) as gw, browser(gw) as client:
            add_user(gw.config_path, "alice", PASSWORD)
            assert login(client, "alice").status_code == 302
            yield gw, client


def test_a_proxied_request_is_one_trace_from_the_gateway_to_the_app(tmp_path: Path) -> None:
    with Collector() as collector, _signed_in_gateway(tmp_path, collector, sample_ratio=1.0) as (gw, alice):
        resp = alice.get("/private?q=1", headers={"accept": "application/json"})
        assert resp.status_code == 200

        [server] = wait_until(lambda: collector.servers("/private"), what="the server span of /private")

        def children() -> list[Span] | None:
            found = [s for s in collector.snapshot() if s.parent_span_id == server.span_id]
            return found if len(found) == 3 else None

        stages = wait_until(children, what="the three stage spans of /private")
        access = _access_line(gw, tmp_path, "/private")

    assert server.name == "GET echo"
    facts = attrs(server)
    assert facts["http.response.status_code"] == 200
    assert facts["gateway.route"] == "echo"
    assert facts["gateway.decision"] == "allow"
    assert facts["gateway.sampling"] == "ratio"
    assert not {"user.name", "client.address", "session.id", "url.query"} & set(facts)
    assert server.parent_span_id == b""  # no traceparent came in: the trace starts at the gateway
    by_name = {span.name: span for span in stages}
    assert set(by_name) == {"identify", "authorize", "upstream"}
    assert by_name["upstream"].kind == Span.SPAN_KIND_CLIENT
    assert by_name["identify"].end_time_unix_nano <= by_name["authorize"].start_time_unix_nano
    assert by_name["authorize"].end_time_unix_nano <= by_name["upstream"].start_time_unix_nano
    assert server.start_time_unix_nano <= by_name["identify"].start_time_unix_nano
    assert by_name["upstream"].end_time_unix_nano <= server.end_time_unix_nano
    resources = {resource.get("service.name") for resource, _ in collector.spans}
    assert resources == {"gateway"}

    # The app's parent is the gateway's upstream span, in the same trace.
    trace_hex, upstream_hex = server.trace_id.hex(), by_name["upstream"].span_id.hex()
    assert _sent_traceparents(resp) == [f"00-{trace_hex}-{upstream_hex}-01"]
    # The access log names the trace and the server span.
    assert access["trace"]["id"] == trace_hex
    assert access["span"]["id"] == server.span_id.hex()
    assert access["http"]["request"]["id"] == facts["gateway.request_id"]


def test_a_client_cannot_force_sampling_but_errors_are_always_traced(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every request is a 502
    with Collector() as collector, run_echo() as echo:
        routes = [
            echo_route(echo, path="/ok"),
            echo_route(dead, name="down", path="/down"),
        ]
        config = _config(tmp_path, collector, routes, sample_ratio=0.0, parent_sampling="trusted_proxies")
        with run_gateway(tmp_path, config):
            url = f"http://127.0.0.1:{config['listen'].rsplit(':', 1)[1]}"
            forced = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            # The attack: an untrusted client asks for sampling (and a vendor's "always" in tracestate).
            ok = httpx.get(
                f"{url}/ok/a", headers={"traceparent": forced, "tracestate": "ot=th:0"}, timeout=30
            )
            assert ok.status_code == 200
            down = httpx.get(f"{url}/down/b", timeout=30)
            assert down.status_code == 502

            [failed] = wait_until(lambda: collector.servers("/down/b"), what="the 502's server span")
            upstream = wait_until(
                lambda: [
                    s
                    for s in collector.snapshot()
                    if s.parent_span_id == failed.span_id and s.name == "upstream"
                ],
                what="the 502's upstream span",
            )
            # The 200 ended first in the same worker: had it been kept, it would have been sent first.
            assert collector.servers("/ok/a") == []
            assert not [s for s in collector.snapshot() if s.trace_id.hex() == CLIENT_TRACE]

    # The client's trace id is kept for correlation, its sampled flag and tracestate are not.
    [sent] = _sent_traceparents(ok)
    version, trace_hex, parent_hex, flags = sent.split("-")
    assert (version, trace_hex, flags) == ("00", CLIENT_TRACE, "00")
    assert parent_hex != CLIENT_SPAN  # the app's parent is the gateway's span, not the client's
    assert not [value for name, value in ok.json()["headers"] if name == "tracestate"]
    # The 502 is kept although the draw said no, and says why.
    facts = attrs(failed)
    assert facts["http.response.status_code"] == 502
    assert facts["gateway.sampling"] == "error"
    assert facts["gateway.reason"] == "upstream-error"
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert upstream[0].status.code == Status.STATUS_CODE_ERROR


def test_a_retried_upstream_attempt_is_a_span_of_its_own(tmp_path: Path) -> None:
    """Two targets, the first of them down: a GET that tried it first is retried on the other, and
    the trace shows both tries (the failed one as a span under the upstream span)."""
    dead = f"http://127.0.0.1:{free_port()}"
    with Collector() as collector, run_echo() as echo:
        route = echo_route(echo, upstreams=[dead, echo.url])
        config = _config(tmp_path, collector, [route], sample_ratio=1.0)
        with run_gateway(tmp_path, config) as gw:
            # Round robin: of two requests, one starts on the dead target.
            answers = [httpx.get(f"{gw.url}/try/{n}", timeout=30) for n in range(2)]
            assert [r.status_code for r in answers] == [200, 200]

            def retried() -> tuple[Span, list[Span]] | None:
                for server in collector.servers("/try/0") + collector.servers("/try/1"):
                    ups = [s for s in collector.snapshot() if s.parent_span_id == server.span_id]
                    tries = [s for u in ups for s in collector.snapshot() if s.parent_span_id == u.span_id]
                    if ups and tries:
                        return ups[0], tries
                return None

            upstream, [attempt] = wait_until(retried, what="a retried request's attempt span")

    dead_port = int(dead.rsplit(":", 1)[1])
    assert upstream.name == "upstream"
    assert attrs(upstream)["server.port"] == int(echo.url.rsplit(":", 1)[1])
    assert attrs(upstream)["http.request.resend_count"] == 1
    assert upstream.status.code != Status.STATUS_CODE_ERROR  # the try that answered
    assert attempt.name == "upstream attempt"
    assert attempt.kind == Span.SPAN_KIND_CLIENT
    assert attrs(attempt)["server.port"] == dead_port
    assert attrs(attempt)["error.type"] == "UpstreamConnectError"
    assert attempt.status.code == Status.STATUS_CODE_ERROR
    assert upstream.start_time_unix_nano <= attempt.start_time_unix_nano
    assert attempt.end_time_unix_nano <= upstream.end_time_unix_nano


def test_a_trusted_proxy_decides_sampling_when_configured_to(tmp_path: Path) -> None:
    with Collector() as collector, run_echo() as echo:
        config = _config(
            tmp_path,
            collector,
            [echo_route(echo)],
            sample_ratio=0.0,
            parent_sampling="trusted_proxies",
        )
        config["trusted_proxies"] = ["127.0.0.1/32"]
        with run_gateway(tmp_path, config) as gw:
            resp = httpx.get(
                f"{gw.url}/via-proxy",
                headers={
                    "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                    "tracestate": "rojo=00f067aa0ba902b7",
                },
                timeout=30,
            )
            assert resp.status_code == 200
            [server] = wait_until(lambda: collector.servers("/via-proxy"), what="the sampled server span")

    assert server.trace_id.hex() == CLIENT_TRACE
    assert server.parent_span_id.hex() == CLIENT_SPAN
    assert attrs(server)["gateway.sampling"] == "parent"
    [sent] = _sent_traceparents(resp)
    assert sent.startswith(f"00-{CLIENT_TRACE}-")
    assert sent.endswith("-01")
    assert [value for name, value in resp.json()["headers"] if name == "tracestate"] == [
        "rojo=00f067aa0ba902b7"
    ]


def test_spans_still_queued_are_sent_when_the_gateway_stops(tmp_path: Path) -> None:
    with Collector() as collector, run_echo() as echo:
        # A batch interval far longer than the test: only the shutdown can send this span.
        config = _config(tmp_path, collector, [echo_route(echo)], sample_ratio=1.0, export_interval="10m")
        with run_gateway(tmp_path, config) as gw:
            assert httpx.get(f"{gw.url}/before-stop", timeout=30).status_code == 200
            _access_line(gw, tmp_path, "/before-stop")  # the request has ended
            stop(gw.proc, timeout=60)  # SIGTERM; a kill would lose the queue (a loaded machine is slow)
            assert gw.proc.returncode is not None
            sent = collector.servers("/before-stop")
    assert len(sent) == 1
