"""CSRF cookies across ``gateway keys rotate --keyring``, on a real ``gateway serve``.

An attack run: after a keyring rotation and a restart, every browser that already had a CSRF cookie
could no longer sign in or submit any form. The sign-in page kept rendering the old token and set no
new cookie, and every post answered 403 "The form has expired … reload the page", for ever. And a
worker started after a rotation (a respawn) answered 403 to the tokens of the workers still running.

Checked here: a cookie from before the rotation still signs in after it and a restart; a cookie no key
made is replaced by the sign-in page, so the next post works; with two workers, one respawned after
the rotation, each accepts the other's tokens.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.integration.harness import (
    Echo,
    Gateway,
    add_user,
    free_port,
    gateway_config,
    request_on_fresh_connection,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import CSRF_COOKIE, PASSWORD, cookie

TOKEN_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')
HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    with run_echo() as running:
        yield running


def _config(tmp: Path, echo: Echo, **overrides: Any) -> dict[str, Any]:
    routes = [{"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [echo.url], "mfa": "none"}]
    return gateway_config(tmp, free_port(), routes, session={"insecure_cookies": True}, **overrides)


def _rotate(gw: Gateway) -> None:
    """``gateway keys rotate --keyring`` as an operator runs it, the gateway running."""
    rotated = run_cli("keys", "rotate", "--keyring", "--config", str(gw.config_path))
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "Traceback" not in rotated.stderr


def _sign_in_page(client: httpx.Client) -> tuple[httpx.Response, str]:
    page = client.get("/.gateway/login", headers=HTML)
    assert page.status_code == 200, page.text
    tokens = set(TOKEN_RE.findall(page.text))
    assert len(tokens) == 1, tokens
    return page, tokens.pop()


def _sign_in(client: httpx.Client, token: str, password: str) -> httpx.Response:
    form = {"username": "carol", "password": password, "rd": "", "_csrf_token": token}
    return client.post("/.gateway/login", data=form, headers=HTML)


def test_a_csrf_cookie_from_before_a_keyring_rotation_and_restart_still_signs_in(
    tmp_path: Path, echo: Echo
) -> None:
    config = _config(tmp_path, echo)
    # One browser (its cookies) across the restart.
    with httpx.Client(base_url=config["public_url"], follow_redirects=False, timeout=30.0) as client:
        with run_gateway(tmp_path, config) as gw:
            add_user(gw.config_path, "carol", PASSWORD)
            page, token = _sign_in_page(client)
            assert cookie(client, CSRF_COOKIE) == token
            assert _sign_in(client, token, "not the password").status_code == 401
            _rotate(gw)
        # The restart: the new key is the active one.
        with run_gateway(tmp_path, config):
            page, shown = _sign_in_page(client)
            # The old cookie still verifies: kept, and rendered in the form as it is.
            assert "set-cookie" not in page.headers
            assert shown == token
            assert _sign_in(client, token, "not the password").status_code == 401
            signed_in = _sign_in(client, token, PASSWORD)
            assert signed_in.status_code in (302, 303), signed_in.text

            # A cookie no key of the keyring made (forged, or made under a key no longer held).
            client.cookies.clear()
            forged = f"kgone.{'f' * 128}"
            client.cookies.set(CSRF_COOKIE, forged, domain="127.0.0.1", path="/")
            refused = _sign_in(client, forged, "not the password")
            assert refused.status_code == 403
            assert "reload the page" in refused.text
            # The reload the page asks for fixes it: a new cookie, and the form carries it.
            page, renewed = _sign_in_page(client)
            assert renewed != forged
            assert CSRF_COOKIE in page.headers["set-cookie"]
            assert cookie(client, CSRF_COOKIE) == renewed
            assert _sign_in(client, renewed, "not the password").status_code == 401


def test_a_worker_respawned_after_a_rotation_and_the_others_accept_each_others_tokens(
    tmp_path: Path, echo: Echo
) -> None:
    config = _config(tmp_path, echo, server={"workers": 2}, threat={"enabled": False})
    with run_gateway(tmp_path, config) as gw:
        workers = wait_until(lambda: _two(gw.worker_pids()), what="two workers up")
        # The token of a worker started before the rotation.
        before = wait_until(lambda: _token_from(gw, set(workers)), what="a token from a worker")
        _rotate(gw)
        victim, survivor = workers
        os.kill(victim, signal.SIGKILL)
        respawned = wait_until(lambda: _new_worker(gw, set(workers)), what="the killed worker respawned")
        after = wait_until(lambda: _token_from(gw, {respawned}), what="a token from the respawned worker")
        # The respawned worker issues under the new key, which the survivor had not loaded.
        assert after.split(".")[0] != before.split(".")[0]
        # Each token is accepted by the other worker (and by its own).
        assert _post_on(gw, after, {survivor}) != 403
        assert _post_on(gw, before, {respawned}) != 403
        assert _post_on(gw, after, {respawned}) != 403


def _two(pids: list[int]) -> tuple[int, int] | None:
    return (pids[0], pids[1]) if len(pids) == 2 else None


def _new_worker(gw: Gateway, known: set[int]) -> int | None:
    fresh = set(gw.worker_pids()) - known
    return min(fresh) if fresh else None


def _token_from(gw: Gateway, workers: set[int], tries: int = 20) -> str | None:
    """A CSRF token set by one of ``workers`` (None if none of ``tries`` fresh connections reached one)."""
    for _ in range(tries):
        status, headers, body, pid = request_on_fresh_connection(
            gw.port, "GET", "/.gateway/login", headers=HTML
        )
        if pid in workers and status == 200:
            found = TOKEN_RE.search(body.decode())
            assert found
            assert f"{CSRF_COOKIE}={found.group(1)}" in headers.get("set-cookie", "")
            return found.group(1)
    return None


def _post_on(gw: Gateway, token: str, workers: set[int], tries: int = 200) -> int:
    """The status of a sign-out form post with ``token`` (cookie and field), as one of ``workers``
    answered it: 303 when the CSRF check passes, 403 when it fails."""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"{CSRF_COOKIE}={token}",
        **HTML,
    }
    body = urlencode({"_csrf_token": token}).encode()
    for _ in range(tries):
        status, _headers, _body, pid = request_on_fresh_connection(
            gw.port, "POST", "/.gateway/logout", headers=headers, body=body
        )
        if pid in workers:
            return status
    raise AssertionError(f"no answer from {workers} in {tries} connections")
