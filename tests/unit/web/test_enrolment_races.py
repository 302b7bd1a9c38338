"""A factor enrolled while an admin resets the account's factors, in process (a worker's real services
behind the control app).

The attack (a re-attack run, 1 time in 21 over real gateways): whoever holds a phished two-factor
session keeps registering passkeys while the owner's admin runs the lost-device reset. A registration
already past its session check stored its passkey after the reset had removed the factors, and it
stayed: a passwordless sign-in of the attacker's after the reset. Here the reset lands
deterministically at each point of an enrolment: after the factor is stored, and between the reset's
removal of the factors and its end of the sessions.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from gateway.factors.recovery import RecoveryCodes
from gateway.factors.totp import TotpService
from gateway.factors.webauthn import WebAuthnService
from gateway.identity.accounts import AccountService
from gateway.identity.models import User
from gateway.services import WorkerServices
from tests.support.soft_authenticator import SoftAuthenticator
from tests.unit.web.worker import BASE_URL, control_app, signed_in

PASSWORD = "violet harbour cobalt lantern"
COOKIE = "gateway_session"


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    config = {"threat": {"enabled": False}, "mfa": {"webauthn": {"passwordless": True}}}
    async with control_app(tmp_path, **config) as started:
        yield started


async def _phished(services: WorkerServices, client: httpx.AsyncClient) -> tuple[User, str]:
    """The victim's account, with an authenticator app, and a fresh two-factor session of it in
    ``client`` (the attacker's browser), with its CSRF cookie; returns the account and the token."""
    identity = services.identity
    user = await identity.accounts.create(username="vic", password=PASSWORD, actor="cli:test")
    enrollment = await identity.totp.begin_enrollment(user.id, account="vic", name="Phone")
    assert await identity.totp.confirm(user.id, enrollment.credential_id, pyotp.TOTP(enrollment.secret).now())
    await signed_in(services, client, user)
    await client.get("/.gateway/login", headers={"Accept": "text/html"})
    token = client.cookies.get("gateway_csrf")
    assert token
    return user, token


async def _register(client: httpx.AsyncClient, token: str) -> httpx.Response:
    headers = {"x-csrftoken": token, "Accept": "application/json"}
    options = await client.post(
        "/.gateway/api/webauthn/register/options", json={"discoverable": True}, headers=headers
    )
    assert options.status_code == 200, options.text
    credential = json.loads(SoftAuthenticator(origin=BASE_URL).create(options.text))
    return await client.post(
        "/.gateway/api/webauthn/register/verify",
        json={"credential": credential, "name": "Mine"},
        headers=headers,
    )


def _after(
    change: Callable[[], Awaitable[object]], real: Callable[..., Awaitable[Any]], *, first: bool
) -> Any:
    """``real``, with ``change`` made just before it (``first``) or just after it."""

    async def changed(*args: Any, **kwargs: Any) -> Any:
        if first:
            await change()
        result = await real(*args, **kwargs)
        if not first:
            await change()
        return result

    return changed


async def _factors(services: WorkerServices, user: User) -> tuple[int, int, int]:
    identity = services.identity
    return (
        len(await identity.totp.list(user.id)),
        len(await identity.webauthn.list(user.id)),
        await identity.recovery.remaining(user.id),
    )


async def test_a_passkey_stored_after_the_reset_by_its_ended_session_is_removed(
    worker: tuple[WorkerServices, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registration was past its session check when the whole reset ran (on another worker, whose
    session cache trusts a revoked session for up to a second, that can be the whole enrolment)."""
    services, client = worker
    user, token = await _phished(services, client)
    reset = partial(services.identity.accounts.reset_mfa, user.id, actor="cli:admin")
    monkeypatch.setattr(WebAuthnService, "register", _after(reset, WebAuthnService.register, first=True))
    answer = await _register(client, token)
    monkeypatch.undo()
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "session-ended"
    assert await _factors(services, user) == (0, 0, 0)


async def test_a_passkey_stored_between_the_resets_removal_and_its_sweep_is_removed(
    worker: tuple[WorkerServices, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registration finishes whole (its session rotated too) after the factors went and before
    the sessions end: only the reset's second removal catches it."""
    services, client = worker
    user, token = await _phished(services, client)
    real_revoke = AccountService._revoke
    registered: list[int] = []

    async def register_then_revoke(self: AccountService, user_id: int) -> int | None:
        if not registered:
            answer = await _register(client, token)
            assert answer.status_code == 200, answer.text
            registered.append(len(await services.identity.webauthn.list(user.id)))
        return await real_revoke(self, user_id)

    monkeypatch.setattr(AccountService, "_revoke", register_then_revoke)
    removed = await services.identity.accounts.reset_mfa(user.id, actor="cli:admin")
    monkeypatch.undo()
    assert registered == [1]
    assert removed["webauthn"] == 1
    assert await _factors(services, user) == (0, 0, 0)
    # The session the registration rotated to ended with the sweep.
    rotated = client.cookies.get(COOKIE, domain="gw.test")
    assert rotated
    assert await services.identity.sessions.get(rotated) is None


async def test_an_authenticator_app_confirmed_as_its_session_ended_is_removed(
    worker: tuple[WorkerServices, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, client = worker
    user, token = await _phished(services, client)
    page = await client.get("/.gateway/account/enroll", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text
    secret = re.search(r'data-secret="([A-Z2-7]+)"|<code[^>]*>([A-Z2-7 ]{16,})</code>', page.text)
    credential = re.search(r'name="credential_id" value="(\d+)"', page.text)
    assert secret, page.text
    assert credential, page.text
    seed = (secret.group(1) or secret.group(2)).replace(" ", "")
    # The sessions end (the reset's sweep, a disable, a password withdrawn) just after the app is stored.
    ended = partial(services.identity.sessions.revoke_user, user.id)
    monkeypatch.setattr(TotpService, "confirm", _after(ended, TotpService.confirm, first=False))
    answer = await client.post(
        "/.gateway/account/totp/confirm",
        data={"credential_id": credential.group(1), "code": pyotp.TOTP(seed).now(), "_csrf_token": token},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    monkeypatch.undo()
    assert answer.status_code != 200, answer.text
    assert await _factors(services, user) == (1, 0, 0)  # the phone it had; not the new app


async def test_recovery_codes_made_as_the_reset_ran_are_discarded(
    worker: tuple[WorkerServices, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, client = worker
    user, token = await _phished(services, client)
    reset = partial(services.identity.accounts.reset_mfa, user.id, actor="cli:admin")
    monkeypatch.setattr(RecoveryCodes, "generate", _after(reset, RecoveryCodes.generate, first=True))
    answer = await client.post(
        "/.gateway/account/recovery",
        data={"_csrf_token": token},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    monkeypatch.undo()
    assert answer.status_code != 200, answer.text
    assert await _factors(services, user) == (0, 0, 0)


async def test_the_control_enrols_a_passkey(worker: tuple[WorkerServices, httpx.AsyncClient]) -> None:
    services, client = worker
    user, token = await _phished(services, client)
    answer = await _register(client, token)
    assert answer.status_code == 200, answer.text
    assert await _factors(services, user) == (1, 1, 0)
