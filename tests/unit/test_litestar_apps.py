"""Both Litestar apps (the worker's ``/.gateway/`` control app and the admin app) build without a warning.

Litestar 2 warns (``LitestarDeprecationWarning``) when a handler declares a parameter in a style
Litestar 3 removes: a query or path parameter inferred from a bare ``name: str``, ``Parameter(query=...)``,
a ``data`` body without its marker. The next major release turns those into errors and the gateway
would not start; so a handler added in the old style fails here, while building the app, with the
handler and the parameter named. Only the apps are built: one worker's services are started (SQLite
file, embedded fast state, no listener) and closed.
"""

from __future__ import annotations

import logging
import typing
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from litestar import Litestar, get

from admin.app import create_admin_app
from gateway.root.start import Role, start
from gateway.services import WorkerServices
from gateway.settings.loader import load_settings
from gateway.web.app import create_control_app


def strictly(build: Callable[[], Litestar]) -> Litestar:
    """Build an app with every warning raised as an error (whatever filters the caller has set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return build()


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[WorkerServices]:
    config: dict[str, Any] = {
        "listen": "127.0.0.1:8080",
        "public_url": "http://gw.test:8080",
        "data_dir": str(tmp_path / "data"),
        "admin": {"listen": "127.0.0.1:9443"},
        "routes": [{"name": "app", "host": "gw.test", "upstreams": ["http://127.0.0.1:9"], "mfa": "none"}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    running = await start(path, load_settings(path), role=Role.WORKER)
    try:
        yield running.services
    finally:
        await running.close()


async def test_the_control_app_and_the_admin_app_build_without_a_warning(services: WorkerServices) -> None:
    control = strictly(lambda: create_control_app(services))
    admin = strictly(lambda: create_admin_app(services))

    # Built for real: each serves its own routes.
    assert "/.gateway/oidc/{idp:str}/callback" in {route.path for route in control.routes}
    assert any(route.path.startswith("/api/") for route in admin.routes)


def test_a_handler_in_the_deprecated_style_fails_the_strict_build() -> None:
    # The check itself: an inferred query parameter, as the gateway's pages declared them before.
    @get("/page")
    async def page(rd: str = "") -> str:
        return rd

    with pytest.raises(
        DeprecationWarning, match="query parameter 'rd' declared using deprecated inferred style"
    ):
        strictly(lambda: Litestar(route_handlers=[page]))


def body_fields(annotation: Any) -> set[str]:
    """The JSON names of a request body's fields, nested structs included (the names an error names)."""
    names: set[str] = set()
    pending = [annotation]
    seen: set[Any] = set()
    while pending:
        kind = pending.pop()
        if kind in seen:
            continue
        seen.add(kind)
        pending.extend(typing.get_args(kind))
        origin = typing.get_origin(kind) or kind
        if isinstance(origin, type) and issubclass(origin, msgspec.Struct):
            for field in msgspec.structs.fields(origin):
                names.add(field.encode_name)
                pending.append(field.type)
    return names


async def test_no_request_body_field_shares_a_dependency_name(services: WorkerServices) -> None:
    # Litestar reads a body error at key K as the dependency K's when one is named K, and answers 500
    # instead of 400: a draft policy sent as a JSON object did, while the admin app named its policy
    # dependency "policy".
    clashes: list[str] = []
    checked = 0
    for app in (create_control_app(services), create_admin_app(services)):
        for route in app.routes:
            for handler in getattr(route, "route_handlers", ()):
                data = handler.parsed_fn_signature.parameters.get("data")
                if data is None:
                    continue
                checked += 1
                shared = body_fields(data.annotation) & set(handler.resolve_dependencies())
                clashes += [f"{handler.handler_name} ({route.path}): {sorted(shared)}"] if shared else []
    assert checked > 20
    assert clashes == []


class Inner(msgspec.Struct):
    policy: str


class Outer(msgspec.Struct):
    items: list[Inner]
    reason: str | None = None


def test_the_body_field_check_sees_a_nested_field() -> None:
    assert body_fields(Outer) == {"items", "policy", "reason"}


async def test_neither_app_touches_the_processes_logging(services: WorkerServices) -> None:
    """Litestar's default logging config put its own handler and format on the root logger of every
    worker and the admin child (`ERROR - 2026-... - gateway - reload - ...`), beside the CLI's format in
    the master (a first-day run). The process's logging stays as the CLI set it up."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    for app in (create_control_app(services), create_admin_app(services)):
        assert app.logging_config is None
        async with app.lifespan():
            assert (list(root.handlers), root.level) == before
