"""Syslog (RFC 5424) over UDP, TCP or TLS; TCP and TLS use octet-counting framing (RFC 6587 §3.4.1).

Each event is one message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - JSON``. MSGID is the
event stream (``access`` or ``security``), the severity informational (6) or, for alerts, warning (4).
The JSON body is the same ECS document the other sinks carry. A TCP/TLS connection opens on first use
and is reopened after any error; UDP is fire-and-forget (a message per datagram).

A UDP datagram holds at most :data:`MAX_UDP` bytes. An event that does not fit (a security event with
70 KB of details, a long path) is cut down rather than dropped (an attack run found such events
silently left out and counted as sent): its identifying fields stay (:data:`KEPT`: when, what, the
outcome, who, from where, the ids), the longest other strings, then whole objects, are replaced by
``[TRUNCATED n bytes]`` until it fits, and it is tagged ``truncated``; the body stays one JSON document.
If even that does not fit (identifying fields of tens of KB), they are cut to their first
:data:`_KEPT_PREFIX` characters; an event too large after all that is dropped and counted.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import socket
import ssl
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import msgspec

from gateway.observe.sinks.base import Delivery, Sink, terminal_safe

if TYPE_CHECKING:
    from gateway.observe.access import Entry

__all__ = ["FACILITIES", "KEPT", "MAX_UDP", "SyslogSink", "cut_down", "format_message"]

FACILITIES: Final = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "authpriv": 10,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
#: The longest message sent in one UDP datagram (the IPv4 maximum is 65,507 bytes of payload).
MAX_UDP: Final = 65_000
#: Fields a cut-down event keeps: when, what happened and how it ended, who, from where, the ids.
#: Everything under ``event`` and ``ecs`` is kept as well (short values the gateway writes).
KEPT: Final = frozenset(
    {
        ("@timestamp",), ("tags",), ("user", "name"), ("source", "ip"), ("session", "id"),
        ("trace", "id"), ("span", "id"), ("http", "request", "id"), ("http", "request", "method"),
        ("http", "response", "status_code"), ("gateway", "actor"), ("gateway", "subject"),
        ("gateway", "outcome"), ("gateway", "kind"), ("gateway", "decision"), ("gateway", "reason"),
        ("gateway", "route"),
    }
)  # fmt: skip
_KEPT_ROOTS: Final = frozenset({"event", "ecs", "tags", "@timestamp"})
# The characters a kept string is cut to when the event does not fit otherwise.
_KEPT_PREFIX: Final = 1024
_TRUNCATED: Final = "truncated"
_ENCODER: Final = msgspec.json.Encoder()

# A value's place in a document: its path, the dict or list holding it and its key or index there.
_Place = tuple[tuple[str | int, ...], Any, str | int]


def _field(text: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or the nil value ``-`` (RFC 5424 §6)."""
    cleaned = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def format_header(entry: Entry, *, facility: int, hostname: str, app_name: str, procid: str) -> bytes:
    """The RFC 5424 header of ``entry``'s message, up to the JSON body (at most ~500 bytes)."""
    stamp = datetime.fromtimestamp(entry.at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = (
        f"<{facility * 8 + entry.severity}>1 {stamp} {_field(hostname, 255)} {_field(app_name, 48)}"
        f" {_field(procid, 128)} {_field(entry.stream, 32)} - "
    )
    return header.encode("ascii")


def format_message(entry: Entry, *, facility: int, hostname: str, app_name: str, procid: str) -> bytes:
    """One RFC 5424 message for ``entry`` (no framing)."""
    header = format_header(entry, facility=facility, hostname=hostname, app_name=app_name, procid=procid)
    return header + terminal_safe(entry.json())


def _size(value: object) -> int:
    """Bytes ``value`` takes in the body (compact JSON, terminal-safe): the same inside a document as
    alone, so replacing it changes the body's size by exactly the difference."""
    return len(terminal_safe(_ENCODER.encode(value)))


def _places(node: object, path: tuple[str | int, ...] = ()) -> list[_Place]:
    """Every value below ``node`` (depth first, parents before children)."""
    found: list[_Place] = []
    items: Any = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found.append(((*path, key), node, key))
        found.extend(_places(value, (*path, key)))
    return found


def _kept(path: tuple[str | int, ...]) -> bool:
    return path[0] in _KEPT_ROOTS or path in KEPT


def _holds_kept(path: tuple[str | int, ...]) -> bool:
    """Whether the object at ``path`` holds a kept field (so it is cut inside, never whole)."""
    return path[0] in _KEPT_ROOTS or any(kept[: len(path)] == path for kept in KEPT)


def _marker(value: object) -> str:
    size = len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) else _size(value)
    return f"[TRUNCATED {size} bytes]"


def cut_down(body: bytes, room: int) -> bytes | None:
    """``body`` (an event's JSON) cut to at most ``room`` bytes, still one JSON document, or None.

    In rounds, each only while the body is too long: the longest strings that are not :data:`KEPT`
    are replaced by ``[TRUNCATED n bytes]`` (n: the UTF-8 bytes left out), then the largest objects and
    arrays that hold no kept field, then kept strings over :data:`_KEPT_PREFIX` characters are cut to
    that prefix and the marker. The document is tagged ``truncated``.
    """
    document = msgspec.json.decode(body)
    if not isinstance(document, dict):
        return None
    tags = document.get("tags")
    document["tags"] = [*tags, _TRUNCATED] if isinstance(tags, list) else [_TRUNCATED]
    size = _size(document)
    places = _places(document)
    rounds = (
        ([p for p in places if not _kept(p[0]) and isinstance(_value(p), str)], 0),
        ([p for p in places if not _holds_kept(p[0]) and isinstance(_value(p), dict | list)], 0),
        ([p for p in places if _kept(p[0]) and isinstance(_value(p), str)], _KEPT_PREFIX),
    )
    for candidates, keep in rounds:
        if size > room:
            size = _shrink(document, candidates, size, room, keep)
    data = terminal_safe(_ENCODER.encode(document))
    return data if len(data) <= room else None


def _value(place: _Place) -> Any:
    _, parent, key = place
    return parent[key]


def _attached(document: dict[str, Any], place: _Place) -> bool:
    """Whether ``place`` is still in ``document`` (not inside an object already cut away)."""
    path, parent, _ = place
    node: Any = document
    for key in path[:-1]:
        if isinstance(node, str):
            return False  # replaced by a marker
        node = node[key]
    return node is parent


def _shrink(document: dict[str, Any], places: list[_Place], size: int, room: int, keep: int) -> int:
    """Replace the largest of ``places`` (by their first ``keep`` characters and a marker) while the
    body of ``size`` bytes is over ``room``; returns the body's new size."""
    # Largest first: an object comes before anything inside it. Equal sizes go by position.
    heap = [(-_size(_value(place)), index) for index, place in enumerate(places)]
    heapq.heapify(heap)
    while size > room and heap:
        negative, index = heapq.heappop(heap)
        place = places[index]
        if not _attached(document, place):
            continue  # inside an object already replaced: no longer part of the body
        value = _value(place)
        replacement = f"{value[:keep]} {_marker(value[keep:])}" if keep else _marker(value)
        saved = -negative - _size(replacement)
        if saved > 0:
            _, parent, key = place
            parent[key] = replacement
            size -= saved
    return size


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
            if len(message) > MAX_UDP:
                header = format_header(
                    entry,
                    facility=self._facility,
                    hostname=self._hostname,
                    app_name=self._app_name,
                    procid=self._procid,
                )
                body = cut_down(entry.json(), MAX_UDP - len(header))
                if body is None:
                    self._unsendable(entry)
                    continue
                self._cut()
                message = header + body
            self._udp.sendto(message)

    async def aclose(self) -> None:
        await self._disconnect()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
