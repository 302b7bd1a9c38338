"""``gateway incident …``: see and undo what threat detection did, and block addresses by hand.

    gateway incident list [--json] [--limit N]
    gateway incident show ID [--json]
    gateway incident lift ID                       unblock / re-enable what the incident did
    gateway incident block-ip CIDR [--for 1h] [--reason TEXT]
    gateway incident unblock-ip CIDR

Every action takes ``--config FILE``. Incidents and blocks live in the fast state the running
gateways use (Redis, or the node's shared file in ``data_dir``), so the command acts on them directly.
Every change is audited with the operator as the actor and reaches every worker and replica within
about a second (broadcast). Only a gateway on ``state.embedded: memory`` keeps them inside its own
process, out of reach: the command says so (exit 1).

A block by hand names at most an IPv4 /16 or an IPv6 /32 and lasts at most 90 days (wider or
longer belongs in a block-list file, ``threat.block_lists``); the admin console applies the same rule.

Exit codes: 0 done, 1 runtime failure (store unreachable, state.embedded: memory), 2 invalid input
(unknown incident, bad address or duration, bad configuration).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from gateway.cli.accounts import account_services
from gateway.cli.arguments import whole_number
from gateway.cli.harness import (
    EXIT_OK,
    Action,
    Failed,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    load_config,
    operator,
    run,
)
from gateway.cli.incident_case import register_cases
from gateway.cli.terminal import one_line

if TYPE_CHECKING:
    from gateway.settings.schema import Settings
    from gateway.threat.incidents import Incident
    from gateway.threat.responder import Responder

__all__ = ["register"]

_IN_PROCESS: Final = (
    "error: state.embedded is memory: incidents and blocks live inside the running gateway's process, "
    "out of reach of this command. Use the default (state.embedded: file) to manage them from here."
)


async def _with_responder(settings: Settings, action: Callable[[Responder], Awaitable[int]]) -> int:
    from gateway.clock import SYSTEM_CLOCK
    from gateway.threat.addresses import use_nat64_prefixes
    from gateway.threat.responder import Responder

    # The deployment's own NAT64 prefixes, as the workers read them: a block inside one is stored as
    # the IPv4 network it translates (a /96 is refused), not in a form no worker matches.
    use_nat64_prefixes(settings.threat.nat64_prefixes)
    async with account_services(settings) as svc:
        responder = Responder(
            state=svc.fast,
            audit=svc.audit,
            accounts=svc.accounts,
            sessions=svc.sessions,
            clock=SYSTEM_CLOCK,
        )
        return await action(responder)


def _runner(action: Callable[[argparse.Namespace, Responder], Awaitable[int]]) -> Action:
    def command(args: argparse.Namespace) -> int:
        from gateway.store.fast import shares_state

        settings = load_config(args)
        if not shares_state(settings):
            raise Failed(_IN_PROCESS)
        return run(_with_responder(settings, lambda r: action(args, r)))

    return command


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _document(incident: Incident) -> dict[str, object]:
    import msgspec

    doc: dict[str, object] = msgspec.to_builtins(incident)
    return doc


async def _list(args: argparse.Namespace, responder: Responder) -> int:
    incidents = await responder.incidents.latest(args.limit)
    blocks = await responder.blocks.entries()
    if args.json:
        print(
            json.dumps(
                {
                    "incidents": [_document(i) for i in incidents],
                    "blocks": [b.to_json() for b in blocks],
                },
                indent=2,
            )
        )
        return EXIT_OK
    if not incidents:
        print("no incidents")
    for i in incidents:
        actions = ",".join(a.kind for a in i.actions) or "alert"
        print(f"{i.id}  {_when(i.at)}  {i.status:<6}  {i.rule:<17} {actions:<24} {i.summary}")
    if blocks:
        print("\nblocked addresses:")
        for b in blocks:
            print(f"  {b.cidr:<20} until {_when(b.until)}  {b.incident} {one_line(b.reason)}")
    return EXIT_OK


async def _incident(responder: Responder, incident_id: str) -> Incident:
    from gateway.threat.incidents import BadIncidentId, IncidentNotFound, parse_incident_id

    try:
        return await responder.incidents.require(parse_incident_id(incident_id))
    except (BadIncidentId, IncidentNotFound):
        raise UserError(f"no incident {incident_id!r} (see `gateway incident list`)") from None


async def _show(args: argparse.Namespace, responder: Responder) -> int:
    incident = await _incident(responder, args.id)
    if args.json:
        print(json.dumps(_document(incident), indent=2))
        return EXIT_OK
    print(f"incident  {incident.id} ({incident.status})")
    print(f"rule      {incident.rule}")
    print(f"at        {_when(incident.at)}")
    for label, value in (("subject", incident.subject), ("ip", incident.ip), ("session", incident.session)):
        if value:
            print(f"{label:<9} {value}")
    print(f"summary   {incident.summary}")
    for key, evidence in incident.evidence.items():
        print(f"  {key}: {evidence}")
    for a in incident.actions:
        state = "lifted" if a.lifted else ("done" if a.ok else "FAILED")
        until = f" until {_when(a.until)}" if a.until else ""
        print(f"action    {a.kind} {a.target}{until} [{state}] {one_line(a.note)}")
    if incident.lifted_by:
        print(f"lifted    by {incident.lifted_by} at {_when(incident.lifted_at)}")
    return EXIT_OK


async def _lift(args: argparse.Namespace, responder: Responder) -> int:
    await _incident(responder, args.id)
    lifted = await responder.lift(args.id, actor=operator())
    assert lifted is not None
    # A note says what stayed in force (another incident's block, an account disabled by someone else).
    undone = [f"{a.kind} {a.target}" + (f" ({a.note})" if a.note else "") for a in lifted.actions if a.lifted]
    print(f"{lifted.id} lifted" + (f": {', '.join(undone)}" if undone else " (nothing to undo)"))
    return EXIT_OK


def _network(text: str, *, to_block: bool = False) -> str:
    # One rule for the CLI and the admin console (gateway.threat.manual): a block by hand may not be
    # too broad; an unblock takes any network, so older blocks stay liftable.
    from gateway.threat.manual import BlockRefused, manual_network, parse_network

    try:
        return str(manual_network(text) if to_block else parse_network(text))
    except BlockRefused as exc:
        raise UserError(exc.detail) from None


async def _block(args: argparse.Namespace, responder: Responder) -> int:
    from gateway.threat.manual import BlockRefused, block_note, block_seconds

    cidr = _network(args.cidr, to_block=True)
    try:
        seconds = block_seconds(args.duration)
    except BlockRefused as exc:
        raise UserError(f"--for {args.duration!r}: {exc.detail}") from None
    incident = await responder.block_ip(cidr, seconds=seconds, actor=operator(), reason=args.reason)
    note = block_note(args.cidr)
    print(f"{cidr} blocked for {seconds:g}s ({incident.id})" + (f" ({note})" if note else ""))
    return EXIT_OK


async def _unblock(args: argparse.Namespace, responder: Responder) -> int:
    cidr = _network(args.cidr)
    if await responder.unblock_ip(cidr, actor=operator()) == 0:
        raise UserError(f"{cidr} is not blocked (see `gateway incident list`)")
    print(f"{cidr} unblocked")
    return EXIT_OK


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway incident …`` to the ``gateway`` command's sub-commands."""
    actions = command_group(
        sub,
        "incident",
        help="threat incidents and address blocks",
        description="List and inspect what threat detection found and did; lift its actions; block "
        "or unblock addresses on every replica.",
    )

    def action(
        name: str, func: Callable[[argparse.Namespace, Responder], Awaitable[int]], summary: str
    ) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=summary, description=summary + ".", allow_abbrev=False)
        config_arg(parser)
        parser.set_defaults(func=_runner(func))
        return parser

    p = action("list", _list, "list the newest incidents and the addresses blocked now")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--limit",
        type=whole_number(1, 10_000),
        default=50,
        metavar="N",
        help="at most N incidents (default 50)",
    )
    p = action("show", _show, "show one incident: evidence and actions")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = action("lift", _lift, "undo an incident's blocks and account locks")
    p.add_argument("id", metavar="ID")
    p = action("block-ip", _block, "refuse an address or network on every replica for a while")
    p.add_argument("cidr", metavar="CIDR")
    p.add_argument(
        "--for",
        dest="duration",
        default="1h",
        metavar="DURATION",
        help="how long (default 1h, from 1m to 90d)",
    )
    p.add_argument("--reason", default="", metavar="TEXT", help="why, for the audit trail")
    p = action("unblock-ip", _unblock, "lift the block of exactly this address or network")
    p.add_argument("cidr", metavar="CIDR")
    register_cases(actions)
