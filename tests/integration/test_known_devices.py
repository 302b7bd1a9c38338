"""Lock-out abuse, against a real ``gateway serve``: an attacker who knows a person's username keeps
failing their password to keep the account locked. An attack run held three people out for as long as
it liked from one address, a few wrong passwords every back-off.

A browser that completed a sign-in for the account carries a known-device cookie and is counted apart
(``gateway/identity/devices.py``): the attacker locks the account's shared counter, and the person's own
browser still signs in. A browser the account has never signed in from is locked with the attacker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, login, post_form
from tests.integration.test_signin_http import CREDENTIAL_RE, SECRET_RE, enroll_totp, wrong_code
from tests.support.totp import oathtool, previous_step_code

pytestmark = pytest.mark.peer

DEVICE_COOKIE = "gateway_device"  # the plain-HTTP name (insecure_cookies)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("devices")
    with run_echo() as echo:
        config = gateway_config(
            tmp, free_port(), [echo_route(echo, public_paths=[])],
            session={"insecure_cookies": True},
            trusted_proxies=["127.0.0.1/32"],
            # No back-off waits before the lock (the test's time), locked at the tenth failure.
            regulation={"free_attempts": 9, "max_failures": 10, "lock_time": "15m"},
            threat={"enabled": False},  # the detector's responses are not what is tested here
        )  # fmt: skip
        with run_gateway(tmp, config) as gateway:
            add_user(gateway.config_path, "wendy", PASSWORD)
            yield gateway


def known_device(client: httpx.Client, user: str) -> str:
    """A person's first days: a password sign-in of ``user`` (no factor yet) enrolls an authenticator
    app, then a sign-in with the password and a code. Returns the device cookie that complete sign-in
    named; the first one, which owed its enrollment until the end, named none (a password alone of
    an account without factors bought cookies that outlived the enrollment: an attack run)."""
    assert login(client, user).status_code == 302
    secret = enroll_totp(client)
    assert not client.cookies.get(DEVICE_COOKIE)
    client.cookies.delete(SESSION_COOKIE)
    signed = login(client, user)
    assert signed.status_code == 302, signed.text
    assert signed.headers["location"].startswith("/.gateway/mfa"), signed.headers
    assert not client.cookies.get(DEVICE_COOKIE)
    done = post_form(client, "/.gateway/mfa/totp", {"code": oathtool(secret, time.time())})
    assert done.status_code in (302, 303), done.text
    device = client.cookies.get(DEVICE_COOKIE)
    assert device  # a completed sign-in named this browser a known device of the account
    return device


def test_an_attacker_locks_the_account_but_not_the_persons_own_browser(gw: Gateway) -> None:
    with browser(gw) as own:
        own.headers["X-Forwarded-For"] = "203.0.113.20"
        known_device(own, "wendy")
        own.cookies.delete(SESSION_COOKIE)

        for _ in range(12):
            with browser(gw) as attacker:
                attacker.headers["X-Forwarded-For"] = "198.51.100.66"
                assert login(attacker, "wendy", "not her password").status_code in (401, 429)
        with browser(gw) as stranger:  # a browser the account never signed in from
            stranger.headers["X-Forwarded-For"] = "203.0.113.21"
            assert login(stranger, "wendy").status_code == 429

        assert login(own, "wendy").status_code == 302  # her own browser signs in (on to her code)
        assert own.cookies.get(SESSION_COOKIE)


def test_the_person_may_change_their_password_while_the_account_is_held_locked(gw: Gateway) -> None:
    """The current-password check of a password change counts on the browser's own counter too."""
    add_user(gw.config_path, "zoe", PASSWORD)
    with browser(gw) as own:
        own.headers["X-Forwarded-For"] = "203.0.113.40"
        known_device(own, "zoe")  # and a recent second factor, which a password change needs
        for _ in range(12):
            with browser(gw) as attacker:
                attacker.headers["X-Forwarded-For"] = "198.51.100.88"
                login(attacker, "zoe", "not her password")
        new = "a fresh passphrase for zoe 2026"
        changed = post_form(
            own, "/.gateway/account/password", {"current": PASSWORD, "new": new, "confirm": new}
        )
        assert changed.status_code == 303, changed.text
        # The new password ended the account's device cookies; this browser, which has just proven the
        # current one, is given one of the new generation and still signs in past the lock.
        assert DEVICE_COOKIE in changed.headers.get("set-cookie", ""), changed.headers
        own.cookies.delete(SESSION_COOKIE)
        assert login(own, "zoe", new).status_code == 302


def test_enrolling_another_factor_names_no_new_device(gw: Gateway) -> None:
    """An attack run: with a fresh session it enrolled five authenticator apps, each confirmed with a
    code from a seed it had just been given, and got five device cookies."""
    add_user(gw.config_path, "wade", PASSWORD)
    with browser(gw) as client:
        client.headers["X-Forwarded-For"] = "203.0.113.80"
        assert login(client, "wade").status_code == 302
        enroll_totp(client)
        for _ in range(2):
            client.cookies.delete(DEVICE_COOKIE)
            page = client.get("/.gateway/account/enroll")
            assert page.status_code == 200, page.text
            secret, credential = SECRET_RE.search(page.text), CREDENTIAL_RE.search(page.text)
            assert secret, page.text
            assert credential, page.text
            done = post_form(
                client,
                "/.gateway/account/totp/confirm",
                {"credential_id": credential.group(1), "code": previous_step_code(secret.group(1))},
            )
            assert done.status_code in (200, 302, 303), done.text
            assert DEVICE_COOKIE not in done.headers.get("set-cookie", ""), done.headers


def test_a_forged_or_foreign_device_cookie_counts_with_everyone(gw: Gateway) -> None:
    add_user(gw.config_path, "xena", PASSWORD)
    add_user(gw.config_path, "yara", PASSWORD)
    with browser(gw) as other:  # yara's device cookie is no device of xena's
        other.headers["X-Forwarded-For"] = "203.0.113.30"
        yaras = known_device(other, "yara")
        # The device cookie is the gateway's: it never reaches the app.
        seen = other.get("/anything", headers={"Accept": "application/json"})
        assert seen.status_code == 200, seen.text
        sent = {k.lower(): v for k, v in seen.json()["headers"]}
        assert DEVICE_COOKIE not in sent.get("cookie", "")
    assert yaras
    for cookie in (yaras, "forged.0123456789abcdef0123456789abcdef"):
        for _ in range(10):
            with browser(gw) as attacker:
                attacker.cookies.set(DEVICE_COOKIE, cookie)
                attacker.headers["X-Forwarded-For"] = "198.51.100.77"
                login(attacker, "xena", "not her password")
        with browser(gw) as fresh:
            fresh.headers["X-Forwarded-For"] = "203.0.113.31"
            assert login(fresh, "xena").status_code == 429


def test_a_password_alone_never_earns_a_known_device(gw: Gateway) -> None:
    """An attack run with only the password: after each password step it asked the sign-in page
    again, which took the half-signed-in session for a finished one and gave the browser a device
    cookie; a known device's failures are counted apart, so every cookie bought a fresh allowance of
    authenticator-app guesses (1,026 wrong codes checked in 30 s, the account never locked). Now only
    a completed sign-in names a device, and the guesses all count on the account."""
    add_user(gw.config_path, "una", PASSWORD)
    with browser(gw) as own:
        own.headers["X-Forwarded-For"] = "203.0.113.50"
        assert login(own, "una").status_code == 302
        secret = enroll_totp(own)
    answers: list[int] = []
    for _ in range(14):
        with browser(gw) as attacker:
            attacker.headers["X-Forwarded-For"] = "198.51.100.99"
            signed = login(attacker, "una")
            if signed.status_code != 302:
                answers.append(signed.status_code)
                continue
            assert signed.headers["location"].startswith("/.gateway/mfa"), signed.headers
            # The sign-in page asked again goes on with the second factor, and names no device.
            again = attacker.get("/.gateway/login")
            assert again.status_code == 302, again.text
            assert again.headers["location"].startswith("/.gateway/mfa"), again.headers
            assert not attacker.cookies.get(DEVICE_COOKIE)
            guess = post_form(attacker, "/.gateway/mfa/totp", {"code": wrong_code(secret)})
            assert not attacker.cookies.get(DEVICE_COOKIE)
            answers.append(guess.status_code)
    # Every guess counted on the account: checked until its tenth failure, then locked.
    assert answers.count(401) <= 10, answers
    assert answers[-1] == 429, answers


def test_a_finished_session_visiting_the_sign_in_page_mints_no_device(gw: Gateway) -> None:
    """An attack run: one finished session, sent without a device cookie to the sign-in page 20
    times, got 20 new device cookies, each a fresh allowance of password and second-factor guesses
    later. The page visited again keeps the browser's own cookie (its year starts again) and names no
    new device."""
    add_user(gw.config_path, "vera", PASSWORD)
    with browser(gw) as own:
        own.headers["X-Forwarded-For"] = "203.0.113.60"
        device = known_device(own, "vera")
        for _ in range(5):
            own.cookies.delete(DEVICE_COOKIE)
            again = own.get("/.gateway/login")
            assert again.status_code == 302, again.text  # still signed in: on to the app
            assert DEVICE_COOKIE not in again.headers.get("set-cookie", ""), again.headers
        # The browser's own cookie is sent back with its year started again, never another one.
        own.cookies.set(DEVICE_COOKIE, device)
        kept = own.get("/.gateway/login")
        assert f"{DEVICE_COOKIE}={device}" in kept.headers.get("set-cookie", ""), kept.headers


def test_a_new_password_ends_the_device_cookies_collected_before_it(gw: Gateway) -> None:
    """An attack run: device cookies collected while an intruder had the account outlived the new
    password that took it back, each its own allowance of guesses at the new one. The cookie's MAC
    covers the password as it was: after the change it counts with everyone."""
    add_user(gw.config_path, "tess", PASSWORD)
    with browser(gw) as intruder:
        intruder.headers["X-Forwarded-For"] = "198.51.100.70"
        collected = known_device(intruder, "tess")  # the intruder had the password and the code
    new_password = "a brand new passphrase 2026"
    proc = run_cli(
        "user", "set-password", "tess", "--password-stdin", "--config", str(gw.config_path),
        stdin=new_password + "\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for _ in range(10):  # the shared counter locked by wrong guesses from elsewhere
        with browser(gw) as stranger:
            stranger.headers["X-Forwarded-For"] = "198.51.100.71"
            login(stranger, "tess", "not her password")
    with browser(gw) as intruder:
        intruder.cookies.set(DEVICE_COOKIE, collected)
        intruder.headers["X-Forwarded-For"] = "198.51.100.70"
        assert login(intruder, "tess", "another guess").status_code == 429  # no allowance of its own
