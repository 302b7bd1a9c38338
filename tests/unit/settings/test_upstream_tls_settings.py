"""``routes[].upstream_tls``: files that load, a key that matches, pin shape, server name, https only."""

from __future__ import annotations

import ssl
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings
from gateway.settings.paths import resolve_paths
from gateway.upstream import tls as tls_module
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


def test_a_revocation_list_is_loaded_and_required_for_the_leaf(
    pki: tuple[PrivateCa, Issued], tmp_path: Path
) -> None:
    ca, _client = pki
    crl = ca.crl(tmp_path / "app.crl")
    settings = parse_settings(_config("https://10.0.0.5", f"ca_file: {ca.certificate}\ncrl_file: {crl}\n"))
    tls = settings.routes[0].upstream_tls
    assert tls is not None
    built = tls_client(tls)
    assert built is not None
    assert built.context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert built.context.cert_store_stats()["crl"] == 1


def test_a_replaced_revocation_list_is_read_into_a_new_context(
    pki: tuple[PrivateCa, Issued], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, client = pki
    crl = ca.crl(tmp_path / "app.crl")
    tls = (
        parse_settings(_config("https://10.0.0.5", f"ca_file: {ca.certificate}\ncrl_file: {crl}\n"))
        .routes[0]
        .upstream_tls
    )
    built = tls_client(tls)
    assert built is not None
    monkeypatch.setattr(tls_module, "CRL_CHECK_INTERVAL", 3600.0)
    first = built.context
    assert built.context is first  # unchanged file: the same context
    ca.crl(tmp_path / "new.crl", revoked=[client.serial]).replace(crl)
    assert built.context is first  # within the interval since it was built: not looked at yet
    monkeypatch.setattr(tls_module, "CRL_CHECK_INTERVAL", 0.0)
    renewed = built.context
    assert renewed is not first
    assert renewed.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert built.context is renewed  # looked at again: the same file
    # A broken replacement keeps the last good list (and says so in the log).
    crl.write_text("not a list\n")
    assert built.context is renewed


def test_a_revocation_list_needs_a_checked_chain(pki: tuple[PrivateCa, Issued], tmp_path: Path) -> None:
    ca, _client = pki
    crl = ca.crl(tmp_path / "app.crl")
    errors = _errors("https://10.0.0.5", f'pin_sha256: "{"ab" * 32}"\ncrl_file: {crl}\n')
    assert "upstream_tls.crl_file: a revocation list needs the chain checked" in errors


def test_a_crl_file_without_a_list_is_refused(pki: tuple[PrivateCa, Issued]) -> None:
    ca, _client = pki
    errors = _errors("https://10.0.0.5", f"crl_file: {ca.certificate}\n")
    assert "upstream_tls.crl_file: holds no revocation list" in errors
