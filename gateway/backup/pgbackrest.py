"""pgBackRest for a PostgreSQL deployment: its configuration from the settings, and running it.

pgBackRest makes the backups (full, differential, incremental), archives the WAL and restores to a
point in time; the gateway writes its ``pgbackrest.conf`` from ``backup.pgbackrest``, says which
``postgresql.conf`` lines archive the WAL into it, and runs its commands as subprocesses whose
output is passed on line by line (the progress) and whose failures are reported by pgBackRest's own
``ERROR: [code]`` line.

The repository is encrypted with pgBackRest's repository encryption, which supports aes-256-cbc only.
Its passphrase is in ``pgbackrest.conf`` (written mode 0600): PostgreSQL's ``archive_command`` runs
``pgbackrest archive-push`` without the gateway's environment and must be able to read it.

``verify`` exits 0 when it finds damage: it logs each damaged file (``invalid checksum '<label>/pg_data/…'``,
``file missing '…'``, ``invalid size``, ``invalid result``) and a ``status: error`` summary per backup. The
gateway reads both, so the failure it reports names the file and the backup label
(:func:`reported_problem`, :func:`named_part`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

from gateway.settings.schema import PgBackRestSettings

__all__ = [
    "LABEL",
    "BackupType",
    "PgBackRestError",
    "Result",
    "argv",
    "as_owner",
    "config_text",
    "live_cluster",
    "named_part",
    "owner_ids",
    "postgresql_lines",
    "reported_problem",
    "restore_args",
    "run",
    "write_config",
]

BackupType = Literal["full", "diff", "incr"]
# pgBackRest reports a failure as ``ERROR: [055]: message``; the code is also its exit status.
_ERROR_LINE: Final = re.compile(r"ERROR: \[(\d+)\]: (.*)")
# ``verify`` and ``info`` exit 0 even when they find a stanza broken or unreadable: they say so in
# their output (``status: error`` and the reasons below it, or a JSON status code).
_STATUS_ERROR: Final = re.compile(r"^\s*status: error(?! \(no valid backups\))")
# A damaged file, as ``verify`` logs it: ``invalid checksum '<label>/pg_data/…'`` (quoted), or
# ``invalid result <archive id>/…/<segment>-<sha1>.gz: [29] …`` (unquoted, then the error).
_FILE_FINDING: Final = re.compile(
    r"(?:INFO|WARN|ERROR): (?P<problem>file missing|invalid checksum|invalid size|invalid result) "
    r"'?(?P<file>[^'\s:]+)'?"
)
# A backup's line in the ``verify`` summary.
_BACKUP_STATUS: Final = re.compile(r"backup: (?P<label>[^,\s]+), status: (?P<status>[^,]+)")
# pgBackRest's backup labels: a full one, or a differential/incremental one on top of its full one.
LABEL: Final = re.compile(r"\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?")
# What an unreadable repository (wrong passphrase, or not a pgBackRest repository) looks like.
_UNREADABLE: Final = re.compile(r"No usable (backup|archive)\.info|FormatError|unable to load info file")
# ``info --output=json`` stanza status codes that are not a problem: 0 ok, 2 no backup made yet.
_JSON_OK: Final = frozenset({0, 2})
# Hints for the failures an operator meets first; the message of any other is pgBackRest's own.
_HINTS: Final[dict[int, str]] = {
    39: "the repository cannot be read with this cipher_pass, or it is not a pgBackRest repository",
    43: "is the cluster running, and do pg_path/pg_port/pg_socket_path point to it?",
    55: "a file pgBackRest needs is missing (run `gateway pgbackrest stanza-create` first?)",
    56: "is pg_path the cluster's data directory?",
    # pgBackRest compares the target with backups' stop times in whole seconds, strictly earlier.
    75: "no backup finished at least a second before the target time: pick a later --target-time "
    "(`gateway pgbackrest info` lists the backups' stop times)",
    82: "WAL was not archived in time: check archive_mode/archive_command (`gateway pgbackrest config`)",
}


class PgBackRestError(Exception):
    """A pgBackRest command ran and failed: its exit status and its ``ERROR`` line."""

    def __init__(self, command: str, status: int, message: str, *, part: str = "") -> None:
        """Args: the pgBackRest command, its exit status (0: it exited 0 but reported an error in its
        output), its last ``ERROR`` line (or the reported problem), and the backup label (or file) the
        problem is in, when it names one."""
        hint = _HINTS.get(status)
        if status == 0 and _UNREADABLE.search(message):
            hint = _HINTS[39]
        exit_note = f" (exit {status})" if status else ""
        super().__init__(
            f"pgbackrest {command} failed{exit_note}: {message}" + (f" ({hint})" if hint else "")
        )
        self.command = command
        self.status = status
        self.part = part


@dataclass(frozen=True, slots=True)
class Result:
    """A pgBackRest command that succeeded, with its output (stdout and stderr, in order)."""

    command: str
    output: tuple[str, ...]


def config_text(pg: PgBackRestSettings, *, redact: bool = False) -> str:
    """The ``pgbackrest.conf`` of these settings: ``[global]`` (repository) and ``[<stanza>]`` (cluster).

    Args:
        pg: The settings.
        redact: Write ``<redacted>`` for the passphrase (to show the file, not to use it).
    """
    lines = [
        "# Written by `gateway pgbackrest config --write` from backup.pgbackrest; edit the settings instead.",
        "[global]",
        f"repo1-path={pg.repo_path}",
        # pgBackRest's repository encryption supports aes-256-cbc only.
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={'<redacted>' if redact else pg.cipher_pass}",
        f"repo1-retention-full={pg.retention_full}",
    ]
    if pg.retention_diff is not None:
        lines.append(f"repo1-retention-diff={pg.retention_diff}")
    lines += [
        f"compress-type={pg.compress_type}",
        "start-fast=y",
        "log-level-console=info",
        "",
        f"[{pg.stanza}]",
        f"pg1-path={pg.pg_path}",
        f"pg1-port={pg.pg_port}",
    ]
    if pg.pg_host is not None:
        lines.append(f"pg1-host={pg.pg_host}")
    elif pg.pg_socket_path is not None:
        lines.append(f"pg1-socket-path={pg.pg_socket_path}")
    return "\n".join(lines) + "\n"


def postgresql_lines(pg: PgBackRestSettings) -> str:
    """The ``postgresql.conf`` lines that archive every WAL segment into the repository."""
    push = f"pgbackrest --config={shlex.quote(pg.config_path)} --stanza={pg.stanza} archive-push %p"
    return (
        "\n".join(
            [
                "archive_mode = on",
                f"archive_command = '{push}'",
                "wal_level = replica",
                # pgBackRest's check and backups wait for a segment to be archived; one switch a minute
                # bounds how much an idle cluster can lose.
                "archive_timeout = 60",
            ]
        )
        + "\n"
    )


def write_config(pg: PgBackRestSettings, path: Path | None = None) -> Path:
    """Write the configuration to ``path`` (``config_path``) with mode 0600: it holds the passphrase.

    Owned by ``os_user`` when set, who runs ``archive-push`` and must read it.
    """
    target = path or Path(pg.config_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 before the secret is written into it: never readable by others, not even briefly.
    # Never through a symbolic link (ELOOP): the mode and owner are set on what was opened, so a link
    # planted at the path cannot make root give another file to os_user.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        if (ids := owner_ids(pg.os_user)) is not None:
            os.fchown(out.fileno(), *ids)
        out.write(config_text(pg))
    return target


def owner_ids(os_user: str | None) -> tuple[int, int] | None:
    """The uid and gid to give files to the cluster's owner ``os_user`` with; None when there is none
    or this process cannot give files away (only root can)."""
    if os_user is None or os.geteuid() != 0:
        return None
    import pwd

    entry = pwd.getpwnam(os_user)
    return entry.pw_uid, entry.pw_gid


def argv(pg: PgBackRestSettings, command: str, *options: str, params: Sequence[str] = ()) -> list[str]:
    """The command line of one pgBackRest command (``params`` after it: ``repo-ls <path>``), as
    ``os_user`` when that is not who runs it."""
    return as_owner(
        pg, "pgbackrest", f"--config={pg.config_path}", f"--stanza={pg.stanza}", *options, command, *params
    )


def as_owner(pg: PgBackRestSettings, *line: str) -> list[str]:
    """``line`` run as the cluster's owner (``os_user``) when that is not who runs it."""
    if pg.os_user is not None and _current_user() != pg.os_user:
        # runuser needs root and asks for no password; sudo would prompt in the middle of a backup.
        return ["runuser", "-u", pg.os_user, "--", *line]
    return list(line)


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def restore_args(
    target: Path,
    *,
    target_time: datetime | None,
    backup: str | None = None,
    repo_path: Path | None = None,
) -> list[str]:
    """Options of a restore into ``target`` (a new data directory).

    To ``target_time`` when given (``--type=time``); from ``backup`` (``--set``), alone to the moment
    it finished (``--type=immediate``: consistent, no later WAL replayed); from the repository copy at
    ``repo_path``. Without any, pgBackRest's newest backup and all archived WAL. Every kind ends
    promoted to a normal cluster.

    The restored copy does not archive (``--archive-mode=off``): its WAL would otherwise be pushed into
    the stanza of the cluster it was restored from, on a diverging timeline.
    """
    options = [f"--pg1-path={target}", "--archive-mode=off"]
    if repo_path is not None:
        options.append(f"--repo1-path={repo_path}")
    if backup is not None:
        options.append(f"--set={backup}")
    if target_time is not None:
        options += [
            "--type=time",
            f"--target={target_time.isoformat(sep=' ')}",
            "--target-action=promote",
        ]
    elif backup is not None:
        options += ["--type=immediate", "--target-action=promote"]
    return options


def live_cluster(path: Path, pg: PgBackRestSettings) -> str | None:
    """Why ``path`` must not be restored into without ``--force``, or None when it is safe.

    A running cluster's directory holds ``postmaster.pid``; the configured ``pg_path`` is the live
    cluster's directory even while it is stopped; any other non-empty directory is someone's data.
    """
    resolved = path.resolve()
    if (resolved / "postmaster.pid").exists():
        return f"{path} is the data directory of a running PostgreSQL cluster (postmaster.pid)"
    if resolved == Path(pg.pg_path).resolve():
        return f"{path} is the live cluster's data directory (backup.pgbackrest.pg_path)"
    if resolved.exists() and any(resolved.iterdir()):
        return f"{path} is not empty"
    return None


def run(
    pg: PgBackRestSettings,
    command: str,
    *options: str,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    params: Sequence[str] = (),
) -> Result:
    """Run ``pgbackrest <command>``, passing each output line to ``on_line`` as it is written.

    Args:
        pg: The settings (configuration file, stanza, OS user).
        command: ``stanza-create``, ``check``, ``backup``, ``info``, ``verify``, ``restore``, ``repo-ls``.
        options: Its options (``--type=full``).
        on_line: Shown the output as it comes (the progress of a long backup).
        env: Extra environment variables.
        params: Its parameters, after the command (the path of ``repo-ls``).

    Raises:
        PgBackRestError: It exited with a non-zero status (or pgbackrest is not installed: 127), or
            exited 0 and reported a problem (``part``: the backup label or file it names).
    """
    line = argv(pg, command, *options, params=params)
    output: list[str] = []
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv from the operator's settings, no shell
            line,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # An unreadable repository's garbage ends up in pgBackRest's messages.
            errors="replace",
            env={**os.environ, **(env or {})},
        )
    except FileNotFoundError:
        raise PgBackRestError(
            command, 127, f"{line[0]} is not installed (Debian: apt install pgbackrest)"
        ) from None
    assert proc.stdout is not None
    with proc:
        for text in proc.stdout:
            text = text.rstrip("\n")
            output.append(text)
            if on_line is not None:
                on_line(text)
    status = proc.wait()
    if status != 0:
        raise PgBackRestError(command, status, _error_message(output))
    problem = reported_problem(output)
    if problem is not None:
        raise PgBackRestError(command, 0, problem, part=named_part(output))
    return Result(command, tuple(output))


def reported_problem(output: Sequence[str]) -> str | None:
    """The problem a command that exited 0 reported in its output (``verify``, ``info``), or None.

    Text: each damaged file ``verify`` logged (its problem and path, which starts with the backup
    label or the archive id), then the indented lines under ``status: error`` (which backup, how many
    files of each kind); JSON (``info --output=json``): each stanza's status message whose code is
    not 0 (ok) or 2 (no backup yet).
    """
    for i, text in enumerate(output):
        if _STATUS_ERROR.search(text):
            files = [f"{problem} '{file}'" for problem, file in _file_findings(output)]
            shown = files[:_SHOWN_FILES] + (
                [f"and {len(files) - _SHOWN_FILES} more damaged file(s)"] if len(files) > _SHOWN_FILES else []
            )
            reasons = [
                line.strip()
                for line in output[i + 1 :]
                if line.startswith(" ") and line.strip() and not line.strip().startswith("[")
            ]
            return "; ".join(shown + reasons[:6]) or text.strip()
    joined = "\n".join(output).strip()
    if joined.startswith("["):
        try:
            # strict=False: an unreadable file's bytes are quoted raw in the message.
            stanzas = json.loads(joined, strict=False)
        except ValueError:
            return None
        for stanza in stanzas if isinstance(stanzas, list) else []:
            for repo in stanza.get("repo", []):
                code = repo.get("status", {}).get("code", 0)
                if code not in _JSON_OK:
                    return str(repo["status"].get("message", f"status code {code}")).splitlines()[0]
    return None


_SHOWN_FILES: Final = 5


def _file_findings(output: Sequence[str]) -> list[tuple[str, str]]:
    return [(m["problem"], m["file"]) for line in output if (m := _FILE_FINDING.search(line))]


def named_part(output: Sequence[str]) -> str:
    """The backup label (or WAL file) the first problem ``verify`` reported is in; "" when none.

    A damaged file's path starts with its backup's label (``20270301-020001F/pg_data/…``) or, for WAL,
    with the archive id (``15-1/0000000100000000/…``): the label, else the file. Without a damaged
    file, the first backup the summary does not call valid (``status: manifest missing``).
    """
    for _problem, file in _file_findings(output):
        head = file.split("/", 1)[0]
        return head if LABEL.fullmatch(head) else file
    for line in output:
        match = _BACKUP_STATUS.search(line)
        if match is not None and match["status"].strip() != "valid":
            return match["label"]
    return ""


def _error_message(output: Sequence[str]) -> str:
    """pgBackRest's last ``ERROR`` line, else its last line of output."""
    for text in reversed(output):
        match = _ERROR_LINE.search(text)
        if match is not None:
            return match.group(2).strip()
    return output[-1].strip() if output else "no output"
