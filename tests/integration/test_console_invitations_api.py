"""Invitation links over real HTTP: the console's API creates an account with a link (or sends a new
one), and the user opens it on the gateway's own page and chooses their password there. The fixtures
are ``test_admin_api``'s (``boss`` an admin with a fresh TOTP factor, ``carol`` a signed-in non-admin).

The path a user takes: the link shows the password rules; a weak password is refused with the rule
(the link keeps working); a good one is set, the link is used up and the browser goes to the sign-in
page, where the password works and the second factor is enrolled as for everyone. And what must fail:
a used, superseded, forged or malformed link (one answer, 410, for all), an invitation for an account
with a password unless it is cleared (destructive: a reason, a fresh second factor), a non-admin, no
session, a cross-origin or non-JSON request, bad input. The token is in no audit record and no log line.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.harness import add_user, run_cli
from tests.integration.http_client import PASSWORD, browser, login, post_form
from tests.integration.test_admin_api import Site, api, assert_error, boss, carol, site
from tests.integration.test_console_users_api import (
    create,
    detail,
    needs_sign_in,
    signs_in,
    strict,
)
from tests.integration.test_signin_http import enroll_totp

__all__ = ["boss", "carol", "site", "strict"]

GOOD = "a brand new passphrase 77"
INVALID = "This invitation link is not valid any more; ask an administrator for a new one."


def invite_path(url: str) -> str:
    path = urlsplit(url).path
    assert path.startswith("/.gateway/invite/"), url
    return path


def opens(client: httpx.Client, path: str) -> httpx.Response:
    return client.get(path, headers={"Accept": "text/html"})


def accept(client: httpx.Client, path: str, new: str, confirm: str | None = None) -> httpx.Response:
    return post_form(client, path, {"new": new, "confirm": new if confirm is None else confirm})


def assert_invalid(resp: httpx.Response) -> None:
    assert resp.status_code == 410, resp.text
    assert INVALID in resp.text
    assert "Choose your password" not in resp.text


def no_secret_recorded(site: Site, token: str) -> None:
    rows = [dict(r) for r in _all_audit(site)]
    assert rows
    assert not [r for r in rows if token in json.dumps(r, default=str)]
    assert token not in site.gw.log()


def _all_audit(site: Site) -> list[Any]:
    with sqlite3.connect(site.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM audit_events ORDER BY id").fetchall()


# -- the whole way ----------------------------------------------------------------------------------


def test_create_with_an_invitation_then_the_user_chooses_a_password(site: Site, boss: httpx.Client) -> None:
    created = create(site, boss, "Vera", email="vera@example.com", mode="invitation", reason="new hire")
    assert created["username"] == "vera"
    assert created["one_time_password"] is None
    assert created["must_change_password"] is False
    url = created["invitation_url"]
    token = url.rsplit("/", 1)[1]
    assert url == f"{site.gw.config['public_url']}/.gateway/invite/{token}"
    assert len(token) == 43
    body = detail(site, boss, "vera")
    assert body["password"] == "none"
    assert body["invitation"]["expires_at"] > body["invitation"]["issued_at"]
    fingerprint = body["invitation"]["fingerprint"]
    create_event = [r for r in site.audit("admin.user.create") if r["subject"] == "vera"][-1]
    assert json.loads(create_event["details"])["invitation"] == fingerprint
    assert json.loads(create_event["details"])["mode"] == "invitation"
    (issued,) = [r for r in site.audit("user.invitation.issued") if r["subject"] == "vera"]
    assert issued["actor"] == "user:boss"

    path = invite_path(url)
    with browser(site.gw) as vera:
        # No password yet: nothing signs in.
        assert login(vera, "vera", "").status_code == 401
        page = opens(vera, path)
        assert page.status_code == 200, page.text
        assert "Choose your password" in page.text
        assert "vera" in page.text
        assert "At least" in page.text  # the rules, before the first failure
        # A weak password is refused with the rule it breaks, and the link keeps working.
        weak = accept(vera, path, "password1234")
        assert weak.status_code == 400, weak.text
        assert "common" in weak.text.lower()
        assert "Choose your password" in weak.text
        different = accept(vera, path, GOOD, GOOD + "!")
        assert different.status_code == 400
        assert "not the same" in different.text
        assert opens(vera, path).status_code == 200
        # A good one: set, the link used up, off to the sign-in page (not signed in).
        done = accept(vera, path, GOOD)
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/.gateway/login?login_hint=vera"
        assert needs_sign_in(vera)
        # Used: the same answer as any other bad link.
        assert_invalid(opens(vera, path))
        assert_invalid(accept(vera, path, "another fine passphrase 88"))
        # The password works; the second factor is next, as for every first sign-in.
        signed = login(vera, "vera", GOOD)
        assert signed.status_code in (302, 303)
        step = vera.get("/.gateway/account", headers={"Accept": "text/html"})
        assert step.headers["location"].startswith("/.gateway/account/enroll")
        enroll_totp(vera)
    body = detail(site, boss, "vera")
    assert (body["password"], body["invitation"]) == ("set", None)
    accepted = [r for r in site.audit("user.invitation.accepted") if r["subject"] == "vera"]
    assert [(r["actor"], r["outcome"]) for r in accepted] == [("user:vera", "success")]
    assert json.loads(accepted[0]["details"]) == {"invitation": fingerprint}
    refused = [
        r
        for r in site.audit("user.invitation.accepted")
        if r["outcome"] == "failure" and json.loads(r["details"])["invitation"] == fingerprint
    ]
    assert refused, "a used link's refusal is audited (by its fingerprint)"
    no_secret_recorded(site, token)


def test_a_new_invitation_supersedes_the_old_link(site: Site, boss: httpx.Client) -> None:
    first = create(site, boss, "walt", mode="invitation")["invitation_url"]
    again = api(site, boss, "POST", "/api/users/walt/invite", json={"reason": "lost the mail"})
    assert again.status_code == 200, again.text
    answer = again.json()
    second = answer["invitation_url"]
    assert second != first
    assert answer["sessions_ended"] is None
    assert "earlier links no longer work" in answer["message"]
    with browser(site.gw) as walt:
        assert_invalid(opens(walt, invite_path(first)))
        assert_invalid(accept(walt, invite_path(first), GOOD))
        assert accept(walt, invite_path(second), GOOD).status_code == 303
    event = [r for r in site.audit("admin.user.invite") if r["subject"] == "walt"][-1]
    details = json.loads(event["details"])
    assert (event["actor"], event["outcome"], details["reason"]) == ("user:boss", "success", "lost the mail")
    assert len(details["invitation"]) == 12  # a fingerprint, never the token
    no_secret_recorded(site, second.rsplit("/", 1)[1])


@pytest.mark.parametrize(
    "path",
    [
        "/.gateway/invite/forged",
        "/.gateway/invite/" + "A" * 43,
        "/.gateway/invite/" + "A" * 44,
        "/.gateway/invite/%E2%80%AEabc",
    ],
)
def test_every_bad_link_gets_the_same_answer(site: Site, path: str) -> None:
    with browser(site.gw) as stranger:
        assert_invalid(opens(stranger, path))
        assert_invalid(accept(stranger, path, GOOD))


# -- an account that has a password, or is disabled ---------------------------------------------------


def test_replacing_a_password_with_an_invitation_is_explicit_and_destructive(
    site: Site, boss: httpx.Client
) -> None:
    add_user(site.gw.config_path, "xena", PASSWORD)
    xena = signs_in(site, "xena", PASSWORD)
    refused = api(site, boss, "POST", "/api/users/xena/invite", json={"reason": "r"})
    assert_error(refused, 409, "invitation-refused")
    assert "clear_password" in refused.json()["message"]
    no_reason = api(site, boss, "POST", "/api/users/xena/invite", json={"clear_password": True})
    assert_error(no_reason, 400, "bad-request")
    assert not needs_sign_in(xena)  # nothing changed
    assert detail(site, boss, "xena")["password"] == "set"
    cleared = api(
        site, boss, "POST", "/api/users/xena/invite", json={"clear_password": True, "reason": "leaked"}
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["sessions_ended"] == 1
    assert needs_sign_in(xena)
    assert login(xena, "xena", PASSWORD).status_code == 401  # the old password is gone
    assert detail(site, boss, "xena")["password"] == "none"
    assert accept(xena, invite_path(cleared.json()["invitation_url"]), GOOD).status_code == 303
    assert login(xena, "xena", GOOD).status_code in (302, 303)
    (event,) = [r for r in site.audit("user.password_cleared") if r["subject"] == "xena"]
    assert event["actor"] == "user:boss"
    outcomes = [
        (r["outcome"], json.loads(r["details"]).get("error"))
        for r in site.audit("admin.user.invite")
        if r["subject"] == "xena"
    ]
    assert outcomes == [("failure", "invitation-refused"), ("failure", "bad-request"), ("success", None)]
    xena.close()


def test_a_reset_with_an_invitation_leaves_a_phished_password_nothing_to_enrol(
    site: Site, boss: httpx.Client
) -> None:
    """The attack: the person lost their phone, and whoever phished their password waits. A reset of
    the factors alone let the password sign in and enrol the attacker's own authenticator first;
    with ``invite`` the password goes first, then the factors, and only the link's holder gets in."""
    add_user(site.gw.config_path, "zed", PASSWORD)
    zed = signs_in(site, "zed", PASSWORD)
    enroll_totp(zed)
    reset = api(
        site, boss, "POST", "/api/users/zed/reset-factors", json={"reason": "lost phone", "invite": True}
    )
    assert reset.status_code == 200, reset.text
    body = reset.json()
    assert body["action"] == "reset-factors"
    assert "Removed 1 authenticator app(s)" in body["message"]
    assert "A new invitation link for zed" in body["message"]
    assert body["sessions_ended"] == 1
    assert needs_sign_in(zed)
    state = detail(site, boss, "zed")
    assert (state["password"], state["totp"], state["factors"]) == ("none", 0, [])
    with browser(site.gw) as attacker:
        assert login(attacker, "zed", PASSWORD).status_code == 401
        assert attacker.get("/.gateway/account/enroll").status_code in (302, 303)
    path = invite_path(body["invitation_url"])
    assert accept(zed, path, GOOD).status_code == 303
    assert login(zed, "zed", GOOD).status_code in (302, 303)
    (issued,) = [r for r in site.audit("user.invitation.issued") if r["subject"] == "zed"]
    assert json.loads(issued["details"])["factors_reset"] is True
    (done,) = [r for r in site.audit("admin.user.reset_factors") if r["subject"] == "zed"]
    noted = json.loads(done["details"])
    assert (noted["invite"], noted["invitation"]) == (True, json.loads(issued["details"])["invitation"])
    no_secret_recorded(site, path.rsplit("/", 1)[1])
    zed.close()


def test_a_reset_with_an_invitation_of_a_disabled_account_changes_nothing(
    site: Site, boss: httpx.Client
) -> None:
    add_user(site.gw.config_path, "yves", PASSWORD)
    yves = signs_in(site, "yves", PASSWORD)
    enroll_totp(yves)
    yves.close()
    assert api(site, boss, "POST", "/api/users/yves/disable", json={"reason": "r"}).status_code == 200
    refused = api(site, boss, "POST", "/api/users/yves/reset-factors", json={"reason": "r", "invite": True})
    assert_error(refused, 409, "invitation-refused")
    state = detail(site, boss, "yves")
    assert (state["password"], state["totp"]) == ("set", 1)


def test_the_cli_resets_with_an_invitation_and_prints_the_link(site: Site, boss: httpx.Client) -> None:
    add_user(site.gw.config_path, "wyn", PASSWORD)
    config = str(site.gw.config_path)
    refused = run_cli("user", "invite", "wyn", "--config", config)
    assert refused.returncode == 2, refused.stderr
    assert "has a password" in refused.stderr
    assert detail(site, boss, "wyn")["password"] == "set"
    proc = run_cli("user", "reset-mfa", "wyn", "--invite", "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert "withdrew the password" in proc.stderr
    path = invite_path(proc.stdout.strip())
    again = run_cli("user", "invite", "wyn", "--config", config)
    assert again.returncode == 0, again.stderr
    with browser(site.gw) as wyn:
        assert login(wyn, "wyn", PASSWORD).status_code == 401
        assert_invalid(opens(wyn, path))  # the newer link replaced it
        newer = invite_path(again.stdout.strip())
        assert accept(wyn, newer, GOOD).status_code == 303
        assert login(wyn, "wyn", GOOD).status_code in (302, 303)
    no_secret_recorded(site, newer.rsplit("/", 1)[1])


def test_a_disabled_account_gets_no_invitation_and_its_link_dies(site: Site, boss: httpx.Client) -> None:
    url = create(site, boss, "yuri", mode="invitation")["invitation_url"]
    assert api(site, boss, "POST", "/api/users/yuri/disable", json={"reason": "r"}).status_code == 200
    assert_error(api(site, boss, "POST", "/api/users/yuri/invite", json={}), 409, "invitation-refused")
    with browser(site.gw) as yuri:
        assert_invalid(opens(yuri, invite_path(url)))
        assert_invalid(accept(yuri, invite_path(url), GOOD))
    assert detail(site, boss, "yuri")["password"] == "none"
    # The attack run: the account was disabled because the link leaked, then enabled again; the old
    # link set its password and enrolled its first factor.
    assert api(site, boss, "POST", "/api/users/yuri/enable", json={"reason": "r"}).status_code == 200
    with browser(site.gw) as thief:
        assert_invalid(opens(thief, invite_path(url)))
        assert_invalid(accept(thief, invite_path(url), GOOD))
    assert detail(site, boss, "yuri")["password"] == "none"


@pytest.mark.parametrize("shut", [("disable",), ("privacy", "restrict")])
def test_a_link_does_not_work_again_after_the_cli_shut_the_account_and_opened_it(
    site: Site, boss: httpx.Client, shut: tuple[str, ...]
) -> None:
    name = f"ulla{len(shut)}"
    url = create(site, boss, name, mode="invitation")["invitation_url"]
    config = ("--config", str(site.gw.config_path))
    steps: list[tuple[str, ...]]
    if shut == ("disable",):
        steps = [("user", "disable", name), ("user", "enable", name)]
    else:
        steps = [
            ("privacy", "restrict", name, "--verified-by", "signed letter"),
            ("privacy", "restrict", name, "--verified-by", "signed letter", "--lift"),
        ]
    for step in steps:
        done = run_cli(*step, *config)
        assert done.returncode == 0, done.stdout + done.stderr
    with browser(site.gw) as thief:
        assert_invalid(opens(thief, invite_path(url)))
    assert detail(site, boss, name)["password"] == "none"


def test_a_link_for_a_deleted_account_does_not_open_the_next_account_given_its_id(
    site: Site, boss: httpx.Client
) -> None:
    """Outside review: SQLite gives a deleted account's id (the highest) to the next new account, and
    the link named only the id, so zack's unused link set a password on dan, an account made later
    for someone who signs in through an identity provider."""
    url = create(site, boss, "zack", mode="invitation")["invitation_url"]
    zack_id = detail(site, boss, "zack")["id"]
    config = str(site.gw.config_path)
    deleted = run_cli("user", "delete", "zack", "--yes", "--config", config)
    assert deleted.returncode == 0, deleted.stderr
    made = run_cli("user", "add", "dan", "--no-password", "--config", config)
    assert made.returncode == 0, made.stderr
    assert detail(site, boss, "dan")["id"] == zack_id  # the id really was given again
    with browser(site.gw) as stranger:
        assert_invalid(opens(stranger, invite_path(url)))
        assert_invalid(accept(stranger, invite_path(url), GOOD))
    assert detail(site, boss, "dan")["password"] == "none"


# -- who may use it ---------------------------------------------------------------------------------


def test_a_non_admin_or_nobody_cannot_invite(site: Site, carol: httpx.Client) -> None:
    body = {"username": "mallory2", "mode": "invitation"}
    assert_error(api(site, None, "POST", "/api/users", json=body), 401, "authentication-required")
    assert_error(api(site, carol, "POST", "/api/users", json=body), 403, "admin-role-required")
    assert_error(api(site, carol, "POST", "/api/users/carol/invite", json={}), 403, "admin-role-required")
    assert_error(api(site, None, "POST", "/api/users/carol/invite", json={}), 401, "authentication-required")
    assert not [r for r in site.audit("user.created") if r["subject"] == "mallory2"]
    assert not [r for r in site.audit("user.invitation.issued") if r["subject"] == "carol"]


def test_cross_origin_non_json_and_bad_input_are_refused(site: Site, boss: httpx.Client) -> None:
    create(site, boss, "zora", mode="invitation")
    forged = api(
        site, boss, "POST", "/api/users/zora/invite", json={}, headers={"Origin": "http://evil.example"}
    )
    assert_error(forged, 403, "cross-origin-refused")
    form = api(
        site, boss, "POST", "/api/users/zora/invite", content=b"reason=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert_error(form, 415, "unsupported-media-type")
    for bad in ({"clear_password": "yes"}, {"reason": "x" * 2001}, {"token": "mine"}):
        assert_error(api(site, boss, "POST", "/api/users/zora/invite", json=bad), 400, "bad-request")
    assert_error(api(site, boss, "POST", "/api/users/nobody/invite", json={}), 404, "unknown-account")
    issued = [r for r in site.audit("user.invitation.issued") if r["subject"] == "zora"]
    assert len(issued) == 1  # the creation's only


def test_clearing_a_password_with_an_older_factor_must_step_up(strict: Site) -> None:
    admin = signs_in(strict, "boss", PASSWORD)
    enroll_totp(admin)
    add_user(strict.gw.config_path, "quin", PASSWORD)
    quin = signs_in(strict, "quin", PASSWORD)
    time.sleep(1.5)  # the scenario is the factor's age: past admin.destructive_reauth_max_age (1 s)
    body = {"clear_password": True, "reason": "r"}
    refused = assert_error(
        api(strict, admin, "POST", "/api/users/quin/invite", json=body), 403, "step-up-required"
    )
    assert refused["location"].endswith("/.gateway/mfa?need=any")
    # ...nothing changed.
    assert not needs_sign_in(quin)
    assert detail(strict, admin, "quin")["password"] == "set"
    created = api(strict, admin, "POST", "/api/users", json={"username": "rosa", "mode": "invitation"})
    assert created.status_code == 201, created.text  # not destructive: no step-up
    event = [r for r in strict.audit("admin.user.invite") if r["subject"] == "quin"][-1]
    assert json.loads(event["details"]) == {"reason": "r", "error": "step-up-required"}
    admin.close()
    quin.close()
