"""The admin listener ``gateway serve`` starts is started again when it dies.

The attack run behind it: a killed admin listener stayed a zombie and nobody noticed; the console, the
admin API, /metrics and the incident-record webhook were gone while the gateway looked healthy.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from tests.integration.harness import (
    echo_route,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    wait_until,
)


def _admin_pids(master: int) -> list[int]:
    # Every thread's children: the listener started again is the watching thread's child.
    children = [
        pid
        for task in Path(f"/proc/{master}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    return [int(pid) for pid in children if b"admin\0serve" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_killed_admin_listener_is_started_again_and_logged(tmp_path: Path) -> None:
    admin_port = free_port()
    with run_echo() as echo:
        config = gateway_config(
            tmp_path, free_port(), [echo_route(echo)], admin={"listen": f"127.0.0.1:{admin_port}"}
        )
        with run_gateway(tmp_path, config) as gw:
            health = f"http://127.0.0.1:{admin_port}/health"
            wait_until(lambda: _healthy(health), timeout=60, what="the admin listener")
            (first,) = _admin_pids(gw.proc.pid)
            os.kill(first, signal.SIGKILL)
            wait_until(
                lambda: [p for p in _admin_pids(gw.proc.pid) if p != first] and _healthy(health),
                timeout=60,
                what="a new admin listener answering",
            )
            assert "the admin listener on" in gw.log()
            assert "exited with -9" in gw.log()
            (second,) = _admin_pids(gw.proc.pid)
        # The gateway stopped: so did the listener it started again (no orphan).
        wait_until(lambda: not Path(f"/proc/{second}").exists(), timeout=30, what="the new listener to stop")
