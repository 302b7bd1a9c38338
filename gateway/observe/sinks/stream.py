"""Sinks that write JSON lines locally: standard output and a size-rotated file.

Where the write runs. Writing a batch (what gathered in 50 ms) to a regular file is a copy into the
page cache, ~0.1 ms; handing it to a thread cost more than writing it: ~2-3 µs of CPU per *entry*
(in-process, 2026-12-04: the access log's cost per request 7.2-8.5 µs with the write in a thread,
4.6-5.8 µs on the event loop; a dedicated writer thread or a thread doing nothing but ``os.write``
was no better), the batch's 300 KB crossing cores and the GIL changing hands. So a sink whose target
is a regular file writes on the event loop, as nginx writes its access log from the worker's loop.
A write that takes longer than :data:`SLOW_WRITE` (a disk under pressure) moves that sink's writes to
a thread for :data:`OFF_LOOP_FOR` and says so once. A pipe or socket (standard output under a
container runtime or systemd) can block for as long as its reader stalls: it is always written from
a thread. The file sink is meant for local disks; a log on a network file system that can hang should
go to syslog or an HTTP collector instead (README, logging).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from gateway.observe.sinks.base import Delivery, Sink, terminal_safe

if TYPE_CHECKING:
    from io import BufferedWriter

    from gateway.observe.access import Entry

__all__ = ["OFF_LOOP_FOR", "SLOW_WRITE", "FileSink", "StdoutSink"]

logger = logging.getLogger("gateway.observe.sinks")

#: A write on the event loop that took longer than this (seconds) sends the sink's writes to a thread...
SLOW_WRITE: Final = 0.005
#: ... for this long (seconds), then it tries the loop again.
OFF_LOOP_FOR: Final = 60.0


def _lines(batch: list[Entry]) -> bytes:
    # One join with the separator: no copy of each event to append its newline.
    return terminal_safe(b"\n".join([entry.json() for entry in batch]) + b"\n" if batch else b"")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _open_log(path: str) -> int:
    """Open the file sink's path for appending; a link only to a FIFO or a device (``/dev/stdout``).

    A link to a regular file is refused: someone who can write the log's directory could otherwise
    point it at any file the gateway may write (its keyring, its database) and have log lines with a
    path and User-Agent of their choosing appended there, or the file emptied at rotation (an attack
    run did both).

    Raises:
        OSError: The path cannot be opened, or is a link to a regular file.
    """
    try:
        # 0o640: the access log names users and addresses; it is not for every local account.
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(
            errno.ELOOP,
            f"{path} is a symbolic link to a regular file; log to the file itself (or use type: stdout)",
        )
    return fd


def _regular_or_absent(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


class _Placement:
    """Whether a sink's next write runs on the event loop or in a thread (see the module's docstring)."""

    __slots__ = ("_name", "_threaded_until")

    def __init__(self, name: str) -> None:
        self._name = name
        self._threaded_until = 0.0

    async def write(self, write: Callable[[bytes], None], data: bytes, *, on_loop: bool) -> None:
        """Run ``write(data)``: on the loop when ``on_loop`` and no write was slow lately, else in a thread."""
        started = time.monotonic()
        if not on_loop or started < self._threaded_until:
            await asyncio.to_thread(write, data)
            return
        write(data)
        took = time.monotonic() - started
        if took > SLOW_WRITE:
            self._threaded_until = time.monotonic() + OFF_LOOP_FOR
            logger.warning(
                "log sink %s: a write took %.0f ms; writing from a thread for the next %.0f s",
                self._name,
                took * 1000,
                OFF_LOOP_FOR,
            )


class StdoutSink(Sink):
    """One JSON document per line on standard output (container log collectors read it from there)."""

    def __init__(self, name: str, delivery: Delivery) -> None:
        super().__init__(name, delivery)
        self._placement = _Placement(name)

    async def send(self, batch: list[Entry]) -> None:
        # A full pipe to the container runtime must block this sink, never the event loop: only a
        # regular file (output redirected to one) is written on the loop.
        fd = sys.stdout.fileno()
        await self._placement.write(lambda data: _write_all(fd, data), _lines(batch), on_loop=_is_regular(fd))


class FileSink(Sink):
    """JSON lines appended to ``path``; past ``max_bytes`` it becomes ``path.1`` (older ones shift up to
    ``path.<backups>``, the oldest is deleted). Several workers may share the file: writes are
    ``O_APPEND`` and a worker reopens the path when another one has rotated it."""

    def __init__(self, name: str, delivery: Delivery, *, path: str, max_bytes: int, backups: int) -> None:
        super().__init__(name, delivery)
        self._path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._file: BufferedWriter | None = None
        self._placement = _Placement(name)

    async def send(self, batch: list[Entry]) -> None:
        # The path is normally a regular file (or not there yet: it is created as one); a FIFO or a
        # device in its place is opened and written from a thread (opening a FIFO waits for a reader).
        await self._placement.write(self._write, _lines(batch), on_loop=_regular_or_absent(self._path))

    async def aclose(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    def _write(self, data: bytes) -> None:
        file = self._current()
        # Only a regular file has a size to rotate by (a FIFO or /dev/stdout in its place cannot seek).
        if file.seekable() and file.tell() > 0 and file.tell() + len(data) > self._max_bytes:
            self._rotate(file)
            file = self._current()
        file.write(data)
        file.flush()

    def _current(self) -> BufferedWriter:
        file = self._file
        if file is not None:
            try:
                same = os.path.samestat(os.fstat(file.fileno()), os.stat(self._path))
            except FileNotFoundError:
                same = False
            if same:
                if file.seekable():
                    file.seek(0, os.SEEK_END)
                return file
            file.close()
        self._file = file = os.fdopen(_open_log(self._path), "ab")
        return file

    def _rotate(self, file: BufferedWriter) -> None:
        if self._backups == 0:
            # Through the descriptor: the path may have been replaced by a link since it was opened.
            os.ftruncate(file.fileno(), 0)
            return
        file.close()
        self._file = None
        for index in range(self._backups - 1, 0, -1):
            older = f"{self._path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self._path}.{index + 1}")
        os.replace(self._path, f"{self._path}.1")
