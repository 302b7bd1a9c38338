"""Known-device cookies (``gateway/identity/devices.py``) name only a browser whose sign-in proved every
factor the account owes, in process (a worker's real services behind the control app).

An attack run signed in four times with the password of an account that had no second factor yet: the
sign-in counted as complete, each browser got a device cookie, and after the owner enrolled an
authenticator app each cookie bought its own allowance of wrong codes, the account's shared counter
never touched.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pyotp
import pytest

from gateway.identity.models import User
from gateway.services import WorkerServices
from tests.unit.web.worker import control_app

PASSWORD = "violet harbour cobalt lantern"
DEVICE_COOKIE = "gateway_device"  # the plain-HTTP name (insecure_cookies)
MAX_FAILURES = 3


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    # No back-off wait before the lock (the test's time): locked at the third failure in a row.
    regulation = {"free_attempts": MAX_FAILURES - 1, "max_failures": MAX_FAILURES, "lock_time": "15m"}
    async with control_app(tmp_path, threat={"enabled": False}, regulation=regulation) as started:
        yield started


async def _csrf(client: httpx.AsyncClient, path: str) -> str:
    page = await client.get(path, headers={"Accept": "text/html"})
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    return token.group(1)


async def _password(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    token = await _csrf(client, "/.gateway/login")
    return await client.post(
        "/.gateway/login",
        data={"username": username, "password": password, "rd": "", "_csrf_token": token},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )


async def _code(client: httpx.AsyncClient, code: str) -> httpx.Response:
    return await client.post(
        "/.gateway/mfa/totp",
        data={"code": code, "rd": "", "_csrf_token": await _csrf(client, "/.gateway/mfa")},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )


async def _enroll(services: WorkerServices, user: User) -> pyotp.TOTP:
    """The owner's authenticator app, confirmed with the current step's code (spent)."""
    identity = services.identity
    enrollment = await identity.totp.begin_enrollment(user.id, account=user.username, name="Phone")
    totp = pyotp.TOTP(enrollment.secret)
    assert await identity.totp.confirm(user.id, enrollment.credential_id, totp.now())
    return totp


def _wrong(totp: pyotp.TOTP) -> str:
    """Six digits that are none of the codes accepted now (one step of drift either way)."""
    now = time.time()
    valid = {totp.at(now + delta) for delta in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


async def test_cookies_harvested_with_a_password_alone_buy_no_guesses_after_enrollment(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    owner = await services.identity.accounts.create(username="nina", password=PASSWORD, actor="cli:test")
    harvested: list[str | None] = []
    for _ in range(4):  # the attacker's browsers, with the password of an account without factors
        client.cookies.clear()
        answer = await _password(client, "nina")
        assert answer.status_code == 302, answer.text
        harvested.append(client.cookies.get(DEVICE_COOKIE))
    # A password alone completes no sign-in of an account that owes its first factor.
    assert harvested == [None] * 4
    totp = await _enroll(services, owner)  # the owner enrolls
    wrong = _wrong(totp)
    answers: list[int] = []
    for cookie in harvested:
        client.cookies.clear()
        if cookie is not None:
            client.cookies.set(DEVICE_COOKIE, cookie, domain="gw.test")
        signed = await _password(client, "nina")
        if signed.status_code != 302:
            answers.append(signed.status_code)
            continue
        assert signed.headers["location"].startswith("/.gateway/mfa"), signed.headers
        for _ in range(MAX_FAILURES + 1):
            answers.append((await _code(client, wrong)).status_code)
    # Every wrong code counted on the account's shared counter: checked until it locked, then refused.
    assert answers.count(401) == MAX_FAILURES, answers
    assert answers[-1] == 429, answers


async def test_a_password_alone_forgives_no_failures_of_an_account_owing_its_first_factor(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """Whoever has the password of an account without factors must not wipe the count of guesses
    the owner's factor, enrolled next, will be counted against."""
    services, client = worker
    owner = await services.identity.accounts.create(username="olly", password=PASSWORD, actor="cli:test")
    for _ in range(MAX_FAILURES - 1):
        assert (await _password(client, "olly", "not the password")).status_code == 401
    assert (await _password(client, "olly")).status_code == 302
    totp = await _enroll(services, owner)
    client.cookies.clear()
    assert (await _password(client, "olly")).status_code == 302
    # The failures before the password still count: the first wrong code locks the account.
    assert (await _code(client, _wrong(totp))).status_code == 401
    assert (await _code(client, _wrong(totp))).status_code == 429


async def test_a_password_and_code_sign_in_names_a_known_device_that_signs_in_past_a_lock(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    owner = await services.identity.accounts.create(username="omar", password=PASSWORD, actor="cli:test")
    totp = await _enroll(services, owner)
    assert (await _password(client, "omar")).status_code == 302
    assert client.cookies.get(DEVICE_COOKIE) is None  # not after the password alone
    # The next step's code: the current one was spent confirming the app (one step of drift is taken).
    done = await _code(client, totp.at(services.identity.clock.time() + 30))
    assert done.status_code in (302, 303), done.text
    device = client.cookies.get(DEVICE_COOKIE)
    assert device
    # A stranger locks the account's shared counter with wrong codes...
    client.cookies.clear()
    assert (await _password(client, "omar")).status_code == 302
    for _ in range(MAX_FAILURES):
        assert (await _code(client, _wrong(totp))).status_code == 401
    client.cookies.clear()
    assert (await _password(client, "omar")).status_code == 429
    # ...and the owner's known device still signs in with the password.
    client.cookies.clear()
    client.cookies.set(DEVICE_COOKIE, device, domain="gw.test")
    again = await _password(client, "omar")
    assert again.status_code == 302, again.text
    assert again.headers["location"].startswith("/.gateway/mfa"), again.headers
