"""Every right of the account's privacy page over HTTP, against real gateways.

The module runs twice: on the embedded default (one gateway, SQLite, two workers) and on two replicas
sharing PostgreSQL and Redis. A person signs in with a password and enrols an authenticator app (which
makes their second factor recent), then, one test per right:

* access: the export (page download and API) follows ``export.schema.json``; the register lists it;
* rectification: the email and name change; a bad email is a 4xx that changes nothing;
* restriction: every session ends (also the one on the other replica); signing in again, on every
  worker, replica and host, gets the very answer a wrong password gets;
* closure: the same, through the API;
* erasure: the account is gone, ``gateway audit verify`` (the real CLI) passes, and neither the
  username nor the client's address is left in any column of ``audit_events``;
* a legal hold (placed with ``gateway privacy hold place``): the erasure answers "on hold" and the account is restricted instead.

One more gateway (embedded, ``mfa.reauth_max_age: 2s``) shows that none of the rights is done without a
recent second factor, and that the same request succeeds once the factor is used again.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import jsonschema
import pytest
import yaml

from gateway.privacy.export import SCHEMA_PATH
from tests.integration.harness import (
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
from tests.integration.http_client import (
    CSRF_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    browser,
    cookie,
    csrf,
    login,
    post_form,
)
from tests.integration.test_signin_http import enroll_totp
from tests.support.pg import fresh_database
from tests.support.totp import clear_of_step_end, oathtool

pytestmark = pytest.mark.peer

REDIS_URL = "redis://127.0.0.1:6379/14"
JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}
SCHEMA = json.loads(SCHEMA_PATH.read_text())
PAGE = "/.gateway/account/privacy"
ALERT_RE = re.compile(r'<div class="alert" role="alert">([^<]*)</div>')
# The hosts the gateway's pages answer on: the auth host and a route's host.
# Where a password sign-in is taken: the auth host alone (a route's host sends the browser there,
# tests/integration/test_page_hosts_http.py).
HOSTS = ("127.0.0.1",)


@dataclass
class Site:
    """The gateways a person may reach, and the database they share."""

    gateways: list[Gateway]
    # The SQLite file, or a PostgreSQL DSN.
    database: str

    @property
    def a(self) -> Gateway:
        return self.gateways[0]

    @property
    def b(self) -> Gateway:
        """The other replica (the same gateway on the embedded default)."""
        return self.gateways[-1]

    def user(self, prefix: str, *extra: str) -> str:
        name = f"{prefix}{secrets.token_hex(4)}"
        add_user(self.a.config_path, name, PASSWORD, *extra)
        return name

    def rows(self, query: str, *args: object) -> list[dict[str, Any]]:
        """Rows of a query written with ``?`` placeholders, on either database."""
        if not self.database.startswith("postgresql"):
            with sqlite3.connect(self.database) as conn:
                conn.row_factory = sqlite3.Row
                return [dict(r) for r in conn.execute(query, args).fetchall()]
        numbered = query
        for n in range(1, len(args) + 1):
            numbered = numbered.replace("?", f"${n}", 1)

        async def fetch() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.database, timeout=5)
            try:
                return [dict(r) for r in await conn.fetch(numbered, *args)]
            finally:
                await conn.close()

        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, fetch()).result()

    def account(self, username: str) -> dict[str, Any] | None:
        found = self.rows("SELECT * FROM users WHERE username = ?", username)
        return found[0] if found else None

    def requests_of(self, username: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM privacy_requests WHERE subject = ? ORDER BY id", username)


def _config(tmp: Path, port: int, echo_url: str, **overrides: Any) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [echo_url], "mfa": "none"},
        {"name": "wiki", "host": "localhost", "path": "/", "upstreams": [echo_url], "mfa": "none"},
    ]
    common: dict[str, Any] = {
        "session": {"insecure_cookies": True},
        # The test client stands in for a load balancer: its X-Forwarded-For names the client.
        "trusted_proxies": ["127.0.0.1/32"],
        # Refused sign-ins are this module's attack; no lock-out or back-off may change their answer.
        "regulation": {"free_attempts": 99, "max_failures": 100},
        "threat": {"enabled": False},
    }
    return gateway_config(tmp, port, routes, **{**common, **overrides})


@pytest.fixture(scope="module", params=["embedded", "replicas"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"account-privacy-{request.param}")
    with run_echo() as echo:
        if request.param == "embedded":
            # Two workers: a refused sign-in is refused by each of them.
            config = _config(tmp, free_port(), echo.url, server={"workers": 2})
            with run_gateway(tmp, config) as gw:
                yield Site([gw], str(tmp / "data" / "gateway.db"))
            return
        with fresh_database("gw_acctpriv") as name:
            port_a, port_b = free_port(), free_port()
            common: dict[str, Any] = {
                "public_url": f"http://127.0.0.1:{port_a}",
                "storage": {"url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"},
                "state": {"redis_url": REDIS_URL, "namespace": f"acctpriv{port_a}:"},
                # One keyring for the deployment, created once and shared by both replicas.
                "keyring": str(tmp / "keyring.json"),
            }
            config_a = _config(tmp / "a", port_a, echo.url, **common)
            config_b = _config(tmp / "b", port_b, echo.url, **common)
            (tmp / "a").mkdir()
            (tmp / "a" / "gateway.yaml").write_text(yaml.safe_dump(config_a, sort_keys=False))
            for step in (("migrate",), ("keys", "init")):
                done = run_cli(*step, "--config", str(tmp / "a" / "gateway.yaml"))
                assert done.returncode == 0, done.stdout + done.stderr
            with run_gateway(tmp / "a", config_a) as gw_a, run_gateway(tmp / "b", config_b) as gw_b:
                yield Site([gw_a, gw_b], f"postgresql://postgres@127.0.0.1:5432/{name}")


# -- helpers -----------------------------------------------------------------------------------------


def client_ip() -> str:
    """An address of the documentation range no other test or row uses (three-digit last octet)."""
    return f"198.51.100.{100 + secrets.randbelow(155)}"


@contextmanager
def signed_in(gw: Gateway, user: str, ip: str | None = None) -> Iterator[httpx.Client]:
    """A browser signed in as ``user`` with a just-enrolled authenticator app (a recent second factor)."""
    with browser(gw) as client:
        if ip is not None:
            client.headers["X-Forwarded-For"] = ip
        assert login(client, user).status_code == 302
        enroll_totp(client)
        yield client


def api(client: httpx.Client, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    if body is None and not path.endswith(("/restrict", "/close")):
        return client.get(path, headers=JSON)
    return client.post(path, json=body or {}, headers={**JSON, "x-csrftoken": csrf(client)})


def session_of(client: httpx.Client) -> str:
    """The browser's session id (kept by the test: the gateway clears the browser's copy)."""
    found = cookie(client)
    assert found, "no session cookie"
    return found


def me(gw: Gateway, session_id: str) -> int:
    """The status ``/.gateway/api/me`` answers a session on ``gw``: 200 live, 401 gone."""
    headers = {**JSON, "Cookie": f"{SESSION_COOKIE}={session_id}"}
    return httpx.get(f"{gw.url}/.gateway/api/me", headers=headers, timeout=30).status_code


def ended_everywhere(site: Site, sessions: list[str]) -> None:
    """Every session refused on every replica and worker. The worker that ended them refuses at once;
    the others within the session cache's second (a broadcast), so this waits a little beyond it: a
    run beside a full test suite once saw the other worker still answer 200 right after."""

    def ended() -> bool:
        return all(me(gw, sid) == 401 for gw in site.gateways for sid in sessions)

    wait_until(ended, timeout=3, interval=0.1, what="every session refused on every replica and worker")


def sign_in_answer(
    gw: Gateway, token: str, user: str, password: str, host: str
) -> tuple[int, str, bool, int]:
    """A password sign-in on a new connection: status, the alert shown, whether a session was issued,
    and the worker that answered."""
    body = urlencode({"username": user, "password": password, "rd": "", "_csrf_token": token}).encode()
    status, headers, data, pid = request_on_fresh_connection(
        gw.port,
        "POST",
        "/.gateway/login",
        headers={
            "Host": host,
            "Cookie": f"{CSRF_COOKIE}={token}",
            "Content-Type": "application/x-www-form-urlencoded",
            **HTML,
        },
        body=body,
    )
    alert = ALERT_RE.search(data.decode("utf-8", "replace"))
    issued = re.search(r"gateway_session=[^;\s]", headers.get("set-cookie", "")) is not None
    return status, alert.group(1) if alert else "", issued, pid


WRONG_PASSWORD = (401, "The username or password is not correct.", False)


def refused_like_a_wrong_password(site: Site, user: str) -> None:
    """Sign in as ``user`` with the right password on every replica, worker and host: each answer is
    the one a wrong password gets (status, message, no session)."""
    control = site.user("ctl")
    with browser(site.a) as client:
        token = csrf(client)
    for gw in site.gateways:
        for host in HOSTS:
            assert sign_in_answer(gw, token, control, "not the password at all", host)[:3] == WRONG_PASSWORD
        _refused_by_every_worker(gw, token, user)


def _refused_by_every_worker(gw: Gateway, token: str, user: str) -> None:
    workers = set(gw.worker_pids())
    answered: set[int] = set()

    def every_worker_refused() -> bool:
        for host in HOSTS:
            status, alert, issued, pid = sign_in_answer(gw, token, user, PASSWORD, host)
            assert (status, alert, issued) == WRONG_PASSWORD, (gw.port, host, status, alert)
            answered.add(pid)
        return workers <= answered

    wait_until(every_worker_refused, timeout=60, interval=0, what=f"every worker of :{gw.port} refusing")


def done_page(client: httpx.Client, location: str) -> str:
    """The "done" page a right that ended the session leads to; returns its text."""
    assert location.startswith(f"{PAGE}/done?ref=PR-"), location
    page = httpx.get(f"{client.base_url}{location}", headers=HTML, timeout=30)
    assert page.status_code == 200, page.text
    return page.text


# -- access ------------------------------------------------------------------------------------------


def test_access_the_export_follows_its_schema(site: Site) -> None:
    user = site.user("ann", "--email", f"ann{secrets.token_hex(3)}@example.com")
    with browser(site.a) as anonymous:
        assert api(anonymous, "/.gateway/api/account/export").status_code == 401
        assert api(anonymous, "/.gateway/api/account/requests").status_code == 401
    with signed_in(site.a, user) as client:
        page = client.get(PAGE, headers=HTML)
        assert page.status_code == 200, page.text
        for section in ("Your data", "Correct your details", "Your choices", "Restrict processing"):
            assert section in page.text
        assert "second factor confirmed" in page.text
        # The download: an attachment named for today, the whole export.
        download = client.get(f"{PAGE}/export")
        assert download.status_code == 200, download.text
        today = datetime.now(UTC).date().isoformat()
        assert download.headers["content-disposition"] == f'attachment; filename="personal-data-{today}.json"'
        document = download.json()
        jsonschema.validate(document, SCHEMA)
        assert document["account"]["username"] == user
        assert [f["name"] for f in document["factors"]["totp"] if f["confirmed"]] == ["Authenticator app"]
        # The API: the same document, for scripts.
        answer = api(client, "/.gateway/api/account/export")
        assert answer.status_code == 200, answer.text
        jsonschema.validate(answer.json(), SCHEMA)
        # Both are in the register: two access requests, done, verified by the recent factor.
        listed = api(client, "/.gateway/api/account/requests")
        assert listed.status_code == 200, listed.text
    assert [(r["kind"], r["status"], r["channel"]) for r in listed.json()] == [
        ("access", "completed", "portal"),
        ("access", "completed", "portal"),
    ]
    assert all(
        r["verified_by"].startswith("signed-in session with a second factor at ") for r in listed.json()
    )
    assert [r["status"] for r in site.requests_of(user)] == ["completed", "completed"]
    events = site.rows("SELECT actor FROM audit_events WHERE kind = 'privacy.access' AND subject = ?", user)
    assert [e["actor"] for e in events] == [f"user:{user}", f"user:{user}"]


def test_own_exports_are_limited_across_workers_and_replicas(site: Site) -> None:
    """``privacy.export_limit`` (5 per hour by default) counts in the shared state: taking them on
    another replica or worker does not get past it, and a refused export records nothing."""
    user = site.user("exp")
    with signed_in(site.a, user) as client:
        for _ in range(5):
            assert api(client, "/.gateway/api/account/export").status_code == 200
        refused = api(client, "/.gateway/api/account/export")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "too-many-exports"
        assert client.get(f"{PAGE}/export").status_code == 429
        session = session_of(client)
    for gw in site.gateways:  # the other replica; fresh connections, so any of the workers
        for _ in range(3):
            headers = {**JSON, "Cookie": f"{SESSION_COOKIE}={session}"}
            answer = httpx.get(f"{gw.url}/.gateway/api/account/export", headers=headers, timeout=30)
            assert answer.status_code == 429, answer.text
    assert [r["status"] for r in site.requests_of(user)] == ["completed"] * 5


# -- rectification -------------------------------------------------------------------------------------


def test_rectification_of_the_name_and_no_new_email_from_the_person(site: Site) -> None:
    """The display name is the person's to correct; a new email address is not (an outside review
    linked dave's identity-provider sign-in to the account that claimed dave@ here, and apps keyed by
    X-Gateway-Email took its owner for dave): 403, nothing changes, by the API or a crafted form.
    Removing the address is theirs."""
    user = site.user("ben", "--email", f"ben{secrets.token_hex(3)}@example.com")
    own = site.account(user)
    assert own is not None
    with signed_in(site.b, user) as client:
        done = api(client, "/.gateway/api/account/rectify", {"display_name": "Ben Nyman"})
        assert done.status_code == 200, done.text
        assert (done.json()["kind"], done.json()["status"]) == ("rectification", "completed")
        assert done.json()["outcome"] == "Corrected: display_name."
        for email in (f"dave{secrets.token_hex(3)}@corp.example", "not an address"):
            claimed = api(client, "/.gateway/api/account/rectify", {"email": email, "display_name": "Dave"})
            assert claimed.status_code == 403, claimed.text
            assert claimed.json()["error"] == "email-change-needs-admin"
        # The same address in another spelling is no change, and passes.
        same = api(client, "/.gateway/api/account/rectify", {"email": own["email"].upper()})
        assert same.status_code == 200, same.text
        # A form with an email field the page no longer has: the field is not read.
        form = post_form(
            client, f"{PAGE}/rectify", {"email": "dave@corp.example", "display_name": "B. Nyman"}
        )
        assert form.status_code == 303, form.text
        after = site.account(user)
        assert after is not None
        assert (after["email"], after["display_name"]) == (own["email"], "B. Nyman")
        # Nothing at all to correct is a 400.
        assert api(client, "/.gateway/api/account/rectify", {}).status_code == 400
        removed = post_form(client, f"{PAGE}/rectify", {"remove_email": "1", "display_name": "B. Nyman"})
        assert removed.status_code == 303, removed.text
    gone = site.account(user)
    assert gone is not None
    assert (gone["email"], gone["display_name"]) == (None, "B. Nyman")
    # Refused before a request was opened: the register holds only what was done.
    assert set(r["status"] for r in site.requests_of(user)) == {"completed"}


# -- restriction ---------------------------------------------------------------------------------------


def test_restriction_signs_out_everywhere_and_sign_in_is_refused_like_a_wrong_password(site: Site) -> None:
    user = site.user("cid")
    with signed_in(site.a, user) as client, browser(site.b) as other:
        # A second browser, on the other replica, half-way through its own sign-in.
        assert login(other, user).status_code == 302
        sessions = [session_of(client), session_of(other)]
        assert me(site.b, sessions[1]) == 403  # its second factor is still owed
        assert me(site.b, sessions[0]) == 200  # the first browser's session works on every replica
        # The box must be ticked; nothing happens without it.
        unticked = post_form(client, f"{PAGE}/restrict")
        assert unticked.status_code == 400
        assert site.requests_of(user) == []
        answer = post_form(client, f"{PAGE}/restrict", {"confirm": "yes"})
        assert answer.status_code == 303, answer.text
        # The cookie is cleared, and the done page names the request.
        assert 'gateway_session=""' in answer.headers["set-cookie"]
        text = done_page(client, answer.headers["location"])
        assert "Processing is restricted" in text
        assert "cannot sign in until an administrator lifts the restriction" in text
        [request] = site.requests_of(user)
        assert request["ref"] in text
        assert (request["kind"], request["status"]) == ("restriction", "completed")
        # Every session ended, on every replica.
        ended_everywhere(site, sessions)
    account = site.account(user)
    assert account is not None
    assert account["restricted"] in (True, 1)
    refused_like_a_wrong_password(site, user)


# -- closure -------------------------------------------------------------------------------------------


def test_closure_ends_the_sessions_and_refuses_sign_in(site: Site) -> None:
    user = site.user("dee")
    with signed_in(site.a, user) as client:
        sid = session_of(client)
        answer = api(client, "/.gateway/api/account/close")
        assert answer.status_code == 200, answer.text
        assert (answer.json()["kind"], answer.json()["status"]) == ("closure", "completed")
        assert "180 days" in answer.json()["outcome"]
        assert 'gateway_session=""' in answer.headers["set-cookie"]
        ended_everywhere(site, [sid])
    account = site.account(user)
    assert account is not None
    assert account["closed_at"] is not None
    refused_like_a_wrong_password(site, user)


# -- erasure -------------------------------------------------------------------------------------------


def _columns_naming(site: Site, needles: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(seq, column, needle) for every audit_events column that holds one of ``needles``."""
    found = []
    for row in site.rows("SELECT * FROM audit_events"):
        for column, value in row.items():
            text = "" if value is None else str(value)
            for needle in needles:
                # An address must not match as the prefix of a longer one (198.51.100.12 in .123).
                pattern = re.escape(needle) + (r"(?!\d)" if needle[0].isdigit() else "")
                if re.search(pattern, text):
                    found.append((row["seq"], column, needle))
    return found


def test_erasure_leaves_no_name_or_address_and_the_trail_verifies(site: Site) -> None:
    user = site.user("eve", "--email", f"eve{secrets.token_hex(3)}@example.com")
    ip = client_ip()
    with signed_in(site.a, user, ip) as client:
        sid = session_of(client)
        assert api(client, "/.gateway/api/account/rectify", {"display_name": "Eve Erased"}).status_code == 200
        # Before: the trail names the person and their address (so the search below can find them).
        named = _columns_naming(site, (user, ip))
        assert {column for _, column, needle in named if needle == user} >= {"subject"}
        assert {column for _, column, needle in named if needle == ip} >= {"ip"}
        # A wrong confirmation erases nothing.
        wrong = api(client, "/.gateway/api/account/erase", {"confirm": user.upper() + "x"})
        assert wrong.status_code == 400, wrong.text
        assert wrong.json()["error"] == "confirmation-mismatch"
        assert site.account(user) is not None
        answer = post_form(client, f"{PAGE}/erase", {"confirm": user})
        assert answer.status_code == 303, answer.text
        text = done_page(client, answer.headers["location"])
        assert "Your account was erased" in text
        assert "kept for 180 days" in text
        ref = answer.headers["location"].rsplit("=", 1)[1]
        ended_everywhere(site, [sid])
    assert site.account(user) is None
    # The register keeps the request under the person's pseudonym only.
    [request] = site.rows("SELECT * FROM privacy_requests WHERE ref = ?", ref)
    assert (request["kind"], request["status"]) == ("erasure", "completed")
    assert request["subject"].startswith("[erased:")
    assert site.rows("SELECT count(*) AS n FROM removed_content WHERE ref = ?", ref)[0]["n"] == 1
    # The trail still verifies, by the operator's own command, and counts the erased records.
    verify = run_cli("audit", "verify", "--config", str(site.a.config_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "record(s) with erased personal fields" in verify.stdout, verify.stdout
    # ...and neither the name nor the address is left in any column of any audit record.
    assert _columns_naming(site, (user, ip)) == []
    assert site.rows("SELECT count(*) AS n FROM audit_events WHERE kind = 'privacy.erased'")[0]["n"] >= 1
    refused_like_a_wrong_password(site, user)


# -- a legal hold --------------------------------------------------------------------------------------


def place_hold(gw: Gateway, reference: str, username: str) -> None:
    """Place a legal hold on ``username`` as an operator does: ``gateway privacy hold place``."""
    done = run_cli(
        "privacy",
        "hold",
        "place",
        reference,
        "--reason",
        "preservation order",
        "--user",
        username,
        "--config",
        str(gw.config_path),
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_legal_hold_puts_the_erasure_on_hold_and_restricts_the_account(site: Site) -> None:
    user = site.user("fay")
    reference = f"ORDER-{secrets.token_hex(3).upper()}"
    place_hold(site.a, reference, user)
    with signed_in(site.b, user) as client:
        sid = session_of(client)
        answer = api(client, "/.gateway/api/account/erase", {"confirm": user})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # A hold's reference is for admins only: the order may be confidential (an attack run read
        # its case number here).
        assert (body["kind"], body["status"], body["hold_ref"]) == ("erasure", "on_hold", "")
        assert reference not in answer.text
        assert 'gateway_session=""' in answer.headers["set-cookie"]
        text = done_page(client, f"{PAGE}/done?ref={body['ref']}")
        assert "Your erasure is on hold" in text
        assert "A legal hold suspends the erasure" in text
        ended_everywhere(site, [sid])
    account = site.account(user)
    assert account is not None  # kept, as the hold demands
    assert account["restricted"] in (True, 1)
    [request] = site.requests_of(user)
    assert (request["status"], request["hold_ref"]) == ("on_hold", reference)
    refused_like_a_wrong_password(site, user)


# -- without a recent second factor ---------------------------------------------------------------------

STALE_AFTER = 2.0


@pytest.fixture(scope="module")
def stale_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("account-privacy-stale")
    with run_echo() as echo:
        config = _config(tmp, free_port(), echo.url, mfa={"reauth_max_age": f"{STALE_AFTER:g}s"})
        with run_gateway(tmp, config) as gw:
            yield gw


def test_no_right_without_a_recent_second_factor(stale_gw: Gateway) -> None:
    site = Site([stale_gw], str(stale_gw.config_path.parent / "data" / "gateway.db"))
    user = site.user("gus")
    # Enrolment must follow the password within STALE_AFTER: start early in a TOTP step, so the
    # enrolment's code needs no wait for the next one.
    clear_of_step_end(10)
    with browser(stale_gw) as client:
        assert login(client, user).status_code == 302
        secret = enroll_totp(client)
        factor_at = client.get("/.gateway/api/me", headers=JSON).json()["second_factor_at"]
        wait_until(lambda: time.time() - factor_at > STALE_AFTER + 0.5, timeout=10, what="the factor aged")
        # Scripts: 403 mfa-required for every right.
        for path, body in (
            ("/.gateway/api/account/erase", {"confirm": user}),
            ("/.gateway/api/account/close", None),
            ("/.gateway/api/account/restrict", None),
            ("/.gateway/api/account/rectify", {"display_name": "Gus"}),
            ("/.gateway/api/account/export", None),
        ):
            refused = api(client, path, body)
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["error"] == "mfa-required", refused.text
        # Browsers: sent to the second-factor page, returning to the privacy page.
        step_up = "/.gateway/mfa?need=any&rd=%2F.gateway%2Faccount%2Fprivacy"
        for path, fields in (
            (f"{PAGE}/erase", {"confirm": user}),
            (f"{PAGE}/close", {"confirm": "yes"}),
            (f"{PAGE}/restrict", {"confirm": "yes"}),
            (f"{PAGE}/rectify", {"display_name": "Gus"}),
        ):
            sent = post_form(client, path, fields)
            assert (sent.status_code, sent.headers.get("location")) == (303, step_up), (path, sent.text)
        download = client.get(f"{PAGE}/export")
        assert (download.status_code, download.headers.get("location")) == (303, step_up)
        page = client.get(PAGE, headers=HTML)
        assert "Confirm it's you first" in page.text
        # Nothing changed: the account is whole, the session still works, no request was registered.
        account = site.account(user)
        assert account is not None
        assert (account["restricted"], account["closed_at"], account["display_name"]) == (0, None, "")
        assert client.get("/.gateway/api/me", headers=JSON).status_code == 200
        assert site.requests_of(user) == []
        # The second factor again: now the same erasure is done.
        again = post_form(client, "/.gateway/mfa/totp", {"code": oathtool(secret, time.time()), "rd": PAGE})
        assert again.status_code in (302, 303), again.text
        erased = api(client, "/.gateway/api/account/erase", {"confirm": user})
        assert erased.status_code == 200, erased.text
        assert erased.json()["status"] == "completed"
    assert site.account(user) is None
