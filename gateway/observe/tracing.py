"""Request tracing: W3C trace context in and out, the sampling decision, and one cheap recorder per request.

Tracing is off unless ``tracing.enabled``; then the data plane holds no :class:`Tracer` and touches
nothing of this module per request (one ``None`` check per stage). When it is on, each request gets a
:class:`RequestTrace`: a handful of integers and monotonic timestamps, one per stage boundary. No
OpenTelemetry object exists for it while it runs; only when it ends, and only if it is kept, does
the exporter (:mod:`gateway.observe.tracing_export`, the OpenTelemetry SDK) turn it into spans. The
SDK's own tracer decides at a span's start whether it is recorded, so keeping every error (known only
at the end) would mean recording every span of every request; here a kept request costs what a
recorded one would, and a dropped one costs a few timestamps.

Which requests are kept (:meth:`Tracer.end`):

* the sampled ones: ``tracing.sample_ratio`` of the requests, drawn by the gateway;
* every error: a 5xx answer (except the lockdown page, an operator's decision) or a request that
  ended without an answer (an unexpected failure), whatever the draw said.

An incoming ``traceparent`` is accepted from anyone for correlation: the request continues the
client's trace (same trace id, the client's span as parent). Its *sampled flag* and its
``tracestate`` are not: a client that could set them would decide how much the gateway and every
application behind it record and send to the collector (a cost attack), and vendors' ``tracestate``
entries carry sampling decisions of their own. They are honoured only with
``tracing.parent_sampling: trusted_proxies`` and only from a peer in ``trusted_proxies`` (a proxy in
front that takes part in tracing and writes its own ``traceparent``). The draw never looks at the
trace id, which the client chooses: a ratio sampler on the id would let it pick ids that are always in.

The upstream gets the ``traceparent`` of the gateway's upstream span (the client's own is replaced,
never forwarded beside it) and ``tracestate`` only when it was honoured.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple, Protocol

from gateway.errors import ErrorReason
from gateway.observe.record import RequestRecord

__all__ = [
    "FailedAttempt",
    "Finished",
    "RequestTrace",
    "SpanSink",
    "Stage",
    "TraceParent",
    "Tracer",
    "format_traceparent",
    "new_span_id",
    "parse_traceparent",
    "valid_tracestate",
]

# version "00": 2 + 1 + 32 + 1 + 16 + 1 + 2 characters (W3C Trace Context §3.2).
_TRACEPARENT_00: Final = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# A later version: the same first fields, maybe more after a "-" (§3.2.4: parse what is known).
_TRACEPARENT_LATER: Final = re.compile(
    rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?", re.S
)
# One list member of tracestate (§3.3.1): a simple or multi-tenant key, and a value of printable
# ASCII without "," and "=", not ending in a space.
_TRACESTATE_MEMBER: Final = re.compile(
    rb"[ \t]*(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    rb"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e][ \t]*"
)
# Limits of §3.3.1.1 ("at least 512 characters", 32 members); more is dropped, not truncated.
_MAX_TRACESTATE: Final = 512
_MAX_MEMBERS: Final = 32
_SAMPLED: Final = 0x01
# W3C Baggage rides with the trace context: an app's OpenTelemetry propagator adopts its entries and
# passes them on to every service it calls (an attack run sent "userId=admin,role=root" to the apps).
_CONTEXT_HEADERS: Final = (b"traceparent", b"tracestate", b"baggage")


class TraceParent(NamedTuple):
    """A parsed ``traceparent``: the trace, the caller's span and its sampled flag."""

    trace_id: int
    span_id: int
    sampled: bool


def parse_traceparent(value: bytes) -> TraceParent | None:
    """The trace context in a ``traceparent`` value, or None when it is not valid (then it is ignored).

    Strict where §3.2 is: lower-case hex, version ``ff`` and all-zero ids invalid, version ``00``
    exactly 55 characters.
    """
    value = value.strip(b" \t")
    match = _TRACEPARENT_00.fullmatch(value)
    if match is not None:
        trace_hex, span_hex, flags_hex = match.groups()
    else:
        later = _TRACEPARENT_LATER.fullmatch(value)
        if later is None or later.group(1) in (b"00", b"ff"):
            return None
        trace_hex, span_hex, flags_hex = later.group(2, 3, 4)
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags_hex, 16) & _SAMPLED))


def valid_tracestate(values: Sequence[bytes]) -> bytes | None:
    """The ``tracestate`` field lines joined as one list, or None when the list is invalid or too long.

    An invalid ``tracestate`` is dropped whole (§3.3.1.3); an empty one is nothing to pass on.
    """
    joined = b",".join(values)
    if not joined.strip(b" \t,") or len(joined) > _MAX_TRACESTATE:
        return None
    members = [member for member in joined.split(b",") if member.strip(b" \t")]
    if len(members) > _MAX_MEMBERS or not all(_TRACESTATE_MEMBER.fullmatch(m) for m in members):
        return None
    keys = [member.strip(b" \t").partition(b"=")[0] for member in members]
    if len(set(keys)) != len(keys):
        return None
    return b",".join(member.strip(b" \t") for member in members)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    """A version ``00`` ``traceparent`` value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}".encode()


class Stage(StrEnum):
    """The stage spans under a request's server span (their span names)."""

    LOCKDOWN = "lockdown"
    # Session cookie → in-process cache → fast state.
    IDENTIFY = "identify"
    # An API token checked by the verifiers, instead of identify.
    BEARER = "bearer"
    # The MFA requirement and the policy decision.
    AUTHORIZE = "authorize"
    # The exchange with the application, until its answer has been relayed (a client span).
    UPSTREAM = "upstream"


# Request ids and trace ids correlate, they are not secrets: one PRNG per process, seeded from the OS
# (see gateway.pipeline.headers), reseeded in each forked worker so two workers never repeat ids.
_ids = random.Random(secrets.randbits(128))  # noqa: S311 - correlation ids and a sampling draw
os.register_at_fork(after_in_child=lambda: _ids.seed(secrets.randbits(128)))


def _new_id(bits: int) -> int:
    return _ids.getrandbits(bits) or 1  # an all-zero id is invalid (§3.2.2.3)


def new_span_id() -> int:
    """A span id for a span the exporter adds (a retried upstream attempt)."""
    return _new_id(64)


class RequestTrace:
    """One request's trace while it runs: ids, the sampling decision, and its stages' times.

    Times are ``time.perf_counter_ns()``; the wall-clock start turns them into Unix nanoseconds when
    the spans are built. Stages run one after another, so entering one ends the previous.
    """

    __slots__ = (
        "_open",
        "baggage",
        "client_context",
        "parent_id",
        "sampled",
        "span_id",
        "stages",
        "start",
        "start_wall",
        "trace_id",
        "tracestate",
        "why",
    )

    def __init__(
        self, trace_id: int, parent_id: int, sampled: bool, why: str, tracestate: bytes | None
    ) -> None:
        self.start = time.perf_counter_ns()
        self.start_wall = time.time_ns()
        self.trace_id = trace_id
        # The caller's span (0: the trace starts here).
        self.parent_id = parent_id
        self.span_id = _new_id(64)
        self.sampled = sampled
        # Why it was sampled or not: "ratio" (the gateway's draw) or "parent" (a trusted caller's flag).
        self.why = why
        # Passed on upstream only when it was honoured.
        self.tracestate = tracestate
        # Finished stages: (stage, span id, start, end).
        self.stages: list[tuple[Stage, int, int, int]] = []
        self._open: tuple[Stage, int, int] | None = None
        # Whether the client sent traceparent, tracestate or baggage (replaced or dropped upstream).
        self.client_context = False
        # A trusted caller's baggage, passed on when its trace context was honoured.
        self.baggage: bytes | None = None

    def enter(self, stage: Stage) -> int:
        """End the running stage (if any) and start ``stage``; returns its span id."""
        now = time.perf_counter_ns()
        self.leave(now)
        span_id = _new_id(64)
        self._open = (stage, span_id, now)
        return span_id

    def leave(self, now: int | None = None) -> None:
        """End the running stage, if any."""
        if self._open is not None:
            stage, span_id, started = self._open
            self.stages.append((stage, span_id, started, time.perf_counter_ns() if now is None else now))
            self._open = None

    def upstream_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``headers`` for the application, with the trace context of a new upstream stage span.

        ``headers`` is the list built for this request (lower-case names); it is extended in place
        unless the client sent trace context of its own, which is replaced: the application must
        see one parent, the gateway's.
        """
        span_id = self.enter(Stage.UPSTREAM)
        if self.client_context:
            headers = [item for item in headers if item[0] not in _CONTEXT_HEADERS]
        headers.append((b"traceparent", format_traceparent(self.trace_id, span_id, self.sampled)))
        if self.tracestate:
            headers.append((b"tracestate", self.tracestate))
        if self.baggage:
            headers.append((b"baggage", self.baggage))
        return headers


class FailedAttempt(NamedTuple):
    """A connection to a target that failed before the request was sent, and was retried on another."""

    target: str  # the target's URL
    error: str  # the exception's class name (``error.type``)
    message: str
    start: int  # time.perf_counter_ns()
    end: int


class Finished(NamedTuple):
    """What the exporter needs to know about a request that ended, besides its trace."""

    end: int  # time.perf_counter_ns()
    status: int  # 0: no answer was sent
    error: bool
    why: str  # "ratio", "parent" or "error" (kept only because it failed)
    request_id: str
    target: str  # the upstream target's URL, "" if none was tried
    # The attempts retried on another target, in order (each a span under the upstream stage's).
    retried: tuple[FailedAttempt, ...] = ()


class SpanSink(Protocol):
    """Where kept traces go (:class:`gateway.observe.tracing_export.OtlpExport`); must not block."""

    def export(self, trace: RequestTrace, rec: RequestRecord, finished: Finished) -> None: ...

    def close(self) -> None: ...


class _Trust(Protocol):
    def is_trusted(self, ip: str) -> bool: ...

    def __bool__(self) -> bool: ...


class Tracer:
    """A worker's tracing: starts a :class:`RequestTrace` per request and hands the kept ones to the sink."""

    __slots__ = ("_honour_parent", "_ratio", "_sink")

    def __init__(self, sink: SpanSink, *, sample_ratio: float, parent_sampling: str) -> None:
        self._sink = sink
        self._ratio = sample_ratio
        self._honour_parent = parent_sampling == "trusted_proxies"

    def begin(self, scope: Mapping[str, Any], trusted: _Trust, rec: RequestRecord) -> RequestTrace:
        """Start the trace of an ASGI request from its headers (the module docstring's trust rule)."""
        parents: list[bytes] = []
        states: list[bytes] = []
        bags: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parents.append(value)
            elif name == b"tracestate":
                states.append(value)
            elif name == b"baggage":
                bags.append(value)
        # Several traceparent fields cannot be told apart: none of them is believed (§3.2).
        parent = parse_traceparent(parents[0]) if len(parents) == 1 else None
        peer = scope.get("client")
        honour = self._honour_parent and bool(trusted) and peer is not None and trusted.is_trusted(peer[0])
        trace = self._start(parent, states, honour)
        trace.client_context = bool(parents or states or bags)
        if bags and trace.why == "parent":
            trace.baggage = b",".join(bags)
        rec.trace_id, rec.span_id = f"{trace.trace_id:032x}", f"{trace.span_id:016x}"
        return trace

    def _start(self, parent: TraceParent | None, states: list[bytes], honour: bool) -> RequestTrace:
        if parent is None:
            return RequestTrace(_new_id(128), 0, self._draw(), "ratio", None)
        if honour:
            state = valid_tracestate(states) if states else None
            return RequestTrace(parent.trace_id, parent.span_id, parent.sampled, "parent", state)
        return RequestTrace(parent.trace_id, parent.span_id, self._draw(), "ratio", None)

    def _draw(self) -> bool:
        # Independent of the trace id (which a client may choose): see the module docstring.
        return _ids.random() < self._ratio

    def end(
        self,
        trace: RequestTrace,
        rec: RequestRecord,
        *,
        status: int,
        request_id: str,
        target: str,
        retried: tuple[FailedAttempt, ...] = (),
    ) -> None:
        """Close the request's trace; hand it to the exporter if it was sampled or failed."""
        now = time.perf_counter_ns()
        trace.leave(now)
        # The lockdown's 503 is the operator's maintenance page, not a failure (and there are many).
        error = status == 0 or (status >= 500 and rec.reason != ErrorReason.LOCKDOWN)
        if not (trace.sampled or error):
            return
        why = trace.why if trace.sampled else "error"
        self._sink.export(trace, rec, Finished(now, status, error, why, request_id, target, retried))

    def close(self) -> None:
        """Send what is queued and stop the exporter (blocking: run it off the event loop)."""
        self._sink.close()
