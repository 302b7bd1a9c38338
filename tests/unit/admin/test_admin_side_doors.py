"""The admin API's limits, attacked through the other endpoints that reach the same end.

Two limits an outside review got around (:mod:`tests.unit.admin.console_app` runs the admin app in
process): ``admin.approvals: 2`` (one admin minting a second admin through local roles, or taking over
another admin's account, then approving their own proposal as that admin), and the destructive
actions' fresh second factor (adding an allow-all rule instead of replacing the policy, restricting
instead of disabling, enabling instead of lifting). Each test tries the way around, then the control.
"""

from __future__ import annotations

from functools import partial
from urllib.parse import quote

import httpx
import pytest

from gateway.privacy.register import Channel
from gateway.response.cases import Cases, CaseView
from gateway.settings.schema import PrivacySettings
from tests.unit.admin.console_app import POLICY, Console, Start

# An admin whose second factor is ten minutes old: fresh enough for the API (15 minutes), not for a
# destructive action (5 minutes).
TIRED = 600.0
OPS_ADMIN = POLICY + "g, ops, admin\ng, user:ghost, admin\n"


async def _account(site: Console, username: str, *, roles: tuple[str, ...] = ()) -> None:
    await site.services.identity.accounts.create(
        username=username, password="amber quarry lantern voyage", roles=roles, actor="test"
    )


async def _propose(site: Console, who: str, policy: str) -> int:
    made = await site.call(who, "POST", "/api/policy/proposals", json={"policy": policy, "reason": "x"})
    assert made.status_code == 201, made.text
    return int(made.json()["id"])


async def _listed_admins(site: Console, who: str, number: int) -> list[str]:
    """Whom proposal ``number`` makes an admin, as the proposals list shows ``who``."""
    listed = (await site.call(who, "GET", "/api/policy/proposals")).json()["proposals"]
    admins: list[str] = next((p["new_admins"] for p in listed if p["id"] == number), [])
    return admins


async def _approve_naming(site: Console, who: str, number: int, admins: list[str] | None) -> httpx.Response:
    body = {"reason": "ok", **({"new_admins": admins} if admins is not None else {})}
    return await site.call(who, "POST", f"/api/policy/proposals/{number}/approve", json=body)


async def _approve(site: Console, who: str, number: int) -> httpx.Response:
    """Approve as the console does: naming whom the proposal makes an admin, as its list shows them."""
    admins = await _listed_admins(site, who, number)
    return await _approve_naming(site, who, number, admins or None)


def _refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == reason, response.text


async def _act_on_case(site: Console, admin: str, users: list[str], action: str) -> httpx.Response:
    """Open an incident naming ``users`` and apply ``action`` to its accounts, as ``admin``."""
    case = await site.call(
        admin, "POST", "/api/incident-cases", json={"title": "t", "severity": "low", "users": users}
    )
    assert case.status_code == 201, case.text
    return await site.call(
        admin,
        "POST",
        f"/api/incident-cases/{case.json()['id']}/actions",
        json={"action": action, "reason": "x", "accounts": users},
    )


async def test_one_admin_cannot_mint_a_second_admin_to_approve_their_own_proposal(console: Start) -> None:
    site = await console(approvals=2, policy=OPS_ADMIN)
    await _account(site, "boss", roles=("admin",))
    await _account(site, "victim")
    boss = await site.session("boss")
    allow_all = OPS_ADMIN + "p, authenticated, *, /*, *, allow\n"
    proposed = await site.call(
        boss, "POST", "/api/policy/proposals", json={"policy": allow_all, "reason": "x"}
    )
    assert proposed.status_code == 201, proposed.text

    # The admin role as a local role, a local role the policy makes an admin, a name the policy names.
    for body in (
        {"username": "puppet", "roles": ["admin"], "mode": "password"},
        {"username": "puppet", "roles": ["ops"], "mode": "password"},
        {"username": "ghost", "mode": "invitation"},
    ):
        made = await site.call(boss, "POST", "/api/users", json=body)
        _refused(made, "second-admin-required")
        assert "/api/policy/proposals" in made.json()["message"]
    for name in ("puppet", "ghost"):
        assert await site.services.identity.accounts.find(name) is None
    for roles in (["admin"], ["viewer", "ops"]):
        regranted = await site.call(boss, "PUT", "/api/users/victim/roles", json={"roles": roles})
        _refused(regranted, "second-admin-required")
    victim = await site.services.identity.accounts.find("victim")
    assert victim is not None
    assert victim.roles == ""

    # A machine client holding the admin role, directly or through a role the policy makes an admin:
    # its tokens would open every application the admin role opens.
    for name, roles in (("shadow", ["admin"]), ("shadow2", ["viewer", "ops"])):
        made = await site.call(boss, "POST", "/api/service-accounts", json={"name": name, "roles": roles})
        _refused(made, "second-admin-required")
        assert f"g, client:{name}, admin" in made.json()["message"]
    listed = await site.call(boss, "GET", "/api/service-accounts")
    assert listed.json() == []

    # Controls: roles that make nobody an admin, and an admin's roles changed while they stay one.
    bot = await site.call(boss, "POST", "/api/service-accounts", json={"name": "bot", "roles": ["viewer"]})
    assert bot.status_code == 201, bot.text
    viewer = await site.call(
        boss, "POST", "/api/users", json={"username": "viewer1", "roles": ["viewer"], "mode": "password"}
    )
    assert viewer.status_code == 201, viewer.text
    kept = await site.call(boss, "PUT", "/api/users/boss/roles", json={"roles": ["admin", "viewer"]})
    assert kept.status_code == 200, kept.text
    assert (await site.services.policy.store.version()) == 1
    kinds = await site.audit_kinds()
    assert ("admin.user.create", "user:boss", "failure") in kinds
    assert ("admin.user.roles", "user:boss", "failure") in kinds


async def test_one_admin_cannot_take_over_another_admins_account(console: Start) -> None:
    """Resetting a second admin's factors and their password for an invitation link would let one
    admin sign in as the other; a non-admin's account is reset as before."""
    site = await console(approvals=2)
    for name in ("boss", "second", "carol"):
        await _account(site, name)
    boss = await site.session("boss")
    reset = await site.call(boss, "POST", "/api/users/second/reset-factors", json={"reason": "lost phone"})
    _refused(reset, "second-admin-required")
    assert "gateway user reset-mfa" in reset.json()["message"]
    invite = await site.call(
        boss, "POST", "/api/users/second/invite", json={"reason": "lost password", "clear_password": True}
    )
    _refused(invite, "second-admin-required")
    second = await site.services.identity.accounts.find("second")
    assert second is not None
    assert second.password_hash is not None

    # The same reset through an incident case that names the other admin.
    acted = await _act_on_case(site, boss, ["second"], "reset-mfa")
    _refused(acted, "second-admin-required")
    assert not [kind for kind, _, _ in await site.audit_kinds() if kind == "user.mfa_reset"]

    # A new email for the other admin: an identity provider's sign-in with that address would find
    # their account (an attack run). Their name may still be corrected.
    second_id = second.id
    moved = await site.call(
        boss,
        "POST",
        f"/api/privacy/users/{second_id}/rectify",
        json={"email": "me@evil.example", "verified_by": "x"},
    )
    _refused(moved, "second-admin-required")
    assert "gateway privacy rectify" in moved.json()["message"]
    # Erasing the other approver (a re-attack run), also refused: on the host.
    erased = await site.call(
        boss, "POST", f"/api/privacy/users/{second_id}/erase", json={"verified_by": "x", "reason": "x"}
    )
    _refused(erased, "second-admin-required")
    assert "gateway privacy erase" in erased.json()["message"]
    # Closing (erased after the retention period) and restricting them: the same (a re-attack run).
    shut_out: list[tuple[str, dict[str, object]]] = [("close", {}), ("restrict", {"restricted": True})]
    for right, extra in shut_out:
        shut = await site.call(
            boss,
            "POST",
            f"/api/privacy/users/{second_id}/{right}",
            json={**extra, "verified_by": "x", "reason": "x"},
        )
        _refused(shut, "second-admin-required")
        assert f"gateway privacy {right}" in shut.json()["message"]
    kept = await site.services.identity.accounts.find("second")
    assert kept is not None
    assert (kept.closed_at, kept.restricted) == (None, False)
    after = await site.services.identity.accounts.find("second")
    assert after is not None
    assert after.email == second.email
    carol = await site.services.identity.accounts.find("carol")
    assert carol is not None
    # Controls: a non-admin's account is reset as before, on the user page and through a case.
    controls: list[tuple[str, dict[str, object]]] = [
        ("/api/users/carol/reset-factors", {"reason": "lost phone"}),
        ("/api/users/carol/invite", {"reason": "lost password", "clear_password": True}),
        (f"/api/privacy/users/{second_id}/rectify", {"display_name": "Second", "verified_by": "x"}),
        (f"/api/privacy/users/{carol.id}/rectify", {"email": "carol@new.example", "verified_by": "x"}),
    ]
    for path, body in controls:
        done = await site.call(boss, "POST", path, json=body)
        assert done.status_code == 200, (path, done.text)
    acted = await _act_on_case(site, boss, ["carol"], "reset-mfa")
    assert acted.status_code == 200, acted.text


async def test_with_one_approval_an_admin_may_still_make_an_admin(console: Start) -> None:
    """The two-person refusals hold only where two admins are asked for."""
    site = await console(approvals=1)
    await _account(site, "boss", roles=("admin",))
    boss = await site.session("boss")
    made = await site.call(
        boss, "POST", "/api/users", json={"username": "deputy", "roles": ["admin"], "mode": "password"}
    )
    assert made.status_code == 201, made.text


async def test_every_way_to_a_destructive_end_needs_a_recent_factor(console: Start) -> None:
    site = await console()
    await _account(site, "boss", roles=("admin",))
    await _account(site, "victim")
    await _account(site, "locked")
    locked = await site.services.identity.accounts.find("locked")
    victim = await site.services.identity.accounts.find("victim")
    assert locked is not None
    assert victim is not None
    await site.services.identity.accounts.disable(locked.id, actor="system")
    victims_session = await site.session("victim")
    tired = await site.session("boss", factor_age=TIRED)
    allow_all = [
        {
            "ptype": "p",
            "subject": "authenticated",
            "route": "*",
            "path": "/*",
            "methods": "*",
            "effect": "allow",
        }
    ]
    grant = {"member": "user:victim", "role": "admin", "reason": "x"}
    side_doors = [
        ("POST", "/api/policy/rules", {"rules": allow_all, "reason": "x"}),
        ("POST", "/api/policy/roles", grant),
        (
            "DELETE",
            "/api/policy/rules",
            {"rules": [{"ptype": "g", "member": "user:boss", "role": "admin"}], "reason": "x"},
        ),
        ("DELETE", "/api/policy/roles", {"member": "user:second", "role": "admin", "reason": "x"}),
        ("PUT", "/api/users/victim/roles", {"roles": ["admin"]}),
        ("POST", "/api/users", {"username": "puppet", "roles": ["admin"], "mode": "password"}),
        ("POST", "/api/users/victim/password-change", {"end_sessions": True}),
        ("POST", "/api/users/locked/enable", {}),
        (
            "POST",
            f"/api/privacy/users/{victim.id}/restrict",
            {"restricted": True, "verified_by": "x", "reason": "x"},
        ),
        ("POST", f"/api/privacy/users/{victim.id}/close", {"verified_by": "x", "reason": "x"}),
        # A new email: an identity provider's sign-in finds an unlinked account by it.
        ("POST", f"/api/privacy/users/{victim.id}/rectify", {"email": "new@example.com", "verified_by": "x"}),
    ]
    # A service account with roles, and a token: a grant, and a credential that outlives the session.
    plain_bot = await site.call(tired, "POST", "/api/service-accounts", json={"name": "bot"})
    assert plain_bot.status_code == 201, plain_bot.text
    side_doors += [
        ("POST", "/api/service-accounts", {"name": "bot2", "roles": ["viewer"]}),
        ("POST", "/api/tokens", {"account": "bot", "routes": ["app"], "expires": "30d"}),
    ]
    for method, path, body in side_doors:
        refused = await site.call(tired, method, path, json=body)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["error"] == "step-up-required", (method, path, refused.text)
    # Nothing changed: the policy, the victim's roles and session, the lock, no new account.
    assert (await site.services.policy.store.version()) == 1
    after = await site.services.identity.accounts.find("victim")
    assert after is not None
    assert (after.roles, after.restricted, after.closed_at, after.email) == ("", False, None, victim.email)
    assert await site.services.identity.sessions.get(victims_session) is not None
    still = await site.services.identity.accounts.find("locked")
    assert still is not None
    assert still.disabled
    assert await site.services.identity.accounts.find("puppet") is None

    # Controls: what stays an ordinary change, and the same side doors with a fresh factor.
    ordinary = [
        ("POST", "/api/users/victim/password-change", {}),
        ("POST", "/api/users", {"username": "plain", "mode": "password"}),
        ("POST", f"/api/privacy/users/{victim.id}/rectify", {"display_name": "Vic", "verified_by": "x"}),
    ]
    for method, path, body in ordinary:
        done = await site.call(tired, method, path, json=body)
        assert done.status_code in (200, 201), (method, path, done.text)
    fresh = await site.session("boss")
    assert (await site.call(tired, "GET", "/api/tokens")).json() == []
    for method, path, body in side_doors[:2] + side_doors[4:8] + side_doors[-3:]:
        done = await site.call(fresh, method, path, json=body)
        assert done.status_code in (200, 201), (method, path, done.text)


async def test_a_non_admin_probing_the_api_is_recorded_once_a_minute(console: Start) -> None:
    """Each refusal is answered, but the audit trail gets one ``admin.refused`` per account and minute,
    so a signed-in user cannot fill it and bury real events."""
    site = await console()
    mallory, trudy = await site.session("mallory"), await site.session("trudy")
    for _ in range(20):
        refused = await site.call(mallory, "GET", "/api/policy")
        assert refused.status_code == 403
        assert refused.json()["error"] == "admin-role-required"
    assert (await site.call(trudy, "GET", "/api/users")).status_code == 403
    refusals = [actor for kind, actor, _ in await site.audit_kinds() if kind == "admin.refused"]
    assert sorted(refusals) == ["user:mallory", "user:trudy"]


async def test_a_spelling_stored_as_an_admin_is_refused_like_the_admin_itself(console: Start) -> None:
    """The checks read what was sent, the stores keep it folded: " admin" is stored as admin, "GHOST"
    as ghost (a name a g-line makes an admin), "Legacy" as legacy (a client a g-line makes one). Each
    minted a second admin under ``admin.approvals: 2`` (an outside attack run)."""
    site = await console(approvals=2, policy=OPS_ADMIN + "g, client:legacy, admin\n")
    await _account(site, "boss", roles=("admin",))
    await _account(site, "victim")
    boss = await site.session("boss")
    for body in (
        {"username": "puppet", "roles": [" admin"], "mode": "password"},
        {"username": "puppet", "roles": ["admin\t"], "mode": "password"},
        {"username": "puppet", "roles": ["viewer", " ops"], "mode": "password"},
        {"username": "GHOST", "mode": "invitation"},
        {"username": " Ghost ", "mode": "invitation"},
        {"username": "\uff47\uff48\uff4f\uff53\uff54", "mode": "invitation"},  # full-width "ghost"
    ):
        made = await site.call(boss, "POST", "/api/users", json=body)
        _refused(made, "second-admin-required")
    for name in ("puppet", "ghost"):
        assert await site.services.identity.accounts.find(name) is None
    for roles in ([" admin"], ["admin "], ["viewer", "ops "]):
        regranted = await site.call(boss, "PUT", "/api/users/victim/roles", json={"roles": roles})
        _refused(regranted, "second-admin-required")
    victim = await site.services.identity.accounts.find("victim")
    assert victim is not None
    assert victim.roles == ""
    for body in (
        {"name": "shadow", "roles": [" admin"]},
        {"name": "Legacy"},
        {"name": "legacy ", "roles": ["viewer"]},
    ):
        made = await site.call(boss, "POST", "/api/service-accounts", json=body)
        _refused(made, "second-admin-required")
    assert (await site.call(boss, "GET", "/api/service-accounts")).json() == []


async def test_no_invitation_link_for_an_admins_account_without_a_password(console: Start) -> None:
    """An admin who signs in through a provider or a passkey has no password: a link for their
    account would let the admin who asked for it set one and sign in as them."""
    site = await console(approvals=2, policy=POLICY + "g, user:remote, admin\n")
    await _account(site, "boss")
    await site.services.identity.accounts.create(username="remote", password=None, actor="test")
    await site.services.identity.accounts.create(username="newbie", password=None, actor="test")
    boss = await site.session("boss")
    invite = await site.call(boss, "POST", "/api/users/remote/invite", json={"reason": "resend"})
    _refused(invite, "second-admin-required")
    remote = await site.services.identity.accounts.find("remote")
    assert remote is not None
    assert remote.password_hash is None
    # The control: a person who is no admin gets their link.
    sent = await site.call(boss, "POST", "/api/users/newbie/invite", json={"reason": "resend"})
    assert sent.status_code == 200, sent.text
    assert sent.json()["invitation_url"]


async def test_an_admin_cannot_disable_their_own_account_in_any_spelling(console: Start) -> None:
    """Disabling oneself shuts the console's admin out; one admin disabling every other admin and
    then themselves left a deployment without an admin."""
    site = await console()
    await _account(site, "boss")
    await _account(site, "carol")
    boss = await site.session("boss")
    own = await site.call(boss, "POST", "/api/users/BOSS/disable", json={"reason": "x"})
    assert own.status_code == 409, own.text
    assert own.json()["error"] == "own-account"
    acted = await _act_on_case(site, boss, ["BOSS", "carol"], "disable")
    assert acted.status_code == 409, acted.text
    assert acted.json()["error"] == "own-account"
    for name in ("boss", "carol"):
        user = await site.services.identity.accounts.find(name)
        assert user is not None
        assert not user.disabled
    # The control: another account.
    done = await site.call(boss, "POST", "/api/users/carol/disable", json={"reason": "x"})
    assert done.status_code == 200, done.text
    # Nor enable it: a re-attack run's disabled admin, whose session was still owed its end, enabled
    # their own account again through the console.
    own = await site.call(boss, "POST", "/api/users/boss/enable", json={"reason": "x"})
    assert own.status_code == 409, own.text
    assert own.json()["error"] == "own-account"


async def test_an_admin_cannot_reset_their_own_factors_or_password_from_the_console(console: Start) -> None:
    """A fuzzing run reset its own factors (and its session ended); the account page is where one's
    own credentials change, with the session."""
    site = await console()
    await _account(site, "boss")
    await _account(site, "carol")
    boss = await site.session("boss")
    for path, body in (
        ("/api/users/Boss/reset-factors", {"reason": "x"}),
        ("/api/users/boss/reset-factors", {"reason": "x", "invite": True}),
        ("/api/users/BOSS/invite", {"reason": "x", "clear_password": True}),
    ):
        own = await site.call(boss, "POST", path, json=body)
        assert own.status_code == 409, own.text
        assert own.json()["error"] == "own-account"
        assert "/.gateway/account" in own.json()["message"]
    acted = await _act_on_case(site, boss, ["BOSS", "carol"], "reset-mfa")
    assert acted.status_code == 409, acted.text
    assert acted.json()["error"] == "own-account"
    user = await site.services.identity.accounts.find("boss")
    assert user is not None
    assert user.password_hash is not None
    # Still signed in: nothing ended the session.
    assert (await site.call(boss, "GET", "/api/users/boss")).status_code == 200
    # The control: another account.
    done = await site.call(boss, "POST", "/api/users/carol/reset-factors", json={"reason": "x"})
    assert done.status_code == 200, done.text


async def test_an_incident_changed_while_an_action_runs_is_acted_on_as_checked(
    console: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race an outside attack run won 5 times in 15: the reset was checked against the incident
    as read, then applied to it read again, after another request had added an admin to it. Here the
    other request lands deterministically right after the check's reading."""
    site = await console(approvals=2)
    for name in ("boss", "second", "dave"):
        await _account(site, name)
    boss = await site.session("boss")
    case = await site.call(
        boss, "POST", "/api/incident-cases", json={"title": "t", "severity": "low", "users": ["dave"]}
    )
    case_id = case.json()["id"]
    real_get = Cases.get
    reads = 0

    async def get_then_race(self: Cases, wanted: str) -> CaseView:
        nonlocal reads
        view = await real_get(self, wanted)
        reads += 1
        if reads == 1:
            await self.update(wanted, actor="user:boss", users=["second"])
        return view

    monkeypatch.setattr(Cases, "get", get_then_race)
    acted = await site.call(
        boss,
        "POST",
        f"/api/incident-cases/{case_id}/actions",
        json={"action": "reset-mfa", "reason": "x", "accounts": ["dave"]},
    )
    monkeypatch.undo()
    assert acted.status_code == 200, acted.text
    assert list(acted.json()["done"]) == ["dave"]
    assert "second" in (await site.call(boss, "GET", f"/api/incident-cases/{case_id}")).text
    reset = [event.subject for event in await site.services.identity.audit.events(kind="user.mfa_reset")]
    assert reset == ["dave"]


async def test_an_admin_by_local_role_cannot_take_it_from_their_own_account(console: Start) -> None:
    """The local-roles way to the same end as removing one's own policy line: the console lost its
    admins one by one (an attack run). Refused while the new roles would not make them an admin; the
    control keeps the role."""
    site = await console(policy=OPS_ADMIN)
    await _account(site, "kate", roles=("ops",))
    kate = await site.session("kate", roles=("ops",))
    for roles in ([], ["viewer"]):
        resp = await site.call(kate, "PUT", "/api/users/kate/roles", json={"roles": roles, "reason": "x"})
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"] == "own-admin-role"
    account = await site.services.identity.accounts.find("kate")
    assert account is not None
    assert account.roles == "ops"
    kept = await site.call(
        kate, "PUT", "/api/users/kate/roles", json={"roles": ["ops", "viewer"], "reason": "x"}
    )
    assert kept.status_code == 200, kept.text


async def test_answers_say_what_a_privacy_shut_account_can_do(console: Start) -> None:
    """An attack run was told "may sign in again" for a restricted and for a closed account it had
    enabled, and clear_password took a closed account's password for a link that answered 410."""
    site = await console()
    await _account(site, "boss")
    boss = await site.session("boss")
    accounts = site.services.identity.accounts
    for name in ("rita", "cleo"):
        await _account(site, name)
    rita = await accounts.find("rita")
    cleo = await accounts.find("cleo")
    assert rita is not None
    assert cleo is not None
    await accounts.set_restricted(rita.id, True, actor="test")
    await accounts.close(cleo.id, actor="test")
    for name, why in (("rita", "restricted"), ("cleo", "closed")):
        await accounts.disable((rita if name == "rita" else cleo).id, actor="test")
        enabled = await site.call(boss, "POST", f"/api/users/{name}/enable", json={"reason": "x"})
        assert enabled.status_code == 200, enabled.text
        message = enabled.json()["message"]
        assert "still cannot sign in" in message
        assert why in message
        invited = await site.call(
            boss, "POST", f"/api/users/{name}/invite", json={"clear_password": True, "reason": "x"}
        )
        assert invited.status_code == 409, invited.text
        assert invited.json()["error"] == "invitation-refused"
        kept = await accounts.find(name)
        assert kept is not None
        assert kept.password_hash is not None  # nothing was withdrawn

    # Roles added, none removed: no session ends, and the answer does not claim an outage.
    await _account(site, "vera")
    added = await site.call(boss, "PUT", "/api/users/vera/roles", json={"roles": ["viewer"], "reason": "x"})
    assert added.status_code == 200, added.text
    assert "did not answer" not in added.json()["message"]


async def test_an_approval_cannot_take_the_approvers_own_admin_role(console: Start) -> None:
    """A re-attack run: under admin.approvals: 2, boss proposed a policy without any admin line and
    second approved it; neither was an admin after. The approver is the one acting: refused, and the
    proposal stays open."""
    site = await console(approvals=2)
    boss = await site.session("boss")
    second = await site.session("second")
    no_admins = "p, admin, app, /*, *, allow\np, authenticated, app, /*, *, allow\n"
    proposed = await site.call(
        boss, "POST", "/api/policy/proposals", json={"policy": no_admins, "reason": "x"}
    )
    assert proposed.status_code == 201, proposed.text
    number = proposed.json()["id"]
    before = await site.services.policy.store.version()
    approved = await site.call(
        second, "POST", f"/api/policy/proposals/{number}/approve", json={"reason": "ok"}
    )
    assert approved.status_code == 409, approved.text
    assert approved.json()["error"] == "own-admin-role"
    assert await site.services.policy.store.version() == before
    listed = await site.call(second, "GET", "/api/policy/proposals", params={"open": "true"})
    assert [p["id"] for p in listed.json()["proposals"]] == [number]


async def test_an_incidents_policy_restore_cannot_take_the_admins_own_role(console: Start) -> None:
    """A re-attack run: refused through POST /api/policy/restore, the same restore through an
    incident case's restore-policy action took boss's admin role."""
    site = await console()
    store = site.services.policy.store
    rules = (await store.current()).rules
    without_boss = [r for r in rules if r.to_csv() != "g, user:boss, admin"]
    version = await store.replace(type(rules).from_rules(without_boss), actor="cli:test", reason="x")
    await store.replace(rules, actor="cli:test", reason="back")
    await site.services.policy.load()
    boss = await site.session("boss")
    case = await site.call(boss, "POST", "/api/incident-cases", json={"title": "t", "severity": "low"})
    assert case.status_code == 201, case.text
    restored = await site.call(
        boss,
        "POST",
        f"/api/incident-cases/{case.json()['id']}/restore-policy",
        json={"version": version, "reason": "via incident"},
    )
    assert restored.status_code == 409, restored.text
    assert restored.json()["error"] == "own-admin-role"
    assert (await store.current()).rules == rules


async def test_an_incident_title_is_one_line(console: Start) -> None:
    """A re-attack run put a line break in a title, and `gateway incident case list` printed a forged
    row ("inc-00000000 closed lifted by root")."""
    site = await console()
    boss = await site.session("boss")
    for title in ("Phishing wave\n2026-12-05 20:40Z  inc-00000000  closed", "tab\there", "esc \x1b[2J"):
        resp = await site.call(boss, "POST", "/api/incident-cases", json={"title": title, "severity": "low"})
        assert resp.status_code == 400, resp.text
    listed = await site.call(boss, "GET", "/api/incident-cases")
    assert listed.json()["cases"] == []
    made = await site.call(
        boss, "POST", "/api/incident-cases", json={"title": "Phishing wave", "severity": "low"}
    )
    assert made.status_code == 201, made.text


async def test_an_account_whose_credentials_an_admin_issued_cannot_approve_for_them(console: Start) -> None:
    """An attack run: under admin.approvals: 2 boss made mallory with a one-time password (shown to
    him), signed in as mallory, had second approve "g, user:mallory, admin", and approved his own
    allow-everything proposal as mallory. One step further, mallory's invitation for mallory2 gave
    boss a third account. Each is refused; second's approval still counts."""
    site = await console(approvals=2)
    await _account(site, "boss")
    await _account(site, "second")
    boss, second = await site.session("boss"), await site.session("second")

    propose, approve = partial(_propose, site), partial(_approve, site)

    made = await site.call(boss, "POST", "/api/users", json={"username": "mallory", "mode": "password"})
    assert made.status_code == 201, made.text
    policy = POLICY + "g, user:mallory, admin\n"
    assert (await approve(second, await propose(boss, policy))).status_code == 200
    mallory = await site.session("mallory")
    allow_all = policy + "p, authenticated, app, /*, *, allow\n"
    proposal = await propose(boss, allow_all)
    _refused(await approve(mallory, proposal), "proposal-self-approval")
    assert "another admin must approve" in (await approve(mallory, proposal)).json()["message"]

    # The other way round, and one link further: mallory invites mallory2, whom second makes an admin.
    invited = await site.call(
        mallory, "POST", "/api/users", json={"username": "mallory2", "mode": "invitation"}
    )
    assert invited.status_code == 201, invited.text
    policy += "g, user:mallory2, admin\n"
    mallory_proposal = await propose(mallory, policy)
    _refused(await approve(boss, mallory_proposal), "proposal-self-approval")
    assert (await approve(second, mallory_proposal)).status_code == 200
    mallory2 = await site.session("mallory2")
    proposal = await propose(boss, policy + "p, authenticated, app, /*, *, allow\n")
    _refused(await approve(mallory2, proposal), "proposal-self-approval")
    assert await site.services.policy.store.version() == 3

    # Credentials issued again by second: boss may still hold the account (a passkey he enrolled with
    # the first password), so mallory counts as either admin now.
    mallory_account = await site.services.identity.accounts.find("mallory")
    assert mallory_account is not None
    await site.services.identity.accounts.set_password(
        mallory_account.id, "a new one second handed over", actor="user:second"
    )
    _refused(await approve(mallory, proposal), "proposal-self-approval")
    second_proposal = await propose(second, policy + "p, authenticated, app, /*, GET, allow\n")
    _refused(await approve(mallory, second_proposal), "proposal-self-approval")
    assert await site.services.policy.store.version() == 3
    kinds = await site.audit_kinds()
    assert ("admin.policy.approve", "user:mallory", "failure") in kinds


@pytest.mark.parametrize(
    "path", ["/static/console.js%00.css", "/static/x%00", "/api/users/a%0ab", "/api/users/a%7fb"]
)
async def test_a_control_character_in_the_path_is_a_400_before_any_handler(console: Start, path: str) -> None:
    """An attack run: NUL in a static file's name made the static files router raise, a 500 with a
    traceback in the log for anyone who reaches the admin port, signed in or not."""
    site = await console()
    answer = await site.client.get(path)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad-path"
    assert answer.headers["content-security-policy"]
    assert answer.json()["request_id"] == answer.headers["x-request-id"]


@pytest.mark.parametrize(
    "spelling",
    # httpx resolves dot segments (also encoded ones) before it sends: refuse_unless_canonical's own
    # tests have them.
    ["H1%2F", "%2FH1", "H1%2F%2F", "H1%2f", "H1%5C", "/H1", "H1%00"],
)
async def test_a_path_the_router_would_read_as_another_changes_nothing(console: Start, spelling: str) -> None:
    """An attack run: the server decodes '%2F' and the router merges '//', so releasing the hold
    'H1%2F' (a reference that cannot exist) released 'H1', and with it the erasures it held back."""
    site = await console()
    boss = await site.session("boss")
    placed = await site.call(
        boss,
        "POST",
        "/api/privacy/holds",
        json={"reference": "H1", "reason": "order", "data_class": "incidents"},
    )
    assert placed.status_code == 201, placed.text
    answer = await site.call(boss, "POST", f"/api/privacy/holds/{spelling}/release", json={"reason": "x"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad-path"
    assert [h.active for h in await site.services.privacy.holds.find()] == [True]
    # The same for a read, and the control: the reference as it is.
    assert (await site.call(boss, "GET", f"/api/users/{spelling.replace('H1', 'boss')}")).status_code == 400
    released = await site.call(boss, "POST", "/api/privacy/holds/H1/release", json={"reason": "x"})
    assert released.status_code == 200, released.text
    assert [h.active for h in await site.services.privacy.holds.find(active_only=False)] == [False]


async def test_an_address_an_admin_chose_makes_the_account_theirs_when_approving(console: Start) -> None:
    """A re-attack run: boss gave carol's account his own address at the identity provider (a
    rectification), signed in there as carol (linked by email), had second make carol an admin and
    approved his own proposal as carol. The address is a credential an admin issued; the host's
    operator setting a password afterwards leaves that so."""
    site = await console(approvals=2)
    for name in ("boss", "second", "carol"):
        await _account(site, name)
    boss, second = await site.session("boss"), await site.session("second")
    carol = await site.services.identity.accounts.find("carol")
    assert carol is not None
    moved = await site.call(
        boss,
        "POST",
        f"/api/privacy/users/{carol.id}/rectify",
        json={"email": "boss.idp@corp.test", "verified_by": "ticket 1"},
    )
    assert moved.status_code == 200, moved.text
    assert "credentials_issued_by" not in moved.text
    await site.services.identity.accounts.set_password(
        carol.id, "the host operator's choice", actor="cli:root"
    )
    policy = POLICY + "g, user:carol, admin\n"
    made = await site.call(boss, "POST", "/api/policy/proposals", json={"policy": policy, "reason": "x"})
    approved = await _approve(site, second, made.json()["id"])
    assert approved.status_code == 200, approved.text
    allow_all = policy + "p, authenticated, app, /*, *, allow\n"
    made = await site.call(boss, "POST", "/api/policy/proposals", json={"policy": allow_all, "reason": "x"})
    as_carol = await site.call(
        await site.session("carol"),
        "POST",
        f"/api/policy/proposals/{made.json()['id']}/approve",
        json={"reason": "ok"},
    )
    _refused(as_carol, "proposal-self-approval")


async def test_a_password_another_admin_sets_leaves_the_address_an_admin_chose_counting(
    console: Start,
) -> None:
    """A re-attack run: boss set carol's email address to his own at the identity provider, then second
    set carol's password. Only the last issuer was kept, so carol, whom boss still signs in as through
    the identity provider, approved boss's proposal. Every issuer counts."""
    site = await console(approvals=2)
    for name in ("boss", "second", "carol"):
        await _account(site, name)
    boss, second = await site.session("boss"), await site.session("second")
    carol = await site.services.identity.accounts.find("carol")
    assert carol is not None
    moved = await site.call(
        boss,
        "POST",
        f"/api/privacy/users/{carol.id}/rectify",
        json={"email": "boss.idp@corp.test", "verified_by": "ticket 1"},
    )
    assert moved.status_code == 200, moved.text
    await site.services.identity.accounts.set_password(
        carol.id, "second hands this over", actor="user:second"
    )
    policy = POLICY + "g, user:carol, admin\n"
    made = await site.call(boss, "POST", "/api/policy/proposals", json={"policy": policy, "reason": "x"})
    approved = await _approve(site, second, made.json()["id"])
    assert approved.status_code == 200, approved.text
    allow_all = policy + "p, authenticated, app, /*, *, allow\n"
    made = await site.call(boss, "POST", "/api/policy/proposals", json={"policy": allow_all, "reason": "x"})
    as_carol = await site.call(
        await site.session("carol"),
        "POST",
        f"/api/policy/proposals/{made.json()['id']}/approve",
        json={"reason": "ok"},
    )
    _refused(as_carol, "proposal-self-approval")
    assert await site.services.policy.store.version() == 2


async def test_an_account_erased_in_the_middle_of_a_lineage_does_not_break_it(console: Start) -> None:
    """A re-attack run: boss made helper (a one-time password), helper made xavier, second made both
    admins; helper erased itself, its issuer rows went with it, and xavier approved boss's proposal.
    The lineage is joined around a deleted account; a deleted proposer's proposal is approved by
    nobody."""
    site = await console(approvals=2)
    await _account(site, "boss")
    await _account(site, "second")
    boss, second = await site.session("boss"), await site.session("second")

    propose, approve = partial(_propose, site), partial(_approve, site)

    made = await site.call(boss, "POST", "/api/users", json={"username": "helper", "mode": "password"})
    assert made.status_code == 201, made.text
    policy = POLICY + "g, user:helper, admin\n"
    assert (await approve(second, await propose(boss, policy))).status_code == 200
    made = await site.call(
        await site.session("helper"), "POST", "/api/users", json={"username": "xavier", "mode": "password"}
    )
    assert made.status_code == 201, made.text
    policy += "g, user:xavier, admin\n"
    assert (await approve(second, await propose(boss, policy))).status_code == 200
    xavier = await site.session("xavier")
    allow_all = await propose(boss, policy + "p, authenticated, app, /*, *, allow\n")
    _refused(await approve(xavier, allow_all), "proposal-self-approval")

    helper = await site.services.identity.accounts.find("helper")
    assert helper is not None
    await site.services.privacy.erase(
        helper,
        settings=PrivacySettings(),
        channel=Channel.PORTAL,
        actor="user:helper",
        verified_by="signed-in session",
    )
    _refused(await approve(xavier, allow_all), "proposal-self-approval")

    # The proposer's own account deleted: nobody can tell whose accounts were theirs; nobody approves.
    doomed = await propose(boss, policy + "p, authenticated, app, /reports/*, GET, allow\n")
    gone = await site.services.identity.accounts.find("boss")
    assert gone is not None
    await site.services.identity.accounts.delete(gone.id, actor="cli:root")
    answer = await approve(second, doomed)
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "proposal-proposer-gone"
    # A new account under the name (a re-attack run: a rehire, made by second) is not the proposer.
    await site.services.identity.accounts.create(username="boss", password=None, actor="cli:root")
    answer = await approve(xavier, doomed)
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "proposal-proposer-gone"
    assert await site.services.policy.store.version() == 3


async def test_a_role_linked_to_admin_names_the_accounts_it_makes_admins_and_the_approver_names_them_back(
    console: Start,
) -> None:
    """An attack run: boss gave carol the role "ops" (not the admin role: allowed), proposed the policy
    plus "g, ops, admin", which the validator called a typo (nobody held ops, it said), and second
    approved it without seeing that it made carol an admin, who then approved boss's proposals."""
    site = await console(approvals=2)
    for name in ("boss", "second", "carol"):
        await _account(site, name)
    boss, second = await site.session("boss"), await site.session("second")
    checked = await site.call(
        boss, "POST", "/api/policy/draft/validate", json={"policy": POLICY + "g, ops, admin\n"}
    )
    roles = await site.call(boss, "PUT", "/api/users/carol/roles", json={"roles": ["ops"], "reason": "x"})
    assert roles.status_code == 200, roles.text
    held = await site.call(
        boss, "POST", "/api/policy/draft/validate", json={"policy": POLICY + "g, ops, admin\n"}
    )
    assert "'ops' is neither held" in checked.text  # nobody held it then
    assert "'ops' is neither held" not in held.text  # carol holds it now: no "typo?" for the reviewer

    number = await _propose(site, boss, POLICY + "g, ops, admin\n")
    assert await _listed_admins(site, second, number) == ["user:carol"]
    blind = await _approve_naming(site, second, number, None)
    assert (blind.status_code, blind.json()["error"]) == (409, "proposal-new-admins"), blind.text
    assert "user:carol" in blind.json()["message"]
    assert await site.services.policy.store.version() == 1
    assert (await _approve(site, second, number)).status_code == 200


async def test_a_role_given_after_the_review_does_not_slip_into_the_approval(console: Start) -> None:
    """Second read the proposal when nobody held ops; boss then gave it to carol."""
    site = await console(approvals=2)
    for name in ("boss", "second", "carol"):
        await _account(site, name)
    boss, second = await site.session("boss"), await site.session("second")
    number = await _propose(site, boss, POLICY + "g, ops, admin\n")
    reviewed = await _listed_admins(site, second, number)
    assert reviewed == []
    await site.call(boss, "PUT", "/api/users/carol/roles", json={"roles": ["ops"], "reason": "x"})
    late = await _approve_naming(site, second, number, reviewed)
    assert (late.status_code, late.json()["error"]) == (409, "proposal-new-admins"), late.text
    assert await site.services.policy.store.version() == 1


@pytest.mark.parametrize("role", ["\u0430dmin", "\uff41dmin", "ops\u200b"])
async def test_a_look_alike_role_name_is_refused(console: Start, role: str) -> None:
    site = await console(approvals=2)
    for name in ("boss", "carol"):
        await _account(site, name)
    boss = await site.session("boss")
    refused = await site.call(boss, "PUT", "/api/users/carol/roles", json={"roles": [role], "reason": "x"})
    assert refused.status_code == 400, refused.text
    carol = await site.services.identity.accounts.find("carol")
    assert carol is not None
    assert carol.roles == ""


async def test_a_proposal_of_an_admin_shut_out_for_cause_is_not_approvable(console: Start) -> None:
    """An attack run: boss proposed, was then disabled as compromised, and his queue stayed live."""
    site = await console(approvals=2)
    for name in ("boss", "second"):
        await _account(site, name)
    boss, second = await site.session("boss"), await site.session("second")
    number = await _propose(site, boss, POLICY + "p, authenticated, app, /news/*, GET, allow\n")
    shut = await site.services.identity.accounts.find("boss")
    assert shut is not None
    await site.services.identity.accounts.disable(shut.id, actor="cli:root")
    approved = await _approve(site, second, number)
    assert (approved.status_code, approved.json()["error"]) == (409, "proposal-proposer-shut"), approved.text
    assert await site.services.policy.store.version() == 1


async def test_one_admin_cannot_shut_the_other_approver_out(console: Start) -> None:
    """An attack run: restricting the other admin was refused, disabling them went through (on the
    users page and through an incident case), leaving one admin holding every decision."""
    site = await console(approvals=2)
    for name in ("boss", "second", "carol"):
        await _account(site, name)
    boss = await site.session("boss")
    disabled = await site.call(boss, "POST", "/api/users/second/disable", json={"reason": "x"})
    _refused(disabled, "second-admin-required")
    assert "gateway user disable" in disabled.json()["message"]
    _refused(await _act_on_case(site, boss, ["second"], "disable"), "second-admin-required")
    second = await site.services.identity.accounts.find("second")
    assert second is not None
    assert not second.disabled
    # A non-admin's account is disabled as before.
    assert (
        await site.call(boss, "POST", "/api/users/carol/disable", json={"reason": "x"})
    ).status_code == 200


CORP = {
    "name": "corp", "issuer": "https://idp.corp.test", "client_id": "gateway", "client_secret": "s" * 32,
    "role_map": {"eng": "ops"},
}  # fmt: skip


async def test_whoever_a_provider_group_or_a_service_account_makes_an_admin_is_listed(console: Start) -> None:
    """A re-attack run: "g, ops, admin" listed nobody, while the provider's role_map gave its group eng
    the role ops (every member an admin, accounts no admin issued) and a service account held ops."""
    site = await console(approvals=2, identity_providers=[CORP])
    for name in ("boss", "second"):
        await _account(site, name)
    boss, second = await site.session("boss"), await site.session("second")
    made = await site.call(boss, "POST", "/api/service-accounts", json={"name": "deployer", "roles": ["ops"]})
    assert made.status_code == 201, made.text
    checked = await site.call(
        boss, "POST", "/api/policy/draft/validate", json={"policy": POLICY + "g, ops, admin\n"}
    )
    assert "'ops' is neither held" not in checked.text
    number = await _propose(site, boss, POLICY + "g, ops, admin\n")
    assert await _listed_admins(site, second, number) == ["client:deployer", "group:corp:eng"]
    blind = await _approve_naming(site, second, number, None)
    assert (blind.status_code, blind.json()["error"]) == (409, "proposal-new-admins"), blind.text


async def test_an_account_made_after_the_proposal_under_a_listed_name_is_not_the_one_reviewed(
    console: Start,
) -> None:
    """A re-attack run: "g, user:ghost, admin" was reviewed; the proposer then made ghost, with a
    password he knew, and the approval with the reviewed list made his account an admin."""
    site = await console(approvals=2)
    for name in ("boss", "second"):
        await _account(site, name)
    boss, second = await site.session("boss"), await site.session("second")
    number = await _propose(site, boss, POLICY + "g, user:ghost, admin\n")
    reviewed = await _listed_admins(site, second, number)
    assert reviewed == ["user:ghost"]
    await _account(site, "ghost")
    late = await _approve_naming(site, second, number, reviewed)
    assert (late.status_code, late.json()["error"]) == (409, "proposal-new-admins"), late.text
    assert "made after this proposal" in late.json()["message"]
    assert await site.services.policy.store.version() == 1


async def test_one_admin_cannot_take_the_other_approvers_local_admin_role(console: Start) -> None:
    """A re-attack run: the admin role of "second" was a local role; boss took it (his own sessions
    ended), and then disabled him: the refusal of disabling another admin came too late."""
    site = await console(approvals=2, policy=POLICY)
    await _account(site, "boss")
    await _account(site, "third", roles=("admin",))  # an admin by a local role alone
    boss = await site.session("boss")
    taken = await site.call(boss, "PUT", "/api/users/third/roles", json={"roles": [], "reason": "x"})
    _refused(taken, "second-admin-required")
    third = await site.services.identity.accounts.find("third")
    assert third is not None
    assert third.roles == "admin"
    _refused(
        await site.call(boss, "POST", "/api/users/third/disable", json={"reason": "x"}),
        "second-admin-required",
    )


async def test_one_admin_cannot_block_the_address_the_other_approver_signs_in_from(console: Start) -> None:
    """A re-attack run: a 90-day block of 10.0.0.0/16 shut the other admin (signed in from 10.0.1.5) out
    of the console; only the blocking admin's own addresses were checked."""
    site = await console(approvals=2)
    for name in ("boss", "second"):
        await _account(site, name)
    boss = await site.session("boss")
    await site.session("second", ip="10.0.1.5")
    refused = await site.call(
        boss, "POST", "/api/blocks", json={"address": "10.0.0.0/16", "expires_in": "90d", "reason": "x"}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "block-refused"
    assert "second" in refused.json()["message"]
    narrower = await site.call(
        boss, "POST", "/api/blocks", json={"address": "10.0.2.0/24", "expires_in": "1h", "reason": "x"}
    )
    assert narrower.status_code == 200, narrower.text


async def test_an_admin_by_a_providers_role_map_is_protected_as_any_other(console: Start) -> None:
    """A re-attack run: second was an admin by role_map alone (the role in their session); the other
    checks read local roles and groups only, and boss disabled them."""
    provider = {**CORP, "role_map": {"eng": "admin"}}
    site = await console(
        approvals=2, policy=POLICY.replace("g, user:second, admin\n", ""), identity_providers=[provider]
    )
    for name in ("boss", "second"):
        await _account(site, name)
    boss = await site.session("boss")
    await site.session("second", roles=("admin",), ip="10.0.1.5")
    _refused(
        await site.call(boss, "POST", "/api/users/second/disable", json={"reason": "x"}),
        "second-admin-required",
    )
    blocked = await site.call(
        boss, "POST", "/api/blocks", json={"address": "10.0.0.0/16", "expires_in": "90d", "reason": "x"}
    )
    assert blocked.status_code == 400, blocked.text


async def test_one_admin_cannot_sign_the_other_approver_out(console: Start) -> None:
    """A re-attack run: boss ended second's sessions first (nothing then knew a group admin as one, nor
    their address), then disabled and blocked them."""
    site = await console(approvals=2)
    for name in ("boss", "second", "carol"):
        await _account(site, name)
    boss = await site.session("boss")
    await site.session("second")
    _refused(
        await site.call(boss, "DELETE", "/api/users/second/sessions", json={"reason": "x"}),
        "second-admin-required",
    )
    forced = await site.call(
        boss, "POST", "/api/users/second/password-change", json={"reason": "x", "end_sessions": True}
    )
    _refused(forced, "second-admin-required")
    _refused(await _act_on_case(site, boss, ["second"], "revoke-sessions"), "second-admin-required")
    second = await site.services.identity.accounts.find("second")
    assert second is not None
    assert await site.services.identity.sessions.list_user(second.id)
    # A non-admin's sessions end as before.
    await site.session("carol")
    assert (
        await site.call(boss, "DELETE", "/api/users/carol/sessions", json={"reason": "x"})
    ).status_code == 200


async def test_a_service_account_made_or_given_a_token_after_the_proposal_is_not_the_one_reviewed(
    console: Start,
) -> None:
    """A re-attack run: "g, client:deployer, admin" was reviewed while no deployer existed; boss then
    made it and issued himself a token, and the approval made his token an admin's."""
    site = await console(approvals=2)
    for name in ("boss", "second"):
        await _account(site, name)
    boss, second = await site.session("boss"), await site.session("second")
    number = await _propose(site, boss, POLICY + "g, client:deployer, admin\n")
    reviewed = await _listed_admins(site, second, number)
    assert reviewed == ["client:deployer"]
    made = await site.call(boss, "POST", "/api/service-accounts", json={"name": "deployer"})
    assert made.status_code == 201, made.text
    late = await _approve_naming(site, second, number, reviewed)
    assert (late.status_code, late.json()["error"]) == (409, "proposal-new-admins"), late.text
    assert await site.services.policy.store.version() == 1


async def test_one_admin_cannot_issue_a_token_of_a_service_account_holding_the_admin_role(
    console: Start,
) -> None:
    site = await console(approvals=2)
    await _account(site, "boss")
    boss = await site.session("boss")
    from gateway.machine.accounts import ServiceAccounts

    accounts = ServiceAccounts(
        site.services.db, site.services.identity.audit, site.services.fast, site.services.identity.clock,
        max_lifetime=86400 * 90, keyring=site.services.identity.keyring,
    )  # fmt: skip
    await accounts.create_account("opsbot", roles=["admin"], actor="cli:root")
    issued = await site.call(
        boss, "POST", "/api/tokens", json={"account": "opsbot", "routes": ["app"], "expires": "90d"}
    )
    _refused(issued, "second-admin-required")


@pytest.mark.parametrize(
    "reference",
    ["..", ".", "LH\\9", "LH-1\u200b", "LH-\u202e1002-HL", "LH-1\u0085\u009b31m", "LH%41", "H?1", "H;1"],
)
async def test_a_hold_the_console_could_not_release_is_never_placed(console: Start, reference: str) -> None:
    """An attack run placed holds named '..', '.', 'LH\\9' and 'LH-1' with a zero-width space, which the
    release URL could never name (404 or 400 bad-path: a person's erasure held back until someone ran
    the CLI on the host), and look-alikes with a right-to-left override or terminal controls."""
    site = await console()
    boss = await site.session("boss")
    placed = await _place_hold(site, boss, reference)
    assert placed.status_code == 400, placed.text
    assert await site.services.privacy.holds.find() == []


@pytest.mark.parametrize(
    "reference", ["CASE 2026-17", "Az. 3 O 12-26", "LIT:7 (EU)", "Dossier nº 12", "案件-7", " LH-9 "]
)
async def test_every_hold_the_console_places_it_can_release(console: Start, reference: str) -> None:
    """The control: case numbers as they are written (other scripts, spaces, dots, parentheses) are
    placed and released through the console's own URL, padding blanks dropped on both sides."""
    site = await console()
    boss = await site.session("boss")
    placed = await _place_hold(site, boss, reference)
    assert placed.status_code == 201, placed.text
    released = await site.call(
        boss, "POST", f"/api/privacy/holds/{quote(reference, safe='')}/release", json={"reason": "done"}
    )
    assert released.status_code == 200, released.text
    assert [h.active for h in await site.services.privacy.holds.find()] == [False]


async def _place_hold(site: Console, boss: str, reference: str) -> httpx.Response:
    """A class hold on incidents under ``reference``, placed through the console's API."""
    hold = {"reference": reference, "reason": "order", "data_class": "incidents"}
    return await site.call(boss, "POST", "/api/privacy/holds", json=hold)
