"""``gateway serve``, ``admin serve``, ``check-config``, ``migrate`` and ``healthcheck``: run and check a node.

gateway serve --config FILE
gateway admin serve --config FILE
gateway check-config [FILE | --config FILE]   ($GATEWAY_CONFIG, else ./gateway.yaml, when omitted)
gateway migrate --config FILE
gateway healthcheck --config FILE [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.cli.arguments import seconds
from gateway.cli.harness import (
    EXIT_FAILURE,
    EXIT_OK,
    SubParsers,
    config_arg,
    load_config,
    load_keyring,
    run,
    storage_url,
)
from gateway.store.private import private_dir

__all__ = ["register"]


def _check_config(args: argparse.Namespace) -> int:
    from gateway.settings.loader import load_settings

    path: Path = args.file if args.file is not None else args.config
    settings = load_settings(path)
    print(
        f"{path}: OK ({len(settings.routes)} route(s), "
        f"{len(settings.identity_providers)} identity provider(s), listen {settings.listen})"
    )
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.store.fast import refuse_unverified_tls
    from gateway.store.migrate import ensure_schema

    settings = load_config(args)
    # Check the schema once, before any worker starts, so an outdated database is one clear message
    # (run `gateway migrate`) instead of every worker failing its start-up.
    private_dir(Path(settings.data_dir))
    url = storage_url(settings)
    run(ensure_schema(url, auto=url.startswith("sqlite")))
    # A rediss:// server whose certificate is refused: one clear message, not a 503 on every request.
    run(refuse_unverified_tls(settings))
    # Likewise the keyring: created here for the embedded default, required to exist otherwise
    # (replicas must share one; a replica inventing its own would make the others' secrets unreadable).
    load_keyring(settings)
    serve(args.config, settings)
    return EXIT_OK


def _admin_serve(args: argparse.Namespace) -> int:
    from admin.server import serve_admin
    from gateway.store.fast import refuse_unverified_tls

    settings = load_config(args)
    run(refuse_unverified_tls(settings))
    serve_admin(args.config, settings)
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    from gateway.store.migrate import upgrade

    settings = load_config(args)
    url = storage_url(settings)
    private_dir(Path(settings.data_dir))
    print(f"migrating {_redact_url(url)} …", flush=True)
    revision = run(upgrade(url, quiet=True))
    print(f"schema is at revision {revision}")
    return EXIT_OK


def _healthcheck(args: argparse.Namespace) -> int:
    import ssl
    import urllib.request

    from gateway.settings.listen import parse_listen

    settings = load_config(args)
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

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ValueError, TypeError):  # the config check refuses such URLs; never echo one here
        return url.partition("://")[0] + "://***"


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``serve``, ``admin serve``, ``check-config``, ``migrate`` and ``healthcheck``."""
    p = sub.add_parser("serve", help="run the gateway", description="Run the gateway with a config file.")
    config_arg(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("admin", help="the admin API", description="Serve the admin API and console.")
    admin_sub = p.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    p = admin_sub.add_parser(
        "serve",
        help="run only the admin listener (admin.listen)",
        description="Serve the admin API on admin.listen (`gateway serve` already starts it).",
    )
    config_arg(p)
    p.set_defaults(func=_admin_serve)

    p = sub.add_parser(
        "check-config",
        help="validate a config file without starting",
        description="Validate a configuration file and report every problem with its line.",
    )
    p.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        nargs="?",
        default=None,
        help="the YAML configuration file (or --config, as every other command takes it)",
    )
    config_arg(p)
    p.set_defaults(func=_check_config)

    p = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Apply database migrations (needed for PostgreSQL; SQLite is migrated at start-up).",
    )
    config_arg(p)
    p.set_defaults(func=_migrate)

    p = sub.add_parser(
        "healthcheck",
        help="probe this gateway's /.gateway/health (for container HEALTHCHECK)",
        description="Exit 0 if the gateway configured in FILE answers /.gateway/health on its listen address.",
    )
    config_arg(p)
    p.add_argument("--timeout", type=seconds(600), default=3.0, metavar="SECONDS")
    p.set_defaults(func=_healthcheck)
