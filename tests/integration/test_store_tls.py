"""PostgreSQL over TLS: a real gateway against the test's own cluster that accepts TLS connections only.

The cluster (``ssl = on``, a server certificate for ``localhost`` issued by a test CA, ``pg_hba.conf``
with ``hostssl`` lines only, so a plaintext connection is refused) runs as its own OS user
(tests/support/pg_cluster.py). With ``sslmode=verify-full`` and that CA the gateway migrates, starts
and is ready; with a CA that did not issue the certificate, or a host the certificate does not name,
``gateway serve`` refuses to start and says that TLS verification failed.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import text

from gateway.store.db import create_engine
from gateway.store.tls import verification_failure
from tests.integration.harness import (
    echo_route,
    free_port,
    gateway_config,
    refused_start,
    run_cli,
    run_echo,
    run_gateway,
)
from tests.support.pg_cluster import PG_BIN, Node, pg_node
from tests.support.pki import PrivateCa

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(
        not (PG_BIN / "initdb").exists(), reason="needs PostgreSQL 15 (scripts/ensure-test-deps)"
    ),
]


@dataclass(frozen=True)
class TlsCluster:
    port: int
    ca: Path  # issued the server's certificate
    other_ca: Path  # did not
    issuer: PrivateCa  # the CA of ``ca``, which writes revocation lists
    server_serial: int


@pytest.fixture(scope="module")
def cluster() -> Iterator[TlsCluster]:
    with pg_node("gw-store-tls-") as node:
        yield _start(node)


def _start(node: Node) -> TlsCluster:
    pki = node.mkdir("pki")
    ca = PrivateCa(pki, "pg")
    other = PrivateCa(pki, "other")
    server = ca.issue("server", "localhost", dns=["localhost"], client=False)
    data = node.home / "data"
    node.initdb(data)
    for source, name in ((server.certificate, "server.crt"), (server.key, "server.key")):
        target = data / name
        target.write_bytes(source.read_bytes())
        target.chmod(0o600)  # PostgreSQL refuses a key others can read
        node.own(target)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    # TCP only with TLS: whatever connects over TCP and works, spoke TLS.
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
    )
    node.start(data, port := free_port(), node.mkdir("sock"))
    return TlsCluster(port, ca.certificate, other.certificate, ca, server.serial)


def _url(
    cluster: TlsCluster, *, host: str = "localhost", ca: Path | None = None, mode: str = "verify-full"
) -> str:
    return (
        f"postgresql+asyncpg://postgres@{host}:{cluster.port}/postgres"
        f"?sslmode={mode}&sslrootcert={ca or cluster.ca}"
    )


def _write(tmp: Path, config: dict[str, object]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_plaintext_is_refused_by_the_cluster(cluster: TlsCluster, tmp_path: Path) -> None:
    # The premise of the other tests: this server takes no connection without TLS.
    config = gateway_config(
        tmp_path, free_port(), [], storage={"url": _url(cluster, mode="disable").split("&")[0]}
    )
    proc = run_cli("migrate", "--config", str(_write(tmp_path, config)))
    assert proc.returncode != 0
    assert "no encryption" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_full_with_the_issuing_ca_serves(cluster: TlsCluster, tmp_path: Path) -> None:
    with run_echo() as echo:
        config = gateway_config(
            tmp_path,
            free_port(),
            [echo_route(echo)],
            storage={"url": _url(cluster)},
            keyring=str(tmp_path / "keyring.json"),
        )
        path = _write(tmp_path, config)
        for step in (("migrate",), ("keys", "init")):
            done = run_cli(*step, "--config", str(path))
            assert done.returncode == 0, done.stdout + done.stderr
        with run_gateway(tmp_path, config) as gw:
            ready = httpx.get(f"{gw.url}/.gateway/ready", timeout=30)
            assert ready.status_code == 200, ready.text
            assert httpx.get(f"{gw.url}/hello", timeout=30).status_code == 200
            # Loopback and verified: nothing to warn about.
            assert "is not verified" not in gw.log()


def test_verify_ca_checks_the_chain_but_not_the_host(cluster: TlsCluster, tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path, free_port(), [], storage={"url": _url(cluster, host="127.0.0.1", mode="verify-ca")}
    )
    proc = run_cli("migrate", "--config", str(_write(tmp_path, config)))
    assert proc.returncode == 0, proc.stderr
    wrong = gateway_config(
        tmp_path,
        free_port(),
        [],
        storage={"url": _url(cluster, host="127.0.0.1", mode="verify-ca", ca=cluster.other_ca)},
    )
    proc = run_cli("migrate", "--config", str(_write(tmp_path / "wrong", wrong)))
    assert proc.returncode == 1
    assert "TLS verification of the PostgreSQL server failed" in proc.stderr, proc.stderr


def test_a_ca_that_did_not_issue_the_certificate_refuses_to_start(
    cluster: TlsCluster, tmp_path: Path
) -> None:
    config = gateway_config(
        tmp_path,
        free_port(),
        [],
        storage={"url": _url(cluster, ca=cluster.other_ca)},
        keyring=str(tmp_path / "k.json"),
    )
    log = refused_start(tmp_path, config)
    assert "TLS verification of the PostgreSQL server failed" in log, log
    assert "unable to get local issuer certificate" in log, log
    assert "Traceback" not in log


def test_a_host_the_certificate_does_not_name_refuses_to_start(cluster: TlsCluster, tmp_path: Path) -> None:
    # The right CA, but the certificate names localhost and the URL says 127.0.0.1.
    config = gateway_config(
        tmp_path,
        free_port(),
        [],
        storage={"url": _url(cluster, host="127.0.0.1")},
        keyring=str(tmp_path / "k.json"),
    )
    log = refused_start(tmp_path, config)
    assert "TLS verification of the PostgreSQL server failed" in log, log
    assert "mismatch" in log, log
    assert "Traceback" not in log


def _migrate_with_crl(cluster: TlsCluster, tmp: Path, crl: Path) -> subprocess.CompletedProcess[str]:
    config = gateway_config(tmp, free_port(), [], storage={"url": f"{_url(cluster)}&sslcrl={crl}"})
    return run_cli("migrate", "--config", str(_write(tmp, config)))


def test_a_revoked_server_certificate_is_refused(cluster: TlsCluster, tmp_path: Path) -> None:
    clean = cluster.issuer.crl(tmp_path / "clean.crl", revoked=[cluster.server_serial + 1])
    done = _migrate_with_crl(cluster, tmp_path / "clean", clean)
    assert done.returncode == 0, done.stderr
    # The attack: the server's key leaked, its certificate was revoked, and someone serves it.
    revoked = cluster.issuer.crl(tmp_path / "revoked.crl", revoked=[cluster.server_serial])
    refused = _migrate_with_crl(cluster, tmp_path / "revoked", revoked)
    assert refused.returncode == 1
    assert "TLS verification of the PostgreSQL server failed" in refused.stderr, refused.stderr
    assert "revoked" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    # A list nobody refreshed is not ignored: it fails, as libpq's does.
    stale = cluster.issuer.crl(tmp_path / "stale.crl", expired=True)
    expired = _migrate_with_crl(cluster, tmp_path / "stale", stale)
    assert expired.returncode == 1
    assert "expired" in expired.stderr.lower(), expired.stderr


def test_a_replaced_revocation_list_applies_to_the_next_connection(
    cluster: TlsCluster, tmp_path: Path
) -> None:
    """One process, as a running gateway: its pool's next connection reads the list again."""
    crl = cluster.issuer.crl(tmp_path / "db.crl")
    engine = create_engine(f"{_url(cluster)}&sslcrl={crl}", pool_size=1)

    async def query() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT 1"))).scalar_one())

    async def scenario() -> None:
        try:
            assert await query() == 1
            cluster.issuer.crl(crl, revoked=[cluster.server_serial])
            await engine.dispose()  # the pooled connection goes; the next one is new
            with pytest.raises(ssl.SSLCertVerificationError, match="revoked") as failed:
                await query()
            assert verification_failure(failed.value) is not None, repr(failed.value)
        finally:
            await engine.dispose()

    asyncio.run(scenario())
