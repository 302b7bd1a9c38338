"""A running gateway's own pages answer only on the auth host and the routes' hosts (issue 12, item 9),
and the hand-off page never sends a browser off its host (issue 12, item 3), over real HTTP.

One gateway (``python -m gateway serve``): the auth host ``127.0.0.1`` (``public_url``), routes on
``app.test`` and ``*.apps.test`` (one factor is enough on both), and an identity provider whose issuer
refuses connections (its start page still answers on the auth host). Requests carry the ``Host`` an
attacker would choose; httpx sends it as given.

What a browser does with the hand-off page's links is tested in Chromium
(``tests/e2e/test_redirect_corpus.py``); here the bytes the gateway sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from gateway.identity.sessions import hash_session_id
from tests.integration.harness import (
    Gateway,
    add_user,
    dead_port,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
)
from tests.integration.http_client import (
    HANDOFF_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    browser,
    cookie,
    follow_handoff,
    login,
    post_form,
)
from tests.integration.test_sign_in_steps import enroll_totp, next_code

EVIL = "evil.test"
LINK_RE = re.compile(r'<a class="button" href="([^"]*)">Try again</a>')

# Everything under /.gateway/ that a browser or a script of the attacker's page could use.
PAGES = [
    ("GET", "/.gateway/login"),
    ("POST", "/.gateway/login"),
    ("GET", "/.gateway/mfa"),
    ("POST", "/.gateway/mfa/totp"),
    ("GET", "/.gateway/account"),
    ("GET", "/.gateway/account/enroll"),
    ("GET", "/.gateway/account/password"),
    ("GET", "/.gateway/oidc/corp/start"),
    ("GET", "/.gateway/oidc/corp/callback"),
    ("GET", "/.gateway/handoff"),
    ("GET", "/.gateway/logout"),
    ("POST", "/.gateway/api/login/passkey/options"),
    ("GET", "/.gateway/api/schema"),
    ("GET", "/.gateway/static/gateway.css"),
]


@dataclass
class Site:
    gw: Gateway

    def send(self, method: str, path: str, host: str, **kwargs: Any) -> httpx.Response:
        headers = {"Host": host, **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.gw.url}{path}", headers=headers, timeout=30, **kwargs)

    @property
    def auth(self) -> str:
        return f"127.0.0.1:{self.gw.port}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("page-hosts")
    port = free_port()
    with run_echo() as echo, dead_port() as down:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "app.test", "upstreams": [echo.url], "mfa": "none"},
            {"name": "apps", "host": "*.apps.test", "upstreams": [echo.url], "mfa": "none"},
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            session={"insecure_cookies": True},
            # This test plays the proxy that asks forward-auth questions.
            trusted_proxies=["127.0.0.1/32"],
            identity_providers=[
                {
                    "name": "corp",
                    "issuer": f"http://127.0.0.1:{down}",
                    "client_id": "gateway",
                    "client_secret": "not-used-here",
                }
            ],
        )
        with run_gateway(tmp, config) as gw:
            yield Site(gw)


# -- item 9: the pages answer on the auth host and the routes' hosts only ----------------------------


@pytest.mark.parametrize(("method", "path"), PAGES, ids=[f"{m} {p}" for m, p in PAGES])
@pytest.mark.parametrize("host", [EVIL, f"{EVIL}:8080", "10.9.8.7", "a.b.apps.test", "apps.test"])
def test_pages_are_not_served_on_other_hosts(site: Site, method: str, path: str, host: str) -> None:
    """The attack: the genuine sign-in page (and the rest) under a name the operator never chose."""
    resp = site.send(method, path, host, headers={"Accept": "text/html"})
    assert resp.status_code == 404, resp.text
    assert "no-route" in resp.text
    assert "Sign in" not in resp.text
    # Nothing is set up for that host either: no session, no CSRF token, no sign-in in flight.
    assert "set-cookie" not in resp.headers


def test_sign_in_page_on_the_auth_host(site: Site) -> None:
    resp = site.send("GET", "/.gateway/login", site.auth)
    assert resp.status_code == 200
    assert 'action="/.gateway/login"' in resp.text


@pytest.mark.parametrize("host", ["app.test", "team1.apps.test", "APP.test.", "app.test:8443"])
def test_sign_in_and_portal_on_route_hosts_are_the_auth_hosts(site: Site, host: str) -> None:
    """An attack run: an app's own script (same origin as the pages on its host) registered its own
    passkey through the portal's API there. The pages are the auth host's: a browser is sent there,
    a script gets a 404 and nothing is set up."""
    for path in (
        "/.gateway/login",
        "/.gateway/account",
        "/.gateway/privacy",
        "/.gateway/api/webauthn/register/options",
    ):
        page = site.send("GET", path + "?rd=%2Fx", host, headers={"Accept": "text/html"})
        assert page.status_code == 302, path
        assert page.headers["location"] == f"http://{site.auth}{path}?rd=%2Fx"
        for method in ("GET", "POST"):
            script = site.send(method, path, host, headers={"Accept": "application/json"})
            assert script.status_code == 404, (method, path)
            assert "set-cookie" not in script.headers
    assert site.send("GET", "/.gateway/static/error.css", host).status_code == 200


def test_route_host_still_sends_to_sign_in(site: Site) -> None:
    resp = site.send("GET", "/page", "app.test", headers={"Accept": "text/html"})
    assert resp.status_code == 302
    target = urlsplit(resp.headers["location"])
    assert (target.netloc, target.path) == (site.auth, "/.gateway/login")


def test_oidc_start_on_a_route_host_goes_to_the_auth_host(site: Site) -> None:
    resp = site.send(
        "GET",
        "/.gateway/oidc/corp/start?rd=%2Fx&login_hint=a%40b.test",
        "app.test",
        headers={"Accept": "text/html"},
    )
    assert resp.status_code in (302, 307)
    target = urlsplit(resp.headers["location"])
    assert (target.netloc, target.path) == (site.auth, "/.gateway/oidc/corp/start")
    assert parse_qs(target.query) == {"rd": ["/x"], "login_hint": ["a@b.test"]}


@pytest.mark.parametrize("host", [EVIL, "10.9.8.7", "10.9.8.7:8080", "[::1]"])
def test_probes_answer_on_every_host(site: Site, host: str) -> None:
    """Load balancers and proxies probe by IP address: health, readiness, JWKS and forward-auth."""
    assert site.send("GET", "/.gateway/health", host).status_code == 200
    assert site.send("GET", "/.gateway/ready", host).status_code == 200
    jwks = site.send("GET", "/.gateway/jwks.json", host)
    assert jwks.status_code == 200
    assert jwks.json()["keys"]
    asked = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http", "X-Forwarded-Uri": "/x"}
    # Forward-auth answers about the original request's host: a route host → sign-in needed, a host
    # with no route → not found; both are answers, from any Host the proxy uses to reach us.
    resp = site.send("GET", "/.gateway/auth", host, headers={**asked, "X-Forwarded-Host": "app.test"})
    assert resp.status_code == 401
    resp = site.send("GET", "/.gateway/auth", host, headers={**asked, "X-Forwarded-Host": EVIL})
    assert resp.status_code in (403, 404)


# -- item 3: the hand-off page follows only a path on its own host -----------------------------------

# rd values as the attacker puts them in the link (already percent-encoded where a URL would be).
HOSTILE = [
    "/%09/evil.test",
    "/%0A/evil.test",
    "/%0D%0A/evil.test",
    "/%0D/evil.test",
    "/%09%09/evil.test",
    "%09//evil.test",
    "/%5Cevil.test",
    "/%5C%09evil.test",
    "//evil.test",
    "/%2F%2Fevil.test",
    "/%252F%252Fevil.test",
    "/a/..//evil.test",
    "/a/%2e%2e//evil.test",
    "https://evil.test/",
    "https%3A%2F%2Fevil.test",
    "http://app.test/x",
    "%20//evil.test",
    "/%EF%BC%8Fevil.test",
]


@pytest.mark.parametrize("rd", HOSTILE)
def test_handoff_error_page_links_only_to_its_own_host(site: Site, rd: str) -> None:
    """The reported attack: an expired code, rd=/%09/evil.test → a "Try again" link to evil.test."""
    resp = site.send("GET", f"/.gateway/handoff?code=expired&rd={rd}", "app.test")
    assert resp.status_code == 400
    assert LINK_RE.findall(resp.text) == ["/"]


def test_handoff_with_a_valid_code_redirects_only_to_its_own_host(site: Site) -> None:
    """A real code (the attacker's own, say) with a hostile rd: the Location is "/" every time."""
    add_user(site.gw.config_path, "handoff", PASSWORD)
    with browser(site.gw) as client:
        assert login(client, "handoff").status_code == 302
        for rd in HOSTILE:
            resp = client.get("/.gateway/login", params={"rd": f"http://app.test:{site.gw.port}/x"})
            target = urlsplit(resp.headers["location"])
            assert (target.netloc, target.path) == (f"app.test:{site.gw.port}", "/.gateway/handoff")
            code = parse_qs(target.query)["code"][0]
            hostile = f"http://app.test:{site.gw.port}/.gateway/handoff?code={code}&rd={rd}"
            redeemed = follow_handoff(client, hostile, connect=site.gw.url)
            assert redeemed.status_code == 302, (rd, redeemed.text)
            assert redeemed.headers["location"] == "/", rd
            assert SESSION_COOKIE in redeemed.headers.get("set-cookie", "")
        # Control: a plain path on the host is followed as given.
        resp = client.get("/.gateway/login", params={"rd": f"http://app.test:{site.gw.port}/x?y=1"})
        redeemed = follow_handoff(client, resp.headers["location"], connect=site.gw.url)
        assert redeemed.headers["location"] == "/x?y=1"


def test_a_handoff_link_signs_in_only_the_browser_that_signed_in(site: Site) -> None:
    """Login CSRF, as an outside review ran it: carol signs in, keeps her hand-off link instead of
    following it and has the victim's browser open it; the victim was signed out of the app and into
    carol's account. Now the link (at any of its three steps) makes no session in another browser."""
    add_user(site.gw.config_path, "carol-csrf", PASSWORD)
    add_user(site.gw.config_path, "victim-csrf", PASSWORD)
    app = f"http://app.test:{site.gw.port}/inbox"
    with browser(site.gw) as carol, browser(site.gw) as victim:
        assert login(carol, "carol-csrf").status_code == 302
        assert login(victim, "victim-csrf").status_code == 302
        victims_app = follow_handoff(
            victim, victim.get("/.gateway/login", params={"rd": app}).headers["location"], connect=site.gw.url
        )
        victims_session = victims_app.cookies.get(SESSION_COOKIE)
        assert victims_session

        # Step one, the link as carol got it, opened by the victim's browser (its own auth session).
        link = carol.get("/.gateway/login", params={"rd": app}).headers["location"]
        opened = follow_handoff(victim, link, connect=site.gw.url)
        assert opened.status_code == 400, opened.text
        assert "not for this browser" in opened.text
        assert SESSION_COOKIE not in opened.headers.get("set-cookie", "")

        # Step three: carol follows the link herself up to the last hop, then hands that out.
        link = carol.get("/.gateway/login", params={"rd": app}).headers["location"]
        first = site.send("GET", link.split(f":{site.gw.port}", 1)[1], "app.test")
        back = carol.get(first.headers["location"])
        assert back.status_code == 302
        last = back.headers["location"].split(f":{site.gw.port}", 1)[1]
        for cookies in ({}, {HANDOFF_COOKIE: "guessed"}):
            header = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {}
            stolen = site.send("GET", last, "app.test", headers=header)
            assert stolen.status_code == 400, stolen.text
            assert SESSION_COOKIE not in stolen.headers.get("set-cookie", "")

        # The victim is still signed in to the app as themselves.
        probe = site.send(
            "GET",
            "/probe",
            "app.test",
            headers={"Cookie": f"{SESSION_COOKIE}={victims_session}", "Accept": "application/json"},
        )
        assert probe.status_code == 200, probe.text
        assert dict(probe.json()["headers"]).get("x-gateway-user") == "victim-csrf"


def test_a_handoff_step_opened_twice_says_the_link_was_used(site: Site) -> None:
    """The confirm step reloaded in the browser that signed in (the back button, a double click) is
    told the link was already used; it used to say the link was not for this browser, which sends a
    person looking for a browser problem that is not there."""
    add_user(site.gw.config_path, "erin-reload", PASSWORD)
    app = f"http://app.test:{site.gw.port}/inbox"
    with browser(site.gw) as erin:
        assert login(erin, "erin-reload").status_code == 302
        link = erin.get("/.gateway/login", params={"rd": app}).headers["location"]
        first = site.send("GET", link.split(f":{site.gw.port}", 1)[1], "app.test")
        confirm = first.headers["location"]
        assert erin.get(confirm).status_code == 302
        again = erin.get(confirm)
        assert again.status_code == 400, again.text
        assert "already used" in again.text
        assert "not for this browser" not in again.text


def test_a_handoff_code_dies_with_the_session_a_password_change_renews(site: Site) -> None:
    """An attack run: a thief with a copy of the auth-host cookie took a hand-off code to its last
    step, the owner changed her password (ending every other session and renewing hers), and the
    thief's code still became a new session on every host. The code now dies with its session."""
    add_user(site.gw.config_path, "dana-handoff", PASSWORD)
    app = f"http://app.test:{site.gw.port}/inbox"
    with browser(site.gw) as dana:
        assert login(dana, "dana-handoff").status_code == 302
        enroll_totp(dana)  # a password change needs a second factor
        stolen = cookie(dana, SESSION_COOKIE)
        # The thief's requests carry the copied cookie: the same session as dana's browser.
        link = dana.get("/.gateway/login", params={"rd": app}).headers["location"]
        first = site.send("GET", link.split(f":{site.gw.port}", 1)[1], "app.test")
        nonce = first.cookies.get(HANDOFF_COOKIE) or ""
        back = dana.get(first.headers["location"])
        assert back.status_code == 302
        last = back.headers["location"].split(f":{site.gw.port}", 1)[1]

        changed = post_form(
            dana,
            "/.gateway/account/password",
            {"current": PASSWORD, "new": "a brand new passphrase 9", "confirm": "a brand new passphrase 9"},
        )
        assert changed.status_code == 303, changed.text
        assert "Password changed." in unquote(changed.headers["location"])
        assert cookie(dana, SESSION_COOKIE) != stolen  # dana's session was renewed; the copy is dead

        redeemed = site.send("GET", last, "app.test", headers={"Cookie": f"{HANDOFF_COOKIE}={nonce}"})
        assert redeemed.status_code == 400, redeemed.text
        assert SESSION_COOKIE not in redeemed.headers.get("set-cookie", "")


def test_an_app_hosts_session_is_that_hosts_alone(site: Site) -> None:
    """An attack run: the cookie of the session app1 got through the hand-off, copied to the auth host,
    opened the person's account portal (factors, password, privacy, hand-offs to every host), and on
    app2 the app. A hand-off session is now its own host's only; the auth host's sign-in still goes
    wherever its cookie is sent."""
    add_user(site.gw.config_path, "bound", PASSWORD)
    with browser(site.gw) as client:
        assert login(client, "bound").status_code == 302
        resp = client.get("/.gateway/login", params={"rd": f"http://app.test:{site.gw.port}/x"})
        redeemed = follow_handoff(client, resp.headers["location"], connect=site.gw.url)
        app_session = redeemed.cookies.get(SESSION_COOKIE)
        auth_session = cookie(client)
    assert app_session
    assert auth_session
    on = {"Cookie": f"{SESSION_COOKIE}={app_session}", "Accept": "application/json"}
    assert site.send("GET", "/x", f"app.test:{site.gw.port}", headers=on).status_code == 200
    assert site.send("GET", "/x", f"one.apps.test:{site.gw.port}", headers=on).status_code == 401
    portal = site.send("GET", "/.gateway/api/me", site.auth, headers=on)
    assert portal.status_code == 401, portal.text
    # The control: the auth host's own sign-in opens both.
    theirs = {"Cookie": f"{SESSION_COOKIE}={auth_session}", "Accept": "application/json"}
    signed_in = site.send("GET", "/.gateway/api/me", site.auth, headers=theirs)
    assert (signed_in.status_code, signed_in.json()["error"]) == (403, "mfa-required")  # known: enrol first
    assert site.send("GET", "/x", f"one.apps.test:{site.gw.port}", headers=theirs).status_code == 200


def test_signing_out_another_browser_from_the_portal_ends_its_sign_in_on_every_host(site: Site) -> None:
    """A re-attack run: the owner signed a stolen sign-in out from "my sessions" (its auth-host row),
    and the intruder's app-host cookie of that sign-in still got 200. Ending another browser's session
    ends its whole sign-in."""
    add_user(site.gw.config_path, "twice", PASSWORD)
    with browser(site.gw) as owner, browser(site.gw) as intruder:
        assert login(owner, "twice").status_code == 302
        secret, _ = enroll_totp(owner)
        assert login(intruder, "twice").status_code == 302
        assert post_form(intruder, "/.gateway/mfa/totp", {"code": next_code(secret)}).status_code in (
            302,
            303,
        )
        resp = intruder.get("/.gateway/login", params={"rd": f"http://app.test:{site.gw.port}/x"})
        redeemed = follow_handoff(intruder, resp.headers["location"], connect=site.gw.url)
        app_session = redeemed.cookies.get(SESSION_COOKIE)
        intruders = cookie(intruder)
        assert app_session
        assert intruders
        on_app = {"Cookie": f"{SESSION_COOKIE}={app_session}", "Accept": "application/json"}
        assert site.send("GET", "/x", f"app.test:{site.gw.port}", headers=on_app).status_code == 200

        ended = post_form(owner, f"/.gateway/account/sessions/{hash_session_id(intruders)}/revoke")
        assert ended.status_code == 303, ended.text
        assert site.send("GET", "/x", f"app.test:{site.gw.port}", headers=on_app).status_code == 401
        assert owner.get("/.gateway/api/me").status_code == 200  # the owner's own sign-in goes on
