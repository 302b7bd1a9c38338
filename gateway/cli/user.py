"""``gateway user …``: manage local accounts from the command line.

    gateway user add USERNAME [--email E] [--display-name N] [--role R]...
                              [--password-stdin | --no-password] [--must-change-password]
    gateway user list [--json] [--limit N] [--offset N]
    gateway user show USERNAME [--json]
    gateway user disable|enable USERNAME
    gateway user set-password USERNAME [--password-stdin] [--must-change-password] [--end-sessions]
    gateway user reset-mfa USERNAME [--invite]
    gateway user invite USERNAME [--clear-password]
    gateway user delete USERNAME [--yes]

Every action takes ``--config FILE``. USERNAME may be any spelling of the username or the email alias.

Passwords never come from an argument: arguments are visible to every local user in ``ps`` and
``/proc/*/cmdline`` and end up in shell history. They are asked twice at the terminal, or read from
standard input with ``--password-stdin`` (for scripts: ``pass show gw/alice | gateway user add …``).

The commands work on the database directly, outside any gateway process, and on the fast state the
running gateways use (Redis, or the node's shared file in ``data_dir``), so ``disable``, ``delete`` and
``reset-mfa`` end the user's sessions on every worker and replica within a second (revocation
broadcast). Only a gateway on ``state.embedded: memory`` keeps its sessions out of reach; the command
then says so.

``invite`` prints a new invitation link (``<public_url>/.gateway/invite/<token>``, shown once; an
earlier link stops working) where the person chooses their password; an account with a password
needs ``--clear-password``, which withdraws it and ends its sessions. ``reset-mfa --invite`` is the
lost-device recovery that a phished password cannot finish: the password is withdrawn first, then the
factors, then the link is printed (the rules are :mod:`gateway.identity.reinvite`'s, as in the console).

New passwords follow the policy of :mod:`gateway.identity.password_policy` (minimum length, not a
common or breached password or a trivial variant of one, not built from the username, email or display
name); a refused password is asked again at the terminal, and exits 2 from standard input.

Exit codes: 0 done, 1 runtime failure (database unreachable, confirmation declined), 2 invalid input
(unknown user, account exists, weak password, bad arguments or configuration). User errors are one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TextIO

from gateway.cli.accounts import account_services
from gateway.cli.arguments import whole_number
from gateway.cli.harness import (
    EXIT_OK,
    Action,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    confirm,
    load_config,
    load_keyring,
    note_roles_without_rules,
    operator,
    run,
)

if TYPE_CHECKING:
    from gateway.audit.trail import AuditLog
    from gateway.identity.accounts import AccountFactors, AccountService, FactorInfo, UserSummary
    from gateway.identity.models import User
    from gateway.identity.passwords import PasswordHasher
    from gateway.settings.schema import Settings
    from gateway.store.db import Database
    from gateway.store.fast import FastState

# Everything heavy (SQLAlchemy, argon2, the settings loader) is imported when an action runs, not
# when the parser is built: `gateway --help` and the other commands must not pay for it.

__all__ = ["register"]

_PASSWORD_ATTEMPTS: Final = 3
_NO_LIVE_SESSIONS_NOTE: Final = (
    "note: state.embedded is memory: the running gateway keeps its sessions inside its own process, "
    "out of reach of this command; they end at their idle timeout or when the gateway restarts."
)
_OWED_NOTE: Final = (
    "warning: the session store did not answer, so the account's sessions are not ended yet. The change "
    "is made; every gateway ends those sessions within a second of the store answering again (no need to "
    "run this again). Until then every gateway refuses them, within a second of this command."
)


def _user_errors() -> tuple[type[Exception], ...]:
    # Account errors that are the operator's input, not a failure of the system.
    from gateway.identity.accounts import (
        AccountExists,
        InvalidAccount,
        UnknownAccount,
        WeakPassword,
        WrongPassword,
    )
    from gateway.identity.reinvite import InvitationRefused

    return (AccountExists, InvalidAccount, UnknownAccount, WeakPassword, WrongPassword, InvitationRefused)


@dataclass(slots=True)
class _Context:
    accounts: AccountService
    db: Database
    fast: FastState
    audit: AuditLog
    hasher: PasswordHasher
    settings: Settings
    actor: str


# -- wiring ----------------------------------------------------------------------------------------------


async def _with_context(settings: Settings, action: Callable[[_Context], Awaitable[int]]) -> int:
    async with account_services(settings) as svc:
        return await action(
            _Context(
                accounts=svc.accounts,
                db=svc.db,
                fast=svc.fast,
                audit=svc.audit,
                hasher=svc.hasher,
                settings=settings,
                actor=operator(),
            )
        )


def _runner(action: Callable[[argparse.Namespace, _Context], Awaitable[int]]) -> Action:
    def command(args: argparse.Namespace) -> int:
        errors = _user_errors()
        settings = load_config(args)
        return run(_with_context(settings, lambda ctx: action(args, ctx)), errors=errors)

    return command


async def _user(ctx: _Context, login: str) -> User:
    user = await ctx.accounts.find(login)
    if user is None:
        raise UserError(f"no user {login!r} (give a username or email address)")
    return user


# -- reading secrets and confirmations -------------------------------------------------------------------


def _read_stdin_password(stream: TextIO) -> str:
    data = stream.read()
    # Exactly one line ending goes (what `echo` and most secret stores append); anything else is the
    # password, spaces included.
    if data.endswith("\r\n"):
        data = data[:-2]
    elif data.endswith("\n"):
        data = data[:-1]
    if not data:
        raise UserError("no password on standard input")
    if "\n" in data or "\r" in data:
        raise UserError("the password on standard input must be a single line")
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 arrive as surrogates: hashing them failed with a traceback.
        raise UserError("the password on standard input is not UTF-8 text") from None
    return data


def _require_terminal(what: str, hint: str) -> None:
    if not sys.stdin.isatty():
        raise UserError(f"no terminal to {what}: {hint}")


async def _ask_password(ctx: _Context, personal: Sequence[str]) -> str:
    _require_terminal("ask for the password", "pipe it in with --password-stdin")
    for _ in range(_PASSWORD_ATTEMPTS):
        # In a thread: getpass blocks, and the event loop must stay free to keep the pool alive.
        first = await asyncio.to_thread(getpass.getpass, "New password: ")
        # Checked here too (the account service checks again) so that a refused password is asked
        # again at once, with the rule it broke, instead of after typing it twice.
        problem = await ctx.hasher.check_new(first, personal=personal)
        if problem is not None:
            print(problem, file=sys.stderr)
            continue
        if await asyncio.to_thread(getpass.getpass, "Repeat the password: ") != first:
            print("The two passwords are not the same.", file=sys.stderr)
            continue
        return first
    raise UserError("no password set (too many attempts)")


async def _new_password(args: argparse.Namespace, ctx: _Context, personal: Sequence[str]) -> str:
    """The new password, from standard input or asked at the terminal.

    ``personal`` is what the account is known by (username, email, display name), for the policy.
    A password from standard input is checked by the account service (a refusal exits 2).
    """
    if args.password_stdin:
        return _read_stdin_password(sys.stdin)
    return await _ask_password(ctx, personal)


# -- formatting ------------------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "never"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _status(disabled: bool) -> str:
    return "disabled" if disabled else "active"


def _password_state(has_password: bool, must_change: bool) -> str:
    if not has_password:
        return "none"
    return "must-change" if must_change else "set"


def _summary_json(s: UserSummary) -> dict[str, Any]:
    return {
        "id": s.id,
        "username": s.username,
        "email": s.email,
        "display_name": s.display_name,
        "roles": list(s.roles),
        "disabled": s.disabled,
        "password": _password_state(s.has_password, s.must_change_password),
        "totp": s.totp,
        "webauthn": s.webauthn,
        "recovery_codes_left": s.recovery_codes_left,
        "created_at": _iso(s.created_at),
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _factor_json(f: FactorInfo) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "id": f.id,
        "name": f.name,
        "confirmed": f.confirmed,
        "discoverable": f.discoverable,
        "created_at": _iso(f.created_at),
        "last_used_at": _iso(f.last_used_at),
    }


def _factor_label(f: FactorInfo) -> str:
    if f.kind == "totp":
        return "authenticator app" + ("" if f.confirmed else " (not confirmed)")
    return "passkey" if f.discoverable else "security key"


def _show_text(user: User, factors: AccountFactors) -> str:
    password = _password_state(user.password_hash is not None, user.must_change_password)
    if user.password_changed_at is not None and user.password_hash is not None:
        password += f" (changed {_when(user.password_changed_at)})"
    fields = [
        ("username", user.username),
        ("email", user.email or "-"),
        ("display name", user.display_name or "-"),
        ("roles", user.roles or "-"),
        ("status", _status(user.disabled)),
        ("password", password),
        ("created", _when(user.created_at)),
        ("updated", _when(user.updated_at)),
        ("recovery codes", f"{factors.recovery_codes_left} of {factors.recovery_codes_total} left"),
    ]
    width = max(len(name) for name, _ in fields) + 1
    lines = [f"{(name + ':').ljust(width)}  {value}" for name, value in fields]
    every = factors.totp + factors.webauthn
    if every:
        lines.append("second factors:")
        rows = [[_factor_label(f), f.name, _when(f.created_at), _when(f.last_used_at)] for f in every]
        table = _table(["KIND", "NAME", "CREATED", "LAST USED"], rows)
        lines += ["  " + line for line in table.splitlines()]
    else:
        lines.append("second factors: none")
    return "\n".join(lines)


# -- the actions -----------------------------------------------------------------------------------------


async def _add(args: argparse.Namespace, ctx: _Context) -> int:
    personal = (args.username, args.email or "", args.display_name)
    password = None if args.no_password else await _new_password(args, ctx, personal)
    user = await ctx.accounts.create(
        username=args.username,
        password=password,
        email=args.email,
        display_name=args.display_name,
        roles=args.role,
        must_change_password=args.must_change_password,
        actor=ctx.actor,
    )
    print(f"created user {user.username} (id {user.id})")
    if password is None:
        print("note: no password set; the user signs in through an identity provider or a passkey.")
    await note_roles_without_rules(ctx.db, ctx.fast, ctx.audit, args.role)
    return EXIT_OK


async def _list(args: argparse.Namespace, ctx: _Context) -> int:
    users = await ctx.accounts.list(limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps([_summary_json(s) for s in users], indent=2))
        return EXIT_OK
    if not users:
        print("no users")
        return EXIT_OK
    rows = [
        [
            s.username,
            s.email or "-",
            _status(s.disabled),
            _password_state(s.has_password, s.must_change_password),
            str(s.totp),
            str(s.webauthn),
            str(s.recovery_codes_left),
            _when(s.created_at),
        ]
        for s in users
    ]
    print(_table(["USERNAME", "EMAIL", "STATUS", "PASSWORD", "TOTP", "WEBAUTHN", "CODES", "CREATED"], rows))
    return EXIT_OK


async def _show(args: argparse.Namespace, ctx: _Context) -> int:
    user = await _user(ctx, args.username)
    factors = await ctx.accounts.factors(user.id)
    if args.json:
        document = {
            "id": user.id,
            "username": user.username,
            "email": user.email,
            "display_name": user.display_name,
            "roles": user.roles.split(),
            "disabled": user.disabled,
            "password": _password_state(user.password_hash is not None, user.must_change_password),
            "password_changed_at": _iso(user.password_changed_at),
            "created_at": _iso(user.created_at),
            "updated_at": _iso(user.updated_at),
            "factors": [_factor_json(f) for f in factors.totp + factors.webauthn],
            "recovery_codes": {"left": factors.recovery_codes_left, "total": factors.recovery_codes_total},
        }
        print(json.dumps(document, indent=2))
    else:
        print(_show_text(user, factors))
    return EXIT_OK


def _sessions_note(ctx: _Context) -> str:
    """Why no count of ended sessions was given: memory state out of reach, or a store that did not answer."""
    return _OWED_NOTE if ctx.accounts.revokes_sessions else _NO_LIVE_SESSIONS_NOTE


def _sessions_ended(ended: int | None) -> str:
    return f"; {ended} session(s) ended" if ended is not None else ""


async def _disable(args: argparse.Namespace, ctx: _Context) -> int:
    user = await _user(ctx, args.username)
    ended = await ctx.accounts.disable(user.id, actor=ctx.actor)
    print(f"disabled user {user.username}{_sessions_ended(ended)}")
    if ended is None:
        print(_sessions_note(ctx), file=sys.stderr)
    return EXIT_OK


async def _enable(args: argparse.Namespace, ctx: _Context) -> int:
    user = await _user(ctx, args.username)
    await ctx.accounts.enable(user.id, actor=ctx.actor)
    print(f"enabled user {user.username}")
    return EXIT_OK


async def _set_password(args: argparse.Namespace, ctx: _Context) -> int:
    # Look the account up first: nobody should type a password twice for a name that does not exist.
    user = await _user(ctx, args.username)
    password = await _new_password(args, ctx, (user.username, user.email or "", user.display_name))
    await ctx.accounts.set_password(
        user.id, password, actor=ctx.actor, must_change_password=args.must_change_password
    )
    suffix = " (to be changed at the next sign-in)" if args.must_change_password else ""
    if not args.end_sessions:
        print(f"password set for {user.username}{suffix}")
        print("note: sessions already signed in stay signed in; --end-sessions ends them.", file=sys.stderr)
        return EXIT_OK
    ended = await ctx.accounts.end_sessions(user.id, actor=ctx.actor)
    print(f"password set for {user.username}{suffix}{_sessions_ended(ended)}")
    if ended is None:
        print(_sessions_note(ctx), file=sys.stderr)
    return EXIT_OK


async def _reset_mfa(args: argparse.Namespace, ctx: _Context) -> int:
    user = await _user(ctx, args.username)
    if args.invite:
        return await _invite_user(ctx, user, clear_password=True, reset_factors=True)
    removed = await ctx.accounts.reset_mfa(user.id, actor=ctx.actor)
    print(f"{_removed(removed)} from {user.username}{_sessions_ended(removed.get('sessions'))}")
    if "sessions" not in removed:
        print(_sessions_note(ctx), file=sys.stderr)
    return EXIT_OK


def _removed(removed: dict[str, int]) -> str:
    return (
        f"removed {removed['totp']} authenticator app(s), {removed['webauthn']} WebAuthn credential(s) "
        f"and {removed['recovery_codes']} recovery code(s)"
    )


async def _invite(args: argparse.Namespace, ctx: _Context) -> int:
    user = await _user(ctx, args.username)
    return await _invite_user(ctx, user, clear_password=args.clear_password, reset_factors=False)


async def _invite_user(ctx: _Context, user: User, *, clear_password: bool, reset_factors: bool) -> int:
    from gateway.clock import SYSTEM_CLOCK
    from gateway.identity.invitations import INVITE_PATH, Invitations
    from gateway.identity.reinvite import invite_account
    from gateway.store.fast import shares_state

    if not shares_state(ctx.settings):
        # Checked before anything changes: a link kept in this command's own memory would not open.
        raise UserError(
            "state.embedded is memory: the running gateway keeps invitation links inside its own process, "
            "out of reach of this command. Send the link from the admin console (Users, the account, "
            "Send a new invitation link)."
        )
    invite = await invite_account(
        ctx.accounts,
        Invitations(ctx.fast, SYSTEM_CLOCK),
        ctx.audit,
        user,
        actor=ctx.actor,
        ttl=float(ctx.settings.admin.invitation_ttl),
        clear_password=clear_password,
        reset_factors=reset_factors,
    )
    done = [_removed(invite.factors_removed)] if reset_factors else []
    if invite.password_cleared:
        done.append("withdrew the password" + _sessions_ended(invite.sessions_ended))
    expires = datetime.fromtimestamp(invite.issued.invitation.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if done:
        print(f"{user.username}: " + "; ".join(done), file=sys.stderr)
    print(
        f"invitation for {user.username}, valid until {expires} (earlier links no longer work); "
        "give it to them over a channel you trust, it is shown only now:",
        file=sys.stderr,
    )
    # The link alone on standard output, for a script to take.
    print(f"{ctx.settings.public_url.rstrip('/')}{INVITE_PATH}{invite.issued.token}")
    if invite.password_cleared and invite.sessions_ended is None:
        print(_sessions_note(ctx), file=sys.stderr)
    return EXIT_OK


async def _delete(args: argparse.Namespace, ctx: _Context) -> int:
    from gateway.privacy.erasure import holding_erasure
    from gateway.privacy.holds import Holds

    user = await _user(ctx, args.username)
    # A legal hold keeps the account as it keeps it from an erasure (a re-attack run deleted a held
    # person's account and factors for good this way).
    holds = Holds(ctx.db, load_keyring(ctx.settings, may_create=False), ctx.audit)
    hold = await holding_erasure(holds, user.username)
    if hold is not None:
        raise UserError(
            f"{user.username} is kept by legal hold {hold.reference}: nothing was deleted. Restrict the "
            "account instead (gateway privacy restrict), or release the hold first."
        )
    if not args.yes:
        await confirm(
            f"Delete user {user.username} with all their second factors? This cannot be undone.\n"
            f"Type the username to confirm: ",
            user.username,
        )
    ended = await ctx.accounts.delete(user.id, actor=ctx.actor)
    # The decision sample names the user in every request shape it counted (the policy what-if's
    # data): an erased account leaves no trace there either.
    from gateway.authz.sample import DecisionSample

    await DecisionSample(ctx.db).forget([f"user:{user.username}"])
    print(f"deleted user {user.username}{_sessions_ended(ended)}")
    if ended is None:
        print(_sessions_note(ctx), file=sys.stderr)
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------------------


def _username_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("username", metavar="USERNAME", help="username or email address of the account")


def _password_source(parser: argparse.ArgumentParser, *, allow_none: bool) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (one line) instead of asking at the terminal",
    )
    if allow_none:
        group.add_argument(
            "--no-password",
            action="store_true",
            help="create the account without a password (sign-in through an identity provider or passkey)",
        )
    parser.add_argument(
        "--must-change-password",
        action="store_true",
        help="the user must choose a new password at the next sign-in",
    )


def _action(
    actions: SubParsers[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace, _Context], Awaitable[int]],
    *,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    # No abbreviations: "--password SECRET" must not be taken as --password-stdin plus a stray word.
    parser = actions.add_parser(name, help=summary, description=description, allow_abbrev=False)
    config_arg(parser)
    parser.set_defaults(func=_runner(func))
    return parser


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway user …`` to the ``gateway`` command's sub-commands.

    Args:
        sub: The sub-parsers action of the top-level parser (``parser.add_subparsers(...)``). Every
            action sets ``func`` to a callable taking the parsed arguments and returning an exit code.
    """
    actions = command_group(
        sub,
        "user",
        help="manage local accounts",
        description="Create, inspect, disable and delete local accounts. Passwords are asked at the "
        "terminal or read from standard input, never taken from an argument.",
    )

    p = _action(
        actions,
        "add",
        _add,
        summary="create an account",
        description="Create a local account. The password is asked twice at the terminal, or read from "
        "standard input with --password-stdin.",
    )
    p.add_argument("username", metavar="USERNAME", help="the new username (stored case-folded)")
    p.add_argument("--email", metavar="EMAIL", help="email address, also accepted as a login")
    p.add_argument("--display-name", default="", metavar="NAME", help="name shown to people")
    p.add_argument(
        "--role", action="append", default=[], metavar="ROLE", help="grant a role (repeat for several)"
    )
    _password_source(p, allow_none=True)

    p = _action(
        actions,
        "list",
        _list,
        summary="list accounts",
        description="List accounts with their status and number of second factors.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--limit",
        type=whole_number(1, 100_000),
        default=1000,
        metavar="N",
        help="at most N accounts (default 1000)",
    )
    p.add_argument(
        "--offset", type=whole_number(0, 2**31 - 1), default=0, metavar="N", help="skip the first N accounts"
    )

    p = _action(
        actions,
        "show",
        _show,
        summary="show one account and its second factors",
        description="Show an account and its second factors (names and dates; never secrets).",
    )
    _username_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _action(
        actions,
        "disable",
        _disable,
        summary="disable an account and end its sessions",
        description="Disable an account: it can no longer sign in, and its sessions are ended on every "
        "running gateway within a second.",
    )
    _username_arg(p)

    p = _action(
        actions,
        "enable",
        _enable,
        summary="enable a disabled account",
        description="Allow a disabled account to sign in again.",
    )
    _username_arg(p)

    p = _action(
        actions,
        "set-password",
        _set_password,
        summary="set an account's password",
        description="Set a new password for an account (asked twice at the terminal, or read from "
        "standard input with --password-stdin).",
    )
    _username_arg(p)
    _password_source(p, allow_none=False)
    p.add_argument(
        "--end-sessions",
        action="store_true",
        help="also end every session of the account, on every worker and replica (a compromised account)",
    )

    p = _action(
        actions,
        "reset-mfa",
        _reset_mfa,
        summary="remove all second factors of an account",
        description="Remove every authenticator app, passkey, security key and recovery code of an "
        "account and end its sessions (the user signs in again and enrols at the next sign-in). For a lost "
        "device when the password may be known to someone else, add --invite: whoever holds the password "
        "could otherwise sign in and enrol a factor of their own first.",
    )
    _username_arg(p)
    p.add_argument(
        "--invite",
        action="store_true",
        help="also withdraw the password (first) and print a new invitation link where they choose one",
    )

    p = _action(
        actions,
        "invite",
        _invite,
        summary="print a new invitation link for an account",
        description="Print a link (valid for admin.invitation_ttl, shown once; an earlier link stops "
        "working) where the person chooses their password. Refused for a disabled, restricted or closed "
        "account, and for one with a password unless --clear-password.",
    )
    _username_arg(p)
    p.add_argument(
        "--clear-password",
        action="store_true",
        help="withdraw the account's password first (ends its sessions)",
    )

    p = _action(
        actions,
        "delete",
        _delete,
        summary="delete an account",
        description="Delete an account with all its second factors and end its sessions. Asks to type "
        "the username to confirm, unless --yes. The audit trail keeps naming the person: for a data-subject "
        "erasure (GDPR Art. 17, DPDP s. 12) use `gateway privacy erase`, which also erases them from the "
        "trail, honours legal holds and records the request.",
    )
    _username_arg(p)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
