"""PostgreSQL clusters a test starts itself (its own data directory, port and socket directory).

initdb refuses to run as root, so when the tests run as root (CI) the cluster belongs to the
``postgres`` OS user and every PostgreSQL command runs through ``runuser``; otherwise it belongs to
the tests' user. :func:`pg_node` hands out a fresh directory that user can reach and stops every
cluster started in it afterwards, also when the test fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PG_BIN", "Node", "pg_node"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Node:
    """A directory PostgreSQL (and pgBackRest) may use, and the clusters started in it."""

    home: Path
    # The OS user PostgreSQL runs as: ``postgres`` when the tests run as root, else the tests' user.
    os_user: str | None
    started: list[Path] = field(default_factory=list)

    def as_owner(self, *line: str | Path) -> list[str]:
        """The command line, run as the cluster's owner."""
        args = [str(a) for a in line]
        return ["runuser", "-u", self.os_user, "--", *args] if self.os_user else args

    def own(self, path: Path) -> None:
        """Hand ``path`` to the cluster's owner."""
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def mkdir(self, name: str) -> Path:
        path = self.home / name
        path.mkdir(mode=0o700)
        self.own(path)
        return path

    def initdb(self, data: Path) -> None:
        """A new cluster in ``data`` (trust authentication, superuser ``postgres``)."""
        init = subprocess.run(
            self.as_owner(PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert init.returncode == 0, init.stderr

    def start(self, data: Path, port: int, socket_dir: Path) -> None:
        """Start the cluster in ``data`` on ``port`` (TCP on 127.0.0.1 and a socket in ``socket_dir``)."""
        self.started.append(data)
        options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1"
        proc = subprocess.run(
            self.as_owner(
                PG_BIN / "pg_ctl",
                "-D",
                data,
                "-l",
                data.parent / f"{data.name}.log",
                "-w",
                "-o",
                options,
                "start",
            ),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.log(data)

    def log(self, data: Path) -> str:
        path = data.parent / f"{data.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        """Stop every cluster started here (immediately: teardown, also after a failure)."""
        for data in self.started:
            if (data / "postmaster.pid").exists():
                subprocess.run(
                    self.as_owner(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"),
                    capture_output=True,
                    timeout=60,
                    check=False,
                )


@contextmanager
def pg_node(prefix: str) -> Iterator[Node]:
    """A fresh directory outside pytest's root-only tmp dir, so the ``postgres`` user can reach it."""
    os_user = "postgres" if os.geteuid() == 0 else None
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    n = Node(home, os_user)
    n.own(home)
    try:
        yield n
    finally:
        n.stop_all()
        shutil.rmtree(home, ignore_errors=True)
