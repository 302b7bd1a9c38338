"""``identity_headers``: the identity under configured names, and those names stripped from clients."""

from __future__ import annotations

import pytest

from gateway.pipeline.headers import (
    DEFAULT_IDENTITY_NAMES,
    Forwarding,
    IdentityNames,
    TrustedProxies,
    forwarding_for,
    upstream_request_headers,
)
from gateway.pipeline.snapshot import build_snapshot
from gateway.settings.loader import parse_settings

REMOTE = IdentityNames.of("Remote-User", "Remote-Email", "Remote-Groups")


def _forwarding(headers: list[tuple[bytes, bytes]]) -> Forwarding:
    return forwarding_for(
        peer_ip="203.0.113.9",
        scheme="https",
        host="app.example.com",
        headers=headers,
        trusted=TrustedProxies([]),
    )


def _sent(headers: list[tuple[bytes, bytes]], names: IdentityNames) -> list[tuple[bytes, bytes]]:
    identity = ((names.user, b"alice"), (names.email, b"alice@example.com"), (names.roles, b"staff"))
    return upstream_request_headers(
        headers, fwd=_forwarding(headers), identity=identity, strip=names.to_strip()
    )


@pytest.mark.parametrize(
    "spoof",
    [b"Remote-User", b"remote-user", b"REMOTE_USER", b"remote_user", b"Remote-Groups", b"remote_email"],
)
def test_a_client_sent_configured_name_is_dropped_in_every_spelling(spoof: bytes) -> None:
    sent = _sent([(spoof, b"admin"), (b"accept", b"*/*")], REMOTE)
    assert b"admin" not in [value for _, value in sent]
    assert sent.count((b"remote-user", b"alice")) == 1
    assert (b"accept", b"*/*") in sent


def test_default_names_strip_nothing_extra() -> None:
    assert DEFAULT_IDENTITY_NAMES.to_strip() == frozenset()
    # X-Gateway-* is dropped anyway; other names stay ordinary headers when not configured.
    sent = _sent([(b"x-app-user", b"someone"), (b"x-gateway-user", b"admin")], DEFAULT_IDENTITY_NAMES)
    assert (b"x-app-user", b"someone") in sent
    assert [v for n, v in sent if n == b"x-gateway-user"] == [b"alice"]


@pytest.mark.parametrize(
    "spoof",
    [
        b"Remote-User",
        b"REMOTE_EMAIL",
        b"remote-groups",
        b"Remote-Name",
        b"X-Forwarded-User",
        b"x_forwarded_email",
        b"X-Forwarded-Groups",
        b"X-Forwarded-Preferred-Username",
        b"X-Auth-Request-User",
        b"x-auth-request-email",
    ],
)
def test_the_identity_names_other_proxies_use_are_dropped_even_when_not_configured(spoof: bytes) -> None:
    """Apps written for oauth2-proxy or Authelia trust these names: a client's copy never reaches one,
    whatever ``identity_headers`` says."""
    sent = _sent([(spoof, b"admin"), (b"accept", b"*/*")], DEFAULT_IDENTITY_NAMES)
    assert b"admin" not in [value for _, value in sent]
    assert (b"accept", b"*/*") in sent


def test_the_snapshot_compiles_the_configured_names() -> None:
    settings = parse_settings(
        "public_url: https://auth.example.com\n"
        "identity_headers: {user: X-Forwarded-User, email: X-Forwarded-Email, roles: X-Forwarded-Groups}\n"
    )
    snap = build_snapshot(settings, generation=1, source="test")
    assert snap.strip_identity == {b"x-forwarded-user", b"x-forwarded-email", b"x-forwarded-groups"}
    # A bearer request drops the client's Authorization as well (the token is for the gateway only).
    assert snap.strip_bearer == snap.strip_identity | {b"authorization"}


ROUTES = (
    "public_url: https://auth.example.com\n"
    "identity_headers: {user: Remote-User}\n"
    "routes:\n"
    "  - {name: grafana, host: grafana.example.com, upstreams: ['http://10.0.0.5'],"
    " identity_headers: {user: X-WEBAUTH-USER, roles: X-WEBAUTH-ROLES}}\n"
    "  - {name: wiki, host: wiki.example.com, upstreams: ['http://10.0.0.6']}\n"
)


def test_a_route_sends_the_identity_under_its_own_names_the_global_ones_filling_the_gaps() -> None:
    snap = build_snapshot(parse_settings(ROUTES), generation=1, source="test")
    assert snap.routes["grafana"].identity_names == (
        b"x-webauth-user",
        b"x-gateway-email",
        b"x-webauth-roles",
    )
    assert snap.routes["wiki"].identity_names == (b"remote-user", b"x-gateway-email", b"x-gateway-roles")


def test_every_routes_names_are_stripped_on_every_route() -> None:
    """The attack: a client sends X-WEBAUTH-USER to the wiki (whose app may read it too, or forward it
    to Grafana) and Remote-User to Grafana; neither arrives anywhere."""
    snap = build_snapshot(parse_settings(ROUTES), generation=1, source="test")
    assert snap.strip_identity == {b"remote-user", b"x-webauth-user", b"x-webauth-roles"}
    assert snap.strip_bearer == snap.strip_identity | {b"authorization"}
    headers = [(b"X_WEBAUTH_USER", b"admin"), (b"remote-user", b"admin"), (b"x-webauth-roles", b"Admin")]
    sent = upstream_request_headers(headers, fwd=_forwarding(headers), strip=snap.strip_identity)
    assert [value for _, value in sent if value in (b"admin", b"Admin")] == []
