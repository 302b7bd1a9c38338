"""A sign-in racing an account's restriction, in process (a worker's real services behind the control app).

An attack run restricted an account 10 ms into a password sign-in: the sign-in had read the account
before hashing the password (~300 ms), the restriction ended the account's sessions before the new
one existed, and the sign-in finished with a live session that then passed the second factor and
reached the apps. Here the restriction lands deterministically while the password is being checked.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.identity.invitations import Invitations
from gateway.identity.passwords import PasswordHasher
from gateway.services import WorkerServices
from tests.unit.web.worker import control_app

PASSWORD = "violet harbour cobalt lantern"


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    async with control_app(tmp_path, threat={"enabled": False}) as started:
        yield started


async def _sign_in(client: httpx.AsyncClient, username: str) -> int:
    page = await client.get("/.gateway/login", headers={"Accept": "text/html"})
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    answer = await client.post(
        "/.gateway/login",
        data={"username": username, "password": PASSWORD, "rd": "", "_csrf_token": token.group(1)},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    return answer.status_code


@pytest.mark.parametrize("change", ["restrict", "disable", "close", "password", "roles"])
async def test_an_account_shut_while_its_password_is_checked_gets_no_session(
    worker: tuple[WorkerServices, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    services, client = worker
    accounts = services.identity.accounts
    bob = await accounts.create(username="bob", password=PASSWORD, actor="cli:test")
    await accounts.set_roles(bob.id, ["admin"], actor="cli:test")
    real_verify = PasswordHasher.verify

    async def verify_while_shut(self: PasswordHasher, stored: str | None, password: str) -> bool:
        correct = await real_verify(self, stored, password)
        if change == "restrict":
            await accounts.set_restricted(bob.id, True, actor="admin:boss")
        elif change == "disable":
            await accounts.disable(bob.id, actor="admin:boss")
        elif change == "close":
            await accounts.close(bob.id, actor="admin:boss")
        elif change == "roles":
            # The re-attack run: an admin demoted while signing in kept the role in the new session.
            await accounts.set_roles(bob.id, [], actor="admin:boss")
        else:
            # The owner changed a leaked password while the thief's sign-in with it was being checked.
            await accounts.set_password(bob.id, "a brand new passphrase 2026", actor="user:bob")
        return correct

    monkeypatch.setattr(PasswordHasher, "verify", verify_while_shut)
    status = await _sign_in(client, "bob")
    monkeypatch.undo()
    assert status == 401
    assert await services.identity.sessions.list_user(bob.id) == []


async def test_the_control_signs_in(worker: tuple[WorkerServices, httpx.AsyncClient]) -> None:
    services, client = worker
    carol = await services.identity.accounts.create(username="carol", password=PASSWORD, actor="cli:test")
    assert await _sign_in(client, "carol") == 302
    assert len(await services.identity.sessions.list_user(carol.id)) == 1


async def test_an_invitation_used_while_its_account_is_disabled_sets_no_password(
    worker: tuple[WorkerServices, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-attack run: the link's token was taken just before the disable withdrew it, and the
    password it chose was stored on the disabled account (3 times of 6); enabled again, it signed in."""
    services, client = worker
    accounts = services.identity.accounts
    dora = await accounts.create(username="dora", password=None, actor="cli:test")
    invitations = Invitations(services.fast, services.identity.clock)
    issued = await invitations.issue(user_id=dora.id, username="dora", ttl=3600)
    real_take = Invitations.take

    async def take_then_disabled(self: Invitations, token: str) -> Any:
        taken = await real_take(self, token)
        await accounts.disable(dora.id, actor="admin:boss")
        return taken

    monkeypatch.setattr(Invitations, "take", take_then_disabled)
    path = f"/.gateway/invite/{issued.token}"
    page = await client.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    chosen = "a thief's passphrase 2026"
    answer = await client.post(
        path, data={"new": chosen, "confirm": chosen, "_csrf_token": token.group(1)}, follow_redirects=False
    )
    monkeypatch.undo()
    assert answer.status_code == 410
    stored = await accounts.get(dora.id)
    assert stored is not None
    assert stored.password_hash is None


async def _naming(services: WorkerServices, name: str) -> list[tuple[int, str, str, str]]:
    """Every audit record that names ``name`` in the clear (actor, subject or details)."""
    events = await services.identity.audit.events(limit=1000)
    return [
        (e.seq, e.kind, e.actor, e.subject)
        for e in events
        if name in (e.subject, e.actor.partition(":")[2]) or f'"{name}"' in e.details
    ]


@pytest.mark.parametrize("password", [PASSWORD, "a wrong guess 2026"])
async def test_a_sign_in_racing_an_erasure_leaves_no_record_naming_the_person(
    worker: tuple[WorkerServices, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    """Finding 3: sign-ins in flight while ``fay`` was erased wrote ``signin.password`` successes
    naming her after ``privacy.audit_erased`` (the erasure tombstones the trail once). Here the
    erasure lands deterministically between the password check and the sign-in's record."""
    services, client = worker
    fay = await services.identity.accounts.create(username="fay", password=PASSWORD, actor="cli:test")
    real_verify = PasswordHasher.verify
    erased: list[object] = []

    async def verify_then_erased(self: PasswordHasher, stored: str | None, typed: str) -> bool:
        correct = await real_verify(self, stored, typed)
        if not erased:
            erased.append(
                await services.privacy.eraser.erase(
                    fay.id, actor="admin:boss", ref="PR-7", keep_for=None, reason="erasure request"
                )
            )
        return correct

    monkeypatch.setattr(PasswordHasher, "verify", verify_then_erased)
    page = await client.get("/.gateway/login", headers={"Accept": "text/html"})
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    answer = await client.post(
        "/.gateway/login",
        data={"username": "fay", "password": password, "rd": "", "_csrf_token": token.group(1)},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    monkeypatch.undo()
    assert erased, "the erasure did not run inside the sign-in"
    # The answer a deleted account gets; no session.
    assert answer.status_code == 401
    assert await services.identity.sessions.list_user(fay.id) == []
    assert await _naming(services, "fay") == []
    # The attempt itself is still in the trail, without the name.
    last = (await services.identity.audit.events(kind="signin.password", limit=1))[0]
    assert (last.actor, last.subject, last.outcome) == ("anonymous", "", "failure")


async def test_a_password_sign_in_owes_the_accounts_second_factor_until_it_is_proved(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """An attack run copied such a session's cookie to an `mfa: none` app's host and got in: the
    session now says it owes the second factor (the data plane refuses it), until the factor is used."""
    import pyotp

    services, client = worker
    identity = services.identity
    owner = await identity.accounts.create(username="olga", password=PASSWORD, actor="cli:test")
    plain = await identity.accounts.create(username="paul", password=PASSWORD, actor="cli:test")
    enrollment = await identity.totp.begin_enrollment(owner.id, account="olga", name="Phone")
    totp = pyotp.TOTP(enrollment.secret)
    assert await identity.totp.confirm(owner.id, enrollment.credential_id, totp.now())
    assert await _sign_in(client, "olga") == 302
    (half,) = await identity.sessions.list_user(owner.id)
    assert half.owes_second_factor
    page = await client.get("/.gateway/mfa", headers={"Accept": "text/html"})
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    # The next step's code: the current one was spent confirming the app (one step of drift is taken).
    done = await client.post(
        "/.gateway/mfa/totp",
        data={"code": totp.at(identity.clock.time() + 30), "rd": "", "_csrf_token": token.group(1)},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    assert done.status_code in (302, 303), done.text
    (whole,) = await identity.sessions.list_user(owner.id)
    assert not whole.owes_second_factor
    # An account without a second factor owes nothing (it may go where a password is enough).
    client.cookies.clear()
    assert await _sign_in(client, "paul") == 302
    (alone,) = await identity.sessions.list_user(plain.id)
    assert not alone.owes_second_factor


async def test_a_first_factor_marks_the_accounts_older_password_sessions_as_owing_it(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """A re-attack run: a session opened with a phished password before the owner enrolled a first
    factor went on opening `mfa: none` apps after it; a forced step-up (a demotion) did too."""
    import pyotp

    from gateway.identity.levels import AuthLevel, Factor, FactorUse
    from gateway.web import flows

    services, client = worker
    identity = services.identity
    owner = await identity.accounts.create(username="rita", password=PASSWORD, actor="cli:test")
    assert await _sign_in(client, "rita") == 302  # the attacker's, before any factor
    (attacker,) = await identity.sessions.list_user(owner.id)
    assert not attacker.owes_second_factor

    async def session(level: AuthLevel) -> str:
        session_id, _ = await identity.sessions.create(
            user_id=owner.id, username="rita", level=level,
            factors=(FactorUse(Factor.PASSWORD, identity.clock.time()),), roles=(),
            ip="192.0.2.1", user_agent="t", host="gw.test",
        )  # fmt: skip
        return session_id

    enrolling, strong = await session(AuthLevel.ONE_FACTOR), await session(AuthLevel.TWO_FACTOR)
    enrollment = await identity.totp.begin_enrollment(owner.id, account="rita", name="Phone")
    assert await identity.totp.confirm(
        owner.id, enrollment.credential_id, pyotp.TOTP(enrollment.secret).now()
    )

    async def undo() -> None:
        raise AssertionError("the enrolling session is live")

    _, mine = await flows.after_enrolling(identity, enrolling, first=True, factor=Factor.TOTP, undo=undo)
    assert not mine.owes_second_factor
    by_hash = {s.id_hash: s for s in await identity.sessions.list_user(owner.id)}
    assert by_hash[attacker.id_hash].owes_second_factor
    strong_now = await identity.sessions.get(strong)
    assert strong_now is not None
    assert not strong_now.owes_second_factor
    # A forced step-up: the strong session owes its second factor again, everywhere.
    assert await identity.sessions.demote(strong_now.id_hash)
    demoted = await identity.sessions.current_hash(strong_now.id_hash)
    assert demoted is not None
    assert demoted.owes_second_factor
