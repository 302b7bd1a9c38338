"""During a lockdown, a passkey is added only from a session that used one (a break-glass member's,
an admin's, anyone's: one session cannot tell what another sign-in of its account could do).

A lockdown lets through only sessions that used a passkey, because a password, an authenticator code
and an identity provider's sign-in can be phished. An account without a passkey could add its first
with exactly those and then use it: an attacker holding a break-glass admin's phished sign-in passed
the lockdown switched on against them. Tested on one started worker's control app, with a software
authenticator doing real registration ceremonies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pyotp
import pytest

from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.models import User
from gateway.identity.sessions import provider_mark
from gateway.services import WorkerServices
from gateway.settings.schema import IdentityProvider
from gateway.threat.lockdown import LockdownState
from tests.support.soft_authenticator import SoftAuthenticator
from tests.unit.web.worker import BASE_URL, control_app

PASSWORD = "violet harbour cobalt lantern"
# A local role of the account (gateway user add --role); a provider group is tested by the lockdown's
# own tests, and both are read the same way (the session's principals as the policy sees them).
GROUP = "oncall"
PROVIDER = IdentityProvider(name="corp", issuer="https://idp.example.com", client_id="gw", client_secret="s")
ON = LockdownState(on=True, since=1.0, actor="user:boss", reason="INC-42: credential leak")


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    # Set in memory by the tests: a worker's refresh from the (empty) store would switch it off again
    # under a test on a loaded machine (a full run's failure).
    settings = {"break_glass_group": GROUP, "refresh_interval": "1h"}
    async with control_app(tmp_path, threat={"enabled": False}, lockdown=settings) as started:
        yield started


async def _account(services: WorkerServices, name: str, *, app: bool = True) -> User:
    identity = services.identity
    user = await identity.accounts.create(username=name, password=PASSWORD, actor="cli:test")
    if app:
        enrollment = await identity.totp.begin_enrollment(user.id, account=name, name="Phone")
        assert await identity.totp.confirm(
            user.id, enrollment.credential_id, pyotp.TOTP(enrollment.secret).now()
        )
    return user


async def _session(
    services: WorkerServices,
    client: httpx.AsyncClient,
    user: User,
    factors: tuple[Factor, ...],
    roles: tuple[str, ...],
) -> None:
    identity = services.identity
    now = identity.clock.time()
    second = any(f is not Factor.PASSWORD for f in factors)
    mark = ""
    if Factor.OIDC in factors:
        # A provider sign-in carries its provider's mapping mark, and the worker must know the provider:
        # a stand-in, as deciding a passkey needs no discovery.
        identity.sessions.use_providers((PROVIDER,))
        mark = provider_mark(PROVIDER)
    session_id, _ = await identity.sessions.create(
        user_id=user.id,
        username=user.username,
        level=AuthLevel.TWO_FACTOR if second else AuthLevel.ONE_FACTOR,
        factors=tuple(FactorUse(f, now) for f in factors),
        roles=roles,
        ip="127.0.0.1",
        user_agent="test",
        host=BASE_URL,
        provider_mark=mark,
    )
    client.cookies.set("gateway_session", session_id, domain="gw.test")


async def _register(client: httpx.AsyncClient, authenticator: SoftAuthenticator) -> httpx.Response:
    await client.get("/.gateway/login", headers={"Accept": "text/html"})
    token = client.cookies.get("gateway_csrf")
    assert token
    headers = {"x-csrftoken": token, "Accept": "application/json"}
    options = await client.post(
        "/.gateway/api/webauthn/register/options", json={"discoverable": True}, headers=headers
    )
    if options.status_code != 200:
        return options
    credential = json.loads(authenticator.create(options.text))
    return await client.post(
        "/.gateway/api/webauthn/register/verify",
        json={"credential": credential, "name": "Key"},
        headers=headers,
    )


@pytest.mark.parametrize(
    ("factors", "app"),
    [
        ((Factor.PASSWORD, Factor.TOTP), True),  # a phished password and authenticator code
        ((Factor.OIDC,), False),  # a phished provider sign-in, first factor of the account
        ((Factor.PASSWORD,), False),  # a phished password, first factor of the account
    ],
)
async def test_a_break_glass_member_adds_no_passkey_during_a_lockdown_without_one(
    worker: tuple[WorkerServices, httpx.AsyncClient], factors: tuple[Factor, ...], app: bool
) -> None:
    services, client = worker
    user = await _account(services, "oncall-kim", app=app)
    await _session(services, client, user, factors, roles=(GROUP,))
    services.lockdown.set(ON)
    refused = await _register(client, SoftAuthenticator(origin=BASE_URL))
    assert refused.status_code == 403, refused.text
    assert "lockdown is on" in refused.text
    assert await services.identity.webauthn.list(user.id) == []
    # The control: the same session once the lockdown is off.
    services.lockdown.set(LockdownState())
    assert (await _register(client, SoftAuthenticator(origin=BASE_URL))).status_code == 200
    assert len(await services.identity.webauthn.list(user.id)) == 1


async def test_a_session_without_the_group_adds_no_passkey_for_its_account_either(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """An attack run: the group came with one provider entry's sign-in, and the passkey belongs to the
    account. Registered from a session of the same account without the group (another provider entry
    linked to it, or a local password and code), then used in a session with the group, it passed the
    lockdown and switched it off. Whether an account could break the glass in some other sign-in is
    not something one session knows: during a lockdown nobody adds a passkey without one."""
    services, client = worker
    user = await _account(services, "dev-lee")
    await _session(services, client, user, (Factor.PASSWORD, Factor.TOTP), roles=("dev",))
    services.lockdown.set(ON)
    refused = await _register(client, SoftAuthenticator(origin=BASE_URL))
    assert refused.status_code == 403, refused.text
    assert "lockdown is on" in refused.text
    assert await services.identity.webauthn.list(user.id) == []
    # The same session once the lockdown is lifted.
    services.lockdown.set(LockdownState())
    assert (await _register(client, SoftAuthenticator(origin=BASE_URL))).status_code == 200


async def test_a_session_that_breaks_the_glass_adds_another_passkey(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """A break-glass member who signed in with a passkey may add another (a spare key) during it."""
    services, client = worker
    user = await _account(services, "oncall-ana")
    await _session(services, client, user, (Factor.PASSWORD, Factor.TOTP), roles=(GROUP,))
    assert (await _register(client, SoftAuthenticator(origin=BASE_URL))).status_code == 200
    services.lockdown.set(ON)
    await _session(services, client, user, (Factor.PASSWORD, Factor.WEBAUTHN), roles=(GROUP,))
    assert (await _register(client, SoftAuthenticator(origin=BASE_URL))).status_code == 200
    assert len(await services.identity.webauthn.list(user.id)) == 2


async def test_an_admin_outside_the_group_adds_no_passkey_during_a_lockdown_without_one(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """A re-attack run's gap: during a lockdown the admin API takes changes only from a session with a
    recent passkey, and an admin without one (not in the break-glass group) could add the attacker's
    passkey from a phished password-and-code session, use it and switch the lockdown off."""
    services, client = worker
    role = services.live.current.settings.admin.role
    user = await _account(services, "admin-max")
    await _session(services, client, user, (Factor.PASSWORD, Factor.TOTP), roles=(role,))
    services.lockdown.set(ON)
    refused = await _register(client, SoftAuthenticator(origin=BASE_URL))
    assert refused.status_code == 403, refused.text
    assert "lockdown is on" in refused.text
    assert await services.identity.webauthn.list(user.id) == []
    # A session that used a passkey (a spare key for an admin who has one) may add another.
    services.lockdown.set(LockdownState())
    assert (await _register(client, SoftAuthenticator(origin=BASE_URL))).status_code == 200
    services.lockdown.set(ON)
    await _session(services, client, user, (Factor.PASSWORD, Factor.WEBAUTHN), roles=(role,))
    assert (await _register(client, SoftAuthenticator(origin=BASE_URL))).status_code == 200
    assert len(await services.identity.webauthn.list(user.id)) == 2


async def test_an_admin_role_named_as_a_principal_is_held_back_too(tmp_path: Path) -> None:
    """A re-attack run: with ``admin.role: user:boss`` (or ``group:<idp>:<group>``) the session was an
    admin to the admin API but not to this check, whose role list leaves principal names out; it added
    its passkey during the lockdown, used it and switched the lockdown off."""
    admin = {"role": "user:adm-u"}
    lockdown = {"refresh_interval": "1h"}
    async with control_app(tmp_path, threat={"enabled": False}, admin=admin, lockdown=lockdown) as (
        services,
        client,
    ):
        user = await _account(services, "adm-u")
        await _session(services, client, user, (Factor.PASSWORD, Factor.TOTP), roles=())
        services.lockdown.set(ON)
        refused = await _register(client, SoftAuthenticator(origin=BASE_URL))
        assert refused.status_code == 403, refused.text
        assert await services.identity.webauthn.list(user.id) == []
        services.lockdown.set(LockdownState())
        assert (await _register(client, SoftAuthenticator(origin=BASE_URL))).status_code == 200
