"""Syslog (RFC 5424) over UDP, TCP or TLS; TCP and TLS use octet-counting framing (RFC 6587 §3.4.1).

Each event is one message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - JSON``. MSGID is the
event stream (``access`` or ``security``), the severity informational (6) or, for alerts, warning (4).
The JSON body is the same ECS document the other sinks carry. A TCP/TLS connection opens on first use
and is reopened after any error; UDP is fire-and-forget (a message per datagram).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from gateway.observe.sinks.base import Delivery, Sink, terminal_safe

if TYPE_CHECKING:
    from gateway.observe.access import Entry

__all__ = ["FACILITIES", "SyslogSink", "format_message"]

FACILITIES: Final = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "authpriv": 10,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
_MAX_UDP: Final = 65_000


def _field(text: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or the nil value ``-`` (RFC 5424 §6)."""
    cleaned = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def format_message(entry: Entry, *, facility: int, hostname: str, app_name: str, procid: str) -> bytes:
    """One RFC 5424 message for ``entry`` (no framing)."""
    stamp = datetime.fromtimestamp(entry.at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = (
        f"<{facility * 8 + entry.severity}>1 {stamp} {_field(hostname, 255)} {_field(app_name, 48)}"
        f" {_field(procid, 128)} {_field(entry.stream, 32)} - "
    )
    return header.encode("ascii") + terminal_safe(entry.json())


class SyslogSink(Sink):
    """Delivers to a syslog server at ``udp://``, ``tcp://`` or ``tls://host:port``."""

    def __init__(
        self,
        name: str,
        delivery: Delivery,
        *,
        address: str,
        facility: str,
        app_name: str,
        ca_file: str | None = None,
        timeout: float = 10.0,
        hostname: str | None = None,
    ) -> None:
        super().__init__(name, delivery)
        parts = urlsplit(address)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or 514
        self._facility = FACILITIES[facility]
        self._app_name = app_name
        self._hostname = hostname or socket.gethostname()
        self._procid = str(os.getpid())
        self._timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self._scheme == "tls":
            self._ssl = ssl.create_default_context(cafile=ca_file)
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._udp: asyncio.DatagramTransport | None = None

    def _message(self, entry: Entry) -> bytes:
        return format_message(
            entry,
            facility=self._facility,
            hostname=self._hostname,
            app_name=self._app_name,
            procid=self._procid,
        )

    async def send(self, batch: list[Entry]) -> None:
        if self._scheme == "udp":
            await self._send_udp(batch)
            return
        frames = b"".join(b"%d %s" % (len(message), message) for message in map(self._message, batch))
        try:
            async with asyncio.timeout(self._timeout):
                writer = await self._connection()
                writer.write(frames)
                await writer.drain()
        except BaseException:
            await self._disconnect()
            raise

    async def _connection(self) -> asyncio.StreamWriter:
        writer, reader = self._writer, self._reader
        # A server that closed the connection shows as EOF: reconnect rather than write into the void.
        if writer is not None and reader is not None and not reader.at_eof() and not writer.is_closing():
            return writer
        await self._disconnect()
        self._reader, self._writer = await asyncio.open_connection(
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl is not None else None,
        )
        return self._writer

    async def _disconnect(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(1):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError):
                pass

    async def _send_udp(self, batch: list[Entry]) -> None:
        if self._udp is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            self._udp, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(self._host, self._port)
            )
        for entry in batch:
            message = self._message(entry)
            if len(message) <= _MAX_UDP:
                self._udp.sendto(message)

    async def aclose(self) -> None:
        await self._disconnect()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
