"""Sinks that write JSON lines locally: standard output and a size-rotated file."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

from gateway.observe.sinks.base import Delivery, Sink

if TYPE_CHECKING:
    from io import BufferedWriter

    from gateway.observe.access import Entry

__all__ = ["FileSink", "StdoutSink"]


def _lines(batch: list[Entry]) -> bytes:
    return b"".join(entry.json() + b"\n" for entry in batch)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class StdoutSink(Sink):
    """One JSON document per line on standard output (container log collectors read it from there)."""

    async def send(self, batch: list[Entry]) -> None:
        # A thread: a full pipe to the container runtime must block this sink, never the event loop.
        await asyncio.to_thread(_write_all, sys.stdout.fileno(), _lines(batch))


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

    async def send(self, batch: list[Entry]) -> None:
        await asyncio.to_thread(self._write, _lines(batch))

    async def aclose(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    def _write(self, data: bytes) -> None:
        file = self._current()
        if file.tell() > 0 and file.tell() + len(data) > self._max_bytes:
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
                file.seek(0, os.SEEK_END)
                return file
            file.close()
        # 0o640: the access log names users and addresses; it is not for every local account.
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._file = file = os.fdopen(fd, "ab")
        return file

    def _rotate(self, file: BufferedWriter) -> None:
        file.close()
        self._file = None
        if self._backups == 0:
            os.truncate(self._path, 0)
            return
        for index in range(self._backups - 1, 0, -1):
            older = f"{self._path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self._path}.{index + 1}")
        os.replace(self._path, f"{self._path}.1")
