"""The admin guard: CSRF rules (one table) and who counts as a fresh admin, on both fast-state backends.

Sessions are real ones in a real SessionStore (memory and Redis); the clock is moved, never slept on.
"""

from __future__ import annotations

import pytest

from admin.access import (
    AdminRoleRequired,
    CrossOriginRefused,
    StepUpRequired,
    UnsupportedMediaType,
    admin_origin,
    authenticate,
    check_csrf,
    holds_role,
)
from gateway.authz.index import PolicyIndex
from gateway.authz.rules import parse_policy
from gateway.clock import FakeClock
from gateway.errors import AuthenticationRequired, GatewayError
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import SessionStore
from gateway.settings.schema import Duration, SessionSettings
from gateway.store.fast import FastState

ORIGIN = "https://gw.example.com:9090"
COOKIE = "gateway_session"
PUBLIC_URL = "https://gw.example.com"
MAX_AGE = 900.0

POLICY = parse_policy(
    """\
p, admin, *, /*, *, allow
g, group:ops, oncall
g, oncall, admin
g, user:boss, admin
"""
)
INDEX = PolicyIndex.build(POLICY, version=3)


# -- CSRF -------------------------------------------------------------------------------------------

CSRF_CASES: list[tuple[str, str, str | None, str | None, str | None, type[GatewayError] | None]] = [
    # (what, method, content type, Origin, Sec-Fetch-Site, error)
    ("a read needs nothing", "GET", None, "https://evil.example", "cross-site", None),
    ("same-origin JSON", "POST", "application/json", ORIGIN, "same-origin", None),
    ("JSON with a charset", "PUT", "application/json; charset=utf-8", ORIGIN, None, None),
    ("no Origin (non-browser client)", "DELETE", "application/json", None, None, None),
    ("origin with a trailing slash", "POST", "application/json", ORIGIN + "/", None, None),
    ("another site", "POST", "application/json", "https://evil.example", None, CrossOriginRefused),
    (
        "same host, the gateway's port",
        "POST",
        "application/json",
        PUBLIC_URL,
        "same-site",
        CrossOriginRefused,
    ),
    ("sandboxed page", "POST", "application/json", "null", None, CrossOriginRefused),
    (
        "plain http on the admin port",
        "POST",
        "application/json",
        "http://gw.example.com:9090",
        None,
        CrossOriginRefused,
    ),
    ("browser says cross-site", "POST", "application/json", None, "cross-site", CrossOriginRefused),
    # An attack run: only the console's own origin is allowed, so same-site without an Origin is
    # another origin too.
    ("browser says same-site", "POST", "application/json", None, "same-site", CrossOriginRefused),
    (
        "browser says same-site, any case",
        "DELETE",
        "application/json",
        None,
        " Same-Site",
        CrossOriginRefused,
    ),
    ("a form post", "POST", "application/x-www-form-urlencoded", ORIGIN, None, UnsupportedMediaType),
    ("text/plain (no preflight)", "DELETE", "text/plain", ORIGIN, None, UnsupportedMediaType),
    ("no content type", "PATCH", None, None, None, UnsupportedMediaType),
    ("json look-alike", "POST", "application/jsonx", ORIGIN, None, UnsupportedMediaType),
]


@pytest.mark.parametrize(
    ("method", "content_type", "origin", "fetch_site", "error"),
    [case[1:] for case in CSRF_CASES],
    ids=[case[0] for case in CSRF_CASES],
)
def test_csrf_rules(
    method: str,
    content_type: str | None,
    origin: str | None,
    fetch_site: str | None,
    error: type[GatewayError] | None,
) -> None:
    def check() -> None:
        check_csrf(
            method=method,
            content_type=content_type,
            origin=origin,
            sec_fetch_site=fetch_site,
            allowed_origins={ORIGIN},
        )

    if error is None:
        check()
    else:
        with pytest.raises(error) as caught:
            check()
        assert caught.value.status in (403, 415)


@pytest.mark.parametrize(
    ("public_url", "listen", "origin"),
    [
        ("https://gw.example.com", "0.0.0.0:9090", "https://gw.example.com:9090"),
        ("https://GW.example.com:8443/", "127.0.0.1:443", "https://gw.example.com"),
        ("http://127.0.0.1:8080", "127.0.0.1:9090", "http://127.0.0.1:9090"),
        ("https://[::1]:8443", "[::]:9443", "https://[::1]:9443"),
    ],
)
def test_the_admin_origin_is_the_public_host_on_the_admin_port(
    public_url: str, listen: str, origin: str
) -> None:
    assert admin_origin(public_url, listen) == origin


# -- roles ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("principals", "expected"),
    [
        ({"user:boss", "authenticated"}, True),  # g line from the user
        ({"user:ann", "authenticated", "admin"}, True),  # a session role of that name
        ({"user:ann", "group:ops"}, True),  # group -> oncall -> admin
        ({"user:ann", "authenticated", "oncall-lead"}, False),
        ({"user:ann", "authenticated"}, False),
    ],
)
def test_the_admin_role_is_held_directly_or_through_the_hierarchy(
    principals: set[str], expected: bool
) -> None:
    assert holds_role(principals, "admin", INDEX) is expected


# -- authenticate -----------------------------------------------------------------------------------


@pytest.fixture
def sessions(fast_state: FastState, clock: FakeClock) -> SessionStore:
    settings = SessionSettings(idle_timeout=Duration(3600), lifetime=Duration(36000))
    return SessionStore(fast_state, settings, clock)


async def _session(
    sessions: SessionStore, clock: FakeClock, username: str, *, roles: tuple[str, ...] = (), totp: bool = True
) -> str:
    factors = [FactorUse(Factor.PASSWORD, clock.time())]
    if totp:
        factors.append(FactorUse(Factor.TOTP, clock.time()))
    session_id, _ = await sessions.create(
        user_id=abs(hash(username)) % 10_000,
        username=username,
        level=AuthLevel.TWO_FACTOR if totp else AuthLevel.ONE_FACTOR,
        factors=factors,
        roles=roles,
        ip="192.0.2.1",
        user_agent="test",
        host=PUBLIC_URL,
    )
    return session_id


async def _authenticate(sessions: SessionStore, clock: FakeClock, session_id: str | None) -> str:
    headers = [(b"cookie", f"other=1; {COOKIE}={session_id}".encode())] if session_id else []
    admin = await authenticate(
        headers=headers,
        cookie_name=COOKIE,
        sessions=sessions,
        index=INDEX,
        role="admin",
        reauth_max_age=MAX_AGE,
        public_url=PUBLIC_URL,
        now=clock.time(),
    )
    return admin.actor


async def test_a_fresh_admin_passes(sessions: SessionStore, clock: FakeClock) -> None:
    boss = await _session(sessions, clock, "boss")
    ann = await _session(sessions, clock, "ann", roles=("admin",))
    assert await _authenticate(sessions, clock, boss) == "user:boss"
    assert await _authenticate(sessions, clock, ann) == "user:ann"


async def test_no_cookie_or_an_unknown_or_revoked_session_is_401(
    sessions: SessionStore, clock: FakeClock
) -> None:
    boss = await _session(sessions, clock, "boss")
    await sessions.revoke(boss)
    for session_id in (None, "not-a-session", boss):
        with pytest.raises(AuthenticationRequired) as caught:
            await _authenticate(sessions, clock, session_id)
        assert caught.value.location == f"{PUBLIC_URL}/.gateway/login"


async def test_a_non_admin_is_refused_even_with_a_fresh_factor(
    sessions: SessionStore, clock: FakeClock
) -> None:
    eve = await _session(sessions, clock, "eve", roles=("editor",))
    with pytest.raises(AdminRoleRequired) as caught:
        await _authenticate(sessions, clock, eve)
    assert caught.value.status == 403
    assert caught.value.reason == "admin-role-required"
    assert caught.value.username == "eve"


async def test_an_admin_without_a_second_factor_must_step_up(
    sessions: SessionStore, clock: FakeClock
) -> None:
    boss = await _session(sessions, clock, "boss", totp=False)
    with pytest.raises(StepUpRequired) as caught:
        await _authenticate(sessions, clock, boss)
    assert caught.value.reason == "step-up-required"
    assert caught.value.location is not None
    assert caught.value.location.startswith(f"{PUBLIC_URL}/.gateway/mfa?")


async def test_the_second_factor_goes_stale_after_reauth_max_age(
    sessions: SessionStore, clock: FakeClock
) -> None:
    boss = await _session(sessions, clock, "boss")
    clock.advance(MAX_AGE)
    assert await _authenticate(sessions, clock, boss) == "user:boss"
    clock.advance(1)
    with pytest.raises(StepUpRequired) as caught:
        await _authenticate(sessions, clock, boss)
    assert "15 minutes" in caught.value.detail


async def test_a_destructive_action_asks_again_for_an_older_factor(
    sessions: SessionStore, clock: FakeClock
) -> None:
    from admin.access import Admin, require_recent_factor

    session_id = await _session(sessions, clock, "boss")  # a TOTP use now
    session = await sessions.get(session_id)
    assert session is not None
    admin = Admin(session=session, principals=frozenset({"user:boss"}))
    require_recent_factor(admin, now=clock.time() + 299, max_age=300, public_url=PUBLIC_URL)
    with pytest.raises(StepUpRequired) as refused:
        require_recent_factor(admin, now=clock.time() + 301, max_age=300, public_url=PUBLIC_URL)
    assert refused.value.location == f"{PUBLIC_URL}/.gateway/mfa?need=any"
    assert "5 minutes" in str(refused.value)
    password_only = await sessions.get(await _session(sessions, clock, "ann", totp=False))
    assert password_only is not None
    with pytest.raises(StepUpRequired):
        require_recent_factor(
            Admin(session=password_only, principals=frozenset()),
            now=clock.time(),
            max_age=300,
            public_url=PUBLIC_URL,
        )
