"""The disaster-recovery drill of a PostgreSQL deployment: pgBackRest's newest backup and the archived
WAL restored into a fresh cluster, a gateway started on it, and the same proofs as on SQLite.

The steps (each a named check; the first failure ends the drill):

* ``verify``: the repository verifies (``pgbackrest verify``, and the WAL each backup needs is archived:
  :func:`gateway.backup.pg_repo.verify_repository`) and ``pgbackrest info`` names the newest backup;
* ``restore``: ``pgbackrest restore`` into a new temporary data directory (all archived WAL replayed,
  archiving off in the copy, so it never pushes WAL into the live stanza);
* ``start_database``: PostgreSQL on that directory (``postgres``, a child of the drill's, as
  ``backup.pgbackrest.os_user``, a free loopback port and a socket in the node's directory) has
  finished recovery and accepts connections;
* ``start``, ``sign_in``: as on SQLite (:mod:`gateway.backup.drill`), with ``storage.url`` pointing at
  the restored cluster (same user, password and database as the live URL, another host and port);
* ``audit_chain``: the restored trail verifies with the keyring.

RPO is the age of the newest backup (when it stopped); the age of the newest restored audit record
shows what the archived WAL added on top. RTO runs from the start of the restore to the gateway being
ready. The cluster is always stopped (``-m immediate``) and its directory removed unless ``keep``.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.backup.drill import (
    CheckFn,
    DrillReport,
    Progress,
    audit_chain,
    carry_ledger,
    checker,
    free_port,
    in_node,
    node_config,
    serve_and_use,
)
from gateway.backup.manifest import BackupError
from gateway.backup.pg_repo import verify_repository
from gateway.backup.pgbackrest import PgBackRestError, as_owner, owner_ids, restore_args
from gateway.backup.pgbackrest import run as run_pgbackrest
from gateway.crypto.keyring import Keyring
from gateway.identity.ledger import Lineage
from gateway.lifetime import die_with
from gateway.settings.schema import PgBackRestSettings
from gateway.store.db import Database
from gateway.store.pg_tls import TLS_PARAMETERS

__all__ = ["PG_STEPS", "find_pg_ctl", "run_pg_drill"]

PG_STEPS = ("verify", "restore", "start_database", "start", "sign_in", "audit_chain")
# The environment variable the drill's node reads the restored cluster's URL from.
_NODE_URL_ENV = "GATEWAY_DRILL_STORAGE_URL"
# Recovery of a day's WAL on a small database takes seconds; a large one is what this bound reports.
RECOVERY_TIMEOUT = 600.0


def find_pg_ctl() -> Path | None:
    """``pg_ctl``: on the PATH, else the newest of Debian's ``/usr/lib/postgresql/<major>/bin``."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    return Path(candidates[-1]) if candidates else None


def _newest_backup(pg: PgBackRestSettings) -> tuple[str, datetime]:
    info = json.loads("\n".join(run_pgbackrest(pg, "info", "--output=json").output))
    backups = [b for stanza in info for b in stanza.get("backup", [])]
    if not backups:
        raise PgBackRestError("info", 0, f"stanza {pg.stanza} has no backup to restore")
    newest = max(backups, key=lambda b: b["timestamp"]["stop"])
    return str(newest["label"]), datetime.fromtimestamp(newest["timestamp"]["stop"], UTC)


def _give(path: Path, os_user: str | None) -> None:
    if (ids := owner_ids(os_user)) is not None:
        os.chown(path, *ids)


def _prepare_config(data: Path, os_user: str | None) -> None:
    # pgBackRest restores the data directory only; Debian keeps postgresql.conf and pg_hba.conf in
    # /etc, so a copy restored from such a cluster has none: a minimal pair, loopback only.
    for name, body in (
        ("postgresql.conf", "listen_addresses = '127.0.0.1'\n"),
        ("pg_hba.conf", "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n"),
    ):
        path = data / name
        if not path.exists():
            path.write_text(body)
            path.chmod(0o600)
            _give(path, os_user)


@contextmanager
def _cluster(
    pg: PgBackRestSettings, pg_ctl: Path, data: Path, port: int, sockets: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """PostgreSQL on ``data``, a child of the drill's; always stopped after (``-m immediate``).

    ``postgres`` itself rather than ``pg_ctl start``, which detaches the server: a drill killed with
    SIGKILL left its restored cluster running (a finally cannot run then). As a child it is told to
    stop when the drill dies (PR_SET_PDEATHSIG, :mod:`gateway.lifetime`); under ``runuser`` that
    process is told, and it ends the server it runs.
    """
    log = sockets.parent / "pglog" / "postgresql.log"
    line = as_owner(
        pg,
        str(pg_ctl.with_name("postgres")),
        *("-D", str(data), "-p", str(port), "-k", str(sockets)),
        *("-c", "listen_addresses=127.0.0.1", "-c", "archive_mode=off"),
    )
    with log.open("ab") as out:
        server = subprocess.Popen(  # noqa: S603 - PostgreSQL's own binary, fixed arguments
            line,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=partial(die_with, os.getpid()),
        )
    try:
        yield server
    finally:
        if server.poll() is None:
            stop = as_owner(pg, str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop")
            subprocess.run(stop, capture_output=True, timeout=60, check=False)  # noqa: S603
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _exited(server: subprocess.Popen[bytes], log: Path) -> str | None:
    """Why the drill's PostgreSQL is not running (its exit code and the last lines it logged), or None."""
    code = server.poll()
    if code is None:
        return None
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    return f"PostgreSQL exited ({code}): {' | '.join(tail)}"


async def _promoted(url: str, deadline: float, server: subprocess.Popen[bytes], log: Path) -> str | None:
    db = Database.open(url, pool_size=1)
    try:
        while True:
            if (gone := _exited(server, log)) is not None:
                return gone
            try:
                async with db.engine.connect() as conn:
                    if not (await conn.execute(text("SELECT pg_is_in_recovery()"))).scalar_one():
                        return None
            except Exception as exc:  # noqa: BLE001 - reported as the step's problem
                last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            else:
                last = "still recovering"
            if time.monotonic() > deadline:
                return f"not accepting writes after {RECOVERY_TIMEOUT:.0f}s ({last})"
            await asyncio.sleep(0.2)
    finally:
        await db.close()


async def _newest_record_at(url: str) -> datetime | None:
    db = Database.open(url, pool_size=1)
    try:
        async with db.engine.connect() as conn:
            newest: datetime | None = (
                await conn.execute(text("SELECT max(at) FROM audit_events"))
            ).scalar_one()
    finally:
        await db.close()
    return newest


def run_pg_drill(
    pg: PgBackRestSettings,
    live_url: str,
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
    """Every step of the PostgreSQL drill (see the module docstring); synchronous, as ``run_drill``;
    ``live_ledger`` is carried into the copy (:func:`gateway.backup.drill.carry_ledger`)."""
    report = DrillReport(backup_id="", backup_path=f"pgbackrest stanza {pg.stanza}", steps=PG_STEPS)
    check = checker(report, progress)

    def steps(node_dir: Path) -> None:
        _steps(
            report, pg, live_url, live_config, keyring_file, keyring, node_dir, port, check, (live_ledger, node)
        )  # fmt: skip

    # The cluster's owner must reach its directories inside; nobody may list this one.
    return in_node(report, steps, keep=keep, mode=0o711 if pg.os_user else 0o700)


def _steps(
    report: DrillReport,
    pg: PgBackRestSettings,
    live_url: str,
    live_config: Path,
    keyring_file: Path,
    keyring: Keyring,
    node_dir: Path,
    port: int | None,
    check: CheckFn,
    carried: tuple[Path | None, Lineage | None],
) -> None:
    pg_ctl = find_pg_ctl()
    try:
        if pg_ctl is None:
            raise PgBackRestError("drill", 127, "pg_ctl not found (PATH, /usr/lib/postgresql/*/bin)")
        checked = verify_repository(pg)
        label, stopped = _newest_backup(pg)
    except PgBackRestError as exc:
        check("verify", str(exc), "")
        return
    except BackupError as exc:
        check("verify", exc.detail, "")
        return
    report.backup_id = label
    check(
        "verify",
        None,
        f"pgbackrest verify passed, the WAL of {len(checked.backups)} backup(s) is archived; newest backup {label}",
    )

    data, sockets = node_dir / "pgdata", node_dir / "sock"
    for path in (data, sockets, node_dir / "pglog"):
        path.mkdir(mode=0o700)
        _give(path, pg.os_user)
    started = time.monotonic()
    try:
        run_pgbackrest(pg, "restore", *restore_args(data, target_time=None))
    except PgBackRestError as exc:
        check("restore", str(exc), "")
        return
    _prepare_config(data, pg.os_user)
    report.rpo_seconds = (datetime.now(UTC) - stopped).total_seconds()
    check("restore", None, f"{label} and the archived WAL into {data}")

    db_port = free_port()
    # The drill's own cluster listens on loopback only: the live URL's TLS parameters name the live
    # server (verify-full would refuse 127.0.0.1), and the restored copy may have no certificate.
    node = (
        make_url(live_url).difference_update_query(TLS_PARAMETERS).update_query_dict({"sslmode": "disable"})
    )
    node_url = node.set(host="127.0.0.1", port=db_port).render_as_string(hide_password=False)
    with _cluster(pg, pg_ctl, data, db_port, sockets) as server:
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        problem = asyncio.run(_promoted(node_url, deadline, server, node_dir / "pglog" / "postgresql.log"))
        if not check("start_database", problem, f"PostgreSQL on 127.0.0.1:{db_port}, recovery done"):
            return
        # Before the drill's gateway runs: its own records (the drill account, the sign-in) are not
        # what the restore brought back.
        newest = asyncio.run(_newest_record_at(node_url))
        if newest is not None:
            report.newest_record_age_seconds = (datetime.now(UTC) - newest).total_seconds()
        live_ledger, lineage = carried
        if live_ledger is not None:
            try:
                asyncio.run(carry_ledger(node_url, node_dir / "data", keyring, live_ledger, lineage))
            except OSError as exc:
                check("start_database", f"cannot take the account ledger {live_ledger} along: {exc}", "")
                return
        _gateway_steps(report, node_url, live_config, keyring_file, keyring, node_dir, port, started, check)


def _gateway_steps(
    report: DrillReport,
    node_url: str,
    live_config: Path,
    keyring_file: Path,
    keyring: Keyring,
    node_dir: Path,
    port: int | None,
    started: float,
    check: CheckFn,
) -> None:
    report.port = port or free_port()
    raw = node_config(live_config, node_dir / "data", report.port, keyring_file)
    # The restored cluster's URL holds the live URL's password: the node reads it from its
    # environment, never from a file a killed drill would leave behind.
    raw["storage"] = {**raw["storage"], "url": "${env:" + _NODE_URL_ENV + "}"}
    env = {_NODE_URL_ENV: node_url}
    serve_and_use(report, raw, node_dir, live_config.resolve().parent, started, check, env)
    if report.failed:
        return
    problem = asyncio.run(audit_chain(node_url, keyring))
    check("audit_chain", problem, "the restored trail verifies with the keyring")
