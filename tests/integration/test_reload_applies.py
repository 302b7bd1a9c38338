"""A reload (SIGHUP) that says "success" applies what it accepted, on every worker; a change only a
restart can apply is refused, never accepted and ignored.

The attack run behind it: during an incident an operator shortened the sessions' lifetime and tightened
the sign-in lock-out, reloaded, and was told it worked; the old session kept reaching the app and the
account never locked.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    Echo,
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    request_on_fresh_connection,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, cookie, login

TIMEOUT = 60.0


def _config(tmp: Path, port: int, echo: Echo, **overrides: Any) -> dict[str, Any]:
    route = echo_route(echo, public_paths=[])
    return gateway_config(
        tmp, port, [route], server={"workers": 2}, session={"insecure_cookies": True, **overrides.pop("session", {})},
        **overrides,
    )  # fmt: skip


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with run_echo() as echo, run_gateway(tmp_path, _config(tmp_path, free_port(), echo)) as gateway:
        gateway.extra["echo"] = echo
        add_user(gateway.config_path, "rae", PASSWORD)
        yield gateway


def _reload(gw: Gateway, **overrides: Any) -> None:
    gw.rewrite_config(_config(gw.config_path.parent, gw.port, gw.extra["echo"], **overrides))
    gw.sighup()


Answer = tuple[int, dict[str, str], bytes, int]


def _every_worker(
    gw: Gateway, request: Callable[[], Answer], check: Callable[[int, bytes], bool], what: str
) -> None:
    """Poll on fresh connections until the latest answer of each worker passes ``check(status, body)``."""
    workers = set(gw.worker_pids())
    assert len(workers) == 2, workers
    latest: dict[int, bool] = {}

    def step() -> bool:
        status, _headers, body, pid = request()
        latest[pid] = check(status, body)
        return workers <= {pid for pid, ok in latest.items() if ok}

    wait_until(step, timeout=TIMEOUT, interval=0.05, what=what)


def _probe(gw: Gateway, session: str) -> Callable[[], Answer]:
    """A request to the app with one session cookie, on a fresh connection (any worker answers)."""
    headers = {"Cookie": f"{SESSION_COOKIE}={session}", "Accept": "application/json"}
    return lambda: request_on_fresh_connection(gw.port, "GET", "/probe", headers=headers)


def _ready(gw: Gateway) -> Callable[[], Answer]:
    return lambda: request_on_fresh_connection(gw.port, "GET", "/.gateway/ready")


def _status(expected: int) -> Callable[[int, bytes], bool]:
    return lambda status, _body: status == expected


def _reload_error(body: bytes) -> str:
    return str(json.loads(body)["checks"]["config"].get("last_reload_error") or "")


def _audit(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(Path(gw.config["data_dir"]) / "gateway.db")) as conn:
        rows = conn.execute(
            "SELECT details FROM audit_events WHERE kind = ? AND outcome = 'success'", (kind,)
        )
        return [json.loads(details) for (details,) in rows]


def _accepted(gw: Gateway) -> None:
    """Wait until every worker took the reload (readiness shows no refusal and the new generation)."""
    _every_worker(
        gw,
        _ready(gw),
        lambda status, body: status == 200 and not _reload_error(body) and _generation(body) >= 2,
        "every worker to accept the reload",
    )


def _generation(body: bytes) -> int:
    return int(json.loads(body)["checks"]["config"].get("generation", 0))


def _signs_in(gw: Gateway, password: str = PASSWORD) -> bool:
    with browser(gw) as client:  # a new browser each time: no known-device counter of its own
        login(client, "rae", password)
        return cookie(client) is not None


def test_a_shortened_session_lifetime_ends_older_sessions_on_every_worker(gw: Gateway) -> None:
    with browser(gw) as client:
        assert login(client, "rae").status_code == 302
        session = cookie(client)
    assert session is not None
    _every_worker(gw, _probe(gw, session), _status(200), "the session to reach the app on every worker")

    _reload(gw, session={"lifetime": "2s", "idle_timeout": "2s"})
    _accepted(gw)
    # The trail says what the reload changed, and which file it was.
    reloads = _audit(gw, "config.reloaded")
    assert reloads
    assert all(r["changed"] == ["session"] for r in reloads), reloads
    text = gw.config_path.read_bytes()
    assert {r["sha256"] for r in reloads} == {hashlib.sha256(text).hexdigest()}
    _every_worker(
        gw, _probe(gw, session), _status(401), "the session to end on every worker after the reload"
    )
    # Signing in again gets a session of the new lifetime.
    with browser(gw) as client:
        assert login(client, "rae").status_code == 302
        fresh = cookie(client)
    assert fresh is not None
    _every_worker(gw, _probe(gw, fresh), _status(401), "the new session to end after its 2 s")


def test_a_tightened_lock_out_locks_the_account_after_the_reload(gw: Gateway) -> None:
    _reload(gw, regulation={"free_attempts": 1, "max_failures": 2, "lock_time": "15m"})
    _every_worker(
        gw, _ready(gw), lambda status, body: status == 200 and not _reload_error(body), "the reload"
    )
    # Two failures: under the start-up limits (3 free, 10 to lock) the person still signs in after them.
    assert not _signs_in(gw, "not the password at all")
    assert not _signs_in(gw, "not the password either")
    assert not _signs_in(gw), "the account did not lock under the reloaded limits"


def test_a_change_only_a_restart_applies_is_refused_not_ignored(gw: Gateway) -> None:
    _reload(gw, passwords={"min_length": 16})
    _every_worker(
        gw,
        _ready(gw),
        lambda _status, body: "'passwords'" in _reload_error(body) and "restart" in _reload_error(body),
        "every worker to refuse the reload",
    )
