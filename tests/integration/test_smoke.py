"""The smallest end-to-end check: a request through a real gateway reaches the echo app."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.integration.harness import echo_route, free_port, gateway_config, run_echo, run_gateway


def test_request_reaches_echo_app_through_gateway(tmp_path: Path) -> None:
    with run_echo() as echo:
        port = free_port()
        with run_gateway(tmp_path, gateway_config(tmp_path, port, [echo_route(echo)])) as gw:
            resp = httpx.get(f"{gw.url}/hello/./world?x=1")
    assert resp.status_code == 200
    seen = json.loads(resp.text)
    assert seen["target"] == "/hello/world?x=1"
    assert resp.headers["x-request-id"]
