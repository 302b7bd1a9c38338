"""The gateway's own pages answer only on the auth host and the routes' hosts (issue 12, item 9).

A running gateway is tested in ``tests/integration/test_page_hosts_http.py``; here the rule itself,
table-driven, on a snapshot built from a real config text.
"""

from __future__ import annotations

import pytest

from gateway.errors import BadHeaders, NoRoute
from gateway.pipeline.page_hosts import APP_HOST_PAGES, HOST_INDEPENDENT, check_page_host, page_hosts
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
    for path in ("/.gateway/handoff", "/.gateway/logout", "/.gateway/static/error.css"):
        if served:
            check_page_host(snapshot, host, path)
        else:
            with pytest.raises(NoRoute):
                check_page_host(snapshot, host, path)


AUTH_HOST_PAGES = [
    "/.gateway/login",
    "/.gateway/mfa",
    "/.gateway/mfa/totp",
    "/.gateway/account",
    "/.gateway/account/enroll",
    "/.gateway/account/recovery",
    "/.gateway/account/password",
    "/.gateway/account/factors/webauthn/1/remove",
    "/.gateway/api/webauthn/register/options",
    "/.gateway/api/webauthn/register/verify",
    "/.gateway/api/sessions",
    "/.gateway/api/me",
    "/.gateway/api/privacy",
    "/.gateway/consent",
    "/.gateway/handoff/confirm",
    "/.gateway/oidc/x/start",
    "/.gateway/invite/abc",
]


@pytest.mark.parametrize("path", AUTH_HOST_PAGES)
def test_the_portal_and_sign_in_answer_only_on_the_auth_host(snapshot: Snapshot, path: str) -> None:
    """An attack run: on an app's host, the app's own script (same origin) read the CSRF cookie,
    registered its own passkey through the portal's API and took new recovery codes."""
    for host in ("auth.example.com", "AUTH.example.com.:8443"):
        check_page_host(snapshot, host, path)
    for host in ("wiki.example.com", "team1.apps.example.com"):
        with pytest.raises(NoRoute) as refused:
            check_page_host(snapshot, host, path)
        assert refused.value.location == f"https://auth.example.com:8443{path}"  # a browser is sent there


def test_an_app_host_serves_only_the_hand_off_sign_out_and_style() -> None:
    assert frozenset({"/.gateway/handoff", "/.gateway/logout"}) == APP_HOST_PAGES


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
