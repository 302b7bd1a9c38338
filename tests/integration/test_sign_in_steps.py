"""The second factor holds against an attacker who knows the password, on one node and on replicas.

Each test performs an attack from the outside attack run against real gateway processes and shows it
no longer gets through:

* cycling sign-ins (correct password, then wrong codes, again and again, on either replica) locks the
  account at ``regulation.max_failures`` like any other run of failures;
* a password-only session cannot mint recovery codes (the first-codes page after a passkey);
* a password-only session reaches only the second-factor pages (or, without a factor, enrollment) and
  sign-out: no session list, no "sign out everywhere else", no factor changes, on any host;
* a forced password change cannot be skipped: the session opens no page and no application, on any
  host, until the password is replaced;
* a mistyped code while enrolling an authenticator app keeps the seed the user has just scanned.

The module runs twice: on the embedded default (one gateway, no Redis) and on two replicas sharing
Redis and one database, where the attacker alternates between the replicas.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import (
    CSRF_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    browser,
    cookie,
    csrf,
    follow_handoff,
    login,
    post_form,
)
from tests.integration.test_signin_http import CREDENTIAL_RE, SECRET_RE, wrong_code
from tests.support.soft_authenticator import SoftAuthenticator
from tests.support.totp import oathtool

# A Redis database no other test module uses (session indexes are keyed by numeric user id).
REDIS_URL = "redis://127.0.0.1:6379/13"
CODES_RE = re.compile(r'<ul class="codes" id="recovery-codes">(.*?)</ul>', re.S)
MAX_FAILURES = 10
NEW_PASSWORD = "plum orbit quartz lantern " + secrets.token_hex(3)


@dataclass
class Site:
    """The gateways a browser may reach (one on the embedded default, two replicas otherwise)."""

    replicas: list[Gateway]
    db_path: Path
    wiki_host: str = "localhost"  # the mfa: none route

    @property
    def a(self) -> Gateway:
        return self.replicas[0]

    def replica(self, n: int) -> Gateway:
        return self.replicas[n % len(self.replicas)]

    def add_user(self, prefix: str, *extra: str) -> str:
        name = f"{prefix}{secrets.token_hex(4)}"
        add_user(self.a.config_path, name, PASSWORD, *extra)
        return name

    def audit(self, kind: str, subject: str) -> list[sqlite3.Row]:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(
                "SELECT * FROM audit_events WHERE kind = ? AND subject = ?", (kind, subject)
            ).fetchall()


@pytest.fixture(scope="module", params=["embedded", "replicas"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"steps-{request.param}")
    data_dir = tmp / "shared-data"
    ports = [free_port(), free_port()] if request.param == "replicas" else [free_port()]
    with run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {
                "name": "vault",
                "host": "127.0.0.1",
                "path": "/vault",
                "upstreams": [echo.url],
                "mfa": "webauthn",
            },
            {"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [echo.url], "mfa": "required"},
            {"name": "wiki", "host": "localhost", "path": "/", "upstreams": [echo.url], "mfa": "none"},
        ]
        common: dict[str, Any] = {
            "public_url": f"http://127.0.0.1:{ports[0]}",
            "data_dir": str(data_dir),
            "session": {"insecure_cookies": True},
            # No back-off waits before the lock (they are tested in the regulation unit tests).
            "regulation": {
                "free_attempts": MAX_FAILURES - 1,
                "max_failures": MAX_FAILURES,
                "lock_time": "15m",
                # Every failure here comes from one address: the account's counter is what is tested
                # (the address's, which wrong codes count on too, in test_address_attempts).
                "address_failures": 0,
            },
            # One recovery code: "all codes used" is one sign-in away.
            "mfa": {"recovery_codes": 1},
            "threat": {"enabled": False},
        }
        if request.param == "replicas":
            # A namespace of this run's own: session indexes are keyed by user id, which a fresh
            # database hands out again, so an earlier run's sessions would count as this user's.
            common["state"] = {"redis_url": REDIS_URL, "namespace": f"steps{secrets.token_hex(4)}:"}
        with run_gateway(tmp / "r0", gateway_config(tmp / "r0", ports[0], routes, **common)) as first:
            if len(ports) == 1:
                yield Site([first], data_dir / "gateway.db")
                return
            with run_gateway(tmp / "r1", gateway_config(tmp / "r1", ports[1], routes, **common)) as second:
                yield Site([first, second], data_dir / "gateway.db")


# -- helpers ---------------------------------------------------------------------------------------


def on(gw: Gateway) -> httpx.Client:
    return browser(gw)


_USED_STEPS: dict[str, int] = {}


def next_code(secret: str) -> str:
    """A code the gateway accepts now and has not seen: each step's code works once per secret.

    It is the current step's code, or the next step's when the current one was used (the gateway
    accepts one step of drift either way, so a step boundary passing in between does no harm).
    """
    used = _USED_STEPS.get(secret, 0)
    # When both usable steps are spent, a fresh one comes with the next 30-second step.
    wait_until(lambda: used + 1 <= int(time.time() // 30) + 1, timeout=35, interval=0.2, what="a fresh step")
    step = max(used + 1, int(time.time() // 30))
    _USED_STEPS[secret] = step
    return oathtool(secret, step * 30)


def enroll_totp(client: httpx.Client) -> tuple[str, list[str]]:
    """Enroll an authenticator app; returns its secret and the recovery codes shown."""
    secret, done = _confirm_app(client)
    assert done.status_code == 200, done.text
    return secret, codes_in(done.text)


def _confirm_app(client: httpx.Client) -> tuple[str, httpx.Response]:
    """Open the enrollment page and confirm its seed with the current code; the seed and the answer."""
    page = client.get("/.gateway/account/enroll")
    assert page.status_code == 200, page.text
    secret_m, credential_m = SECRET_RE.search(page.text), CREDENTIAL_RE.search(page.text)
    assert secret_m, page.text
    assert credential_m, page.text
    done = post_form(
        client,
        "/.gateway/account/totp/confirm",
        {"credential_id": credential_m.group(1), "code": next_code(secret_m.group(1))},
    )
    return secret_m.group(1), done


def add_app(client: httpx.Client) -> str:
    """Add another authenticator app (not the first: no codes are shown); returns its secret."""
    secret, done = _confirm_app(client)
    assert done.status_code in (200, 302, 303), done.text
    return secret


def codes_in(html: str) -> list[str]:
    found = CODES_RE.search(html)
    return re.findall(r"<li>([^<]+)</li>", found.group(1)) if found else []


def enrolled(site: Site, prefix: str) -> tuple[str, str, list[str]]:
    user = site.add_user(prefix)
    with on(site.a) as client:
        assert login(client, user).status_code == 302
        secret, codes = enroll_totp(client)
        assert post_form(client, "/.gateway/logout").status_code == 303
    return user, secret, codes


def get(
    gw: Gateway, session_id: str | None, path: str, *, host: str = "127.0.0.1", html: bool = True
) -> httpx.Response:
    headers = {"Host": host, "Accept": "text/html" if html else "application/json"}
    if session_id:
        headers["Cookie"] = f"{SESSION_COOKIE}={session_id}"
    return httpx.get(f"{gw.url}{path}", headers=headers, follow_redirects=False, timeout=30.0)


def reaches_app(gw: Gateway, session_id: str, user: str, *, host: str) -> bool:
    resp = get(gw, session_id, "/probe", host=host, html=False)
    return resp.status_code == 200 and dict(resp.json()["headers"]).get("x-gateway-user") == user


def api_post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(path, json=body, headers={"x-csrftoken": csrf(client), "Accept": "application/json"})


def register_passkey(
    client: httpx.Client, origin: str, key: SoftAuthenticator | None = None
) -> httpx.Response:
    """Register a passkey (``key``, or a new one) through the JSON API as webauthn.js does; returns
    the verify answer."""
    options = api_post(client, "/.gateway/api/webauthn/register/options", {"discoverable": True})
    assert options.status_code == 200, options.text
    key = key or SoftAuthenticator(origin=origin)
    credential = json.loads(key.create(options.text))
    return api_post(
        client, "/.gateway/api/webauthn/register/verify", {"credential": credential, "name": "Key"}
    )


def one_time_password(site: Site, user: str, words: str) -> str:
    """An administrator's one-time password for ``user`` (``gateway user set-password
    --must-change-password``), returned."""
    one_time = f"{words} {secrets.token_hex(3)}"
    result = run_cli(
        "user",
        "set-password",
        user,
        "--must-change-password",
        "--password-stdin",
        "--config",
        str(site.a.config_path),
        stdin=one_time + "\n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return one_time


def held_for_second_factor(resp: httpx.Response) -> bool:
    """The answer a half-signed-in session gets: the MFA page for browsers, 403 for scripts."""
    if resp.status_code in (302, 303):
        return resp.headers["location"].startswith("/.gateway/mfa")
    if resp.status_code == 403 and resp.headers.get("content-type", "").startswith("application/json"):
        return bool(resp.json().get("error") == "mfa-required")
    return False


# -- 1. unlimited second-factor guessing --------------------------------------------------------------


@pytest.mark.peer
def test_cycling_sign_ins_locks_at_the_limit(site: Site) -> None:
    user, secret, _ = enrolled(site, "cycle")
    bad = wrong_code(secret)
    failures = 0
    waiting: str | None = None
    sign_ins = 0
    # Sign in with the correct password, then guess codes; start over on the other replica.
    while failures < MAX_FAILURES:
        with on(site.replica(sign_ins)) as attacker:
            resp = login(attacker, user)
            assert resp.status_code == 302, (failures, resp.text)
            assert resp.headers["location"].startswith("/.gateway/mfa")
            sign_ins += 1
            waiting = cookie(attacker)
            for _ in range(3):
                if failures == MAX_FAILURES:
                    break
                resp = post_form(attacker, "/.gateway/mfa/totp", {"code": bad, "rd": ""})
                assert resp.status_code == 401, (failures, resp.text)
                failures += 1
    assert sign_ins > 3  # the guesses really were spread over several sign-ins

    # Locked, on every replica: the correct password is refused before it is checked...
    for n in range(len(site.replicas)):
        with on(site.replica(n)) as owner:
            resp = login(owner, user)
            assert resp.status_code == 429, resp.text
            assert cookie(owner) is None
    # ...and the correct code in the waiting one-factor session too; it never reaches the app.
    assert waiting is not None
    with on(site.replica(1)) as attacker:
        csrf(attacker)  # the CSRF cookie first, from the sign-in page, as a browser would have it
        attacker.cookies.set(SESSION_COOKIE, waiting)
        resp = post_form(attacker, "/.gateway/mfa/totp", {"code": next_code(secret), "rd": ""})
        assert resp.status_code == 429, resp.text
    assert held_for_second_factor(get(site.a, waiting, "/probe", html=False))
    locks = site.audit("account.locked", user)
    assert len(locks) == 1
    assert json.loads(locks[0]["details"])["failures"] == MAX_FAILURES


@pytest.mark.peer
def test_a_parallel_burst_of_codes_gets_no_more_guesses_than_the_limit(site: Site) -> None:
    """The outside review's attack: with the password, 200 wrong TOTP codes at once on one waiting
    session got ~170 checked against a limit of 10, because each passed the lock check before any
    failure was counted. Now attempts are reserved before their code is compared: 60 at once, over
    every replica, get at most the limit checked (401) and the rest refused (429)."""
    user, secret, _ = enrolled(site, "burst")
    bad = wrong_code(secret)
    with on(site.a) as attacker:
        assert login(attacker, user).status_code == 302
        waiting, token = cookie(attacker), csrf(attacker)
    assert waiting is not None

    def guess(n: int) -> int:
        gw = site.replica(n)
        cookies = {SESSION_COOKIE: waiting, CSRF_COOKIE: token}
        with httpx.Client(base_url=gw.url, cookies=cookies, follow_redirects=False, timeout=60.0) as client:
            form = {"code": bad, "rd": "", "_csrf_token": token}
            return client.post("/.gateway/mfa/totp", data=form).status_code

    with ThreadPoolExecutor(max_workers=30) as pool:
        answers = list(pool.map(guess, range(60)))
    assert set(answers) <= {401, 429}, answers
    assert 1 <= answers.count(401) <= MAX_FAILURES, answers
    # However the burst fell, the account is locked now or one more guess locks it; never more.
    checked = answers.count(401)
    for _ in range(MAX_FAILURES - checked):
        with on(site.a) as attacker:
            assert login(attacker, user).status_code == 302
            assert post_form(attacker, "/.gateway/mfa/totp", {"code": bad, "rd": ""}).status_code == 401
    with on(site.replica(1)) as owner:
        assert login(owner, user).status_code == 429
    locks = site.audit("account.locked", user)
    assert len(locks) == 1
    assert json.loads(locks[0]["details"])["failures"] == MAX_FAILURES


@pytest.mark.peer
def test_a_completed_sign_in_still_forgives_earlier_failures(site: Site) -> None:
    user, secret, _ = enrolled(site, "forgive")
    with on(site.a) as owner:
        assert login(owner, user).status_code == 302
        for _ in range(MAX_FAILURES - 1):
            assert post_form(owner, "/.gateway/mfa/totp", {"code": wrong_code(secret)}).status_code == 401
        done = post_form(owner, "/.gateway/mfa/totp", {"code": next_code(secret)})
        assert done.status_code in (302, 303), done.text
        assert post_form(owner, "/.gateway/logout").status_code == 303
    # The count starts afresh: nine more failures do not lock.
    with on(site.replica(1)) as owner:
        assert login(owner, user).status_code == 302
        for _ in range(MAX_FAILURES - 1):
            assert post_form(owner, "/.gateway/mfa/totp", {"code": wrong_code(secret)}).status_code == 401
    assert site.audit("account.locked", user) == []


# -- 2. recovery codes for a password-only session ---------------------------------------------------------


@pytest.mark.peer
def test_used_up_recovery_codes_are_not_reissued_to_a_password_only_session(site: Site) -> None:
    user, _, codes = enrolled(site, "spent")
    assert len(codes) == 1
    with on(site.a) as owner:  # the owner spends the last code
        assert login(owner, user).status_code == 302
        assert post_form(owner, "/.gateway/mfa/recovery", {"code": codes[0]}).status_code in (302, 303)
        assert post_form(owner, "/.gateway/logout").status_code == 303
    for n in range(len(site.replicas)):
        with on(site.replica(n)) as attacker:
            assert login(attacker, user).status_code == 302
            for path in ("/.gateway/account/first-codes", "/.gateway/account/first-codes?x=1"):
                resp = attacker.get(path)
                assert codes_in(resp.text) == []
                assert held_for_second_factor(resp), (resp.status_code, resp.headers)
            resp = post_form(attacker, "/.gateway/account/recovery")
            assert codes_in(resp.text) == []
            assert held_for_second_factor(resp)


@pytest.mark.peer
def test_a_passkey_registered_without_its_codes_page_gives_no_codes_later(site: Site) -> None:
    user = site.add_user("passkey")
    with on(site.a) as owner:
        assert login(owner, user).status_code == 302
        done = register_passkey(owner, site.a.url)
        assert done.status_code == 200, done.text
        assert done.json()["redirect"] == "/.gateway/account/first-codes"
        # The owner closes the tab instead of following it; later signs out.
        assert post_form(owner, "/.gateway/logout").status_code == 303
    with on(site.replica(1)) as attacker:
        assert login(attacker, user).status_code == 302
        resp = attacker.get("/.gateway/account/first-codes")
        assert codes_in(resp.text) == []
        assert held_for_second_factor(resp)


@pytest.mark.peer
def test_the_codes_page_after_a_first_passkey_shows_codes_once(site: Site) -> None:
    user = site.add_user("once")
    with on(site.a) as owner:
        assert login(owner, user).status_code == 302
        assert register_passkey(owner, site.a.url).status_code == 200
        first = owner.get("/.gateway/account/first-codes")
        assert first.status_code == 200
        assert len(codes_in(first.text)) == 1
        again = site.replica(1)
        second = get(again, cookie(owner), "/.gateway/account/first-codes")
        assert second.status_code in (302, 303)
        assert codes_in(second.text) == []


@pytest.mark.peer
def test_registering_a_passkey_is_not_using_one(site: Site) -> None:
    """The attack: a phished password and authenticator-app code register the attacker's own passkey,
    which used to count as a passkey use and opened a route that asks for a passkey. Only using a
    registered passkey does."""
    user, secret, _ = enrolled(site, "downgrade")
    with on(site.a) as attacker:
        assert login(attacker, user).status_code == 302
        assert post_form(
            attacker, "/.gateway/mfa/totp", {"code": next_code(secret), "rd": ""}
        ).status_code in (
            302,
            303,
        )
        session = cookie(attacker)
        assert session is not None
        assert reaches_app(site.a, session, user, host="127.0.0.1")
        vault = get(site.a, session, "/vault/secret", html=False)
        assert vault.status_code == 403, vault.text
        key = SoftAuthenticator(origin=site.a.url)
        done = register_passkey(attacker, site.a.url, key)
        assert done.status_code == 200, done.text
        for n in range(len(site.replicas)):
            vault = get(site.replica(n), cookie(attacker), "/vault/secret", html=False)
            assert vault.status_code == 403, vault.text
            assert vault.json()["error"] == "mfa-required"
        # The control: using the passkey (here the attacker's own) is what a passkey route asks for.
        options = api_post(attacker, "/.gateway/api/mfa/webauthn/options", {})
        assert options.status_code == 200, options.text
        used = api_post(
            attacker, "/.gateway/api/mfa/webauthn/verify", {"credential": json.loads(key.get(options.text))}
        )
        assert used.status_code == 200, used.text
        assert get(site.a, cookie(attacker), "/vault/secret", html=False).status_code == 200


@pytest.mark.peer
def test_a_passkey_answer_relayed_into_another_browser_signs_nothing_in(site: Site) -> None:
    """The attack: whoever holds the password signs in too, in their own browser (here on the other
    replica), and presents the owner's passkey answer (relayed, or read off the owner's machine)
    before the owner does. Challenges were bound to the user only, so the attacker's session became
    two-factor. Now a challenge is bound to the browser and the sign-in that asked for it."""
    user = site.add_user("relay")
    key = SoftAuthenticator(origin=site.a.url)
    with on(site.a) as enrolling:
        assert login(enrolling, user).status_code == 302
        assert register_passkey(enrolling, site.a.url, key).status_code == 200
    with on(site.a) as owner, on(site.replica(1)) as attacker:
        assert login(owner, user).status_code == 302
        assert login(attacker, user).status_code == 302
        options = api_post(owner, "/.gateway/api/mfa/webauthn/options", {})
        assert options.status_code == 200, options.text
        answer = {"credential": json.loads(key.get(options.text))}
        relayed = api_post(attacker, "/.gateway/api/mfa/webauthn/verify", answer)
        assert (relayed.status_code, relayed.json()["error"]) == (400, "webauthn-failed"), relayed.text
        assert held_for_second_factor(get(site.a, cookie(attacker), "/probe", html=False))
        assert api_post(owner, "/.gateway/api/mfa/webauthn/verify", answer).status_code == 200
        assert reaches_app(site.a, cookie(owner) or "", user, host="127.0.0.1")
        assert held_for_second_factor(get(site.a, cookie(attacker), "/probe", html=False))
    # A passkey sign-in: nobody is signed in yet; the browser is its CSRF cookie.
    with on(site.a) as owner, on(site.replica(1)) as attacker:
        options = api_post(owner, "/.gateway/api/login/passkey/options", {})
        assert options.status_code == 200, options.text
        answer = {"credential": json.loads(key.get(options.text))}
        relayed = api_post(attacker, "/.gateway/api/login/passkey/verify", answer)
        assert (relayed.status_code, relayed.json()["error"]) == (400, "webauthn-failed"), relayed.text
        assert cookie(attacker) is None
        assert api_post(owner, "/.gateway/api/login/passkey/verify", answer).status_code == 200
        assert reaches_app(site.a, cookie(owner) or "", user, host="127.0.0.1")


@pytest.mark.peer
def test_removing_the_factors_first_does_not_make_a_passkey_the_first(site: Site) -> None:
    """The attack on the fix above: a phished password and code remove the owner's factors (the
    session is fresh), so the attacker's passkey counted as the person's "first" factor and passed
    a passkey route (and renewed any max_age, as often as the attacker liked)."""
    user, secret, _ = enrolled(site, "first-again")
    with on(site.a) as attacker:
        assert login(attacker, user).status_code == 302
        signed = post_form(attacker, "/.gateway/mfa/totp", {"code": next_code(secret), "rd": ""})
        assert signed.status_code in (302, 303)
        portal = attacker.get("/.gateway/account")
        removals = re.findall(r'action="(/\.gateway/account/factors/totp/\d+/remove)"', portal.text)
        assert removals, portal.text
        for action in removals:
            assert post_form(attacker, action).status_code == 303
        key = SoftAuthenticator(origin=site.a.url)
        options = api_post(attacker, "/.gateway/api/webauthn/register/options", {"discoverable": True})
        assert options.status_code == 200, options.text
        done = api_post(
            attacker,
            "/.gateway/api/webauthn/register/verify",
            {"credential": json.loads(key.create(options.text)), "name": "Mine"},
        )
        assert done.status_code == 200, done.text
        vault = get(site.a, cookie(attacker), "/vault/secret", html=False)
        assert vault.status_code == 403, vault.text
        assert vault.json()["error"] == "mfa-required"


# -- 4. what a one-factor session may do -------------------------------------------------------------


@pytest.mark.peer
def test_a_password_only_session_reaches_only_the_second_factor_and_sign_out(site: Site) -> None:
    user, secret, _ = enrolled(site, "half")
    with on(site.a) as owner:
        assert login(owner, user).status_code == 302
        assert post_form(owner, "/.gateway/mfa/totp", {"code": next_code(secret)}).status_code in (
            302,
            303,
        )
        owner_session = cookie(owner)
        assert owner_session is not None
        owner_hash = next(s["id"] for s in owner.get("/.gateway/api/sessions").json() if s["current"])
    assert reaches_app(site.a, owner_session, user, host="127.0.0.1")

    with on(site.replica(1)) as attacker:
        assert login(attacker, user).status_code == 302
        half = cookie(attacker)
        assert half is not None
        # The auth host (on a route's host these pages are the auth host's: test_page_hosts_http.py).
        for host in ("127.0.0.1",):
            for path in (
                "/.gateway/account",
                "/.gateway/account/password",
                "/.gateway/account/enroll",
                "/.gateway/account/first-codes",
            ):
                assert held_for_second_factor(get(site.a, half, path, host=host)), (host, path)
            for path in ("/.gateway/api/me", "/.gateway/api/sessions"):
                resp = get(site.replica(1), half, path, host=host, html=False)
                assert held_for_second_factor(resp), (host, path, resp.status_code, resp.text)
                assert "user_agent" not in resp.text
                assert "127.0.0.1" not in resp.text
        # The unsafe acts, as forms and as API calls: refused, and nothing changes.
        for path in (
            "/.gateway/account/sessions/revoke-others",
            f"/.gateway/account/sessions/{owner_hash}/revoke",
            "/.gateway/account/recovery",
            "/.gateway/account/factors/totp/1/remove",
            "/.gateway/account/factors/totp/1/rename",
        ):
            resp = post_form(attacker, path, {"name": "pwned"})
            assert held_for_second_factor(resp), (path, resp.status_code)
        resp = attacker.delete(
            f"/.gateway/api/sessions/{owner_hash}",
            headers={"x-csrftoken": csrf(attacker), "Accept": "application/json"},
        )
        assert held_for_second_factor(resp), resp.text
        resp = api_post(attacker, "/.gateway/api/webauthn/register/options", {"discoverable": True})
        assert held_for_second_factor(resp), resp.text
        # The owner's session lives on, with its factor list unchanged.
        assert reaches_app(site.a, owner_session, user, host="127.0.0.1")
        # What the session may do: the second-factor page, and sign out.
        assert attacker.get("/.gateway/mfa").status_code == 200
        assert post_form(attacker, "/.gateway/logout").status_code == 303
        assert get(site.a, half, "/.gateway/account").headers["location"].startswith("/.gateway/login")


@pytest.mark.peer
def test_a_user_without_a_second_factor_may_only_enroll_one(site: Site) -> None:
    user = site.add_user("fresh")
    with on(site.a) as client:
        assert login(client, user).status_code == 302
        one = cookie(client)
        resp = get(site.a, one, "/.gateway/account")
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/.gateway/account/enroll")
        sessions = get(site.replica(1), one, "/.gateway/api/sessions", html=False)
        assert sessions.status_code == 403
        assert sessions.json()["error"] == "mfa-required"
        assert client.get("/.gateway/account/enroll").status_code == 200
        # Once enrolled, the whole portal is theirs.
        enroll_totp(client)
        assert client.get("/.gateway/account").status_code == 200


# -- 5. forced password change -------------------------------------------------------------------------


@pytest.mark.peer
def test_a_forced_password_change_cannot_be_skipped_on_any_host(site: Site) -> None:
    user = site.add_user("forced", "--must-change-password")
    with on(site.a) as client:
        resp = login(client, user, rd=f"http://{site.wiki_host}:{site.a.port}/")
        assert resp.status_code == 302
        assert resp.headers["location"].startswith("/.gateway/account/password")
        held = cookie(client)
        assert held is not None

        def password_page(resp: httpx.Response) -> bool:
            if resp.status_code in (302, 303):
                location = resp.headers["location"]
                return "/.gateway/account/password" in location and "/.gateway/handoff" not in location
            return resp.status_code == 403 and resp.json().get("error") == "password-change-required"

        for gw in site.replicas:
            for host in ("127.0.0.1", site.wiki_host):
                # The applications, also the one that asks for no second factor...
                assert password_page(get(gw, held, "/probe", host=host)), (gw.port, host)
                assert password_page(get(gw, held, "/probe", host=host, html=False)), (gw.port, host)
                if host != "127.0.0.1":
                    continue  # a route's host has no such pages: they are the auth host's
                # ...and every gateway page but the password change and sign-out.
                for path in ("/.gateway/account", "/.gateway/mfa", "/.gateway/account/enroll"):
                    assert password_page(get(gw, held, path, host=host)), (gw.port, host, path)
                assert password_page(get(gw, held, "/.gateway/api/me", host=host, html=False))
        # No hand-off of the held session to another host either.
        resp = client.get("/.gateway/login", params={"rd": f"http://{site.wiki_host}:{site.a.port}/x"})
        assert password_page(resp)

        page = client.get("/.gateway/account/password")
        assert page.status_code == 200
        done = post_form(
            client,
            "/.gateway/account/password",
            {"current": PASSWORD, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD, "rd": ""},
        )
        assert done.status_code in (302, 303), done.text
        assert done.headers["location"].startswith("/.gateway/mfa")
        free = cookie(client)
        assert free is not None
        assert free != held  # a new id once the hold is lifted; the old one is dead
    assert get(site.a, held, "/probe", host=site.wiki_host, html=False).status_code == 401
    assert reaches_app(site.replica(1), free, user, host=site.wiki_host)


@pytest.mark.peer
def test_a_one_time_password_alone_cannot_replace_a_password_guarded_by_a_second_factor(site: Site) -> None:
    """An attack run: an administrator gave an account that has an authenticator app a one-time
    password; whoever read it signed in, chose the new password at once and so signed the owner out
    everywhere, without a code. The account's second factor now comes first, on every replica."""
    user, secret, _ = enrolled(site, "guarded")
    owner = two_factor_session(site.a, user, "/.gateway/mfa/totp", {"code": next_code(secret)})
    one_time = one_time_password(site, user, "amber falcon meadow")
    taken = "stolen passphrase " + secrets.token_hex(3)
    for n in range(len(site.replicas)):
        with on(site.replica(n)) as reader:
            resp = login(reader, user, one_time)
            assert held_for_second_factor(resp), resp.headers.get("location")
            assert held_for_second_factor(reader.get("/.gateway/account/password"))
            form = {"current": one_time, "new": taken, "confirm": taken, "rd": ""}
            assert held_for_second_factor(post_form(reader, "/.gateway/account/password", form))
    assert reaches_app(site.replica(1), owner, user, host="127.0.0.1")
    with on(site.a) as client:
        assert login(client, user, taken).status_code == 401
    # With the code, the change goes on as before.
    with on(site.replica(1)) as client:
        assert held_for_second_factor(login(client, user, one_time))
        done = post_form(client, "/.gateway/mfa/totp", {"code": next_code(secret), "rd": ""})
        assert done.status_code in (302, 303), done.text
        assert done.headers["location"].startswith("/.gateway/account/password")
        form = {"current": one_time, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD, "rd": ""}
        changed = post_form(client, "/.gateway/account/password", form)
        assert changed.status_code in (302, 303), changed.text
        # The code was given before the change: on to the application, not asked again (a re-attack
        # run had the second-factor page ask for the code just used, a failure if typed again).
        assert not changed.headers["location"].startswith("/.gateway/mfa")
        onward = client.get(changed.headers["location"])
        assert onward.status_code == 200
        assert "<title>Your account" in onward.text  # no rd: the portal
        renewed = cookie(client)
    assert renewed is not None
    assert reaches_app(site.a, renewed, user, host="127.0.0.1")


@pytest.mark.peer
def test_a_session_opened_with_a_replaced_one_time_password_ends(site: Site) -> None:
    """An attack run: someone who read the administrator's one-time password signs in with it (held
    for the change), the administrator then sets another password, and the held session's stale hold
    was lifted: a full sign-in without the new password, in which the reader enrolled their own factor."""
    user = site.add_user("stale-hold", "--must-change-password")
    with on(site.a) as reader:
        resp = login(reader, user)
        assert resp.headers["location"].startswith("/.gateway/account/password")
        held = cookie(reader)
        assert held is not None
        result = run_cli(
            "user",
            "set-password",
            user,
            "--password-stdin",
            "--config",
            str(site.a.config_path),
            stdin="a replacement passphrase 77\n",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        page = reader.get("/.gateway/account/password")
        assert page.status_code in (302, 303)
        assert page.headers["location"].startswith("/.gateway/login")
        for gw in site.replicas:
            assert get(gw, held, "/probe", host="127.0.0.1", html=False).status_code == 401
        assert reader.get("/.gateway/account/enroll").status_code in (302, 303, 401)


@pytest.mark.peer
def test_a_forced_password_change_holds_after_a_passwordless_passkey_sign_in(site: Site) -> None:
    """The attack: an administrator's one-time password is read by someone else. The owner signs in
    with a passkey alone, which used to skip the change; the one-time password stayed valid for the
    reader to replace the owner's password later."""
    user = site.add_user("passless")
    key = SoftAuthenticator(origin=site.a.url)
    with on(site.a) as client:
        assert login(client, user).status_code == 302
        done = register_passkey(client, site.a.url, key)
        assert done.status_code == 200, done.text
    one_time = one_time_password(site, user, "violet harbour cobalt")
    with on(site.replica(1)) as owner:
        options = api_post(owner, "/.gateway/api/login/passkey/options", {})
        assert options.status_code == 200, options.text
        signed = api_post(
            owner, "/.gateway/api/login/passkey/verify", {"credential": json.loads(key.get(options.text))}
        )
        assert signed.status_code == 200, signed.text
        assert signed.json()["redirect"].startswith("/.gateway/account/password")
        held = cookie(owner)
        assert held is not None
        for gw in site.replicas:
            for host in ("127.0.0.1", site.wiki_host):
                resp = get(gw, held, "/probe", host=host, html=False)
                assert (resp.status_code, resp.json().get("error")) == (403, "password-change-required")
        done = post_form(
            owner,
            "/.gateway/account/password",
            {"current": one_time, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD, "rd": ""},
        )
        assert done.status_code in (302, 303), done.text
        renewed = cookie(owner)
        assert renewed is not None
        assert reaches_app(site.a, renewed, user, host="127.0.0.1")


# -- 9. enrollment keeps the scanned secret -------------------------------------------------------------


@pytest.mark.peer
def test_a_wrong_code_during_enrollment_keeps_the_scanned_secret(site: Site) -> None:
    user = site.add_user("typo")
    with on(site.a) as client:
        assert login(client, user).status_code == 302
        page = client.get("/.gateway/account/enroll")
        secret_m, credential_m = SECRET_RE.search(page.text), CREDENTIAL_RE.search(page.text)
        assert secret_m
        assert credential_m
        secret, credential = secret_m.group(1), credential_m.group(1)
        wrong = post_form(
            client,
            "/.gateway/account/totp/confirm",
            {"credential_id": credential, "code": wrong_code(secret)},
        )
        assert wrong.status_code == 400
        again_secret, again_credential = SECRET_RE.search(wrong.text), CREDENTIAL_RE.search(wrong.text)
        assert again_secret
        assert again_credential
        assert (again_secret.group(1), again_credential.group(1)) == (secret, credential)
        done = post_form(
            client,
            "/.gateway/account/totp/confirm",
            {"credential_id": credential, "code": next_code(secret)},
        )
        assert done.status_code == 200
        assert len(codes_in(done.text)) == 1


# -- 10. a changed second factor ends the sessions it vouched for ----------------------------------------


def two_factor_session(gw: Gateway, user: str, path: str, form: dict[str, str]) -> str:
    """Sign in with the password and a second factor on ``gw``; returns the session id."""
    with on(gw) as client:
        assert login(client, user).status_code == 302
        done = post_form(client, path, {**form, "rd": ""})
        assert done.status_code in (302, 303), done.text
        session = cookie(client)
    assert session is not None
    assert reaches_app(gw, session, user, host="127.0.0.1")
    return session


def signed_out_everywhere(site: Site, session: str, user: str) -> None:
    # Within the broadcast's bound the embedded node's other worker drops its cached copy too.
    wait_until(
        lambda: not any(reaches_app(gw, session, user, host="127.0.0.1") for gw in site.replicas),
        timeout=3,
        what="the other session to end on every replica",
    )
    for gw in site.replicas:
        assert get(gw, session, "/probe", html=False).status_code == 401


@pytest.mark.peer
def test_removing_a_lost_authenticator_signs_out_the_sessions_it_opened(site: Site) -> None:
    """A phone with the authenticator app is stolen, and the thief knows the password: their session must
    not outlive the factor the owner removes (an admin's reset of the factors already ended sessions)."""
    user, secret, codes = enrolled(site, "lost")
    thief = two_factor_session(site.replica(1), user, "/.gateway/mfa/totp", {"code": next_code(secret)})
    with on(site.a) as owner:
        assert login(owner, user).status_code == 302
        assert post_form(owner, "/.gateway/mfa/recovery", {"code": codes[0]}).status_code in (302, 303)
        portal = owner.get("/.gateway/account")
        assert "Removing a factor signs out your other sessions." in portal.text
        factor = re.search(r"/\.gateway/account/factors/totp/(\d+)/remove", portal.text)
        assert factor, portal.text
        # The only factor stays until another is added (a re-attack run: removing the last one left
        # the account to whoever enrolled next with the password); the new phone first.
        only = post_form(owner, f"/.gateway/account/factors/totp/{factor.group(1)}/remove")
        assert "only%20second%20factor" in only.headers["location"]
        add_app(owner)
        done = post_form(owner, f"/.gateway/account/factors/totp/{factor.group(1)}/remove")
        assert done.status_code == 303
        assert "1%20other%20session%20signed%20out" in done.headers["location"]
        mine = cookie(owner)
    assert mine is not None
    signed_out_everywhere(site, thief, user)
    assert reaches_app(site.replica(1), mine, user, host="127.0.0.1")  # the owner's own stays
    (ended,) = [e for e in site.audit("session.revoked", user) if "factor.removed" in e["details"]]
    assert json.loads(ended["details"]) == {"others": 1, "other_browsers": 1, "after": "factor.removed"}


@pytest.mark.peer
def test_new_recovery_codes_sign_out_the_sessions_the_old_ones_opened(site: Site) -> None:
    user, secret, codes = enrolled(site, "leaked")
    thief = two_factor_session(site.replica(1), user, "/.gateway/mfa/recovery", {"code": codes[0]})
    with on(site.a) as owner:
        assert login(owner, user).status_code == 302
        assert post_form(owner, "/.gateway/mfa/totp", {"code": next_code(secret)}).status_code in (302, 303)
        fresh = post_form(owner, "/.gateway/account/recovery")
        assert fresh.status_code == 200
        assert len(codes_in(fresh.text)) == 1
        assert "1 other session signed out." in fresh.text
        mine = cookie(owner)
    assert mine is not None
    signed_out_everywhere(site, thief, user)
    assert reaches_app(site.a, mine, user, host="127.0.0.1")


@pytest.mark.peer
def test_a_new_password_leaves_no_copy_of_an_old_cookie_working(site: Site) -> None:
    """Outside review: a password changed because of a suspected compromise left the same browser's
    session on an application's host alive, and the current session kept its id, so a copied cookie
    of either kept working. Now every session but the changing one ends, and that one gets a new id."""
    user, secret, codes = enrolled(site, "moved")
    thief = two_factor_session(site.replica(1), user, "/.gateway/mfa/recovery", {"code": codes[0]})
    with on(site.a) as owner:
        assert login(owner, user).status_code == 302
        assert post_form(owner, "/.gateway/mfa/totp", {"code": next_code(secret)}).status_code in (302, 303)
        copied = cookie(owner)
        app = f"http://{site.wiki_host}:{site.a.port}/probe"
        handed = follow_handoff(owner, owner.get("/.gateway/login", params={"rd": app}).headers["location"],
                                connect=site.a.url)  # fmt: skip
        app_copy = handed.cookies.get(SESSION_COOKIE)
        assert copied is not None
        assert app_copy is not None
        assert reaches_app(site.a, app_copy, user, host=site.wiki_host)
        # The portal lists the application host's session as this browser's, not as another one.
        listed = owner.get("/.gateway/account")
        assert f"this browser, on {site.wiki_host}" in listed.text
        assert owner.get("/.gateway/account/password").status_code == 200
        form = {"current": PASSWORD, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD, "rd": ""}
        done = post_form(owner, "/.gateway/account/password", form)
        assert done.status_code == 303, done.text
        # The thief's session is the one other; this browser's own on the application's host ends
        # too, but is not counted as someone else's.
        notice = unquote(done.headers["location"])
        assert "1 other session signed out." in notice, notice
        assert "This browser signs in to the applications again at its next visit." in notice
        mine = cookie(owner)
    assert mine not in (None, copied)
    assert mine is not None
    signed_out_everywhere(site, thief, user)
    signed_out_everywhere(site, copied, user)
    for gw in site.replicas:
        assert get(gw, app_copy, "/probe", host=site.wiki_host, html=False).status_code == 401
    assert reaches_app(site.replica(1), mine, user, host="127.0.0.1")
