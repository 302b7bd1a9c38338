"""Serving: the gateway's ASGI app on granian, with N worker processes.

granian was measured faster than uvicorn on this machine for this workload (see README, Performance).
The master process validates the config before any worker starts, and forwards SIGHUP to the
workers, each of which reloads its own snapshot (refusing a bad config and keeping the old one).
granian's own SIGHUP behaviour (respawning every worker) would drop websockets and upstream pools and
could not refuse a bad config, so it is replaced.

Workers never outlive their master and always hear SIGTERM: see :mod:`gateway.workers`. The granian
factories here (a gateway worker's, the admin listener's) hand the config to the composition root
(:mod:`gateway.root`), whose app starts the services at lifespan start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import GatewayError
from gateway.settings.compose import read_document
from gateway.settings.listen import CLAIMED, IN_USE, bind_problem, claim_port, parse_listen
from gateway.settings.loader import ACCEPTED_ENV, pin_accepted
from gateway.settings.schema import Settings
from gateway.workers import become_worker, guard_workers

if TYPE_CHECKING:
    from gateway.root.apps import ProcessApp
    from gateway.services import Services, WorkerServices

__all__ = ["ListenBusy", "admin_app_factory", "app_factory", "serve"]

logger = logging.getLogger("gateway")

CONFIG_ENV = "GATEWAY_CONFIG"
EARLY_SIGHUP = threading.Event()


class ListenBusy(GatewayError):
    """``listen`` cannot be bound: another process holds it (checked before anything starts)."""

    reason = "listen-busy"
    title = "Port in use"


def app_factory() -> ProcessApp[WorkerServices]:
    """granian factory target: builds one worker's app from the config named in the environment."""
    become_worker()
    # A SIGHUP can arrive while this worker is still starting (the master forwards it to every
    # worker). It must neither kill the worker (SIGHUP's default action) nor be lost: it is noted
    # here, and the lifespan start-up replays it once the real handler is installed.
    signal.signal(signal.SIGHUP, lambda _signum, _frame: EARLY_SIGHUP.set())
    # Imported here, once the worker is set up: the master process imports this module too, and
    # needs none of the composition root.
    from gateway.root.apps import worker_app

    return worker_app(os.environ[CONFIG_ENV], early_reload=EARLY_SIGHUP)


def admin_app_factory() -> ProcessApp[Services]:
    """granian factory target of the admin listener (``admin.server.serve_admin``)."""
    from admin import server as admin_server

    become_worker()  # as a gateway worker: stops on SIGTERM while starting, never outlives its master
    # As for a gateway worker: a SIGHUP during start-up must neither kill the worker nor be lost.
    signal.signal(signal.SIGHUP, lambda _signum, _frame: admin_server.EARLY_SIGHUP.set())
    from gateway.root.apps import admin_app

    return admin_app(os.environ[admin_server.CONFIG_ENV], early_reload=admin_server.EARLY_SIGHUP)


def serve(config_path: Path, settings: Settings) -> None:
    """Run the gateway until SIGTERM/SIGINT; in-flight requests drain before workers stop.

    Raises:
        ListenBusy: ``listen`` is taken, also by a server that shares ports (nothing was started).
    """
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.server import Server

    from admin.server import start_admin_child
    from gateway.observe.metrics import prepare_multiprocess

    host, port = parse_listen(settings.listen)
    claims = _claim_ports(settings)
    problem = bind_problem(settings.listen)
    if problem is not None:
        for claim in claims:
            claim.close()
        hint = ". Stop the other process or choose another port" if problem == IN_USE else ""
        raise ListenBusy(f"listen {settings.listen}: {problem}{hint}.")
    os.environ[CONFIG_ENV] = str(config_path.resolve())
    accepted = _pin_first_config(config_path, settings)
    # Before any worker or the admin child exists: they all inherit it and count into one directory
    # the admin listener sums (see gateway.observe.metrics). A new gateway starts its counters at 0.
    prepare_multiprocess(settings, wipe=True)
    tls = settings.tls
    server = Server(
        "gateway.server:app_factory",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=settings.server.workers,
        loop=Loops.uvloop,
        http=HTTPModes.auto if tls and tls.http2 else HTTPModes.http1,
        websockets=True,
        http1_settings=HTTP1Settings(
            header_read_timeout=settings.server.header_timeout_ms,
            keep_alive=True,
            max_buffer_size=max(int(settings.limits.max_header_bytes) + 8192, 65536),
        ),
        backlog=settings.server.backlog,
        backpressure=settings.server.max_connections,
        log_access=False,
        ssl_cert=Path(tls.certificate) if tls else None,
        ssl_key=Path(tls.key) if tls else None,
        ssl_protocol_min=SSLProtocols.tls13 if not tls or tls.min_version == "1.3" else SSLProtocols.tls12,
        respawn_failed_workers=True,
        workers_kill_timeout=int(settings.server.graceful_timeout),
    )
    master_pid = os.getpid()
    # Started first: a busy admin port is a clear error before the gateway takes its own port.
    admin = start_admin_child(config_path, settings)
    if admin is not None:
        admin.watch()

    def forward_sighup(signum: int, _frame: object) -> None:
        if os.getpid() != master_pid:
            # A freshly forked worker still carries this handler until app_factory replaces it.
            EARLY_SIGHUP.set()
            return
        logger.info("SIGHUP: asking %d worker(s) to reload %s", len(server.wrks), config_path)
        for worker in list(server.wrks):
            with contextlib.suppress(ProcessLookupError, AttributeError, TypeError):
                os.kill(worker._id(), signal.SIGHUP)  # type: ignore[no-untyped-call]
        if admin is not None:
            admin.reload()

    # granian installs its own SIGHUP handler right before the start-up hooks run; replace it there.
    server.on_startup(lambda: signal.signal(signal.SIGHUP, forward_sighup))
    # After the admin child started (it has its own guard): only granian's workers fork from here on.
    guard_workers(float(settings.server.graceful_timeout))
    try:
        server.serve()
    finally:
        if admin is not None and os.getpid() == master_pid:
            admin.stop()
        if os.getpid() == master_pid:
            accepted.unlink(missing_ok=True)
            for claim in claims:
                claim.close()


def _claim_ports(settings: Settings) -> list[socket.socket]:
    """This node's claims on the data plane's and the admin listener's ports (once each: the admin
    listener may share the port on another address), held while serving.

    Raises:
        ListenBusy: another gateway on this machine is starting or serving on one of them.
    """
    listens = {parse_listen(listen)[1]: (setting, listen) for setting, listen in (
        ("admin.listen", settings.admin.listen), ("listen", settings.listen)) if listen is not None}  # fmt: skip
    claims: list[socket.socket] = []
    for port, (setting, listen) in listens.items():
        claim = claim_port(port)
        if claim is None:
            for held in claims:
                held.close()
            raise ListenBusy(f"{setting} {listen}: {CLAIMED % port}")
        claims.append(claim)
    return claims


def _pin_first_config(config_path: Path, settings: Settings) -> Path:
    """The private file every process of this gateway starts from (gateway.settings.loader.ACCEPTED_ENV),
    holding the config's text as the gateway starts; each accepted reload replaces it."""
    fd, name = tempfile.mkstemp(dir=settings.data_dir, prefix=".accepted-config-", suffix=".yaml")
    os.close(fd)
    os.environ[ACCEPTED_ENV] = name
    pin_accepted(read_document(config_path))
    return Path(name)
