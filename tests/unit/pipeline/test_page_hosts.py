"""The gateway's own pages answer only on the auth host and the routes' hosts (issue 12, item 9).

A running gateway is tested in ``tests/integration/test_page_hosts_http.py``; here the rule itself,
table-driven, on a snapshot built from a real config text.
"""

from __future__ import annotations

import pytest

from gateway.errors import BadHeaders, NoRoute
from gateway.pipeline.page_hosts import HOST_INDEPENDENT, check_page_host, page_hosts
from gateway.pipeline.snapshot import Snapshot, build_snapshot
from gateway.settings import parse_settings

CONFIG = """
public_url: https://auth.example.com:8443
routes:
  - {name: wiki, host: wiki.example.com, upstreams: ["http://127.0.0.1:9"]}
  - {name: finance, host: Finance.Example.com, path: /admin, upstreams: ["http://127.0.0.1:9"]}
  - {name: apps, host: "*.apps.example.com", upstreams: ["http://127.0.0.1:9"]}
"""


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return build_snapshot(parse_settings(CONFIG), generation=1, source="test")


@pytest.mark.parametrize(
    ("host", "served"),
    [
        ("auth.example.com", True),
        ("auth.example.com:8443", True),
        ("AUTH.example.com.", True),
        ("wiki.example.com", True),
        ("wiki.example.com:443", True),
        # A route host with a path: the host is served, whatever the route's path.
        ("finance.example.com", True),
        ("team1.apps.example.com", True),
        ("evil.test", False),
        ("127.0.0.1", False),
        ("example.com", False),
        ("apps.example.com", False),
        ("a.b.apps.example.com", False),
        ("auth.example.com.evil.test", False),
        ("evilwiki.example.com", False),
        ("team1.apps.example.com.evil.test", False),
        ("[::1]", False),
    ],
)
def test_pages_answer_only_on_configured_hosts(snapshot: Snapshot, host: str, served: bool) -> None:
    for path in ("/.gateway/login", "/.gateway/mfa", "/.gateway/account/enroll", "/.gateway/oidc/x/start"):
        if served:
            check_page_host(snapshot, host, path)
        else:
            with pytest.raises(NoRoute):
                check_page_host(snapshot, host, path)


@pytest.mark.parametrize("path", sorted(HOST_INDEPENDENT))
@pytest.mark.parametrize("host", ["evil.test", "10.0.0.7", "10.0.0.7:8080", "[::1]"])
def test_probes_answer_on_every_host(snapshot: Snapshot, path: str, host: str) -> None:
    """Load balancers probe health, readiness and the JWKS by IP address."""
    check_page_host(snapshot, host, path)


def test_lookalikes_of_probe_paths_are_not_exempt(snapshot: Snapshot) -> None:
    for path in ("/.gateway/health/x", "/.gateway/readyz", "/.gateway/jwks.json/", "/.gateway"):
        with pytest.raises(NoRoute):
            check_page_host(snapshot, "evil.test", path)


@pytest.mark.parametrize("host", ["", "evil test", "a/b", "auth.example.com:x"])
def test_malformed_host_is_a_bad_request(snapshot: Snapshot, host: str) -> None:
    with pytest.raises(BadHeaders):
        check_page_host(snapshot, host, "/.gateway/login")


def test_hosts_follow_a_new_snapshot(snapshot: Snapshot) -> None:
    """A reload that adds a route serves the pages there at once (the cache is per snapshot)."""
    assert not page_hosts(snapshot).serves("new.example.com")
    reloaded = build_snapshot(
        parse_settings(
            CONFIG + '  - {name: new, host: new.example.com, upstreams: ["http://127.0.0.1:9"]}\n'
        ),
        generation=2,
        source="test",
    )
    assert page_hosts(reloaded).serves("new.example.com")
    assert not page_hosts(snapshot).serves("new.example.com")
