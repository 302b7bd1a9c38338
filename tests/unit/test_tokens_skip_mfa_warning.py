"""A route that requires a second factor and also takes API tokens is named in a warning at start: a
token is not a person's session, so its holder reaches the route without one (an attack run)."""

from __future__ import annotations

import pytest

from gateway.root.start import _warn_tokens_skip_mfa
from gateway.settings import parse_settings

CONFIG = """
public_url: https://auth.example.com
routes:
  - {name: strict, host: a.test, upstreams: ["http://127.0.0.1:9"], mfa: webauthn, auth: [session, bearer]}
  - name: aged
    host: b.test
    upstreams: ["http://127.0.0.1:9"]
    mfa: {require: required, max_age: 1h}
    auth: [bearer]
  - {name: machines, host: c.test, upstreams: ["http://127.0.0.1:9"], mfa: none, auth: [bearer]}
  - {name: people, host: d.test, upstreams: ["http://127.0.0.1:9"], mfa: required}
"""


def test_routes_where_tokens_skip_the_second_factor_are_named(caplog: pytest.LogCaptureFixture) -> None:
    _warn_tokens_skip_mfa(parse_settings(CONFIG))
    named = [r.args[0] for r in caplog.records if "skips the second factor" in r.getMessage()]  # type: ignore[index]
    assert named == ["strict", "aged"]
