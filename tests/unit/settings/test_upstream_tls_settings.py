"""``routes[].upstream_tls``: files that load, a key that matches, pin shape, server name, https only."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings
from gateway.settings.paths import resolve_paths
from gateway.upstream.tls import normalise_pin, tls_client
from tests.support.pki import Issued, PrivateCa


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[PrivateCa, Issued]:
    tmp = tmp_path_factory.mktemp("pki")
    ca = PrivateCa(tmp, "app")
    return ca, ca.issue("client", "gateway", client=True)


def _config(upstream: str, tls: str) -> str:
    return textwrap.dedent(f"""\
        public_url: https://auth.example.com
        routes:
          - name: app
            host: app.example.com
            upstreams: [{upstream}]
            upstream_tls:
        """) + textwrap.indent(textwrap.dedent(tls), "      ")


def _errors(upstream: str, tls: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(_config(upstream, tls))
    return str(info.value)


def test_a_full_section_loads_and_builds(pki: tuple[PrivateCa, Issued]) -> None:
    ca, client = pki
    pin = ":".join(["AB"] * 32)
    settings = parse_settings(
        _config(
            "https://10.0.0.5:8443",
            f"""\
            certificate: {client.certificate}
            key: {client.key}
            ca_file: {ca.certificate}
            pin_sha256: "{pin}"
            server_name: app.internal
            min_version: "1.3"
            """,
        )
    )
    tls = settings.routes[0].upstream_tls
    assert tls is not None
    assert tls.server_name == "app.internal"
    built = tls_client(tls)
    assert built is not None
    assert built.server_name == "app.internal"
    assert normalise_pin(pin) == bytes([0xAB] * 32)


def test_relative_paths_start_at_the_config_directory(pki: tuple[PrivateCa, Issued], tmp_path: Path) -> None:
    _ca, client = pki
    (tmp_path / "c.pem").write_bytes(client.certificate.read_bytes())
    (tmp_path / "c.key").write_bytes(client.key.read_bytes())
    settings = parse_settings(
        _config("https://10.0.0.5", "certificate: c.pem\nkey: c.key\n"), base_dir=tmp_path
    )
    settings = resolve_paths(settings, tmp_path)
    tls = settings.routes[0].upstream_tls
    assert tls is not None
    assert tls.certificate == str(tmp_path / "c.pem")


def test_client_certificate_only_with_https_upstreams(pki: tuple[PrivateCa, Issued]) -> None:
    _, client = pki
    errors = _errors("http://10.0.0.5:8080", f"certificate: {client.certificate}\nkey: {client.key}\n")
    assert "routes[0] (name: app).upstreams[0]: upstream_tls applies to https:// upstreams only" in errors


def test_certificate_without_key(pki: tuple[PrivateCa, Issued]) -> None:
    _, client = pki
    errors = _errors("https://10.0.0.5", f"certificate: {client.certificate}\n")
    assert "upstream_tls.key: certificate and key go together" in errors


def test_missing_files_are_named(tmp_path: Path) -> None:
    errors = _errors(
        "https://10.0.0.5",
        f"certificate: {tmp_path}/nope.pem\nkey: {tmp_path}/nope.key\nca_file: {tmp_path}/ca.pem\n",
    )
    for key in ("certificate", "key", "ca_file"):
        assert f"upstream_tls.{key}: file not found" in errors


def test_key_of_another_certificate(pki: tuple[PrivateCa, Issued], tmp_path: Path) -> None:
    _, client = pki
    other = tmp_path / "other.key"
    key = ec.generate_private_key(ec.SECP256R1())
    other.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    errors = _errors("https://10.0.0.5", f"certificate: {client.certificate}\nkey: {other}\n")
    assert "upstream_tls.key: does not belong to the certificate" in errors
    assert "PRIVATE KEY" not in errors


def test_encrypted_key_is_refused_without_prompting(pki: tuple[PrivateCa, Issued], tmp_path: Path) -> None:
    _, client = pki
    encrypted = tmp_path / "enc.key"
    key = serialization.load_pem_private_key(client.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    errors = _errors("https://10.0.0.5", f"certificate: {client.certificate}\nkey: {encrypted}\n")
    assert "upstream_tls.key: the key is encrypted" in errors


def test_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    assert "upstream_tls.ca_file: holds no usable PEM certificate" in _errors(
        "https://10.0.0.5", f"ca_file: {bad}\n"
    )


@pytest.mark.parametrize("pin", ["abc", "zz" * 32, "ab" * 31, ":".join(["ab"] * 31) + ":", "ab" * 33])
def test_pin_shape(pin: str) -> None:
    errors = _errors("https://10.0.0.5", f'pin_sha256: "{pin}"\n')
    assert "upstream_tls.pin_sha256: is not a SHA-256 fingerprint" in errors


@pytest.mark.parametrize("name", ["bad name", "*.example.com", "-x.example.com"])
def test_server_name(name: str) -> None:
    errors = _errors("https://10.0.0.5", f'server_name: "{name}"\n')
    assert "upstream_tls.server_name:" in errors


def test_min_version_is_one_of_two() -> None:
    assert "upstream_tls.min_version" in _errors("https://10.0.0.5", 'min_version: "1.1"\n')
