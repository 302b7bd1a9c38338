"""Checks for ``tracing``: the collector's URL, the sampling ratio, the export limits and headers."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from gateway.settings.checks.values import TOKEN, require_positive, url_problem
from gateway.settings.report import Report
from gateway.settings.schema import Settings
from gateway.settings.store_tls import is_loopback

__all__ = ["check_tracing"]


def check_tracing(settings: Settings, report: Report) -> None:
    """The endpoint is an http(s) URL, never credentials in the clear off this machine; the ratio is a
    share; the limits are positive; headers are valid; the CA file exists. Checked even while off, so
    turning tracing on never meets a surprise."""
    tracing = settings.tracing
    if not 0.0 <= tracing.sample_ratio <= 1.0:
        report.add(("tracing", "sample_ratio"), f"must be between 0 and 1; got {tracing.sample_ratio:g}")
    require_positive(
        [
            (("tracing", "timeout"), tracing.timeout),
            (("tracing", "export_interval"), tracing.export_interval),
            (("tracing", "queue_size"), tracing.queue_size),
        ],
        report,
    )
    if not tracing.service_name.strip():
        report.add(("tracing", "service_name"), "must not be empty")
    problem = url_problem(tracing.endpoint, allow_path=True)
    if problem:
        report.bad(
            ("tracing", "endpoint"),
            problem,
            "expected the collector's OTLP/HTTP URL, e.g. http://127.0.0.1:4318/v1/traces",
        )
    elif tracing.headers and urlsplit(tracing.endpoint).scheme == "http":
        host = urlsplit(tracing.endpoint).hostname or ""
        if not is_loopback(host):
            # Headers are how a collector authenticates its senders: never in the clear across a network.
            report.add(
                ("tracing", "endpoint"),
                "must be https:// when headers are sent to a collector on another host",
            )
    for header, value in tracing.headers.items():
        if not TOKEN.fullmatch(header) or any(c in value for c in "\r\n\0"):
            report.add(("tracing", "headers", header), "is not a valid HTTP header name and value")
    if tracing.ca_file is not None and not os.path.isfile(tracing.ca_file):
        report.add(("tracing", "ca_file"), f"{tracing.ca_file} is not a readable file")
