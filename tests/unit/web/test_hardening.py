"""The control app's security headers: the form-action list and the hook that sets every header once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gateway.pipeline.snapshot import build_snapshot
from gateway.settings.loader import parse_settings
from gateway.web.hardening import STATIC_CACHE, SecurityHeaders, form_action_sources


def sources(**overrides: Any) -> tuple[str, ...]:
    args: dict[str, Any] = {
        "public_url": "https://auth.example.com",
        "route_hosts": ["wiki.example.com"],
        "allow_http": False,
        "issuers": [],
    }
    args.update(overrides)
    return form_action_sources(**args)


def test_the_auth_host_and_route_hosts_on_https_only() -> None:
    assert sources() == ("'self'", "https://auth.example.com", "https://wiki.example.com")


def test_plain_http_development_adds_http_and_the_listener_port() -> None:
    # The redirect validator accepts the auth host's port on every trusted host (one listener).
    got = sources(public_url="http://auth.localhost:8080", route_hosts=["app.localhost"], allow_http=True)
    assert got == (
        "'self'",
        "https://auth.localhost",
        "https://auth.localhost:8080",
        "http://auth.localhost",
        "http://auth.localhost:8080",
        "https://app.localhost",
        "https://app.localhost:8080",
        "http://app.localhost",
        "http://app.localhost:8080",
    )


def test_wildcard_route_hosts_and_issuer_origins() -> None:
    got = sources(
        route_hosts=["*.apps.example.com", "Wiki.Example.com."],
        issuers=["https://idp.example.com/realms/corp", "http://127.0.0.1:9000"],
    )
    assert got == (
        "'self'",
        "https://auth.example.com",
        "https://*.apps.example.com",
        "https://wiki.example.com",
        "https://idp.example.com",
        "http://127.0.0.1:9000",
    )


@pytest.mark.parametrize(
    "host",
    [
        "evil.test; script-src *",  # would end the directive and open another
        "evil.test 'unsafe-inline'",
        "*",
        "*.com;",
        "evil\ttest",
        "[::1]",
    ],
)
def test_a_host_that_is_not_a_plain_name_never_reaches_the_policy(host: str) -> None:
    got = sources(route_hosts=[host], issuers=[f"https://{host}/"])
    assert got == ("'self'", "https://auth.example.com")


class _Live:
    """What the hook reads: the live configuration."""

    def __init__(self, public_url: str = "https://auth.example.com") -> None:
        settings = parse_settings(
            f"public_url: {public_url}\n"
            "routes:\n  - {name: wiki, host: wiki.example.com, upstreams: ['http://127.0.0.1:9']}\n",
            source="test.yaml",
        )
        self.current = build_snapshot(settings, generation=1, source="test.yaml")


def _send(
    path: str,
    headers: list[tuple[bytes, bytes]],
    *,
    public_url: str = "https://auth.example.com",
    status: int = 200,
) -> dict[bytes, list[bytes]]:
    hook = SecurityHeaders(_Live(public_url))
    message: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    asyncio.run(hook(cast("Any", message), cast("Any", {"type": "http", "path": path})))
    out: dict[bytes, list[bytes]] = {}
    for name, value in message["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def test_a_handler_cannot_weaken_or_double_the_headers() -> None:
    got = _send(
        "/.gateway/account",
        [
            (b"content-type", b"text/html"),
            (b"Cache-Control", b"public, max-age=600"),
            (b"content-security-policy", b"default-src *"),
            (b"x-frame-options", b"SAMEORIGIN"),
        ],
    )
    assert got[b"content-type"] == [b"text/html"]
    assert got[b"cache-control"] == [b"no-store"]
    assert got[b"x-frame-options"] == [b"DENY"]
    assert got[b"referrer-policy"] == [b"same-origin"]
    assert got[b"x-content-type-options"] == [b"nosniff"]
    [csp] = got[b"content-security-policy"]
    assert csp.startswith(b"default-src 'none'; script-src 'self'; style-src 'self';")
    # The auth host, the routes' hosts, and the admin console's origin (a sign-in it asked for
    # redirects back there, and form-action covers a form's redirects).
    assert (
        b"form-action 'self' https://auth.example.com https://wiki.example.com https://auth.example.com:9090;"
        in csp
    )
    assert b"frame-ancestors 'none'" in csp


def test_static_assets_get_a_cache_lifetime_and_the_jwks_keeps_its_own() -> None:
    assert _send("/.gateway/static/gateway.css", [])[b"cache-control"] == [STATIC_CACHE]
    jwks = _send("/.gateway/jwks.json", [(b"cache-control", b"public, max-age=300")])
    assert jwks[b"cache-control"] == [b"public, max-age=300"]
    assert jwks[b"x-frame-options"] == [b"DENY"]
    # A path that only looks like a static one is not cacheable.
    assert _send("/.gateway/staticx/a.css", [])[b"cache-control"] == [b"no-store"]


@pytest.mark.parametrize("status", [404, 405, 500])
def test_a_static_answer_that_is_not_the_file_is_not_cacheable(status: int) -> None:
    """An attack run: a missing static file's 404 said ``public, max-age=3600``, so a shared cache
    could keep refusing a file a rolling upgrade adds for an hour after every replica has it."""
    got = _send("/.gateway/static/new.js", [(b"cache-control", b"public, max-age=3600")], status=status)
    assert got[b"cache-control"] == [b"no-store"]
    assert _send("/.gateway/static/gateway.css", [], status=304)[b"cache-control"] == [STATIC_CACHE]


def test_other_messages_pass_unchanged() -> None:
    hook = SecurityHeaders(_Live())
    body: dict[str, Any] = {"type": "http.response.body", "body": b"x"}
    asyncio.run(hook(cast("Any", body), cast("Any", {"type": "http", "path": "/.gateway/login"})))
    assert body == {"type": "http.response.body", "body": b"x"}


def test_https_answers_tell_browsers_to_keep_to_https() -> None:
    """Outside review: no Strict-Transport-Security even with TLS, so a first visit over plain HTTP
    (a typed name, an old link) could be rewritten on the way before the redirect to HTTPS."""
    assert _send("/.gateway/login", [])[b"strict-transport-security"] == [b"max-age=31536000"]
    # Plain-HTTP development: a browser would refuse the site after switching back.
    assert b"strict-transport-security" not in _send(
        "/.gateway/login", [], public_url="http://127.0.0.1:8080"
    )
