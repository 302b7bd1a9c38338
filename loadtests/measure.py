"""Side-by-side measurement: direct echo app vs nginx vs a bare ASGI proxy vs the gateway, in one run.

The machine is shared and noisy, so absolute numbers mean little; what this measures is *ratios* between
targets that ran in the same run, interleaved in rounds, with the same client and settings::

    python -m loadtests.measure [--duration 10] [--connections 32] [--quick] [--json results.json]

Targets (all on 127.0.0.1, free ports, one worker each):

- ``direct``:  the bundled echo app (``gateway.echo:app``) on granian;
- ``nginx``:   Debian's nginx, ``proxy_pass`` to the echo app with an upstream keep-alive pool;
- ``bare``:    ``loadtests.bare_proxy`` on granian: the minimal streaming ASGI reverse proxy (the baseline);
- ``gateway``: ``python -m gateway serve`` with one public route to the echo app.

See ``loadtests/README.md`` for how each number is measured. Exit codes: 0 ok; 1 a target failed to start,
errored, or answered non-2xx; 2 bad usage; 3 (full runs only, not ``--quick``) a quality goal was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_wrk"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "loadtests" / "results" / "latest.json"
NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"
TARGETS = ("direct", "bare", "gateway", "nginx")
# Optional targets: the same signed-in gateway with the access log switched off (``logging.access_log``),
# and with its fast state inside the process (``state.embedded: memory``) instead of the node's shared
# file: what sharing sessions with the other processes costs.
EXTRA_TARGETS = ("gateway-nolog", "bare-http1", "gateway-memstate")
ACCESS_LOG_KEY = "logging.access_log"
# What every load client asks for: the same 256-byte answer from the echo app through every target.
# Not the echo app's "/" page, which reflects the request headers it received: the gateway adds its
# forwarding and identity headers (~800 bytes with the signed assertion), so "/" answered the gateway
# with 935 bytes and the others with ~330, and the echo app spent ~50 µs more CPU per request on the
# gateway's requests on the same two cores (measured with callgrind and /proc). The preflight still
# reads "/" to check that the identity headers arrive.
LOAD_PATH = "/__echo/bytes/256"


def access_log_switch() -> bool:
    """Whether this gateway's settings have the ``logging.access_log`` on/off switch."""
    try:
        from gateway.settings.schema import LoggingSettings  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return False
    return "access_log" in getattr(LoggingSettings, "__struct_fields__", ())


def embedded_state_switch() -> bool:
    """Whether this gateway's settings have ``state.embedded`` (the node's file or in-process memory)."""
    try:
        from gateway.settings.schema import StateSettings
    except ImportError:
        return False
    return "embedded" in getattr(StateSettings, "__struct_fields__", ())


def gateway_variants() -> dict[str, dict[str, Any]]:
    """Gateway targets and their extra settings. The access log goes to the default sink (stdout: the
    gateway's log file in the temp dir), named explicitly so every variant writes the same way."""
    if not access_log_switch():
        return {"gateway": {}}
    logged = {"logging": {"access_log": True, "sinks": [{"type": "stdout"}]}}
    variants: dict[str, dict[str, Any]] = {
        "gateway": logged,
        "gateway-nolog": {"logging": {"access_log": False, "sinks": [{"type": "stdout"}]}},
    }
    if embedded_state_switch():
        # The main target runs on the embedded default (the node's shared state file); this one is
        # the same gateway with the state inside its one process, as before the file existed.
        variants["gateway-memstate"] = {**logged, "state": {"embedded": "memory"}}
    return variants


GRANIAN_FLAGS = ("--interface", "asgi", "--workers", "1", "--loop", "uvloop", "--no-access-log")

GOALS = {
    "gateway/bare": 0.8,
    "gateway/nginx": 0.3,
    "added_p50_ms": 1.0,
    "added_p99_ms": 3.0,
}


class MeasureError(Exception):
    """A target could not be started or measured; the message says why."""


# --------------------------------------------------------------------------------------------------
# Child processes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child if this script dies without cleaning up (e.g. SIGKILL)."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """A child process in its own process group, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not exited within ``timeout``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Workers of a stopped master must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class Children:
    """Every process this script started; ``stop_all`` is called on any exit path."""

    items: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
        handle = log.open("wb")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
                preexec_fn=_die_with_parent,  # the parent is single-threaded
            )
        finally:
            handle.close()
        child = Child(name, proc, log)
        self.items.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.items):
            with contextlib.suppress(Exception):
                child.stop()
        self.items.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(child: Child, port: int, timeout: float) -> None:
    """Poll until the port answers any HTTP response; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise MeasureError(f"exited with code {child.proc.returncode}: {child.tail(8) or '(no output)'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(
                    f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
                )
                if sock.recv(16).startswith(b"HTTP/1."):
                    return
                last = "answer was not HTTP"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise MeasureError(f"not ready after {timeout:.0f}s ({last}): {child.tail(8)}")


def preflight(port: int, headers: dict[str, str] | None = None, expect_user: str | None = None) -> None:
    """One request must reach the echo app through the target and come back 200 with the right target.

    With ``expect_user`` (the gateway's signed-in hot path) the echo app must also have received the
    gateway's identity headers for that user: a 200 without them would be measuring the wrong path.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Accept": "application/json", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise MeasureError(f"preflight GET / failed: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200:
        where = resp.getheader("location")
        detail = f" -> {where}" if where else f": {body[:200]!r}"
        raise MeasureError(f"GET / answered {resp.status}{detail} (expected 200 from the echo app)")
    try:
        info = json.loads(body)
    except ValueError as exc:
        raise MeasureError(f"GET / did not return the echo app's JSON: {body[:200]!r}") from exc
    if info.get("target") != "/":
        raise MeasureError(f"echo app saw target {info.get('target')!r}, expected '/'")
    if expect_user is not None:
        seen = {str(k).lower(): v for k, v in info.get("headers", [])}
        if seen.get("x-gateway-user") != expect_user or "x-gateway-assertion" not in seen:
            raise MeasureError(f"the echo app did not get {expect_user!r}'s identity headers: {sorted(seen)}")


# --------------------------------------------------------------------------------------------------
# The signed-in user of the gateway target (created with the CLI, signed in through the HTML form)

BENCH_USER = "bench"
BENCH_PASSWORD = "bench password for the load tests"  # a throwaway account in a temp dir
# The sign-in load signs in as another account: a user has at most 200 sessions and the least
# recently active are ended beyond that, so sign-ins as the browsing user would end its session.
SIGNIN_USER = "bench-signin"
ALLOW_SIGNED_IN = "p, authenticated, *, /*, *, allow\n"


def add_user(config: Path, username: str, password: str) -> None:
    """``gateway user add USERNAME --password-stdin``: the gateway's own CLI, never its database."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "user",
            "add",
            username,
            "--password-stdin",
            "--config",
            str(config),
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise MeasureError(
            f"gateway user add {username} exited {done.returncode}: {done.stderr.strip()[-300:]}"
        )


def _cookies(resp: http.client.HTTPResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in resp.headers.get_all("set-cookie") or []:
        name, _, rest = value.partition("=")
        out[name.strip()] = rest.split(";", 1)[0]
    return out


def sign_in(port: int, username: str, password: str) -> str:
    """Sign in through the gateway's HTML form (CSRF cookie + form post); returns the session cookie value."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/.gateway/login", headers={"Accept": "text/html"})
        page = conn.getresponse()
        page.read()
        csrf = _cookies(page).get("gateway_csrf")
        if not csrf:
            raise MeasureError(f"GET /.gateway/login answered {page.status} without a CSRF cookie")
        form = urllib.parse.urlencode(
            {"username": username, "password": password, "rd": "", "_csrf_token": csrf}
        )
        conn.request(
            "POST",
            "/.gateway/login",
            body=form,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"gateway_csrf={csrf}",
                "Accept": "text/html",
            },
        )
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise MeasureError(f"sign-in failed: {exc}") from exc
    finally:
        conn.close()
    session = _cookies(resp).get(SESSION_COOKIE)
    if resp.status not in (302, 303) or not session:
        raise MeasureError(f"sign-in answered {resp.status} without a session cookie: {body[:200]!r}")
    return session


# --------------------------------------------------------------------------------------------------
# Targets


def granian_argv(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "granian", *GRANIAN_FLAGS, "--host", "127.0.0.1", "--port", str(port), app]


def nginx_conf(tmp: Path, port: int, upstream_port: int) -> str:
    return f"""\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-tmp/body;
    proxy_temp_path {tmp}/nginx-tmp/proxy;
    fastcgi_temp_path {tmp}/nginx-tmp/fastcgi;
    uwsgi_temp_path {tmp}/nginx-tmp/uwsgi;
    scgi_temp_path {tmp}/nginx-tmp/scgi;
    upstream echo {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


SESSION_COOKIE = "gateway_session"  # "__Host-" prefix dropped by session.insecure_cookies (plain HTTP)


def gateway_config(tmp: Path, port: int, upstream_port: int, extra: dict[str, Any] | None = None) -> str:
    """One signed-in route to the echo app: cookie -> session -> MFA check -> RBAC -> identity headers.

    ``mfa: none`` because the benchmark session signed in with a password only; the MFA check still
    runs on every request (it compares the session's level with the route's requirement).
    """
    import yaml

    policy = tmp / "policy.csv"
    policy.write_text(ALLOW_SIGNED_IN)
    config: dict[str, Any] = {
        "public_url": f"http://127.0.0.1:{port}",
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(tmp / "data"),
        "server": {"workers": 1},
        "admin": {"listen": None},
        "policy": {"file": str(policy)},
        "session": {"insecure_cookies": True},
        "routes": [
            {
                "name": "echo",
                "host": "127.0.0.1",
                "path": "/",
                "upstreams": [f"http://127.0.0.1:{upstream_port}"],
                "mfa": "none",
            }
        ],
        **(extra or {}),
    }
    return str(yaml.safe_dump(config, sort_keys=False))


def gateway_unavailable_reason() -> str | None:
    """Why ``python -m gateway serve`` cannot even be attempted, or None."""
    pkg = ROOT / "gateway"
    if not (pkg / "__main__.py").exists() and not (pkg / "cli").is_dir():
        return "gateway/__main__.py and gateway/cli/ do not exist yet"
    probe = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    if probe.returncode != 0:
        tail = (probe.stderr or probe.stdout).strip().splitlines()[-3:]
        return f"`python -m gateway serve --help` exited {probe.returncode}: {' | '.join(tail)}"
    return None


@dataclass
class Started:
    port: int
    child: Child
    cookie: str | None = None  # a gateway's signed-in session
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request to this target


def assign_headers(running: dict[str, Started]) -> None:
    """Every target gets a session ``Cookie`` of the same length (the gateway's own; the others the main
    gateway's, which they ignore), so request bytes stay like-for-like."""
    main = running.get("gateway") or next((s for s in running.values() if s.cookie), None)
    for started in running.values():
        cookie = started.cookie or (main.cookie if main else None)
        started.headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}


def start_targets(
    wanted: list[str],
    tmp: Path,
    children: Children,
    ready_timeout: float,
    gateway_extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Started], dict[str, str]]:
    """Start the echo app and every wanted target; return the running ones and why others are missing."""
    running: dict[str, Started] = {}
    failed: dict[str, str] = {}
    echo_port = free_port()
    echo = children.spawn("echo", granian_argv("gateway.echo:app", echo_port), tmp / "echo.log")
    wait_ready(echo, echo_port, ready_timeout)  # without the upstream nothing can be measured
    if "direct" in wanted:
        running["direct"] = Started(echo_port, echo)

    starters: dict[str, Callable[[int], Child]] = {
        "bare": lambda port: children.spawn(
            "bare",
            granian_argv("loadtests.bare_proxy:app", port),
            tmp / "bare.log",
            env={"BARE_PROXY_UPSTREAM": f"http://127.0.0.1:{echo_port}"},
        ),
        "bare-http1": lambda port: children.spawn(
            "bare-http1",
            granian_argv("loadtests.bare_proxy:app", port),
            tmp / "bare-http1.log",
            env={"BARE_PROXY_UPSTREAM": f"http://127.0.0.1:{echo_port}", "BARE_PROXY_CLIENT": "http1"},
        ),
        "nginx": lambda port: _start_nginx(children, tmp, port, echo_port),
    }
    variants = gateway_variants()
    for variant, settings in variants.items():
        starters[variant] = functools.partial(
            _gateway_at, children, tmp / variant, variant, echo_port, {**settings, **(gateway_extra or {})}
        )
    for name in wanted:
        if name == "direct":
            continue
        if name not in starters:
            failed[name] = f"access log not available (no {ACCESS_LOG_KEY} setting)"
            continue
        port = free_port()
        try:
            child = starters[name](port)
            is_gateway = name in variants
            wait_ready(child, port, ready_timeout * (2 if is_gateway else 1))
            running[name] = Started(port, child)
            if is_gateway:
                add_user(tmp / name / "gateway.yaml", BENCH_USER, BENCH_PASSWORD)
                add_user(tmp / name / "gateway.yaml", SIGNIN_USER, BENCH_PASSWORD)
                running[name].cookie = sign_in(port, BENCH_USER, BENCH_PASSWORD)
        except MeasureError as exc:
            failed[name] = str(exc)
            running.pop(name, None)
    assign_headers(running)
    for name, started in list(running.items()):
        try:
            preflight(started.port, started.headers, BENCH_USER if name in variants else None)
        except MeasureError as exc:
            failed[name] = str(exc)
            del running[name]
    return running, failed


def _start_nginx(children: Children, tmp: Path, port: int, echo_port: int) -> Child:
    if not Path(NGINX).exists():
        raise MeasureError(f"{NGINX} not found; install it with: apt-get install -y nginx")
    (tmp / "nginx-tmp").mkdir(exist_ok=True)
    if os.geteuid() == 0:  # nginx workers drop to 'nobody' and must reach their temp paths
        tmp.chmod(0o755)
        (tmp / "nginx-tmp").chmod(0o777)
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(tmp, port, echo_port))
    argv = [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")]
    return children.spawn("nginx", argv, tmp / "nginx.log")


def _gateway_at(
    children: Children, tmp: Path, name: str, echo_port: int, extra: dict[str, Any], port: int
) -> Child:
    return _start_gateway(children, tmp, name, port, echo_port, extra)


def _start_gateway(
    children: Children, tmp: Path, name: str, port: int, echo_port: int, extra: dict[str, Any] | None = None
) -> Child:
    reason = gateway_unavailable_reason()
    if reason:
        raise MeasureError(reason)
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    conf = tmp / "gateway.yaml"
    conf.write_text(gateway_config(tmp, port, echo_port, extra))
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(conf)]
    return children.spawn(name, argv, tmp / "gateway.log")


# --------------------------------------------------------------------------------------------------
# Load clients

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unparseable wrk time {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Parse ``wrk --latency`` output into the same shape as ``loadtests.pyclient``."""
    result: dict[str, Any] = {"mode": "closed", "non_2xx": 0, "errors": 0, "socket_errors": {}}
    for q in ("50", "90", "99"):
        match = re.search(rf"^\s*{q}(?:\.0+)?%\s+(\S+)\s*$", output, re.MULTILINE)
        if not match:
            raise ValueError(f"no {q}% latency line in wrk output")
        result[f"p{q}_ms"] = _ms(match.group(1))
    match = re.search(r"^\s*Latency\s+\S+\s+\S+\s+(\S+)", output, re.MULTILINE)
    result["max_ms"] = _ms(match.group(1)) if match else float("nan")
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output)
    if not match:
        raise ValueError("no request count in wrk output")
    result["requests"] = int(match.group(1))
    result["duration_s"] = _ms(match.group(2) + match.group(3)) / 1e3
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not match:
        raise ValueError("no Requests/sec in wrk output")
    result["rps"] = float(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if match:
        result["non_2xx"] = int(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if match:
        names = ("connect", "read", "write", "timeout")
        result["socket_errors"] = dict(zip(names, map(int, match.groups()), strict=True))
        result["errors"] = sum(result["socket_errors"].values())
    return result


@dataclass
class Client:
    kind: str  # "wrk" | "python"
    connections: int
    threads: int
    headers: dict[int, dict[str, str]] = field(default_factory=dict)  # per port: the session cookie

    def _header_args(self, flag: str, port: int) -> list[str]:
        return [arg for k, v in self.headers.get(port, {}).items() for arg in (flag, f"{k}: {v}")]

    def closed(self, children: Children, tmp: Path, port: int, duration: float) -> dict[str, Any]:
        url = f"http://127.0.0.1:{port}{LOAD_PATH}"
        if self.kind == "wrk":
            argv = [WRK, f"-t{self.threads}", f"-c{self.connections}", f"-d{max(1, round(duration))}s"]
            argv += ["--latency", "--timeout", "5s", "-H", "Accept: application/json"]
            argv += [*self._header_args("-H", port), url]
            return parse_wrk(_run(children, "wrk", argv, tmp, duration + 30))
        return self.paced(children, tmp, port, duration, 0.0)

    def paced(
        self,
        children: Children,
        tmp: Path,
        port: int,
        duration: float,
        rate: float,
        samples: Path | None = None,
    ) -> dict[str, Any]:
        argv = [sys.executable, "-m", "loadtests.pyclient", f"http://127.0.0.1:{port}{LOAD_PATH}"]
        argv += ["--connections", str(self.connections), "--duration", str(duration), "--rate", str(rate)]
        argv += self._header_args("--header", port) + (["--samples", str(samples)] if samples else [])
        out = _run(children, "pyclient", argv, tmp, duration + 60)
        return dict(json.loads(out.strip().splitlines()[-1]))


def _run(children: Children, name: str, argv: list[str], tmp: Path, timeout: float) -> str:
    """Run a load client to completion (killed with the rest on any interruption); return its stdout."""
    log = tmp / f"{name}.out"
    child = children.spawn(name, argv, log)
    try:
        code = child.proc.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        raise MeasureError(f"{name} did not finish within {timeout:.0f}s") from exc
    finally:
        child.stop()
        children.items.remove(child)
    output = log.read_text(errors="replace")
    if code != 0:
        raise MeasureError(f"{name} exited {code}: {output.strip()[-400:]}")
    return output


# --------------------------------------------------------------------------------------------------
# Report


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    with contextlib.suppress(Exception):
        import aiohttp
        import granian

        versions = {"granian": granian.__version__, "aiohttp": aiohttp.__version__}
    for tool, argv in (("nginx", [NGINX, "-v"]), ("wrk", [WRK, "-v"])):
        if Path(argv[0]).exists():
            with contextlib.suppress(Exception):
                done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
                versions[tool] = (done.stderr or done.stdout).strip().splitlines()[0]
    return {
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
        "versions": versions,
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rounds if isinstance(r.get(key), int | float) and not math.isnan(r[key])]
    return float(statistics.median(values)) if values else float("nan")


def summarise(rounds: dict[str, list[dict[str, Any]]], phase: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, items in rounds.items():
        runs = [r[phase] for r in items if phase in r]
        if runs:
            out[name] = {k: _median(runs, k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req")}
    return out


def _per_round(rounds: dict[str, list[dict[str, Any]]], name: str, phase: str) -> dict[int, dict[str, Any]]:
    return {e["round"]: e[phase] for e in rounds.get(name, []) if phase in e}


def _paired(
    rounds: dict[str, list[dict[str, Any]]],
    a: str,
    b: str,
    phase: str,
    combine: Callable[[dict[str, Any], dict[str, Any]], float],
) -> float | None:
    """Median over rounds of ``combine(a's result, b's result)`` from the *same* round.

    Pairing within a round cancels most of the drift of a shared machine: the two runs were at most
    a few tens of seconds apart, while separate medians of a and b can come from different minutes.
    """
    ra, rb = _per_round(rounds, a, phase), _per_round(rounds, b, phase)
    values = [combine(ra[r], rb[r]) for r in sorted(ra.keys() & rb.keys())]
    values = [v for v in values if math.isfinite(v)]
    return float(statistics.median(values)) if values else None


def _rps_ratio(x: dict[str, Any], y: dict[str, Any]) -> float:
    return float(x["rps"] / y["rps"]) if y["rps"] else float("nan")


def _cpu_ratio(x: dict[str, Any], y: dict[str, Any]) -> float:
    a, b = x.get("cpu_us_per_req"), y.get("cpu_us_per_req")
    return float(a / b) if a and b else float("nan")


def _diff(key: str) -> Callable[[dict[str, Any], dict[str, Any]], float]:
    return lambda x, y: float(x[key] - y[key])


def comparisons(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Ratios and added latencies, each the median over rounds of the per-round (paired) value."""
    out: dict[str, Any] = {}
    pairs = (("gateway", "bare"), ("gateway", "nginx"), ("bare", "direct"), ("nginx", "direct"))
    extra = (("gateway", "gateway-nolog"), ("gateway", "bare-http1"), ("bare-http1", "bare"))
    for a, b in (*pairs, *extra, ("gateway", "gateway-memstate")):
        out[f"{a}/{b}"] = _paired(rounds, a, b, "closed", _rps_ratio)
    for a, b in (
        ("bare", "gateway"),
        ("gateway-nolog", "gateway"),
        ("bare-http1", "gateway"),
        ("gateway-memstate", "gateway"),
    ):
        # CPU per request of b relative to a, inverted so that it reads like a throughput ratio.
        out[f"cpu {a}/{b}"] = _paired(rounds, a, b, "closed", _cpu_ratio)
    for who, prefix in (("gateway", ""), ("bare", "bare_")):
        for q in ("p50", "p99"):
            out[f"{prefix}added_{q}_ms_fixed_rate"] = _paired(
                rounds, who, "direct", "fixed", _diff(f"{q}_ms")
            )
    for q in ("p50", "p99"):
        out[f"added_{q}_ms_closed_loop"] = _paired(rounds, "gateway", "direct", "closed", _diff(f"{q}_ms"))
    return out


def goal_checks(cmp: dict[str, Any]) -> dict[str, bool | None]:
    def at_least(v: float | None, goal: float) -> bool | None:
        return None if v is None else v >= goal

    def at_most(v: float | None, goal: float) -> bool | None:
        return None if v is None else v <= goal

    return {
        "gateway/bare >= 0.8x": at_least(cmp["gateway/bare"], GOALS["gateway/bare"]),
        "gateway/nginx >= 0.3x": at_least(cmp["gateway/nginx"], GOALS["gateway/nginx"]),
        "added p50 <= 1 ms (fixed rate)": at_most(cmp["added_p50_ms_fixed_rate"], GOALS["added_p50_ms"]),
        "added p99 <= 3 ms (fixed rate)": at_most(cmp["added_p99_ms_fixed_rate"], GOALS["added_p99_ms"]),
    }


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = re.match(r"\d*", spec)
        return "-".rjust(int(width.group(0) or 0) + len(suffix)) if width else "-"
    return f"{value:{spec}}{suffix}"


def _one_line(text: str, limit: int = 160) -> str:
    """The last non-empty line of a (possibly multi-line) reason, for the table."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = text.split(":", 1)[0] if ":" in text and len(lines) > 1 else ""
    last = lines[-1] if lines else text
    out = f"{head}: ... {last}" if head and head not in last else last
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _pair(a: float | None, b: float | None) -> str:
    return f"{_fmt(a, '.2f')}/{_fmt(b, '.2f')} ms".rjust(16)


def _verdict(ok: bool | None) -> str:
    return {True: "ok", False: "MISSED", None: "not measured"}[ok]


def _finite(value: Any) -> Any:
    """NaN/inf (no samples) become null so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    closed, fixed = report["closed_loop"], report["fixed_rate"]
    m = report["machine"]
    lines = [
        "",
        f"machine: {m['cpu_model']}, {m['nproc']} cpu(s), python {m['python']}, {m['date']}; load average "
        f"{m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end (background load = noise)",
        f"closed loop, max throughput: {s['client']} with {s['connections']} connections"
        + (f", {s['threads']} thread(s)" if s["client"] == "wrk" else "")
        + f", {s['duration']:g}s x {s['rounds']} round(s), median of rounds",
        f"{'target':<14}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'CPU us/req':>11}   "
        + (f"| fixed rate {s['rate']:g}/s {'p50 ms':>8}{'p99 ms':>8}" if s["rate"] else ""),
    ]
    for name in s["targets"]:
        row = closed.get(name)
        if name in report["unavailable"]:
            lines.append(f"{name:<14}not available ({_one_line(report['unavailable'][name])})")
            continue
        if row is None:
            lines.append(f"{name:<14}failed: {_one_line(report['errors'].get(name, ['no result'])[-1])}")
            continue
        line = f"{name:<14}{_fmt(row['rps'], '10.0f')}{_fmt(row['p50_ms'], '9.2f')}"
        line += f"{_fmt(row['p90_ms'], '9.2f')}{_fmt(row['p99_ms'], '9.2f')}{_fmt(row.get('cpu_us_per_req'), '11.0f')}   "
        if s["rate"]:
            f = fixed.get(name)
            pad = len(f"fixed rate {s['rate']:g}/s")
            line += f"| {'':>{pad}}{_fmt(f and f['p50_ms'], '8.2f')}{_fmt(f and f['p99_ms'], '8.2f')}"
        lines.append(line)
    cmp, goals = report["comparisons"], report["goals"]
    lines += [
        "",
        f"{'comparison (median of per-round values)':<44}{'value':>10}   goal",
        f"{'gateway / bare   (req/s)':<44}{_fmt(cmp['gateway/bare'], '9.2f', 'x')}   >= 0.80x  "
        + _verdict(goals["gateway/bare >= 0.8x"]),
        f"{'gateway / nginx  (req/s)':<44}{_fmt(cmp['gateway/nginx'], '9.2f', 'x')}   >= 0.30x  "
        + _verdict(goals["gateway/nginx >= 0.3x"]),
        f"{'bare / direct    (req/s)':<44}{_fmt(cmp['bare/direct'], '9.2f', 'x')}   (info)",
        f"{'nginx / direct   (req/s)':<44}{_fmt(cmp['nginx/direct'], '9.2f', 'x')}   (info)",
        f"{'bare / gateway   (CPU per request)':<44}{_fmt(cmp.get('cpu bare/gateway'), '9.2f', 'x')}"
        "   (info: the 0.8x bar in CPU, robust to other load)",
    ]
    if cmp.get("gateway/gateway-nolog") is not None:
        lines += [
            f"{'gateway / gateway-nolog (req/s)':<44}{_fmt(cmp['gateway/gateway-nolog'], '9.2f', 'x')}"
            "   access log on/off",
            f"{'gateway-nolog / gateway (CPU per request)':<44}"
            f"{_fmt(cmp.get('cpu gateway-nolog/gateway'), '9.2f', 'x')}   (info)",
        ]
    if cmp.get("gateway/gateway-memstate") is not None:
        lines += [
            f"{'gateway / gateway-memstate (req/s)':<44}{_fmt(cmp['gateway/gateway-memstate'], '9.2f', 'x')}"
            "   shared state file / in-process",
            f"{'gateway-memstate / gateway (CPU per request)':<44}"
            f"{_fmt(cmp.get('cpu gateway-memstate/gateway'), '9.2f', 'x')}   (info)",
        ]
    if s["rate"]:
        at = f"@ {s['rate']:g}/s"
        lines += [
            f"{'added p50, gateway - direct ' + at:<44}"
            f"{_fmt(cmp['added_p50_ms_fixed_rate'], '7.2f', ' ms')}   <= 1 ms   "
            + _verdict(goals["added p50 <= 1 ms (fixed rate)"]),
            f"{'added p99, gateway - direct ' + at:<44}"
            f"{_fmt(cmp['added_p99_ms_fixed_rate'], '7.2f', ' ms')}   <= 3 ms   "
            + _verdict(goals["added p99 <= 3 ms (fixed rate)"]),
            f"{'added p50/p99, bare - direct ' + at:<38}"
            f"{_pair(cmp['bare_added_p50_ms_fixed_rate'], cmp['bare_added_p99_ms_fixed_rate'])}   (info)",
        ]
    else:
        lines.append("added latency at a fixed rate: not measured (--rate 0 / --quick)")
    lines += [
        f"{'added p50/p99 gw - direct, closed loop':<38}"
        f"{_pair(cmp['added_p50_ms_closed_loop'], cmp['added_p99_ms_closed_loop'])}"
        "   (info: at saturation, mostly queueing)",
        "",
        "Closed-loop latency is measured at maximum throughput: it is dominated by queueing and is NOT the",
        "'added latency at a fixed moderate rate' of the quality bars; the fixed-rate columns measure that",
        "(open loop, Python client, latency from each request's scheduled start).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.measure",
        description="Measure direct / nginx / bare ASGI proxy / gateway side by side in one run "
        "(req/s and p50/p90/p99 latency, interleaved rounds, medians, ratios against the quality goals).",
        epilog="Exit codes: 0 ok; 1 a target failed, errored or answered non-2xx; 2 usage; "
        "3 a quality goal was missed (not in --quick).",
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds of load per target and round")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per target and round")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="fixed request rate for the added-latency measurement (default 300/s; 0 disables; quick 0)",
    )
    parser.add_argument("--rate-duration", type=float, default=5.0, help="seconds per fixed-rate run")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}"
    )
    parser.add_argument("--ready-timeout", type=float, default=20.0, help="seconds to wait for a server")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"result file (default {DEFAULT_JSON})"
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: ~3 s per target, 1 round, no fixed-rate phase"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration if args.duration is not None else (2.0 if quick else 10.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.rate = args.rate if args.rate is not None else (0.0 if quick else 300.0)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - set(TARGETS) - set(EXTRA_TARGETS)
    if unknown or not args.target_list:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS + EXTRA_TARGETS)}")
    if args.connections < args.threads or args.connections < 1 or args.rounds < 1 or args.duration <= 0:
        parser.error("need connections >= threads >= 1, rounds >= 1, duration > 0")
    return args


def choose_client(kind: str) -> str:
    if kind in ("auto", "wrk") and Path(WRK).exists():
        return "wrk"
    if kind == "wrk":
        raise MeasureError(f"{WRK} not found; install it with: apt-get install -y wrk")
    if kind == "auto":
        print(
            f"note: {WRK} not found (install it with: apt-get install -y wrk); using the Python client,"
            " whose ceiling is much lower: do not compare these numbers with wrk runs",
            file=sys.stderr,
        )
    return "python"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell starts background jobs with SIGINT ignored, which Python would keep.
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _process_tree(pid: int) -> list[int]:
    """The process and all its descendants (granian master + workers, nginx master + workers)."""
    out = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += _process_tree(int(child))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process tree (Linux ``/proc``; 0.0 elsewhere)."""
    ticks = 0
    for member in _process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _measure_target(
    args: argparse.Namespace,
    client: Client,
    children: Children,
    tmp: Path,
    target: Started,
    name: str,
    rnd: int,
    errors: dict[str, list[str]],
    latency_samples: dict[str, list[int]],
) -> dict[str, Any]:
    """One target in one round: warm-up, closed loop, fixed rate; errors are recorded, not raised."""
    port = target.port
    entry: dict[str, Any] = {"round": rnd + 1}
    try:
        if target.child.proc.poll() is not None:
            raise MeasureError(f"server exited: {target.child.tail(5)}")
        if args.warmup > 0:
            client.closed(children, tmp, port, args.warmup)
        cpu_before = cpu_seconds(target.child.proc.pid)
        entry["closed"] = result = client.closed(children, tmp, port, args.duration)
        # CPU per request of the target's own processes: far less sensitive to other load on a shared
        # machine than req/s (a stolen core slows the target but does not make its requests costlier).
        if result["requests"]:
            result["cpu_us_per_req"] = (
                (cpu_seconds(target.child.proc.pid) - cpu_before) / result["requests"] * 1e6
            )
        print(
            f"round {rnd + 1}/{args.rounds} {name:<8} {result['rps']:9.0f} req/s  "
            f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms",
            file=sys.stderr,
        )
        if args.rate > 0:
            samples = tmp / f"samples-{name}-{rnd + 1}.json"
            entry["fixed"] = fixed = client.paced(children, tmp, port, args.rate_duration, args.rate, samples)
            with contextlib.suppress(OSError, ValueError):
                latency_samples.setdefault(name, []).extend(json.loads(samples.read_text()))
            print(
                f"{'':>12}{name:<8} @ {args.rate:g}/s: achieved {fixed['rps']:.0f}/s  "
                f"p50 {fixed['p50_ms']:.2f} ms  p99 {fixed['p99_ms']:.2f} ms",
                file=sys.stderr,
            )
            if fixed["rps"] < 0.9 * args.rate:
                raise MeasureError(f"fixed rate {args.rate:g}/s not sustained ({fixed['rps']:.0f}/s)")
        for phase in ("closed", "fixed"):
            res = entry.get(phase)
            if res and (res["non_2xx"] or res["errors"]):
                raise MeasureError(
                    f"{phase}: {res['non_2xx']} non-2xx responses, {res['errors']} errors "
                    f"{res.get('socket_errors') or ''}".strip()
                )
    except MeasureError as exc:
        errors.setdefault(name, []).append(f"round {rnd + 1}: {exc}")
        print(f"{name}: error: {exc}", file=sys.stderr)
    return entry


AfterRounds = Callable[[dict[str, Started], Client, Path], dict[str, Any]]


def measure(
    args: argparse.Namespace, children: Children, tmp: Path, after_rounds: AfterRounds | None = None
) -> dict[str, Any]:
    """Start the targets, run the interleaved rounds, and summarise; ``after_rounds`` runs extra phases
    (``loadtests.guard``) while the targets are still up, and its result is the report's ``extra``."""
    client = Client(choose_client(args.client), args.connections, args.threads)
    info = machine_info()
    if "nginx" in args.target_list and not Path(NGINX).exists():
        print(f"note: {NGINX} not found; install it with: apt-get install -y nginx", file=sys.stderr)
    print(f"starting {', '.join(args.target_list)} (logs in {tmp}) ...", file=sys.stderr)
    running, unavailable = start_targets(args.target_list, tmp, children, args.ready_timeout)
    client.headers = {started.port: started.headers for started in running.values()}
    for name, why in unavailable.items():
        print(f"{name}: not available ({why})", file=sys.stderr)

    order = [t for t in args.target_list if t in running]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
    errors: dict[str, list[str]] = {}
    latency_samples: dict[str, list[int]] = {}
    for rnd in range(args.rounds):
        shift = rnd % len(order) if order else 0
        for name in order[shift:] + order[:shift]:  # rotate so no target always runs first
            entry = _measure_target(
                args, client, children, tmp, running[name], name, rnd, errors, latency_samples
            )
            rounds[name].append(entry)

    extra: dict[str, Any] = {}
    if after_rounds is not None and running:
        try:
            extra = after_rounds(running, client, tmp)
        except MeasureError as exc:
            errors.setdefault("extra", []).append(str(exc))
            print(f"extra phases: error: {exc}", file=sys.stderr)
    closed = summarise(rounds, "closed")
    fixed = summarise(rounds, "fixed")
    cmp = comparisons(rounds)
    info["loadavg_end"] = list(os.getloadavg())
    return {
        "machine": info,
        "settings": {
            "client": client.kind,
            "connections": args.connections,
            "threads": args.threads,
            "duration": args.duration,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "rate": args.rate,
            "rate_duration": args.rate_duration,
            "quick": args.quick,
            "targets": args.target_list,
            "request": f"GET {LOAD_PATH} (Accept: application/json) -> 256 bytes from the echo app",
            "server": "granian " + " ".join(GRANIAN_FLAGS),
        },
        "closed_loop": closed,
        "fixed_rate": fixed,
        "comparisons": cmp,
        "goals": goal_checks(cmp),
        "unavailable": unavailable,
        "errors": errors,
        "rounds": rounds,
        "extra": extra,
        "latency_samples_ns": latency_samples,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="gw-measure-"))
    try:
        with _sigterm_as_interrupt():
            report = measure(args, children, tmp)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    except MeasureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        # Cleanup must finish: a second Ctrl-C here would leave servers and temp files behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    report.pop("latency_samples_ns", None)  # raw samples are for loadtests.guard's plot only
    print(render(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_finite(report), indent=2, allow_nan=False, default=str) + "\n")
    print(f"\nwritten: {args.json}")

    failed = bool(report["unavailable"] or report["errors"])
    failed |= any(name not in report["closed_loop"] for name in args.target_list)
    if failed:
        print("FAILED: a target was unavailable, errored or answered non-2xx (see above)", file=sys.stderr)
        return 1
    if not args.quick and any(ok is False for ok in report["goals"].values()):
        print("goal missed (see the comparison table)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
