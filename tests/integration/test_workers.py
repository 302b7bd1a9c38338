"""A gateway's workers never outlive their master (``gateway/workers.py``), on a real ``gateway serve``.

Before: a master killed with SIGKILL (as the harness does when a graceful stop takes too long) left its
workers serving, and a worker that got a second stop request while starting froze in granian's signal
code, deaf to every later SIGTERM. Every process these tests start is SIGKILLed at the end whatever
happens, so a failure here leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.harness import (
    Gateway,
    echo_route,
    free_port,
    gateway_config,
    run_gateway,
    wait_until,
)

# "Within a few seconds": generous for a loaded machine, far below server.graceful_timeout (30 s),
# the only other bound that could end an orphan.
FEW_SECONDS = 10.0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in _children(todo.pop()) - found:
            found.add(child)
            todo.append(child)
    return found


def _at_least(count: int, pids: set[int]) -> set[int] | None:
    return pids if len(pids) >= count else None


def _has_open(pid: int, name: str) -> bool:
    try:
        return any(os.readlink(fd).endswith(name) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


@contextmanager
def _no_leftovers(pids: set[int]) -> Iterator[set[int]]:
    """Yield a set to add pids to; SIGKILL whichever of them is still alive at the end."""
    try:
        yield pids
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def _gateway(tmp_path: Path) -> Iterator[Gateway]:
    port, admin_port = free_port(), free_port()
    config = gateway_config(
        tmp_path,
        port,
        [echo_route("http://127.0.0.1:9")],
        server={"workers": 2},
        admin={"listen": f"127.0.0.1:{admin_port}"},
    )
    with run_gateway(tmp_path, config) as gw:
        yield gw


def test_killing_the_master_ends_its_workers_and_the_admin_listener(tmp_path: Path) -> None:
    with _no_leftovers(set()) as tracked, _gateway(tmp_path) as gw:
        # Both workers and the admin listener (a child with its own worker) are up.
        tree: set[int] = wait_until(lambda: _at_least(4, _descendants(gw.proc.pid)), what="workers up")
        tracked |= tree
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait()
        wait_until(
            lambda: not [p for p in tree if _alive(p)],
            timeout=FEW_SECONDS,
            what="every worker gone after the master was killed",
        )


def test_a_worker_stopped_twice_while_starting_still_stops(tmp_path: Path) -> None:
    with _no_leftovers(set()) as tracked, _gateway(tmp_path) as gw:
        workers: set[int] = wait_until(lambda: _at_least(3, set(gw.worker_pids())), what="workers up")
        tracked |= workers
        before = {p for p in workers if b"admin" not in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")}
        # Ask the master to respawn its workers (SIGHUP forwarding is the gateway's own; a worker that
        # dies is respawned by granian): kill one and catch its replacement while it starts.
        victim = min(before)
        os.kill(victim, signal.SIGKILL)

        def replacement() -> int | None:
            fresh = set(gw.worker_pids()) - workers
            return min(fresh) if fresh else None

        new = wait_until(replacement, interval=0.005, what="a respawned worker")
        tracked.add(new)
        # Its runtime opens the node's state file during the ASGI start-up, after granian installed
        # its signal handling and before the worker serves: the moment two stop requests froze it.
        wait_until(lambda: _has_open(new, "state.db") or not _alive(new), interval=0.005, what="starting")
        for _ in range(2):
            os.kill(new, signal.SIGTERM)
            time.sleep(0.05)  # the scenario: two deliveries, not one merged pending signal
        wait_until(lambda: not _alive(new), timeout=FEW_SECONDS, what="the starting worker stopped")
        tracked |= _descendants(gw.proc.pid)
        # The master stops cleanly too, with nothing left behind.
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(timeout=60)
        tree = set(tracked)
        wait_until(lambda: not [p for p in tree if _alive(p)], timeout=FEW_SECONDS, what="all stopped")
