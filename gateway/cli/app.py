"""The ``gateway`` command.

Every sub-command has ``--help``. Exit codes: 0 success, 1 runtime failure, 2 invalid input or
configuration. User errors print one clear message and never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.errors import ConfigError, GatewayError
from gateway.settings.loader import load_settings

__all__ = ["main"]

from gateway.cli.harness import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, config_arg


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    print(
        f"{args.file}: OK ({len(settings.routes)} route(s), "
        f"{len(settings.identity_providers)} identity provider(s), listen {settings.listen})"
    )
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.runtime import storage_url
    from gateway.server import serve
    from gateway.store.migrate import ensure_schema

    settings = load_settings(args.config)
    # Check the schema once, before any worker starts, so an outdated database is one clear message
    # (run `gateway migrate`) instead of every worker failing its start-up.
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    url = storage_url(settings)
    asyncio.run(ensure_schema(url, auto=url.startswith("sqlite")))
    # Likewise the keyring: created here for the embedded default, required to exist otherwise
    # (replicas must share one; a replica inventing its own would make the others' secrets unreadable).
    from gateway.crypto.keyring import Keyring
    from gateway.identity.services import keyring_path

    Keyring.load_or_create(keyring_path(settings), allow_create=url.startswith("sqlite"))
    serve(args.config, settings)
    return EXIT_OK


def _cmd_admin_serve(args: argparse.Namespace) -> int:
    from admin.server import serve_admin

    serve_admin(args.config, load_settings(args.config))
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.runtime import storage_url
    from gateway.store.migrate import upgrade

    settings = load_settings(args.config)
    url = storage_url(settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    print(f"migrating {_redact_url(url)} …", flush=True)
    revision = asyncio.run(upgrade(url, quiet=True))
    print(f"schema is at revision {revision}")
    return EXIT_OK


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from gateway.cli.quickstart import run_quickstart

    return run_quickstart(data_dir=args.data_dir, listen=args.listen, echo_port=args.echo_port)


def _cmd_echo(args: argparse.Namespace) -> int:
    from gateway.cli.quickstart import run_echo

    run_echo(args.listen)
    return EXIT_OK


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    import ssl
    import urllib.request

    from gateway.settings.listen import parse_listen

    settings = load_settings(args.config)
    host, port = parse_listen(settings.listen)
    # The gateway probes itself over loopback; a wildcard bind address is reached through it.
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        host = "127.0.0.1" if host != "::" else "::1"
    scheme = "https" if settings.tls else "http"
    context = ssl.create_default_context()
    # Loopback to ourselves: the certificate is issued for the public name, not for 127.0.0.1.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with urllib.request.urlopen(  # noqa: S310 - fixed scheme and loopback target
            f"{scheme}://{netloc}/.gateway/health", timeout=args.timeout, context=context
        ) as resp:
            ok = resp.status == 200
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print("healthy" if ok else "unhealthy")
    return EXIT_OK if ok else EXIT_FAILURE


def _redact_url(url: str) -> str:
    # Database URLs may carry a password; it must never reach a terminal or log.
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Identity-aware access gateway: a reverse proxy that signs people in and decides "
        "every request by policy.",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway", description="Run the gateway with a config file.")
    config_arg(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("admin", help="the admin API", description="Serve the admin API and console.")
    admin_sub = p.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    p = admin_sub.add_parser(
        "serve",
        help="run only the admin listener (admin.listen)",
        description="Serve the admin API on admin.listen (`gateway serve` already starts it).",
    )
    config_arg(p)
    p.set_defaults(func=_cmd_admin_serve)

    p = sub.add_parser(
        "check-config",
        help="validate a config file without starting",
        description="Validate a configuration file and report every problem with its line.",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the YAML configuration file")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Apply database migrations (needed for PostgreSQL; SQLite is migrated at start-up).",
    )
    config_arg(p)
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser(
        "healthcheck",
        help="probe this gateway's /.gateway/health (for container HEALTHCHECK)",
        description="Exit 0 if the gateway configured in FILE answers /.gateway/health on its listen address.",
    )
    config_arg(p)
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    p.set_defaults(func=_cmd_healthcheck)

    p = sub.add_parser(
        "quickstart",
        help="try the gateway locally in front of a bundled echo app",
        description="Create a data dir with generated keys and a config, start the bundled echo app and "
        "the gateway in front of it (the embedded default: SQLite files in the data dir, no server to "
        "install), and print what to do next.",
    )
    p.add_argument("--data-dir", type=Path, default=Path("gateway-data"), metavar="DIR")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    p.add_argument(
        "--echo-port", type=int, default=0, metavar="PORT", help="echo app port (default: a free one)"
    )
    p.set_defaults(func=_cmd_quickstart)

    from gateway.cli.keys import register as register_keys

    register_keys(sub)

    from gateway.cli.user import add_user_commands

    add_user_commands(sub)

    from gateway.cli.policy import register as register_policy

    register_policy(sub)

    from gateway.cli.audit import register as register_audit

    register_audit(sub)

    from gateway.cli.incident import add_incident_commands

    add_incident_commands(sub)

    p = sub.add_parser(
        "echo",
        help="run only the bundled echo app",
        description="Serve the echo app, which shows the request line and headers it receives.",
    )
    p.add_argument("--listen", default="127.0.0.1:9000", metavar="HOST:PORT")
    p.set_defaults(func=_cmd_echo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Third-party chatter (migration plugins, connection pools) is noise at info level.
    for noisy in ("alembic", "sqlalchemy", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except ConfigError as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
