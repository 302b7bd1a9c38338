"""One node on the embedded default, as a new user runs it: no Redis, two workers, the admin listener.

A real ``gateway serve`` (``server.workers: 2``, ``admin.listen`` set, no ``state.redis_url``) in front of
the echo app. Every process on the node (both workers, the admin listener, each ``gateway`` command)
opens the same ``<data_dir>/state.db``; these tests show what that has to give:

* the admin API answers a signed-in admin with a fresh second factor (the admin listener is its own
  process, so it must see the session the data plane made);
* ``gateway user disable|delete|reset-mfa`` and ``set-password --end-sessions`` end the user's session on every worker within a second;
* a block made by threat detection (counted over both workers) is listed and lifted from the CLI;
* a session made on one worker is valid on the other; a policy change reaches both within a second.

Which worker answered is read from the kernel (the process holding the server side of the
connection), so "both workers" is observed, not assumed. Requests go on fresh connections: granian's
workers share the listening socket and a connection stays with the worker that accepted it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest

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
from tests.integration.http_client import CSRF_COOKIE, PASSWORD, SESSION_COOKIE, browser, cookie, login
from tests.integration.test_admin_api import wait_admin_healthy
from tests.integration.test_signin_http import enroll_totp

POLICY = """\
p, authenticated, app, /*, GET, allow
p, admin, app, /*, *, allow
g, user:boss, admin
"""
# Denies what POLICY allows on /docs: the change every worker must pick up.
POLICY_WITHOUT_DOCS = POLICY + "p, authenticated, app, /docs/*, GET, deny\n"
AGENT = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"
SPRAYER = "198.51.100.61"
# The bound for revocations, policy changes, blocks and lifts to reach every process.
WITHIN = 1.0
# Fresh connections tried before concluding that a worker never answered (a hang guard).
ATTEMPTS = 200


@dataclass
class Node:
    gw: Gateway
    admin_port: int
    state_file: Path
    policy_path: Path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def cli(self, *args: str, stdin: str = "") -> str:
        result = run_cli(*args, "--config", str(self.gw.config_path), stdin=stdin)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("node")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    with run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"},
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            server={"workers": 2},
            session={"insecure_cookies": True},
            # Changes must come by broadcast: the version check runs only hourly.
            policy={"file": str(policy_path), "poll_interval": "1h", "max_staleness": "2h"},
            admin={"listen": f"127.0.0.1:{admin_port}"},
            # The loopback peer is a trusted proxy, so a test client can be any address it names.
            trusted_proxies=["127.0.0.1/32"],
            threat={"spraying": {"count": 4, "window": "10m", "responses": ["alert", "block_ip"]}},
        )
        assert "state" not in config  # the embedded default: no Redis anywhere
        with run_gateway(tmp, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            for user, extra in (("boss", ()), ("carol", ())):
                add_user(gw.config_path, user, PASSWORD, *extra)
            yield Node(gw, admin_port, tmp / "data" / "state.db", policy_path)


# -- helpers -----------------------------------------------------------------------------------------


def get(node: Node, path: str, *, session: str | None = None, ip: str | None = None) -> tuple[int, int]:
    """GET on a fresh connection; returns (status, pid of the worker that answered)."""
    headers = {"Accept": "application/json", "User-Agent": AGENT}
    if session is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={session}"
    if ip is not None:
        headers["X-Forwarded-For"] = ip
    status, _, _, pid = request_on_fresh_connection(node.gw.port, "GET", path, headers=headers)
    return status, pid


def worker_pids(node: Node) -> set[int]:
    """The gateway's two workers (the master's children, without the admin listener)."""
    children = set(node.gw.worker_pids())
    admin = {pid for pid in children if b"admin" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")}
    workers = children - admin
    assert len(workers) == 2, workers
    return workers


def answers_from_every_worker(
    node: Node, request: Callable[[], tuple[int, int]], expected: int
) -> dict[int, int]:
    """Repeat ``request`` until both workers answered; every answer must be ``expected``.

    Returns how many answers each worker gave.
    """
    workers = worker_pids(node)
    seen: dict[int, int] = {}
    for _ in range(ATTEMPTS):
        status, pid = request()
        assert status == expected, f"worker {pid} answered {status}, expected {expected}"
        seen[pid] = seen.get(pid, 0) + 1
        if workers <= set(seen):
            return seen
    pytest.fail(f"only workers {sorted(seen)} of {sorted(workers)} answered in {ATTEMPTS} connections")


def every_worker_within(
    node: Node, request: Callable[[], tuple[int, int]], expected: int, within: float = WITHIN
) -> None:
    """Every worker answers ``expected`` within ``within`` s (plus room for a loaded machine).

    A change one worker made (a detection's block) or heard first reaches the other by the node's
    broadcast at once, or by its own re-read within a second: the other may still answer the old way
    for that long, so this waits for a round where both answer ``expected``, then checks it holds.
    """

    def both() -> bool:
        try:
            answers_from_every_worker(node, request, expected)
        except AssertionError:
            return False
        return True

    wait_until(both, timeout=within + 2, interval=0.05, what=f"every worker answering {expected}")
    answers_from_every_worker(node, request, expected)


def first_change_after(done: float, request: Callable[[], tuple[int, int]], expected: int) -> float:
    """Poll until ``request`` answers ``expected``; return when that request started, after ``done``."""
    deadline = time.monotonic() + 30  # hang guard only: the bound is checked by the caller
    while time.monotonic() < deadline:
        started = time.monotonic()
        status, _ = request()
        if status == expected:
            return max(0.0, started - done)
    pytest.fail(f"never answered {expected}")


def sign_in(node: Node, user: str) -> str:
    with browser(node.gw) as client:
        client.headers["User-Agent"] = AGENT
        assert login(client, user).status_code in (302, 303)
        session = cookie(client)
    assert session
    return session


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for line in headers.get("set-cookie", "").split("\n"):
        if line:
            jar.load(line)
    return {name: morsel.value for name, morsel in jar.items()}


def failed_login_on_fresh_connections(node: Node, username: str, ip: str) -> set[int]:
    """One wrong password for ``username`` from ``ip``; returns the pids of the workers involved."""
    headers = {"X-Forwarded-For": ip, "User-Agent": AGENT, "Accept": "text/html"}
    status, received, _, page_pid = request_on_fresh_connection(
        node.gw.port, "GET", "/.gateway/login", headers=headers
    )
    assert status == 200
    token = _cookies(received)[CSRF_COOKIE]
    form = urllib.parse.urlencode(
        {"username": username, "password": "Winter2026!", "rd": "", "_csrf_token": token}
    ).encode()
    status, _, _, post_pid = request_on_fresh_connection(
        node.gw.port,
        "POST",
        "/.gateway/login",
        headers={
            **headers,
            "Cookie": f"{CSRF_COOKIE}={token}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        body=form,
    )
    assert status in (200, 401), status
    return {page_pid, post_pid}


# -- the admin API sees the data plane's sessions ----------------------------------------------------


@pytest.mark.peer
def test_the_admin_api_answers_a_signed_in_admin_with_a_fresh_second_factor(node: Node) -> None:
    with browser(node.gw) as boss:
        assert login(boss, "boss").status_code in (302, 303)
        enroll_totp(boss)  # a second factor, just now
        headers = {"Origin": node.admin_url, "Sec-Fetch-Site": "same-origin"}
        resp = boss.get(f"{node.admin_url}/api/policy", headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["version"] >= 1
    # Another signed-in user is known to the admin listener too: refused for the role, not the session.
    carol = sign_in(node, "carol")
    resp = httpx.get(
        f"{node.admin_url}/api/policy",
        headers={"Cookie": f"{SESSION_COOKIE}={carol}", "Origin": node.admin_url},
        timeout=30,
    )
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "admin-role-required"


def test_while_the_state_file_cannot_be_written_a_disabled_accounts_session_is_refused_everywhere(
    node: Node,
) -> None:
    """Attack runs held the state file's write lock (reads go on under WAL): the revocation could not
    be written, and the disabled account's session was served by the workers for seconds, then by the
    admin listener for as long as the lock was held (where a disabled admin re-enabled itself)."""
    add_user(node.gw.config_path, "dolly", PASSWORD)
    session = sign_in(node, "dolly")

    def admin_listener() -> tuple[int, int]:
        headers = {"Cookie": f"{SESSION_COOKIE}={session}", "Origin": node.admin_url}
        return httpx.get(f"{node.admin_url}/api/policy", headers=headers, timeout=30).status_code, 0

    assert admin_listener()[0] == 403  # known there: refused for the role, not the session
    answers_from_every_worker(node, lambda: get(node, "/probe", session=session), 200)
    holder = sqlite3.connect(node.state_file, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")
        out = run_cli("user", "disable", "dolly", "--config", str(node.gw.config_path))
        done = time.monotonic()
        assert out.returncode == 0, out.stdout + out.stderr
        assert "refuses them" in out.stderr + out.stdout
        # Within a second of the command, on every process (the admin listener's own answers are slow
        # here: what it records waits for the lock; so it is asked once the second is over).
        late = first_change_after(done, lambda: get(node, "/probe", session=session), 401)
        assert late <= WITHIN + 1, f"served {late:.2f}s after the command returned"
        time.sleep(max(0.0, done + WITHIN + 1 - time.monotonic()))
        assert admin_listener()[0] == 401
        answers_from_every_worker(node, lambda: get(node, "/probe", session=session), 401)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Once the store answers, the sessions are ended for good.
    answers_from_every_worker(node, lambda: get(node, "/probe", session=session), 401)


# -- one session, both workers -----------------------------------------------------------------------


def test_a_session_made_on_one_worker_is_valid_on_the_other(node: Node) -> None:
    session = sign_in(node, "carol")
    seen = answers_from_every_worker(node, lambda: get(node, "/probe", session=session), 200)
    assert len(seen) == 2
    # And a made-up session is refused by both (the 200s above were not a public route).
    answers_from_every_worker(node, lambda: get(node, "/probe", session="x" * 43), 401)


# -- the CLI ends sessions on every worker ---------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "user"),
    [
        (("disable",), "dina"),
        (("delete", "--yes"), "dora"),
        (("reset-mfa",), "dana"),
        # A new password for a compromised account, and its sessions ended with it.
        (("set-password", "--end-sessions", "--password-stdin"), "dena"),
    ],
    ids=["disable", "delete", "reset-mfa", "set-password"],
)
def test_the_user_command_ends_the_session_on_every_worker_within_a_second(
    node: Node, command: tuple[str, ...], user: str
) -> None:
    add_user(node.gw.config_path, user, PASSWORD)
    session = sign_in(node, user)
    # Both workers have served (and cached) the session before it is ended.
    answers_from_every_worker(node, lambda: get(node, "/probe", session=session), 200)

    out = node.cli("user", command[0], user, *command[1:], stdin="a new one for " + PASSWORD + "\n")
    done = time.monotonic()
    assert "1 session(s) ended" in out

    late = first_change_after(done, lambda: get(node, "/probe", session=session), 401)
    assert late <= WITHIN, f"still accepted {late:.2f}s after the command returned"
    answers_from_every_worker(node, lambda: get(node, "/probe", session=session), 401)


# -- threat detection on one node --------------------------------------------------------------------


def test_a_block_made_by_detection_is_listed_and_lifted_from_the_cli(node: Node) -> None:
    answers_from_every_worker(node, lambda: get(node, "/probe", ip=SPRAYER), 401)  # not blocked yet
    involved: set[int] = set()
    for name in ("spray1", "spray2", "spray3", "spray4"):  # count: 4 accounts from one address
        involved |= failed_login_on_fresh_connections(node, name, SPRAYER)
    # The four failures were counted together whichever worker took them.
    assert involved & worker_pids(node)

    wait_until(lambda: get(node, "/probe", ip=SPRAYER)[0] == 403, what="sprayer blocked")
    every_worker_within(node, lambda: get(node, "/probe", ip=SPRAYER), 403)
    answers_from_every_worker(node, lambda: get(node, "/probe", ip="203.0.113.9"), 401)  # others pass

    listing = json.loads(node.cli("incident", "list", "--json"))
    [incident] = [i for i in listing["incidents"] if i["rule"] == "spraying"]
    assert incident["ip"] == SPRAYER
    assert [b["cidr"] for b in listing["blocks"]] == [f"{SPRAYER}/32"]
    assert "block_ip" in node.cli("incident", "show", incident["id"])

    assert "lifted" in node.cli("incident", "lift", incident["id"])
    done = time.monotonic()
    late = first_change_after(done, lambda: get(node, "/probe", ip=SPRAYER), 401)
    assert late <= WITHIN, f"still blocked {late:.2f}s after the lift"
    every_worker_within(node, lambda: get(node, "/probe", ip=SPRAYER), 401)
    assert json.loads(node.cli("incident", "list", "--json"))["blocks"] == []


def test_a_manual_block_reaches_both_workers_and_is_undone(node: Node) -> None:
    node.cli("incident", "block-ip", "192.0.2.0/24", "--for", "1h", "--reason", "test")
    done = time.monotonic()
    late = first_change_after(done, lambda: get(node, "/probe", ip="192.0.2.7"), 403)
    assert late <= WITHIN
    answers_from_every_worker(node, lambda: get(node, "/probe", ip="192.0.2.7"), 403)
    node.cli("incident", "unblock-ip", "192.0.2.0/24")
    wait_until(lambda: get(node, "/probe", ip="192.0.2.7")[0] == 401, what="unblocked")
    answers_from_every_worker(node, lambda: get(node, "/probe", ip="192.0.2.7"), 401)


# -- policy changes ----------------------------------------------------------------------------------


def test_a_policy_import_reaches_both_workers_within_a_second(node: Node, tmp_path: Path) -> None:
    session = sign_in(node, "carol")
    answers_from_every_worker(node, lambda: get(node, "/docs/a", session=session), 200)
    changed = tmp_path / "policy.csv"
    changed.write_text(POLICY_WITHOUT_DOCS)
    node.cli("policy", "import", str(changed), "--reason", "close the docs")
    done = time.monotonic()
    # policy.poll_interval is an hour: only the broadcast through the node's state can do this.
    late = first_change_after(done, lambda: get(node, "/docs/a", session=session), 403)
    assert late <= WITHIN, f"old policy still applied {late:.2f}s after the import"
    answers_from_every_worker(node, lambda: get(node, "/docs/a", session=session), 403)


# -- the file itself ---------------------------------------------------------------------------------


def test_the_shared_state_is_one_private_file_in_the_data_dir(node: Node) -> None:
    sign_in(node, "carol")
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        mode = (node.state_file.parent / name).stat().st_mode & 0o777
        assert mode == 0o600, f"{name}: {mode:o}"


# -- the database shared with commands -----------------------------------------------------------------


def test_commands_beside_the_running_gateway_leave_its_database_whole(node: Node) -> None:
    """Outside review: a check of the database file's mode that opened and closed the file before every
    new connection dropped the process's POSIX locks, SQLite's own included; a `gateway user add` beside
    the running gateway then deleted the WAL the workers were using, and they answered 503 "database
    disk image is malformed" (once the database would not open at all)."""
    data = node.state_file.parent
    for n in range(3):
        sign_in(node, "carol")  # the workers read and write the database
        assert (data / "gateway.db-wal").exists()
        add_user(node.gw.config_path, f"zed{n}", PASSWORD)
        assert (data / "gateway.db-wal").exists(), "a command deleted the WAL the workers use"
    for n in range(3):
        sign_in(node, f"zed{n}")
    with sqlite3.connect(data / "gateway.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert "malformed" not in node.gw.log()
