"""Locust scenarios against a running gateway (``python -m loadtests.scenarios`` starts one and runs these).

Each scenario is a ``FastHttpUser`` class; pick them on the locust command line by class name:

- ``SignedInBrowsing``: the hot path, a signed-in user browsing allowed pages;
- ``MixedAllowedDenied``: the same user, allowed pages and pages the policy denies (403 expected);
- ``Anonymous``: no session on protected pages: browsers get 302 to the sign-in page, API clients 401;
- ``PasswordTotpSignIn``: full sign-in with password and TOTP (argon2id under load); each virtual user
  has its own account with an authenticator app enrolled through the account pages at start;
- ``ForwardAuth``: ``/.gateway/auth`` sub-requests as nginx ``auth_request`` sends them (trusted proxy);
- ``PolicyChurn``: ``gateway policy import`` in a loop (a new policy version every few seconds) while the
  others run; denied-path answers must flip with the versions, nothing may error.

Configuration comes from the environment (``loadtests.scenarios`` sets it): ``LOADTEST_CONFIG`` (the
gateway's YAML, for the CLI), ``LOADTEST_PASSWORD``, ``LOADTEST_USER`` (the browsing account),
``LOADTEST_TOTP_USERS`` (comma-separated accounts for the TOTP scenario), ``LOADTEST_POLICIES`` (two
policy files, comma-separated, for ``PolicyChurn``). Users are created by ``gateway user add``, never
by writing to the database.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time

import pyotp
from locust import User, between, constant, constant_pacing, task
from locust.contrib.fasthttp import FastHttpUser

__all__ = [
    "Anonymous",
    "ForwardAuth",
    "MixedAllowedDenied",
    "PasswordTotpSignIn",
    "PolicyChurn",
    "SignedInBrowsing",
]

SESSION_COOKIE = "gateway_session"
CSRF_COOKIE = "gateway_csrf"
SECRET_RE = re.compile(r'<code class="key" id="totp-secret">\s*([A-Z2-7=]+)\s*</code>')
CREDENTIAL_RE = re.compile(r'name="credential_id" value="(\d+)"')
ALLOWED = ("/", "/docs/intro", "/docs/api?page=2", "/reports/2026/q3", "/static/app.js")
DENIED = ("/admin/", "/admin/users", "/private/secret")
JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html,application/xhtml+xml"}


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _cookie(user: FastHttpUser, name: str) -> str | None:
    """A cookie the gateway set on this virtual user's client (its jar), or None."""
    for item in user.client.cookiejar:
        if item.name == name:
            return str(item.value)
    return None


def sign_in(user: FastHttpUser, username: str, password: str) -> str:
    """Password sign-in through the HTML form; returns the session cookie value (fails the task if not)."""
    user.client.cookiejar.clear()
    with user.client.get("/.gateway/login", headers=HTML, name="GET login page", catch_response=True) as page:
        csrf = _cookie(user, CSRF_COOKIE)
        if not csrf:
            page.failure(f"no CSRF cookie ({page.status_code})")
            raise RuntimeError("no CSRF cookie")
    with user.client.post(
        "/.gateway/login",
        data={"username": username, "password": password, "rd": "", "_csrf_token": csrf},
        headers={**HTML, "Cookie": f"{CSRF_COOKIE}={csrf}"},
        allow_redirects=False,
        name="POST login (password)",
        catch_response=True,
    ) as resp:
        session = _cookie(user, SESSION_COOKIE)
        # Every request after this sends exactly the cookies it names (anonymous ones none at all).
        user.client.cookiejar.clear()
        if resp.status_code not in (302, 303) or not session:
            resp.failure(f"sign-in answered {resp.status_code}")
            raise RuntimeError("sign-in failed")
        resp.success()
    return session


class _SignedIn(FastHttpUser):
    abstract = True
    session = ""

    def on_start(self) -> None:
        self.session = sign_in(self, _env("LOADTEST_USER", "load"), _env("LOADTEST_PASSWORD"))

    def get(self, path: str, expect: int, name: str) -> None:
        headers = {**JSON, "Cookie": f"{SESSION_COOKIE}={self.session}"}
        with self.client.get(path, headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code != expect:
                resp.failure(f"{path}: {resp.status_code}, expected {expect}")
            else:
                resp.success()


class SignedInBrowsing(_SignedIn):
    """The hot path: cookie -> session -> MFA check -> RBAC -> identity headers -> upstream."""

    wait_time = constant(0)

    @task
    def browse(self) -> None:
        for path in ALLOWED:
            self.get(path, 200, "allowed page")


class MixedAllowedDenied(_SignedIn):
    wait_time = between(0, 0.01)

    @task(4)
    def allowed(self) -> None:
        self.get(ALLOWED[int(time.time() * 1000) % len(ALLOWED)], 200, "allowed page")

    @task(1)
    def denied(self) -> None:
        self.get(DENIED[int(time.time() * 1000) % len(DENIED)], 403, "denied page (403)")


class Anonymous(FastHttpUser):
    wait_time = between(0, 0.01)

    @task
    def browser_is_sent_to_sign_in(self) -> None:
        with self.client.get(
            "/docs/intro",
            headers=HTML,
            allow_redirects=False,
            name="anonymous browser (302)",
            catch_response=True,
        ) as resp:
            location = resp.headers.get("location", "")
            if resp.status_code != 302 or "/.gateway/login" not in location:
                resp.failure(f"{resp.status_code} {location!r}")
            else:
                resp.success()

    @task
    def api_client_gets_401(self) -> None:
        with self.client.get(
            "/docs/intro", headers=JSON, name="anonymous API (401)", catch_response=True
        ) as resp:
            if resp.status_code != 401:
                resp.failure(str(resp.status_code))
            else:
                resp.success()


_totp_accounts = itertools.cycle(filter(None, _env("LOADTEST_TOTP_USERS").split(",")))
_totp_lock = threading.Lock()


class PasswordTotpSignIn(FastHttpUser):
    """Password + TOTP sign-in, end to end. A TOTP code is accepted once per 30 s step and account, so
    each virtual user owns an account and signs in once per step (pacing 31 s)."""

    wait_time = constant_pacing(31)
    secret = ""
    username = ""

    def on_start(self) -> None:
        with _totp_lock:
            self.username = next(_totp_accounts)
        session = sign_in(self, self.username, _env("LOADTEST_PASSWORD"))
        cookies = f"{SESSION_COOKIE}={session}"
        page = self.client.get(
            "/.gateway/account/enroll", headers={**HTML, "Cookie": cookies}, name="enroll page"
        )
        secret, credential = SECRET_RE.search(page.text or ""), CREDENTIAL_RE.search(page.text or "")
        if not secret or not credential:
            raise RuntimeError(f"{self.username}: no TOTP enrolment on the account page ({page.status_code})")
        self.secret = secret.group(1)
        csrf = self._csrf()
        code = pyotp.TOTP(self.secret).at(time.time() - 30)  # leaves the current step's code unused
        self.client.post(
            "/.gateway/account/totp/confirm",
            data={"credential_id": credential.group(1), "code": code, "_csrf_token": csrf},
            headers={**HTML, "Cookie": f"{cookies}; {CSRF_COOKIE}={csrf}"},
            name="enroll confirm",
        )

    def _csrf(self) -> str:
        self.client.get("/.gateway/login", headers=HTML, name="GET login page")
        token = _cookie(self, CSRF_COOKIE) or ""
        self.client.cookiejar.clear()
        return token

    @task
    def sign_in_with_totp(self) -> None:
        session = sign_in(self, self.username, _env("LOADTEST_PASSWORD"))
        csrf = self._csrf()
        with self.client.post(
            "/.gateway/mfa/totp",
            data={"code": pyotp.TOTP(self.secret).now(), "rd": "", "_csrf_token": csrf},
            headers={**HTML, "Cookie": f"{SESSION_COOKIE}={session}; {CSRF_COOKIE}={csrf}"},
            allow_redirects=False,
            name="POST mfa (TOTP)",
            catch_response=True,
        ) as resp:
            two_factor = _cookie(self, SESSION_COOKIE)
            self.client.cookiejar.clear()
            if resp.status_code not in (302, 303) or not two_factor or two_factor == session:
                resp.failure(f"TOTP step answered {resp.status_code} (a new session id is expected)")
            else:
                resp.success()


class ForwardAuth(_SignedIn):
    """nginx ``auth_request`` / Traefik ForwardAuth: the proxy asks, the gateway answers 200/401/403."""

    wait_time = between(0, 0.01)

    def ask(self, uri: str, cookie: bool, expect: int, name: str) -> None:
        headers = {
            **JSON,
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "127.0.0.1",
            "X-Forwarded-Uri": uri,
        }
        if cookie:
            headers["Cookie"] = f"{SESSION_COOKIE}={self.session}"
        with self.client.get("/.gateway/auth", headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code != expect:
                resp.failure(f"{uri}: {resp.status_code}, expected {expect}")
            else:
                resp.success()

    @task(4)
    def allowed(self) -> None:
        self.ask("/docs/intro", True, 200, "forward-auth allow (200)")

    @task(1)
    def denied(self) -> None:
        self.ask("/admin/users", True, 403, "forward-auth deny (403)")

    @task(1)
    def anonymous(self) -> None:
        self.ask("/docs/intro", False, 401, "forward-auth anonymous (401)")


class PolicyChurn(User):
    """``gateway policy import`` in a loop, alternating two equivalent-for-the-others policy files."""

    wait_time = constant_pacing(5)
    fixed_count = 1

    @task
    def import_policy(self) -> None:
        files = [f for f in _env("LOADTEST_POLICIES").split(",") if f]
        if not files:
            return
        path = files[int(time.time() // 5) % len(files)]
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "policy",
                "import",
                path,
                "--reason",
                "load test churn",
                "--config",
                _env("LOADTEST_CONFIG"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.environment.events.request.fire(
            request_type="CLI",
            name="gateway policy import",
            response_time=elapsed_ms,
            response_length=0,
            exception=None if done.returncode == 0 else RuntimeError(done.stderr.strip()[-200:]),
            context={},
        )
