"""``gateway incident case …``: incidents as records through the five phases.

    gateway incident case list [--open] [--json]
    gateway incident case show ID [--json]                 the record and its timeline
    gateway incident case open --title T [--severity S] [--user U]... [--route R]... [--ip A]... [--summary T]
    gateway incident case update ID [--owner O] [--severity S] [--user U]... [--route R]... [--ip A]...
                                    [--root-cause T] [--lessons T]
    gateway incident case note ID TEXT
    gateway incident case phase ID PHASE [--note T]        containment seals the evidence; closing runs the checks
    gateway incident case seal ID                          seal the evidence again (a later window)
    gateway incident case act ID ACTION [--yes]            revoke-sessions | force-password-change | reset-mfa | disable
    gateway incident case restore-policy ID VERSION --reason T
    gateway incident case rotate-keys ID [--signing | --keyring] [--compromised [--leaked-since ISO]]
    gateway incident case lift ID                          lift every block and lock of its detections
    gateway incident case check ID [--json]                the recovery checklist
    gateway incident case notify ID [--preview] [--template NAME] [--what-to-do TEXT]
    gateway incident case report ID [--format md|json] [-o FILE]

A detection rule opens one automatically (its id is the detection's); an admin opens one by hand.
Every change is in the incident's timeline and the audit trail. Exit codes: 0 done, 1 a check failed
or a store is unreachable, 2 invalid input (unknown incident, a phase move the workflow refuses).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.accounts import AccountServices, account_services
from gateway.cli.arguments import ip_address, short_name, whole_number
from gateway.cli.harness import (
    EXIT_FAILURE,
    EXIT_OK,
    SubParsers,
    UserError,
    config_arg,
    confirm,
    load_config,
    load_keyring,
    operator,
    run,
)
from gateway.cli.leak import add_drop_unsettled_arg, add_leak_arg, check_leak
from gateway.cli.terminal import one_line

if TYPE_CHECKING:
    from gateway.response.cases import Cases, CaseView
    from gateway.response.recovery import RecoveryCheck
    from gateway.response.workflow import Workflow

__all__ = ["register_cases"]


@dataclass(frozen=True, slots=True)
class _Ctx:
    svc: AccountServices
    # The operations the admin API runs too (gateway/response/workflow.py); its cases and keyring.
    flow: Workflow

    @property
    def cases(self) -> Cases:
        return self.flow.cases


@asynccontextmanager
async def _context(args: argparse.Namespace) -> AsyncIterator[_Ctx]:
    from gateway.authz.store import PolicyStore
    from gateway.clock import SYSTEM_CLOCK
    from gateway.response.cases import Cases
    from gateway.response.workflow import Workflow

    settings = load_config(args)
    keyring = load_keyring(settings)
    async with account_services(settings) as svc:
        flow = Workflow(
            cases=Cases(svc.db, svc.audit, SYSTEM_CLOCK), settings=settings, db=svc.db, fast=svc.fast,
            audit=svc.audit, accounts=svc.accounts, sessions=svc.sessions,
            policy=PolicyStore(svc.db, svc.fast, svc.audit), keyring=keyring,
        )  # fmt: skip
        yield _Ctx(svc, flow)


def _command(
    work: Callable[[argparse.Namespace, _Ctx], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from gateway.errors import BadRequest
        from gateway.response.cases import CaseNotFound
        from gateway.response.phases import PhaseRefused
        from gateway.response.workflow import MailNotConfigured

        async def go() -> int:
            async with _context(args) as ctx:
                return await work(args, ctx)

        return run(go(), errors=(BadRequest, CaseNotFound, PhaseRefused, MailNotConfigured))

    return command


def _line(case: CaseView) -> str:
    owner = one_line(case.owner or "unassigned")
    opened = f"{case.opened_at:%Y-%m-%d %H:%M}Z"
    return (
        f"{case.id}  {case.severity:<8} {case.phase.value:<13} {owner:<16} {opened}  {one_line(case.title)}"
    )


async def _list(args: argparse.Namespace, ctx: _Ctx) -> int:
    found = await ctx.cases.latest(args.limit, open_only=args.open)
    if args.json:
        print(json.dumps([c.as_dict() for c in found], indent=2))
    elif not found:
        print("no incidents" + (" open" if args.open else ""))
    else:
        print(f"{'ID':<12}  {'SEVERITY':<8} {'PHASE':<13} {'OWNER':<16} {'OPENED':<17}  TITLE")
        for case in found:
            print(_line(case))
    return EXIT_OK


async def _show(args: argparse.Namespace, ctx: _Ctx) -> int:
    case = await ctx.cases.get(args.id)
    entries = await ctx.cases.entries(case.id)
    if args.json:
        print(json.dumps({**case.as_dict(), "timeline": [e.as_dict() for e in entries]}, indent=2))
        return EXIT_OK
    print(_line(case))
    for label, values in (
        ("affected", case.affected_users),
        ("routes", case.routes),
        ("addresses", case.addresses),
    ):
        if values:
            print(f"  {label}: {', '.join(values)}")
    for sealed in case.evidence:
        print(f"  evidence: sha256 {sealed['sha256']} ({sealed['records']} records) {sealed['file']}")
    print("  timeline:")
    for e in entries:
        print(f"    {e.at:%Y-%m-%d %H:%M:%S}Z  {e.kind:<12} {one_line(e.actor):<24} {one_line(e.text)}")
    return EXIT_OK


async def _open(args: argparse.Namespace, ctx: _Ctx) -> int:
    case = await ctx.cases.open(
        title=args.title, severity_=args.severity, actor=operator(), users=args.user or (),
        routes=args.route or (), addresses=args.ip or (), summary=args.summary,
    )  # fmt: skip
    print(case.id)
    return EXIT_OK


async def _update(args: argparse.Namespace, ctx: _Ctx) -> int:
    case = await ctx.cases.update(
        args.id, actor=operator(), owner=args.owner, severity_=args.severity, users=args.user or (),
        routes=args.route or (), addresses=args.ip or (), root_cause=args.root_cause, lessons=args.lessons,
    )  # fmt: skip
    print(_line(case))
    return EXIT_OK


async def _note(args: argparse.Namespace, ctx: _Ctx) -> int:
    await ctx.cases.note(args.id, args.text, actor=operator())
    print(f"noted in {args.id}")
    return EXIT_OK


def _print_sealed(sealed: dict[str, Any]) -> None:
    print(f"evidence sealed: {sealed['records']} audit record(s), sha256 {sealed['sha256']}")
    print(f"  {sealed['file']} (check it with `gateway audit verify-bundle {sealed['file']}`)")


def _print_checks(checks: list[RecoveryCheck]) -> None:
    for c in checks:
        print(f"  [{'ok' if c.passed else 'FAILED'}] {c.name}: {c.detail}")


async def _phase(args: argparse.Namespace, ctx: _Ctx) -> int:
    from gateway.response.workflow import RecoveryChecksFailed

    try:
        moved = await ctx.flow.move(args.id, args.phase, actor=operator(), note=args.note)
    except RecoveryChecksFailed as refused:
        print(refused.detail)
        _print_checks(refused.checks)
        return EXIT_FAILURE
    print(f"{moved.case.id} is in {moved.case.phase.value} now")
    if moved.sealed is not None:
        _print_sealed(moved.sealed)
    return EXIT_OK


async def _seal_again(args: argparse.Namespace, ctx: _Ctx) -> int:
    _print_sealed(await ctx.flow.seal(await ctx.cases.get(args.id), actor=operator()))
    return EXIT_OK


async def _act(args: argparse.Namespace, ctx: _Ctx) -> int:
    case = await ctx.cases.get(args.id)
    if args.action != "revoke-sessions" and not args.yes and case.affected_users:
        # Detections from one address join one incident, so whoever makes failed sign-ins from it
        # can add an account to the list (an attack run added others): the responder sees the list.
        names = ", ".join(case.affected_users)
        await confirm(
            f"{args.action} on {len(case.affected_users)} account(s): {names}\ntype {case.id} to confirm: ",
            case.id,
        )
    # With state.embedded: memory the workflow refuses (SessionsOutOfReach: exit 1, its message).
    # The incident as confirmed: an account added since is not acted on unseen.
    result = await ctx.flow.act(case.id, args.action, actor=operator(), checked=case)
    for username, done in result.done.items():
        print(f"{username}: {done}")
    for username in result.missing:
        print(f"{username}: no such account (erased or renamed?)")
    return EXIT_OK


async def _restore_policy(args: argparse.Namespace, ctx: _Ctx) -> int:
    version = await ctx.flow.restore_policy(args.id, args.version, reason=args.reason, actor=operator())
    print(
        f"policy version {args.version} restored as version {version}; every replica loads it within seconds"
    )
    return EXIT_OK


async def _rotate(args: argparse.Namespace, ctx: _Ctx) -> int:
    from gateway.backup.sets import backup_directory, vouching
    from gateway.crypto.keyring import keyring_path
    from gateway.crypto.lifecycle import RotationTarget, rotate_keys
    from gateway.crypto.signing import SigningKeys, announce_compromise
    from gateway.response.actions import record_action

    # As `gateway keys rotate` checks it, before the incident is even read: nothing rotated or recorded.
    check_leak(args.leaked_since, compromised=args.compromised, signing_only=args.signing)
    case = await ctx.cases.get(args.id)
    keyring, keyring_file = ctx.flow.keyring, keyring_path(ctx.svc.settings)
    target = (
        RotationTarget.SIGNING
        if args.signing
        else RotationTarget.KEYRING
        if args.keyring
        else RotationTarget.ALL
    )
    signing = SigningKeys(ctx.svc.db, keyring, ctx.cases.clock, ctx.svc.settings.assertion)
    rotation = await rotate_keys(
        target,
        signing=signing,
        keyring=keyring,
        keyring_file=keyring_file,
        audit=ctx.svc.audit,
        actor=operator(),
        compromised=args.compromised,
        announce=lambda at: announce_compromise(ctx.svc.fast, at),
        ledger=ctx.svc.accounts.ledger,
        backups_signed=vouching(backup_directory(ctx.svc.settings), keyring, ctx.svc.audit),
        leaked_since=args.leaked_since,
        drop_unsettled=args.drop_unsettled,
    )
    details = rotation.details()
    text, recorded = f"keys rotated ({target.value})", {"target": target.value}
    if rotation.keyring_mark is not None and rotation.keyring_mark.leaked_since:
        # The time the mark holds (UTC, as `gateway keys list` shows it): the case says from when on
        # nothing the leaked key signed is trusted.
        text += f"; leaked since {rotation.keyring_mark.leaked_since}"
        recorded["leaked_since"] = rotation.keyring_mark.leaked_since
    await record_action(ctx.cases, ctx.svc.audit, case.id, operator(), "rotate-keys", text, recorded)
    print(f"{text}: {json.dumps(details, default=str)}")
    if rotation.keyring_compromised is not None:
        from gateway.response.exposure import exposed_by

        # What else the leaked key encrypted, as `gateway keys` says it (the seeds to reset).
        exposure = await exposed_by(ctx.svc.db, (rotation.keyring_compromised, *rotation.keyring_also))
        for line in exposure.lines():
            print(line)
    return EXIT_OK


async def _lift(args: argparse.Namespace, ctx: _Ctx) -> int:
    lifted = await ctx.flow.lift(args.id, actor=operator())
    print(f"lifted what {len(lifted)} detection(s) of {args.id} did" if lifted else "nothing to lift")
    return EXIT_OK


async def _check(args: argparse.Namespace, ctx: _Ctx) -> int:
    case = await ctx.cases.get(args.id)
    checks = await ctx.flow.checks(case)
    passed = all(c.passed for c in checks)
    if args.json:
        print(json.dumps({"passed": passed, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        print(f"recovery checks of {case.id}: {'PASSED' if passed else 'FAILED'}")
        _print_checks(checks)
    return EXIT_OK if passed else EXIT_FAILURE


async def _report(args: argparse.Namespace, ctx: _Ctx) -> int:
    from gateway.response.report import dumps, report_markdown
    from gateway.store.private import write_new_private

    doc = await ctx.flow.report(args.id)
    text = dumps(doc) if args.format == "json" else report_markdown(doc)
    if args.output is None:
        print(text)
    else:
        # It names the affected people, their addresses and audit records: 0600, a new file, never
        # through a link (it was written with the umask's 0644 and followed links).
        try:
            write_new_private(args.output, (text + "\n").encode("utf-8"))
        except FileExistsError:
            raise UserError(f"{args.output} exists or is a link; give a new file's path") from None
        except OSError as exc:
            raise UserError(f"cannot write {args.output}: {exc.strerror}") from None
        print(f"wrote {args.output}")
    return EXIT_OK


async def _notify(args: argparse.Namespace, ctx: _Ctx) -> int:
    if not args.preview and not args.previewed:
        raise UserError(
            "a send needs --previewed DIGEST: run with --preview first, read the messages, then send "
            "with the digest it prints (what is sent is what was read)"
        )
    result = await ctx.flow.notify(
        args.id,
        actor=operator(),
        template=args.template,
        what_to_do=args.what_to_do,
        preview=args.preview,
        previewed=args.previewed,
    )
    for shown in result.previews:
        print(f"--- to {shown.to}\nFrom: {shown.sender}\nSubject: {shown.subject}\n\n{shown.body}")
    if args.preview:
        print(f"--- digest {result.digest}: send exactly these with --previewed {result.digest}")
    for delivery in result.deliveries:
        state = "sent" if delivery.ok else "NOT SENT"
        print(f"{delivery.message.username} <{delivery.message.address}>: {state} {delivery.detail}".rstrip())
    for username in result.without_address:
        print(f"{username}: no email address on the account; reach them another way")
    for username in result.missing:
        print(f"{username}: no such account")
    failed = any(not d.ok for d in result.deliveries)
    return EXIT_FAILURE if failed else EXIT_OK


def register_cases(actions: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway incident case …`` under the incident group's actions."""
    # Light modules only: this runs for every `gateway` command, not just this group's.
    from gateway.response.phases import Phase
    from gateway.response.vocabulary import SEVERITIES, AccountAction

    group = actions.add_parser(
        "case",
        help="incident records through the five phases",
        description="Incidents as records: detection and analysis, containment (evidence sealed), "
        "eradication, recovery (checked), post-incident (report), closed.",
    )
    cases = group.add_subparsers(dest="case_action", metavar="ACTION", required=True)

    def action(
        name: str, work: Callable[[argparse.Namespace, _Ctx], Awaitable[int]], summary: str
    ) -> argparse.ArgumentParser:
        parser = cases.add_parser(name, help=summary, description=summary + ".")
        config_arg(parser)
        parser.set_defaults(func=_command(work))
        return parser

    def people(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--user", action="append", type=short_name, metavar="USERNAME", help="an affected person (repeat)"
        )
        parser.add_argument(
            "--route", action="append", type=short_name, metavar="NAME", help="an affected route (repeat)"
        )
        parser.add_argument(
            "--ip", action="append", type=ip_address, metavar="ADDRESS", help="an address involved (repeat)"
        )

    p = action("list", _list, "list incidents, newest first")
    p.add_argument("--open", action="store_true", help="only those not closed")
    p.add_argument(
        "--limit", type=whole_number(1, 10_000), default=50, metavar="N", help="at most N (default 50)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p = action("show", _show, "show an incident and its timeline")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = action("open", _open, "open an incident by hand (detection and analysis)")
    p.add_argument("--title", required=True, metavar="TEXT")
    p.add_argument("--severity", choices=SEVERITIES, default="medium")
    p.add_argument("--summary", default="", metavar="TEXT")
    people(p)
    p = action("update", _update, "set owner, severity, root cause, lessons; add people, routes, addresses")
    p.add_argument("id", metavar="ID")
    p.add_argument("--owner", metavar="NAME")
    p.add_argument("--severity", choices=SEVERITIES)
    p.add_argument("--root-cause", metavar="TEXT")
    p.add_argument("--lessons", metavar="TEXT")
    people(p)
    p = action("note", _note, "add a note to the timeline")
    p.add_argument("id", metavar="ID")
    p.add_argument("text", metavar="TEXT")
    p = action("phase", _phase, "move to a phase (containment seals the evidence; closing needs the checks)")
    p.add_argument("id", metavar="ID")
    p.add_argument("phase", choices=[ph.value for ph in Phase] + ["post-incident"], metavar="PHASE")
    p.add_argument("--note", default="", metavar="TEXT", help="why, in the timeline")
    p = action("seal", _seal_again, "seal the evidence (again, for the window up to now)")
    p.add_argument("id", metavar="ID")
    p = action(
        "act",
        _act,
        "apply an action to every affected account (all but revoke-sessions list them and ask, unless --yes)",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("action", choices=[a.value for a in AccountAction])
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p = action("restore-policy", _restore_policy, "restore an earlier policy version")
    p.add_argument("id", metavar="ID")
    p.add_argument("version", type=int, metavar="VERSION")
    p.add_argument("--reason", required=True, metavar="TEXT")
    p = action("rotate-keys", _rotate, "rotate the signing key and/or the keyring")
    p.add_argument("id", metavar="ID")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--signing", action="store_true", help="only the signing key")
    which.add_argument("--keyring", action="store_true", help="only the keyring")
    p.add_argument(
        "--compromised",
        action="store_true",
        help="the keys leaked: a new signing key signs at once and every old one is deleted from the JWKS; "
        "the keyring key that was active is marked compromised (`gateway keys mark-compromised --help`)",
    )
    add_leak_arg(p)
    add_drop_unsettled_arg(p)
    p = action("lift", _lift, "lift every block and account lock its detections placed")
    p.add_argument("id", metavar="ID")
    p = action("check", _check, "run the recovery checklist (exit 1 when a check fails)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = action("notify", _notify, "email every affected person (notify.smtp); --preview shows the messages")
    p.add_argument("id", metavar="ID")
    p.add_argument("--preview", action="store_true", help="print what would be sent; send nothing")
    p.add_argument(
        "--template", default="incident", metavar="NAME", help="notify.templates entry (default incident)"
    )
    p.add_argument("--what-to-do", metavar="TEXT", help="what the people should do ($what_to_do)")
    p.add_argument(
        "--previewed",
        metavar="DIGEST",
        help="required to send: send only if the messages still say what the preview with this digest "
        "said (--preview prints it)",
    )
    p = action("report", _report, "the post-incident report")
    p.add_argument("id", metavar="ID")
    p.add_argument("--format", choices=["md", "json"], default="md")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write it here")
