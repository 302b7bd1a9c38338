"""A gateway on the documented dual-stack listener (``listen: "[::]:PORT"``) behind an IPv4 proxy.

Linux shows an IPv4 peer of an IPv6 socket as ``::ffff:127.0.0.1``. An attack run with
``trusted_proxies: ["127.0.0.1", ...]`` found that address trusted nowhere: the app was told the proxy
was the client, the access log and the threat detector counted every client's requests and failures
against the proxy, forward-auth refused it (403 not-a-trusted-proxy) and ``/.gateway/ready`` hid its
details from the loopback. The peer is read as the IPv4 address it maps, everywhere.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Echo,
    Gateway,
    echo_route,
    free_port,
    gateway_config,
    run_gateway,
    wait_until,
)


def _dual_stack() -> bool:
    """Whether an IPv6 socket here takes IPv4 connections too (IPv6 on, ``bindv6only`` off)."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _dual_stack(), reason="no dual-stack IPv6 sockets here")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, echo: Echo) -> Iterator[tuple[Gateway, Path]]:
    tmp = tmp_path_factory.mktemp("dual-stack")
    port = free_port()
    access_log = tmp / "access.log"
    config = gateway_config(
        tmp,
        port,
        [echo_route(echo)],
        listen=f"[::]:{port}",
        trusted_proxies=["127.0.0.1", "10.0.0.0/8", "::1"],
        logging={"sinks": [{"type": "file", "path": str(access_log)}]},
    )
    with run_gateway(tmp, config) as gw:
        yield gw, access_log


def _echoed(resp: httpx.Response) -> dict[str, list[str]]:
    assert resp.status_code == 200, resp.text
    headers: dict[str, list[str]] = {}
    for name, value in json.loads(resp.text)["headers"]:
        headers.setdefault(name, []).append(value)
    return headers


def test_the_app_is_told_the_client_an_ipv4_proxy_names(site: tuple[Gateway, Path]) -> None:
    gw, _ = site
    resp = httpx.get(f"{gw.url}/pub/x", headers={"X-Forwarded-For": "6.6.6.6"}, timeout=30)
    seen = _echoed(resp)
    assert seen["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
    assert seen["forwarded"][0].startswith("for=6.6.6.6, for=127.0.0.1;")
    assert not any("::ffff:" in value for values in seen.values() for value in values)


def test_the_access_log_names_the_client_not_the_proxy(site: tuple[Gateway, Path]) -> None:
    """What the threat detector counts too: a client's failures must not block the proxy's address."""
    gw, access_log = site
    agent = "dual-stack access log test"
    headers = {"X-Forwarded-For": "198.51.100.23", "User-Agent": agent}
    assert httpx.get(f"{gw.url}/pub/x", headers=headers, timeout=30).status_code == 200

    def entry() -> dict[str, Any] | None:
        text = access_log.read_text(errors="replace") if access_log.exists() else ""
        for line in text.splitlines():
            if agent in line:
                found: dict[str, Any] = json.loads(line)
                return found
        return None

    logged = wait_until(entry, timeout=15, what="the request's access log entry")
    assert logged["user_agent"] == {"original": agent}
    assert logged["source"] == {"ip": "198.51.100.23"}, logged


def test_forward_auth_answers_an_ipv4_proxy(site: tuple[Gateway, Path]) -> None:
    gw, _ = site
    asked = {
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "127.0.0.1",
        "X-Forwarded-Uri": "/pub/x",
        "X-Forwarded-For": "6.6.6.6",
    }
    resp = httpx.get(f"{gw.url}/.gateway/auth", headers=asked, timeout=30)
    assert resp.status_code == 200, (resp.status_code, resp.text)


def test_readiness_details_are_shown_to_the_loopback(site: tuple[Gateway, Path]) -> None:
    gw, _ = site
    report = httpx.get(f"{gw.url}/.gateway/ready", timeout=30).json()
    assert set(report) > {"ready"}, report


def test_an_entry_with_a_zone_never_reaches_the_app(site: tuple[Gateway, Path]) -> None:
    """An attack run's ``::1%x";for=6.6.6.6;by="y`` reached the app's ``Forwarded`` as written."""
    gw, _ = site
    headers = {"X-Forwarded-For": '6.6.6.6, ::1%x";for=6.6.6.6;by="y'}
    seen = _echoed(httpx.get(f"{gw.url}/pub/x", headers=headers, timeout=30))
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["forwarded"] == [f'for=127.0.0.1;host="127.0.0.1:{gw.port}";proto=http']
