"""TLS termination on a real gateway: protocol floor checked by an independent TLS peer (OpenSSL).

The gateway must refuse TLS 1.2 by default (``tls.min_version`` is 1.3) and say so in the handshake,
not after it; ``openssl s_client`` from the operating system is the judge, so the test does not rely on
the same TLS stack (rustls inside granian) that it checks.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import (
    Echo,
    Gateway,
    echo_route,
    free_port,
    gateway_config,
    run_gateway,
)
from tests.support.certs import self_signed


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, with its key as PKCS#8 PEM (granian needs it)."""
    return self_signed(tmp_path_factory.mktemp("tls"), ips=["127.0.0.1"])


def _tls_gateway(tmp: Path, echo: Echo, cert_files: tuple[Path, Path], **tls_extra: str) -> Iterator[Gateway]:
    cert, key = cert_files
    port = free_port()
    config = gateway_config(
        tmp,
        port,
        [echo_route(echo)],
        public_url=f"https://127.0.0.1:{port}",
        tls={"certificate": str(cert), "key": str(key), **tls_extra},
    )
    with run_gateway(tmp, config, scheme="https") as gw:
        yield gw


@pytest.fixture(scope="module")
def tls_gateway(
    tmp_path_factory: pytest.TempPathFactory, echo: Echo, cert_files: tuple[Path, Path]
) -> Iterator[Gateway]:
    """A gateway with the default TLS settings (minimum TLS 1.3)."""
    yield from _tls_gateway(tmp_path_factory.mktemp("gw-tls13"), echo, cert_files)


@pytest.fixture(scope="module")
def tls12_gateway(
    tmp_path_factory: pytest.TempPathFactory, echo: Echo, cert_files: tuple[Path, Path]
) -> Iterator[Gateway]:
    """A gateway that explicitly allows TLS 1.2 (``tls.min_version: "1.2"``)."""
    yield from _tls_gateway(tmp_path_factory.mktemp("gw-tls12"), echo, cert_files, min_version="1.2")


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("openssl is not installed; install it with `apt-get install openssl` (Debian/Ubuntu)")
    return path


def _s_client(port: int, version_flag: str, ca: Path) -> subprocess.CompletedProcess[str]:
    # stdin closed: s_client completes the handshake, prints the session and exits.
    return subprocess.run(
        [
            _openssl(),
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "localhost",
            "-CAfile",
            str(ca),
            version_flag,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.peer
def test_tls12_handshake_is_refused_by_default(tls_gateway: Gateway, cert_files: tuple[Path, Path]) -> None:
    result = _s_client(tls_gateway.port, "-tls1_2", cert_files[0])
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # No session was established: OpenSSL reports no negotiated protocol/cipher.
    assert "Cipher is (NONE)" in output or "alert" in output.lower(), output


@pytest.mark.peer
def test_tls13_handshake_succeeds(tls_gateway: Gateway, cert_files: tuple[Path, Path]) -> None:
    result = _s_client(tls_gateway.port, "-tls1_3", cert_files[0])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "TLSv1.3" in output, output
    # The gateway presented the configured certificate and OpenSSL verified it against it as CA.
    assert "Verify return code: 0 (ok)" in output, output


@pytest.mark.peer
def test_tls12_allowed_when_configured(tls12_gateway: Gateway, cert_files: tuple[Path, Path]) -> None:
    result = _s_client(tls12_gateway.port, "-tls1_2", cert_files[0])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "TLSv1.2" in output, output


def test_https_request_reaches_echo_with_forwarded_proto_https(
    tls_gateway: Gateway, cert_files: tuple[Path, Path]
) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=cert_files[0])) as client:
        resp = client.get(f"https://127.0.0.1:{tls_gateway.port}/tls/check?x=1")
    assert resp.status_code == 200, resp.text
    assert resp.http_version == "HTTP/1.1"
    seen = json.loads(resp.text)
    assert seen["target"] == "/tls/check?x=1"
    headers = dict(seen["headers"])
    assert headers["x-forwarded-proto"] == "https"


def test_https_client_spoofing_forwarded_proto_is_overridden(
    tls_gateway: Gateway, cert_files: tuple[Path, Path]
) -> None:
    # The client is not a trusted proxy: its X-Forwarded-Proto must not survive.
    with httpx.Client(verify=ssl.create_default_context(cafile=cert_files[0])) as client:
        resp = client.get(f"https://127.0.0.1:{tls_gateway.port}/", headers={"X-Forwarded-Proto": "http"})
    assert resp.status_code == 200, resp.text
    values = [v for k, v in json.loads(resp.text)["headers"] if k == "x-forwarded-proto"]
    assert values == ["https"]


def test_plain_http_on_tls_port_is_not_served(tls_gateway: Gateway) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_gateway.port}/", timeout=10)
