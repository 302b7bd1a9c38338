"""Admin changes during a lockdown need a passkey (the ``console`` fixture, conftest.py).

An attack run: with a lockdown on (which lets only passkey sessions through, because passwords,
authenticator codes and provider sign-ins can be phished), an admin session signed in with a password
and an authenticator code switched the lockdown off through ``POST /api/lockdown``, and could lift
blocks and change the policy: a phished admin session undid the lockdown switched on against it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.store.fast.base import StateUnavailable
from gateway.threat.lockdown import LockdownState, LockdownStore
from tests.unit.admin.console_app import Console, Start

HOUR = 3600.0
# Default lockdown.max_factor_age.
MAX_FACTOR_AGE = 12 * HOUR
BLOCKED = "203.0.113.7"
RULE = {"ptype": "p", "subject": "role:x", "route": "app", "path": "/x/*", "methods": "GET", "effect": "deny"}
BLOCK = ("POST", "/api/blocks", {"address": BLOCKED, "expires_in": "1h", "reason": "scan"})
# Three kinds of change: the switch itself, lifting a block, the policy.
OFF = ("POST", "/api/lockdown", {"on": False, "reason": "all clear"})
UNBLOCK = ("POST", "/api/blocks/unblock", {"address": BLOCKED, "reason": "scan over"})
ADD_RULE = ("POST", "/api/policy/rules", {"rules": [RULE], "reason": "tighten"})


async def _with_factors(site: Console, *factors: FactorUse) -> str:
    """A session of boss (an admin by the console's policy) that used exactly ``factors``."""
    session_id, _ = await site.services.identity.sessions.create(
        user_id=1,
        username="boss",
        level=AuthLevel.TWO_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, site.services.identity.clock.time()), *factors),
        roles=(),
        ip="127.0.0.1",
        user_agent="test",
        host="http://gw.test:8080",
    )
    return session_id


async def _passkey_session(site: Console, *, age: float = 0.0) -> str:
    """boss after a passkey ``age`` seconds ago, and an authenticator code just now (fresh for the API)."""
    now = site.services.identity.clock.time()
    return await _with_factors(site, FactorUse(Factor.WEBAUTHN, now - age), FactorUse(Factor.TOTP, now))


def _store(site: Console) -> LockdownStore:
    services = site.services
    return LockdownStore(services.fast, services.identity.clock, services.identity.audit, db=services.db)


async def _lock(site: Console) -> None:
    await _store(site).switch_on(None, actor="operator:root", reason="phishing wave")


async def _state(site: Console) -> LockdownState:
    return await _store(site).read()


async def _blocked(site: Console, session: str) -> list[str]:
    listed = await site.call(session, "GET", "/api/blocks")
    assert listed.status_code == 200, listed.text
    return [b["address"] for b in listed.json()["blocks"]]


async def _send(site: Console, session: str, change: tuple[str, str, dict[str, Any]]) -> httpx.Response:
    method, path, body = change
    return await site.call(session, method, path, json=body)


async def test_during_a_lockdown_a_session_without_a_passkey_changes_nothing(console: Start) -> None:
    site = await console()
    boss = await site.session("boss")  # password and authenticator code, both just now
    assert (await _send(site, boss, BLOCK)).status_code == 200
    await _lock(site)

    for change in (OFF, UNBLOCK, ADD_RULE):
        refused = await _send(site, boss, change)
        assert refused.status_code == 403, (change, refused.text)
        body = refused.json()
        assert body["error"] == "lockdown-passkey-required", change
        assert "passkey used within the last 12 hours" in body["message"]
        assert "`gateway lockdown`" in body["message"]
        # The MFA page asking for a passkey, then back to the console.
        assert body["location"].startswith(
            "http://gw.test:8080/.gateway/mfa?need=webauthn&rd=http%3A%2F%2Fgw.test"
        )

    # Nothing changed: the lockdown, the block, the policy.
    state = await _state(site)
    assert (state.on, state.actor) == (True, "operator:root")
    assert await _blocked(site, boss) == [f"{BLOCKED}/32"]
    assert await site.services.policy.store.version() == 1
    # In the trail once (a minute's refusals of one account are one record), with what was refused.
    refused_events = await site.services.identity.audit.events(kind="admin.refused")
    assert [(e.actor, e.outcome, json.loads(e.details or "{}")) for e in refused_events] == [
        (
            "user:boss",
            "failure",
            {"error": "lockdown-passkey-required", "path": "/api/lockdown", "method": "POST"},
        )
    ]
    assert await site.services.identity.audit.events(kind="lockdown.off") == []


@pytest.mark.parametrize(
    "factors",
    [
        pytest.param(
            lambda now: (FactorUse(Factor.WEBAUTHN, now - MAX_FACTOR_AGE - 60), FactorUse(Factor.TOTP, now)),
            id="passkey-too-old",
        ),
        pytest.param(
            lambda now: (FactorUse(Factor.WEBAUTHN, now + 3600), FactorUse(Factor.TOTP, now)),
            id="passkey-in-the-future",
        ),
        pytest.param(lambda now: (FactorUse(Factor.RECOVERY, now),), id="recovery-code"),
        pytest.param(lambda now: (FactorUse(Factor.IDP_MFA, now),), id="provider-mfa"),
    ],
)
async def test_only_a_recent_passkey_counts(console: Start, factors: Any) -> None:
    site = await console()
    await _lock(site)
    session = await _with_factors(site, *factors(site.services.identity.clock.time()))
    refused = await _send(site, session, OFF)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "lockdown-passkey-required"
    assert (await _state(site)).on


async def test_a_session_with_a_recent_passkey_may_switch_it_off(console: Start) -> None:
    site = await console()
    boss = await site.session("boss")
    assert (await _send(site, boss, BLOCK)).status_code == 200
    await _lock(site)
    # A passkey eleven hours ago is within lockdown.max_factor_age (12 hours).
    keyed = await _passkey_session(site, age=11 * HOUR)
    assert (await _send(site, keyed, ADD_RULE)).status_code == 200
    assert (await _send(site, keyed, UNBLOCK)).status_code == 200
    assert await _blocked(site, keyed) == []
    done = await _send(site, keyed, OFF)
    assert done.status_code == 200, done.text
    assert done.json()["on"] is False
    state = await _state(site)
    assert (state.on, state.actor) == (False, "user:boss")
    assert await site.services.identity.audit.events(kind="admin.refused") == []


async def test_with_the_lockdown_off_changes_need_no_passkey(console: Start) -> None:
    site = await console()
    boss = await site.session("boss")
    assert (await _send(site, boss, BLOCK)).status_code == 200
    assert (await _send(site, boss, UNBLOCK)).status_code == 200
    assert (await _send(site, boss, ADD_RULE)).status_code == 200
    on = await site.call(boss, "POST", "/api/lockdown", json={"on": True, "reason": "drill"})
    assert on.status_code == 200, on.text
    assert (await _state(site)).on
    # ...and once it is on, the same session may not switch it off again.
    assert (await _send(site, boss, OFF)).json()["error"] == "lockdown-passkey-required"


async def test_reading_stays_open_during_a_lockdown(console: Start) -> None:
    site = await console()
    await _lock(site)
    boss = await site.session("boss")
    for path in ("/api/lockdown", "/api/policy", "/api/blocks", "/api/incidents", "/lockdown", "/"):
        answer = await site.call(boss, "GET", path)
        assert answer.status_code == 200, (path, answer.text)
    assert (await site.call(boss, "GET", "/api/lockdown")).json()["on"] is True
    assert await site.services.identity.audit.events(kind="admin.refused") == []


async def test_a_change_is_refused_when_the_switch_cannot_be_read(
    console: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: the lockdown may be on, so a change without a passkey is a 503, never done."""
    site = await console()
    boss = await site.session("boss")

    async def unreadable(self: LockdownStore) -> LockdownState:
        raise StateUnavailable("neither the fast state nor the database answers")

    monkeypatch.setattr(LockdownStore, "read", unreadable)
    refused = await _send(site, boss, ADD_RULE)
    assert refused.status_code == 503, refused.text
    assert await site.services.policy.store.version() == 1
    assert (await site.call(boss, "GET", "/api/policy")).status_code == 200
