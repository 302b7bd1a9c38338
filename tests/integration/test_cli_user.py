"""``gateway user …`` as an operator runs it: real subprocesses against a temporary SQLite config.

What a terminal shows is what is checked: exit codes, stdout, stderr. Passwords only ever travel on
standard input (or a terminal), so every test also checks that no password shows up in any output,
and the database holds only argon2 hashes.
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import argon2
import pytest

from tests.integration.harness import ROOT

PASSWORD = "amber quarry lantern voyage"
NEW_PASSWORD = "an entirely different passphrase"
ACTIONS = ["add", "list", "show", "disable", "enable", "set-password", "reset-mfa", "invite", "delete"]


@dataclass
class Cli:
    config: Path
    db_path: Path
    secrets: list[str]

    def run(self, *args: str, stdin: str | None = None, umask: int = -1) -> subprocess.CompletedProcess[str]:
        """Run ``gateway user ARGS --config FILE``; passwords go to stdin only (``umask``: -1 keeps ours)."""
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "user", *args, "--config", str(self.config)],
            cwd=ROOT,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            umask=umask,
        )
        for secret in self.secrets:
            assert secret not in proc.args
            assert secret not in proc.stdout
            assert secret not in proc.stderr
        assert "Traceback" not in proc.stderr
        return proc

    def ok(self, *args: str, stdin: str | None = None) -> str:
        proc = self.run(*args, stdin=stdin)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def user_row(self, username: str) -> sqlite3.Row | None:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM users WHERE username = ?", (username,)
            ).fetchone()
            return row


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:8080\n"
        "public_url: http://127.0.0.1:8080\n"
        f"data_dir: {data}\n"
        "routes:\n"
        "  - {name: echo, host: 127.0.0.1, upstreams: ['http://127.0.0.1:9000'], mfa: none}\n"
    )
    c = Cli(config=config, db_path=data / "gateway.db", secrets=[PASSWORD, NEW_PASSWORD])
    yield c
    if c.db_path.exists():
        raw = c.db_path.read_bytes() + b"".join(p.read_bytes() for p in data.glob("gateway.db-*"))
        for secret in c.secrets:
            assert secret.encode() not in raw


def test_with_memory_state_the_command_says_the_sessions_are_out_of_reach(cli: Cli) -> None:
    # Only a gateway on state.embedded: memory keeps its sessions where no command can reach them; the
    # command must say so rather than report "0 session(s) ended" as if it had looked.
    cli.config.write_text(cli.config.read_text() + "state: {embedded: memory}\nadmin: {listen: null}\n")
    cli.ok("add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    proc = cli.run("set-password", "alice", "--end-sessions", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "password set for alice"
    assert "state.embedded is memory" in proc.stderr
    # An invitation link kept in this command's memory would never open: refused before any change.
    _give_factors(cli.db_path, cli.user_row("alice")["id"])  # type: ignore[index]
    for action in (["invite", "--clear-password"], ["reset-mfa", "--invite"]):
        proc = cli.run(*action, "alice")
        assert proc.returncode == 2, proc.stderr
        assert "state.embedded is memory" in proc.stderr
        assert "admin console" in proc.stderr
        assert proc.stdout == ""
    assert cli.user_row("alice")["password_hash"] is not None  # type: ignore[index]
    assert "3 of 3 left" in cli.ok("show", "alice")
    for action in (["disable"], ["reset-mfa"], ["delete", "--yes"]):
        proc = cli.run(*action, "alice")
        assert proc.returncode == 0, proc.stderr
        assert "session(s) ended" not in proc.stdout
        assert "state.embedded is memory" in proc.stderr


def test_what_a_command_records_reaches_the_security_event_sinks(cli: Cli, tmp_path: Path) -> None:
    """An attack run: lockdown lifts, unblocks and re-enabled accounts made from the CLI were in the
    audit trail but never in the SOC's feed, which only the serving processes wrote. A command's
    events go to the file, syslog and HTTP sinks; never to stdout, which is the command's output."""
    sink = tmp_path / "security.jsonl"
    cli.config.write_text(
        cli.config.read_text()
        + f"logging:\n  sinks:\n    - {{type: file, path: {sink}}}\n    - {{type: stdout}}\n"
    )
    cli.ok("add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    proc = cli.run("disable", "alice")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "disabled user alice; 0 session(s) ended"
    assert "sink" not in proc.stderr
    actions = [json.loads(line)["event"]["action"] for line in sink.read_text().splitlines()]
    assert actions == ["user.created", "user.disabled"]
    listed = cli.ok("list", "--json")
    assert json.loads(listed)  # one document: no event line in it


def test_the_data_directory_and_database_it_creates_are_private(cli: Cli) -> None:
    """With the usual umask, the first command made data/ 0755 and gateway.db 0644: every local user
    could read the password hashes (outside review)."""
    proc = cli.run("add", "alice", "--password-stdin", stdin=PASSWORD + "\n", umask=0o022)
    assert proc.returncode == 0, proc.stderr
    data = cli.db_path.parent
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in (data, *data.iterdir()) if p.is_file() or p == data
    }
    assert modes.pop("data") == 0o700
    assert modes, "no file was written"
    assert all(mode == 0o600 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}


def _give_factors(db_path: Path, user_id: int) -> None:
    now = "2026-01-02 03:04:05.000000"
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO totp_credentials (user_id, name, secret_enc, confirmed, last_step, created_at)"
            " VALUES (?, 'Phone', 'ciphertext', 1, 0, ?)",
            (user_id, now),
        )
        conn.execute(
            "INSERT INTO webauthn_credentials (user_id, name, credential_id, public_key, sign_count,"
            " transports, aaguid, discoverable, backed_up, user_verified, created_at, last_used_at)"
            " VALUES (?, 'YubiKey', X'0102', X'0304', 0, 'usb', '', 0, 0, 1, ?, ?)",
            (user_id, now, now),
        )
        for i in range(3):
            conn.execute(
                "INSERT INTO recovery_codes (user_id, batch, position, code_hash, created_at)"
                " VALUES (?, 'b', ?, 'hash', ?)",
                (user_id, i, now),
            )


# -- help --------------------------------------------------------------------------------------------


def test_user_help(cli: Cli) -> None:
    proc = cli.run("--help")
    assert proc.returncode == 0
    for action in ACTIONS:
        assert action in proc.stdout


@pytest.mark.parametrize("action", ACTIONS)
def test_action_help(cli: Cli, action: str) -> None:
    proc = cli.run(action, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: gateway user " + action)
    assert "--config FILE" in proc.stdout


@pytest.mark.parametrize("action", ["add", "set-password"])
def test_there_is_no_password_argument(cli: Cli, action: str) -> None:
    assert "--password-stdin" in cli.run(action, "--help").stdout
    # Not even as an abbreviation of --password-stdin.
    proc = cli.run(action, "alice", "--password", "x")
    assert proc.returncode == 2
    assert "unrecognized arguments" in proc.stderr


def test_user_without_action_prints_usage(cli: Cli) -> None:
    proc = cli.run()
    assert proc.returncode == 2
    assert "usage: gateway user" in proc.stderr


# -- the life of an account --------------------------------------------------------------------------


def test_account_lifecycle(cli: Cli) -> None:
    out = cli.ok(
        "add", "Alice", "--email", "Alice@Example.com", "--display-name", "Alice Liddell",
        "--role", "dev", "--role", "ops", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert out.startswith("created user alice (id ")
    row = cli.user_row("alice")
    assert row is not None
    argon2.PasswordHasher().verify(row["password_hash"], PASSWORD)
    assert (row["email"], row["roles"], row["display_name"]) == (
        "alice@example.com",
        "dev ops",
        "Alice Liddell",
    )

    cli.ok("add", "bob", "--no-password")
    _give_factors(cli.db_path, row["id"])

    table = cli.ok("list").splitlines()
    assert table[0].split() == [
        "USERNAME",
        "EMAIL",
        "STATUS",
        "PASSWORD",
        "TOTP",
        "WEBAUTHN",
        "CODES",
        "CREATED",
    ]
    assert table[1].split()[:7] == ["alice", "alice@example.com", "active", "set", "1", "1", "3"]
    assert table[2].split()[:7] == ["bob", "-", "active", "none", "0", "0", "0"]
    # Aligned: every column starts at the same offset on every line.
    assert table[0].index("EMAIL") == table[1].index("alice@") == table[2].index("-")

    listed = json.loads(cli.ok("list", "--json"))
    assert [u["username"] for u in listed] == ["alice", "bob"]
    assert listed[0]["totp"] == 1

    shown = cli.ok("show", "ALICE@example.com")
    assert shown.splitlines()[0].split() == ["username:", "alice"]
    for fragment in ("authenticator app", "Phone", "security key", "YubiKey", "3 of 3 left"):
        assert fragment in shown
    assert "ciphertext" not in shown
    detail = json.loads(cli.ok("show", "alice", "--json"))
    assert {f["name"] for f in detail["factors"]} == {"Phone", "YubiKey"}
    assert "ciphertext" not in json.dumps(detail)

    cli.ok("set-password", "alice", "--password-stdin", "--must-change-password", stdin=NEW_PASSWORD + "\n")
    row = cli.user_row("alice")
    assert row is not None
    argon2.PasswordHasher().verify(row["password_hash"], NEW_PASSWORD)
    assert row["must_change_password"] == 1

    proc = cli.run("disable", "alice")
    assert proc.returncode == 0
    # The embedded default shares sessions with the running gateways: ended here (none were open).
    assert proc.stdout.strip() == "disabled user alice; 0 session(s) ended"
    assert "note:" not in proc.stderr
    assert "restart" not in proc.stderr
    assert cli.user_row("alice")["disabled"] == 1  # type: ignore[index]
    cli.ok("enable", "alice")
    assert cli.user_row("alice")["disabled"] == 0  # type: ignore[index]

    out = cli.ok("reset-mfa", "alice")
    assert "1 authenticator app(s), 1 WebAuthn credential(s) and 3 recovery code(s)" in out
    assert "second factors: none" in cli.ok("show", "alice")

    cli.ok("delete", "alice", "--yes")
    assert cli.user_row("alice") is None
    assert cli.run("show", "alice").returncode == 2

    with sqlite3.connect(cli.db_path) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM audit_events ORDER BY id")]
        actors = {a for (a,) in conn.execute("SELECT actor FROM audit_events")}
    assert kinds == [
        "user.created", "user.created", "user.password_changed", "user.disabled", "user.enabled",
        "user.mfa_reset", "user.deleted",
    ]  # fmt: skip
    assert all(a.startswith("cli") for a in actors)


def test_password_on_stdin_keeps_spaces(cli: Cli) -> None:
    padded = "  " + PASSWORD + "  "
    cli.secrets.append(padded)
    cli.ok("add", "carol", "--password-stdin", stdin=padded + "\r\n")
    row = cli.user_row("carol")
    assert row is not None
    argon2.PasswordHasher().verify(row["password_hash"], padded)


# -- errors: one line, exit 2, no traceback ----------------------------------------------------------


def _error(cli: Cli, *args: str, stdin: str | None = None) -> str:
    proc = cli.run(*args, stdin=stdin)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_errors_are_one_line(cli: Cli) -> None:
    cli.ok("add", "alice", "--email", "alice@example.com", "--password-stdin", stdin=PASSWORD)
    assert "already exists" in _error(cli, "add", "ALICE", "--password-stdin", stdin=PASSWORD)
    assert "already used" in _error(
        cli, "add", "bob", "--email", "ALICE@example.com", "--password-stdin", stdin=PASSWORD
    )
    assert "invisible" in _error(cli, "add", "al\u200dice2", "--no-password")
    assert "not allowed" in _error(cli, "add", "a/b", "--no-password")
    weak = "short"
    cli.secrets.append(weak)
    _error(cli, "add", "dave", "--password-stdin", stdin=weak)
    assert cli.user_row("dave") is None
    assert "no password on standard input" in _error(cli, "add", "erin", "--password-stdin", stdin="")
    assert "single line" in _error(cli, "add", "erin", "--password-stdin", stdin="a\nb\n")
    # No terminal to ask at, and no --password-stdin: refuse rather than read a pipe silently.
    assert "--password-stdin" in _error(cli, "add", "erin")
    for action in ("show", "disable", "enable", "reset-mfa", "delete"):
        assert "no user 'mallory'" in _error(cli, action, "mallory")
    assert "no user" in _error(cli, "set-password", "mallory", "--password-stdin", stdin=NEW_PASSWORD)


def test_delete_needs_confirmation(cli: Cli) -> None:
    cli.ok("add", "alice", "--no-password")
    assert "--yes" in _error(cli, "delete", "alice")
    assert cli.user_row("alice") is not None


def test_bad_config_is_exit_2(cli: Cli, tmp_path: Path) -> None:
    cli.config = tmp_path / "missing.yaml"
    proc = cli.run("list")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


# -- at a terminal -----------------------------------------------------------------------------------


def _read_until(fd: int, marker: bytes, seen: bytearray, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {marker!r} in {bytes(seen)!r}"
            seen += chunk


def _at_terminal(cli: Cli, args: list[str], answers: list[tuple[bytes, str]]) -> tuple[int, str]:
    """Run with a pseudo-terminal as stdin; type each answer once its prompt has appeared."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "user", *args, "--config", str(cli.config)],
        cwd=ROOT,
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no controlling terminal: prompts go to stderr, input from the pty
    )
    os.close(slave)
    assert proc.stderr is not None
    assert proc.stdout is not None
    seen = bytearray()
    transcript = bytearray()
    try:
        for prompt, answer in answers:
            # Typing before the prompt would be lost: getpass flushes pending input when it turns echo off.
            _read_until(proc.stderr.fileno(), prompt, seen)
            transcript += seen
            seen.clear()
            os.write(master, answer.encode() + b"\n")
        out = proc.stdout.read().decode()
        rest = (transcript + seen).decode() + proc.stderr.read().decode()
        proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    for secret in cli.secrets:
        assert secret not in out
        assert secret not in rest
    return proc.returncode, out + rest


def test_password_asked_twice_at_the_terminal(cli: Cli) -> None:
    code, out = _at_terminal(
        cli,
        ["add", "alice"],
        [(b"New password: ", PASSWORD), (b"Repeat the password: ", PASSWORD)],
    )
    assert code == 0, out
    row = cli.user_row("alice")
    assert row is not None
    argon2.PasswordHasher().verify(row["password_hash"], PASSWORD)


def test_mismatched_passwords_are_asked_again(cli: Cli) -> None:
    code, out = _at_terminal(
        cli,
        ["add", "alice"],
        [
            (b"New password: ", PASSWORD),
            (b"Repeat the password: ", NEW_PASSWORD),
            (b"New password: ", NEW_PASSWORD),
            (b"Repeat the password: ", NEW_PASSWORD),
        ],
    )
    assert code == 0, out
    assert "not the same" in out
    row = cli.user_row("alice")
    assert row is not None
    argon2.PasswordHasher().verify(row["password_hash"], NEW_PASSWORD)


def test_delete_confirmed_by_typing_the_name(cli: Cli) -> None:
    cli.ok("add", "alice", "--no-password")
    code, out = _at_terminal(cli, ["delete", "ALICE"], [(b"confirm: ", "bob")])
    assert code == 1
    assert "nothing was changed" in out
    assert cli.user_row("alice") is not None
    code, out = _at_terminal(cli, ["delete", "ALICE"], [(b"confirm: ", "alice")])
    assert code == 0, out
    assert cli.user_row("alice") is None


# -- the password policy -----------------------------------------------------------------------------


def test_weak_passwords_exit_2_and_change_nothing(cli: Cli) -> None:
    # The attack run's input, and one built from the account's names; each CLI run is a process
    # start, so the variants of the rules are covered by the unit tests of the policy instead.
    common, personal = "password1234", "jones.acme1999"
    cli.secrets += [common, personal]
    names = ["--email", "dave.jones@acme.example", "--display-name", "Dave Jones"]
    assert "breached" in _error(cli, "add", "dave", *names, "--password-stdin", stdin=common)
    assert cli.user_row("dave") is None

    cli.ok("add", "dave", *names, "--password-stdin", stdin=PASSWORD)
    before = cli.user_row("dave")
    assert before is not None
    message = _error(
        cli, "set-password", "DAVE", "--must-change-password", "--password-stdin", stdin=personal
    )
    assert "built from your username, email address or name" in message
    after = cli.user_row("dave")
    assert after is not None
    assert (after["password_hash"], after["must_change_password"]) == (before["password_hash"], 0)
    with sqlite3.connect(cli.db_path) as conn:
        changes = conn.execute("SELECT count(*) FROM audit_events WHERE kind = 'user.password_changed'")
        assert changes.fetchone() == (0,)


def test_a_refused_password_is_asked_again_at_the_terminal(cli: Cli) -> None:
    cli.secrets.append("alice12345678")
    code, out = _at_terminal(
        cli,
        ["add", "alice"],
        [
            (b"New password: ", "alice12345678"),  # built from the username: refused before the repeat
            (b"New password: ", PASSWORD),
            (b"Repeat the password: ", PASSWORD),
        ],
    )
    assert code == 0, out
    assert "built from your username" in out
    row = cli.user_row("alice")
    assert row is not None
    argon2.PasswordHasher().verify(row["password_hash"], PASSWORD)


def test_delete_erases_the_user_from_the_decision_sample(cli: Cli) -> None:
    # The policy what-if's sample names users in the request shapes it counted: deleting the account
    # deletes those rows too (whole principal names only: alice2 stays).
    cli.ok("add", "alice", "--no-password")
    with sqlite3.connect(cli.db_path) as conn:
        conn.executemany(
            "INSERT INTO decision_samples (bucket, principals, route, method, path, count)"
            " VALUES ('2026-12-02 10:00:00.000000', ?, 'app', 'GET', '/x', 3)",
            [("authenticated user:alice",), ("authenticated user:alice2",), ("group:ops user:alice",)],
        )
    cli.ok("delete", "alice", "--yes")
    with sqlite3.connect(cli.db_path) as conn:
        left = [row[0] for row in conn.execute("SELECT principals FROM decision_samples")]
    assert left == ["authenticated user:alice2"]
