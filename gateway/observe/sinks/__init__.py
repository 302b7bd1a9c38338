"""Where access-log and security events go: stdout, a rotating file, syslog, HTTP collectors.

:class:`SinkHub` owns one :class:`~gateway.observe.sinks.base.Sink` per configured destination. The
request path calls :meth:`SinkHub.publish`, which only enqueues on every sink (a full queue drops and
counts access entries, and keeps security events and checkpoints in their place); each sink delivers
from its own background task, so a collector that is down or slow never slows or fails a request.
:meth:`SinkHub.stats` exposes per-sink counters for the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.observe.sinks.base import Delivery, PermanentError, Sink, SinkStats
from gateway.observe.sinks.http import HttpSink
from gateway.observe.sinks.stream import FileSink, StdoutSink
from gateway.observe.sinks.syslog import SyslogSink

if TYPE_CHECKING:
    from gateway.observe.access import Entry
    from gateway.settings.schema import LoggingSettings, LogSink

__all__ = [
    "Delivery",
    "FileSink",
    "HttpSink",
    "PermanentError",
    "Sink",
    "SinkHub",
    "SinkStats",
    "StdoutSink",
    "SyslogSink",
    "build_sink",
]

logger = logging.getLogger("gateway.observe.sinks")


def build_sink(config: LogSink, *, name: str, queue_size: int) -> Sink:
    """The sink a validated ``logging.sinks[]`` entry describes (nothing is opened yet)."""
    # Local and syslog sinks write what gathered within 50 ms (one write and one wake-up per batch, not
    # per request); HTTP collectors want fewer, larger requests.
    delivery = Delivery(
        queue_size=config.queue_size or queue_size,
        batch_size=500,
        flush_interval=0.05,
        retries=config.retries,
    )
    if config.type == "file":
        assert config.path is not None
        return FileSink(name, delivery, path=config.path, max_bytes=config.max_bytes, backups=config.backups)
    if config.type == "syslog":
        assert config.address is not None
        return SyslogSink(
            name,
            delivery,
            address=config.address,
            facility=config.facility,
            app_name=config.app_name,
            ca_file=config.ca_file,
            timeout=config.timeout,
        )
    if config.type == "http":
        assert config.url is not None
        return HttpSink(
            name,
            Delivery(
                queue_size=delivery.queue_size,
                batch_size=config.batch_size,
                flush_interval=config.flush_interval,
                retries=config.retries,
            ),
            url=config.url,
            profile=config.profile,
            headers=config.headers,
            token=config.token,
            index=config.index,
            labels=config.labels,
            timeout=config.timeout,
        )
    return StdoutSink(name, delivery)


class SinkHub:
    """All sinks of a worker: start, publish (hot path), stats, bounded flush on close."""

    def __init__(self, sinks: Sequence[Sink], *, flush_timeout: float = 5.0, quiet: bool = False) -> None:
        self.sinks = tuple(sinks)
        self._flush_timeout = flush_timeout
        # A CLI command's hub: a sink that lost nothing closes without a line on the command's stderr.
        self._quiet = quiet

    @classmethod
    def from_settings(cls, settings: LoggingSettings, *, command: bool = False) -> SinkHub:
        """One sink per ``logging.sinks`` entry, named ``name`` or ``<type>-<position>``. For a CLI
        ``command``: without the ``stdout`` ones (its output is its own) and quiet when nothing is lost."""
        return cls(
            [
                build_sink(sink, name=sink.name or f"{sink.type}-{index}", queue_size=settings.queue_size)
                for index, sink in enumerate(settings.sinks)
                if not (command and sink.type == "stdout")
            ],
            flush_timeout=settings.flush_timeout,
            quiet=command,
        )

    async def start(self) -> None:
        """Start every sink's delivery task (connections open on first delivery)."""
        for sink in self.sinks:
            await sink.start()

    def publish(self, entry: Entry) -> None:
        """Enqueue ``entry`` on every sink without waiting; never raises, never blocks."""
        for sink in self.sinks:
            sink.offer(entry)

    def stats(self) -> dict[str, SinkStats]:
        """Counters per sink name: queued, sent, dropped, failures, pending, dropped_security, truncated."""
        return {sink.name: sink.stats() for sink in self.sinks}

    async def close(self) -> None:
        """Deliver what is queued (all sinks together, at most ``flush_timeout``), then stop them."""
        await asyncio.gather(*(sink.close(self._flush_timeout) for sink in self.sinks))
        for name, stats in self.stats().items():
            # A last word per sink, so losses are visible even where nobody scraped the metrics.
            lost = stats.dropped or stats.failures
            logger.log(
                logging.WARNING if lost else logging.DEBUG if self._quiet else logging.INFO,
                "log sink %s closed: queued=%d sent=%d dropped=%d failures=%d dropped_security=%d truncated=%d",
                name,
                stats.queued,
                stats.sent,
                stats.dropped,
                stats.failures,
                stats.dropped_security,
                stats.truncated,
            )
