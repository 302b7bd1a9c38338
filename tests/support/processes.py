"""The processes a command started, read from /proc: to prove that none outlives it."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

__all__ = ["Process", "descendants", "port_free", "still_running", "until_listening"]

#: A process by its id and its start time (clock ticks since boot): a reused id is another process.
Process = tuple[int, int]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> set[Process]:
    """Every living process whose ancestry reaches ``pid`` (read from /proc)."""
    parents: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(int(stat.parent.name))
        if fields is not None:
            parents[int(stat.parent.name)] = (int(fields[1]), int(fields[19]))
    found: set[Process] = set()
    for child, (_, started) in parents.items():
        p = child
        while p > 1 and p in parents:
            p = parents[p][0]
            if p == pid:
                found.add((child, started))
                break
    return found


def still_running(process: Process) -> bool:
    """The same process (same start time) is alive and not a zombie."""
    fields = _stat(process[0])
    return fields is not None and fields[0] != "Z" and int(fields[19]) == process[1]


def port_free(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def until_listening(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes], port: int, *, timeout: float = 90
) -> set[Process]:
    """Wait until something ``proc`` started listens on ``port``; the processes it started meanwhile."""
    seen: set[Process] = set()
    deadline = time.monotonic() + timeout
    while port_free(port):
        assert proc.poll() is None, "the command ended before anything listened"
        assert time.monotonic() < deadline, f"nothing listened on {port} after {timeout:.0f}s"
        seen |= descendants(proc.pid)
        time.sleep(0.05)
    return seen | descendants(proc.pid)
