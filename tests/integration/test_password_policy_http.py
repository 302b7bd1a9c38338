"""The password page of a running gateway refuses weak passwords, says why, and changes nothing.

One real gateway (``python -m gateway serve``, embedded default: SQLite and in-process state) in front
of the echo app; httpx plays the browser through the real sign-in and password forms. Two paths reach
the one handler: the forced first change (a user created with ``--must-change-password``, as the
quick start's admin is) and a voluntary change (a user who has just enrolled an authenticator app,
so the session holds a fresh second factor; codes from Debian's ``oathtool``).

The attack: ``password1234`` was accepted as a new password by an outside attack run. Here it, and a
password built from the username, get a 400 naming the rule broken; the stored hash, the must-change
flag and the old password all stay as they were, and no change is recorded.
"""

from __future__ import annotations

import html
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import argon2
import httpx
import pytest

from tests.integration.harness import Gateway, add_user, free_port, gateway_config, run_echo, run_gateway
from tests.integration.http_client import PASSWORD, browser, login, post_form
from tests.integration.test_signin_http import enroll_totp

PASSWORD_PAGE = "/.gateway/account/password"
GOOD_NEW_PASSWORD = "an entirely different passphrase"
# The rules as the page states them before any failure, and the words each refusal names.
RULES_ON_PAGE = [
    "At least 12 characters",
    "Not built from your username, email address or name",
    "Not a commonly used or breached password",
    "a single dictionary word or name",
    "repeated or sequential characters",
    "Not your current password",
]


@dataclass
class Site:
    gw: Gateway
    db_path: Path

    def user_row(self, username: str) -> sqlite3.Row:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM users WHERE username = ?", (username,)
            ).fetchone()
        assert row is not None
        return row

    def changes(self, username: str) -> list[str]:
        with sqlite3.connect(self.db_path) as conn:
            rows = conn.execute(
                "SELECT outcome FROM audit_events WHERE kind = 'user.password_changed' AND subject = ?",
                (username,),
            ).fetchall()
        return [outcome for (outcome,) in rows]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("password-policy")
    port = free_port()
    with run_echo() as echo:
        routes = [{"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [echo.url], "mfa": "none"}]
        config = gateway_config(tmp, port, routes, session={"insecure_cookies": True})
        with run_gateway(tmp, config) as gw:
            yield Site(gw, tmp / "data" / "gateway.db")


def _sign_in(site: Site, client: httpx.Client, username: str, *extra: str) -> None:
    add_user(site.gw.config_path, username, PASSWORD, *extra)
    answer = login(client, username)
    assert answer.status_code in (302, 303), answer.text


def _change(client: httpx.Client, new: str) -> httpx.Response:
    return post_form(client, PASSWORD_PAGE, {"current": PASSWORD, "new": new, "confirm": new, "rd": ""})


def _assert_refused(site: Site, client: httpx.Client, username: str, new: str, reason: str) -> None:
    before = site.user_row(username)
    answer = _change(client, new)
    assert answer.status_code == 400, answer.text
    assert reason in html.unescape(answer.text)
    assert new not in answer.text  # never echoed, not even in a form field
    after = site.user_row(username)
    assert after["password_hash"] == before["password_hash"]
    assert after["must_change_password"] == before["must_change_password"]
    argon2.PasswordHasher().verify(after["password_hash"], PASSWORD)
    assert "success" not in site.changes(username)


@pytest.mark.parametrize(
    "forced",
    [
        pytest.param(True, id="forced-first-change"),
        # A voluntary change needs a fresh second factor: an authenticator app enrolled with oathtool.
        pytest.param(False, id="voluntary-change", marks=pytest.mark.peer),
    ],
)
def test_weak_new_passwords_get_a_400_that_names_the_rule_and_change_nothing(
    site: Site, forced: bool
) -> None:
    username = "frank" if forced else "grace"
    extra = ["--must-change-password"] if forced else []
    with browser(site.gw) as client:
        _sign_in(site, client, username, "--email", f"{username}.walsh@example.org", *extra)
        if not forced:
            enroll_totp(client)
        page = client.get(PASSWORD_PAGE)
        assert page.status_code == 200, page.text
        text = html.unescape(page.text)
        for rule in RULES_ON_PAGE:  # said before the first failure
            assert rule in text
        assert 'role="alert"' not in page.text

        _assert_refused(site, client, username, "password1234", "list of commonly used or breached passwords")
        _assert_refused(site, client, username, f"{username.title()}2024!!!", "built from your username")
        _assert_refused(site, client, username, f"walsh.{username}.1990", "built from your username")
        _assert_refused(site, client, username, PASSWORD, "this is your current one")

        # The same form with a good password goes through: the refusals above were the policy.
        assert _change(client, GOOD_NEW_PASSWORD).status_code in (302, 303)
    row = site.user_row(username)
    argon2.PasswordHasher().verify(row["password_hash"], GOOD_NEW_PASSWORD)
    assert row["must_change_password"] == 0
    assert site.changes(username) == ["success"]
