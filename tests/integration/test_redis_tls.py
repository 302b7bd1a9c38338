"""Redis over TLS: a real gateway against a redis-server that listens with TLS only.

The server (``--port 0 --tls-port N``, a certificate for ``localhost`` issued by a test CA) takes no
plaintext connection. With ``rediss://localhost:N/?ssl_ca_certs=<that CA>`` the gateway is ready and a
session survives a request; with a CA that did not issue the certificate, or a host the certificate
does not name, ``gateway serve`` refuses to start and says that TLS verification failed. A second
server demands client certificates (``--tls-auth-clients yes``): ``ssl_certfile``/``ssl_keyfile``
get the gateway in, and without them it is not ready.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import (
    echo_route,
    free_port,
    gateway_config,
    refused_start,
    run_echo,
    run_gateway,
    stop,
    wait_for_port,
    wait_until,
)
from tests.support.pki import Issued, PrivateCa

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (built with TLS)"),
]


@dataclass(frozen=True)
class TlsRedis:
    port: int
    mtls_port: int
    ca: Path  # issued the server's certificate
    other_ca: Path  # did not
    client: Issued  # a client certificate from ``ca``
    issuer: PrivateCa  # the CA of ``ca``, which writes revocation lists
    server_serial: int


def _redis_server(
    directory: Path, port: int, server: Issued, ca: Path, *, clients: str
) -> subprocess.Popen[bytes]:
    log = (directory / f"redis-{port}.log").open("wb")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port", "0",
            "--tls-port", str(port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(server.certificate),
            "--tls-key-file", str(server.key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", clients,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    return proc


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    directory = tmp_path_factory.mktemp("redis-tls")
    ca = PrivateCa(directory, "redis")
    other = PrivateCa(directory, "other")
    server = ca.issue("server", "localhost", dns=["localhost"], client=False)
    client = ca.issue("client", "gateway", client=True)
    port, mtls_port = free_port(), free_port()
    procs = [
        _redis_server(directory, port, server, ca.certificate, clients="no"),
        _redis_server(directory, mtls_port, server, ca.certificate, clients="yes"),
    ]
    try:
        for proc, listening in zip(procs, (port, mtls_port), strict=True):
            wait_for_port(listening, proc=proc)
        yield TlsRedis(port, mtls_port, ca.certificate, other.certificate, client, ca, server.serial)
    finally:
        for proc in procs:
            stop(proc)


def _config(tmp: Path, redis_url: str, routes: list[dict[str, object]] | None = None) -> dict[str, object]:
    return gateway_config(
        tmp, free_port(), routes or [], state={"redis_url": redis_url, "namespace": f"tls{free_port()}:"}
    )


def test_plaintext_is_refused_by_the_server(redis: TlsRedis) -> None:
    # The premise: nothing speaks plaintext Redis on that port, so a working gateway spoke TLS.
    import socket

    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        sock.settimeout(5)
        try:
            answer = sock.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b"PONG" not in answer


def test_rediss_with_the_issuing_ca_serves(redis: TlsRedis, tmp_path: Path) -> None:
    with run_echo() as echo:
        url = f"rediss://localhost:{redis.port}/0?ssl_ca_certs={redis.ca}"
        with run_gateway(tmp_path, _config(tmp_path, url, [echo_route(echo)])) as gw:
            ready = httpx.get(f"{gw.url}/.gateway/ready", timeout=30)
            assert ready.status_code == 200, ready.text
            assert httpx.get(f"{gw.url}/hello", timeout=30).status_code == 200
            assert "not encrypted" not in gw.log()


def test_a_ca_that_did_not_issue_the_certificate_refuses_to_start(redis: TlsRedis, tmp_path: Path) -> None:
    url = f"rediss://:hunter2@localhost:{redis.port}/0?ssl_ca_certs={redis.other_ca}"
    log = refused_start(tmp_path, _config(tmp_path, url))
    assert "state.redis_url: TLS verification of the Redis server failed" in log, log
    assert "Traceback" not in log
    assert "hunter2" not in log


def test_a_host_the_certificate_does_not_name_refuses_to_start(redis: TlsRedis, tmp_path: Path) -> None:
    url = f"rediss://127.0.0.1:{redis.port}/0?ssl_ca_certs={redis.ca}"
    log = refused_start(tmp_path, _config(tmp_path, url))
    assert "TLS verification of the Redis server failed" in log, log
    assert "mismatch" in log, log


def test_a_client_certificate_gets_in_where_the_server_demands_one(redis: TlsRedis, tmp_path: Path) -> None:
    # A route that needs sessions: without the fast state this replica cannot serve it (not ready).
    signed_in = [echo_route("http://127.0.0.1:9", public_paths=[])]
    base = f"rediss://localhost:{redis.mtls_port}/0?ssl_ca_certs={redis.ca}"
    with_cert = f"{base}&ssl_certfile={redis.client.certificate}&ssl_keyfile={redis.client.key}"
    with run_gateway(tmp_path / "cert", _config(tmp_path / "cert", with_cert, signed_in)) as gw:
        ready = httpx.get(f"{gw.url}/.gateway/ready", timeout=30)
        assert ready.status_code == 200, ready.text
    # Without one the server ends the handshake: not a verification failure of ours, so the gateway
    # starts (as while Redis is coming up) and reports the fast state unavailable.
    with run_gateway(tmp_path / "none", _config(tmp_path / "none", base, signed_in)) as gw:
        wait_until(
            lambda: httpx.get(f"{gw.url}/.gateway/ready", timeout=30).status_code == 503,
            what="not ready without a client certificate",
        )


def _bundle(redis: TlsRedis, path: Path, revoked: list[int]) -> Path:
    """The CA and its revocation list in one file, as ``ssl_ca_certs`` takes them with the CRL check."""
    crl = redis.issuer.crl(path.with_suffix(".crl"), revoked=revoked)
    path.write_bytes(redis.ca.read_bytes() + crl.read_bytes())
    return path


def test_a_revoked_server_certificate_refuses_to_start(redis: TlsRedis, tmp_path: Path) -> None:
    flag = "ssl_include_verify_flags=VERIFY_CRL_CHECK_LEAF"
    clean = _bundle(redis, tmp_path / "clean.pem", [redis.server_serial + 1])
    with run_echo() as echo:
        url = f"rediss://localhost:{redis.port}/0?ssl_ca_certs={clean}&{flag}"
        with run_gateway(tmp_path / "clean", _config(tmp_path, url, [echo_route(echo)])) as gw:
            assert httpx.get(f"{gw.url}/.gateway/ready", timeout=30).status_code == 200
    # The attack: the server's key leaked and its certificate was revoked; someone serves it.
    revoked = _bundle(redis, tmp_path / "revoked.pem", [redis.server_serial])
    url = f"rediss://localhost:{redis.port}/0?ssl_ca_certs={revoked}&{flag}"
    log = refused_start(tmp_path / "revoked", _config(tmp_path, url))
    assert "TLS verification of the Redis server failed" in log, log
    assert "revoked" in log, log
    assert "Traceback" not in log
    # The flag is what makes the list count: the same bundle without it is not checked (OpenSSL's default).
    unchecked = f"rediss://localhost:{redis.port}/0?ssl_ca_certs={revoked}"
    with run_gateway(tmp_path / "unchecked", _config(tmp_path, unchecked)) as gw:
        assert httpx.get(f"{gw.url}/.gateway/ready", timeout=30).status_code == 200
