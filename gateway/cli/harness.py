"""What every ``gateway`` command runs in: options, exit codes, errors, the store and the one run.

A command module builds its parser with :func:`command_group` and :func:`config_arg`; its actions only
say what to do. Input the operator must change is a :class:`UserError` (exit 2, one line on stderr
that says what to do), a command that ran and could not do what was asked is :class:`Failed` (exit
1); :func:`execute` turns these and the gateway's own errors into the exit code, so no command prints
a traceback for them. An action that needs the database or the fast state opens them with
:func:`open_store` inside a coroutine it hands to :func:`run`, the CLI's one ``asyncio.run``.

Heavy imports (SQLAlchemy, cryptography, the settings loader) happen when an action runs, not when the
parser is built: `gateway --help` must not pay for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from gateway.cli.announce import Unannounced
from gateway.errors import ConfigError, GatewayError
from gateway.store.private import private_dir

if TYPE_CHECKING:
    from gateway.audit.trail import AuditLog
    from gateway.backup.jobs import Made
    from gateway.crypto.keyring import Keyring
    from gateway.identity.ledger import Lineage
    from gateway.observe.sinks import SinkHub
    from gateway.settings.schema import Settings
    from gateway.store.db import Database
    from gateway.store.fast import FastState

__all__ = [
    "CONFIG_ENV",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_UNANNOUNCED",
    "EXIT_USAGE",
    "Action",
    "Failed",
    "Store",
    "SubParsers",
    "UserError",
    "backup_and_keyring",
    "command_group",
    "config_arg",
    "config_from_environment",
    "execute",
    "load_config",
    "load_keyring",
    "node_lineage",
    "note_roles_without_rules",
    "open_store",
    "operator",
    "record_event",
    "run",
    "security_sinks",
    "storage_url",
    "user_errors",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# The config file every command uses when --config is not given (see config_arg).
CONFIG_ENV = "GATEWAY_CONFIG"
# The change is stored, but the running gateways were not told (they find it by polling, within a second).
EXIT_UNANNOUNCED = 3

SubParsers = argparse._SubParsersAction
# What every action sets as ``func``: the parsed arguments in, the exit code out.
Action = Callable[[argparse.Namespace], int]

_T = TypeVar("_T")


# -- errors and exit codes -------------------------------------------------------------------------------


class UserError(Exception):
    """The operator's input cannot be used as given: exit 2 with ``error: <message>`` on stderr.

    The message names what is wrong and what to do instead (the file and line, the command to run).
    """


class Failed(Exception):
    """The command ran and could not do what was asked: exit 1.

    The message, if any, is printed to stderr as it is; a command that already printed its findings
    raises it without one.
    """


@contextmanager
def user_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Report these errors of the domain (an unknown account, a malformed policy) as the operator's.

    A :class:`GatewayError` is reported by its ``detail``, anything else by its text.
    """
    try:
        yield
    except kinds as exc:
        raise UserError(exc.detail if isinstance(exc, GatewayError) else str(exc)) from None


def run(work: Coroutine[Any, Any, _T], *, errors: tuple[type[Exception], ...] = ()) -> _T:
    """Run a command's coroutine to its end: the CLI's one event loop.

    Args:
        work: What the command does (it opens what it needs with :func:`open_store`).
        errors: Errors of the domain that are the operator's input (see :func:`user_errors`).
    """
    with user_errors(*errors):
        return asyncio.run(work)


def execute(action: Action, args: argparse.Namespace) -> int:
    """Run one action and map what it raises to the exit code and one message, never a traceback."""
    try:
        return action(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failed as exc:
        if str(exc):
            print(exc, file=sys.stderr)
        return EXIT_FAILURE
    except Unannounced as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNANNOUNCED
    except ConfigError as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


# -- the parser --------------------------------------------------------------------------------------------


def command_group(
    sub: SubParsers[argparse.ArgumentParser], name: str, *, help: str, description: str
) -> SubParsers[argparse.ArgumentParser]:
    """Add ``gateway NAME ACTION …``; ``gateway NAME`` alone prints its help and exits with 2.

    Returns:
        The group's sub-parsers, to add the actions to (each sets ``func``).
    """
    group = sub.add_parser(name, help=help, description=description)

    def usage(_args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return EXIT_USAGE

    group.set_defaults(func=usage)
    return group.add_subparsers(dest=f"{name}_action", metavar="ACTION")


def config_from_environment() -> Path | None:
    """The config file named by ``$GATEWAY_CONFIG``, or None when it is unset or empty.

    Containers, units and shells set it once, so no command needs ``--config`` repeated (``--config``
    still wins). Read when the parser is built, in the process that runs the command.
    """
    named = os.environ.get(CONFIG_ENV, "")
    return Path(named) if named else None


def config_arg(parser: argparse.ArgumentParser, *, required: bool = True, help_suffix: str = "") -> None:
    """The ``--config`` option every command shares.

    Without it: ``$GATEWAY_CONFIG``, then ``./gateway.yaml`` (an optional ``--config`` stays unset).
    """
    from_env = config_from_environment()
    if required:
        default: Path | None = from_env or Path("gateway.yaml")
        default_note = f" (default: ${CONFIG_ENV}, else ./gateway.yaml)"
    else:
        default = from_env
        default_note = f" (default: ${CONFIG_ENV} when set)"
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=default,
        metavar="FILE",
        help="path to the YAML configuration file" + default_note + help_suffix,
    )


# -- what commands load ------------------------------------------------------------------------------------


async def confirm(prompt: str, expected: str) -> None:
    """Ask at the terminal to type ``expected`` (``prompt`` says what); anything else changes nothing.

    Raises:
        UserError: No terminal to ask at (pass ``--yes``).
        Failed: Something else was typed.
    """
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for confirmation: pass --yes to confirm")
    # The prompt goes to stderr, like getpass's: stdout stays clean for whatever a script reads.
    print(prompt, end="", file=sys.stderr, flush=True)
    answer = await asyncio.to_thread(sys.stdin.readline)
    if answer.strip() != expected:
        raise Failed("not confirmed; nothing was changed")


def operator() -> str:
    """Who runs the command, for the audit trail: ``cli:<OS user>``, or ``cli`` when the OS cannot tell."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def load_config(args: argparse.Namespace) -> Settings:
    """The settings of ``--config``; an invalid file is a :class:`ConfigError` (exit 2, with its line)."""
    from gateway.settings.loader import load_settings

    config: Path = args.config
    return load_settings(config)


def storage_url(settings: Settings) -> str:
    """The database ``serve`` opens (:func:`gateway.store.db.configured_url`).

    Imported when called: commands that never touch the database skip loading its drivers.
    """
    from gateway.store.db import configured_url

    return configured_url(settings)


def load_keyring(settings: Settings, *, may_create: bool = True) -> Keyring:
    """The node's keyring. Like ``serve``, only the embedded default may create it: replicas share one."""
    from gateway.crypto.keyring import Keyring, keyring_path

    embedded = storage_url(settings).startswith("sqlite")
    return Keyring.load_or_create(keyring_path(settings), allow_create=may_create and embedded)


@dataclass(frozen=True, slots=True)
class Store:
    """What :func:`open_store` opened for one command; closed when its ``async with`` ends."""

    settings: Settings
    db: Database
    # Only what the command asked for: None otherwise.
    keyring: Keyring | None
    state: FastState | None
    # The security-event sinks a command's audit records go to, as the running gateways' do.
    sinks: SinkHub | None = None

    @property
    def fast(self) -> FastState:
        """The fast state (opened with ``fast=True``)."""
        if self.state is None:
            raise RuntimeError("the store was opened without the fast state (open_store(fast=True))")
        return self.state

    def audit(self, keyring: Keyring | None = None) -> AuditLog:
        """The audit trail, keyed with ``keyring`` or the one loaded (``keyring=True``); what it records
        goes to the security-event sinks too (an attack run's lockdown lift, unblock and re-enable from
        the CLI never reached the SOC's feed)."""
        from gateway.audit.trail import AuditLog
        from gateway.clock import SYSTEM_CLOCK
        from gateway.observe.access import audit_listener

        log = AuditLog(self.db, clock=SYSTEM_CLOCK, keyring=keyring or self.keyring)
        if self.sinks is not None:
            log.listeners.append(audit_listener(self.sinks))
        return log


@asynccontextmanager
async def open_store(
    settings: Settings, *, fast: bool = False, keyring: bool = False
) -> AsyncIterator[Store]:
    """Open the database (and the fast state, and load the keyring, when asked) as ``serve`` does.

    Closed on exit, also when the command fails.

    Args:
        settings: The command's configuration.
        fast: Also open the fast state the running gateways use (Redis, or the node's shared file in
            ``data_dir``), so what the command ends or lifts ends or lifts there too, announced on the
            same broadcast.
        keyring: Also load the keyring (created only for the embedded default), for commands that
            write to the keyed audit trail.
    """
    from gateway.cli.announce import AnnouncementWatch
    from gateway.store.db import Database
    from gateway.store.fast import open_configured_state
    from gateway.store.migrate import ensure_schema

    url = storage_url(settings)
    embedded = url.startswith("sqlite")
    if embedded or fast:
        # The SQLite files (the database, the node's shared state) live in data_dir, which may not
        # exist yet on a fresh install.
        await asyncio.to_thread(private_dir, Path(settings.data_dir))
    # Same policy as `serve`: SQLite upgrades itself, PostgreSQL only through `gateway migrate`.
    await ensure_schema(url, auto=embedded)
    # The audit chain is keyed: like `serve`, only the embedded default may create the keyring.
    keys = load_keyring(settings) if keyring else None
    db = Database.open(url, pool_size=2)
    try:
        watch = AnnouncementWatch(open_configured_state(settings)) if fast else None
        sinks = await security_sinks(settings)
        try:
            yield Store(settings, db, keys, cast("FastState | None", watch), sinks)
        finally:
            if sinks is not None:
                await sinks.close()  # delivers what the command recorded (at most flush_timeout)
            if watch is not None:
                await watch.close()
        # Only a command that ran to its end: its change is stored, and the running gateways should know.
        unannounced = watch.verdict(settings) if watch is not None else None
        if unannounced is not None:
            raise unannounced
    finally:
        await db.close()


async def security_sinks(settings: Settings) -> SinkHub | None:
    """The sinks of ``logging.sinks`` a command's security events go to, started; None when there are
    none. Not ``stdout`` ones: that is the serving processes' stream, and a command's output is its
    own (``--json`` must stay one document)."""
    from gateway.observe.sinks import SinkHub

    if not settings.logging.security_events:
        return None
    hub = SinkHub.from_settings(settings.logging, command=True)
    if not hub.sinks:
        return None
    await hub.start()
    return hub


def backup_and_keyring(settings: Settings, directory: Path, ref: str | None) -> tuple[Path, Keyring]:
    """A backup given by id (in ``directory``) or path, the newest this deployment's keyring signed
    without one (an attack run planted an unsigned manifest dated 2099); and that keyring. A missing
    backup is said before a missing keyring: on a node with neither, the backup is what to make first.

    Raises:
        UserError: No such backup, or none at all.
    """
    from gateway.backup.sets import find_backup

    try:
        path = find_backup(directory, ref)
        keyring = load_keyring(settings, may_create=False)
        if ref is None:
            path = find_backup(directory, None, signed_with=keyring)
    except LookupError as exc:
        raise UserError(str(exc)) from None
    return path, keyring


async def node_lineage(settings: Settings) -> Lineage | None:
    """The account-ledger lineage of this node's database, None when it has none (an embedded database
    whose file is gone: a lost disk) or cannot be read (damaged: what a restore is for), said on
    stderr: a restored database then keeps the lineage its backup carries."""
    from gateway.backup.snapshot import sqlite_path
    from gateway.identity.ledger import stored_lineage
    from gateway.store.db import Database

    url = storage_url(settings)
    with contextlib.suppress(ValueError):  # PostgreSQL: no file to look for
        if not sqlite_path(url).is_file():
            print(
                "  the node's database is missing: the restored one keeps the lineage its backup carries, "
                "so if this node was a copy adopted as the deployment, what was done on it since is not "
                "made again; do it again by hand (the old trail or the sinks say what)",
                file=sys.stderr,
            )
            return None
    db = Database.open(url, pool_size=1)
    try:
        return await stored_lineage(db)
    except Exception as exc:  # noqa: BLE001 - a damaged database is what a restore is for
        print(
            f"  cannot read the node's lineage from its database ({exc}): the restored one keeps the "
            "backup's, and ledger lines a copy adopted since wrote under its own are not read",
            file=sys.stderr,
        )
        return None
    finally:
        await db.close()


async def note_roles_without_rules(
    db: Database, fast: FastState, audit: AuditLog, roles: Sequence[str]
) -> None:
    """A note on stderr for each of ``roles`` that reaches no ``p`` rule's subject, directly or through
    the policy's ``g`` lines: a note, not an error (the rule may be added next; a typo is the other
    reason), after the account that holds them was stored."""
    if not roles:
        return
    from gateway.authz.index import PolicyIndex
    from gateway.authz.store import PolicyStore
    from gateway.clock import SYSTEM_CLOCK

    rules = (await PolicyStore(db, fast, audit, SYSTEM_CLOCK).current()).rules
    index = PolicyIndex.roles_only(rules)
    subjects = {rule.sub for rule in rules.policies}
    for role in roles:
        if not index.roles_of(role) & subjects:
            print(
                f"note: no policy rule names the role {role!r} (nor a role it reaches): the account gets "
                "nothing from it until one does; check the spelling, or add a rule (gateway policy import)",
                file=sys.stderr,
            )


def record_event(
    settings: Settings,
    kind: str,
    *,
    outcome: str = "success",
    subject: str = "",
    details: dict[str, object] | None = None,
) -> bool:
    """Record an event about something that already happened; an unreachable database or keyring only
    prints a warning (the backup, restore or check happened or failed either way, and a copy is
    verified where no database runs). Returns whether it was recorded.
    """
    from gateway.audit.trail import record_once

    try:
        keyring = load_keyring(settings, may_create=False)
        run(
            record_once(
                storage_url(settings),
                kind,
                keyring=keyring,
                actor=operator(),
                subject=subject,
                outcome=outcome,
                details=details,
            )
        )
    except Exception as exc:  # noqa: BLE001 - the database or the keyring: reported, never fatal here
        print(f"warning: audit event {kind} not recorded ({type(exc).__name__}: {exc})", file=sys.stderr)
        return False
    return True


def record_backup_run(settings: Settings, made: Made) -> None:
    """Record a backup made by hand, so every replica's readiness details and the missed-backup alert
    see it (``gateway backup create`` and ``gateway pgbackrest backup``); a warning when it cannot."""
    from gateway.backup.schedule import record_manual
    from gateway.clock import SYSTEM_CLOCK

    async def work() -> None:
        async with open_store(settings) as store:
            await record_manual(store.db, made, SYSTEM_CLOCK.now())

    try:
        run(work())
    except Exception as exc:  # noqa: BLE001 - the database: reported, the backup is made either way
        print(
            f"warning: the run of backup {made.backup_id} not recorded ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
