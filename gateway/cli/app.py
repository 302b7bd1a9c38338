"""The ``gateway`` command: the parser of every command group, and the entry point.

Every sub-command has ``--help``. Exit codes: 0 success, 1 runtime failure, 2 invalid input or
configuration. User errors print one clear message and never a traceback (``harness.execute``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gateway.cli import (
    audit,
    backup,
    dr,
    incident,
    keys,
    lockdown,
    machine,
    notify,
    pgbackrest,
    policy,
    privacy,
    quickstart,
    retention,
    serve,
    user,
)
from gateway.cli.harness import EXIT_USAGE, Action, execute
from gateway.cli.terminal import EscapingStream
from gateway.version import package_version

__all__ = ["build_parser", "main"]

# The commands that run a server (quickstart runs the gateway in its own process with serve).
_SERVING = frozenset({"serve", "admin", "quickstart"})


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway`` parser: every command group registers its own sub-commands."""
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Identity-aware access gateway: a reverse proxy that signs people in and decides "
        "every request by policy.",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="what the command logs (before the command: gateway --log-level warning user list)",
    )
    parser.add_argument("--version", action="version", version=f"gateway {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # The order of the listing in `gateway --help`.
    serve.register(sub)
    quickstart.register(sub)
    keys.register(sub)
    user.register(sub)
    policy.register(sub)
    audit.register(sub)
    incident.register(sub)
    lockdown.register(sub)
    machine.register(sub)
    notify.register(sub)
    privacy.register(sub)
    retention.register(sub)
    pgbackrest.register(sub)
    backup.register(sub)
    dr.register(sub)
    quickstart.register_echo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    # Before anything prints: text a client chose (evidence, audit details) must not drive the terminal.
    if not isinstance(sys.stdout, EscapingStream):
        sys.stdout = EscapingStream(sys.stdout)
    if not isinstance(sys.stderr, EscapingStream):
        sys.stderr = EscapingStream(sys.stderr)
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
    if args.command not in _SERVING and args.log_level != "debug":
        # A command says what it did in a sentence; the audit record it stored (`gateway audit`
        # shows it) repeated on stderr as an INFO line with its JSON was noise. `serve` keeps it:
        # a server's log is where an operator follows what happens.
        logging.getLogger("gateway.audit").setLevel(logging.WARNING)
    func: Action | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    return execute(func, args)
