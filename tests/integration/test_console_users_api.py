"""The Users section's JSON API over real HTTP: a real gateway with its admin listener (the fixtures of
``test_admin_api``: ``boss`` is an admin with a fresh TOTP factor, ``carol`` a signed-in non-admin).

Each change is checked where it matters: a created account signs in with its one-time password and is
held on the password page; a revoked session's next request needs a sign-in; a disabled account cannot
sign in. And the attacks: no session, a non-admin, a cross-origin or non-JSON change, bad input (400,
nothing changed), a destructive action with a second factor older than
``admin.destructive_reauth_max_age`` (403 step-up, nothing changed); every action is audited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.harness import add_user, free_port, gateway_config, run_echo, run_gateway, wait_until
from tests.integration.http_client import PASSWORD, browser, cookie, login, post_form
from tests.integration.test_admin_api import (
    POLICY,
    Site,
    api,
    assert_error,
    boss,
    carol,
    signed_in,
    site,
    wait_admin_healthy,
)
from tests.integration.test_signin_http import enroll_totp

__all__ = ["boss", "carol", "site"]


def audited(site: Site, action: str) -> list[dict[str, Any]]:
    return [dict(r) for r in site.audit(f"admin.user.{action}")]


def create(site: Site, admin: httpx.Client, username: str, **extra: Any) -> dict[str, Any]:
    resp = api(site, admin, "POST", "/api/users", json={"username": username, **extra})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def detail(site: Site, admin: httpx.Client, username: str) -> dict[str, Any]:
    resp = api(site, admin, "GET", f"/api/users/{username}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def signs_in(site: Site, username: str, password: str) -> httpx.Client:
    client = browser(site.gw)
    resp = login(client, username, password)
    assert resp.status_code in (302, 303), resp.text
    return client


def held_on_password_page(client: httpx.Client) -> bool:
    resp = client.get("/.gateway/account")
    return resp.status_code == 403 and resp.json()["error"] == "password-change-required"


def needs_sign_in(client: httpx.Client) -> bool:
    resp = client.get("/.gateway/account")
    return resp.status_code in (302, 303) and "/.gateway/login" in resp.headers["location"]


def signed_out(*clients: httpx.Client, count: int | None = None) -> bool:
    """Whether the ended sessions are refused (all of ``clients``, or exactly ``count`` of them).

    The admin listener's broadcast ends them on the gateway's workers at once; a worker that has not
    heard it yet trusts its cached copy for at most a second (``session`` cache): on a loaded machine
    the answer may take that long, so this waits a little before saying no.
    """
    want = len(clients) if count is None else count
    try:
        wait_until(lambda: sum(needs_sign_in(c) for c in clients) == want, timeout=3, interval=0.05)
    except TimeoutError:
        return False
    return True


# -- who may use it ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/users"),
        ("GET", "/api/users/carol"),
        ("POST", "/api/users"),
        ("POST", "/api/users/carol/disable"),
        ("DELETE", "/api/users/carol/sessions"),
    ],
)
def test_without_a_session_it_is_401_and_as_a_non_admin_403(
    site: Site, carol: httpx.Client, method: str, path: str
) -> None:
    body = {"username": "mallory", "reason": "x"} if path == "/api/users" else {"reason": "x"}
    kwargs: dict[str, Any] = {"json": body} if method != "GET" else {}
    assert_error(api(site, None, method, path, **kwargs), 401, "authentication-required")
    assert_error(api(site, carol, method, path, **kwargs), 403, "admin-role-required")
    assert not [r for r in site.audit("user.created") if r["subject"] == "mallory"]


def test_cross_origin_and_non_json_changes_are_refused(site: Site, boss: httpx.Client) -> None:
    forged = api(
        site, boss, "POST", "/api/users", json={"username": "forged1"},
        headers={"Origin": "http://evil.example"},
    )  # fmt: skip
    assert_error(forged, 403, "cross-origin-refused")
    form = api(
        site, boss, "POST", "/api/users", content=b"username=forged2",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert_error(form, 415, "unsupported-media-type")
    listed = api(site, boss, "GET", "/api/users", params={"q": "forged"}).json()
    assert listed["users"] == []


# -- reading ----------------------------------------------------------------------------------------


def test_list_and_search(site: Site, boss: httpx.Client) -> None:
    everyone = api(site, boss, "GET", "/api/users").json()
    names = [u["username"] for u in everyone["users"]]
    assert {"boss", "carol", "root"} <= set(names)
    assert names == sorted(names)
    found = api(site, boss, "GET", "/api/users", params={"q": "CAR"}).json()
    assert [u["username"] for u in found["users"]] == ["carol"]
    (row,) = found["users"]
    assert (row["status"], row["password"], row["totp"]) == ("active", "set", 0)
    paged = api(site, boss, "GET", "/api/users", params={"limit": 1}).json()
    assert len(paged["users"]) == 1
    assert paged["more"] is True
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"q": "x" * 201}):
        assert_error(api(site, boss, "GET", "/api/users", params=params), 400, "bad-request")


def test_a_user_in_detail(site: Site, boss: httpx.Client, carol: httpx.Client) -> None:
    body = detail(site, boss, "carol")
    assert body["username"] == "carol"
    assert body["status"] == "active"
    assert body["factors"] == []
    assert body["sessions"], "carol is signed in"
    session = body["sessions"][0]
    assert len(session["id"]) == 64
    assert session["ip"] == "127.0.0.1"
    assert session["level"] == "one-factor"
    assert [e["kind"] for e in body["history"]][-1] == "user.created"
    assert body["roles_view"]["effective"] == []
    assert body["roles_view"]["is_admin"] is False

    admin = detail(site, boss, "boss")
    assert admin["factors"][0]["kind"] == "totp"
    assert admin["roles_view"]["policy"][0]["csv"] == "g, user:boss, admin"
    assert {"role": "admin", "via": "user:boss"} in admin["roles_view"]["effective"]
    assert admin["roles_view"]["is_admin"] is True
    # An email alias names the account too; nobody is a 404 that says what to do.
    assert_error(api(site, boss, "GET", "/api/users/nobody"), 404, "unknown-account")
    assert_error(api(site, boss, "GET", "/api/users/" + "x" * 400), 400, "bad-request")


# -- creating ---------------------------------------------------------------------------------------


def test_create_gives_a_one_time_password_that_must_be_changed(site: Site, boss: httpx.Client) -> None:
    created = create(site, boss, "Dave", email="dave@example.com", roles=["dev"], reason="new hire")
    assert created["username"] == "dave"
    assert created["must_change_password"] is True
    password = created["one_time_password"]
    assert len(password) >= 20
    # It signs in, and the session is held on the password page until the password is changed.
    dave = signs_in(site, "dave", password)
    assert held_on_password_page(dave)
    body = detail(site, boss, "dave")
    assert (body["password"], body["roles"], body["email"]) == ("must-change", ["dev"], "dave@example.com")
    assert body["sessions"][0]["password_change"] is True
    # Audited as the admin, with the reason; the password is in no record.
    (event,) = audited(site, "create")[-1:]
    assert (event["actor"], event["subject"], event["outcome"]) == ("user:boss", "dave", "success")
    assert json.loads(event["details"])["reason"] == "new hire"
    assert all(password not in r["details"] for r in site.audit("user.created"))
    dave.close()


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"username": "carol"}, 409, "account-exists"),
        ({"username": "eve", "email": "Dora@Example.com"}, 409, "account-exists"),
        ({"username": "has space"}, 400, "invalid-account"),
        ({"username": "eve", "roles": ["two words"]}, 400, "invalid-account"),
        ({"username": "eve", "admin": True}, 400, "bad-request"),
        ({"username": "eve", "mode": "magic"}, 400, "bad-request"),
        ({"username": ""}, 400, "bad-request"),
        ({"username": "e" * 65}, 400, "bad-request"),
    ],
)
def test_bad_creations_are_refused_and_change_nothing(
    site: Site, boss: httpx.Client, dora: str, body: dict[str, Any], status: int, error: str
) -> None:
    before = len(site.audit("user.created"))
    assert_error(api(site, boss, "POST", "/api/users", json=body), status, error)
    assert len(site.audit("user.created")) == before
    assert not detail_exists(site, boss, "eve")


@pytest.fixture(scope="module")
def dora(site: Site, boss: httpx.Client) -> str:
    """An account whose email address is taken."""
    return str(create(site, boss, "dora", email="dora@example.com")["username"])


def detail_exists(site: Site, admin: httpx.Client, username: str) -> bool:
    return api(site, admin, "GET", f"/api/users/{username}").status_code == 200


# -- changing ---------------------------------------------------------------------------------------


def test_revoke_one_session_then_all(site: Site, boss: httpx.Client) -> None:
    password = create(site, boss, "frank")["one_time_password"]
    first, second = signs_in(site, "frank", password), signs_in(site, "frank", password)
    sessions = detail(site, boss, "frank")["sessions"]
    assert len(sessions) == 2
    target = sessions[0]["id"]
    # Not this user's session: nothing ends.
    someone_else = detail(site, boss, "carol")["sessions"][0]["id"]
    assert_error(
        api(site, boss, "DELETE", f"/api/users/frank/sessions/{someone_else}", json={}),
        404,
        "unknown-session",
    )
    assert_error(api(site, boss, "DELETE", "/api/users/frank/sessions/not-hex", json={}), 400, "bad-request")
    done = api(site, boss, "DELETE", f"/api/users/frank/sessions/{target}", json={"reason": "lost laptop"})
    assert done.status_code == 200, done.text
    assert done.json()["sessions_ended"] == 1
    assert [s["id"] for s in detail(site, boss, "frank")["sessions"]] == [sessions[1]["id"]]
    assert signed_out(first, second, count=1)
    # All: a reason is required (destructive).
    assert_error(api(site, boss, "DELETE", "/api/users/frank/sessions", json={}), 400, "bad-request")
    everything = api(site, boss, "DELETE", "/api/users/frank/sessions", json={"reason": "incident 7"})
    assert everything.status_code == 200, everything.text
    assert everything.json()["sessions_ended"] == 1
    assert signed_out(first, second)
    kinds = [(r["outcome"], json.loads(r["details"]).get("reason")) for r in audited(site, "revoke_session")]
    assert ("failure", "") in kinds
    assert ("success", "lost laptop") in kinds
    assert audited(site, "revoke_sessions")[-1]["outcome"] == "success"
    first.close()
    second.close()


def test_disable_and_enable(site: Site, boss: httpx.Client) -> None:
    add_user(site.gw.config_path, "gina", PASSWORD)
    gina = signs_in(site, "gina", PASSWORD)
    assert_error(api(site, boss, "POST", "/api/users/gina/disable", json={}), 400, "bad-request")
    assert not needs_sign_in(gina)
    done = api(site, boss, "POST", "/api/users/gina/disable", json={"reason": "left the company"})
    assert done.status_code == 200, done.text
    assert done.json()["sessions_ended"] == 1
    assert signed_out(gina)
    with browser(site.gw) as stranger:
        assert login(stranger, "gina").status_code == 401
    assert detail(site, boss, "gina")["status"] == "disabled"
    assert api(site, boss, "POST", "/api/users/gina/enable", json={}).status_code == 200
    assert login(gina, "gina").status_code in (302, 303)
    events = [(r["kind"], r["actor"]) for r in site.audit("user.disabled") + site.audit("user.enabled")]
    assert ("user.disabled", "user:boss") in events
    assert ("user.enabled", "user:boss") in events
    assert json.loads(audited(site, "disable")[-1]["details"])["reason"] == "left the company"
    gina.close()


def test_force_a_password_change(site: Site, boss: httpx.Client) -> None:
    add_user(site.gw.config_path, "hank", PASSWORD)
    hank = signs_in(site, "hank", PASSWORD)
    done = api(site, boss, "POST", "/api/users/hank/password-change", json={"end_sessions": True})
    assert done.status_code == 200, done.text
    assert done.json()["sessions_ended"] == 1
    assert signed_out(hank)
    login(hank, "hank")
    assert held_on_password_page(hank)
    changed = post_form(
        hank,
        "/.gateway/account/password",
        {"current": PASSWORD, "new": "a brand new passphrase 77", "confirm": "a brand new passphrase 77"},
    )
    assert changed.status_code == 303, changed.text
    assert detail(site, boss, "hank")["password"] == "set"
    assert_error(
        api(site, boss, "POST", "/api/users/hank/password-change", json={"end_sessions": "yes"}),
        400,
        "bad-request",
    )
    hank.close()


def test_reset_factors(site: Site, boss: httpx.Client) -> None:
    add_user(site.gw.config_path, "ivy", PASSWORD)
    ivy = signs_in(site, "ivy", PASSWORD)
    enroll_totp(ivy)
    assert detail(site, boss, "ivy")["totp"] == 1
    assert_error(api(site, boss, "POST", "/api/users/ivy/reset-factors", json={}), 400, "bad-request")
    done = api(site, boss, "POST", "/api/users/ivy/reset-factors", json={"reason": "lost phone"})
    assert done.status_code == 200, done.text
    body = detail(site, boss, "ivy")
    assert (body["totp"], body["factors"], body["recovery_codes_total"]) == (0, [], 0)
    assert signed_out(ivy)
    (event,) = [r for r in site.audit("user.mfa_reset") if r["subject"] == "ivy"]
    assert event["actor"] == "user:boss"
    assert audited(site, "reset_factors")[-1]["outcome"] == "success"
    ivy.close()


def test_roles(site: Site, boss: httpx.Client) -> None:
    add_user(site.gw.config_path, "jack", PASSWORD, "--role", "dev")
    jack = signs_in(site, "jack", PASSWORD)
    added = api(site, boss, "PUT", "/api/users/jack/roles", json={"roles": ["dev", "auditor"]})
    assert added.status_code == 200, added.text
    assert added.json()["sessions_ended"] is None
    assert not needs_sign_in(jack)  # an added role does not end a session
    body = detail(site, boss, "jack")
    assert body["roles"] == ["dev", "auditor"]
    assert {"role": "auditor", "via": "local role"} in body["roles_view"]["effective"]
    removed = api(site, boss, "PUT", "/api/users/jack/roles", json={"roles": ["auditor"], "reason": "moved"})
    assert removed.json()["sessions_ended"] == 1
    assert signed_out(jack)  # the session carried the removed role
    bad = api(site, boss, "PUT", "/api/users/jack/roles", json={"roles": ["a,b"]})
    assert_error(bad, 400, "invalid-account")
    assert detail(site, boss, "jack")["roles"] == ["auditor"]
    assert audited(site, "roles")[-1]["outcome"] == "failure"
    jack.close()


def test_actions_on_nobody_are_404_and_audited(site: Site, boss: httpx.Client) -> None:
    resp = api(site, boss, "POST", "/api/users/nobody/enable", json={"reason": "typo"})
    assert_error(resp, 404, "unknown-account")
    event = audited(site, "enable")[-1]
    assert (event["subject"], event["outcome"]) == ("nobody", "failure")


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("POST", "/api/users/carol/disable", {}),
        ("DELETE", "/api/users/carol/sessions", {}),
        ("POST", "/api/users/carol/reset-factors", {}),
        ("PUT", "/api/users/carol/roles", {"roles": ["auditor"]}),
    ],
)
@pytest.mark.parametrize(
    "reason",
    [
        "   ",
        "\n\t",
        "routine\n2026-12-05T19:53:00Z  admin.lockdown  user:boss2",
        "routine\u200b",
        "routine\n",
    ],
)
def test_a_blank_or_multi_line_reason_is_refused_and_changes_nothing(
    site: Site,
    boss: httpx.Client,
    carol: httpx.Client,
    method: str,
    path: str,
    extra: dict[str, Any],
    reason: str,
) -> None:
    """An attack run had all of these accepted with a reason of spaces, or one whose line break
    forged a line in the CLI's tables."""
    before = api(site, boss, "GET", "/api/users/carol").json()
    resp = api(site, boss, method, path, json={"reason": reason, **extra})
    assert_error(resp, 400, "bad-request")
    # Said in words, not as the pattern's forty character ranges.
    assert "regex" not in resp.json()["message"]
    assert "reason" in resp.json()["message"]
    assert api(site, boss, "GET", "/api/users/carol").json() == before


# -- a second factor too old for a destructive action -----------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A gateway whose destructive admin actions need a second factor used within the last second."""
    tmp = tmp_path_factory.mktemp("strict")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    with run_echo() as echo:
        config = gateway_config(
            tmp, port, [{"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"}],
            session={"insecure_cookies": True}, policy={"file": str(policy_path)},
            admin={"listen": f"127.0.0.1:{admin_port}", "destructive_reauth_max_age": "1s"},
        )  # fmt: skip
        with run_gateway(tmp, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            for user in ("boss", "kim"):
                add_user(gw.config_path, user, PASSWORD)
            yield Site(gw, admin_port, tmp / "data" / "gateway.db", policy_path)


def test_a_destructive_action_with_an_older_factor_must_step_up(strict: Site) -> None:
    admin = signed_in(strict, "boss")
    enroll_totp(admin)
    kim = signs_in(strict, "kim", PASSWORD)
    # The scenario is the factor's age: let it pass admin.destructive_reauth_max_age (1 s).
    time.sleep(1.5)
    for method, path in (
        ("POST", "/api/users/kim/disable"),
        ("POST", "/api/users/kim/reset-factors"),
        ("DELETE", "/api/users/kim/sessions"),
    ):
        body = assert_error(api(strict, admin, method, path, json={"reason": "r"}), 403, "step-up-required")
        assert body["location"].endswith("/.gateway/mfa?need=any")
    assert not needs_sign_in(kim)  # nothing changed
    assert detail(strict, admin, "kim")["status"] == "active"
    # Enabling lifts a lock as surely as lifting an incident does: it needs the recent factor too.
    assert_error(api(strict, admin, "POST", "/api/users/kim/enable", json={}), 403, "step-up-required")
    # Ordinary changes still pass with the factor fresh enough for admin work.
    changed = api(strict, admin, "POST", "/api/users/kim/password-change", json={})
    assert changed.status_code == 200
    # Nobody asked to end sessions: no word about them (a first-day run read a false store failure).
    assert changed.json()["message"] == "kim must choose a new password at the next sign-in."
    refused = [r for r in strict.audit("admin.user.disable") if r["outcome"] == "failure"]
    assert json.loads(refused[-1]["details"]) == {"reason": "r", "error": "step-up-required"}
    assert cookie(admin)
    admin.close()
    kim.close()
