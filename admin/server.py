"""Serving the admin app: granian on ``admin.listen``, alone or as a child of ``gateway serve``.

``gateway serve`` starts the admin listener as a child process (:func:`start_admin_child`) after
checking that its port is free, forwards SIGHUP to it, and stops it when the gateway stops; the
child also dies with its parent (Linux ``PR_SET_PDEATHSIG``), so a killed gateway leaves no admin
listener behind. ``gateway admin serve`` runs it on its own (:func:`serve_admin`), e.g. on another
host than the data plane.

The admin process starts the composition root's admin role (:mod:`gateway.root`: database, fast
state, identity services, live policy, readiness, metrics; no upstream clients, health checks, threat
detection or checkpoints) and serves :mod:`admin.app` on it; its granian factory is
``gateway.server:admin_app_factory``, the composition root being above this package. One worker is
enough: admin traffic is a few people.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError, GatewayError
from gateway.observe.metrics import prepare_multiprocess
from gateway.settings.listen import CLAIMED, IN_USE, bind_problem, claim_port, parse_listen
from gateway.settings.schema import Settings
from gateway.workers import guard_workers

__all__ = ["CONFIG_ENV", "EARLY_SIGHUP", "AdminChild", "AdminListenBusy", "serve_admin", "start_admin_child"]

logger = logging.getLogger("gateway.admin")

# Read by the granian factory (gateway.server.admin_app_factory) in the worker process.
CONFIG_ENV = "GATEWAY_ADMIN_CONFIG"
# Set by ``gateway serve`` for its child: the pid whose death must end this process too.
PARENT_ENV = "GATEWAY_ADMIN_PARENT"
EARLY_SIGHUP = threading.Event()
_PR_SET_PDEATHSIG = 1


class AdminListenBusy(GatewayError):
    """Another process already listens on ``admin.listen``."""

    reason = "admin-listen-busy"
    title = "Admin port in use"


def check_port_free(listen: str) -> None:
    """Raise :class:`AdminListenBusy` if ``listen`` cannot be bound (checked before anything starts)."""
    problem = bind_problem(listen)
    if problem == IN_USE:
        raise AdminListenBusy(
            f"admin.listen {listen}: the address is already in use. Stop the other process, "
            "choose another port, or set 'admin: {listen: null}' to serve no admin API."
        )
    if problem is not None:
        raise AdminListenBusy(f"admin.listen {listen}: {problem}.")


def serve_admin(config_path: Path, settings: Settings) -> None:
    """Run the admin app until SIGTERM/SIGINT.

    Raises:
        ConfigError: ``admin.listen`` is null.
        AdminListenBusy: the port is taken.
    """
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.server import Server

    listen = settings.admin.listen
    if listen is None:
        raise ConfigError("admin.listen is null: this configuration serves no admin API")
    host, port = parse_listen(listen)
    # `gateway serve` holds its admin port's claim for the child it starts; standalone, take it here
    # (a re-attack run had a standalone admin listener and a gateway started at once share a port).
    claim = None
    if PARENT_ENV not in os.environ:
        claim = claim_port(port)
        if claim is None:
            raise AdminListenBusy(f"admin.listen {listen}: {CLAIMED % port}")
    _die_with_parent()
    check_port_free(listen)
    os.environ[CONFIG_ENV] = str(config_path.resolve())
    # The same directory as the gateway's workers on this host (set already under `gateway serve`);
    # never wiped here: a standalone admin listener must not zero a running gateway's counters.
    prepare_multiprocess(settings, wipe=False)
    tls = settings.tls
    server = Server(
        "gateway.server:admin_app_factory",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        http=HTTPModes.auto if tls and tls.http2 else HTTPModes.http1,
        websockets=False,
        # The gateway's wait for a request head, and for an idle keep-alive connection's next request.
        http1_settings=HTTP1Settings(header_read_timeout=settings.server.header_timeout_ms),
        log_access=False,
        # The session cookie is Secure whenever the gateway uses TLS: the admin port must too.
        ssl_cert=Path(tls.certificate) if tls else None,
        ssl_key=Path(tls.key) if tls else None,
        ssl_protocol_min=SSLProtocols.tls13 if not tls or tls.min_version == "1.3" else SSLProtocols.tls12,
        respawn_failed_workers=True,
        workers_kill_timeout=int(settings.server.graceful_timeout),
    )
    master_pid = os.getpid()

    def forward_sighup(signum: int, _frame: object) -> None:
        # granian's own SIGHUP respawns the worker, which cannot refuse a bad config: the worker's
        # services reload instead and keep the old config if the new one is invalid.
        if os.getpid() != master_pid:
            EARLY_SIGHUP.set()
            return
        for worker in list(server.wrks):
            with contextlib.suppress(ProcessLookupError, AttributeError, TypeError):
                os.kill(worker._id(), signal.SIGHUP)  # type: ignore[no-untyped-call]

    server.on_startup(lambda: signal.signal(signal.SIGHUP, forward_sighup))
    guard_workers(float(settings.server.graceful_timeout))
    logger.info("admin API on %s", listen)
    try:
        server.serve()
    finally:
        if claim is not None and os.getpid() == master_pid:
            claim.close()


def _die_with_parent() -> None:
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        logger.warning("admin: cannot arrange to stop with the gateway process")
        return
    if os.getppid() != int(parent):
        # The gateway died before the request above took effect.
        sys.exit(1)


@dataclass
class AdminChild:
    """The admin listener started by ``gateway serve`` (started on construction)."""

    listen: str
    command: list[str]
    proc: subprocess.Popen[bytes] = field(init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    # Held while it is started or stopped: a stop never misses a listener the watch starts meanwhile.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._spawn("starting")

    def _spawn(self, what: str) -> None:
        # The environment as it is now (the accepted config's pin included), and this process as the
        # parent it dies with.
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        self.proc = subprocess.Popen(self.command, env=env)  # noqa: S603 - our own interpreter and module
        logger.info("admin listener %s on %s (pid %d)", what, self.listen, self.proc.pid)

    def reload(self) -> None:
        """Forward a SIGHUP (the gateway's reload) to the admin listener."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def watch(self) -> None:
        """Start it again whenever it exits while the gateway runs (a thread of the gateway's master).

        An admin listener killed or crashed had stayed a zombie, unnoticed: the console, the admin API,
        /metrics and the incident-record webhook were gone while the gateway looked healthy (an attack
        run). Now its exit is logged as an error and it is started again, after 1 s, doubling to 30 s
        while it keeps failing.
        """
        threading.Thread(target=self._keep_running, name="admin-listener-watch", daemon=True).start()

    def _keep_running(self) -> None:
        delay = 1.0
        while True:
            started = time.monotonic()
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            logger.error(
                "the admin listener on %s exited with %d; starting it again in %.0f s",
                self.listen,
                code,
                delay,
            )
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._spawn("starting again")
            # A listener that ran a while had not failed at start: the next failure waits 1 s again.
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the admin listener (SIGTERM, then SIGKILL after ``timeout``)."""
        with self._lock:
            self._stopping.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc.returncode:
            logger.error("the admin listener on %s had exited with %d", self.listen, self.proc.returncode)


def start_admin_child(config_path: Path, settings: Settings) -> AdminChild | None:
    """Start ``gateway admin serve`` for this config, unless ``admin.listen`` is null.

    Raises:
        AdminListenBusy: the port is taken (nothing was started).
    """
    listen = settings.admin.listen
    if listen is None:
        return None
    check_port_free(listen)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    if level not in ("debug", "info", "warning", "error"):
        level = "info"
    command = [sys.executable, "-m", "gateway", "--log-level", level]
    return AdminChild(listen, [*command, "admin", "serve", "--config", str(config_path.resolve())])
