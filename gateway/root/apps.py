"""The two serving processes' ASGI apps: start the services at lifespan start-up, then wire the app.

granian calls a factory before the event loop runs, so the services cannot exist yet when the app
object is handed over. The app returned here is a thin shell: at ``lifespan.startup`` it runs
:func:`gateway.root.start` for its role, builds the real app from the frozen services (the data
plane with its control app, or the admin app) and from then on hands every request straight to it;
at ``lifespan.shutdown`` it closes the services. Before start-up completed, a request is answered 503.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, cast

from admin.app import create_admin_app
from gateway.errors import GatewayError
from gateway.pipeline.app import DataPlane
from gateway.pipeline.asgi import ASGIApp, Receive, Scope, Send
from gateway.root.start import Role, Running, S, start
from gateway.services import Services, WorkerServices
from gateway.settings.loader import load_accepted
from gateway.settings.schema import Settings
from gateway.web.app import create_control_app

__all__ = ["ProcessApp", "admin_app", "worker_app"]

logger = logging.getLogger("gateway")

_GC_YOUNG_THRESHOLD = 35_000


class ProcessApp(Generic[S]):
    """One serving process: its lifespan starts and closes the services, requests go to its app."""

    __slots__ = ("_app", "_build", "_early_reload", "_name", "_open", "_running")

    def __init__(
        self,
        name: str,
        open_services: Callable[[threading.Event | None], Awaitable[Running[S]]],
        build: Callable[[Running[S]], ASGIApp],
        early_reload: threading.Event | None,
    ) -> None:
        self._name = name
        self._open = open_services
        self._build = build
        self._early_reload = early_reload
        self._running: Running[S] | None = None
        # Until start-up completes, every request is answered 503.
        self._app: ASGIApp = _unavailable

    @property
    def running(self) -> Running[S]:
        """The started services (after ``lifespan.startup``)."""
        if self._running is None:
            raise RuntimeError(f"the {self._name} has not started")
        return self._running

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: a request runs in the app's own frame, one call deeper.
        if scope["type"] == "lifespan":
            return self._lifespan(receive, send)
        return self._app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    running = await self._open(self._early_reload)
                except GatewayError as exc:
                    logger.error("%s failed to start: %s", self._name, exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    logger.exception("%s failed to start", self._name)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                try:
                    app = self._build(running)
                except Exception as exc:
                    logger.exception("%s failed to start", self._name)
                    await running.close()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self._running, self._app = running, app
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._running is not None:
                    await self._running.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def worker_app(
    config_path: str | Path, *, early_reload: threading.Event | None = None
) -> ProcessApp[WorkerServices]:
    """A gateway worker: the data plane and its control app. Raises ConfigError for a bad config."""
    path = Path(config_path)
    settings = load_accepted(path)

    async def open_services(early: threading.Event | None) -> Running[WorkerServices]:
        return await start(path, settings, role=Role.WORKER, early_reload=early)

    return ProcessApp("gateway worker", open_services, _data_plane, early_reload)


def admin_app(
    config_path: str | Path, *, early_reload: threading.Event | None = None
) -> ProcessApp[Services]:
    """The admin listener's app. Raises ConfigError for a bad config, GatewayError if ``admin.listen``
    is null (the configuration serves no admin API)."""
    path = Path(config_path)
    settings = load_accepted(path)
    _require_admin_listener(settings)

    async def open_services(early: threading.Event | None) -> Running[Services]:
        return await start(path, settings, role=Role.ADMIN, early_reload=early)

    def build(running: Running[Services]) -> ASGIApp:
        return cast(ASGIApp, create_admin_app(running.services))

    return ProcessApp("admin listener", open_services, build, early_reload)


async def _unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 503, "headers": [(b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": b""})


def _data_plane(running: Running[WorkerServices]) -> ASGIApp:
    services = running.services
    plane = DataPlane(services, running.live, cast(ASGIApp, create_control_app(services)))
    # Everything built so far (modules, settings, the app) lives as long as the worker: move it out of
    # the collector's sight, so full collections stop walking ~10^5 long-lived objects in the middle
    # of requests (measured: tail-latency spikes).
    gc.collect()
    gc.freeze()
    # Young collections still ran every 700 allocations, i.e. every few requests: 7% of the worker's
    # time under load (py-spy --native). Almost everything a request allocates dies by reference
    # counting, so collecting 50x less often finds the same few cycles while walking far fewer
    # objects in total.
    gc.set_threshold(_GC_YOUNG_THRESHOLD, 20, 20)
    return plane


def _require_admin_listener(settings: Settings) -> None:
    if settings.admin.listen is None:
        raise GatewayError("admin.listen is null: the admin API is disabled in this configuration")
