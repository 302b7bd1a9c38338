"""``gateway quickstart``: the gateway on the embedded default in front of the bundled echo app.

    gateway quickstart [--data-dir DIR] [--listen HOST:PORT] [--echo-port PORT]
    gateway echo [--listen HOST:PORT]

It writes a data dir (a generated AES-256 keyring, mode 0600, and a commented config), starts the
echo app as a child process and the gateway in the foreground, and prints what to try next. Running
it again reuses the data dir and its keys. ``gateway echo`` runs only the echo app.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.arguments import listen_address
from gateway.cli.harness import EXIT_FAILURE, EXIT_OK, SubParsers, open_store, run
from gateway.settings.listen import parse_listen
from gateway.store.private import private_dir

if TYPE_CHECKING:
    from gateway.settings.schema import Settings

__all__ = ["register", "register_echo", "run_echo", "run_quickstart", "write_quickstart_config"]

_CONFIG = """\
# Quick-start configuration written by `gateway quickstart`. Edit it and run
#   gateway serve --config {config}
# Reference: the README, section Configuration reference.
listen: {listen}
# localhost, not 127.0.0.1: passkeys (WebAuthn) need a host name, not an IP address.
public_url: http://{public_host}:{port}
data_dir: {data_dir}
storage: {{url: null}}          # null = SQLite file in data_dir (one node); postgresql+asyncpg://… for replicas
state: {{redis_url: null}}      # null = data_dir/state.db, shared by every process on this node; redis://… for replicas
trusted_proxies: []
session:
  insecure_cookies: true       # plain HTTP on localhost only; never in production
policy:
  # Imported into the database at the first start; afterwards change it with
  #   gateway policy import {data_dir}/policy.csv --config {config} --reason "…"
  file: {data_dir}/policy.csv
admin:
  listen: 127.0.0.1:{admin_port}   # the admin API (policy editing) on its own listener
routes:
  - name: echo
    host: {public_host}
    path: /
    upstreams: [http://127.0.0.1:{echo_port}]
    # Sign-in and a second factor (authenticator app or passkey) are required for the echo app.
    mfa: required
    public_paths: ["/favicon.ico"]
    response_headers: {{X-Frame-Options: DENY}}
"""

_POLICY = """\
# Quick-start access policy (casbin CSV: see policies/policy.csv in the repository for a full example).
# Request = (principal, route, path, method). Everyone signed in may read the echo app; admins may
# do anything there. Nothing else is allowed: deny by default.
p, authenticated, echo, /*, GET|HEAD, allow
p, admin, echo, /*, *, allow
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_keyring(path: Path) -> None:
    if path.exists():
        return
    key_id = "k" + secrets.token_hex(4)
    keyring = {
        "active": key_id,
        "keys": {key_id: base64.b64encode(secrets.token_bytes(32)).decode()},
        "algorithm": "AES-256-GCM",
    }
    # Created with 0600 from the start: there is no moment when another user could read the key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keyring, fh, indent=2)


def write_quickstart_config(data_dir: Path, listen: str, echo_port: int, admin_port: int = 0) -> Path:
    """Create the data dir, keyring and config (kept if they exist). Returns the config path.

    ``admin_port`` 0 means the ``listen`` port + 1.
    """
    data_dir = data_dir.resolve()
    private_dir(data_dir)  # the quick start's own directory: its config and data are nobody else's
    private_dir(data_dir / "keys")
    os.chmod(data_dir / "keys", 0o700)
    _write_keyring(data_dir / "keys" / "keyring.json")
    policy = data_dir / "policy.csv"
    if not policy.exists():
        policy.write_text(_POLICY)
    config = data_dir / "gateway.yaml"
    host, port = parse_listen(listen)
    public_host = "localhost" if host in ("127.0.0.1", "::1", "0.0.0.0", "::", "") else host  # noqa: S104
    config.write_text(
        _CONFIG.format(
            config=config,
            listen=listen,
            data_dir=data_dir,
            public_host=public_host,
            port=port,
            echo_port=echo_port,
            admin_port=admin_port or port + 1,
        )
    )
    return config


def _wait_for_port(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def run_quickstart(*, data_dir: Path, listen: str, echo_port: int = 0, admin_port: int = 0) -> int:
    """Start echo app + gateway; block until interrupted. Returns the exit code."""
    from gateway.server import serve
    from gateway.settings.loader import load_settings

    echo_port = echo_port or _free_port()
    print(f"[1/3] preparing {data_dir} (keys, config) …", flush=True)
    config = write_quickstart_config(data_dir, listen, echo_port, admin_port)
    settings = load_settings(config)
    admin_note = run(bootstrap_admin(settings))
    print(f"[2/3] starting the echo app on 127.0.0.1:{echo_port} …", flush=True)
    echo = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [
            sys.executable,
            "-m",
            "gateway",
            "--log-level",
            "warning",
            "echo",
            "--listen",
            f"127.0.0.1:{echo_port}",
        ],
        # Its own process group, stopped as a whole by _stop_group (a terminal's Ctrl-C does not
        # reach it directly, so it is never signalled twice while stopping).
        start_new_session=True,
        # ... and it stops when this process dies without stopping it (SIGKILL left it listening).
        env={**os.environ, _PARENT_ENV: str(os.getpid())},
    )
    try:
        if not _wait_for_port(echo_port):
            print("error: the echo app did not start; see the messages above", file=sys.stderr)
            return EXIT_FAILURE
        base = settings.public_url.rstrip("/")
        console_port = parse_listen(settings.admin.listen or "")[1]  # the config always sets it
        print(
            f"[3/3] starting the gateway on http://{listen}\n\n"
            f"  Open      {base}/            (the echo app shows what the gateway passed on)\n"
            f"  Sign in   {admin_note}\n"
            f"  Account   {base}/.gateway/account   (second factors, recovery codes, sessions)\n"
            f"  Health    {base}/.gateway/health\n"
            f"  Console   {base.rsplit(':', 1)[0]}:{console_port}/   (admin console and API: sign in here first, with a second factor)\n"
            f"  Config    {config}\n\n"
            "  Next: edit the config (add your own routes), then run\n"
            f"        gateway serve --config {config}\n"
            "  Stop with Ctrl-C.\n",
            flush=True,
        )
        serve(config, settings)
    finally:
        _stop_group(echo)
    return EXIT_OK


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    # The echo app runs in its own process group (its granian master and worker): stop them together,
    # so a worker is never orphaned when the master exits first.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


async def bootstrap_admin(settings: Settings) -> str:
    """Create the first admin with a one-time password (must be changed at first sign-in).

    Returns the line to print: the credentials the first time, a reminder afterwards. The password
    is shown once, on this terminal only; it is never written to a file or a log.
    """
    from gateway.identity.passwords import one_time_password
    from gateway.services import IdentityServices

    # The quick-start config is the embedded default: the schema upgrades itself, as in `serve`.
    async with open_store(settings, fast=True) as store:
        identity = IdentityServices.build(settings, store.db, store.fast)
        if await identity.accounts.list(limit=1, offset=0):
            return "with your admin account (created on the first quick start)"
        password = one_time_password()
        await identity.accounts.create(
            username="admin",
            password=password,
            roles=("admin",),
            must_change_password=True,
            actor="system:quickstart",
        )
        return f"user admin, one-time password {password}  (you choose a new one, then add a second factor)"


# The quick start's pid, handed to the echo app it starts.
_PARENT_ENV = "GATEWAY_QUICKSTART_PARENT"


def run_echo(listen: str) -> None:
    """Serve only the echo app (granian, one worker)."""
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    from gateway.lifetime import die_with

    host, port = parse_listen(listen)
    parent = os.environ.pop(_PARENT_ENV, None)
    if parent is not None and parent.isdigit():
        die_with(int(parent))  # started by the quick start: never outlive it
    Server("gateway.echo:app", address=host, port=port, interface=Interfaces.ASGI, loop=Loops.uvloop).serve()


# -- the parser ------------------------------------------------------------------------------------


def _quickstart(args: argparse.Namespace) -> int:
    return run_quickstart(
        data_dir=args.data_dir, listen=args.listen, echo_port=args.echo_port, admin_port=args.admin_port
    )


def _echo(args: argparse.Namespace) -> int:
    run_echo(args.listen)
    return EXIT_OK


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway quickstart``."""
    p = sub.add_parser(
        "quickstart",
        help="try the gateway locally in front of a bundled echo app",
        description="Create a data dir with generated keys and a config, start the bundled echo app and "
        "the gateway in front of it (the embedded default: SQLite files in the data dir, no server to "
        "install), and print what to do next.",
    )
    p.add_argument("--data-dir", type=Path, default=Path("gateway-data"), metavar="DIR")
    p.add_argument("--listen", type=listen_address, default="127.0.0.1:8080", metavar="HOST:PORT")
    p.add_argument(
        "--echo-port", type=int, default=0, metavar="PORT", help="echo app port (default: a free one)"
    )
    p.add_argument(
        "--admin-port",
        type=int,
        default=0,
        metavar="PORT",
        help="admin console port on 127.0.0.1 (default: the --listen port + 1)",
    )
    p.set_defaults(func=_quickstart)


def register_echo(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway echo`` (last in the listing: it is a helper of the quick start)."""
    p = sub.add_parser(
        "echo",
        help="run only the bundled echo app",
        description="Serve the echo app, which shows the request line and headers it receives.",
    )
    p.add_argument("--listen", type=listen_address, default="127.0.0.1:9000", metavar="HOST:PORT")
    p.set_defaults(func=_echo)
