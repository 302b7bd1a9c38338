"""Real processes for integration tests: echo apps and gateways on free loopback ports.

Everything runs as it does in production (``python -m gateway serve`` on granian), so these tests
exercise the same code path a user gets. Processes are always stopped at the end of a test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.wait import wait_until as wait_until  # the integration tests' one poller

ROOT = Path(__file__).resolve().parents[2]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never one this process was given before: two calls in a row may
    get the same port from the kernel once the first socket is closed (a full run saw a gateway's
    listener and its admin listener given one port, and the config refused: exit 2)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, *, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Echo:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def run_echo(port: int | None = None) -> Iterator[Echo]:
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "gateway.echo:app",
        ],
        cwd=ROOT,
    )
    try:
        wait_for_port(port, proc=proc)
        yield Echo(port, proc)
    finally:
        stop(proc)


@dataclass
class Gateway:
    port: int
    config_path: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes]
    log_path: Path
    scheme: str = "http"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rewrite_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config = config

    def sighup(self) -> None:
        os.kill(self.proc.pid, signal.SIGHUP)

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]


# Every signed-in user may do anything: for tests that are not about authorization.
ALLOW_SIGNED_IN = Path(__file__).resolve().parents[1] / "support" / "allow_signed_in.csv"


def gateway_config(tmp: Path, port: int, routes: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "public_url": f"http://127.0.0.1:{port}",
        "data_dir": str(tmp / "data"),
        "policy": {"file": str(ALLOW_SIGNED_IN)},
        "admin": {"listen": None},
        "routes": routes,
    }
    config.update(overrides)
    return config


def echo_route(echo: Echo | str, **overrides: Any) -> dict[str, Any]:
    """A public route on host 127.0.0.1 to one echo app (sign-in is not part of these tests)."""
    upstream = echo.url if isinstance(echo, Echo) else echo
    route: dict[str, Any] = {
        "name": "echo",
        "host": "127.0.0.1",
        "path": "/",
        "upstreams": [upstream],
        "public_paths": ["/*"],
        "mfa": "none",
    }
    route.update(overrides)
    return route


@contextmanager
def run_gateway(
    tmp: Path, config: dict[str, Any], *, scheme: str = "http", wait: bool = True
) -> Iterator[Gateway]:
    """Start ``python -m gateway serve`` with this config; waits until it accepts connections."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = int(config["listen"].rsplit(":", 1)[1])
    config_path = tmp / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = tmp / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(port, config_path, config, proc, log_path, scheme)
    try:
        if wait:
            wait_for_port(port, proc=proc)
            _wait_ready(gw)
        yield gw
    finally:
        stop(proc)


def refused_start(tmp: Path, config: dict[str, Any], *, timeout: float = 90) -> str:
    """Start ``gateway serve`` with ``config`` and return its output once it has exited non-zero;
    fail if it is still running after ``timeout`` seconds (it would have served)."""
    with run_gateway(tmp, config, wait=False) as gw:
        try:
            gw.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the gateway kept running:\n{gw.log()}") from None
        assert gw.proc.returncode != 0, gw.log()
        return gw.log()


def _wait_ready(gw: Gateway, timeout: float = 30.0) -> None:
    """Wait until a worker answers /.gateway/health (the port opens before workers finish start-up)."""
    import ssl
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{gw.url}/.gateway/health", timeout=2, context=ctx) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001
            last = exc
        if gw.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {gw.proc.returncode}:\n{gw.log()}")
        time.sleep(0.1)
    raise TimeoutError(f"gateway not healthy after {timeout}s ({last}):\n{gw.log()}")


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes exactly as given (for malformed requests no client library would produce)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# --------------------------------------------------------------------------------------------------
# Helpers for the serving and operations tests (TLS, reload, failover, readiness, CLI)
# --------------------------------------------------------------------------------------------------


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    cwd: Path | None = None,
    stdin: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway ARGS`` to completion and capture its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli_checked(*args: str) -> subprocess.CompletedProcess[str]:
    """:func:`run_cli`, and whatever it exits with, never a traceback (every failure is a clear message)."""
    proc = run_cli(*args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def http_get_on_fresh_connection(
    port: int, path: str, *, host: str = "127.0.0.1", timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes, int]:
    """GET on a new TCP connection; returns (status, headers, body, pid of the worker that answered).

    The worker is found while the connection is still open: the gateway side of this connection
    (local port = gateway port, remote port = our port) is a socket inode in /proc/net/tcp, and
    exactly one process holds that inode as a file descriptor.
    """
    return request_on_fresh_connection(port, "GET", path, headers={"Host": host}, timeout=timeout)


def request_on_fresh_connection(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes, int]:
    """Like :func:`http_get_on_fresh_connection`, with any method, headers and body.

    Response headers that repeat (``Set-Cookie``) are joined with newlines.
    """
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": "127.0.0.1", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        assert conn.sock is not None
        our_port = conn.sock.getsockname()[1]
        pid = _pid_serving(port, our_port)
        received: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            received[key] = f"{received[key]}\n{value}" if key in received else value
        return resp.status, received, data, pid
    finally:
        conn.close()


def _pid_serving(server_port: int, client_port: int) -> int:
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            inode = fields[9]
            break
    if not inode or inode == "0":
        return 0
    wanted = f"socket:[{inode}]"
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            for fd in (proc_dir / "fd").iterdir():
                if os.readlink(fd) == wanted:
                    return int(proc_dir.name)
        except OSError:
            continue
    return 0


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            stat = (proc_dir / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may contain spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(proc_dir.name))
    return members


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Tripwire:
    """A listening socket that never answers: proves the gateway never contacted an upstream.

    Point a route's upstream at :attr:`url`; the kernel completes any TCP connect to it, so once the
    gateway has answered a request, :meth:`connections` tells whether that request was forwarded.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections(self) -> int:
        """Accept (and close) every connection made since the last call; return how many there were."""
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()


@contextmanager
def run_tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    try:
        yield wire
    finally:
        wire.close()


def worker_peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


@contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound but never listening, so for as long as the
    context is open no other process can take it and start answering."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def add_user(config_path: Path, username: str, password: str, *extra: str) -> None:
    """Create a local account through the real CLI (``gateway user add … --password-stdin``)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "user",
            "add",
            username,
            "--password-stdin",
            "--config",
            str(config_path),
            *extra,
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
