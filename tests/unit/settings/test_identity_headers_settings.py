"""``identity_headers``: valid, distinct names without a meaning of their own; routes cannot set them."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings

BASE = "public_url: https://auth.example.com\n"


def _errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(BASE + text)
    return str(info.value)


def test_defaults_are_the_x_gateway_names() -> None:
    names = parse_settings(BASE).identity_headers
    assert (names.user, names.email, names.roles) == ("X-Gateway-User", "X-Gateway-Email", "X-Gateway-Roles")


def test_remote_user_names_load() -> None:
    names = parse_settings(
        BASE + "identity_headers: {user: Remote-User, roles: Remote-Groups}\n"
    ).identity_headers
    assert (names.user, names.email, names.roles) == ("Remote-User", "X-Gateway-Email", "Remote-Groups")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("Cookie", "meaning of its own"),
        ("authorization", "meaning of its own"),
        ("X-Forwarded-For", "meaning of its own"),
        ("Accept-Language", "meaning of its own"),
        ("X-Gateway-Assertion", "meaning of its own"),
        ("'Remote User'", "not a valid header name"),
        ("remote_email", "already the user header"),
    ],
)
def test_bad_names_are_refused(value: str, says: str) -> None:
    errors = _errors(f"identity_headers: {{email: Remote-Email, user: {value}}}\n")
    # The duplicate is reported where it is found second (email is checked after user).
    assert "identity_headers.email" in errors if "already" in says else "identity_headers.user" in errors
    assert says in errors


def test_a_route_cannot_set_a_configured_identity_name() -> None:
    errors = _errors(
        "identity_headers: {user: Remote-User}\n"
        "routes:\n"
        "  - {name: app, host: app.example.com, upstreams: ['http://10.0.0.5'],"
        " request_headers: {remote_user: admin}}\n"
    )
    assert "reserved: identity_headers sends the identity under this name" in errors


ROUTE = "routes:\n  - {name: grafana, host: grafana.example.com, upstreams: ['http://10.0.0.5'], %s}\n"


def test_a_route_may_name_its_own_identity_headers() -> None:
    route = parse_settings(BASE + ROUTE % "identity_headers: {user: X-WEBAUTH-USER}").routes[0]
    assert route.identity_headers is not None
    assert route.identity_headers.user == "X-WEBAUTH-USER"
    assert route.identity_headers.email is None  # the global name, filled in by the snapshot


@pytest.mark.parametrize(
    ("names", "says"),
    [
        ("{user: Cookie}", "meaning of its own"),
        ("{user: 'Remote User'}", "not a valid header name"),
        ("{roles: x-gateway-email}", "already the email header"),
        ("{user: ''}", "not a valid header name"),  # an empty name, not "the global one"
    ],
)
def test_a_routes_bad_names_are_refused_where_they_are_written(names: str, says: str) -> None:
    errors = _errors(ROUTE % f"identity_headers: {names}")
    assert "routes[0] (name: grafana).identity_headers" in errors
    assert says in errors


def test_a_route_cannot_set_its_own_identity_name() -> None:
    errors = _errors(
        ROUTE % "identity_headers: {user: X-WEBAUTH-USER}, request_headers: {x-webauth-user: admin}"
    )
    assert "reserved: identity_headers sends the identity under this name" in errors
