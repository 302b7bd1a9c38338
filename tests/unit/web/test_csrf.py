"""The control app's CSRF tokens across keyring rotations (gateway/web/csrf.py).

An attack run: after ``gateway keys rotate --keyring`` and a restart, every browser holding a CSRF
cookie could neither sign in nor submit any form (403 "the form has expired" for ever, a reload changed
nothing): the secret followed the active key, and a cookie found on a page view was reused unchecked.
Here a token made under any key the keyring holds verifies, whichever process made it, and a page view
replaces a cookie that verifies under none of them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, get, post
from litestar.middleware.csrf import generate_csrf_token
from litestar.utils.scope.state import ScopeState

from gateway.clock import SYSTEM_CLOCK
from gateway.crypto.keyring import Compromise, Keyring
from gateway.web.app import create_control_app
from gateway.web.csrf import CSRF_INFO, CSRFTokens, csrf_middleware
from tests.support.asgi_client import asgi_client
from tests.unit.web.worker import BASE_URL, control_app

COOKIE = "gateway_csrf"  # insecure cookies (plain HTTP): the name without __Host-
TOKEN_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')


def legacy_token(keyring: Keyring) -> str:
    """A token as the gateway issued them before tokens named their key (Litestar's format, under a
    secret derived from the then active key)."""
    secret = hmac.new(keyring.derive(CSRF_INFO), b"csrf", hashlib.sha256).hexdigest()
    return generate_csrf_token(secret)


@pytest.fixture
def keyring_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "keyring.json"
    Keyring.create(path)
    return path


# -- the tokens ---------------------------------------------------------------------------------------


def test_tokens_are_issued_under_the_active_key_and_older_keys_still_verify(keyring_file: Path) -> None:
    keyring = Keyring.load(keyring_file)
    tokens = CSRFTokens(keyring)
    first = keyring.active_id
    before = tokens.issue()
    assert before.startswith(f"{first}.")
    assert tokens.nonce_of(before) is not None

    second = keyring.rotate(keyring_file)
    after = tokens.issue()
    assert after.startswith(f"{second}.")
    assert tokens.nonce_of(after) is not None
    assert tokens.nonce_of(before) is not None
    # And in a process started after the rotation (a restart), both still verify.
    restarted = CSRFTokens(Keyring.load(keyring_file))
    assert restarted.nonce_of(before) is not None
    assert restarted.nonce_of(after) is not None


def test_a_token_from_before_tokens_named_their_key_verifies_under_any_held_key(keyring_file: Path) -> None:
    keyring = Keyring.load(keyring_file)
    old = legacy_token(keyring)
    keyring.rotate(keyring_file)
    restarted = CSRFTokens(Keyring.load(keyring_file))
    assert restarted.nonce_of(old) == old[:64]
    assert restarted.nonce_of("0" * 64 + old[64:]) is None


def test_a_worker_loaded_before_a_rotation_accepts_the_tokens_of_one_started_after_it(
    keyring_file: Path,
) -> None:
    running = CSRFTokens(Keyring.load(keyring_file))
    made_before = running.issue()
    Keyring.load(keyring_file).rotate(keyring_file)  # `gateway keys rotate --keyring`, another process
    respawned = CSRFTokens(Keyring.load(keyring_file))
    token = respawned.issue()
    # The running worker meets a key id it does not know: its keyring reads the file again.
    assert running.nonce_of(token) is not None
    assert respawned.nonce_of(made_before) is not None
    # ...and from then on it issues under the new active key too, as the respawned worker does.
    assert running.issue().split(".")[0] == token.split(".")[0]


def test_forged_malformed_and_compromised_tokens_do_not_verify(keyring_file: Path) -> None:
    keyring = Keyring.load(keyring_file)
    tokens = CSRFTokens(keyring)
    good = tokens.issue()
    kid, _, signed = good.partition(".")
    forged = f"{kid}.{'a' * 64}{signed[64:]}"  # another nonce under the same MAC
    for bad in (
        forged,
        f"kunknown.{signed}",  # a key id no keyring holds
        f"a.b.{signed}",
        good[:-1],
        good + "0",
        good[:-1] + "é",  # non-ASCII: refused, not a TypeError from compare_digest
        "",
        "forged",
    ):
        assert tokens.nonce_of(bad) is None, bad
    assert tokens.nonce_of(12345) is None  # a form field can be an upload, not a string

    old = keyring.active_id
    keyring.rotate(keyring_file)
    keyring.mark_compromised(keyring_file, old, Compromise(at=SYSTEM_CLOCK.now().isoformat(), audit_seq=0))
    # Whoever holds a leaked key can make its tokens: none under it is accepted any more.
    assert tokens.nonce_of(good) is None
    assert CSRFTokens(Keyring.load(keyring_file)).nonce_of(good) is None
    assert tokens.nonce_of(signed) is None  # nor without its key id (as a token from before them)


# -- the middleware ------------------------------------------------------------------------------------


@get("/page", sync_to_thread=False)
def page(request: Request[Any, Any, Any]) -> str:
    token = ScopeState.from_scope(request.scope).csrf_token
    return token if isinstance(token, str) else ""


@post("/form", sync_to_thread=False)
def form() -> str:
    return "done"


@get("/public", sync_to_thread=False, opt={"exclude_from_csrf": True})
def public() -> str:
    return "public"


@pytest.fixture
async def app(keyring_file: Path) -> AsyncIterator[tuple[Keyring, httpx.AsyncClient]]:
    keyring = Keyring.load(keyring_file)
    app = Litestar(
        route_handlers=[page, form, public],
        middleware=[csrf_middleware(keyring, insecure_cookies=True)],
    )
    async with asgi_client(app, "http://gw.test") as client:
        yield keyring, client


async def test_a_page_view_replaces_a_cookie_no_key_made(app: tuple[Keyring, httpx.AsyncClient]) -> None:
    _keyring, client = app
    forged = "f" * 128
    client.cookies.set(COOKIE, forged, domain="gw.test")
    assert (await client.post("/form", data={"_csrf_token": forged})).status_code == 403
    shown = await client.get("/page")
    assert shown.status_code == 200
    fresh = shown.text
    assert fresh != forged
    assert shown.cookies.get(COOKIE) == fresh
    client.cookies.set(COOKIE, fresh, domain="gw.test")
    assert (await client.post("/form", data={"_csrf_token": fresh})).status_code == 201
    assert (await client.post("/form", headers={"x-csrftoken": fresh})).status_code == 201
    # A valid cookie is kept: no new cookie on the next page view.
    again = await client.get("/page")
    assert again.text == fresh
    assert "set-cookie" not in again.headers


async def test_a_cookie_made_under_an_older_key_keeps_working(
    app: tuple[Keyring, httpx.AsyncClient], keyring_file: Path
) -> None:
    keyring, client = app
    first = await client.get("/page")
    token = first.cookies[COOKIE]
    legacy = legacy_token(keyring)
    keyring.rotate(keyring_file)
    for old in (token, legacy):
        client.cookies.set(COOKIE, old, domain="gw.test")
        shown = await client.get("/page")
        assert shown.text == old
        assert "set-cookie" not in shown.headers
        assert (await client.post("/form", data={"_csrf_token": old})).status_code == 201
    # A browser without a cookie gets one under the new active key.
    client.cookies.clear()
    assert (await client.get("/page")).cookies[COOKIE].startswith(f"{keyring.active_id}.")


async def test_unsafe_requests_need_the_cookie_and_the_same_token(
    app: tuple[Keyring, httpx.AsyncClient],
) -> None:
    keyring, client = app
    tokens = CSRFTokens(keyring)
    mine, other = tokens.issue(), tokens.issue()
    assert (await client.post("/form", data={"_csrf_token": mine})).status_code == 403  # no cookie
    client.cookies.set(COOKIE, mine, domain="gw.test")
    assert (await client.post("/form", data={"_csrf_token": other})).status_code == 403
    assert (await client.post("/form", data={})).status_code == 403
    # An opted-out page gets no cookie.
    public = await client.get("/public")
    assert public.status_code == 200
    assert "set-cookie" not in public.headers


# -- the real control app ------------------------------------------------------------------------------


async def test_the_sign_in_page_keeps_an_older_keys_cookie_and_renews_a_forged_one(tmp_path: Path) -> None:
    html = {"Accept": "text/html"}

    def sign_in(client: httpx.AsyncClient, csrf: str) -> Any:
        form = {"username": "nobody", "password": "wrong", "rd": "", "_csrf_token": csrf}
        return client.post("/.gateway/login", data=form, headers=html, follow_redirects=False)

    async with control_app(tmp_path, threat={"enabled": False}) as (services, client):
        keyring = services.identity.keyring
        page = await client.get("/.gateway/login", headers=html)
        token = TOKEN_RE.search(page.text)
        assert token
        cookie = token.group(1)
        assert page.cookies[COOKIE] == cookie
        assert (await sign_in(client, cookie)).status_code == 401

        keyring.rotate(tmp_path / "data" / "keys" / "keyring.json")
        # The app built again (as after a restart), the new key active: the cookie made under the
        # older one is kept, rendered in the form and accepted.
        async with asgi_client(create_control_app(services), BASE_URL) as restarted:
            restarted.cookies.set(COOKIE, cookie, domain="gw.test")
            page = await restarted.get("/.gateway/login", headers=html)
            assert "set-cookie" not in page.headers
            assert TOKEN_RE.findall(page.text) == [cookie]
            assert (await sign_in(restarted, cookie)).status_code == 401

            # A cookie no key made: refused, and the next page view replaces it.
            restarted.cookies.set(COOKIE, "f" * 128, domain="gw.test")
            assert (await sign_in(restarted, "f" * 128)).status_code == 403
            page = await restarted.get("/.gateway/login", headers=html)
            renewed = page.cookies.get(COOKIE)
            assert renewed
            assert renewed.startswith(f"{keyring.active_id}.")
            assert TOKEN_RE.findall(page.text) == [renewed]
            restarted.cookies.set(COOKIE, renewed, domain="gw.test")
            assert (await sign_in(restarted, renewed)).status_code == 401

            # Static files and the health check stay cookie-free; a missing file is not cacheable.
            for path in ("/.gateway/static/gateway.css", "/.gateway/health"):
                assert "set-cookie" not in (await restarted.get(path)).headers, path
            missing = await restarted.get("/.gateway/static/no-such-file.js")
            assert missing.status_code == 404
            assert missing.headers["cache-control"] == "no-store"
            assert "set-cookie" not in missing.headers
