"""``gateway lockdown …``: shut the applications in an emergency, open them again, and see the switch.

    gateway lockdown on [--route NAME]... --reason TEXT     every route, or only the named ones
    gateway lockdown off --reason TEXT
    gateway lockdown status [--json]

Every action takes ``--config FILE``. The switch lives in the fast state the running gateways use
(Redis, or the node's shared file in ``data_dir``) and is broadcast: every worker of every replica
applies it within about a second (at most ``lockdown.refresh_interval`` if the broadcast is lost).
``on`` replaces an earlier selection of routes. Each switch is audited (``lockdown.on`` /
``lockdown.off``) with the operator as the actor. Only a gateway on ``state.embedded: memory`` keeps
the switch inside its own process, out of reach: the command says so (exit 1).

Exit codes: 0 done, 1 runtime failure (store unreachable, state.embedded: memory), 2 invalid input
(unknown route name, no reason, bad configuration).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from gateway.cli.harness import (
    EXIT_OK,
    Action,
    Failed,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    load_config,
    open_store,
    operator,
    run,
)
from gateway.cli.terminal import one_line

if TYPE_CHECKING:
    from gateway.settings.schema import Settings
    from gateway.threat.lockdown import LockdownState, LockdownStore

__all__ = ["register"]

_IN_PROCESS: Final = (
    "error: state.embedded is memory: the lockdown switch lives inside the running gateway's process, "
    "out of reach of this command. Use the default (state.embedded: file) or Redis to switch it from here."
)


async def _with_store(
    settings: Settings,
    args: argparse.Namespace,
    action: Callable[[argparse.Namespace, LockdownStore], Awaitable[int]],
) -> int:
    from gateway.clock import SYSTEM_CLOCK
    from gateway.threat.lockdown import LockdownStore

    async with open_store(settings, fast=True, keyring=True) as store:
        return await action(args, LockdownStore(store.fast, SYSTEM_CLOCK, store.audit(), db=store.db))


def _runner(action: Callable[[argparse.Namespace, LockdownStore], Awaitable[int]]) -> Action:
    def command(args: argparse.Namespace) -> int:
        from gateway.store.fast import shares_state

        settings = load_config(args)
        if not shares_state(settings):
            raise Failed(_IN_PROCESS)
        args.settings = settings
        return run(_with_store(settings, args, action))

    return command


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "-"


def _describe(state: LockdownState) -> str:
    if not state.on:
        since = (
            f" since {_when(state.since)} ({one_line(state.actor)}: {one_line(state.reason)})"
            if state.since
            else ""
        )
        return f"lockdown off{since}"
    scope = "all routes" if state.routes is None else "routes " + ", ".join(state.routes)
    line = f"lockdown ON for {scope} since {_when(state.since)} by {one_line(state.actor)}: {one_line(state.reason)}"
    if state.previous is not None:
        # A person's lockdown a threat rule widened: what lifting the incidents leaves on.
        line += f"\n  lifting {', '.join(state.incidents)} puts back: {_describe(state.previous)}"
    return line


def _checked(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, str]:
    from gateway.threat.lockdown import LockdownRefused, check_request

    settings: Settings = args.settings
    try:
        routes = check_request(
            routes=args.routes or (), known=[r.name for r in settings.routes], reason=args.reason
        )
    except LockdownRefused as exc:
        raise UserError(exc.detail) from None
    return routes, args.reason.strip()


async def _on(args: argparse.Namespace, store: LockdownStore) -> int:
    routes, reason = _checked(args)
    print(_describe(await store.switch_on(routes, actor=operator(), reason=reason)))
    return EXIT_OK


async def _off(args: argparse.Namespace, store: LockdownStore) -> int:
    _, reason = _checked(args)
    print(_describe(await store.switch_off(actor=operator(), reason=reason)))
    return EXIT_OK


async def _status(args: argparse.Namespace, store: LockdownStore) -> int:
    state = await store.read()
    print(json.dumps(state.to_json(), indent=2) if args.json else _describe(state))
    return EXIT_OK


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway lockdown …`` to the ``gateway`` command's sub-commands."""
    actions = command_group(
        sub,
        "lockdown",
        help="emergency lockdown of every route or chosen ones",
        description="Shut the applications behind the gateway in an emergency: everyone gets the "
        "maintenance page (503) except members of lockdown.break_glass_group signed in with a passkey.",
    )

    def action(
        name: str, func: Callable[[argparse.Namespace, LockdownStore], Awaitable[int]], summary: str
    ) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=summary, description=summary + ".", allow_abbrev=False)
        config_arg(parser)
        parser.set_defaults(func=_runner(func), routes=None, reason="")
        return parser

    p = action("on", _on, "lock every route (or only --route NAME ...) on every worker and replica")
    p.add_argument(
        "--route",
        dest="routes",
        action="append",
        metavar="NAME",
        help="lock only this route (repeat for several); default: every route",
    )
    p.add_argument("--reason", required=True, metavar="TEXT", help="why, for the audit trail and the status")
    p = action("off", _off, "open every route again")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why, for the audit trail and the status")
    p = action("status", _status, "show whether a lockdown is on, for which routes, since when and why")
    p.add_argument("--json", action="store_true", help="print JSON")
