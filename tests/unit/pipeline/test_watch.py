"""The checks a long exchange is watched with decide the policy again: with the session's principals as
they are now, fail closed on a policy the worker knows to be out of date, and never for a public path
(no policy decides those)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.authz.decision import Decision, Reason
from gateway.clock import FakeClock
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import Session
from gateway.observe.record import AuthKind
from gateway.pipeline.watch import Rechecks
from gateway.settings.schema import Duration, MfaPolicy
from gateway.settings.trusted import TrustedProxies

COOKIE = "gateway_session"
NOW = 1_800_000_000.0
NO_MFA = MfaPolicy()
NO_PROXIES = TrustedProxies([])


def _session(roles: tuple[str, ...], factors: tuple[FactorUse, ...] = ()) -> Session:
    return Session(
        id_hash="0" * 64,
        family="f",
        user_id=1,
        username="alice",
        level=AuthLevel.TWO_FACTOR,
        factors=factors,
        roles=roles,
        created_at=0.0,
        last_seen=0.0,
        ip="192.0.2.1",
        user_agent="pytest",
        host="app.example.com",
    )


@dataclass
class OpsOnly:
    """Allows the ``ops`` role on ``/deploy`` and nothing else; remembers what it was asked."""

    asked: list[tuple[frozenset[str], str, str, str]] = field(default_factory=list)

    def decide(self, principals: frozenset[str], route: str, method: str, path: str) -> Decision:
        self.asked.append((principals, route, method, path))
        allowed = "ops" in principals and path == "/deploy"
        reason = Reason.POLICY_ALLOW if allowed else Reason.NO_MATCHING_RULE
        return Decision(allowed=allowed, reason=reason, rule=None, principal=None, version=2)


@dataclass
class OpsThroughAlice(OpsOnly):
    """``g, user:alice, ops``: alice reaches ``ops`` when her roles count, never without them."""

    def decide(self, principals: frozenset[str], route: str, method: str, path: str) -> Decision:
        return super().decide(
            principals | ({"ops"} if "user:alice" in principals else set()), route, method, path
        )

    def decide_without_roles(
        self, principals: frozenset[str], without_roles: frozenset[str], route: str, method: str, path: str
    ) -> Decision:
        return super().decide(principals | without_roles, route, method, path)


@dataclass
class Policy:
    authorizer: OpsOnly = field(default_factory=OpsOnly)
    behind: bool = False


@dataclass
class Sessions:
    session: Session | None

    async def get(self, session_id: str) -> Session | None:
        return self.session


@dataclass
class Request:
    auth: AuthKind = AuthKind.SESSION
    cookies: tuple[bytes, ...] = (f"{COOKIE}=abc".encode(),)
    token: str = ""
    client_ip: str = "192.0.2.1"
    route_name: str = "app"
    method: str = "GET"
    path: str = "/deploy"
    mfa_policy: MfaPolicy | None = NO_MFA
    rt: Any = None
    host: str = "app.test"
    fwd: Any = None


def _runtime() -> SimpleNamespace:
    """A route's runtime as the watch compares it (named ``app``)."""
    config = SimpleNamespace(
        name="app",
        host="app.test",
        path="/",
        public_paths=(),
        allow_path_params=False,
        case_insensitive_paths=False,
        websockets=True,
        response_headers={},
    )
    return SimpleNamespace(
        route=config,
        mfa_policy=NO_MFA,
        session_auth=True,
        bearer_auth=False,
        websocket_origins=frozenset(),
        cors_preflight=False,
    )


@dataclass
class Router:
    """Matches every path to one route name (what a reload's routes choose for the exchange)."""

    name: str = "app"

    def match(self, host: str, path: str) -> SimpleNamespace:
        return SimpleNamespace(route=SimpleNamespace(name=self.name), is_public=False)


def _checks(
    policy: Policy,
    session: Session | None,
    routes: dict[str, Any] | None = None,
    *,
    router: Router | None = None,
    trusted: TrustedProxies = NO_PROXIES,
    blocks: frozenset[str] = frozenset(),
) -> Rechecks:
    live = SimpleNamespace(
        current=SimpleNamespace(
            cookie_name=COOKIE,
            settings=SimpleNamespace(lockdown=None),
            routes=routes or {},
            router=router or Router(),
            trusted=trusted,
        )
    )
    lockdown = SimpleNamespace(state=SimpleNamespace(on=False))
    parts: dict[str, Any] = {
        "live": live,
        "blocks": blocks,
        "lockdown": lockdown,
        "sessions": Sessions(session),
        "policy": policy,
        "bearer": None,
    }
    return Rechecks(**{name: cast(Any, part) for name, part in parts.items()}, clock=FakeClock(NOW))


async def test_the_request_is_decided_again_with_the_session_as_it_is_now() -> None:
    policy = Policy()
    assert await _checks(policy, _session(("ops",))).allowed(Request())
    principals, route, method, path = policy.authorizer.asked[-1]
    assert {"ops", "user:alice"} <= principals
    assert (route, method, path) == ("app", "GET", "/deploy")
    # The role was taken away while the exchange went on.
    assert not await _checks(policy, _session(())).allowed(Request())


async def test_a_path_the_policy_no_longer_allows_ends_the_exchange() -> None:
    assert not await _checks(Policy(), _session(("ops",))).allowed(Request(path="/other"))


async def test_a_policy_known_to_be_out_of_date_ends_it_fail_closed() -> None:
    assert not await _checks(Policy(behind=True), _session(("ops",))).allowed(Request())


@pytest.mark.parametrize("behind", [False, True])
async def test_a_public_exchange_is_not_decided(behind: bool) -> None:
    policy = Policy(behind=behind)
    assert await _checks(policy, None).allowed(Request(auth=AuthKind.NONE, cookies=()))
    assert policy.authorizer.asked == []


async def test_a_step_up_is_not_good_for_as_long_as_the_connection_lasts() -> None:
    """The re-attack run: a route asking for a second factor used within 3 s kept a WebSocket and a
    download going long after a new request was refused; the watch now asks what the MFA stage asks."""
    step_up = MfaPolicy(require="required", max_age=Duration(300))
    fresh = _session(("ops",), (FactorUse(Factor.PASSWORD, NOW - 60), FactorUse(Factor.TOTP, NOW - 60)))
    stale = _session(("ops",), (FactorUse(Factor.PASSWORD, NOW - 900), FactorUse(Factor.TOTP, NOW - 900)))
    assert await _checks(Policy(), fresh).allowed(Request(mfa_policy=step_up))
    assert not await _checks(Policy(), stale).allowed(Request(mfa_policy=step_up))
    # A route without max_age keeps it as long as the session lives.
    assert await _checks(Policy(), stale).allowed(Request(mfa_policy=MfaPolicy(require="required")))


@pytest.mark.parametrize("flag", ["owes_second_factor", "password_change"])
async def test_an_unfinished_sign_in_ends_the_exchange_on_a_route_asking_no_factor(flag: str) -> None:
    """An attack run: a WebSocket opened on an `mfa: none` app with the password alone went on after
    the owner enrolled their first factor (every one-factor session then owes it), where the next
    request was refused; the watch now refuses what identify refuses."""
    signed_in = _session(("ops",))
    owing = (
        replace(signed_in, owes_second_factor=True)
        if flag == "owes_second_factor"
        else replace(signed_in, password_change=True)
    )
    assert await _checks(Policy(), _session(("ops",))).allowed(Request())
    assert not await _checks(Policy(), owing).allowed(Request())


async def test_a_reload_that_changes_the_route_ends_the_exchange() -> None:
    """A re-attack run: a WebSocket on a public path went on echoing after a reload made the path
    private, where a new request got 401; the same for a route that came to ask for a second factor,
    changed its auth or went away. A reload that leaves the route as it was ends nothing."""
    decided = _runtime()
    request = Request(rt=decided)
    assert await _checks(Policy(), _session(("ops",)), {"app": decided}).allowed(request)
    assert await _checks(Policy(), _session(("ops",)), {"app": _runtime()}).allowed(request)
    # What does not decide (headers, upstreams, timeouts) lets a request in flight finish.
    headers = _runtime()
    headers.route.response_headers = {"X-Config-Version": "2"}
    assert await _checks(Policy(), _session(("ops",)), {"app": headers}).allowed(request)
    private = _runtime()
    private.route.public_paths = ("/nothing/*",)
    stricter = _runtime()
    stricter.mfa_policy = MfaPolicy(require="required")
    tokens = _runtime()
    tokens.bearer_auth = True
    for changed in ({"app": private}, {"app": stricter}, {"app": tokens}, {}):
        assert not await _checks(Policy(), _session(("ops",)), changed).allowed(request)


async def test_a_route_a_reload_adds_in_front_of_the_exchange_ends_it() -> None:
    """A re-attack run: a route `/admin` with `mfa: required`, added by a reload in front of an open
    WebSocket on the public `/` route, left it echoing while a new request got 401."""
    decided = _runtime()
    request = Request(rt=decided, path="/deploy")
    assert await _checks(Policy(), _session(("ops",)), {"app": _runtime()}).allowed(request)
    taken = {"app": _runtime(), "admin": _runtime()}
    assert not await _checks(Policy(), _session(("ops",)), taken, router=Router("admin")).allowed(request)


async def test_the_client_address_is_read_again_under_the_proxies_trusted_now() -> None:
    """A re-attack run: behind an over-broad trusted_proxies a WebSocket took the address a spoofed
    X-Forwarded-For gave it; the reload that narrowed the list and a block of the real address left
    it open."""
    spoofed = SimpleNamespace(chain=("198.51.100.9", "127.0.0.1"), client_ip="198.51.100.9")
    request = Request(client_ip="198.51.100.9", fwd=spoofed)
    blocked = frozenset({"127.0.0.1"})
    everyone = TrustedProxies(["0.0.0.0/0"])
    assert await _checks(Policy(), _session(("ops",)), trusted=everyone, blocks=blocked).allowed(request)
    assert not await _checks(Policy(), _session(("ops",)), blocks=blocked).allowed(request)


@pytest.mark.parametrize(("person", "allowed"), [(False, True), (True, False)])
async def test_a_persons_token_is_decided_again_without_the_accounts_roles(
    monkeypatch: pytest.MonkeyPatch, person: bool, allowed: bool
) -> None:
    """The authorize stage decides a person's access token without the roles ``g`` lines give the
    account (an attack run's token for any client got them); the re-decision of an open exchange
    must ask the same, or a person's long exchange outlives a change that refuses the token."""
    from gateway.machine.verifier import VerifiedToken
    from gateway.pipeline import watch

    token = VerifiedToken(
        subject="alice",
        principals=frozenset({"user:alice"}),
        roles=(),
        routes=None,
        expires_at=NOW + 60,
        token_id="t1",
        issuer="corp",
        person=person,
    )

    async def verified(*_: object, **__: object) -> VerifiedToken:
        return token

    monkeypatch.setattr(watch, "authenticate_bearer", verified)
    checks = _checks(Policy(authorizer=OpsThroughAlice()), None)
    assert await checks.allowed(Request(auth=AuthKind.BEARER, cookies=(), token="x")) is allowed
