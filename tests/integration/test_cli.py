"""The ``gateway`` command as a user runs it: help, exit codes, config errors, secrets, quickstart.

Every command runs in a real subprocess (``python -m gateway``), so what is checked is exactly what a
terminal shows: exit code, stdout, stderr. User errors exit 2 with a message naming the file, line
and key path, never a traceback, and never the value of a secret.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from gateway.cli import build_parser
from tests.integration.harness import (
    ROOT,
    free_port,
    port_is_open,
    process_group_members,
    run_cli,
    wait_for_port,
    wait_until,
)

VALID = """\
listen: 127.0.0.1:8080
public_url: http://127.0.0.1:8080
data_dir: ./data
routes:
  - name: echo
    host: 127.0.0.1
    upstreams: [http://127.0.0.1:9000]
    public_paths: ["/*"]
    mfa: none
"""

SECRET = "supersecretvalue"


def _write(tmp: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def _subcommands() -> list[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return sorted(actions[0].choices)


# -- help ------------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: gateway" in result.stdout
    for command in _subcommands():
        assert command in result.stdout


def test_no_command_prints_help_and_exits_2() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: gateway" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", _subcommands())
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: gateway {command}" in result.stdout
    assert result.stderr == ""


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("gateway")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: gateway" in result.stdout


def test_unknown_command_exits_2_without_traceback() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


# -- check-config ----------------------------------------------------------------------------------


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert str(path) in result.stdout
    assert "1 route(s)" in result.stdout
    # Checking does not start anything or create the data dir.
    assert not (tmp_path / "data").exists()


def test_check_config_takes_the_config_as_every_command_does(tmp_path: Path) -> None:
    """A first-day run: `check-config --config FILE` was an unrecognised argument with the top-level
    usage, and a plain `check-config` did not fall back to ./gateway.yaml as the README says."""
    path = _write(tmp_path, VALID)
    flagged = run_cli("check-config", "--config", str(path))
    assert flagged.returncode == 0, flagged.stderr
    assert f"{path}: OK" in flagged.stdout
    (tmp_path / "gateway.yaml").write_text(path.read_text())
    plain = run_cli("check-config", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "gateway.yaml: OK" in plain.stdout
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("gateway ")


def test_check_config_accepts_the_shipped_example() -> None:
    example = ROOT / "examples" / "gateway.example.yaml"
    if not example.exists():
        pytest.fail(f"{example} is missing: the README points users at it")
    result = run_cli("check-config", str(example), env={"CORP_SECRET": "x"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


INVALID_CASES = [
    pytest.param(
        VALID.replace("data_dir: ./data\n", "data_dir: ./data\nsesion: {idle_timeout: 10m}\n"),
        {},
        4,
        ['unknown key "sesion"', 'did you mean "session"'],
        id="unknown-key-typo",
    ),
    pytest.param(
        VALID + "    timeouts: {connect: 5 parsecs}\n",
        {},
        10,
        ["routes[0] (name: echo).timeouts.connect", "duration", "5 parsecs"],
        id="bad-duration",
    ),
    pytest.param(
        VALID.replace("    upstreams: [http://127.0.0.1:9000]\n", ""),
        {},
        5,
        ["routes[0] (name: echo)", 'missing required key "upstreams"'],
        id="missing-upstreams",
    ),
    pytest.param(
        VALID + "  - name: echo\n    host: other.test\n    upstreams: [http://127.0.0.1:9001]\n",
        {},
        10,
        ["routes[1] (name: echo).name", "duplicate route name", "line 5"],
        id="duplicate-route-names",
    ),
    pytest.param(
        VALID.replace("    host: 127.0.0.1\n", "    host: [127.0.0.1\n"),
        {},
        None,
        ["invalid YAML"],
        id="yaml-syntax-error",
    ),
    pytest.param(
        VALID
        + "identity_providers:\n"
        + '  - {name: corp, issuer: "https://idp.example.com", client_id: gw, client_secret: "${env:NOPE}"}\n',
        {},
        11,
        ["identity_providers[0] (name: corp).client_secret", "NOPE", "not set"],
        id="env-var-unset",
    ),
    pytest.param(
        VALID.replace("public_url: http://127.0.0.1:8080\n", ""),
        {},
        None,
        ['missing required key "public_url"'],
        id="missing-public-url",
    ),
]


@pytest.mark.parametrize(("text", "env", "line", "expected"), INVALID_CASES)
def test_check_config_reports_key_and_line_without_traceback(
    tmp_path: Path, text: str, env: dict[str, str], line: int | None, expected: list[str]
) -> None:
    path = _write(tmp_path, text)
    result = run_cli("check-config", str(path), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "OK" not in result.stdout
    if line is not None:
        assert f"{path}:{line}:" in result.stderr, result.stderr
    else:
        assert f"{path}:" in result.stderr, result.stderr
    for fragment in expected:
        assert fragment in result.stderr, result.stderr


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("    host: 127.0.0.1\n", "    host: [127.0.0.1\n"))
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    # The unclosed bracket opens on line 6; the report must point at or just after it, not at line 1.
    lines = [int(part.split(":")[1]) for part in result.stderr.split() if part.startswith(f"{path}:")]
    assert lines, result.stderr
    assert all(6 <= n <= 11 for n in lines), result.stderr


def test_check_config_reports_every_problem_at_once(tmp_path: Path) -> None:
    text = (
        VALID.replace("data_dir: ./data\n", "data_dir: ./data\nsesion: {}\n")
        + "    timeouts: {connect: 5x}\n"
    )
    result = run_cli("check-config", str(_write(tmp_path, text)))
    assert result.returncode == 2
    assert "sesion" in result.stderr
    assert "timeouts.connect" in result.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run_cli("check-config", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_invalid_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID + "    timeouts: {connect: 5 parsecs}\n")
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:10:" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()


def test_serve_with_missing_config_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_migrate_with_invalid_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID + "    timeouts: {connect: 5 parsecs}\n")
    result = run_cli("migrate", "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout


# -- secrets ---------------------------------------------------------------------------------------

_OTHER_ERROR = "    timeouts: {connect: 5 parsecs}\n"

SECRET_CASES = [
    pytest.param(
        VALID
        + _OTHER_ERROR
        + "identity_providers:\n"
        + '  - {name: corp, issuer: "https://idp.example.com", client_id: gw, client_secret: "${env:SECRET}"}\n',
        id="client-secret-with-another-error",
    ),
    pytest.param(
        VALID
        + "identity_providers:\n"
        + '  - {name: corp, issuer: "${env:SECRET}", client_id: gw, client_secret: "${env:SECRET}"}\n',
        id="secret-in-invalid-url-field",
    ),
    pytest.param(
        VALID + 'session: {idle_timeout: "${env:SECRET}"}\n',
        id="secret-in-duration-field",
    ),
    pytest.param(
        VALID.replace("http://127.0.0.1:9000", '"http://user:${env:SECRET}@127.0.0.1:9000"'),
        id="secret-in-upstream-url",
    ),
    pytest.param(
        VALID + 'storage: {url: "mysql://gw:${env:SECRET}@db/gw"}\n',
        id="secret-in-database-url",
    ),
    pytest.param(
        VALID + 'state: {redis_url: "http://:${env:SECRET}@redis:6379/0"}\n',
        id="secret-in-redis-url",
    ),
    pytest.param(
        VALID.replace("public_url: http://127.0.0.1:8080", 'public_url: "${env:SECRET}"'),
        id="secret-as-public-url",
    ),
    pytest.param(
        VALID + 'limits: {max_body_size: "${env:SECRET}"}\n',
        id="secret-in-size-field",
    ),
    pytest.param(
        VALID + 'server: {workers: "${env:SECRET}"}\n',
        id="secret-in-integer-field",
    ),
    pytest.param(
        VALID.replace("    mfa: none\n", '    mfa: "${env:SECRET}"\n'),
        id="secret-in-enum-field",
    ),
]


@pytest.mark.parametrize("text", SECRET_CASES)
def test_secret_values_are_never_printed(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    result = run_cli("check-config", str(path), env={"SECRET": SECRET})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert SECRET not in output
    assert "Traceback" not in output
    assert f"{path}:" in result.stderr


@pytest.mark.parametrize("text", SECRET_CASES[:2])
def test_serve_never_prints_secret_values(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    result = run_cli("serve", "--config", str(path), env={"SECRET": SECRET})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert SECRET not in output
    assert "Traceback" not in output
    assert f"{path}:" in result.stderr


def test_secret_from_file_is_never_printed(tmp_path: Path) -> None:
    secret_file = tmp_path / "issuer.txt"
    secret_file.write_text("filesecretvalue\n")
    text = (
        VALID
        + "identity_providers:\n"
        + '  - {name: corp, issuer: "${file:issuer.txt}", client_id: gw, client_secret: "${file:issuer.txt}"}\n'
    )
    result = run_cli("check-config", str(_write(tmp_path, text)))
    assert result.returncode == 2
    assert "filesecretvalue" not in result.stdout + result.stderr
    assert "identity_providers[0] (name: corp).issuer" in result.stderr


# -- quickstart ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [pytest.param(signal.SIGINT, True, id="ctrl-c"), pytest.param(signal.SIGTERM, False, id="sigterm")],
)
def test_quickstart_serves_echo_and_stops_cleanly(tmp_path: Path, signum: int, to_group: bool) -> None:
    data_dir = tmp_path / "qs"
    # The admin port too: by default it is the listen port + 1, which a parallel test may hold.
    port, echo_port, admin_port = free_port(), free_port(), free_port()
    out_path = tmp_path / "quickstart.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "quickstart",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--echo-port",
                str(echo_port),
                "--admin-port",
                str(admin_port),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group: the test can signal it like a terminal does, and clean up all of it.
            start_new_session=True,
        )
    pgid = proc.pid
    try:
        wait_for_port(port, proc=proc, timeout=60)
        health = wait_until(lambda: _get_ok(f"http://127.0.0.1:{port}/.gateway/health"), timeout=60)
        assert health.json() == {"status": "ok"}

        output = out_path.read_text()
        assert f"http://localhost:{port}/" in output
        assert "Next:" in output
        assert f"Console   http://localhost:{admin_port}/" in output
        wait_for_port(admin_port, proc=proc, timeout=60)  # the console listens where it says
        assert f"gateway serve --config {data_dir.resolve() / 'gateway.yaml'}" in output
        # The first admin is bootstrapped with a one-time password shown on this terminal only.
        password = re.search(r"one-time password (\S+)", output)
        assert password is not None, output
        assert password.group(1) not in (data_dir / "gateway.yaml").read_text()

        # The echo app needs sign-in: API clients get 401, browsers the sign-in page.
        headers = {"host": f"localhost:{port}"}
        resp = httpx.get(f"http://127.0.0.1:{port}/", headers=headers, timeout=30)
        assert resp.status_code == 401, resp.text
        assert json.loads(resp.text)["error"] == "authentication-required"
        resp = httpx.get(f"http://127.0.0.1:{port}/", headers={**headers, "accept": "text/html"}, timeout=30)
        assert resp.status_code == 302
        assert resp.headers["location"].startswith(f"http://localhost:{port}/.gateway/login?rd=")

        keyring = data_dir / "keys" / "keyring.json"
        assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "keys").stat().st_mode) == 0o700
        assert json.loads(keyring.read_text())["algorithm"] == "AES-256-GCM"
        assert (data_dir / "gateway.db").is_file()
        # The embedded default needs no server: nothing printed asks for Redis, and the node's shared
        # fast state (sessions for the workers, the admin listener and the CLI) sits in the data dir.
        assert "redis" not in output.lower()
        assert stat.S_IMODE((data_dir / "state.db").stat().st_mode) == 0o600

        if to_group:
            os.killpg(pgid, signum)
        else:
            proc.send_signal(signum)
        code = proc.wait(timeout=60)
        output = out_path.read_text()
        assert code == 0, output
        assert "Traceback" not in output
        assert not port_is_open(port)
        assert not port_is_open(echo_port), "the echo app outlived quickstart"
        try:
            wait_until(
                lambda: not process_group_members(pgid),
                timeout=30,
                what="every quickstart child process gone",
            )
        except TimeoutError as exc:
            left = {pid: _cmdline(pid) for pid in process_group_members(pgid)}
            raise AssertionError(f"processes left behind by quickstart: {left}") from exc
    finally:
        if process_group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_killed_quickstart_leaves_no_echo_app_listening(tmp_path: Path) -> None:
    """SIGKILL gives the quick start no chance to stop its children: the gateway and the console die
    with it (they ask Linux for that), and so must the echo app (an attack run found it listening,
    reparented to init)."""
    port, echo_port, admin_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gateway", "quickstart", "--data-dir", str(tmp_path / "qs"),
            "--listen", f"127.0.0.1:{port}", "--echo-port", str(echo_port), "--admin-port", str(admin_port),
        ],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(echo_port, proc=proc, timeout=60)
        wait_for_port(port, proc=proc, timeout=60)
        proc.kill()
        proc.wait(timeout=30)
        wait_until(
            lambda: not port_is_open(echo_port), timeout=30, what="the echo app to stop with quickstart"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _pids_with(f"127.0.0.1:{echo_port}"):  # whatever outlived it (its own session)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids_with(text: str) -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and text in _cmdline(int(entry.name))
    ]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _get_ok(url: str) -> httpx.Response | None:
    try:
        resp = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return resp if resp.status_code == 200 else None


def test_quickstart_keeps_existing_keyring(tmp_path: Path) -> None:
    from gateway.cli.quickstart import write_quickstart_config

    data_dir = tmp_path / "qs"
    old_umask = os.umask(0o022)
    try:
        config = write_quickstart_config(data_dir, "127.0.0.1:8080", 9000)
    finally:
        os.umask(old_umask)
    # Its config and data are the user's alone (outside review: the directory was 0755).
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    keyring = data_dir / "keys" / "keyring.json"
    first = keyring.read_bytes()
    write_quickstart_config(data_dir, "127.0.0.1:8080", 9000)
    assert keyring.read_bytes() == first
    # The written config is valid as written.
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_database_password_is_never_printed(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://gw:literalpassword@127.0.0.1:1/gw"
    path = _write(
        tmp_path, VALID.replace("data_dir: ./data\n", f'data_dir: ./data\nstorage: {{url: "{url}"}}\n')
    )
    for args in (["migrate", "--config", str(path)], ["serve", "--config", str(path)]):
        result = run_cli(*args)
        output = result.stdout + result.stderr
        # Nothing listens on port 1: a runtime failure (1), reported without the password or a stack.
        assert result.returncode == 1, output
        assert "literalpassword" not in output
        assert "Traceback" not in output
        assert "cannot" in result.stderr
