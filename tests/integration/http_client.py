"""A browser played by httpx: CSRF double-submit cookie, form posts and password sign-in.

Shared by the HTTP-level tests; it drives the gateway's own HTML forms exactly as a browser does.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from tests.integration.harness import Gateway

__all__ = [
    "CSRF_COOKIE",
    "HANDOFF_COOKIE",
    "PASSWORD",
    "SESSION_COOKIE",
    "browser",
    "cookie",
    "csrf",
    "follow_handoff",
    "login",
    "post_form",
]

PASSWORD = "amber quarry lantern voyage"
SESSION_COOKIE = "gateway_session"  # "__Host-gateway_session" without the prefix (insecure_cookies)
CSRF_COOKIE = "gateway_csrf"
HANDOFF_COOKIE = "gateway_handoff"  # the app host's nonce that ties a hand-off to the browser


def browser(gw: Gateway) -> httpx.Client:
    """A cookie-keeping client on the auth host that does not follow redirects (we check each hop)."""
    return httpx.Client(base_url=gw.url, follow_redirects=False, timeout=30.0)


def cookie(client: httpx.Client, name: str = SESSION_COOKIE) -> str | None:
    """The value of one cookie in the client's jar (None if absent; two of them is a test error)."""
    values = [c.value for c in client.cookies.jar if c.name == name]
    assert len(values) <= 1, f"{len(values)} {name} cookies in the jar"
    return values[0] if values else None


def csrf(client: httpx.Client) -> str:
    """The CSRF token (double-submit cookie); fetched from the sign-in page the first time."""
    token = cookie(client, CSRF_COOKIE)
    if token is None:
        client.get("/.gateway/login")
        token = cookie(client, CSRF_COOKIE)
    assert token, "no CSRF cookie from the sign-in page"
    return token


def post_form(client: httpx.Client, path: str, fields: dict[str, str] | None = None) -> httpx.Response:
    return client.post(path, data={**(fields or {}), "_csrf_token": csrf(client)})


def login(client: httpx.Client, user: str, password: str = PASSWORD, rd: str = "") -> httpx.Response:
    client.get("/.gateway/login", params={"rd": rd} if rd else None)
    return post_form(client, "/.gateway/login", {"username": user, "password": password, "rd": rd})


def follow_handoff(client: httpx.Client, location: str, *, connect: str) -> httpx.Response:
    """Follow a hand-off link as the browser that signed in (``client``, on the auth host) does: the
    app host sets its nonce and sends the browser to the auth host, which sends it back with the code
    the app host redeems. Returns the app host's last answer (the redirect with the session cookie).

    ``location`` is the app host's hand-off URL; ``connect`` the address the app host's name stands
    for here (``gw.url``), reached with that name in ``Host``.
    """

    def on_app_host(url: str, cookies: dict[str, str]) -> httpx.Response:
        parts = urlsplit(url)
        header = "; ".join(f"{k}={v}" for k, v in cookies.items())
        headers = {"Host": parts.netloc, **({"Cookie": header} if header else {})}
        return httpx.get(f"{connect}{parts.path}?{parts.query}", headers=headers, timeout=30.0)

    first = on_app_host(location, {})
    if first.status_code != 302 or "/.gateway/handoff/confirm" not in first.headers.get("location", ""):
        return first
    nonce = first.cookies.get(HANDOFF_COOKIE) or ""
    confirmed = client.get(first.headers["location"])
    if confirmed.status_code != 302:
        return confirmed
    return on_app_host(confirmed.headers["location"], {HANDOFF_COOKIE: nonce})
