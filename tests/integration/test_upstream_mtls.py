"""mTLS from the gateway to an upstream app that lets in only clients with a certificate from its CA.

The app is a real HTTPS server (aiohttp, in a thread) with ``verify_mode=CERT_REQUIRED``; a private CA
issues its certificate (for ``app.internal`` only, while the gateway reaches it by IP, so
``server_name`` matters) and the gateway's client certificate. One gateway process serves a route per
case; the health checks run the checker against the same app; a reload with a renewed client
certificate is seen by the app.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway.settings.schema import ActiveHealthCheck, PassiveHealthCheck, UpstreamTls
from gateway.upstream import HealthChecker, UpstreamPool
from gateway.upstream.tls import tls_client
from tests.integration.harness import Gateway, free_port, gateway_config, run_gateway
from tests.support.pki import Issued, PrivateCa
from tests.support.wait import wait_until

NO_EJECTION = {"consecutive_failures": 1000}


@dataclass(frozen=True)
class Pki:
    ca: PrivateCa
    other_ca: PrivateCa
    server: Issued
    client: Issued
    renewed: Issued  # a second client certificate from the same CA (the "renewal")
    stranger: Issued  # a client certificate from the other CA
    foreign_server: Issued  # a server certificate from the other CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca, other = PrivateCa(tmp, "app"), PrivateCa(tmp, "other")
    return Pki(
        ca=ca,
        other_ca=other,
        server=ca.issue("server", "app.internal", dns=["app.internal"], client=False),
        client=ca.issue("client", "gateway", client=True),
        renewed=ca.issue("client-renewed", "gateway", client=True),
        stranger=other.issue("stranger", "stranger", client=True),
        foreign_server=other.issue("foreign", "app.internal", dns=["app.internal"], client=False),
    )


@dataclass
class App:
    port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


async def _hello(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    # As a number: Python's ssl pads the hex serial to whole bytes ("01D1…"), which no format string
    # of the test's would reproduce for every random serial.
    serial = int(peer["serialNumber"], 16) if peer else None
    return web.json_response({"app": "mtls", "client_serial": serial})


async def _health(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str("app says " + msg.data)
    return ws


def _run_app(server: Issued, ca_file: Path) -> Iterator[App]:
    """Serve the app in a thread with its own loop until the generator is closed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    context.verify_mode = ssl.CERT_REQUIRED  # no certificate from the CA, no connection
    context.load_cert_chain(server.certificate, server.key)
    app = web.Application()
    app.add_routes([web.get("/", _hello), web.get("/health", _health), web.get("/ws", _ws)])
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, name="mtls-app", daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the app did not start"
        yield App(port)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def app(pki: Pki) -> Iterator[App]:
    yield from _run_app(pki.server, pki.ca.certificate)


@pytest.fixture(scope="module")
def foreign_app(pki: Pki) -> Iterator[App]:
    """The same app, but with a server certificate from the other CA."""
    yield from _run_app(pki.foreign_server, pki.ca.certificate)


def _route(name: str, upstream: str, **tls: Any) -> dict[str, Any]:
    return {
        "name": name,
        "host": f"{name}.test",
        "upstreams": [upstream],
        "public_paths": ["/*"],
        "mfa": "none",
        "passive_health_check": dict(NO_EJECTION),
        "upstream_tls": tls,
    }


@pytest.fixture(scope="module")
def files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The client certificate and key at the paths the config names (a renewal overwrites them)."""
    tmp = tmp_path_factory.mktemp("gw-files")
    cert, key = tmp / "gateway-client.pem", tmp / "gateway-client.key"
    shutil.copy(pki.client.certificate, cert)
    shutil.copy(pki.client.key, key)
    return cert, key


@pytest.fixture(scope="module")
def crl(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app CA's revocation list the ``revoked`` route names; at first it lists the app's certificate."""
    return pki.ca.crl(tmp_path_factory.mktemp("crl") / "app.crl", revoked=[pki.server.serial])


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
    app: App,
    foreign_app: App,
    files: tuple[Path, Path],
    crl: Path,
) -> Iterator[Gateway]:
    cert, key = str(files[0]), str(files[1])
    ca = str(pki.ca.certificate)
    routes = [
        _route(
            "revoked",
            app.url,
            certificate=cert,
            key=key,
            ca_file=ca,
            server_name="app.internal",
            crl_file=str(crl),
        ),
        _route("mtls", app.url, certificate=cert, key=key, ca_file=ca, server_name="app.internal"),
        _route("nocert", app.url, ca_file=ca, server_name="app.internal"),
        _route("pinned", app.url, certificate=cert, key=key, pin_sha256=pki.server.sha256),
        _route("wrongpin", app.url, certificate=cert, key=key, pin_sha256="ab" * 32),
        _route("wrongca", foreign_app.url, certificate=cert, key=key, ca_file=ca, server_name="app.internal"),
        _route(
            "stranger",
            app.url,
            certificate=str(pki.stranger.certificate),
            key=str(pki.stranger.key),
            ca_file=ca,
            server_name="app.internal",
        ),
    ]
    tmp = tmp_path_factory.mktemp("gw-mtls")
    config = gateway_config(tmp, free_port(), routes, server={"workers": 1})
    with run_gateway(tmp, config) as gateway:
        yield gateway


def _get(gw: Gateway, host: str, path: str = "/") -> httpx.Response:
    return httpx.get(f"{gw.url}{path}", headers={"host": host, "accept": "application/json"}, timeout=10)


def _assert_gateway_502(resp: httpx.Response) -> None:
    assert resp.status_code == 502, resp.text
    body = resp.json()
    assert body["error"] == "upstream-error"
    assert body["request_id"]
    assert "mtls" not in resp.text  # nothing of the app came through


def test_route_with_the_client_certificate_reaches_the_app(gw: Gateway, pki: Pki) -> None:
    resp = _get(gw, "mtls.test")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"app": "mtls", "client_serial": pki.client.serial}


def test_pin_alone_reaches_the_app_whatever_its_name(gw: Gateway) -> None:
    # No ca_file, no server_name: the pin of the app's own certificate is the whole check.
    assert _get(gw, "pinned.test").json()["app"] == "mtls"


def test_the_app_refuses_a_client_without_a_certificate(app: App, pki: Pki) -> None:
    verify = ssl.create_default_context(cafile=str(pki.ca.certificate))
    verify.check_hostname = False  # the app's name is not what this is about
    # TLS 1.2 so the refusal is the handshake itself (TLS 1.3 servers refuse after the client finished).
    verify.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        httpx.get(app.url, verify=verify, timeout=10)
    # The control: the same client with the CA's client certificate gets in.
    verify.load_cert_chain(pki.client.certificate, pki.client.key)
    assert httpx.get(app.url, verify=verify, timeout=10).json()["app"] == "mtls"


def test_route_without_a_client_certificate_is_502(gw: Gateway) -> None:
    _assert_gateway_502(_get(gw, "nocert.test"))


def test_client_certificate_of_another_ca_is_502(gw: Gateway) -> None:
    _assert_gateway_502(_get(gw, "stranger.test"))


def test_wrong_pin_is_502_and_logged_with_the_route_not_the_key(
    gw: Gateway, files: tuple[Path, Path]
) -> None:
    _assert_gateway_502(_get(gw, "wrongpin.test"))
    line = wait_until(
        lambda: next((ln for ln in gw.log().splitlines() if "route wrongpin" in ln), None),
        what="a log line naming route wrongpin",
    )
    assert "pin_sha256" in line
    log = gw.log()
    key_body = files[1].read_text().splitlines()[1]
    assert "PRIVATE KEY" not in log
    assert key_body not in log


def test_app_certificate_not_from_ca_file_is_502(gw: Gateway) -> None:
    _assert_gateway_502(_get(gw, "wrongca.test"))
    wait_until(
        lambda: any(
            "route wrongca" in ln and "certificate verify failed" in ln for ln in gw.log().splitlines()
        ),
        what="a log line naming route wrongca",
    )


def test_a_revoked_app_certificate_is_502_until_the_list_is_replaced(
    gw: Gateway, pki: Pki, crl: Path
) -> None:
    """The attack: the app's key leaked and its certificate was revoked, and whoever holds the key
    answers for the app. Then the CA's next list (the certificate reissued under the same serial
    would not happen; here the revocation is lifted, as on hold) reaches the running gateway."""
    _assert_gateway_502(_get(gw, "revoked.test"))
    wait_until(lambda: "certificate revoked" in gw.log(), what="the revocation in the gateway's log")
    fresh = pki.ca.crl(crl.with_name("next.crl"))
    fresh.replace(crl)  # as a CRL fetcher writes it: a new file renamed over the old one

    def reached() -> httpx.Response | None:
        resp = _get(gw, "revoked.test")
        return resp if resp.status_code == 200 else None

    resp = wait_until(reached, what="the app reached once the new list no longer names it (no reload)")
    assert resp.json()["client_serial"] == pki.client.serial


def test_websocket_upgrade_presents_the_client_certificate(gw: Gateway) -> None:
    with connect(f"ws://mtls.test:{gw.port}/ws", sock=_sock(gw), open_timeout=10, close_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "app says hi"


def test_websocket_upgrade_with_a_wrong_pin_is_refused(gw: Gateway) -> None:
    # The gateway refuses the client's handshake (the upstream's failed): nothing is ever opened.
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://wrongpin.test:{gw.port}/ws", sock=_sock(gw), open_timeout=10, close_timeout=5)
    assert refused.value.response.status_code in (403, 502)


def _sock(gw: Gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=10)


def _client_serial(gw: Gateway) -> int | None:
    """The client certificate serial the app saw, or None while an answer is not the app's."""
    resp = _get(gw, "mtls.test")
    return resp.json()["client_serial"] if resp.status_code == 200 else None


def test_reload_uses_a_renewed_client_certificate(gw: Gateway, pki: Pki, files: tuple[Path, Path]) -> None:
    assert _get(gw, "mtls.test").json()["client_serial"] == pki.client.serial
    try:
        shutil.copy(pki.renewed.certificate, files[0])
        shutil.copy(pki.renewed.key, files[1])
        gw.sighup()
        wait_until(
            lambda: _client_serial(gw) == pki.renewed.serial,
            what="the app to see the renewed client certificate",
        )
    finally:
        shutil.copy(pki.client.certificate, files[0])
        shutil.copy(pki.client.key, files[1])
        gw.sighup()
    wait_until(
        lambda: _client_serial(gw) == pki.client.serial,
        what="the original client certificate back",
    )


def _pool(app: App, tls: UpstreamTls) -> UpstreamPool:
    return UpstreamPool(
        "probe",
        [app.url],
        balance="round_robin",
        passive=PassiveHealthCheck(),
        active=ActiveHealthCheck(path="/health", healthy_threshold=1, unhealthy_threshold=1),
        tls=tls_client(tls),
    )


def test_health_checks_use_the_routes_tls(app: App, pki: Pki) -> None:
    ca = str(pki.ca.certificate)
    cert, key = str(pki.client.certificate), str(pki.client.key)
    good = _pool(app, UpstreamTls(certificate=cert, key=key, ca_file=ca, server_name="app.internal"))
    no_cert = _pool(app, UpstreamTls(ca_file=ca, server_name="app.internal"))
    bad_pin = _pool(app, UpstreamTls(certificate=cert, key=key, pin_sha256="cd" * 32))

    async def one_round() -> None:
        async with aiohttp.ClientSession() as session:
            checker = HealthChecker([good, no_cert, bad_pin], session)
            try:
                await checker.check_once()
            finally:
                await checker.stop()

    asyncio.run(one_round())
    assert good.targets[0].healthy
    assert not no_cert.targets[0].healthy
    assert not bad_pin.targets[0].healthy


def test_ready_lists_the_mtls_routes(gw: Gateway) -> None:
    body = json.loads(httpx.get(f"{gw.url}/.gateway/ready", timeout=10).text)
    assert "mtls" in json.dumps(body)
