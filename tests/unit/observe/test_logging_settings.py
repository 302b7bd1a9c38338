"""The ``logging:`` section: defaults, sink shapes, and line-numbered errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.observe.sinks import FileSink, HttpSink, SinkHub, StdoutSink, SyslogSink
from gateway.settings.loader import parse_settings
from gateway.settings.schema import Settings


def parse(body: str, tmp_path: Path, environ: dict[str, str] | None = None) -> Settings:
    text = "public_url: https://auth.example.com\n" + textwrap.dedent(body)
    return parse_settings(text, source="gw.yaml", base_dir=tmp_path, environ=environ or {})


def test_defaults_log_every_request_to_stdout(tmp_path: Path) -> None:
    logging = parse("", tmp_path).logging
    assert logging.access_log
    assert logging.security_events
    assert [sink.type for sink in logging.sinks] == ["stdout"]
    assert isinstance(SinkHub.from_settings(logging).sinks[0], StdoutSink)


def test_every_sink_type_with_relative_paths_and_secret_token(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    logging = parse(
        """\
        logging:
          access_log: false
          queue_size: 500
          sinks:
            - {type: file, path: logs/access.log, max_bytes: 10MiB, backups: 3}
            - {type: syslog, address: "tls://logs.example.com:6514", facility: local4, app_name: gw}
            - type: http
              name: siem
              url: https://es.example.com:9200/_bulk
              profile: elasticsearch
              token: ${env:ES_TOKEN}
              batch_size: 100
              flush_interval: 500ms
        """,
        tmp_path,
        {"ES_TOKEN": "t0ken"},
    ).logging
    assert not logging.access_log
    file, syslog, http = logging.sinks
    assert file.path == str(tmp_path / "logs" / "access.log")
    assert file.max_bytes == 10 * 2**20
    assert syslog.facility == "local4"
    assert http.token == "t0ken"
    assert http.flush_interval == 0.5
    hub = SinkHub.from_settings(logging)
    assert list(hub.stats()) == ["file-0", "syslog-1", "siem"]
    assert [type(s) for s in hub.sinks] == [FileSink, SyslogSink, HttpSink]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("logging: {sinks: [{type: kafka}]}", "gw.yaml:2: logging.sinks[0].type: expected one of stdout"),
        ("logging: {sinks: [{type: file}]}", 'gw.yaml:2: logging.sinks[0]: a file sink needs "path"'),
        (
            "logging:\n  sinks:\n    - type: stdout\n      path: /x\n",
            "gw.yaml:5: logging.sinks[0].path: does not apply to a stdout sink",
        ),
        (
            "logging: {sinks: [{type: syslog, address: 'smtp://x:25'}]}",
            "logging.sinks[0].address: scheme must be udp, tcp or tls",
        ),
        ("logging: {sinks: [{type: syslog, address: 'tcp://x'}]}", "needs a port"),
        (
            "logging: {sinks: [{type: http, url: 'ftp://x/'}]}",
            "logging.sinks[0].url: scheme must be http or https",
        ),
        (
            "logging: {sinks: [{type: http, url: 'http://x/', batch_size: 0}]}",
            "batch_size: must be greater than 0",
        ),
        ("logging: {queue_size: 0}", "logging.queue_size: must be greater than 0"),
        (
            "logging: {sinks: [{type: stdout, name: a}, {type: stdout, name: a}]}",
            'logging.sinks[1] (name: a).name: "a" is already the name of sinks[0]',
        ),
        (
            "logging: {sinks: [{type: http, url: 'https://x/', headers: {'Bad Header': v}}]}",
            "is not a valid HTTP header name and value",
        ),
    ],
)
def test_invalid_logging_is_reported_with_key_and_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(body, tmp_path)
    assert message in str(err.value)


def test_a_file_sink_that_could_never_write_is_refused(tmp_path: Path) -> None:
    """A first-day run: a file sink in a directory that did not exist passed check-config, and the
    gateway reported itself ready while dropping every event."""
    with pytest.raises(ConfigError) as err:
        parse("logging: {sinks: [{type: file, path: nowhere/access.log}]}", tmp_path)
    assert f'logging.sinks[0].path: its directory "{tmp_path / "nowhere"}" does not exist' in str(err.value)
    with pytest.raises(ConfigError, match="is a directory; name a file in it"):
        parse(f"logging: {{sinks: [{{type: file, path: '{tmp_path}'}}]}}", tmp_path)
    parse("logging: {sinks: [{type: file, path: access.log}]}", tmp_path)  # the file itself may be absent


def test_a_token_from_the_environment_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse("logging: {sinks: [{type: http, url: '${env:URL}'}]}", tmp_path, {"URL": "ftp://user:pw@x/"})
    assert "pw" not in str(err.value)
    assert "not shown" in str(err.value)
