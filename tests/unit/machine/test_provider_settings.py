"""``identity_providers[].access_tokens``: defaults that fail closed, and every check with its key and line."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings

TOP = "public_url: https://auth.example.com\nidentity_providers:\n"
IDP = "  - name: corp\n    issuer: https://idp.example.com\n    client_id: gateway\n    client_secret: s\n"


def test_defaults() -> None:
    (idp,) = parse_settings(
        TOP + IDP + "    access_tokens: {audience: 'https://gw.example.com'}\n"
    ).identity_providers
    tokens = idp.access_tokens
    assert tokens is not None
    assert tokens.algorithms == ("RS256", "ES256", "PS256", "EdDSA")
    assert tokens.allow_jwt_typ is False
    assert tokens.introspection is None  # opaque tokens refused unless asked for
    assert tokens.users == "refuse"
    assert (float(tokens.clock_skew), float(tokens.cache_ttl), float(tokens.negative_ttl)) == (5.0, 60.0, 5.0)
    assert parse_settings(TOP + IDP).identity_providers[0].access_tokens is None


def test_a_secret_reference_for_the_introspection_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_SECRET", "from-the-environment")
    text = (
        TOP
        + IDP
        + (
            "    access_tokens:\n      audience: https://gw.example.com\n"
            "      introspection: {client_id: rs, client_secret: '${env:RS_SECRET}'}\n"
        )
    )
    tokens = parse_settings(text).identity_providers[0].access_tokens
    assert tokens is not None
    assert tokens.introspection is not None
    assert tokens.introspection.client_secret == "from-the-environment"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{audience: ''}", "access_tokens.audience: must not be empty"),
        ("{audience: a, algorithms: []}", "access_tokens.algorithms: must name at least one"),
        ("{audience: a, algorithms: [none]}", '"none" is not allowed'),
        ("{audience: a, algorithms: [RS256, HS256]}", '"HS256" is not allowed'),
        ("{audience: a, clock_skew: 2m}", "access_tokens.clock_skew: must be between 0 and 1m"),
        ("{audience: a, cache_ttl: 0s}", "access_tokens.cache_ttl: must be greater than 0"),
        ("{audience: a, cache_ttl: 2h}", "at most 1h"),
        ("{audience: a, negative_ttl: 2m}", "access_tokens.negative_ttl: must be between 0 and cache_ttl"),
        ("{audience: a, cache_size: 0}", "access_tokens.cache_size: must be between 1"),
        ("{audience: a, introspection: {client_id: ''}}", "introspection.client_id: must not be empty"),
        ("{audience: a, users: everyone}", "users"),
        ("{audience: a, audiences: [b]}", "audiences"),
        ("{algorithms: [RS256]}", "audience"),
    ],
)
def test_bad_blocks_are_refused_with_the_key(block: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(TOP + IDP + f"    access_tokens: {block}\n")
    assert message in str(err.value)


def test_introspection_needs_a_secret_and_only_one_provider_may_introspect() -> None:
    public = "  - {name: pub, issuer: 'https://pub.example.com', client_id: g, access_tokens: {audience: a, introspection: {}}}\n"
    with pytest.raises(ConfigError) as err:
        parse_settings(TOP + public)
    assert "introspection.client_secret: is required" in str(err.value)
    two = (
        TOP
        + IDP
        + "    access_tokens: {audience: a, introspection: {}}\n"
        + (
            "  - {name: other, issuer: 'https://other.example.com', client_id: g, client_secret: s,"
            " access_tokens: {audience: a, introspection: {}}}\n"
        )
    )
    with pytest.raises(ConfigError) as err:
        parse_settings(two)
    assert "only one identity provider may introspect" in str(err.value)
