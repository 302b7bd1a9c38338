"""A route that serves its app on the auth host itself is named in a warning at start."""

from __future__ import annotations

import pytest

from gateway.root.start import _warn_shared_origin
from gateway.settings import parse_settings

CONFIG = """
public_url: https://auth.example.com
routes:
  - {name: own, host: auth.example.com, upstreams: ["http://127.0.0.1:9"]}
  - {name: wild, host: "*.example.com", upstreams: ["http://127.0.0.1:9"]}
  - {name: apart, host: wiki.other.test, upstreams: ["http://127.0.0.1:9"]}
"""


def test_routes_on_the_auth_host_are_named_and_others_are_not(caplog: pytest.LogCaptureFixture) -> None:
    _warn_shared_origin(parse_settings(CONFIG))
    named = [r.args[0] for r in caplog.records if "serves its app on the auth host" in r.getMessage()]  # type: ignore[index]
    assert named == ["own", "wild"]
