"""A disaster-recovery drill: restore the newest backup into a fresh node, start it, and prove it works.

The steps, each a named check, stop at the first failure (what follows depends on it):

* ``verify``: the backup passes every check of :func:`gateway.backup.verify.verify_backup`;
* ``restore``: it is restored into a new temporary data directory (never the live one), whose trail
  records ``backup.restored`` as a restored node's does;
* ``start``: ``gateway serve`` on a config copied from the live one (that data directory, a free
  loopback port, no admin listener, no TLS, no Redis or PostgreSQL, stdout sinks only, the same
  keyring file: the keyring is never inside a backup) answers ``/.gateway/ready`` with 200;
* ``sign_in``: a temporary drill account, made with ``gateway user add`` against the restored node,
  signs in with its password over HTTP (a 302 with a session cookie: the password was accepted and the
  next step, a second factor or enrollment, is reached);
* ``audit_chain``: the restored trail verifies with the keyring.

RTO is the time from the start of the restore to the node being ready; RPO is the age of the backup
(now minus its creation time), reported beside the age of the newest audit record it restored. The
node runs in its own process group and is always stopped (also on Ctrl-C), so no worker outlives it.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import yaml

from gateway.audit.chain import verify_database
from gateway.backup.manifest import BackupError
from gateway.backup.verify import Verified, restore_backup, restored_trail, verify_backup
from gateway.clock import SYSTEM_CLOCK
from gateway.crypto.keyring import Keyring
from gateway.errors import GatewayError
from gateway.identity.ledger import AccountLedger, Lineage
from gateway.lifetime import die_with
from gateway.store.db import Database, default_sqlite_url
from gateway.store.private import private_dir

__all__ = [
    "Check",
    "CheckFn",
    "DrillReport",
    "audit_chain",
    "carry_ledger",
    "checker",
    "in_node",
    "node_config",
    "run_drill",
    "serve_and_use",
]

# How long the fresh node may take to become ready, and one HTTP request to it.
READY_TIMEOUT = 90.0
_HTTP_TIMEOUT = 15.0
# The drill account's name: recognisable in the restored node's trail, never in the live one.
DRILL_USER = "dr-drill"
# Who restored the copy, in its own trail's ``backup.restored`` record.
DRILL_ACTOR = "system:dr-drill"


STEPS = ("verify", "restore", "start", "sign_in", "audit_chain")

Progress = Callable[[str], None]
# Records one step: its name, its problem (None: passed) and what passing means; True when it passed.
CheckFn = Callable[[str, str | None, str], bool]


@dataclass(frozen=True, slots=True)
class Check:
    """One step of the drill and how it went (``detail`` names the problem; never a secret)."""

    name: str
    passed: bool
    detail: str


@dataclass(slots=True)
class DrillReport:
    """What a drill found: the backup, its checks in order, RPO and RTO in seconds."""

    backup_id: str
    backup_path: str
    checks: list[Check] = field(default_factory=list)
    rpo_seconds: float | None = None
    newest_record_age_seconds: float | None = None
    rto_seconds: float | None = None
    port: int | None = None
    node_dir: str | None = None
    # The drill's steps in order (the PostgreSQL drill has one more: its database server).
    steps: tuple[str, ...] = STEPS

    @property
    def passed(self) -> bool:
        """Every step ran and passed."""
        return (
            bool(self.checks) and all(c.passed for c in self.checks) and len(self.checks) == len(self.steps)
        )

    @property
    def failed(self) -> list[str]:
        """The names of the checks that failed."""
        return [c.name for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready builtins (also what the audit record carries)."""
        return {
            "outcome": "success" if self.passed else "failure",
            "backup_id": self.backup_id,
            "backup_path": self.backup_path,
            "rpo_seconds": _round(self.rpo_seconds),
            "newest_record_age_seconds": _round(self.newest_record_age_seconds),
            "rto_seconds": _round(self.rto_seconds),
            "checks_passed": [c.name for c in self.checks if c.passed],
            "checks_failed": self.failed,
            "problem": next((c.detail for c in self.checks if not c.passed), None),
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def node_config(live_config: Path, data_dir: Path, port: int, keyring_file: Path) -> dict[str, Any]:
    """The live configuration file, changed so the copy can never touch the live deployment.

    The live file is read as YAML (not re-serialised from the settings, which would lose ``${env:…}``
    references' meaning and units). What could reach live state is replaced: the data directory, the
    listener, the database and fast-state URLs, the admin listener, the sinks (a drill is no alert),
    the backup targets and the account ledger.
    """
    raw = yaml.safe_load(live_config.read_text()) or {}
    if not isinstance(raw, dict):
        raise BackupError(f"{live_config}: not a mapping at the top level")
    raw["data_dir"] = str(data_dir)
    raw["listen"] = f"127.0.0.1:{port}"
    raw["public_url"] = f"http://127.0.0.1:{port}"
    raw["keyring"] = str(keyring_file)
    raw.pop("tls", None)
    raw["storage"] = {k: v for k, v in (raw.get("storage") or {}).items() if k != "url"}
    raw["state"] = {k: v for k, v in (raw.get("state") or {}).items() if k != "redis_url"}
    raw["admin"] = {**(raw.get("admin") or {}), "listen": None}
    # Plain HTTP on loopback: __Host- cookies are Secure and would never come back over it.
    raw["session"] = {**(raw.get("session") or {}), "insecure_cookies": True}
    raw["logging"] = {**(raw.get("logging") or {}), "sinks": [{"type": "stdout"}]}
    backup = {k: v for k, v in (raw.get("backup") or {}).items() if k != "pgbackrest"}
    # Its own account ledger: a configured backup.ledger is the live one, and what the copy changes must
    # never be made again on the live deployment (a re-attack run had a drill's role grant replayed there).
    raw["backup"] = {
        **backup,
        "directory": str(data_dir / "backups"),
        "targets": [],
        "ledger": str(data_dir / "account-ledger.jsonl"),
    }
    return raw


def _newest_record_at(db_file: Path) -> datetime | None:
    with closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT max(at) FROM audit_events").fetchone()
    if row is None or row[0] is None:
        return None
    at = datetime.fromisoformat(str(row[0]))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@contextmanager
def _serving(config: Path, log: Path, cwd: Path, env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``gateway serve`` in a process group of its own, stopped with its workers however we leave; and
    told to stop when the drill dies, also by SIGKILL (an attack run killed a drill and its node went
    on serving restored accounts)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=partial(die_with, os.getpid()),
        )
    try:
        yield proc
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    # The whole group: the master and every worker, so none outlives the drill.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers (a worker still draining)
    proc.wait()


@contextmanager
def _node_config_file(beside: Path, fallback: Path, doc: str) -> Iterator[Path]:
    """The node's config file, written beside the live one and removed after.

    Relative paths in a config (a policy file, ``${file:…}``) start at its directory, so the copy
    means what the live file means only there; a directory we may not write to falls back to the
    node's own (then only absolute paths carry over).
    """
    try:
        fd, name = tempfile.mkstemp(dir=beside, prefix=".gateway-drill-", suffix=".yaml")
    except OSError:
        fd, name = tempfile.mkstemp(dir=fallback, prefix="gateway-", suffix=".yaml")
    path = Path(name)
    try:
        with os.fdopen(fd, "w") as out:  # mkstemp: mode 0600, the copy may name secrets by reference
            out.write(doc)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """None once ``/.gateway/ready`` answers 200; else what went wrong."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"gateway serve exited with {proc.returncode} before it was ready"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/.gateway/ready")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return None
            last = f"/.gateway/ready answered {resp.status}"
        except OSError as exc:
            last = str(exc) or type(exc).__name__
        finally:
            conn.close()
        time.sleep(0.1)
    return f"not ready after {timeout:.0f}s ({last})"


def _request(
    port: int, method: str, path: str, cookies: dict[str, str], body: str | None = None
) -> tuple[int, dict[str, str]]:
    """One request; cookies the answer sets are added to ``cookies``. Returns status and headers."""
    headers = {"Host": f"127.0.0.1:{port}", "Accept": "text/html", "User-Agent": "gateway-dr-drill"}
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=_HTTP_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        for value in resp.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            for name, morsel in jar.items():
                cookies[name] = morsel.value
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def sign_in(port: int, username: str, password: str) -> str | None:
    """Sign in with a password as a browser does; None when it was accepted, else why not."""
    cookies: dict[str, str] = {}
    status, _ = _request(port, "GET", "/.gateway/login", cookies)
    if status != 200:
        return f"GET /.gateway/login answered {status}"
    token = next((v for k, v in cookies.items() if k.endswith("gateway_csrf")), None)
    if token is None:
        return "the sign-in page set no CSRF cookie"
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "rd": "", "_csrf_token": token}
    )
    status, headers = _request(port, "POST", "/.gateway/login", cookies, form)
    if status != 302 or not any(k.endswith("gateway_session") for k in cookies):
        return f"POST /.gateway/login answered {status} (the password was not accepted)"
    return None if "location" in headers else "the sign-in answered without a next step"


async def audit_chain(url: str, keyring: Keyring) -> str | None:
    """Why the restored node's audit trail at ``url`` does not verify with the keyring; None when it does."""
    db = Database.open(url, pool_size=1)
    try:
        report = await verify_database(db, keyring=keyring)
    finally:
        await db.close()
    if report.problem is not None:
        return f"audit chain broken: {report.problem}"
    return None


def _add_drill_user(config: Path, cwd: Path, password: str, env: Mapping[str, str]) -> str | None:
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
        [
            sys.executable,
            "-m",
            "gateway",
            "user",
            "add",
            DRILL_USER,
            "--password-stdin",
            "--config",
            str(config),
        ],
        cwd=cwd,
        env={**os.environ, **env},
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        return f"gateway user add failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
    return None


def run_drill(
    backup: Path,
    live_config: Path,
    keyring_file: Path,
    keyring: Keyring,
    *,
    port: int | None = None,
    keep: bool = False,
    progress: Progress = lambda _line: None,
    live_ledger: Path | None = None,
    node: Lineage | None = None,
) -> DrillReport:
    """Run every step of the drill on ``backup``; the report names each check (first failure ends it).

    ``live_ledger``: the deployment's account ledger file, carried into the copy below the deployment's
    lineage ``node`` (:func:`carry_ledger`).

    The temporary node directory is removed afterwards unless ``keep`` (then ``node_dir`` names it).
    Synchronous on purpose: Ctrl-C (and SIGTERM, turned into the same while the drill runs) arrives
    here as ``KeyboardInterrupt``, the node is stopped on the way out (an event loop's worker thread
    would keep it running) and the report ends with a failed ``interrupted`` check. Call it from the
    main thread, outside an event loop.
    """
    report = DrillReport(backup_id=backup.name, backup_path=str(backup))

    def steps(node_dir: Path) -> None:
        _steps(
            report, backup, live_config, keyring_file, keyring, node_dir, port, checker(report, progress),
            (live_ledger, node),
        )  # fmt: skip

    return in_node(report, steps, keep=keep)


def in_node(
    report: DrillReport, steps: Callable[[Path], None], *, keep: bool, mode: int = 0o700
) -> DrillReport:
    """Run ``steps`` in a new temporary node directory (``mode``), removed after unless ``keep``.

    SIGTERM is turned into ``KeyboardInterrupt`` meanwhile, so a stopped drill still stops its node on
    the way out; an interrupted drill ends with a failed ``interrupted`` check.
    """
    node_dir = Path(tempfile.mkdtemp(prefix="gateway-drill-"))
    os.chmod(node_dir, mode)
    report.node_dir = str(node_dir)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        steps(node_dir)
    except KeyboardInterrupt:
        report.checks.append(Check("interrupted", False, "the drill was interrupted; the node was stopped"))
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not keep:
            shutil.rmtree(node_dir, ignore_errors=True)
    return report


def _interrupt(_signum: int, _frame: object) -> None:
    # A stopped drill must still stop its node: SIGTERM unwinds like Ctrl-C through every finally.
    raise KeyboardInterrupt


def checker(report: DrillReport, progress: Progress) -> CheckFn:
    """The function the steps record their checks with: into ``report``, and one progress line each."""

    def check(name: str, problem: str | None, ok: str) -> bool:
        report.checks.append(Check(name, problem is None, problem or ok))
        progress(f"{name}: {'ok' if problem is None else 'FAILED'} - {problem or ok}")
        return problem is None

    return check


async def carry_ledger(
    url: str, data_dir: Path, keyring: Keyring, live_ledger: Path, node: Lineage | None = None
) -> None:
    """Give the restored copy (its database at ``url``, its node's files in ``data_dir``) the
    deployment's account ledger, under a lineage of its own below the deployment's (``node``, when
    known: the backup may carry an older one): its node then makes again, before it serves, every
    erasure, disable and revocation made since the backup (an attack run signed a person disabled
    since then in on a drill's node, which proxied to the live apps), and what the copy writes is never
    read by the deployment.

    Raises:
        OSError: A ledger file cannot be read or written.
    """
    private_dir(data_dir)
    db = Database.open(url, pool_size=1)
    try:
        ledger = AccountLedger(db, keyring, data_dir / "account-ledger.jsonl", SYSTEM_CLOCK)
        await ledger.restored(node, live_ledger, copy=True)
    finally:
        await db.close()


def _steps(
    report: DrillReport,
    backup: Path,
    live_config: Path,
    keyring_file: Path,
    keyring: Keyring,
    node_dir: Path,
    port: int | None,
    check: CheckFn,
    carried: tuple[Path | None, Lineage | None],
) -> None:
    try:
        verified = asyncio.run(verify_backup(backup, keyring))
    except BackupError as exc:
        check("verify", exc.detail, "")
        return
    manifest = verified.manifest
    report.backup_id = manifest.backup_id
    check(
        "verify", None, f"signature, {len(manifest.parts)} part(s), audit chain of {verified.audit_records}"
    )

    data_dir = node_dir / "data"
    started = time.monotonic()
    try:
        restored = asyncio.run(restore_backup(backup, keyring, data_dir))
    except BackupError as exc:
        check("restore", exc.detail, "")
        return
    now = datetime.now(UTC)
    report.rpo_seconds = (now - datetime.fromisoformat(manifest.created_at).astimezone(UTC)).total_seconds()
    newest = _newest_record_at(restored.database)
    if newest is not None:
        report.newest_record_age_seconds = (now - newest).total_seconds()
    # The copy's trail records its restore, as `gateway backup restore` has the restored node's do:
    # without it, the chain of a backup made before a key was marked compromised reads as cut.
    try:
        asyncio.run(_record_restore(restored, keyring))
    except (GatewayError, OSError) as exc:
        check("restore", f"cannot record the restore in the copy's audit trail: {exc}", "")
        return
    live_ledger, node = carried
    if live_ledger is not None:
        try:
            asyncio.run(carry_ledger(default_sqlite_url(data_dir), data_dir, keyring, live_ledger, node))
        except OSError as exc:
            check("restore", f"cannot take the account ledger {live_ledger} along: {exc.strerror or exc}", "")
            return
    check("restore", None, f"into {data_dir}")

    report.port = port or free_port()
    raw = node_config(live_config, data_dir, report.port, keyring_file)
    serve_and_use(report, raw, node_dir, live_config.resolve().parent, started, check)
    if report.failed:
        return
    problem = asyncio.run(audit_chain(default_sqlite_url(data_dir), keyring))
    check("audit_chain", problem, "the restored trail verifies with the keyring")


async def _record_restore(restored: Verified, keyring: Keyring) -> None:
    async with restored_trail(restored, keyring, actor=DRILL_ACTOR):
        pass


def serve_and_use(
    report: DrillReport,
    raw: dict[str, Any],
    node_dir: Path,
    cwd: Path,
    started: float,
    check: CheckFn,
    env: Mapping[str, str] | None = None,
) -> None:
    """Start the node on the configuration ``raw``, wait until it is ready (RTO), then sign the drill
    account in; always stop it.

    The configuration is written beside the live one (``cwd``: relative paths mean the same there) and
    removed after; a copy stays with the node for ``--keep``. Both are 0600 from the start: the copy
    may hold the live database URL's password. A secret the configuration names by ``${env:NAME}``
    comes in ``env`` (the node's environment), so no file holds it: a drill killed with SIGKILL
    cannot remove its files (a re-attack run found the restored cluster's URL, password included,
    beside the live configuration).
    """
    assert report.port is not None
    doc = yaml.safe_dump(raw)
    _write_private(node_dir / "gateway.yaml", doc)
    with _node_config_file(cwd, node_dir, doc) as config:
        _serve_and_use(report, config, node_dir, cwd, started, check, env or {})


def _write_private(path: Path, doc: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(doc)


def _serve_and_use(
    report: DrillReport,
    config: Path,
    node_dir: Path,
    cwd: Path,
    started: float,
    check: CheckFn,
    env: Mapping[str, str],
) -> None:
    assert report.port is not None
    with _serving(config, node_dir / "gateway.log", cwd, env) as proc:
        problem = _wait_ready(report.port, proc, READY_TIMEOUT)
        if problem is not None:
            tail = (node_dir / "gateway.log").read_text(errors="replace").strip().splitlines()[-3:]
            check("start", f"{problem}; log: {' | '.join(tail)}", "")
            return
        report.rto_seconds = time.monotonic() - started
        check("start", None, f"ready on 127.0.0.1:{report.port} after {report.rto_seconds:.1f}s")

        # A one-off password, never printed or recorded; the account lives only in the drill node.
        password = os.urandom(24).hex()
        problem = _add_drill_user(config, cwd, password, env) or sign_in(report.port, DRILL_USER, password)
        if not check("sign_in", problem, f"{DRILL_USER} signed in with a password over HTTP"):
            return
