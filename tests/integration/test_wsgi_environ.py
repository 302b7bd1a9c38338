"""A real gunicorn behind the gateway: a client's CGI/WSGI environ names never reach it.

An attack run: gunicorn trusts its peer (by default 127.0.0.1, the gateway on the same host) for the
``SCRIPT_NAME`` and ``PATH_INFO`` headers, and cuts ``SCRIPT_NAME`` off the path it routes on. The
gateway decided ``/static/admin/x`` (a public path) and gunicorn's app answered it from its
``/admin/x`` handler, any method, with no sign-in. The gateway drops those names in every spelling.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    echo_route,
    free_port,
    gateway_config,
    run_gateway,
    stop,
    wait_for_port,
)

pytestmark = pytest.mark.peer

_APP = """
import json


def app(environ, start_response):
    seen = {"script_name": environ.get("SCRIPT_NAME", ""), "path_info": environ.get("PATH_INFO", "")}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


@contextmanager
def _gunicorn(folder: Path) -> Iterator[int]:
    """A real gunicorn (its defaults: it trusts 127.0.0.1's SCRIPT_NAME) serving ``_APP``; its port."""
    (folder / "wsgiapp.py").write_text(_APP)
    port = free_port()
    app = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--chdir", str(folder), "--no-control-socket", "wsgiapp:app",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc=app)
        yield port
    finally:
        stop(app)  # gunicorn's master stops its worker on SIGTERM


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("wsgi")
    with _gunicorn(tmp) as port:
        route = echo_route(f"http://127.0.0.1:{port}", public_paths=["/static/*"])
        with run_gateway(tmp, gateway_config(tmp, free_port(), [route])) as gateway:
            yield gateway


def _seen(gw: Gateway, path: str, **headers: str) -> dict[str, str]:
    resp = httpx.get(f"{gw.url}{path}", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    seen: dict[str, str] = json.loads(resp.text)
    return seen


def test_the_app_is_reached_at_the_path_the_gateway_decided(gw: Gateway) -> None:
    assert _seen(gw, "/static/admin/x") == {"script_name": "", "path_info": "/static/admin/x"}


@pytest.mark.parametrize("name", ["SCRIPT_NAME", "Script-Name", "script_name", "PATH_INFO", "Path-Info"])
def test_a_client_cannot_move_the_path_gunicorn_routes_on(gw: Gateway, name: str) -> None:
    value = "/static" if "script" in name.lower() else "/admin/x"
    assert _seen(gw, "/static/admin/x", **{name: value}) == {
        "script_name": "",
        "path_info": "/static/admin/x",
    }


def test_gunicorn_does_take_the_header_from_its_peer(tmp_path: Path) -> None:
    """The peer is real: gunicorn, asked directly from 127.0.0.1, does cut SCRIPT_NAME off the path
    (so the test above would fail if the gateway passed the header on)."""
    with _gunicorn(tmp_path) as port:
        resp = httpx.get(
            f"http://127.0.0.1:{port}/static/admin/x", headers={"SCRIPT_NAME": "/static"}, timeout=30
        )
        assert json.loads(resp.text) == {"script_name": "/static", "path_info": "/admin/x"}
