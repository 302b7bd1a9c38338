"""What a session may change of the account's factors and sessions, in process (a worker's real
services behind the control app). Each case is a re-attack run's: a passkey added with a phished password
and authenticator code passed a passkey route; an older stolen cookie signed the owner out everywhere;
removing the only factor left the account to whoever enrolled next with the password."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pyotp
import pytest

from gateway.identity.models import User
from gateway.services import WorkerServices
from tests.support.soft_authenticator import SoftAuthenticator
from tests.unit.web.worker import BASE_URL, control_app, signed_in

PASSWORD = "violet harbour cobalt lantern"


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    async with control_app(tmp_path, threat={"enabled": False}) as started:
        yield started


async def _account(services: WorkerServices) -> User:
    """An account with an authenticator app."""
    identity = services.identity
    user = await identity.accounts.create(username="vic", password=PASSWORD, actor="cli:test")
    enrollment = await identity.totp.begin_enrollment(user.id, account="vic", name="Phone")
    assert await identity.totp.confirm(user.id, enrollment.credential_id, pyotp.TOTP(enrollment.secret).now())
    return user


async def _token(client: httpx.AsyncClient) -> str:
    await client.get("/.gateway/login", headers={"Accept": "text/html"})
    token = client.cookies.get("gateway_csrf")
    assert token
    return token


async def _register(client: httpx.AsyncClient, token: str) -> httpx.Response:
    headers = {"x-csrftoken": token, "Accept": "application/json"}
    options = await client.post(
        "/.gateway/api/webauthn/register/options", json={"discoverable": True}, headers=headers
    )
    if options.status_code != 200:
        return options
    credential = json.loads(SoftAuthenticator(origin=BASE_URL).create(options.text))
    return await client.post(
        "/.gateway/api/webauthn/register/verify",
        json={"credential": credential, "name": "Key"},
        headers=headers,
    )


async def test_a_second_passkey_needs_one_of_the_passkeys(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    user = await _account(services)
    await signed_in(services, client, user)  # password and authenticator code, just now
    token = await _token(client)
    first = await _register(client, token)
    assert first.status_code == 200, first.text
    # Someone with the password and a phished code: no second passkey.
    await signed_in(services, client, user)
    refused = await _register(client, await _token(client))
    assert refused.status_code == 403, refused.text
    assert "one of your passkeys" in refused.text
    assert len(await services.identity.webauthn.list(user.id)) == 1


async def test_removing_the_owners_passkey_needs_one_of_the_passkeys(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """A re-attack run: with a phished password and authenticator code, removing the owner's passkey
    was allowed (the app remained), and then the account had no passkey, so the attacker added its own
    and passed a ``mfa: webauthn`` route."""
    services, client = worker
    user = await _account(services)
    await signed_in(services, client, user)
    assert (await _register(client, await _token(client))).status_code == 200
    (passkey,) = await services.identity.webauthn.list(user.id)
    # The attacker: password and a fresh authenticator code.
    await signed_in(services, client, user)
    token = await _token(client)
    here = f"/.gateway/account/factors/webauthn/{passkey.id}/remove"
    for method in ("GET", "POST"):
        answer = await client.request(
            method, here, data={"_csrf_token": token} if method == "POST" else None,
            headers={"Accept": "text/html"}, follow_redirects=False,
        )  # fmt: skip
        assert answer.status_code in (302, 303), answer.text
        assert answer.headers["location"].startswith("/.gateway/mfa?need=webauthn")
    assert len(await services.identity.webauthn.list(user.id)) == 1
    assert (await _register(client, token)).status_code == 403
    # The control: the authenticator app is removed with the code (another factor remains).
    (app,) = await services.identity.totp.list(user.id)
    removed = await client.post(
        f"/.gateway/account/factors/totp/{app.id}/remove", data={"_csrf_token": token},
        headers={"Accept": "text/html"}, follow_redirects=False,
    )  # fmt: skip
    assert removed.status_code == 303
    assert (
        "Factor+removed" in removed.headers["location"] or "Factor%20removed" in removed.headers["location"]
    )


async def test_an_older_session_signs_nobody_else_out(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    user = await _account(services)
    owners = await signed_in(services, client, user)
    await signed_in(services, client, user, ago=86400)  # a cookie taken a day ago, in this browser
    token = await _token(client)
    answer = await client.post(
        "/.gateway/account/sessions/revoke-others",
        data={"_csrf_token": token},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    assert answer.status_code in (302, 303), answer.text
    assert "/.gateway/mfa" in answer.headers["location"]
    assert await services.identity.sessions.get(owners) is not None


async def test_an_older_session_signs_nobody_out_one_by_one_either(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """An attack run: refused "sign out all other sessions", the stolen older cookie listed the
    account's sessions and signed each out alone, on the page and through the API."""
    services, client = worker
    user = await _account(services)
    owners = await signed_in(services, client, user)
    await signed_in(services, client, user, ago=86400)
    token = await _token(client)
    listed = await client.get("/.gateway/api/sessions", headers={"Accept": "application/json"})
    others = [o["id"] for o in listed.json() if not o["current"]]
    assert others
    for other in others:
        page = await client.post(
            f"/.gateway/account/sessions/{other}/revoke",
            data={"_csrf_token": token},
            headers={"Accept": "text/html"},
            follow_redirects=False,
        )
        assert page.status_code in (302, 303), page.text
        assert "/.gateway/mfa" in page.headers["location"]
        api = await client.delete(
            f"/.gateway/api/sessions/{other}", headers={"x-csrftoken": token, "Accept": "application/json"}
        )
        assert api.status_code == 403, api.text
    assert await services.identity.sessions.get(owners) is not None
    # With a fresh second factor the owner signs one out.
    await signed_in(services, client, user)
    token = await _token(client)
    listed = await client.get("/.gateway/api/sessions", headers={"Accept": "application/json"})
    other = next(o["id"] for o in listed.json() if not o["current"])
    ended = await client.delete(
        f"/.gateway/api/sessions/{other}", headers={"x-csrftoken": token, "Accept": "application/json"}
    )
    assert ended.status_code == 204, ended.text


async def test_the_only_factor_stays_until_another_is_added(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    user = await _account(services)
    await signed_in(services, client, user)
    token = await _token(client)
    (app,) = await services.identity.totp.list(user.id)
    answer = await client.post(
        f"/.gateway/account/factors/totp/{app.id}/remove",
        data={"_csrf_token": token},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert "only%20second%20factor" in answer.headers["location"]
    assert await services.identity.totp.list(user.id) == [app]


async def test_a_new_seed_is_read_and_confirmed_only_by_the_sign_in_that_asked_for_it(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """A re-attack run: a second session of the account posted the owner's pending enrollment id with
    a wrong code, got the owner's new seed on the answer page, and confirmed it."""
    services, client = worker
    user = await _account(services)
    owner = await signed_in(services, client, user)
    page = await client.get("/.gateway/account/enroll", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text
    seed_match = re.search(r'data-secret="([A-Z2-7]+)"|<code[^>]*>([A-Z2-7 ]{16,})</code>', page.text)
    credential = re.search(r'name="credential_id" value="(\d+)"', page.text)
    assert seed_match
    assert credential
    seed = (seed_match.group(1) or seed_match.group(2)).replace(" ", "")

    async def confirm(code: str) -> httpx.Response:
        return await client.post(
            "/.gateway/account/totp/confirm",
            data={"credential_id": credential.group(1), "code": code, "_csrf_token": await _token(client)},
            headers={"Accept": "text/html"},
            follow_redirects=False,
        )

    await signed_in(services, client, user)  # another sign-in of the account, in this browser
    for code in ("000000", pyotp.TOTP(seed).now()):
        answer = await confirm(code)
        assert seed not in answer.text.replace(" ", "")
    assert len(await services.identity.totp.list(user.id)) == 1  # the phone it had, not the new one
    # The owner's own confirmation still works, and the app then signs in like any other.
    client.cookies.set("gateway_session", owner, domain="gw.test")
    mine = await confirm(pyotp.TOTP(seed).now())
    assert mine.status_code in (200, 302, 303), mine.text
    assert len(await services.identity.totp.list(user.id)) == 2
    assert await services.identity.totp.verify(user.id, pyotp.TOTP(seed).at(time.time() + 30))


async def test_a_stale_sign_in_of_an_account_without_factors_is_asked_for_its_password_not_looped(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """The last note's open item: an account without a second factor, signed in with a password
    entered long ago, went from the enroll page to the second-factor page (to confirm it's you) and
    back (it had no factor to confirm with), for ever."""
    from gateway.identity.levels import AuthLevel, Factor, FactorUse

    services, client = worker
    identity = services.identity
    user = await identity.accounts.create(username="newbie", password=PASSWORD, actor="cli:test")
    stale = identity.clock.time() - 86400
    session_id, _ = await identity.sessions.create(
        user_id=user.id, username="newbie", level=AuthLevel.ONE_FACTOR, factors=(FactorUse(Factor.PASSWORD, stale),),
        roles=(), ip="127.0.0.1", user_agent="test", host=BASE_URL,
    )  # fmt: skip
    client.cookies.set("gateway_session", session_id, domain="gw.test")
    seen: list[str] = []
    location = "/.gateway/account/enroll"
    for _ in range(6):
        answer = await client.get(location, headers={"Accept": "text/html"}, follow_redirects=False)
        if answer.status_code not in (302, 303, 307):
            break
        location = answer.headers["location"]
        seen.append(location.split("?")[0])
    assert seen, seen
    assert seen[-1] == "/.gateway/login", seen
    assert len(seen) <= 2, seen
    # The stale session is over: the password is asked for again at sign-in.
    assert await identity.sessions.get(session_id) is None


async def test_an_older_session_renames_no_factor(worker: tuple[WorkerServices, httpx.AsyncClient]) -> None:
    """A re-attack run: a day-old stolen cookie renamed the owner's app "LOST phone - remove me"."""
    services, client = worker
    user = await _account(services)
    await signed_in(services, client, user, ago=86400)
    (app,) = await services.identity.totp.list(user.id)
    answer = await client.post(
        f"/.gateway/account/factors/totp/{app.id}/rename",
        data={"_csrf_token": await _token(client), "name": "LOST phone - remove me"},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    assert answer.status_code in (302, 303), answer.text
    assert "/.gateway/mfa" in answer.headers["location"]
    assert [a.name for a in await services.identity.totp.list(user.id)] == [app.name]
    await signed_in(services, client, user)
    renamed = await client.post(
        f"/.gateway/account/factors/totp/{app.id}/rename",
        data={"_csrf_token": await _token(client), "name": "Work phone"},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    assert "Renamed" in renamed.headers["location"]
    assert [e.subject for e in await services.identity.audit.events(kind="factor.renamed")] == ["vic"]


async def test_a_passkey_is_renamed_only_by_a_sign_in_that_could_remove_it(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """An attack run: a phished password and authenticator code relabelled the owner's passkey
    "LOST remove me", which removing it would not have allowed (that needs one of the passkeys)."""
    from gateway.identity.levels import AuthLevel, Factor, FactorUse

    services, client = worker
    identity = services.identity
    user = await _account(services)
    await signed_in(services, client, user)
    assert (await _register(client, await _token(client))).status_code == 200
    (passkey,) = await identity.webauthn.list(user.id)
    here = f"/.gateway/account/factors/webauthn/{passkey.id}/rename"
    # The attacker: password and a fresh authenticator code, sent to use a passkey, as removal is.
    await signed_in(services, client, user)
    refused = await client.post(
        here, data={"_csrf_token": await _token(client), "name": "LOST remove me"},
        headers={"Accept": "text/html"}, follow_redirects=False,
    )  # fmt: skip
    assert refused.status_code in (302, 303), refused.text
    assert refused.headers["location"].startswith("/.gateway/mfa?need=webauthn"), refused.headers
    assert [k.name for k in await identity.webauthn.list(user.id)] == [passkey.name]
    # The owner, with one of the passkeys just used: renamed.
    now = identity.clock.time()
    owners, _ = await identity.sessions.create(
        user_id=user.id, username=user.username, level=AuthLevel.TWO_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, now), FactorUse(Factor.WEBAUTHN, now)),
        roles=(), ip="127.0.0.1", user_agent="test", host=BASE_URL,
    )  # fmt: skip
    client.cookies.set("gateway_session", owners, domain="gw.test")
    renamed = await client.post(
        here, data={"_csrf_token": await _token(client), "name": "Office key"},
        headers={"Accept": "text/html"}, follow_redirects=False,
    )  # fmt: skip
    assert "Renamed" in renamed.headers["location"], renamed.headers
    assert [k.name for k in await identity.webauthn.list(user.id)] == ["Office key"]


async def test_a_passkey_route_asked_of_an_account_without_one_leads_to_adding_one(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """The MFA page asked for a passkey (a ``mfa: webauthn`` route) of a person with only an
    authenticator app showed a sentence and nothing to press. It now links to adding a passkey with the
    way back carried, and that page asks for nothing more than the fresh factor the person has; an
    account that has a passkey gets the passkey button, not the link."""
    services, client = worker
    user = await _account(services)
    await signed_in(services, client, user)
    back = f"{BASE_URL}/reports"
    asked = await client.get(
        "/.gateway/mfa", params={"need": "webauthn", "rd": back}, headers={"Accept": "text/html"}
    )
    assert asked.status_code == 200, asked.text
    assert "your account has none yet" in asked.text
    link = re.search(r'<a class="button full" href="([^"]+)">Add a passkey</a>', asked.text)
    assert link, asked.text
    assert link.group(1) == f"/.gateway/account/enroll?rd={quote(back, safe='')}"
    enroll = await client.get(link.group(1).replace("&amp;", "&"), headers={"Accept": "text/html"})
    assert enroll.status_code == 200, enroll.text
    assert 'data-webauthn="register"' in enroll.text
    assert f'data-rd="{back}"' in enroll.text
    # A return URL that could not be followed is not carried into the page (a re-attack run).
    hostile = await client.get(
        "/.gateway/account/enroll", params={"rd": "javascript:alert(1)"}, headers={"Accept": "text/html"}
    )
    assert hostile.status_code == 200, hostile.text
    assert "javascript:" not in hostile.text
    # With a passkey on the account: the passkey button, no link to add another.
    assert (await _register(client, await _token(client))).status_code == 200
    again = await client.get(
        "/.gateway/mfa", params={"need": "webauthn", "rd": back}, headers={"Accept": "text/html"}
    )
    assert 'data-webauthn="authenticate"' in again.text
    assert "your account has none yet" not in again.text
    # Asked for any second factor, the page never offers the passkey link.
    other = await client.get("/.gateway/mfa", params={"rd": back}, headers={"Accept": "text/html"})
    assert "Add a passkey" not in other.text
