"""The sign-in work one client address may ask for, against a real ``gateway serve``.

An attack run sent 1,500 junk sign-ins a minute from one address (each an argon2id hash), raised
nothing and slowed everyone's sign-in twenty-fold; another made 533 passkey challenges a second. Now an
address past ``regulation.address_failures`` failed sign-ins in a window is refused before any hashing,
as are passkey challenges past ``regulation.address_challenges``; other addresses, and the same
address's correct passwords before it reached the limit, are not touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, csrf, login, post_form
from tests.integration.test_signin_http import enroll_totp, wrong_code

pytestmark = pytest.mark.peer

LIMIT = 5


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("attempts")
    with run_echo() as echo:
        config = gateway_config(
            tmp, free_port(), [echo_route(echo, public_paths=[])],
            session={"insecure_cookies": True},
            trusted_proxies=["127.0.0.1/32"],  # X-Forwarded-For names the client: many addresses
            regulation={"address_failures": LIMIT, "address_challenges": LIMIT, "address_window": "10m"},
            threat={"enabled": False},  # the spraying rule's block is not what is tested here
        )  # fmt: skip
        with run_gateway(tmp, config) as gateway:
            add_user(gateway.config_path, "vera", PASSWORD)
            yield gateway


def _sign_in(gw: Gateway, address: str, user: str, password: str) -> httpx.Response:
    with browser(gw) as client:
        client.headers["X-Forwarded-For"] = address
        return login(client, user, password)


def test_an_address_past_its_failed_sign_ins_is_refused_before_hashing(gw: Gateway) -> None:
    flood = "198.51.100.7"
    answers = [_sign_in(gw, flood, f"!!junk{n}!!", "whatever").status_code for n in range(LIMIT + 3)]
    assert answers[:LIMIT] == [401] * LIMIT
    assert answers[LIMIT:] == [429] * 3
    # Also with the right password of a real account: the address waits out its window.
    refused = _sign_in(gw, flood, "vera", PASSWORD)
    assert refused.status_code == 429
    assert "Too many sign-in attempts from your network" in refused.text
    # Another address is not touched.
    assert _sign_in(gw, "198.51.100.8", "vera", PASSWORD).status_code == 302


def test_successful_sign_ins_are_not_counted(gw: Gateway) -> None:
    office = "203.0.113.50"  # many people behind one address
    for _ in range(LIMIT * 2):
        with browser(gw) as client:
            client.headers["X-Forwarded-For"] = office
            assert login(client, "vera").status_code == 302
            assert client.cookies.get(SESSION_COOKIE)


def test_passkey_challenges_are_limited_per_address(gw: Gateway) -> None:
    with browser(gw) as client:
        client.headers["X-Forwarded-For"] = "198.51.100.9"
        headers = {"Accept": "application/json", "x-csrftoken": csrf(client)}
        statuses = [
            client.post("/.gateway/api/login/passkey/options", json={}, headers=headers).status_code
            for _ in range(LIMIT + 2)
        ]
    assert statuses[:LIMIT] == [200] * LIMIT
    assert statuses[LIMIT:] == [429, 429]


def test_a_burst_sent_at_once_gets_no_more_hashes_than_the_limit(gw: Gateway) -> None:
    """The attack run: 120 sign-ins sent at once all passed a check that only read the counter, and
    every one cost an argon2id hash."""
    burst = "198.51.100.77"
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda n: _sign_in(gw, burst, f"!!burst{n}!!", "x").status_code, range(40)))
    assert answers.count(401) <= LIMIT
    assert answers.count(429) >= 40 - LIMIT
    assert set(answers) <= {401, 429}


def test_wrong_second_factor_codes_count_against_the_address(gw: Gateway) -> None:
    """A re-attack run's reading: wrong authenticator codes counted only on each account, so one address
    holding many people's passwords guessed every account's codes at the account's own pace. They count
    on the address too, as wrong passwords do; each account here fails once only."""
    address = "198.51.100.30"
    answers = []
    for n in range(LIMIT + 1):
        name = f"coder{n}"
        add_user(gw.config_path, name, PASSWORD)
        with browser(gw) as own:
            own.headers["X-Forwarded-For"] = f"203.0.113.{100 + n}"
            assert login(own, name).status_code == 302
            secret = enroll_totp(own)
        with browser(gw) as guesser:
            guesser.headers["X-Forwarded-For"] = address
            signed = login(guesser, name)  # the password is right: not counted
            if signed.status_code != 302:
                answers.append(signed.status_code)  # past the limit: refused before the password
                continue
            guess = post_form(guesser, "/.gateway/mfa/totp", {"code": wrong_code(secret)})
            answers.append(guess.status_code)
    assert answers == [401] * LIMIT + [429], answers
