"""Tracing's pieces: W3C trace context parsing, the sampling and trust rule, stage spans, span building."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

from gateway.errors import ErrorReason
from gateway.observe.access import AccessEntry
from gateway.observe.record import AccessDecision, RequestKind, RequestRecord
from gateway.observe.tracing import (
    FailedAttempt,
    Finished,
    RequestTrace,
    Stage,
    TraceParent,
    Tracer,
    format_traceparent,
    parse_traceparent,
    valid_tracestate,
)
from gateway.observe.tracing_export import build_spans
from gateway.settings.trusted import TrustedProxies

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


class Sink:
    """Keeps what the tracer hands over."""

    def __init__(self) -> None:
        self.kept: list[tuple[RequestTrace, RequestRecord, Finished]] = []

    def export(self, trace: RequestTrace, rec: RequestRecord, finished: Finished) -> None:
        self.kept.append((trace, rec, finished))

    def close(self) -> None:
        pass


def _scope(*headers: tuple[bytes, bytes], peer: str = "203.0.113.9") -> dict[str, Any]:
    return {"headers": list(headers), "client": (peer, 40000)}


def _rec() -> RequestRecord:
    return RequestRecord(at=0.0, kind=RequestKind.HTTP, method="GET", path="/x", route="app")


def _tracer(ratio: float, parent_sampling: str = "ignore") -> tuple[Tracer, Sink]:
    sink = Sink()
    return Tracer(sink, sample_ratio=ratio, parent_sampling=parent_sampling), sink


# -- traceparent and tracestate ---------------------------------------------------------------------


def test_a_valid_traceparent_is_parsed() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01".encode()) == TraceParent(
        int(TRACE, 16), int(SPAN, 16), True
    )
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode()) == TraceParent(
        int(TRACE, 16), int(SPAN, 16), False
    )
    # A later version: the known fields are read, what follows a "-" is ignored (§3.2.4).
    parsed = parse_traceparent(f"01-{TRACE}-{SPAN}-03-whatever".encode())
    assert parsed == TraceParent(int(TRACE, 16), int(SPAN, 16), True)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        f"00-{TRACE}-{SPAN}-01-extra".encode(),  # version 00 has exactly four fields
        f"00-{TRACE.upper()}-{SPAN}-01".encode(),  # upper-case hex
        f"ff-{TRACE}-{SPAN}-01".encode(),  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        f"00-{TRACE[:-1]}-{SPAN}-01".encode(),
        f"00-{TRACE}-{SPAN}-1".encode(),
    ],
)
def test_an_invalid_traceparent_is_ignored(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_a_traceparent_is_written_in_version_00() -> None:
    assert format_traceparent(int(TRACE, 16), int(SPAN, 16), True) == f"00-{TRACE}-{SPAN}-01".encode()
    assert format_traceparent(1, 2, False) == b"00-" + b"0" * 31 + b"1-" + b"0" * 15 + b"2-00"


def test_tracestate_is_joined_checked_and_dropped_whole_when_invalid() -> None:
    assert valid_tracestate([b"congo=t61rcWkgMzE", b"rojo=00f067aa0ba902b7"]) == (
        b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    )
    assert valid_tracestate([b"tenant@vendor=x , ot=th:0"]) == b"tenant@vendor=x,ot=th:0"
    assert valid_tracestate([b"Bad=x"]) is None  # keys are lower case
    assert valid_tracestate([b"a=1,a=2"]) is None  # a key appears once
    assert valid_tracestate([b"a=x\x01"]) is None
    assert valid_tracestate([b",".join(b"k%d=v" % i for i in range(33))]) is None  # over 32 members
    assert valid_tracestate([b"a=" + b"x" * 600]) is None
    assert valid_tracestate([b" , "]) is None


# -- the sampling decision and the trust rule -------------------------------------------------------


def test_without_a_traceparent_the_trace_is_new_and_the_ratio_decides() -> None:
    always, _ = _tracer(1.0)
    never, _ = _tracer(0.0)
    rec = _rec()
    trace = always.begin(_scope(), TrustedProxies([]), rec)
    assert trace.sampled
    assert trace.parent_id == 0
    assert trace.why == "ratio"
    assert rec.trace_id == f"{trace.trace_id:032x}"
    assert rec.span_id == f"{trace.span_id:016x}"
    assert not never.begin(_scope(), TrustedProxies([]), _rec()).sampled


def test_an_untrusted_client_keeps_its_trace_id_but_cannot_force_sampling() -> None:
    tracer, _ = _tracer(0.0, parent_sampling="trusted_proxies")
    scope = _scope((b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", b"ot=th:0"))
    trace = tracer.begin(scope, TrustedProxies(["10.0.0.0/8"]), _rec())
    assert (trace.trace_id, trace.parent_id) == (int(TRACE, 16), int(SPAN, 16))
    assert not trace.sampled
    assert trace.why == "ratio"
    assert trace.tracestate is None  # a vendor's sampling hint from the client is not passed on


def test_a_trusted_proxy_decides_only_when_parent_sampling_says_so() -> None:
    header = (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())
    trusted = TrustedProxies(["10.0.0.0/8"])
    ignoring, _ = _tracer(0.0)
    assert not ignoring.begin(_scope(header, peer="10.1.2.3"), trusted, _rec()).sampled
    honouring, _ = _tracer(0.0, parent_sampling="trusted_proxies")
    trace = honouring.begin(_scope(header, (b"tracestate", b"rojo=1"), peer="10.1.2.3"), trusted, _rec())
    assert trace.sampled
    assert trace.why == "parent"
    assert trace.tracestate == b"rojo=1"
    # A trusted proxy's "not sampled" is honoured too.
    unsampled = (b"traceparent", f"00-{TRACE}-{SPAN}-00".encode())
    always, _ = _tracer(1.0, parent_sampling="trusted_proxies")
    assert not always.begin(_scope(unsampled, peer="10.1.2.3"), trusted, _rec()).sampled


def test_a_clients_baggage_never_reaches_the_app_a_trusted_proxys_does() -> None:
    """The attack run: ``baggage: userId=admin,role=root`` went to the apps, whose OpenTelemetry
    propagators adopt its entries and pass them on to every service they call."""
    tracer, _ = _tracer(1.0, parent_sampling="trusted_proxies")
    trusted = TrustedProxies(["10.0.0.0/8"])
    parent = (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())
    client = tracer.begin(_scope(parent, (b"baggage", b"userId=admin,role=root")), trusted, _rec())
    sent = client.upstream_headers([(b"host", b"app"), (b"baggage", b"userId=admin,role=root")])
    assert [name for name, _ in sent] == [b"host", b"traceparent"]
    alone = tracer.begin(_scope((b"baggage", b"role=root")), trusted, _rec())  # no traceparent at all
    assert b"baggage" not in dict(alone.upstream_headers([(b"baggage", b"role=root")]))
    proxy = tracer.begin(
        _scope(parent, (b"baggage", b"a=1"), (b"baggage", b"b=2"), peer="10.1.2.3"), trusted, _rec()
    )
    assert (
        dict(proxy.upstream_headers([(b"baggage", b"a=1"), (b"baggage", b"b=2")]))[b"baggage"] == b"a=1,b=2"
    )


def test_two_traceparents_are_neither_believed() -> None:
    tracer, _ = _tracer(1.0)
    scope = _scope(
        (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        (b"traceparent", f"00-{'1' * 32}-{SPAN}-01".encode()),
    )
    trace = tracer.begin(scope, TrustedProxies([]), _rec())
    assert trace.trace_id not in (int(TRACE, 16), int("1" * 32, 16))
    assert trace.parent_id == 0


def test_the_draw_does_not_depend_on_the_trace_id_a_client_chooses() -> None:
    # A ratio sampler on the trace id would let a client pick ids that are always sampled; the
    # gateway's draw gives every client id the same odds: about half of the same id at 0.5.
    tracer, _ = _tracer(0.5)
    header = (b"traceparent", f"00-{'0' * 31}1-{SPAN}-00".encode())  # the lowest id there is
    sampled = sum(tracer.begin(_scope(header), TrustedProxies([]), _rec()).sampled for _ in range(400))
    assert 100 < sampled < 300


# -- which traces are kept ----------------------------------------------------------------------------


def _end(tracer: Tracer, trace: RequestTrace, rec: RequestRecord, status: int) -> None:
    tracer.end(trace, rec, status=status, request_id="rid", target="http://10.0.0.5:8080")


def test_unsampled_requests_are_dropped_but_errors_are_kept() -> None:
    tracer, sink = _tracer(0.0)
    for status in (200, 302, 404, 499):
        rec = _rec()
        _end(tracer, tracer.begin(_scope(), TrustedProxies([]), rec), rec, status)
    assert sink.kept == []
    failed = _rec()
    failed.decision, failed.reason = AccessDecision.ERROR, ErrorReason.UPSTREAM_ERROR
    _end(tracer, tracer.begin(_scope(), TrustedProxies([]), failed), failed, 502)
    crashed = _rec()
    _end(tracer, tracer.begin(_scope(), TrustedProxies([]), crashed), crashed, 0)  # no answer at all
    assert [(f.status, f.error, f.why) for _, _, f in sink.kept] == [(502, True, "error"), (0, True, "error")]


def test_the_lockdown_page_is_not_an_error() -> None:
    tracer, sink = _tracer(0.0)
    rec = _rec()
    rec.reason = ErrorReason.LOCKDOWN
    _end(tracer, tracer.begin(_scope(), TrustedProxies([]), rec), rec, 503)
    assert sink.kept == []


def test_sampled_requests_are_kept_with_their_reason() -> None:
    tracer, sink = _tracer(1.0)
    rec = _rec()
    _end(tracer, tracer.begin(_scope(), TrustedProxies([]), rec), rec, 200)
    assert [(f.status, f.error, f.why, f.request_id) for _, _, f in sink.kept] == [
        (200, False, "ratio", "rid")
    ]


# -- stages and what the upstream is sent -------------------------------------------------------------


def test_stages_follow_each_other_and_the_upstream_gets_one_traceparent() -> None:
    tracer, _ = _tracer(1.0)
    client_sent = [
        (b"host", b"app"),
        (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        (b"tracestate", b"rojo=1"),
        (b"accept", b"*/*"),
    ]
    trace = tracer.begin(_scope(*client_sent), TrustedProxies([]), _rec())
    trace.enter(Stage.IDENTIFY)
    trace.enter(Stage.AUTHORIZE)
    trace.leave()
    sent = trace.upstream_headers(client_sent)
    trace.leave()
    assert [stage for stage, *_ in trace.stages] == [Stage.IDENTIFY, Stage.AUTHORIZE, Stage.UPSTREAM]
    upstream_id = trace.stages[-1][1]
    parents = [value for name, value in sent if name == b"traceparent"]
    assert parents == [format_traceparent(trace.trace_id, upstream_id, True)]
    assert not any(name == b"tracestate" for name, _ in sent)  # the client's is not honoured
    assert (b"accept", b"*/*") in sent
    assert sent[0] == (b"host", b"app")
    ends = [(start, end) for _, _, start, end in trace.stages]
    assert all(start <= end for start, end in ends)
    assert all(ends[i][1] <= ends[i + 1][0] for i in range(len(ends) - 1))


def test_without_client_context_the_header_list_is_only_extended() -> None:
    tracer, _ = _tracer(0.0)
    trace = tracer.begin(_scope((b"host", b"app")), TrustedProxies([]), _rec())
    headers = [(b"host", b"app")]
    sent = trace.upstream_headers(headers)
    trace.leave()
    [(stage, upstream_id, _, _)] = trace.stages
    assert stage is Stage.UPSTREAM
    assert sent is headers
    assert sent == [
        (b"host", b"app"),
        (b"traceparent", format_traceparent(trace.trace_id, upstream_id, False)),
    ]


def test_spans_are_built_under_the_server_span() -> None:
    tracer, sink = _tracer(0.0)
    scope = _scope((b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()))
    rec = _rec()
    rec.decision, rec.reason = AccessDecision.ERROR, ErrorReason.UPSTREAM_ERROR
    trace = tracer.begin(scope, TrustedProxies([]), rec)
    trace.enter(Stage.IDENTIFY)
    trace.enter(Stage.AUTHORIZE)
    trace.upstream_headers([(b"host", b"")])
    _end(tracer, trace, rec, 502)
    [(kept, kept_rec, finished)] = sink.kept
    spans = build_spans(
        kept, kept_rec, finished, Resource.create({"service.name": "gw"}), InstrumentationScope("t")
    )
    server, *stages = spans
    assert server.name == "GET app"
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None
    assert server.parent.span_id == int(SPAN, 16)
    assert server.parent.is_remote
    assert server.context is not None
    assert server.context.trace_id == int(TRACE, 16)
    assert server.context.trace_flags.sampled  # or the SDK's batch processor would drop it
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 502
    assert server.attributes["gateway.sampling"] == "error"
    assert [span.name for span in stages] == ["identify", "authorize", "upstream"]
    assert all(span.parent == server.context for span in stages)
    upstream = stages[-1]
    assert upstream.kind is SpanKind.CLIENT
    assert upstream.status.status_code is StatusCode.ERROR
    assert upstream.attributes is not None
    assert upstream.attributes["server.address"] == "10.0.0.5"
    assert stages[0].status.status_code is StatusCode.UNSET
    assert server.start_time is not None
    assert server.end_time is not None
    assert all(
        span.start_time is not None
        and span.end_time is not None
        and server.start_time <= span.start_time <= span.end_time <= server.end_time
        for span in stages
    )
    # Nothing about the person: no user, session or client address on any span.
    for span in spans:
        assert span.attributes is not None
        assert not {"user.name", "client.address", "session.id"} & set(span.attributes)


def test_a_retried_attempt_is_a_client_span_under_the_upstream_span() -> None:
    tracer, sink = _tracer(1.0)
    rec = _rec()
    trace = tracer.begin(_scope(), TrustedProxies([]), rec)
    trace.upstream_headers([(b"host", b"")])
    started = time.perf_counter_ns()
    attempt = FailedAttempt(
        "http://10.0.0.5:8080", "UpstreamConnectError", "refused", started, started + 1000
    )
    tracer.end(trace, rec, status=200, request_id="r", target="http://10.0.0.6:8080", retried=(attempt,))
    [(kept, kept_rec, finished)] = sink.kept
    server, upstream, tried = build_spans(
        kept, kept_rec, finished, Resource.create({"service.name": "gw"}), InstrumentationScope("t")
    )
    assert upstream.name == "upstream"
    assert upstream.attributes is not None
    assert upstream.attributes["server.address"] == "10.0.0.6"
    assert upstream.attributes["http.request.resend_count"] == 1
    assert upstream.status.status_code is StatusCode.UNSET
    assert tried.name == "upstream attempt"
    assert tried.kind is SpanKind.CLIENT
    assert tried.parent == upstream.context
    assert tried.context is not None
    assert upstream.context is not None
    assert tried.context.span_id not in (upstream.context.span_id, kept.span_id)
    assert tried.attributes is not None
    assert tried.attributes["server.address"] == "10.0.0.5"
    assert tried.attributes["server.port"] == 8080
    assert tried.attributes["error.type"] == "UpstreamConnectError"
    assert "http.request.resend_count" not in tried.attributes  # the first try is no resend
    assert tried.status.status_code is StatusCode.ERROR
    assert tried.end_time is not None
    assert tried.start_time is not None
    assert tried.end_time - tried.start_time == 1000
    assert server.status.status_code is StatusCode.UNSET


# -- the access log -----------------------------------------------------------------------------------


def test_the_access_log_names_the_trace_and_span_when_tracing_is_on() -> None:
    traced = RequestRecord(
        at=0.0, kind=RequestKind.HTTP, method="GET", request_id="req-1", trace_id=TRACE, span_id=SPAN
    )
    doc = AccessEntry(traced).document()
    assert doc["trace"] == {"id": TRACE}
    assert doc["span"] == {"id": SPAN}
    assert doc["http"]["request"]["id"] == "req-1"
    # Off: trace.id stays the request id, as before tracing existed; no span.
    untraced = AccessEntry(
        RequestRecord(at=0.0, kind=RequestKind.HTTP, method="GET", request_id="req-1")
    ).document()
    assert untraced["trace"] == {"id": "req-1"}
    assert "span" not in untraced
