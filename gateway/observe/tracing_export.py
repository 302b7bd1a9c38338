"""Kept traces to an OpenTelemetry collector: spans built with the SDK, sent over OTLP/HTTP in batches.

Imported only when ``tracing.enabled`` (the SDK is not loaded otherwise). A kept
:class:`~gateway.observe.tracing.RequestTrace` becomes the request's server span and one span per stage
it went through, with the times it recorded; they go to the SDK's ``BatchSpanProcessor``, whose thread
encodes and sends them, so the event loop only appends to its queue. A full queue drops spans (the SDK
logs it) rather than holding requests up; :meth:`OtlpExport.close` sends what is queued, at shutdown.

OTLP over HTTP with protobuf, not gRPC: every collector accepts it on port 4318, it goes through
ordinary HTTP proxies and load balancers, and it needs no grpcio (a large native dependency whose
threads do not survive the fork of granian's workers).

Spans carry no user, session or client address: traces leave the gateway for another system, and the
access log already ties a trace id to who made the request. The path is written redacted as in the
access log, the query not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from gateway.observe.record import RequestRecord
from gateway.observe.redact import redact_path
from gateway.observe.tracing import FailedAttempt, Finished, RequestTrace, Stage, new_span_id
from gateway.settings.schema import TracingSettings

__all__ = ["OtlpExport", "build_spans"]

# Every exported span carries the sampled flag: the SDK's processor drops any that does not, and an
# error kept after a draw that said no is exported all the same (``gateway.sampling: error``).
_EXPORTED: Final = TraceFlags(TraceFlags.SAMPLED)


def _tracestate(raw: bytes | None) -> TraceState | None:
    if not raw:
        return None
    return TraceState.from_header([raw.decode("ascii")])


def build_spans(
    trace: RequestTrace,
    rec: RequestRecord,
    finished: Finished,
    resource: Resource,
    scope: InstrumentationScope,
) -> list[ReadableSpan]:
    """The request's server span and its stage spans, as the SDK exports them."""
    state = _tracestate(trace.tracestate)

    def unix(at: int) -> int:
        return trace.start_wall + (at - trace.start)

    def context(span_id: int) -> SpanContext:
        return SpanContext(trace.trace_id, span_id, is_remote=False, trace_flags=_EXPORTED, trace_state=state)

    server = context(trace.span_id)
    failed = Status(StatusCode.ERROR, rec.reason or None) if finished.error else Status(StatusCode.UNSET)
    attributes: dict[str, AttributeValue] = {
        "http.request.method": rec.method,
        "url.path": redact_path(rec.path),
        "gateway.kind": str(rec.kind),
        "gateway.decision": str(rec.decision),
        "gateway.sampling": finished.why,
    }
    if finished.status:
        attributes["http.response.status_code"] = finished.status
    if finished.error:
        attributes["error.type"] = str(finished.status) if finished.status else "no-response"
    if rec.route:
        attributes["gateway.route"] = rec.route
    if rec.reason:
        attributes["gateway.reason"] = rec.reason
    if finished.request_id:
        attributes["gateway.request_id"] = finished.request_id
    parent = (
        SpanContext(trace.trace_id, trace.parent_id, is_remote=True, trace_flags=TraceFlags(0))
        if trace.parent_id
        else None
    )
    name = f"{rec.method} {rec.route}" if rec.route else rec.method
    spans = [
        ReadableSpan(
            name=name,
            context=server,
            parent=parent,
            resource=resource,
            attributes=attributes,
            kind=SpanKind.SERVER,
            status=failed,
            start_time=trace.start_wall,
            end_time=unix(finished.end),
            instrumentation_scope=scope,
        )
    ]
    last = len(trace.stages) - 1
    for index, (stage, span_id, started, ended) in enumerate(trace.stages):
        stage_attributes: dict[str, AttributeValue] = {}
        if stage is Stage.UPSTREAM and finished.target:
            stage_attributes.update(_target_attributes(finished.target))
            if finished.retried:
                # OpenTelemetry's HTTP conventions: the attempt that answered is a resend.
                stage_attributes["http.request.resend_count"] = len(finished.retried)
        # Stages run one after another: the one a failed request ended in is the one that failed.
        stage_failed = finished.error and index == last
        spans.append(
            ReadableSpan(
                name=str(stage),
                context=context(span_id),
                parent=server,
                resource=resource,
                attributes=stage_attributes,
                kind=SpanKind.CLIENT if stage is Stage.UPSTREAM else SpanKind.INTERNAL,
                status=failed if stage_failed else Status(StatusCode.UNSET),
                start_time=unix(started),
                end_time=unix(ended),
                instrumentation_scope=scope,
            )
        )
        if stage is Stage.UPSTREAM:
            spans.extend(
                _attempt_span(
                    attempt, ordinal, context(new_span_id()), context(span_id), unix, resource, scope
                )
                for ordinal, attempt in enumerate(finished.retried)
            )
    return spans


def _target_attributes(url: str) -> dict[str, AttributeValue]:
    target = urlsplit(url)
    out: dict[str, AttributeValue] = {"server.address": target.hostname or "", "url.scheme": target.scheme}
    if target.port:
        out["server.port"] = target.port
    return out


def _attempt_span(
    attempt: FailedAttempt,
    ordinal: int,
    span: SpanContext,
    upstream: SpanContext,
    unix: Callable[[int], int],
    resource: Resource,
    scope: InstrumentationScope,
) -> ReadableSpan:
    """A connection attempt that failed and was retried on another target: a client span of its own
    under the upstream stage's (which is the attempt that answered, or failed last)."""
    attributes = _target_attributes(attempt.target)
    attributes["error.type"] = attempt.error
    if ordinal:
        attributes["http.request.resend_count"] = ordinal
    return ReadableSpan(
        name="upstream attempt",
        context=span,
        parent=upstream,
        resource=resource,
        attributes=attributes,
        kind=SpanKind.CLIENT,
        status=Status(StatusCode.ERROR, attempt.message),
        start_time=unix(attempt.start),
        end_time=unix(attempt.end),
        instrumentation_scope=scope,
    )


class OtlpExport:
    """The SDK's batch processor and OTLP/HTTP exporter for one worker (a :class:`SpanSink`)."""

    def __init__(self, settings: TracingSettings, *, version: str) -> None:
        # Made in the worker, after the fork: the processor's thread starts here.
        exporter = OTLPSpanExporter(
            endpoint=settings.endpoint,
            headers=dict(settings.headers),
            timeout=float(settings.timeout),
            certificate_file=settings.ca_file,
        )
        self._processor = BatchSpanProcessor(
            exporter,
            max_queue_size=settings.queue_size,
            schedule_delay_millis=float(settings.export_interval) * 1000,
            max_export_batch_size=min(512, settings.queue_size),
            export_timeout_millis=float(settings.timeout) * 1000,
        )
        self._resource = Resource.create({"service.name": settings.service_name, "service.version": version})
        self._scope = InstrumentationScope("gateway", version)

    def export(self, trace: RequestTrace, rec: RequestRecord, finished: Finished) -> None:
        """Queue the request's spans for the next batch (never blocks)."""
        for span in build_spans(trace, rec, finished, self._resource, self._scope):
            self._processor.on_end(span)

    def close(self) -> None:
        """Send what is queued (bounded by the exporter's timeout) and stop the processor's thread."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
