"""Route ``auth`` methods and the ``tokens:`` block: defaults, values, and errors that name the key."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.pipeline.snapshot import build_snapshot
from gateway.settings.loader import parse_settings

BASE = "public_url: https://auth.example.com\n"
ROUTE = "routes:\n  - {name: app, host: app.example.com, upstreams: [http://10.0.0.5:8080]%s}\n"


def test_defaults_are_sessions_only_and_a_year_of_token_lifetime() -> None:
    settings = parse_settings(BASE + ROUTE % "")
    assert settings.routes[0].auth == ("session",)
    assert float(settings.tokens.max_lifetime) == 365 * 86400.0
    runtime = build_snapshot(settings, generation=1, source="test").routes["app"]
    assert (runtime.session_auth, runtime.bearer_auth) == (True, False)


@pytest.mark.parametrize(
    ("auth", "flags"),
    [("[bearer]", (False, True)), ("[session, bearer]", (True, True)), ("[session]", (True, False))],
)
def test_auth_methods_compile_to_the_routes_flags(auth: str, flags: tuple[bool, bool]) -> None:
    settings = parse_settings(BASE + "tokens: {max_lifetime: 90d}\n" + ROUTE % f", auth: {auth}")
    runtime = build_snapshot(settings, generation=1, source="test").routes["app"]
    assert (runtime.session_auth, runtime.bearer_auth) == flags
    assert float(settings.tokens.max_lifetime) == 90 * 86400.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ROUTE % ", auth: []", "(name: app).auth"),
        (ROUTE % ", auth: [bearer, bearer]", "(name: app).auth"),
        (ROUTE % ", auth: [basic]", "(name: app).auth"),
        ("tokens: {max_lifetime: 0}\n", "tokens.max_lifetime"),
        ("tokens: {max_lifetime: 3000d}\n", "tokens.max_lifetime"),
        ("tokens: {lifetime: 1d}\n", "lifetime"),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(BASE + text)
    assert message in str(info.value)
