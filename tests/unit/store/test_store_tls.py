"""TLS options in the store URLs: libpq's sslmode family for PostgreSQL, redis-py's ssl_* files for Redis.

What the rules must prevent: an option that turns verification off reaching a driver, verification
without a CA, files under a mode that would ignore them, and a URL (with its password) in a message.
"""

from __future__ import annotations

import logging
import ssl
import textwrap
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings
from gateway.settings.store_tls import PgTls, is_loopback, parse_pg_tls, parse_redis_tls, query_of
from gateway.store.db import create_engine
from gateway.store.fast import url as url_module
from gateway.store.fast.url import build_client, parse_redis_url
from gateway.store.pg_tls import split_tls, ssl_argument, warn_unverified
from gateway.store.tls import verification_failure
from tests.support.pki import PrivateCa

PG = "postgresql+asyncpg://gw:s3cret@db.internal:5432/gateway"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa(tmp_path_factory.mktemp("pki"), "db")


def _pg(query: str) -> PgTls:
    return parse_pg_tls(query_of(f"{PG}?{query}"))


def test_the_default_is_libpqs_prefer_and_verifies_nothing() -> None:
    tls = _pg("")
    assert tls == PgTls("prefer")
    assert not tls.verifies


def test_verify_full_checks_chain_and_host() -> None:
    tls = _pg("sslmode=verify-full&sslrootcert=/etc/gw/ca.pem")
    assert (tls.verifies, tls.checks_host, tls.root_cert) == (True, True, "/etc/gw/ca.pem")


def test_require_with_a_root_certificate_verifies_the_chain_as_in_libpq() -> None:
    assert _pg("sslmode=require&sslrootcert=/ca.pem").verifies
    assert not _pg("sslmode=require").verifies


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("sslmode=verify-full", "needs sslrootcert"),
        ("sslmode=verify-ca", "needs sslrootcert"),
        ("sslmode=prefer&sslrootcert=/ca.pem", "may connect without TLS"),
        ("sslmode=disable&sslcert=/c.pem&sslkey=/k.pem", "may connect without TLS"),
        ("sslrootcert=/ca.pem", "may connect without TLS"),  # the default mode is prefer
        ("sslmode=verify-full&sslrootcert=ca.pem", "not an absolute path"),
        ("sslmode=verify-full&sslrootcert=", "is empty"),
        ("sslmode=require&sslcert=/c.pem", "go together"),
        ("sslmode=require&sslrootcert=system", "needs sslmode=verify-full"),
        ("sslmode=strict", "is not one of"),
        ("sslmode=require&sslmode=disable", "given 2 times"),
        ("ssl=false", "unsupported TLS parameter"),  # asyncpg's own spelling would bypass the rules
        ("sslmode=require&sslcrldir=/crls", "unsupported TLS parameter"),
        # A revocation list only means something when the chain is checked.
        ("sslmode=require&sslcrl=/crl.pem", "sslcrl needs a verified chain"),
        ("sslmode=prefer&sslcrl=/crl.pem", "sslcrl needs a verified chain"),
        ("sslmode=verify-full&sslrootcert=/ca.pem&sslcrl=crl.pem", "not an absolute path"),
    ],
)
def test_invalid_pg_options_are_refused(query: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        _pg(query)


def test_a_password_holding_a_question_mark_is_not_read_as_the_query() -> None:
    assert query_of("postgresql://gw:pa?sslmode=disable@db/gw?sslmode=require") == {"sslmode": ["require"]}


def test_split_removes_the_tls_parameters_and_keeps_the_rest() -> None:
    url, tls = split_tls(make_url(f"{PG}?sslmode=require&prepared_statement_cache_size=0"))
    assert tls.mode == "require"
    assert dict(url.query) == {"prepared_statement_cache_size": "0"}


def test_a_bad_option_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(f"{PG}?sslmode=verify-full")
    assert "storage.url: sslmode=verify-full needs sslrootcert" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_contexts_per_mode(ca: PrivateCa) -> None:
    full = ssl_argument(_pg(f"sslmode=verify-full&sslrootcert={ca.certificate}"))
    assert isinstance(full, ssl.SSLContext)
    assert (full.verify_mode, full.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert full.minimum_version == ssl.TLSVersion.TLSv1_2
    # Only the given CA is trusted, not the system's.
    assert [c["subject"] for c in full.get_ca_certs()] == [((("commonName", "db test CA"),),)]
    chain = ssl_argument(_pg(f"sslmode=verify-ca&sslrootcert={ca.certificate}"))
    assert isinstance(chain, ssl.SSLContext)
    assert (chain.verify_mode, chain.check_hostname) == (ssl.CERT_REQUIRED, False)
    encrypt = ssl_argument(_pg("sslmode=require"))
    assert isinstance(encrypt, ssl.SSLContext)
    assert encrypt.verify_mode == ssl.CERT_NONE
    assert ssl_argument(_pg("sslmode=disable")) is False
    assert ssl_argument(_pg("")) == "prefer"


def test_a_client_certificate_is_loaded(ca: PrivateCa) -> None:
    client = ca.issue("gw-client", "gateway", client=True)
    other = ca.issue("other-client", "other", client=True)
    base = f"sslmode=verify-full&sslrootcert={ca.certificate}&sslcert={client.certificate}"
    context = ssl_argument(_pg(f"{base}&sslkey={client.key}"))
    assert isinstance(context, ssl.SSLContext)
    # Loaded, not only named: a key that is not the certificate's is refused when the context is built.
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        ssl_argument(_pg(f"{base}&sslkey={other.key}"))


def test_a_revocation_list_is_loaded_and_required_for_the_leaf(ca: PrivateCa, tmp_path: Path) -> None:
    crl = ca.crl(tmp_path / "db.crl")
    tls = _pg(f"sslmode=verify-full&sslrootcert={ca.certificate}&sslcrl={crl}")
    assert tls.crl == str(crl)
    context = ssl_argument(tls)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert context.cert_store_stats()["crl"] == 1
    # Without sslcrl nothing is required: a CA that publishes no list still works.
    plain = ssl_argument(_pg(f"sslmode=verify-full&sslrootcert={ca.certificate}"))
    assert isinstance(plain, ssl.SSLContext)
    assert not plain.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        ssl_argument(_pg(f"sslmode=verify-full&sslrootcert={ca.certificate}&sslcrl={tmp_path / 'none.crl'}"))


def test_an_unloadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        ssl_argument(_pg(f"sslmode=verify-full&sslrootcert={tmp_path / 'missing.pem'}"))


def test_an_unverified_remote_server_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.store")
    url = make_url("postgresql+asyncpg://gw:s3cret@db-warn.internal/gw")
    warn_unverified(url, PgTls("require"))
    warn_unverified(url, PgTls("require"))
    warn_unverified(make_url("postgresql+asyncpg://gw@127.0.0.1/gw"), PgTls("disable"))
    warn_unverified(make_url("postgresql+asyncpg://gw@db-ok.internal/gw"), PgTls("verify-full", "/ca.pem"))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "db-warn.internal is encrypted but its server is not verified (sslmode=require)" in messages[0]
    assert "s3cret" not in messages[0]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        (None, True),
        ("localhost", True),
        ("127.0.0.5", True),
        ("[::1]", True),
        ("/run/pg", True),
        ("db", False),
        ("10.0.0.1", False),
    ],
)
def test_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- Redis ---------------------------------------------------------------------------------------------


def test_the_redis_revocation_check_is_passed_to_redis_py() -> None:
    for url in (
        "rediss://h/0?ssl_ca_certs=/ca.pem&ssl_include_verify_flags=VERIFY_CRL_CHECK_LEAF",
        "rediss+cluster://n1:7000?ssl_ca_certs=/ca.pem&ssl_include_verify_flags=[VERIFY_CRL_CHECK_LEAF]",
    ):
        target = parse_redis_url(url)
        assert target.tls_files.crl_check, url
        assert url_module._tls_options(target)["ssl_include_verify_flags"] == [ssl.VERIFY_CRL_CHECK_LEAF]
    assert "ssl_include_verify_flags" not in url_module._tls_options(parse_redis_url("rediss://h/0"))


def test_check_config_wants_the_list_in_the_bundle(ca: PrivateCa, tmp_path: Path) -> None:
    flag = "ssl_include_verify_flags=VERIFY_CRL_CHECK_LEAF"
    errors = _errors(state=f"state: {{redis_url: 'rediss://r:6380?ssl_ca_certs={ca.certificate}&{flag}'}}\n")
    assert f"ssl_ca_certs: {ca.certificate} holds no revocation list" in errors
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.certificate.read_bytes() + ca.crl(tmp_path / "db.crl").read_bytes())
    settings = parse_settings(
        f"public_url: https://auth.example.com\nstate: {{redis_url: 'rediss://r:6380?ssl_ca_certs={bundle}&{flag}'}}\n"
    )
    assert settings.state.redis_url is not None


def test_redis_tls_files_on_every_form() -> None:
    for url in (
        "rediss://:pw@redis.internal:6380/0?ssl_ca_certs=/ca.pem",
        "rediss+sentinel://s1,s2/main?ssl_ca_certs=/ca.pem&sentinel_password=x",
        "rediss+cluster://n1:7000,n2:7000?ssl_ca_certs=/ca.pem",
    ):
        assert parse_redis_url(url).tls_files.ca_file == "/ca.pem", url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rediss://h?ssl_cert_reqs=none", "unsupported TLS option"),
        ("rediss://h?ssl_check_hostname=false", "unsupported TLS option"),
        ("rediss+cluster://h?ssl_cert_reqs=none", "unsupported TLS option"),
        ("redis://h?ssl_ca_certs=/ca.pem", "need a rediss:// URL"),
        ("rediss://h?ssl_ca_certs=ca.pem", "not an absolute path"),
        ("rediss://h?ssl_certfile=/c.pem", "go together"),
        ("rediss://:hunter2@h?ssl_cert_reqs=none", "unsupported"),
        # Only the flag that tightens verification; the ones that loosen it are refused.
        (
            "rediss://h?ssl_ca_certs=/ca.pem&ssl_include_verify_flags=VERIFY_X509_PARTIAL_CHAIN",
            "takes VERIFY_CRL",
        ),
        ("rediss://h?ssl_ca_certs=/ca.pem&ssl_exclude_verify_flags=VERIFY_X509_STRICT", "unsupported"),
        ("rediss://h?ssl_include_verify_flags=VERIFY_CRL_CHECK_LEAF", "needs ssl_ca_certs"),
        ("redis://h?ssl_include_verify_flags=VERIFY_CRL_CHECK_LEAF", "need a rediss:// URL"),
    ],
)
def test_invalid_redis_tls_options_are_refused(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        parse_redis_url(url)
    assert "hunter2" not in str(info.value)


def test_parse_redis_tls_directly() -> None:
    assert parse_redis_tls({}, tls=False).ca_file is None


async def test_a_rediss_client_verifies_certificate_and_host_name(ca: PrivateCa) -> None:
    for url in (
        f"rediss://h:6380?ssl_ca_certs={ca.certificate}",
        f"rediss+cluster://h:7000?ssl_ca_certs={ca.certificate}",
    ):
        client, _ = build_client(parse_redis_url(url))
        kwargs = (
            client.connection_pool.connection_kwargs
            if hasattr(client, "connection_pool")
            else client.nodes_manager.connection_kwargs
        )
        assert kwargs["ssl_cert_reqs"] == "required"
        assert kwargs["ssl_check_hostname"] is True
        assert kwargs["ssl_ca_certs"] == str(ca.certificate)
        await client.aclose()


def test_plain_redis_to_a_remote_host_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.store")
    build_client(parse_redis_url("redis://:hunter2@redis-warn.internal:6379/0"))
    build_client(parse_redis_url("redis://127.0.0.1:6379/0"))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "Redis at redis-warn.internal is not encrypted" in messages[0]
    assert "hunter2" not in messages[0]


def test_verification_failure_is_found_through_wrappers() -> None:
    inner = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    inner.verify_message = "unable to get local issuer certificate"
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    assert verification_failure(outer) == "unable to get local issuer certificate"
    assert verification_failure(ConnectionRefusedError("refused")) is None
    text = RuntimeError("Error 1 connecting: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: x")
    assert verification_failure(text) == "certificate verify failed: x"


# -- check-config --------------------------------------------------------------------------------------


def _errors(storage: str = "", state: str = "") -> str:
    text = "public_url: https://auth.example.com\n" + textwrap.dedent(storage) + textwrap.dedent(state)
    with pytest.raises(ConfigError) as info:
        parse_settings(text)
    return str(info.value)


def test_check_config_names_the_option_and_never_the_password(tmp_path: Path) -> None:
    errors = _errors(storage=f"storage: {{url: '{PG}?sslmode=verify-full'}}\n")
    assert "storage.url: sslmode=verify-full needs sslrootcert" in errors
    assert "s3cret" not in errors
    missing = tmp_path / "nope.pem"
    errors = _errors(storage=f"storage: {{url: '{PG}?sslmode=verify-full&sslrootcert={missing}'}}\n")
    assert f"sslrootcert: file not found: {missing}" in errors
    errors = _errors(state="state: {redis_url: 'rediss://:hunter2@r:6380?ssl_check_hostname=false'}\n")
    assert "state.redis_url" in errors
    assert "unsupported TLS option" in errors
    assert "hunter2" not in errors


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
def test_every_scheme_the_store_opens_loads_and_has_its_tls_checked(scheme: str) -> None:
    """The check accepts the libpq spellings the store opens, and checks their TLS options too."""
    url = f"{scheme}://gw:s3cret@db.internal:5432/gateway"
    assert (
        parse_settings(f"public_url: https://auth.example.com\nstorage: {{url: '{url}'}}\n").storage.url
        == url
    )
    assert "sslmode=verify-full needs sslrootcert" in _errors(
        storage=f"storage: {{url: '{url}?sslmode=verify-full'}}\n"
    )


def test_check_config_accepts_readable_files(ca: PrivateCa) -> None:
    settings = parse_settings(
        "public_url: https://auth.example.com\n"
        f"storage: {{url: '{PG}?sslmode=verify-full&sslrootcert={ca.certificate}'}}\n"
        f"state: {{redis_url: 'rediss://r:6380?ssl_ca_certs={ca.certificate}'}}\n"
    )
    assert settings.storage.url is not None


@pytest.mark.parametrize("scheme", ["rediss+sentinel", "rediss+cluster"])
def test_check_config_accepts_sentinel_and_cluster_over_tls(ca: PrivateCa, scheme: str) -> None:
    # The store opens these (README: "also rediss+sentinel://, rediss+cluster://"); the check must not refuse them.
    url = f"{scheme}://s1:26379,s2:26379/main?ssl_ca_certs={ca.certificate}"
    settings = parse_settings(f"public_url: https://auth.example.com\nstate: {{redis_url: '{url}'}}\n")
    assert settings.state.redis_url == url
