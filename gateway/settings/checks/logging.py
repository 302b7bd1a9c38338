"""Checks for ``logging``: the queue, and each sink's type, keys, destination and limits.

A key meant for another sink type is an error rather than silently ignored, so a sink that looks
configured is configured.
"""

from __future__ import annotations

import os
from typing import Final
from urllib.parse import urlsplit

from gateway.settings.checks.values import TOKEN, require_positive, url_problem
from gateway.settings.report import KeyPath, Report, quote
from gateway.settings.schema import LogSink, Settings

__all__ = ["check_logging"]

# Which keys each sink type reads: a key meant for another type is an error, not silently ignored.
_SINK_KEYS: Final = {
    "stdout": frozenset(),
    "file": frozenset({"path", "max_bytes", "backups"}),
    "syslog": frozenset({"address", "ca_file", "app_name", "facility"}),
    "http": frozenset(
        {"url", "profile", "headers", "token", "index", "labels", "batch_size", "flush_interval"}
    ),
}
_SINK_COMMON: Final = frozenset({"type", "name", "queue_size", "retries", "timeout"})
_SINK_REQUIRED: Final = {"file": "path", "syslog": "address", "http": "url"}
_SYSLOG_SCHEMES: Final = ("udp", "tcp", "tls")


def check_logging(settings: Settings, report: Report) -> None:
    """The queue and flush bound are positive; sink names are unique; every sink is complete."""
    logging = settings.logging
    require_positive(
        [
            (("logging", "queue_size"), logging.queue_size),
            (("logging", "flush_timeout"), logging.flush_timeout),
        ],
        report,
    )
    names: dict[str, int] = {}
    for index, sink in enumerate(logging.sinks):
        at: KeyPath = ("logging", "sinks", index)
        name = sink.name or f"{sink.type}-{index}"
        if name in names:
            report.add((*at, "name"), f"{quote(name)} is already the name of sinks[{names[name]}]")
        names[name] = index
        _check_sink(sink, at, report)


def _check_sink_keys(sink: LogSink, at: KeyPath, report: Report) -> None:
    written: object = report.data
    for key in at:
        # Absent from the document (the default sinks): nothing written, nothing to check.
        if isinstance(written, dict):
            written = written.get(key)
        elif isinstance(written, list) and isinstance(key, int) and key < len(written):
            written = written[key]
        else:
            return
    allowed = _SINK_KEYS[sink.type] | _SINK_COMMON
    for key in written if isinstance(written, dict) else ():
        if key not in allowed:
            report.add((*at, key), f"does not apply to a {sink.type} sink", line=report.line((*at, key)))


def _check_sink(sink: LogSink, at: KeyPath, report: Report) -> None:
    _check_sink_keys(sink, at, report)
    required = _SINK_REQUIRED.get(sink.type)
    if required is not None and not getattr(sink, required):
        report.add(at, f"a {sink.type} sink needs {quote(required)}")
    positive: list[tuple[KeyPath, float]] = [
        ((*at, "max_bytes"), sink.max_bytes),
        ((*at, "batch_size"), sink.batch_size),
        ((*at, "flush_interval"), sink.flush_interval),
        ((*at, "timeout"), sink.timeout),
        ((*at, "retries"), sink.retries),
    ]
    if sink.queue_size is not None:
        positive.append(((*at, "queue_size"), sink.queue_size))
    require_positive(positive, report)
    if sink.backups < 0:
        report.add((*at, "backups"), "must not be negative; use 0 to truncate instead of keeping old files")
    _check_destination(sink, at, report)


def _check_destination(sink: LogSink, at: KeyPath, report: Report) -> None:
    """Where the sink writes: a file's directory, a syslog address, an HTTP endpoint and headers."""
    if sink.type == "file" and sink.path:
        problem = _log_file_problem(sink.path)
        if problem:
            report.add((*at, "path"), problem)
    if sink.type == "syslog" and sink.address:
        problem = _syslog_address_problem(sink.address)
        if problem:
            report.bad(
                (*at, "address"), problem, "expected udp://host:port, tcp://host:port or tls://host:port"
            )
        if sink.ca_file is not None and not os.path.isfile(sink.ca_file):
            report.add((*at, "ca_file"), f"{sink.ca_file} is not a readable file")
    if sink.type == "http" and sink.url:
        problem = url_problem(sink.url, allow_path=True)
        if problem:
            report.bad((*at, "url"), problem, "expected the collector's endpoint, e.g. https://es:9200/_bulk")
    for header, value in sink.headers.items():
        if not TOKEN.fullmatch(header) or any(c in value for c in "\r\n\0"):
            report.add((*at, "headers", header), "is not a valid HTTP header name and value")


def _log_file_problem(path: str) -> str | None:
    """Why a file sink could never write ``path``: every event would be dropped while the gateway
    reports itself ready (a first-day run: a directory that did not exist)."""
    if os.path.isdir(path):
        return f"{quote(path)} is a directory; name a file in it"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"its directory {quote(directory)} does not exist; create it (the gateway does not)"
    return None


def _syslog_address_problem(address: str) -> str | None:
    scheme, sep, _ = address.partition("://")
    if not sep or scheme not in _SYSLOG_SCHEMES:
        return f"scheme must be udp, tcp or tls, not {quote(scheme) if sep else 'missing'}"
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        return "is not a valid address (bad port or brackets)"
    if not parts.hostname:
        return "has no host"
    if port is None or port == 0:
        return "needs a port 1-65535, e.g. tcp://logs.example.com:514"
    if parts.path not in ("", "/") or parts.query or parts.username is not None:
        return "must be just scheme://host:port"
    return None
