"""One stage sequence for every entry: HTTP, forward-auth and WebSocket decide the same way.

The data plane is driven in-process, as the ASGI server calls it, with a real worker's services
(embedded storage, the shipped session store and policy engine) and a real upstream (aiohttp, HTTP
and WebSocket) on a loopback port. One table of requests (allowed, public, no session, policy deny,
MFA missing, password change owed, ambiguous path, no route) goes through each entry: the decision
and reason in the access-log record are the same whichever entry carried the request (they come
from the same stages), and each entry answers in its own way. Running gateways are tested in
``tests/integration/`` (test_forward_auth, test_authorization_http, test_streaming, ...).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import WSMsgType, web

from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.observe.access import AccessEntry
from gateway.observe.record import AccessDecision, RequestKind, RequestRecord
from gateway.observe.sinks.base import terminal_safe
from gateway.pipeline.headers import TrustedProxies
from gateway.root.apps import ProcessApp, worker_app
from gateway.services import WorkerServices

# Route "closed" has no rule at all: default deny.
POLICY = """p, authenticated, app, /*, *, allow
p, authenticated, app, /secret/*, *, deny
p, authenticated, strong, /*, *, allow
"""


@dataclass
class Upstream:
    """What the application behind the gateway received (request headers, per request)."""

    port: int = 0
    seen: list[dict[str, str]] = field(default_factory=list)


@dataclass
class World:
    plane: ProcessApp[WorkerServices]
    upstream: Upstream
    records: list[RequestRecord]
    cookies: dict[str, bytes]


async def _app_handler(upstream: Upstream, request: web.Request) -> web.StreamResponse:
    upstream.seen.append({name.lower(): value for name, value in request.headers.items()})
    if request.headers.get("upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.CLOSE:
                break
        return ws
    return web.Response(text="ok")


def _config(tmp: Path, upstream_port: int) -> Path:
    (tmp / "policy.csv").write_text(POLICY)
    upstream = f"http://127.0.0.1:{upstream_port}"
    config = {
        "public_url": "http://auth.test",
        "data_dir": str(tmp / "data"),
        "admin": {"listen": None},
        "trusted_proxies": ["127.0.0.1/32"],
        "policy": {"file": str(tmp / "policy.csv")},
        "session": {"insecure_cookies": True},
        "logging": {"access_log": False, "security_events": False},
        "routes": [
            {
                "name": "app",
                "host": "app.test",
                "upstreams": [upstream],
                "mfa": "none",
                "public_paths": ["/public/*"],
            },
            {"name": "strong", "host": "strong.test", "upstreams": [upstream], "mfa": "required"},
            {"name": "closed", "host": "closed.test", "upstreams": [upstream], "mfa": "none"},
        ],
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _lifespan(plane: ProcessApp[WorkerServices], kind: str) -> None:
    messages: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    answers: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    await messages.put({"type": f"lifespan.{kind}"})

    async def send(message: MutableMapping[str, Any]) -> None:
        await answers.put(message)

    task = asyncio.ensure_future(plane({"type": "lifespan"}, messages.get, send))
    try:
        answer = await asyncio.wait_for(answers.get(), 60)
        assert answer["type"] == f"lifespan.{kind}.complete", answer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _signs_now(plane: ProcessApp[WorkerServices]) -> None:
    """A key signs assertions now, else say which times disagree (a clock behind the keys' ``active_from``
    answers every request 500 ``signing-unavailable``)."""
    services = plane.running.services
    keys, now = services.signing.current(), services.identity.clock.time()
    assert keys.signing_key(now) is not None, (
        f"no signing key active at {now!r} (time.time() {time.time()!r}, clock {services.identity.clock!r}): "
        + ", ".join(f"{k.kid} from {k.active_from!r} to {k.retired_at!r}" for k in keys.keys)
    )


async def _sign_in(
    plane: ProcessApp[WorkerServices],
    user_id: int,
    username: str,
    *,
    password_change: bool = False,
    owes_second_factor: bool = False,
    host: str | None = None,
) -> bytes:
    identity = plane.running.services.identity
    session_id, _ = await identity.sessions.create(
        user_id=user_id,
        username=username,
        level=AuthLevel.ONE_FACTOR,
        factors=[FactorUse(Factor.PASSWORD, time.time())],
        roles=[],
        ip="127.0.0.1",
        user_agent="test",
        # A sign-in on the auth host (its public URL): valid on every host its cookie reaches. A
        # hand-off session (a bare host name) is its own host's alone (fits_host).
        host=host or plane.running.live.current.public_url,
        password_change=password_change,
        owes_second_factor=owes_second_factor,
    )
    return f"{plane.running.live.current.cookie_name}={session_id}".encode()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The application behind the gateway: answers HTTP and accepts WebSockets on every path."""
    upstream = Upstream()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _app_handler(upstream, request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        upstream.port = runner.addresses[0][1]
        yield upstream
    finally:
        await runner.cleanup()


@pytest.fixture
async def world(tmp_path: Path, upstream: Upstream) -> AsyncIterator[World]:
    """One gateway worker, started as the ASGI server starts it, with two signed-in sessions."""
    thresholds = gc.get_threshold()
    plane = worker_app(_config(tmp_path, upstream.port))
    started = False
    try:
        await _lifespan(plane, "startup")
        started = True
        _signs_now(plane)
        records: list[RequestRecord] = []
        plane.running.services.observers.append(records.append)
        cookies = {
            "": b"",
            "alice": await _sign_in(plane, 1, "alice"),
            "bob": await _sign_in(plane, 2, "bob", password_change=True),
        }
        yield World(plane, upstream, records, cookies)
    finally:
        # A start-up that failed has closed what it opened already.
        if started:
            await _lifespan(plane, "shutdown")
        # The worker's start-up tunes the collector for a long-lived process: undo it for the test run.
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[bytes, bytes]
    record: RequestRecord


def _headers(host: str, cookie: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b"host", host.encode()), (b"accept", b"application/json"), (b"user-agent", b"test")]
    return [*headers, (b"cookie", cookie)] if cookie else headers


async def _http(world: World, host: str, raw_path: bytes, cookie: bytes) -> Answer:
    return await _call(world, "http", raw_path, _headers(host, cookie))


async def _forward_auth(world: World, host: str, raw_path: bytes, cookie: bytes) -> Answer:
    # The proxy's sub-request: its own Host, the original request in X-Forwarded-*.
    headers = [
        *_headers("proxy.internal", cookie),
        (b"x-forwarded-method", b"GET"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", host.encode()),
        (b"x-forwarded-uri", raw_path),
    ]
    return await _call(world, "http", b"/.gateway/auth", headers)


async def _websocket(world: World, host: str, raw_path: bytes, cookie: bytes) -> Answer:
    return await _call(world, "websocket", raw_path, _headers(host, cookie))


async def _call(
    world: World,
    kind: str,
    raw_path: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    method: str = "GET",
    body: bytes = b"",
) -> Answer:
    inbox: list[MutableMapping[str, Any]] = [{"type": "websocket.connect"}, {"type": "websocket.disconnect"}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        if kind == "http":
            return {"type": "http.request", "body": body, "more_body": False}
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40_000),
        "server": ("127.0.0.1", 8080),
    }
    if kind == "http":
        scope["method"] = method
    before = len(world.records)
    await world.plane(scope, receive, send)
    assert len(world.records) == before + 1, "every request leaves exactly one record"
    record = world.records[-1]
    starts = [m for m in sent if m["type"] == "http.response.start"]
    if starts:
        return Answer(starts[0]["status"], dict(starts[0]["headers"]), record)
    # A WebSocket: accepted, or closed before accepting (the ASGI server answers that with 403).
    accepted = any(m["type"] == "websocket.accept" for m in sent)
    return Answer(101 if accepted else 403, {}, record)


ENTRIES = {"http": _http, "forward-auth": _forward_auth, "websocket": _websocket}
KINDS = {
    "http": RequestKind.HTTP,
    "forward-auth": RequestKind.FORWARD_AUTH,
    "websocket": RequestKind.WEBSOCKET,
}

# (case, host, raw path, who, decision, reason, status per entry: http, forward-auth, websocket)
CASES: list[tuple[str, str, bytes, str, str, str, tuple[int, int, int]]] = [
    ("allowed", "app.test", b"/hello", "alice", "allow", "policy-allow", (200, 200, 101)),
    ("public path", "app.test", b"/public/x", "", "public", "", (200, 200, 101)),
    ("no session", "app.test", b"/hello", "", "unauthenticated", "authentication-required", (401, 401, 403)),
    ("policy deny", "app.test", b"/secret/x", "alice", "deny", "policy-deny", (403, 403, 403)),
    # A deny area covers its own root (a trailing /* is the path and everything below it).
    ("deny area root", "app.test", b"/secret", "alice", "deny", "policy-deny", (403, 403, 403)),
    ("no rule", "closed.test", b"/hello", "alice", "deny", "no-matching-rule", (403, 403, 403)),
    # Forward-auth answers a refusal that has a page to go to with 401 + Location (proxies' contract).
    ("mfa missing", "strong.test", b"/hello", "alice", "deny", "mfa-required", (403, 401, 403)),
    ("password owed", "app.test", b"/hello", "bob", "deny", "password-change-required", (403, 401, 403)),
    ("encoded slash", "app.test", b"/a%2fb", "alice", "invalid", "bad-path", (400, 400, 403)),
    ("dot segments", "app.test", b"/x/../secret/y", "alice", "deny", "policy-deny", (403, 400, 403)),
]
# Where an entry decides otherwise, and why: forward-auth refuses a path that is not canonical instead
# of deciding the resolved one, since the proxy sends the app the path as written (an attack run: an
# app that does not resolve dot segments served /admin/../docs/x from its /admin handler).
DIFFERS: dict[tuple[str, str], tuple[str, str]] = {("forward-auth", "dot segments"): ("invalid", "bad-path")}


@pytest.mark.parametrize("entry", list(ENTRIES))
async def test_every_entry_runs_the_same_stages(world: World, entry: str) -> None:
    for case, host, raw_path, who, decision, reason, statuses in CASES:
        answer = await ENTRIES[entry](world, host, raw_path, world.cookies[who])
        rec = answer.record
        expected_status = statuses[list(ENTRIES).index(entry)]
        assert (case, answer.status) == (case, expected_status)
        decision, reason = DIFFERS.get((entry, case), (decision, reason))
        assert (case, rec.decision, rec.reason) == (case, decision, reason)
        assert rec.kind is KINDS[entry]
        # Enums end to end: the record holds members, which are their wire values as strings.
        assert type(rec.decision) is AccessDecision
        assert not rec.reason or isinstance(rec.reason, StrEnum), (case, type(rec.reason))


@pytest.mark.parametrize("entry", list(ENTRIES))
async def test_only_an_allowed_request_carries_the_identity(world: World, entry: str) -> None:
    call = ENTRIES[entry]
    allowed = await call(world, "app.test", b"/hello", world.cookies["alice"])
    public = await call(world, "app.test", b"/public/x", world.cookies["alice"])
    if entry == "forward-auth":
        # The proxy copies these onto the request it forwards; a public path carries every name
        # empty, so a proxy copying a fixed list overwrites the client's own copies.
        assert allowed.headers[b"x-gateway-user"] == b"alice"
        assert allowed.headers[b"x-gateway-assertion"]
        assert public.headers[b"x-gateway-user"] == public.headers[b"x-gateway-assertion"] == b""
        assert not world.upstream.seen
    else:
        assert [seen.get("x-gateway-user") for seen in world.upstream.seen] == ["alice", None]
    assert (allowed.record.user, public.record.user) == ("alice", "")
    assert allowed.record.policy_version > 0


async def test_a_question_below_the_forward_auth_path_is_the_headers_question(world: World) -> None:
    """Envoy's ext_authz appends the request's path to its prefix: the question is still the one the
    X-Forwarded-* headers describe (an attack run read that the documented Envoy set-up made the check
    an ordinary request, proxied to the app)."""
    headers = [
        *_headers("proxy.internal", world.cookies["alice"] + b"; theme=dark"),
        (b"x-forwarded-method", b"GET"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"app.test"),
        (b"x-forwarded-uri", b"/hello"),
    ]
    answer = await _call(world, "http", b"/.gateway/auth/public/x", headers)
    assert (answer.status, answer.headers[b"x-gateway-user"], answer.record.path) == (200, b"alice", "/hello")
    # The app's cookie for the proxy to send, the gateway's own left out.
    assert answer.headers[b"x-gateway-cookie"] == answer.headers[b"cookie"] == b"theme=dark"
    assert not world.upstream.seen


async def test_a_form_posted_to_the_gateways_own_page_is_counted_in_the_record(world: World) -> None:
    """An attack run: a sign-in form's body was logged as 0 bytes (http.request.body.bytes)."""
    body = b"username=alice&password=wrong&_csrf_token=x"
    headers = [
        *_headers("auth.test", b""),
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", str(len(body)).encode()),
    ]
    answer = await _call(world, "http", b"/.gateway/login", headers, method="POST", body=body)
    assert answer.record.kind == RequestKind.CONTROL
    assert answer.record.bytes_in == len(body)


@pytest.mark.parametrize("entry", list(ENTRIES))
async def test_a_sign_in_that_owes_its_second_factor_opens_no_application(world: World, entry: str) -> None:
    """An attack run copied the cookie of a password-only sign-in (of an account with a second factor)
    to the host of an app that asks for no second factor, and got in: the hand-off refuses to carry
    such a session, but a session is not bound to its host."""
    half = await _sign_in(world.plane, 1, "alice", owes_second_factor=True)
    answer = await ENTRIES[entry](world, "app.test", b"/hello", half)
    assert answer.status == {"http": 403, "forward-auth": 401, "websocket": 403}[entry]
    assert answer.record.reason == "mfa-required"
    assert not world.upstream.seen
    # The control: the same account's finished sign-in gets in.
    assert (await ENTRIES[entry](world, "app.test", b"/hello", world.cookies["alice"])).status != 403


@pytest.mark.parametrize("entry", list(ENTRIES))
async def test_an_app_hosts_session_opens_nothing_on_another_host(world: World, entry: str) -> None:
    """An attack run: the cookie of a session an app host got through the hand-off, copied to another
    app host and to the auth host, opened the app there and the person's whole account portal."""
    theirs = await _sign_in(world.plane, 1, "alice", host="closed.test")
    answer = await ENTRIES[entry](world, "app.test", b"/hello", theirs)
    assert answer.status == {"http": 401, "forward-auth": 401, "websocket": 403}[entry]
    assert answer.record.reason == "authentication-required"
    assert not world.upstream.seen
    # The control: on its own host it is a signed-in session (no rule allows alice there).
    home = await ENTRIES[entry](world, "closed.test", b"/hello", theirs)
    assert home.record.reason == "no-matching-rule"


async def test_no_route_is_a_404_but_a_403_for_a_proxy(world: World) -> None:
    http = await _http(world, "nowhere.test", b"/hello", world.cookies["alice"])
    assert (http.status, http.record.decision, http.record.reason) == (
        404,
        AccessDecision.INVALID,
        "no-route",
    )
    # Proxies turn anything but 2xx, 401 and 403 into a 500: the same refusal is a 403 for them.
    fa = await _forward_auth(world, "nowhere.test", b"/hello", world.cookies["alice"])
    assert (fa.status, fa.record.decision, fa.headers[b"x-gateway-reason"]) == (
        403,
        AccessDecision.DENY,
        b"no-route",
    )
    ws = await _websocket(world, "nowhere.test", b"/hello", world.cookies["alice"])
    assert (ws.status, ws.record.decision, ws.record.reason) == (403, AccessDecision.INVALID, "no-route")
    assert not world.upstream.seen


async def test_the_gateway_paths_are_never_routed(world: World) -> None:
    # A route for "/" covers every path, yet /.gateway/ belongs to the gateway on every host.
    for entry in ("forward-auth", "websocket"):
        answer = await ENTRIES[entry](world, "app.test", b"/.gateway/account", world.cookies["alice"])
        assert (entry, answer.status, answer.record.reason) == (entry, 403, "no-route")
    # Through the HTTP entry, the control app answers it (its own page, not the upstream).
    page = await _http(world, "app.test", b"/.gateway/health", b"")
    assert (page.status, page.record.kind, page.record.decision) == (200, RequestKind.CONTROL, "public")
    assert not world.upstream.seen


async def test_forward_auth_from_an_untrusted_peer_is_refused_before_the_stages(world: World) -> None:
    headers = [
        *_headers("proxy.internal", world.cookies["alice"]),
        (b"x-forwarded-method", b"GET"),
        (b"x-forwarded-host", b"app.test"),
        (b"x-forwarded-uri", b"/hello"),
    ]
    live = world.plane.running.live
    live.swap(dataclasses.replace(live.current, trusted=TrustedProxies([])))
    answer = await _call(world, "http", b"/.gateway/auth", headers)
    assert (answer.status, answer.headers[b"x-gateway-reason"]) == (403, b"untrusted-proxy")
    assert (answer.record.decision, answer.record.route, answer.record.user) == (AccessDecision.DENY, "", "")


def _repeated(world: World, case: str) -> list[tuple[bytes, bytes]]:
    """Header lists where a name repeats (the receive stage's slower way) or the block is too large."""
    session = world.cookies["alice"]
    name = session.partition(b"=")[0]
    base = [(b"host", b"app.test"), (b"accept", b"application/json")]
    return {
        # HTTP/2 splits cookies into several headers: ours may be in any of them.
        "split cookies": [*base, (b"cookie", session), (b"cookie", b"theme=dark")],
        # Two cookies of our name (cookie tossing from a sibling sub-domain): neither is believed.
        "tossed cookie": [*base, (b"cookie", session), (b"cookie", name + b"=" + b"A" * 43)],
        "two hosts": [*base, (b"host", b"app.test"), (b"cookie", session)],
        "no host": [(b"accept", b"application/json"), (b"cookie", session)],
        "repeated accept": [*base, (b"accept", b"text/plain"), (b"cookie", session)],
        "oversized": [*base, (b"cookie", session), (b"x-pad", b"a" * (32 * 1024))],
        "oversized, repeated": [
            *base,
            (b"cookie", session),
            (b"x-pad", b"a" * 16_380),
            (b"x-pad", b"b" * 16_380),
        ],
    }[case]


@pytest.mark.parametrize(
    ("case", "status", "user"),
    [
        ("split cookies", 200, "alice"),
        ("tossed cookie", 401, ""),
        ("two hosts", 400, ""),
        ("no host", 400, ""),
        ("repeated accept", 200, "alice"),
        ("oversized", 431, ""),
        ("oversized, repeated", 431, ""),
    ],
)
async def test_repeated_header_names_are_read_as_a_list(
    world: World, case: str, status: int, user: str
) -> None:
    # The receive stage reads the headers through a dict when no name repeats; these take the other way.
    answer = await _call(world, "http", b"/hello", _repeated(world, case))
    assert (case, answer.status, answer.record.user) == (case, status, user)
    assert len(world.upstream.seen) == (1 if status == 200 else 0)


async def test_a_30_kb_host_is_logged_cut_to_the_longest_dns_name(world: World) -> None:
    """An attack run: any client's 30 KB Host (C2 85 pairs, latin-1 decoded: each \\x85 is escaped to six
    bytes) made a 120 KB access-log line per sink per request."""
    host = b"\xc2\x85" * 15_000
    answer = await _call(world, "http", b"/hello", [(b"host", host), (b"accept", b"application/json")])
    assert answer.record.host == host.decode("latin-1")  # the record holds what was sent...
    entry = AccessEntry(answer.record)
    assert len(entry.document()["url"]["domain"]) <= 255  # ...the access event no more than a DNS name
    assert len(terminal_safe(entry.json())) < 3_000
