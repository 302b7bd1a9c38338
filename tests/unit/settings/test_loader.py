"""The config loader: every error names its line and key path; secrets never leak into a message."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import msgspec
import pytest

from gateway.errors import ConfigError
from gateway.settings import (
    ActiveHealthCheck,
    ByteSize,
    Duration,
    IdentityProvider,
    Limits,
    MfaPolicy,
    PassiveHealthCheck,
    Route,
    ServerSettings,
    SessionSettings,
    Settings,
    StateSettings,
    StorageSettings,
    Timeouts,
    TlsSettings,
    load_settings,
    parse_settings,
)
from gateway.settings.paths import resolve_paths
from gateway.settings.units import parse_byte_size, parse_duration
from gateway.settings.walker import _split_validation_error

EXAMPLE = Path(__file__).parents[3] / "examples" / "gateway.example.yaml"
SECRET = "s3cr3t-Value-never-shown"

# Lines 1-5; a case's own lines start at line 6.
ROUTE = """\
public_url: https://auth.example.com
routes:
  - name: wiki
    host: wiki.example.com
    upstreams: [http://10.0.0.5:8080]
"""


def errors_of(text: str, **kwargs: object) -> str:
    """The full error report for ``text``, which must be invalid."""
    with pytest.raises(ConfigError) as info:
        parse_settings(textwrap.dedent(text), **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def assert_error(report: str, line: int, path: str, fragment: str) -> None:
    """One line of ``report`` is at ``line``, names ``path`` and contains ``fragment``."""
    prefix = f"<config>:{line}: {path}: " if path else f"<config>:{line}: "
    matching = [entry for entry in report.splitlines() if entry.startswith(prefix) and fragment in entry]
    assert matching, f"no line starting {prefix!r} containing {fragment!r} in:\n{report}"


# --------------------------------------------------------------------------------------------------
# Loading valid files
# --------------------------------------------------------------------------------------------------

DESIGN_EXAMPLE = """\
listen: 127.0.0.1:8080
public_url: https://auth.example.com     # the auth host: login, OIDC callbacks, portal
data_dir: /var/lib/gateway
storage: {url: "sqlite+aiosqlite:////var/lib/gateway/gateway.db"}
state: {redis_url: null}
trusted_proxies: [10.0.0.0/8]
tls: {certificate: tls/cert.pem, key: tls/key.pem, min_version: "1.3"}
session: {idle_timeout: 30m, lifetime: 12h}
identity_providers:
  - {name: corp, issuer: "https://idp.example.com", client_id: gateway,
     client_secret: "${env:CORP_SECRET}", groups_claim: groups}
routes:
  - name: wiki
    host: wiki.example.com
    path: /
    upstreams: [http://10.0.0.5:8080]
    mfa: required                         # none | required | webauthn
    public_paths: [/static/*]
  - name: finance-admin
    host: finance.example.com
    path: /admin
    upstreams: [http://10.0.0.7:8000, http://10.0.0.8:8000]
    mfa: {require: webauthn, max_age: 15m}
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A directory holding the design example (the README's config shape) as gateway.yaml, with its TLS files."""
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("cert")
    (tmp_path / "tls" / "key.pem").write_text("key")
    (tmp_path / "gateway.yaml").write_text(DESIGN_EXAMPLE)
    return tmp_path


def test_design_example_loads_to_the_expected_settings(config_dir: Path) -> None:
    settings = load_settings(config_dir / "gateway.yaml", environ={"CORP_SECRET": SECRET})

    assert settings == Settings(
        listen="127.0.0.1:8080",
        public_url="https://auth.example.com",
        data_dir="/var/lib/gateway",
        storage=StorageSettings(url="sqlite+aiosqlite:////var/lib/gateway/gateway.db"),
        state=StateSettings(redis_url=None),
        trusted_proxies=("10.0.0.0/8",),
        tls=TlsSettings(
            certificate=str(config_dir / "tls" / "cert.pem"),
            key=str(config_dir / "tls" / "key.pem"),
            min_version="1.3",
        ),
        session=SessionSettings(idle_timeout=Duration(1800), lifetime=Duration(43200)),
        server=ServerSettings(),
        limits=Limits(),
        identity_providers=(
            IdentityProvider(
                name="corp",
                issuer="https://idp.example.com",
                client_id="gateway",
                client_secret=SECRET,
                groups_claim="groups",
            ),
        ),
        routes=(
            Route(
                name="wiki",
                host="wiki.example.com",
                path="/",
                upstreams=("http://10.0.0.5:8080",),
                mfa="required",
                public_paths=("/static/*",),
            ),
            Route(
                name="finance-admin",
                host="finance.example.com",
                path="/admin",
                upstreams=("http://10.0.0.7:8000", "http://10.0.0.8:8000"),
                mfa=MfaPolicy(require="webauthn", max_age=Duration(900)),
            ),
        ),
    )
    assert type(settings.session.idle_timeout) is Duration
    assert settings.routes[1].mfa_policy == MfaPolicy(require="webauthn", max_age=Duration(900))
    assert settings.routes[0].mfa_policy == MfaPolicy(require="required")


def test_shipped_example_loads() -> None:
    settings = load_settings(EXAMPLE, environ={"CORP_SECRET": SECRET})

    assert [route.name for route in settings.routes] == ["wiki", "finance-admin"]
    assert [idp.name for idp in settings.identity_providers] == ["corp"]
    assert settings.identity_providers[0].client_secret == SECRET
    assert settings.data_dir == str(EXAMPLE.parent / "gateway-data")
    finance = settings.routes[1]
    assert finance.max_body_size == ByteSize(10 * 2**20)
    assert finance.timeouts == Timeouts(connect=Duration(2), response=Duration(30))
    assert finance.health_check == ActiveHealthCheck(
        path="/healthz", interval=Duration(10), timeout=Duration(2), expected_status=(200, 299)
    )
    assert finance.passive_health_check == PassiveHealthCheck()
    assert settings.limits.max_header_bytes == 32 * 1024


def test_minimal_config_uses_the_defaults(tmp_path: Path) -> None:
    settings = parse_settings("public_url: https://auth.example.com\n", base_dir=tmp_path)

    assert settings == Settings(
        public_url="https://auth.example.com", data_dir=str(tmp_path / "gateway-data")
    )


def test_plain_scalars_are_taken_as_written_where_a_string_is_expected() -> None:
    # YAML 1.1 would read these as a float, an octal int and a boolean; the operator meant the text.
    settings = parse_settings(
        ROUTE
        + "    request_headers: {X-Flag: yes}\n"
        + "identity_providers: [{name: corp, issuer: 'https://idp.example.com', client_id: 0123}]\n"
        + "tls: null\n"
    )

    assert settings.routes[0].request_headers == {"X-Flag": "yes"}
    assert settings.identity_providers[0].client_id == "0123"


def test_unquoted_tls_version_is_read_as_text(config_dir: Path) -> None:
    text = DESIGN_EXAMPLE.replace('min_version: "1.3"', "min_version: 1.2")
    settings = parse_settings(text, base_dir=config_dir, environ={"CORP_SECRET": "x"})

    assert settings.tls is not None
    assert settings.tls.min_version == "1.2"


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory_from_any_cwd(
    config_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = DESIGN_EXAMPLE.replace("data_dir: /var/lib/gateway", "data_dir: ./data/../state").replace(
        "sqlite+aiosqlite:////var/lib/gateway/gateway.db", "sqlite+aiosqlite:///db/gateway.db?timeout=5"
    )
    (config_dir / "gateway.yaml").write_text(text)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))

    settings = load_settings(config_dir / "gateway.yaml", environ={"CORP_SECRET": "x"})

    assert settings.data_dir == str(config_dir / "state")
    assert settings.storage.url == f"sqlite+aiosqlite:///{config_dir}/db/gateway.db?timeout=5"
    assert settings.tls is not None
    assert settings.tls.certificate == str(config_dir / "tls" / "cert.pem")


def test_a_relative_config_path_is_resolved_too(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(config_dir.parent)

    settings = load_settings(Path(config_dir.name) / "gateway.yaml", environ={"CORP_SECRET": "x"})

    assert settings.tls is not None
    assert os.path.isabs(settings.tls.key)
    assert settings.tls.key == str(config_dir / "tls" / "key.pem")


def test_every_file_and_directory_setting_resolves_against_the_config_directory(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: "Relative paths are resolved against the config file's directory" (every process reads
    # the same file, whatever its working directory).
    (tmp_path / "ca.pem").write_text("ca")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    text = (
        "public_url: https://auth.example.com\n"
        "tracing: {ca_file: ca.pem}\n"
        "notify: {smtp: {host: smtp.example.com, sender: gw@example.com, ca_file: ./ca.pem}}\n"
        "backup: {directory: backups, targets: [copies/one, 'rclone:offsite:gateway']}\n"
    )

    settings = parse_settings(text, base_dir=tmp_path)

    assert settings.tracing.ca_file == str(tmp_path / "ca.pem")
    assert settings.notify.smtp is not None
    assert settings.notify.smtp.ca_file == str(tmp_path / "ca.pem")
    assert settings.backup.directory == str(tmp_path / "backups")
    assert settings.backup.targets == (str(tmp_path / "copies" / "one"), "rclone:offsite:gateway")
    assert resolve_paths(settings, Path("/somewhere/else")) == settings


def test_a_blank_path_is_left_for_its_check_to_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backup\.directory: must not be empty"):
        parse_settings("public_url: https://auth.example.com\nbackup: {directory: '  '}\n", base_dir=tmp_path)


def test_path_resolution_is_idempotent(config_dir: Path) -> None:
    settings = load_settings(config_dir / "gateway.yaml", environ={"CORP_SECRET": "x"})

    assert resolve_paths(settings, config_dir) == settings
    assert resolve_paths(settings, Path("/somewhere/else")) == settings
    relative = msgspec.structs.replace(settings, data_dir="data")
    once = resolve_paths(relative, config_dir)
    assert once.data_dir == str(config_dir / "data")
    assert resolve_paths(once, config_dir) == once


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:///gateway.db", "sqlite+aiosqlite:///{base}/gateway.db"),
        ("sqlite+aiosqlite:////abs/gateway.db", "sqlite+aiosqlite:////abs/gateway.db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("postgresql+asyncpg://u@db/gateway", "postgresql+asyncpg://u@db/gateway"),
    ],
)
def test_sqlite_urls_become_absolute(url: str, expected: str, tmp_path: Path) -> None:
    settings = parse_settings(
        f"public_url: https://a.example.com\nstorage: {{url: '{url}'}}\n", base_dir=tmp_path
    )

    assert settings.storage.url == expected.format(base=tmp_path)


# --------------------------------------------------------------------------------------------------
# Durations and sizes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("15m", 900.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    parsed = parse_duration(value)

    assert type(parsed) is Duration
    assert parsed == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "30",
        "30 s",
        "1m1h",
        "1h1h",
        "30sec",
        "-5s",
        "5x",
        "s",
        "1.s",
        True,
        None,
        [1],
        float("inf"),
        float("nan"),
        "1\u0661h",  # an Arabic-Indic digit: read as 11 hours before (a fuzzing run)
        "\u0661d",
        "36501d",  # past 100 years
        10**30,
        "99999999999999999999d",
    ],
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        (2048.0, 2048),
        ("10B", 10),
        ("64KiB", 65536),
        ("10MiB", 10 * 2**20),
        ("1GiB", 2**30),
        ("2TiB", 2 * 2**40),
        ("10kB", 10_000),
        ("5MB", 5_000_000),
        ("3GB", 3 * 10**9),
        ("1 MiB", 2**20),
    ],
)
def test_parse_byte_size(value: object, size: int) -> None:
    parsed = parse_byte_size(value)

    assert type(parsed) is ByteSize
    assert parsed == size


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1024",
        "1.5GiB",
        "10mb",
        "10KB",
        "10Kib",
        "-1KiB",
        "GiB",
        1.5,
        False,
        None,
        "\u0661MiB",
        10**30,
        "2000TiB",
    ],
)
def test_parse_byte_size_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_byte_size(value)


# --------------------------------------------------------------------------------------------------
# Structural errors: type, unknown key, missing key
# --------------------------------------------------------------------------------------------------

STRUCTURE_CASES = [
    pytest.param(
        ROUTE + "    mfa: sometimes\n",
        6,
        "routes[0] (name: wiki).mfa",
        'expected one of none, required, webauthn or a mapping {require, max_age}; got "sometimes"',
        id="mfa-word",
    ),
    pytest.param(
        ROUTE + "    mfa: {require: always}\n",
        6,
        "routes[0] (name: wiki).mfa.require",
        'expected one of none, required, webauthn; got "always"',
        id="mfa-mapping-inner",
    ),
    pytest.param(
        ROUTE + "    mfa:\n",
        6,
        "routes[0] (name: wiki).mfa",
        "got null",
        id="mfa-empty",
    ),
    pytest.param(
        ROUTE + "    upsteams: [http://x]\n",
        6,
        "routes[0] (name: wiki)",
        'unknown key "upsteams"; did you mean "upstreams"?',
        id="unknown-key-suggestion",
    ),
    pytest.param(
        "public_url: https://a.example.com\nlisen: 1.2.3.4:80\n",
        2,
        "",
        'unknown key "lisen"; did you mean "listen"?',
        id="unknown-top-level-key",
    ),
    pytest.param(
        "public_url: https://a.example.com\nzzz: 1\n",
        2,
        "",
        'unknown key "zzz"; valid keys here: public_url, listen',
        id="unknown-key-no-suggestion",
    ),
    pytest.param(
        "public_url: https://a.example.com\nroutes:\n  - name: wiki\n    host: w.example.com\n",
        3,
        "routes[0] (name: wiki)",
        'missing required key "upstreams" (a list of strings)',
        id="missing-key-in-list-item",
    ),
    pytest.param("listen: 1.2.3.4:80\n", 1, "", 'missing required key "public_url"', id="missing-top-level"),
    pytest.param(
        "public_url: https://a.example.com\ntls:\n  certificate: a.pem\n",
        2,
        "tls",
        'missing required key "key" (a string)',
        id="missing-key-in-mapping",
    ),
    pytest.param("public_url: [a]\n", 1, "public_url", "expected a string; got a list", id="string-got-list"),
    pytest.param("public_url:\n", 1, "public_url", "expected a string; got null", id="string-got-null"),
    pytest.param(
        "public_url: https://a.example.com\nserver: {workers: two}\n",
        2,
        "server.workers",
        'expected a whole number; got "two"',
        id="int-got-string",
    ),
    pytest.param(
        "public_url: https://a.example.com\nserver: {workers: 2.5}\n",
        2,
        "server.workers",
        "expected a whole number; got 2.5",
        id="int-got-float",
    ),
    pytest.param(
        "public_url: https://a.example.com\nserver: {workers: true}\n",
        2,
        "server.workers",
        "expected a whole number; got true",
        id="int-got-bool",
    ),
    pytest.param(
        "public_url: https://a.example.com\nstorage: {echo: maybe}\n",
        2,
        "storage.echo",
        'expected true or false; got "maybe"',
        id="bool-got-string",
    ),
    pytest.param(
        "public_url: https://a.example.com\nserver:\n  workers: 1000000000000000000000000000000\n",
        3,
        "server.workers",
        "expected a whole number up to 2147483647; got 1000000000000000000000000000000",
        id="int-past-32-bits",
    ),
    pytest.param(
        "public_url: https://a.example.com\nprivacy:\n  retention: {registration: 99999999999999999999d}\n",
        3,
        "privacy.retention.registration",
        'expected a duration of at most 100 years (36500d); got "99999999999999999999d"',
        id="duration-past-100-years",
    ),
    pytest.param(
        "public_url: https://a.example.com\nthreat:\n  impossible_travel: {max_speed_kmh: .nan}\n",
        3,
        "threat.impossible_travel.max_speed_kmh",
        "expected a finite number; got",
        id="float-not-finite",
    ),
    pytest.param(
        "public_url: https://a.example.com\nsession:\n  idle_timeout: 30 minutes\n",
        3,
        "session.idle_timeout",
        'expected a duration such as 500ms, 30s, 15m, 12h, 7d, 1h30m or a number of seconds; got "30 minutes"',
        id="duration",
    ),
    pytest.param(
        "public_url: https://a.example.com\nlimits:\n  max_body_size: 10XB\n",
        3,
        "limits.max_body_size",
        'expected a size such as 64KiB, 10MiB, 1GiB, 10kB, 5MB or a number of bytes; got "10XB"',
        id="byte-size",
    ),
    pytest.param(
        ROUTE + "    max_body_size: lots\n",
        6,
        "routes[0] (name: wiki).max_body_size",
        'expected a size such as 64KiB, 10MiB, 1GiB, 10kB, 5MB or a number of bytes; got "lots"',
        id="optional-byte-size",
    ),
    pytest.param(
        "public_url: https://a.example.com\nsession: 30m\n",
        2,
        "session",
        'expected a mapping {idle_timeout, lifetime, cookie_name, insecure_cookies}; got "30m"',
        id="mapping-got-scalar",
    ),
    pytest.param(
        "public_url: https://a.example.com\nroutes: {name: wiki}\n",
        2,
        "routes",
        "expected a list of mappings; got a mapping",
        id="list-got-mapping",
    ),
    pytest.param(
        "public_url: https://a.example.com\ntrusted_proxies: 10.0.0.0/8\n",
        2,
        "trusted_proxies",
        'expected a list of strings; got "10.0.0.0/8"',
        id="list-got-string",
    ),
    pytest.param(
        ROUTE + "    upstreams: [http://a, 8080]\n",
        6,
        "routes[0] (name: wiki)",
        'duplicate key "upstreams" (first at line 5)',
        id="duplicate-key-is-refused-not-checked",
    ),
    pytest.param(
        ROUTE.replace("upstreams: [http://10.0.0.5:8080]", "upstreams:\n      - http://a\n      - [b]"),
        7,
        "routes[0] (name: wiki).upstreams[1]",
        "expected a string; got a list",
        id="list-item",
    ),
    pytest.param(
        ROUTE + "    health_check: {expected_status: [200, 299, 399]}\n",
        6,
        "routes[0] (name: wiki).health_check.expected_status",
        "expected a list of 2 whole numbers; got a list of 3",
        id="fixed-tuple",
    ),
    pytest.param(
        ROUTE + "    health_check: {timeout: 1s, interval: often}\n",
        6,
        "routes[0] (name: wiki).health_check.interval",
        'got "often"',
        id="optional-struct-inner",
    ),
    pytest.param(
        ROUTE + "    request_headers: {X-Team: [a, b]}\n",
        6,
        "routes[0] (name: wiki).request_headers.X-Team",
        "expected a string; got a list",
        id="dict-value",
    ),
    pytest.param(
        ROUTE + "    balance: random\n",
        6,
        "routes[0] (name: wiki).balance",
        'expected one of round_robin, least_outstanding; got "random"',
        id="literal",
    ),
    pytest.param(
        "public_url: https://a.example.com\nroutes:\n  - name: Finance Team\n    host: [x]\n    upstreams: [http://a]\n",
        4,
        'routes[0] (name: "Finance Team").host',
        "expected a string; got a list",
        id="odd-name-quoted-in-path",
    ),
]


@pytest.mark.parametrize(("text", "line", "path", "fragment"), STRUCTURE_CASES)
def test_structural_errors_name_line_and_key_path(text: str, line: int, path: str, fragment: str) -> None:
    assert_error(errors_of(text), line, path, fragment)


def test_every_structural_error_is_reported_sorted_by_line() -> None:
    report = errors_of(
        """\
        routes:
          - name: wiki
            host: wiki.example.com
            upstreams: [http://a]
            mfa: sometimes
          - name: docs
            hots: docs.example.com
            upstreams: http://b
        session: {lifetime: forever}
        """
    )

    lines = report.splitlines()
    assert len(lines) == 6, report
    assert [int(entry.split(":")[1]) for entry in lines] == [1, 5, 6, 7, 8, 9]
    assert lines[0] == '<config>:1: missing required key "public_url" (a string)'
    assert lines[2] == '<config>:6: routes[1] (name: docs): missing required key "host" (a string)'
    assert lines[3] == '<config>:7: routes[1] (name: docs): unknown key "hots"; did you mean "host"?'


# --------------------------------------------------------------------------------------------------
# YAML-level refusals
# --------------------------------------------------------------------------------------------------

YAML_CASES = [
    pytest.param(
        "public_url: https://a.example.com\nlisten: 1.2.3.4:80\nlisten: 0.0.0.0:80\n",
        3,
        "",
        'duplicate key "listen" (first at line 2)',
        id="duplicate-top-level",
    ),
    pytest.param(
        ROUTE + "    mfa: none\n    mfa: required\n",
        7,
        "routes[0] (name: wiki)",
        'duplicate key "mfa" (first at line 6)',
        id="duplicate-nested",
    ),
    pytest.param(
        "public_url: !!binary aGVsbG8=\n",
        1,
        "public_url",
        "YAML tag !!binary is not allowed",
        id="tag-binary",
    ),
    pytest.param(
        "public_url: https://a.example.com\nroutes: !!set {a, b}\n",
        2,
        "routes",
        "YAML tag !!set is not allowed",
        id="tag-set",
    ),
    pytest.param(
        "public_url: https://a.example.com\nroutes: !!omap [{a: 1}]\n",
        2,
        "routes",
        "YAML tag !!omap is not allowed",
        id="tag-omap",
    ),
    pytest.param(
        "public_url: !!python/object:os.system x\n",
        1,
        "public_url",
        "YAML tag !!python/object:os.system is not allowed",
        id="tag-python",
    ),
    pytest.param(
        "public_url: !custom x\n", 1, "public_url", "YAML tag !custom is not allowed", id="tag-local"
    ),
    pytest.param(
        "public_url: https://a.example.com\nsession:\n  <<: {lifetime: 1h}\n",
        3,
        "session",
        "merge keys (<<) are not allowed",
        id="merge-key",
    ),
    pytest.param(
        "public_url: https://a.example.com\n? [a, b]\n: c\n",
        2,
        "",
        "keys must be plain words",
        id="complex-key",
    ),
]


@pytest.mark.parametrize(("text", "line", "path", "fragment"), YAML_CASES)
def test_yaml_refusals_name_line_and_key_path(text: str, line: int, path: str, fragment: str) -> None:
    assert_error(errors_of(text), line, path, fragment)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "base: &b {lifetime: 1h}\nsession: *b\n",
            "<config>:2: aliases (*name) are not allowed; repeat the value instead",
            id="alias",
        ),
        pytest.param(
            'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n',
            "<config>:2: aliases (*name) are not allowed; repeat the value instead",
            id="alias-bomb",
        ),
        pytest.param("", "<config>: the file is empty; it needs at least public_url", id="empty"),
        pytest.param("# only a comment\n\n", "<config>: the file is empty", id="only-comments"),
        pytest.param(
            "- public_url: x\n",
            "<config>:1: the top level must be a mapping of keys such as listen, public_url and routes; got a list",
            id="top-level-list",
        ),
        pytest.param("just text\n", "<config>:1: the top level must be a mapping", id="top-level-scalar"),
        pytest.param(
            "a: b: c\n", "<config>:1: invalid YAML: mapping values are not allowed here", id="bad-yaml"
        ),
        pytest.param("a: [1, 2\n", "<config>:2: invalid YAML: ", id="unclosed-flow"),
        pytest.param("a: 1\n---\nb: 2\n", "<config>:2: invalid YAML: ", id="two-documents"),
        pytest.param("a: \x00\n", "<config>: invalid YAML: ", id="control-character"),
        pytest.param(
            "a: " + "[" * 5000 + "]" * 5000, "<config>: invalid YAML: nested too deeply", id="deep-nesting"
        ),
        pytest.param("a: " + "[" * 40 + "]" * 40, "<config>:1: a", id="nesting-beyond-any-key"),
    ],
)
def test_unusable_documents_get_one_clear_error(text: str, expected: str) -> None:
    report = errors_of(text)

    assert report.startswith(expected), report
    assert "Traceback" not in report


def test_yaml_syntax_errors_do_not_echo_the_line() -> None:
    # The snippet PyYAML would print could contain an inline credential.
    report = errors_of(f"public_url: https://a.example.com\nstorage: {{url: {SECRET}: x}}\n")

    assert SECRET not in report


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"^/nonexistent/gateway\.yaml: no such file;"):
        load_settings("/nonexistent/gateway.yaml")


def test_a_config_that_is_a_pipe_a_device_or_too_large_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")  # no writer: reading it would wait for ever
    (tmp_path / "huge.yaml").write_bytes(b"#" * (16 * 2**20 + 1))
    for path, message in (
        (tmp_path / "fifo.yaml", "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path / "huge.yaml", "larger than 16 MiB"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(path)


def test_a_long_bad_value_is_shortened_in_every_message() -> None:
    # A 100 KB value made a 100 KB error line, and 50 MB one 50 MB (a fuzzing run).
    for text in ("listen: " + "x" * 100_000 + "\n", "public_url: " + "h" * 100_000 + "\n"):
        with pytest.raises(ConfigError) as caught:
            parse_settings("public_url: https://auth.example.com\n" + text)
        assert max(len(line) for line in str(caught.value).splitlines()) < 600


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_settings(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("public_url: https://a.example.com\n")
    config.chmod(0)

    with pytest.raises(ConfigError, match="permission denied"):
        load_settings(config)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_bytes(b"public_url: \xff\xfe\n")

    with pytest.raises(ConfigError, match=r"gateway\.yaml: not UTF-8 text"):
        load_settings(config)


def test_empty_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("")

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(config))}: the file is empty"):
        load_settings(config)


def test_errors_start_with_the_path_as_given(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("public_url: https://a.example.com\nlisten: nowhere\n")

    with pytest.raises(ConfigError) as info:
        load_settings(str(config))

    assert str(info.value).startswith(f"{config}:2: listen: ")


# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------

IDP = """\
public_url: https://auth.example.com
identity_providers:
  - name: corp
    issuer: https://idp.example.com
    client_id: gateway
    client_secret: {value}
"""


def idp_secret(value: str, **kwargs: object) -> str | None:
    settings = parse_settings(IDP.format(value=value), **kwargs)  # type: ignore[arg-type]
    return settings.identity_providers[0].client_secret


def test_secret_from_environment() -> None:
    assert idp_secret("${env:CORP_SECRET}", environ={"CORP_SECRET": SECRET}) == SECRET


def test_secret_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_CORP_SECRET", SECRET)

    assert idp_secret("${env:GATEWAY_TEST_CORP_SECRET}") == SECRET


def test_secret_inside_a_longer_string() -> None:
    value = idp_secret('"pre-${env:A}-mid-${env:B}-post"', environ={"A": "1", "B": "2"})

    assert value == "pre-1-mid-2-post"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{SECRET}\n", SECRET),
        (f"{SECRET}\r\n", SECRET),
        (SECRET, SECRET),
        (f"{SECRET}\n\n", f"{SECRET}\n"),
        (f"  {SECRET}  \n", f"  {SECRET}  "),
    ],
)
def test_secret_from_a_relative_file(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "corp").write_bytes(content.encode())

    assert idp_secret("${file:secrets/corp}", base_dir=tmp_path) == expected


def test_secret_file_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "corp.secret").write_text(SECRET + "\n")
    (tmp_path / "gateway.yaml").write_text(IDP.format(value="${file:corp.secret}"))
    monkeypatch.chdir("/")

    settings = load_settings(tmp_path / "gateway.yaml")

    assert settings.identity_providers[0].client_secret == SECRET


def test_secret_from_an_absolute_file(tmp_path: Path) -> None:
    (tmp_path / "corp").write_text(SECRET)

    assert idp_secret(f"${{file:{tmp_path / 'corp'}}}", base_dir=Path("/")) == SECRET


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('"$${env:X}"', "${env:X}"),
        ('"a$${b}c"', "a${b}c"),
        ('"$$${env:X}"', "$${env:X}"),
        ('"cost: $5"', "cost: $5"),
        ('"$$"', "$$"),
        ('"$${env:X} and ${env:X}"', "${env:X} and 1"),
    ],
)
def test_dollar_dollar_brace_escapes_a_literal(written: str, expected: str) -> None:
    assert idp_secret(written, environ={"X": "1"}) == expected


SECRET_ERROR_CASES = [
    pytest.param(
        "${env:CORP_SECRET}",
        "environment variable CORP_SECRET is not set; set it or change the reference",
        id="env-missing",
    ),
    pytest.param("${env:1BAD}", "${env:1BAD} is not a valid environment variable name", id="env-bad-name"),
    pytest.param(
        "${file:missing.txt}", "cannot read secret file {base}/missing.txt (No such file", id="file-missing"
    ),
    pytest.param("${file:.}", "cannot read secret file {base} (Is a directory)", id="file-is-directory"),
    pytest.param("${file:binary}", "secret file {base}/binary is not UTF-8 text", id="file-not-utf8"),
    # Read, these would block for ever (a FIFO with no writer) or without end (a fuzzing run: 5.5 GB).
    pytest.param("${file:fifo}", "secret file {base}/fifo is not a regular file", id="file-fifo"),
    pytest.param("${file:/dev/zero}", "secret file /dev/zero is not a regular file", id="file-device"),
    pytest.param("${file:huge}", "secret file {base}/huge is larger than 1 MiB", id="file-too-large"),
    pytest.param("${file:}", "${file:} needs a path", id="file-empty"),
    pytest.param(
        "${vault:corp}", "holds an unknown reference ${…}; use ${env:NAME} or ${file:PATH}", id="unknown"
    ),
    pytest.param("${ENV:X}", "holds an unknown reference ${…}", id="wrong-case"),
    pytest.param('"${env:X"', "unterminated ${ in a string; write $${ for a literal ${", id="unterminated"),
]


@pytest.mark.parametrize(("value", "fragment"), SECRET_ERROR_CASES)
def test_secret_errors_name_line_and_key_path(tmp_path: Path, value: str, fragment: str) -> None:
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "huge").write_bytes(b"x" * (2**20 + 1))

    report = errors_of(IDP.format(value=value), base_dir=tmp_path, environ={"X": SECRET})

    assert_error(
        report,
        6,
        "identity_providers[0] (name: corp).client_secret",
        fragment.replace("{base}", str(tmp_path)),
    )
    assert SECRET not in report


def test_an_unknown_reference_is_not_quoted_it_may_be_the_rest_of_a_secret() -> None:
    """Outside review: a literal password with "${" in it had its tail printed in the error."""
    report = errors_of(IDP.format(value='"Tr0ub4dor${S3cr3tTail}"'))
    assert "unknown reference" in report
    assert "S3cr3tTail" not in report
    assert "Tr0ub4dor" not in report


def test_all_failed_references_are_reported() -> None:
    report = errors_of(IDP.format(value='"${env:A}:${env:B}"') + "listen: ${env:C}\n", environ={})

    assert report.count("is not set") == 3, report


LEAK_CASES = [
    pytest.param("public_url: ${env:S}\n", "public_url", id="public-url-semantic"),
    pytest.param("public_url: https://a.example.com\nlisten: ${env:S}\n", "listen", id="listen"),
    pytest.param(
        "public_url: https://a.example.com\nserver: {workers: '${env:S}'}\n", "server.workers", id="type"
    ),
    pytest.param(
        "public_url: https://a.example.com\ntls: {min_version: '${env:S}', certificate: a, key: b}\n",
        "tls.min_version",
        id="literal",
    ),
    pytest.param(
        "public_url: https://a.example.com\nsession: {lifetime: '${env:S}'}\n", "session.lifetime", id="dur"
    ),
    pytest.param(
        "public_url: https://a.example.com\ntrusted_proxies: ['${env:S}']\n", "trusted_proxies[0]", id="ip"
    ),
    pytest.param(
        "public_url: https://a.example.com\nstorage: {url: '${env:S}'}\n", "storage.url", id="storage"
    ),
    pytest.param(
        "public_url: https://a.example.com\nstate: {redis_url: '${env:S}'}\n", "state.redis_url", id="redis"
    ),
    pytest.param(
        "public_url: https://a.example.com\ntls: {certificate: '${env:S}', key: '${env:S}'}\n",
        "tls.certificate",
        id="tls-file",
    ),
    pytest.param(ROUTE + "    host: '${env:S}'\n", "", id="duplicate-key-with-secret"),
    pytest.param(ROUTE.replace("wiki.example.com", "'${env:S}'"), "routes[0] (name: wiki).host", id="host"),
    pytest.param(
        ROUTE.replace("http://10.0.0.5:8080", "'${env:S}'"), "routes[0] (name: wiki).upstreams[0]", id="up"
    ),
    pytest.param(ROUTE + "    path: '${env:S}'\n", "routes[0] (name: wiki).path", id="route-path"),
    pytest.param(
        ROUTE + "    public_paths: ['${env:S}']\n", "routes[0] (name: wiki).public_paths[0]", id="public"
    ),
    pytest.param(
        "public_url: https://a.example.com\nroutes:\n  - {name: '${env:S}', host: a.example.com, upstreams: [http://a]}\n",
        "routes[0].name",
        id="route-name-not-shown-in-path",
    ),
    pytest.param(
        IDP.format(value="x").replace("https://idp.example.com", "'${env:S}'"),
        "identity_providers[0] (name: corp).issuer",
        id="issuer",
    ),
]


@pytest.mark.parametrize(("text", "path"), LEAK_CASES)
@pytest.mark.parametrize("secret", ["hunter2 is Not a URL", "ftp://user:hunter2@host/"])
def test_secret_values_never_appear_in_errors(text: str, path: str, secret: str) -> None:
    report = errors_of(text, environ={"S": secret})

    assert "hunter2" not in report
    if path:
        assert f": {path}: " in report, report
        assert "${env:S}" in report


# --------------------------------------------------------------------------------------------------
# Semantic errors
# --------------------------------------------------------------------------------------------------

TOP = "public_url: https://auth.example.com\n"

SEMANTIC_CASES = [
    # public_url
    pytest.param(
        "public_url: auth.example.com\n", 1, "public_url", "is not an absolute URL", id="url-relative"
    ),
    pytest.param(
        "public_url: ftp://a.example.com\n", 1, "public_url", 'scheme must be http or https, not "ftp"'
    ),
    pytest.param("public_url: https://\n", 1, "public_url", "has no host", id="url-no-host"),
    pytest.param(
        "public_url: https://a.example.com/auth\n", 1, "public_url", 'must not have a path (got "/auth")'
    ),
    pytest.param(
        "public_url: https://a.example.com/?x=1\n", 1, "public_url", "must not have a query", id="url-q"
    ),
    pytest.param(
        "public_url: https://a.example.com:99999\n", 1, "public_url", "is not a valid URL", id="url-port"
    ),
    pytest.param(
        "public_url: https://u:p@a.example.com\n", 1, "public_url", "must not contain user:password@"
    ),
    # listen
    pytest.param(
        TOP + "listen: 8080\n", 2, "listen", 'got "8080"; expected host:port', id="listen-port-only"
    ),
    pytest.param(
        TOP + "listen: 'localhost:0'\n", 2, "listen", 'port must be 1-65535, got "0"', id="listen-0"
    ),
    pytest.param(TOP + "listen: 'localhost:65536'\n", 2, "listen", "port must be 1-65535", id="listen-high"),
    pytest.param(TOP + "listen: 'localhost:http'\n", 2, "listen", 'port must be 1-65535, got "http"'),
    pytest.param(
        TOP + "listen: '::1:8080'\n", 2, "listen", "write IPv6 addresses in brackets", id="listen-v6"
    ),
    pytest.param(
        TOP + "listen: '[::g]:8080'\n", 2, "listen", '"::g" is not an IPv6 address', id="listen-bad-v6"
    ),
    pytest.param(TOP + "listen: '[::1]8080'\n", 2, "listen", 'got "[::1]8080"', id="listen-v6-no-colon"),
    pytest.param(TOP + "listen: 'bad_host:80'\n", 2, "listen", '"bad_host" is not a hostname or IP address'),
    # trusted_proxies
    pytest.param(
        TOP + "trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n",
        4,
        "trusted_proxies[1]",
        '"10.0.0.0/33" is not an IP address or network; expected an IP address or CIDR network',
        id="proxy-cidr",
    ),
    # storage, state
    pytest.param(
        TOP + "storage: {url: 'mysql://u:pw@db/x'}\n",
        2,
        "storage.url",
        'unsupported database URL scheme "mysql"',
    ),
    pytest.param(
        TOP + "state: {redis_url: 'memcached://x'}\n", 2, "state.redis_url", "unsupported Redis URL scheme"
    ),
    pytest.param(TOP + "storage: {pool_size: 0}\n", 2, "storage.pool_size", "must be greater than 0; got 0"),
    pytest.param(TOP + "data_dir: ''\n", 2, "data_dir", "must not be empty", id="data-dir-empty"),
    # session, server, limits
    pytest.param(
        TOP + "session:\n  idle_timeout: 0s\n", 3, "session.idle_timeout", "must be greater than 0; got 0"
    ),
    pytest.param(TOP + "session:\n  lifetime: -1\n", 3, "session.lifetime", "must be greater than 0; got -1"),
    pytest.param(
        TOP + "session:\n  lifetime: 1h\n  idle_timeout: 2h\n",
        4,
        "session.idle_timeout",
        "is longer than session.lifetime (3600s)",
        id="idle-longer-than-lifetime",
    ),
    pytest.param(
        TOP + "session:\n  idle_timeout: 13h\n",
        3,
        "session.idle_timeout",
        "(43200s)",
        id="idle-vs-default-lifetime",
    ),
    pytest.param(
        TOP + "session: {cookie_name: 'a b'}\n", 2, "session.cookie_name", "is not a valid cookie name"
    ),
    pytest.param(
        TOP + "server:\n  workers: 0\n", 3, "server.workers", "must be greater than 0; got 0", id="workers"
    ),
    pytest.param(
        TOP + "server:\n  graceful_timeout: -1s\n", 3, "server.graceful_timeout", "expected a duration"
    ),
    pytest.param(
        TOP + "server:\n  graceful_timeout: -1\n", 3, "server.graceful_timeout", "must not be negative"
    ),
    pytest.param(
        TOP + "server:\n  max_connections: 0\n", 3, "server.max_connections", "must be greater than 0; got 0"
    ),
    pytest.param(
        TOP + "server:\n  backlog: 100\n", 3, "server.backlog", "must be at least 128 (the server's minimum)"
    ),
    pytest.param(
        TOP + "server:\n  header_timeout: 50ms\n",
        3,
        "server.header_timeout",
        "must be at least 0.1s; got 0.05s",
    ),
    pytest.param(TOP + "limits:\n  max_body_size: 0\n", 3, "limits.max_body_size", "must be greater than 0"),
    # Past what the server or the host can take: each failed at start, or at every request, with a
    # traceback check-config had not foreseen (a fuzzing run).
    pytest.param(
        TOP + "server:\n  workers: 100000\n", 3, "server.workers", "must be at most 256", id="workers-max"
    ),
    pytest.param(TOP + "server:\n  backlog: 1000000\n", 3, "server.backlog", "must be at most 65535"),
    pytest.param(
        TOP + "server:\n  header_timeout: 30d\n", 3, "server.header_timeout", "must be at most 3600"
    ),
    pytest.param(
        TOP + "limits:\n  max_header_bytes: 1GiB\n", 3, "limits.max_header_bytes", "must be at most"
    ),
    pytest.param(TOP + "limits:\n  body_timeout: 0\n", 3, "limits.body_timeout", "must be greater than 0"),
    pytest.param(TOP + "limits:\n  body_timeout: -1\n", 3, "limits.body_timeout", "must be greater than 0"),
    # identity providers
    pytest.param(
        TOP + "identity_providers:\n  - {name: corp, issuer: 'http://idp.example.com', client_id: g}\n",
        3,
        "identity_providers[0] (name: corp).issuer",
        "must use https (http is only allowed for localhost)",
        id="issuer-http",
    ),
    pytest.param(
        TOP + "identity_providers:\n  - {name: corp, issuer: 'idp.example.com', client_id: g}\n",
        3,
        "identity_providers[0] (name: corp).issuer",
        "is not an absolute URL (it needs http:// or https://); expected the issuer URL",
        id="issuer-relative",
    ),
    pytest.param(
        TOP
        + "identity_providers:\n  - {name: corp, issuer: 'https://a.example.com', client_id: g}\n"
        + "  - {name: corp, issuer: 'https://b.example.com', client_id: g}\n",
        4,
        "identity_providers[1] (name: corp).name",
        "duplicate identity provider name (first at line 3)",
        id="idp-duplicate",
    ),
    pytest.param(
        TOP + "identity_providers:\n  - {name: Corp IdP, issuer: 'https://a.example.com', client_id: g}\n",
        3,
        'identity_providers[0] (name: "Corp IdP").name',
        '"Corp IdP" is not a valid name; names must match [a-z0-9][a-z0-9_-]*',
        id="idp-name",
    ),
    pytest.param(
        TOP + "identity_providers:\n  - {name: corp, issuer: 'https://a.example.com', client_id: ''}\n",
        3,
        "identity_providers[0] (name: corp).client_id",
        "must not be empty",
        id="idp-client-id",
    ),
    pytest.param(
        TOP
        + "identity_providers:\n  - {name: corp, issuer: 'https://a.example.com', client_id: g, scopes: [email]}\n",
        3,
        "identity_providers[0] (name: corp).scopes",
        'must include "openid"',
        id="idp-scopes",
    ),
    # routes: names
    pytest.param(
        ROUTE.replace("name: wiki", "name: Wiki"),
        3,
        'routes[0] (name: "Wiki").name',
        '"Wiki" is not a valid name',
        id="route-name-case",
    ),
    pytest.param(ROUTE.replace("name: wiki", "name: ''"), 3, "routes[0].name", '"" is not a valid name'),
    pytest.param(
        ROUTE.replace("name: wiki", "name: -wiki"), 3, 'routes[0] (name: "-wiki").name', "not a valid"
    ),
    pytest.param(
        ROUTE + "  - name: wiki\n    host: other.example.com\n    upstreams: [http://b]\n",
        6,
        "routes[1] (name: wiki).name",
        "duplicate route name (first at line 3); names must be unique",
        id="route-name-duplicate",
    ),
    # routes: host
    pytest.param(
        ROUTE.replace("wiki.example.com", "https://wiki.example.com"),
        4,
        "routes[0] (name: wiki).host",
        "has a scheme",
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "'wiki.example.com:443'"),
        4,
        "routes[0] (name: wiki).host",
        "has a port",
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "wiki.example.com/x"), 4, "routes[0] (name: wiki).host", "or path"
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "'a.*.example.com'"), 4, "routes[0] (name: wiki).host", "uses *"
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "'*wiki.example.com'"), 4, "routes[0] (name: wiki).host", "valid"
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "'*.*.example.com'"), 4, "routes[0] (name: wiki).host", "uses *"
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "wiki_1.example.com"),
        4,
        "routes[0] (name: wiki).host",
        "not a valid",
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "wiki..example.com"),
        4,
        "routes[0] (name: wiki).host",
        "not a valid",
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "wiki.example.com."),
        4,
        "routes[0] (name: wiki).host",
        "not a valid",
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "-wiki.example.com"),
        4,
        "routes[0] (name: wiki).host",
        "not a valid",
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "wïki.example.com"), 4, "routes[0] (name: wiki).host", "punycode"
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "'*'"), 4, "routes[0] (name: wiki).host", "uses * other than"
    ),
    pytest.param(
        ROUTE.replace("wiki.example.com", "'" + "a" * 64 + ".com'"), 4, "routes[0] (name: wiki).host", "valid"
    ),
    # routes: path
    pytest.param(
        ROUTE + "    path: admin\n", 6, "routes[0] (name: wiki).path", '"admin" does not start with /'
    ),
    pytest.param(ROUTE + "    path: /a/../b\n", 6, "routes[0] (name: wiki).path", "contains // or .."),
    pytest.param(ROUTE + "    path: /a//b\n", 6, "routes[0] (name: wiki).path", "contains // or .."),
    pytest.param(ROUTE + "    path: /a%2Fb\n", 6, "routes[0] (name: wiki).path", 'contains "%"'),
    pytest.param(ROUTE + "    path: /a?b\n", 6, "routes[0] (name: wiki).path", 'contains "?"'),
    pytest.param(ROUTE + "    path: '/a#b'\n", 6, "routes[0] (name: wiki).path", 'contains "#"'),
    # routes: upstreams
    pytest.param(
        ROUTE.replace("[http://10.0.0.5:8080]", "[]"),
        5,
        "routes[0] (name: wiki).upstreams",
        "list at least one upstream URL",
        id="no-upstreams",
    ),
    pytest.param(
        ROUTE.replace("[http://10.0.0.5:8080]", "[http://a, 10.0.0.6:8080]"),
        5,
        "routes[0] (name: wiki).upstreams[1]",
        "is not an absolute URL (it needs http:// or https://)",
        id="upstream-no-scheme",
    ),
    pytest.param(
        ROUTE.replace("[http://10.0.0.5:8080]", "['tcp://a']"),
        5,
        "routes[0] (name: wiki).upstreams[0]",
        '"tcp"',
    ),
    pytest.param(
        ROUTE.replace("[http://10.0.0.5:8080]", "['http://a/?x=1']"),
        5,
        "routes[0] (name: wiki).upstreams[0]",
        "query",
    ),
    pytest.param(
        ROUTE.replace("[http://10.0.0.5:8080]", "['http://a/#x']"),
        5,
        "routes[0] (name: wiki).upstreams[0]",
        "fragment",
    ),
    pytest.param(
        ROUTE.replace("[http://10.0.0.5:8080]", "['http://a:0']"),
        5,
        "routes[0] (name: wiki).upstreams[0]",
        "1-65535",
    ),
    pytest.param(
        ROUTE.replace("[http://10.0.0.5:8080]", "['http://:80']"),
        5,
        "routes[0] (name: wiki).upstreams[0]",
        "no host",
    ),
    pytest.param(
        ROUTE.replace("[http://10.0.0.5:8080]", "['http://u:p@a']"),
        5,
        "routes[0] (name: wiki).upstreams[0]",
        "must not contain user:password@",
        id="upstream-credentials",
    ),
    pytest.param(
        ROUTE + "  - name: wiki2\n    host: WIKI.example.com\n    path: /\n    upstreams: [http://b]\n",
        8,
        "routes[1] (name: wiki2).path",
        'this host and path are already served by route "wiki" (line 3)',
        id="duplicate-host-path",
    ),
    pytest.param(
        ROUTE.replace("    upstreams", "    path: /api/\n    upstreams")
        + "  - name: api\n    host: wiki.example.com\n    path: /api\n    upstreams: [http://b]\n",
        9,
        "routes[1] (name: api).path",
        'already served by route "wiki"',
        id="duplicate-host-path-trailing-slash",
    ),
    pytest.param(
        ROUTE
        + "    case_insensitive_paths: true\n"
        + "  - name: vault\n    host: wiki.example.com\n    path: /vault\n    upstreams: [http://b]\n",
        7,
        "routes[1] (name: vault).case_insensitive_paths",
        'route "wiki" on the same host says true; every route of one host must agree',
        id="case-insensitive-mixed-on-one-host",
    ),
    pytest.param(
        ROUTE.replace(
            "    upstreams",
            "    path: /Vault\n    case_insensitive_paths: true\n    public_paths: [/Static/*]\n    upstreams",
        ),
        5,
        "routes[0] (name: wiki).path",
        'write "/Vault" in lower case (case_insensitive_paths)',
        id="case-insensitive-upper-case-prefix",
    ),
    # routes: public paths, headers
    pytest.param(
        ROUTE + "    public_paths: [/ok, static/*]\n",
        6,
        "routes[0] (name: wiki).public_paths[1]",
        '"static/*" does not start with /',
        id="public-path",
    ),
    pytest.param(
        ROUTE + "    request_headers:\n      X-Gateway-User: admin\n",
        7,
        "routes[0] (name: wiki).request_headers.X-Gateway-User",
        "X-Gateway-User is reserved: only the gateway sets X-Gateway-* identity headers",
        id="identity-header",
    ),
    pytest.param(
        ROUTE + "    request_headers:\n      x_gateway_roles: admin\n",
        7,
        "routes[0] (name: wiki).request_headers.x_gateway_roles",
        "is reserved",
        id="identity-header-underscore",
    ),
    pytest.param(
        ROUTE + "    response_headers:\n      X-GATEWAY-Assertion: x\n",
        7,
        "routes[0] (name: wiki).response_headers.X-GATEWAY-Assertion",
        "is reserved",
        id="identity-header-response",
    ),
    pytest.param(
        ROUTE + "    request_headers:\n      'X Team': a\n",
        7,
        'routes[0] (name: wiki).request_headers["X Team"]',
        '"X Team" is not a valid header name',
        id="header-name",
    ),
    pytest.param(
        ROUTE + "    request_headers:\n      'X-Team:': a\n",
        7,
        'routes[0] (name: wiki).request_headers["X-Team:"]',
        "is not a valid header name",
        id="header-name-colon",
    ),
    pytest.param(
        ROUTE + '    request_headers:\n      X-Team: "a\\r\\nX-Gateway-User: root"\n',
        7,
        "routes[0] (name: wiki).request_headers.X-Team",
        "must not contain line breaks",
        id="header-injection",
    ),
    # routes: timeouts, mfa, body, health checks
    pytest.param(
        ROUTE + "    timeouts: {connect: 0}\n", 6, "routes[0] (name: wiki).timeouts.connect", "greater than 0"
    ),
    pytest.param(
        ROUTE + "    timeouts:\n      response: 0ms\n",
        7,
        "routes[0] (name: wiki).timeouts.response",
        "greater than 0; got 0",
    ),
    pytest.param(
        ROUTE + "    mfa: {require: webauthn, max_age: 0s}\n",
        6,
        "routes[0] (name: wiki).mfa.max_age",
        "greater than 0",
    ),
    pytest.param(
        ROUTE + "    max_body_size: 0\n", 6, "routes[0] (name: wiki).max_body_size", "greater than 0; got 0"
    ),
    pytest.param(
        ROUTE + "    health_check:\n      interval: 2s\n      timeout: 2s\n",
        7,
        "routes[0] (name: wiki).health_check.interval",
        "must be longer than timeout (2s), or checks would overlap; got 2s",
        id="health-interval-vs-timeout",
    ),
    pytest.param(
        ROUTE + "    health_check: {timeout: 20s}\n",
        6,
        "routes[0] (name: wiki).health_check.interval",
        "must be longer than timeout (20s)",
        id="health-default-interval-vs-timeout",
    ),
    pytest.param(
        ROUTE + "    health_check:\n      healthy_threshold: 0\n",
        7,
        "routes[0] (name: wiki).health_check.healthy_threshold",
        "must be greater than 0; got 0",
        id="health-healthy-threshold",
    ),
    pytest.param(
        ROUTE + "    health_check:\n      unhealthy_threshold: -1\n",
        7,
        "routes[0] (name: wiki).health_check.unhealthy_threshold",
        "must be greater than 0; got -1",
        id="health-unhealthy-threshold",
    ),
    pytest.param(
        ROUTE + "    health_check:\n      timeout: 0s\n",
        7,
        "routes[0] (name: wiki).health_check.timeout",
        "must be greater than 0",
        id="health-timeout",
    ),
    pytest.param(
        ROUTE + "    health_check:\n      path: healthz\n",
        7,
        "routes[0] (name: wiki).health_check.path",
        '"healthz" does not start with /',
        id="health-path",
    ),
    pytest.param(
        ROUTE + "    health_check:\n      expected_status: [399, 200]\n",
        7,
        "routes[0] (name: wiki).health_check.expected_status",
        "100 <= low <= high <= 599; got [399, 200]",
        id="health-status",
    ),
    pytest.param(
        ROUTE + "    passive_health_check: {consecutive_failures: -1}\n",
        6,
        "routes[0] (name: wiki).passive_health_check.consecutive_failures",
        "must not be negative (0 turns ejection off)",
        id="passive-failures",
    ),
]


@pytest.mark.parametrize(("text", "line", "path", "fragment"), SEMANTIC_CASES)
def test_semantic_errors_name_line_and_key_path(text: str, line: int, path: str, fragment: str) -> None:
    assert_error(errors_of(text), line, path, fragment)


def test_every_semantic_error_is_reported_sorted_by_line() -> None:
    report = errors_of(
        """\
        public_url: https://auth.example.com/login
        listen: 0.0.0.0:0
        routes:
          - name: wiki
            host: https://wiki.example.com
            path: wiki
            upstreams: [ftp://a]
            request_headers: {X-Gateway-Email: x}
        server: {workers: 0}
        """
    )

    lines = report.splitlines()
    assert [int(entry.split(":")[1]) for entry in lines] == [1, 2, 5, 6, 7, 8, 9], report


@pytest.mark.parametrize(
    "host",
    [
        "wiki.example.com",
        "*.example.com",
        "WIKI.Example.COM",
        "localhost",
        "a",
        "10.0.0.5",
        "xn--wki-xla.example.com",
    ],
)
def test_valid_hosts(host: str) -> None:
    parse_settings(ROUTE.replace("wiki.example.com", f"'{host}'"))


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8080", "0.0.0.0:1", "localhost:65535", "[::1]:8080", "[::]:443"]
)
def test_valid_listen_addresses(listen: str) -> None:
    assert parse_settings(f"public_url: https://a.example.com\nlisten: '{listen}'\n").listen == listen


@pytest.mark.parametrize(
    "issuer", ["http://localhost:9000", "http://127.0.0.1/realms/x", "http://[::1]:8080"]
)
def test_plain_http_issuer_is_allowed_for_localhost(issuer: str) -> None:
    parse_settings(TOP + f"identity_providers: [{{name: dev, issuer: '{issuer}', client_id: g}}]\n")


def test_tls_files_must_exist_and_be_readable(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()

    report = errors_of(TOP + "tls:\n  certificate: missing.pem\n  key: a-directory\n", base_dir=tmp_path)

    assert_error(report, 3, "tls.certificate", f'file not found: "{tmp_path}/missing.pem"')
    assert_error(report, 4, "tls.key", f'cannot read "{tmp_path}/a-directory" (Is a directory)')


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")

    report = errors_of(TOP + "data_dir: data\n", base_dir=tmp_path)

    assert_error(report, 2, "data_dir", f"{tmp_path}/data exists and is not a directory")


# --------------------------------------------------------------------------------------------------
# msgspec error translation (the safety net behind the shape pass)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "path"),
    [
        ("Expected `str`, got `int` - at `$.public_url`", "Expected `str`, got `int`", ("public_url",)),
        (
            "Expected `str`, got `int` - at `$.routes[0].upstreams[1]`",
            "Expected `str`, got `int`",
            ("routes", 0, "upstreams", 1),
        ),
        (
            "Object contains unknown field `upsteams` - at `$.routes[12]`",
            "Object contains unknown field `upsteams`",
            ("routes", 12),
        ),
        (
            "Expected `str`, got `int` - at `$.routes[0].request_headers[...]`",
            "Expected `str`, got `int`",
            ("routes", 0, "request_headers"),
        ),
        (
            "Expected `str`, got `int` - at `key` in `$.routes[0].request_headers`",
            "Expected `str`, got `int`",
            ("routes", 0, "request_headers"),
        ),
        ("Object missing required field `public_url`", "Object missing required field `public_url`", ()),
    ],
)
def test_msgspec_paths_become_key_paths(text: str, message: str, path: tuple[str | int, ...]) -> None:
    assert _split_validation_error(text) == (message, path)


def test_several_workers_share_the_embedded_state_by_default() -> None:
    base = "public_url: https://auth.example.com\nserver: {workers: 2}\n"
    settings = parse_settings(base)
    assert (settings.server.workers, settings.state.redis_url, settings.state.embedded) == (2, None, "file")
    settings = parse_settings(base + "state: {redis_url: redis://127.0.0.1:6379/0}\n")
    assert settings.server.workers == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Memory state is one process's: other workers and the admin listener could not see it.
        ("state: {embedded: memory}\nserver: {workers: 2}\nadmin: {listen: null}\n", "would not share"),
        ("state: {embedded: memory}\n", "the admin listener (its own process) could not see them"),
        (
            "state: {embedded: memory, redis_url: 'redis://h:6379/0'}\nadmin: {listen: null}\n",
            "only without state.redis_url",
        ),
    ],
)
def test_memory_state_is_refused_where_another_process_needs_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"state\.embedded: ") as caught:
        parse_settings("public_url: https://auth.example.com\n" + text)
    assert message in str(caught.value)


def test_memory_state_for_one_process_without_an_admin_listener() -> None:
    settings = parse_settings(
        "public_url: https://auth.example.com\nstate: {embedded: memory}\nadmin: {listen: null}\n"
    )
    assert settings.state.embedded == "memory"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("passwords: {memory_kib: 4096}\n", "below OWASP's minimum"),
        ("regulation: {max_failures: 150}\n", "must not exceed 100"),
        ("regulation: {free_attempts: 10, max_failures: 10}\n", "below regulation.max_failures"),
        ("mfa: {webauthn: {user_verification: sometimes}}\n", "mfa.webauthn.user_verification"),
        ("passwords: {memory_kib: 8388608}\n", "passwords.memory_kib: must be at most 4194304 .4 GiB"),
        ("passwords: {time_cost: 1000}\n", "passwords.time_cost: must be at most 100"),
        ("passwords: {parallelism: 1000}\n", "passwords.parallelism: must be at most 64"),
        ("mfa: {recovery_codes: 1000000}\n", "mfa.recovery_codes: must be at most 100"),
        ("mfa: {webauthn: {rp_id: x}}\n", 'mfa.webauthn.rp_id: "x" is neither the public_url host'),
        ("mfa: {webauthn: {rp_id: evil.com}}\n", "nor a parent domain of it"),
    ],
)
def test_sign_in_settings_are_validated(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings("public_url: https://auth.example.com\n" + text)


@pytest.mark.parametrize("rp_id", ["auth.example.com", "example.com", "EXAMPLE.com"])
def test_a_passkey_rp_id_of_the_host_or_a_parent_is_taken(rp_id: str) -> None:
    settings = parse_settings(
        f"public_url: https://auth.example.com\nmfa: {{webauthn: {{rp_id: {rp_id}}}}}\n"
    )
    assert settings.mfa.webauthn.rp_id == rp_id


def test_console_settings_default_to_one_approval_and_fresh_destructive_factors() -> None:
    admin = parse_settings("public_url: https://auth.example.com\n").admin
    assert admin.approvals == 1
    assert admin.destructive_reauth_max_age == Duration(300)
    assert admin.proposal_ttl == Duration(48 * 3600)
    assert admin.sample_retention == Duration(24 * 3600)
    assert admin.invitation_ttl == Duration(72 * 3600)
    two = parse_settings(
        "public_url: https://auth.example.com\nadmin: {approvals: 2, proposal_ttl: 1h}\n"
    ).admin
    assert two.approvals == 2
    assert two.proposal_ttl == Duration(3600)
    invited = parse_settings("public_url: https://auth.example.com\nadmin: {invitation_ttl: 30m}\n").admin
    assert invited.invitation_ttl == Duration(1800)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("admin: {approvals: 3}\n", "admin.approvals"),
        ("admin: {destructive_reauth_max_age: 30m}\n", "must not exceed admin.reauth_max_age"),
        ("admin: {proposal_ttl: 0s}\n", "admin.proposal_ttl"),
        ("admin: {sample_retention: 0s}\n", "admin.sample_retention"),
        ("admin: {invitation_ttl: 0s}\n", "admin.invitation_ttl"),
    ],
)
def test_console_settings_are_validated(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings("public_url: https://auth.example.com\n" + text)


@pytest.mark.parametrize(
    "served",
    [
        "public_url: https://auth.example.com",
        "public_url: https://auth.example.com\ntls: {certificate: c.pem, key: k.pem}",
    ],
)
def test_insecure_cookies_are_refused_when_the_gateway_is_served_over_https(served: str) -> None:
    """Outside review: accepted anywhere without a word, so a trial setting carried to production sent
    the session cookie without Secure and without its __Host- prefix."""
    routes = ROUTE.split("\n", 1)[1]
    report = errors_of(served + "\n" + routes + "session: {insecure_cookies: true}\n")
    assert "session.insecure_cookies: is true while the gateway is served over HTTPS" in report
    # Plain HTTP (the quick start on one machine) keeps it.
    plain = "public_url: http://127.0.0.1:8080\n" + routes + "session: {insecure_cookies: true}\n"
    assert parse_settings(plain).session.insecure_cookies


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres:Xy@z:TOPSECRET-K9fq2Lm@127.0.0.1:5432/gateway",
        "postgresql+asyncpg://postgres:TOPSECRET@K9@db.example.com/gateway",
    ],
)
def test_a_database_url_with_an_unencoded_password_is_refused_without_showing_it(url: str) -> None:
    """An attack run: check-config passed such a URL, then migrate and serve crashed with the
    password in a traceback (the host part of one parsed into the host name)."""
    report = errors_of(ROUTE + f"storage:\n  url: '{url}'\n")
    assert_error(report, 7, "storage.url", "percent-encode @")
    assert "TOPSECRET" not in report
    assert "K9" not in report
    # The control: the same password percent-encoded is read as written.
    parse_settings(
        ROUTE + "storage:\n  url: postgresql+asyncpg://postgres:Xy%40z%3ATOPSECRET@127.0.0.1/gateway\n"
    )


@pytest.mark.parametrize(
    ("listen", "admin"),
    [
        ("0.0.0.0:8080", "127.0.0.1:8080"),  # a re-attack run: 127.0.0.1 then reached the admin console
        ("127.0.0.1:8080", "0.0.0.0:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        # Other spellings of the same addresses (a re-attack run got each past check-config).
        ("127.0.0.1:8080", "[::0]:8080"),
        ("127.0.0.1:8080", "0:8080"),
        ("127.0.0.1:8080", "localhost:8080"),
        ("127.0.0.1:8080", "[::ffff:127.0.0.1]:8080"),
        ("127.0.0.1:8080", "127.1:8080"),
    ],
)
def test_the_admin_listener_may_not_overlap_the_data_plane(listen: str, admin: str) -> None:
    text = f"public_url: https://auth.example.com\nlisten: '{listen}'\nadmin: {{listen: '{admin}'}}\n"
    with pytest.raises(ConfigError, match=r"admin\.listen: must not overlap listen"):
        parse_settings(text)


def test_the_admin_listener_on_another_port_or_address_is_fine() -> None:
    for listen, admin in (("0.0.0.0:8080", "127.0.0.1:9090"), ("127.0.0.1:8080", "127.0.0.2:8080")):
        text = f"public_url: https://auth.example.com\nlisten: '{listen}'\nadmin: {{listen: '{admin}'}}\n"
        assert parse_settings(text).admin.listen == admin


def test_zero_turns_passive_ejection_off_as_the_readme_says() -> None:
    """A first-day run: the README's `consecutive_failures: 0` (ejection off) was refused."""
    text = ROUTE + "    passive_health_check: {consecutive_failures: 0, ejection_time: 0s}\n"
    passive = parse_settings(text).routes[0].passive_health_check
    assert (passive.consecutive_failures, float(passive.ejection_time)) == (0, 0.0)
