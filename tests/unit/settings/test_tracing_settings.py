"""The ``tracing`` section: defaults, and what the checks refuse, with the line it is on."""

from __future__ import annotations

import textwrap

import pytest

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings


def _errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(textwrap.dedent(text))
    return str(info.value)


def test_tracing_is_off_by_default_and_samples_one_percent_when_on() -> None:
    tracing = parse_settings("public_url: https://auth.example.com\n").tracing
    assert tracing.enabled is False
    assert tracing.sample_ratio == 0.01
    assert tracing.parent_sampling == "ignore"
    assert tracing.endpoint == "http://127.0.0.1:4318/v1/traces"


def test_a_full_section() -> None:
    tracing = parse_settings(
        textwrap.dedent("""\
        public_url: https://auth.example.com
        tracing:
          enabled: true
          endpoint: https://otel.example.com/v1/traces
          sample_ratio: 0.25
          parent_sampling: trusted_proxies
          service_name: edge
          headers: {x-api-key: abc}
          timeout: 3s
          export_interval: 500ms
          queue_size: 100
        """)
    ).tracing
    assert (tracing.sample_ratio, tracing.parent_sampling, tracing.service_name) == (
        0.25,
        "trusted_proxies",
        "edge",
    )
    assert (float(tracing.timeout), float(tracing.export_interval), tracing.queue_size) == (3.0, 0.5, 100)


def test_the_ratio_is_a_share_and_the_limits_positive() -> None:
    message = _errors("""\
        public_url: https://auth.example.com
        tracing:
          sample_ratio: 1.5
          export_interval: 0s
          queue_size: 0
        """)
    assert "<config>:3: tracing.sample_ratio: must be between 0 and 1; got 1.5" in message
    assert "tracing.export_interval" in message
    assert "tracing.queue_size" in message


def test_credentials_never_go_to_a_remote_collector_in_the_clear() -> None:
    message = _errors("""\
        public_url: https://auth.example.com
        tracing:
          endpoint: http://otel.example.com:4318/v1/traces
          headers: {authorization: Bearer abc}
        """)
    assert "must be https://" in message
    assert "abc" not in message
    # On this machine (an agent beside the gateway) plain HTTP is fine.
    parse_settings(
        "public_url: https://auth.example.com\n"
        "tracing: {endpoint: 'http://127.0.0.1:4318/v1/traces', headers: {authorization: x}}\n"
    )


def test_a_bad_endpoint_and_an_unknown_mode_are_refused() -> None:
    assert "tracing.endpoint" in _errors("""\
        public_url: https://auth.example.com
        tracing: {endpoint: 'otel:4318'}
        """)
    assert "parent_sampling" in _errors("""\
        public_url: https://auth.example.com
        tracing: {parent_sampling: always}
        """)
