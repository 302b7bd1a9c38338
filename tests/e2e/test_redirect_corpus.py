"""The whole open-redirect corpus through real pages in Chromium: no link and no redirect leaves the site
(issue 12, item 3).

The reported hole was not in a ``Location`` header but in what a browser does with a link:
``rd=/%09/evil.test`` became the hand-off page's "Try again" link ``/<TAB>/evil.test``, which Chromium
resolves to ``http://evil.test/``. So every row of ``tests/support/redirect_corpus.py`` (the
oauth2-proxy / Keycloak advisory inputs plus the tab, newline and CRLF variants), and a copy of each
row rewritten to this site's host names, is given as ``rd`` to the pages that take one, and what
Chromium makes of it is read back:

* the resolved ``href`` of every link, the ``action`` of every form and the ``data-rd`` of every
  button, as DOM properties (the browser's HTML and URL parsers), on the hand-off error page, the
  sign-in page, the OIDC "provider down" page and the sign-out page;
* every request the browser makes while following the redirects of the MFA, enrollment, password
  and sign-in pages (signed out and signed in) and of the hand-off page with a valid code, recorded
  from the browser's network events, each hop of a redirect chain included.

Nothing may name a host other than the auth host and the routes' hosts; the hand-off page may not
even leave its own origin. Every other host name fails to resolve at once in this browser
(``--host-resolver-rules``), so an escape shows as a recorded request, never as a network call.

A navigation costs about 0.3 s on a busy two-core machine, so the corpus (some 200 rows per page) is
driven from inside one page: ``fetch`` loads each page as the browser would (cookies, redirects), the
page's HTML goes through the browser's ``DOMParser`` with a ``<base>`` of the URL it came from, and
the links are read as DOM properties, which resolve exactly as on the rendered page. The reported
inputs are also opened as real navigations and their "Try again" link clicked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, sync_playwright

from tests.e2e.conftest import CHROMIUM, PASSWORD
from tests.integration.harness import (
    Gateway,
    add_user,
    dead_port,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
)
from tests.support.redirect_corpus import CASES

pytestmark = pytest.mark.peer

SESSION_COOKIE = "gateway_session"


@dataclass
class Site:
    gw: Gateway
    port: int
    escapes: list[str] = field(default_factory=list)

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"

    @staticmethod
    def allowed_host(host: str | None) -> bool:
        """The auth host and the routes' hosts (``app.localhost`` and ``*.apps.localhost``)."""
        # A trailing dot names the same host (the corpus follows "https://auth.example.com./x").
        name = (host or "").removesuffix(".")
        return name in ("auth.localhost", "app.localhost") or bool(
            re.fullmatch(r"[a-z0-9-]+\.apps\.localhost", name)
        )

    def localise(self, rd: str) -> str:
        """The same attack against this site's names (https → http; a port where the host ends)."""
        out = re.sub(r"(?i)https://", "http://", rd)
        for pattern, name in (
            (r"auth\.example\.com", "auth.localhost"),
            (r"(?:wiki|finance)\.example\.com", "app.localhost"),
            (r"apps\.example\.com", "apps.localhost"),
        ):
            out = re.sub(rf"(?i){pattern}(?=[/?#]|$)", f"{name}:{self.port}", out)
            out = re.sub(rf"(?i){pattern}", name, out)
        return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("redirect-corpus")
    port = free_port()
    with run_echo() as echo, dead_port() as down:
        routes: list[dict[str, Any]] = [
            # Public: wherever a redirect lands on an application, the application answers (no
            # sign-in or enrollment redirects of the data plane in between).
            {"name": "app", "host": "app.localhost", "upstreams": [echo.url], "public_paths": ["/*"]},
            {"name": "apps", "host": "*.apps.localhost", "upstreams": [echo.url], "public_paths": ["/*"]},
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            public_url=f"http://auth.localhost:{port}",
            session={"insecure_cookies": True},
            # The corpus starts a sign-in per payload from one address, hundreds a minute: the
            # per-address limit on starts (tests/unit/web/test_oidc_floods.py) is off here.
            regulation={"address_challenges": 0},
            # A provider that is down: its start page answers with a "Try again" link carrying rd.
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
            add_user(gw.config_path, "rdcorpus", PASSWORD)
            yield Site(gw, port)


@pytest.fixture(scope="module")
def isolated_browser() -> Iterator[Browser]:
    """Chromium in which only *.localhost resolves (to loopback): an escape never touches the network."""
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE *.localhost",
            ],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(isolated_browser: Browser, site: Site) -> Iterator[BrowserContext]:
    # The corpus is driven by fetch from inside a gateway page; that page's CSP (connect-src 'self')
    # would stop the cross-origin hops (a hand-off to another host) that this test must follow.
    ctx = isolated_browser.new_context(bypass_csp=True)
    requested: list[str] = []

    def note(request: Request) -> None:
        # Fired for every request, each hop of a redirect chain included.
        if not site.allowed_host(urlsplit(request.url).hostname):
            requested.append(request.url)

    ctx.on("request", note)
    site.escapes = requested
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def corpus(site: Site) -> list[str]:
    """Every rd of the table, and each row that names a host rewritten to this site's names."""
    rows = [rd for _, rd, _ in CASES if rd is not None]
    rows += [site.localise(rd) for rd in rows if "example.com" in rd.lower()]
    return list(dict.fromkeys(rows))


def with_rd(url: str, rd: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}rd={quote(rd, safe='')}"


# Load each page with fetch (same origin: its HTML is readable), parse it with the browser's HTML
# parser under a <base> of the URL it came from, and read every URL on it as the DOM resolves it.
READ_PAGES = """async (urls) => {
  const out = [];
  for (const url of urls) {
    let resp;
    try {
      resp = await fetch(url, {credentials: "include"});
    } catch (e) {
      // A redirect to another origin (CORS): reported as a failure with the browser's words.
      out.push([url, `error: ${e}`, 0, "", []]);
      continue;
    }
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const base = doc.createElement("base");
    base.href = resp.url;
    doc.head.prepend(base);
    const found = [
      ...Array.from(doc.querySelectorAll("a[href]"), a => ["a", a.href]),
      ...Array.from(doc.querySelectorAll("form"), f => ["form", f.action]),
      ...Array.from(doc.querySelectorAll("[data-rd]"),
                    e => ["data-rd", e.dataset.rd ? new URL(e.dataset.rd, resp.url).href : ""]),
    ];
    out.push([url, resp.url, resp.status, doc.querySelector("h1")?.textContent ?? "", found]);
  }
  return out;
}"""
# Follow each URL's redirects as the browser does (no-cors: cross-origin hops are followed too);
# where they lead is recorded by the network events, not read here.
FOLLOW = """async (urls) => {
  for (const url of urls) {
    try { await fetch(url, {mode: "no-cors", credentials: "include"}); } catch (e) { /* an escape */ }
  }
}"""


@dataclass(frozen=True, slots=True)
class Rendered:
    rd: str
    final_url: str
    status: int
    title: str
    urls: tuple[tuple[str, str], ...]


def render_all(page: Page, site: Site, host: str, url_for: Callable[[str], str]) -> list[Rendered]:
    """Every rd of the corpus rendered into the page ``url_for(rd)`` on ``host``, links read back."""
    page.goto(site.url(host, "/.gateway/health"))
    rds = corpus(site)
    answers = page.evaluate(READ_PAGES, [url_for(rd) for rd in rds])
    return [
        Rendered(rd, final, status, title, tuple((kind, url) for kind, url in found))
        for rd, (_, final, status, title, found) in zip(rds, answers, strict=True)
    ]


def leaves(url: str, site: Site, origin: tuple[str | None, int | None] | None = None) -> bool:
    """Whether a resolved URL leaves the site (or, given one, the origin (host, port)).

    An empty one is a button without a return URL (the passkey button when rd was refused).
    """
    if not url:
        return False
    parts = urlsplit(url)
    if parts.scheme != "http" or not site.allowed_host(parts.hostname):
        return True
    return origin is not None and (parts.hostname, parts.port) != origin


def sign_in(page: Page, site: Site) -> str:
    """Sign in in the browser; returns the session id (for asking the gateway for hand-off codes)."""
    page.goto(site.url("auth.localhost", "/.gateway/login"))
    page.fill("#username", "rdcorpus")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state("domcontentloaded")
    values = [c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert values, "sign-in did not set a session cookie"
    return values[0]


def handoff_code(client: httpx.Client, site: Site, session_id: str) -> str:
    """A fresh hand-off code for app.localhost, as the sign-in page issues it to this session."""
    resp = client.get(
        f"http://127.0.0.1:{site.port}/.gateway/login",
        params={"rd": site.url("app.localhost", "/")},
        headers={"Host": f"auth.localhost:{site.port}", "Cookie": f"{SESSION_COOKIE}={session_id}"},
    )
    target = urlsplit(resp.headers["location"])
    assert target.path == "/.gateway/handoff", resp.headers["location"]
    return parse_qs(target.query)["code"][0]


# -- links: the resolved href of everything a page shows -------------------------------------------

# The inputs of the report, as an attacker writes them into the link (the query decodes them once).
REPORTED = ["/%09/evil.test", "/%0A/evil.test", "/%0D%0A/evil.test", "/%5C/evil.test", "/%09%5Cevil.test"]


@pytest.mark.parametrize("rd", REPORTED)
def test_reported_attack_try_again_stays_on_the_host(site: Site, page: Page, rd: str) -> None:
    """The reported attack, clicked: an expired hand-off code, rd=/%09/evil.test, "Try again"."""
    page.goto(site.url("app.localhost", f"/.gateway/handoff?code=expired&rd={rd}"))
    link = page.locator("a:has-text('Try again')")
    assert link.evaluate("a => a.href") == site.url("app.localhost", "/")
    with page.expect_request(lambda request: request.is_navigation_request()) as clicked:
        link.click()
    assert clicked.value.url == site.url("app.localhost", "/")
    page.wait_for_load_state("domcontentloaded")
    assert site.escapes == []


def test_handoff_error_page_links_never_leave_its_origin(site: Site, page: Page) -> None:
    base = site.url("app.localhost", "/.gateway/handoff?code=expired")
    origin = ("app.localhost", site.port)
    rendered = render_all(page, site, "app.localhost", lambda rd: with_rd(base, rd))
    failures = {r.rd: r.urls for r in rendered if any(leaves(url, site, origin) for _, url in r.urls)}
    assert failures == {}
    assert {r.title for r in rendered} == {"This sign-in link has expired or was already used"}
    # The link is there to be checked: every page has its "Try again" link.
    assert all(any(kind == "a" and "/.gateway/" not in url for kind, url in r.urls) for r in rendered)
    assert site.escapes == []


@pytest.mark.parametrize(
    ("host", "path", "title"),
    [
        ("auth.localhost", "/.gateway/login", "Sign in"),
        ("auth.localhost", "/.gateway/oidc/corp/start", "corp is not answering"),
        ("app.localhost", "/.gateway/logout", "You are signed out"),
    ],
    ids=["login", "oidc-start-provider-down", "logout"],
)
def test_page_links_never_leave_the_site(site: Site, page: Page, host: str, path: str, title: str) -> None:
    rendered = render_all(page, site, host, lambda rd: with_rd(site.url(host, path), rd))
    failures = {
        r.rd: (r.final_url, r.urls)
        for r in rendered
        if leaves(r.final_url, site) or any(leaves(url, site) for _, url in r.urls)
    }
    assert failures == {}
    assert {r.title for r in rendered} == {title}
    assert site.escapes == []


# -- redirects: every hop the browser makes, recorded from its network events ------------------------


@pytest.mark.parametrize(
    "path", ["/.gateway/mfa", "/.gateway/account/enroll", "/.gateway/account/password", "/.gateway/login"]
)
def test_signed_out_redirects_never_leave_the_site(site: Site, page: Page, path: str) -> None:
    page.goto(site.url("app.localhost", "/.gateway/health"))
    page.evaluate(FOLLOW, [with_rd(site.url("app.localhost", path), rd) for rd in corpus(site)])
    assert site.escapes == []


def test_signed_in_return_never_leaves_the_site(site: Site, page: Page) -> None:
    """Signed in, /.gateway/login?rd=… redirects at once (through a hand-off for another host)."""
    sign_in(page, site)
    login = site.url("auth.localhost", "/.gateway/login")
    page.goto(site.url("auth.localhost", "/.gateway/health"))
    followed: list[str] = []
    page.context.on("request", lambda request: followed.append(request.url))
    page.evaluate(FOLLOW, [with_rd(login, rd) for rd in corpus(site)])
    assert site.escapes == []
    # Not vacuous: the safe rows were followed, to paths and through hand-offs to the other hosts.
    assert site.url("auth.localhost", "/x?y=1&z=2") in followed
    assert any(
        url.startswith(site.url("team1.apps.localhost", "/.gateway/handoff?code=")) for url in followed
    )
    # (A fetch carries no cross-site cookie, so the hand-off's nonce does not come back with it and
    # the last hop is refused; the real navigation below lands.)
    assert any("/.gateway/handoff/confirm?code=" in url for url in followed)
    # And as a real navigation: the browser lands on the route host with its own session.
    page.goto(with_rd(login, site.url("team1.apps.localhost", "/a")))
    assert page.url == site.url("team1.apps.localhost", "/a")


def test_handoff_with_a_valid_code_never_leaves_its_origin(site: Site, page: Page) -> None:
    """A real code of this browser's sign-in with each rd, opened as a navigation: through the auth
    host's confirmation (the hand-off is tied to the browser) and back, it lands on the app host."""
    session_id = sign_in(page, site)
    rds = corpus(site)
    base = site.url("app.localhost", "/.gateway/handoff")
    failures: dict[str, str] = {}
    with httpx.Client(timeout=30) as client:
        for rd in rds:
            page.goto(with_rd(f"{base}?code={handoff_code(client, site, session_id)}", rd))
            if leaves(page.url, site, ("app.localhost", site.port)):
                failures[rd] = page.url
        control = f"{base}?code={handoff_code(client, site, session_id)}&rd=%2Fz%3Fq%3D1"
    assert failures == {}
    assert site.escapes == []
    # Control: a plain path is followed.
    page.goto(control)
    assert page.url == site.url("app.localhost", "/z?q=1")
