"""``gateway privacy …``: data-subject requests, the rights carried out for a person, and legal holds.

    gateway privacy requests [--open | --overdue] [--json]
    gateway privacy show REF [--json]
    gateway privacy verify REF --by TEXT
    gateway privacy reject REF --reason TEXT
    gateway privacy export USER --verified-by TEXT [--out FILE [--force]] [--law LAW]
    gateway privacy rectify USER [--email E] [--name N] --verified-by TEXT [--law LAW]
    gateway privacy restrict USER [--lift] --verified-by TEXT [--law LAW]
    gateway privacy close USER --verified-by TEXT [--law LAW]
    gateway privacy erase USER --verified-by TEXT [--yes] [--law LAW]
    gateway privacy object USER PURPOSE --verified-by TEXT --reason TEXT [--law LAW]
    gateway privacy withdraw USER PURPOSE --verified-by TEXT --reason TEXT [--law LAW]
    gateway privacy hold place REFERENCE --reason TEXT (--user NAME | --class CLASS)
    gateway privacy hold release REFERENCE
    gateway privacy hold list [--all] [--json]
    gateway privacy hold carry --from-config LIVE.yaml
    gateway privacy removed list [--user NAME] [--json]
    gateway privacy removed open REF --reason TEXT [--out FILE [--force]]

The rights call the same service the portal and the admin console call (``gateway.privacy.service``),
so each one is a row in the request register (channel ``cli``) and an audit event, with the operator
(``cli:<OS user>``) as the actor. ``--verified-by`` says how the operator verified the person's identity
(it is recorded with the request: "passport seen at the front desk", "call-back to the number on file").

``object`` and ``withdraw`` record an objection or a consent withdrawal the person sent in (by email,
phone, letter) exactly as their own portal records it: the purpose stops for them from their sessions'
next request on, and the register row's ``verified_by`` is ``--verified-by`` followed by the operator.

An erasure asks to type the username at a terminal unless ``--yes``; under a legal hold it is suspended
(the account is restricted meanwhile) and says which hold. The export is the person's data: written
with ``--out`` to a new file readable by its owner only (``--force`` replaces an existing one), or to
standard output.

``hold carry`` follows a point-in-time restore (``gateway pgbackrest restore``): the restored database
(``--config``) gets the live one's legal holds (``--from-config``), as ``gateway backup restore`` carries
them for the embedded default, before a gateway's retention run can delete what a hold placed after the
restore's target keeps.

``removed`` lists and opens the sealed copies an erasure, or a correction under a legal hold, kept
(removed content): opening one is audited with its reason before anything is shown.

Exit codes: 0 done (an erasure held by a legal hold included: the request was recorded), 1 runtime
failure (store unreachable, confirmation declined), 2 invalid input (unknown user, request or hold,
bad arguments or configuration). Every action takes ``--config FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.cli.arguments import one_line
from gateway.cli.harness import (
    EXIT_OK,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    confirm,
    storage_url,
)
from gateway.cli.privacy_services import PrivacyContext, privacy_runner, when
from gateway.settings.checks.privacy import LAWS

if TYPE_CHECKING:
    from gateway.privacy.holds import HoldView
    from gateway.privacy.register import RequestView

__all__ = ["register"]

# The data classes a class hold can name (gateway.privacy.holds.DATA_CLASSES; spelled out here so
# that building the parser imports no domain module).
_DATA_CLASSES: Final = ("registration", "removed_content", "audit_events", "incidents", "privacy_requests")
_NO_LIVE_OPTOUT_NOTE: Final = (
    "note: state.embedded is memory: the running gateway keeps its sessions inside its own process, "
    "out of reach of this command; their next sign-in carries the change."
)
_NO_LIVE_SESSIONS_NOTE: Final = (
    "note: state.embedded is memory: the running gateway keeps its sessions inside its own process, "
    "out of reach of this command; they end at their idle timeout or when the gateway restarts."
)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _rights(ctx: PrivacyContext, args: argparse.Namespace) -> dict[str, Any]:
    """The arguments every right takes from a CLI action."""
    from gateway.privacy.register import Channel

    return {
        "settings": ctx.settings.privacy,
        "channel": Channel.CLI,
        "actor": ctx.actor,
        "verified_by": args.verified_by,
        "law": args.law,
    }


def _request_line(request: RequestView) -> str:
    line = f"{request.kind} request {request.ref}: {request.status}"
    return line + (f" (held by {request.hold_ref})" if request.status == "on_hold" else "")


# -- the register ----------------------------------------------------------------------------------------


async def _requests(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    now = ctx.retention.clock.now()
    found = await ctx.privacy.register.find(status="open" if args.open or args.overdue else None)
    if args.overdue:
        found = [r for r in found if r.overdue(now)]
    if args.json:
        print(json.dumps([r.to_json(now) for r in found], indent=2))
        return EXIT_OK
    if not found:
        print("no requests")
        return EXIT_OK
    rows = [
        [
            r.ref,
            r.kind,
            r.law,
            r.subject,
            r.channel,
            r.status + (" OVERDUE" if r.overdue(now) else ""),
            when(r.received_at),
            when(r.due_at),
        ]
        for r in found
    ]
    print(_table(["REF", "KIND", "LAW", "SUBJECT", "CHANNEL", "STATUS", "RECEIVED", "DUE"], rows))
    return EXIT_OK


async def _show(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    request = await ctx.privacy.register.get(args.ref)
    now = ctx.retention.clock.now()
    if args.json:
        print(json.dumps(request.to_json(now), indent=2))
        return EXIT_OK
    fields = [
        ("reference", request.ref),
        ("kind", request.kind),
        ("law", request.law),
        ("subject", request.subject),
        ("channel", request.channel),
        ("status", request.status + (" (overdue)" if request.overdue(now) else "")),
        ("received", when(request.received_at)),
        ("verified", f"{when(request.verified_at)} by {request.verified_by}" if request.verified_at else "-"),
        ("due", when(request.due_at)),
        ("completed", when(request.completed_at)),
        ("legal hold", request.hold_ref or "-"),
        ("outcome", request.outcome or "-"),
        ("details", json.dumps(request.details, sort_keys=True)),
    ]
    width = max(len(name) for name, _ in fields) + 1
    print("\n".join(f"{(name + ':').ljust(width)}  {value}" for name, value in fields))
    return EXIT_OK


async def _verify(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    from gateway.privacy.register import RequestNotPending

    try:
        request = await ctx.privacy.verify_request(args.ref, by=f"{args.by} ({ctx.actor})", actor=ctx.actor)
    except RequestNotPending as exc:
        raise UserError(f"request {exc.detail}") from None
    print(_request_line(request))
    return EXIT_OK


async def _reject(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    from gateway.privacy.register import RequestNotPending

    current = await ctx.privacy.register.get(args.ref)
    try:
        request = await ctx.privacy.reject_request(current.ref, reason=args.reason, actor=ctx.actor)
    except RequestNotPending as exc:
        raise UserError(f"request {exc.detail}") from None
    print(_request_line(request))
    if current.kind == "erasure" and current.status == "on_hold":
        print("note: the account stays restricted; `gateway privacy restrict --lift` lets it sign in again")
    return EXIT_OK


# -- the rights ------------------------------------------------------------------------------------------


def _open_new(path: Path, *, force: bool) -> int:
    """A file descriptor for the export: a new file (or, with ``force``, a replaced one), mode 0600.

    A link is never followed (it could point the export at any file the operator can write), and a
    replaced file is made 0600 too: ``O_CREAT``'s mode applies only to a file it creates.
    """
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UserError(f"{path} exists; pass --force to replace it") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link; give the file itself") from None
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)
    return fd


@contextlib.contextmanager
def _output(out: Path | None, *, force: bool) -> Iterator[int | None]:
    """The file a document goes to (:func:`_open_new`), or None for standard output; closed after."""
    fd = _open_new(out, force=force) if out is not None else None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


async def _write(fd: int | None, document: Mapping[str, object]) -> None:
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if fd is None:
        sys.stdout.write(text)
    else:
        await asyncio.to_thread(os.write, fd, text.encode("utf-8"))


async def _export(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    user = await ctx.user(args.user)
    out: Path | None = args.out
    # The file is opened before the request is recorded: a refused path records nothing.
    with _output(out, force=args.force) as fd:
        request, document = await ctx.privacy.export(user, **_rights(ctx, args))
        await _write(fd, document)
    # Standard output may be the export itself: what was done goes to standard error.
    print(_request_line(request) + (f"; written to {out}" if out is not None else ""), file=sys.stderr)
    return EXIT_OK


async def _rectify(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    if args.email is None and args.name is None:
        raise UserError("nothing to correct: give --email and/or --name")
    user = await ctx.user(args.user)
    request = await ctx.privacy.rectify(user, email=args.email, display_name=args.name, **_rights(ctx, args))
    print(_request_line(request))
    print(request.outcome)
    return EXIT_OK


async def _restrict(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    user = await ctx.user(args.user)
    request = await ctx.privacy.restrict(user, not args.lift, **_rights(ctx, args))
    print(_request_line(request))
    print(request.outcome)
    if not args.lift and ctx.sessions_out_of_reach:
        print(_NO_LIVE_SESSIONS_NOTE, file=sys.stderr)
    return EXIT_OK


async def _close(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    user = await ctx.user(args.user)
    request = await ctx.privacy.close(user, **_rights(ctx, args))
    print(_request_line(request))
    print(request.outcome)
    return EXIT_OK


async def _erase(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    user = await ctx.user(args.user)
    if not args.yes:
        await confirm(
            f"Erase {user.username}: the account, its factors and sessions are deleted and its audit records "
            "no longer name the person. This cannot be undone.\nType the username to confirm: ",
            user.username,
        )
    request = await ctx.privacy.erase(user, **_rights(ctx, args))
    print(_request_line(request))
    print(request.outcome)
    return EXIT_OK


async def _choice(args: argparse.Namespace, ctx: PrivacyContext, *, withdraw: bool) -> int:
    """An objection (``withdraw`` false) or a consent withdrawal the person sent in, recorded for them."""
    from gateway.privacy.register import Channel

    user = await ctx.user(args.user)
    record = ctx.privacy.withdraw_consent if withdraw else ctx.privacy.object
    request = await record(
        user,
        args.purpose,
        settings=ctx.settings.privacy,
        channel=Channel.CLI,
        actor=ctx.actor,
        verified_by=f"{args.verified_by} ({ctx.actor})",
        method=ctx.actor,
        law=args.law,
        reason=args.reason,
    )
    print(_request_line(request))
    print(request.outcome)
    if ctx.sessions_out_of_reach:
        print(_NO_LIVE_OPTOUT_NOTE, file=sys.stderr)
    return EXIT_OK


async def _object(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    return await _choice(args, ctx, withdraw=False)


async def _withdraw(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    return await _choice(args, ctx, withdraw=True)


# -- legal holds -------------------------------------------------------------------------------------


def _hold_line(hold: HoldView) -> str:
    what = f"user {hold.subject}" if hold.scope == "person" else f"data class {hold.data_class}"
    return f"legal hold {hold.reference} on {what}"


def _name_of_the_gone(typed: str) -> str:
    """The canonical username of a person with no account (erased, or never there), or a UserError."""
    from gateway.identity.names import canonical_username

    try:
        return canonical_username(typed)
    except ValueError as exc:
        raise UserError(f"--user {typed[:40]!r} is not a username: {exc}") from None


async def _hold_place(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    username = None
    if args.user is not None:
        user = await ctx.accounts.find(args.user)
        if user is not None:
            username = user.username
        else:
            # An order may come after the erasure: the hold still finds the removed content by the
            # keyed digest of the name.
            username = _name_of_the_gone(args.user)
            print(
                f"note: no account is named {username!r} (erased, or never existed): the hold covers what "
                "is kept under that name (removed content, audit records, requests)",
                file=sys.stderr,
            )
    hold = await ctx.privacy.holds.place(
        args.reference, reason=args.reason, by=ctx.actor, username=username, data_class=args.data_class
    )
    print(f"placed {_hold_line(hold)}")
    return EXIT_OK


async def _hold_release(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    hold = await ctx.privacy.holds.release(args.reference, by=ctx.actor)
    print(f"released {_hold_line(hold)}; what it kept past its time goes with the next retention run")
    # The erasures it held back are carried out now, as the console does; the retention run would too.
    for request in await ctx.privacy.resume_held_erasures(settings=ctx.settings.privacy, actor=ctx.actor):
        print(f"carried out the held {_request_line(request)}")
    return EXIT_OK


async def _hold_carry(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    from gateway.cli.carried import carry_from_live
    from gateway.settings.loader import load_settings

    live_url = storage_url(load_settings(args.from_config))
    if live_url == storage_url(ctx.settings):
        raise UserError(
            "--from-config names the database --config does: give the live deployment's config with "
            "--from-config and the restored database's with --config"
        )
    done = await carry_from_live(live_url, ctx.db, ctx.privacy.holds, by=ctx.actor)
    for line in done.said:
        print(line)
    if done.lost:
        print(
            f"NOT restored: privacy requests opened after the restore's target: {', '.join(done.lost)}; "
            "open them again (`gateway privacy requests` on the live database shows them)"
        )
    return EXIT_OK


async def _hold_list(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    holds = await ctx.privacy.holds.find(active_only=not args.all)
    if args.json:
        print(json.dumps([h.to_json() for h in holds], indent=2))
        return EXIT_OK
    if not holds:
        print("no legal holds" if args.all else "no active legal holds")
        return EXIT_OK
    rows = [
        [
            h.reference,
            h.subject if h.scope == "person" else f"class:{h.data_class}",
            when(h.placed_at) + f" by {h.placed_by}",
            "active" if h.active else f"released {when(h.released_at)} by {h.released_by}",
            h.reason,
        ]
        for h in holds
    ]
    print(_table(["REFERENCE", "COVERS", "PLACED", "STATUS", "REASON"], rows))
    return EXIT_OK


# -- removed content ---------------------------------------------------------------------------------


async def _removed_list(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    username = None
    if args.user is not None:
        user = await ctx.accounts.find(args.user)
        username = user.username if user is not None else _name_of_the_gone(args.user)
    kept = await ctx.privacy.removed.find(username)
    if args.json:
        print(json.dumps([k.to_json() for k in kept], indent=2))
        return EXIT_OK
    if not kept:
        print("no removed content" + (f" under the name {username!r}" if username else ""))
        return EXIT_OK
    rows = [[k.ref, k.who, when(k.removed_at), when(k.expires_at), k.reason] for k in kept]
    print(_table(["REF", "PERSON", "REMOVED", "KEPT UNTIL", "REASON"], rows))
    return EXIT_OK


async def _removed_open(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    out: Path | None = args.out
    # The file is opened before the reading is recorded: a refused path records nothing.
    with _output(out, force=args.force) as fd:
        view, document = await ctx.privacy.open_removed(args.ref, reason=args.reason, actor=ctx.actor)
        await _write(fd, document)
    print(
        f"opened removed content {view.ref} ({view.reason}); the reading is in the audit trail"
        + (f"; written to {out}" if out is not None else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def _register_removed(actions: SubParsers[argparse.ArgumentParser]) -> None:
    sub = _group(
        actions,
        "removed",
        summary="list and open removed content kept for an investigation",
        description="Removed content: the sealed copy of a person's data an erasure kept, or of the values a "
        "correction replaced while a legal hold covered the person. Kept for "
        "privacy.retention.removed_content, longer under a hold; opening one is audited.",
    )
    p = _action(
        sub,
        "list",
        _removed_list,
        summary="list removed content (never its content)",
        description="List the sealed archives, newest first: reference, whose (an erased person's tombstone), "
        "when, until when, why. Nothing is decrypted.",
    )
    p.add_argument("--user", metavar="NAME", help="only this person's (username; also after erasure)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = _action(
        sub,
        "open",
        _removed_open,
        summary="decrypt one archive (audited)",
        description="Decrypt one archive to standard output or --out FILE (a new file readable by you only). "
        "An audit record with your --reason is written before anything is shown.",
    )
    p.add_argument("ref", metavar="REF", help="the archive's reference (from `removed list`)")
    p.add_argument(
        "--reason", required=True, type=one_line, metavar="TEXT", help="why (e.g. the case or order; audited)"
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="write to this file instead of standard output")
    p.add_argument("--force", action="store_true", help="replace --out FILE if it exists")


# -- the parser ------------------------------------------------------------------------------------------


def _action(
    actions: SubParsers[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace, PrivacyContext], Awaitable[int]],
    *,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=summary, description=description, allow_abbrev=False)
    config_arg(parser)
    parser.set_defaults(func=privacy_runner(func))
    return parser


def _group(
    actions: SubParsers[argparse.ArgumentParser], name: str, *, summary: str, description: str
) -> SubParsers[argparse.ArgumentParser]:
    """A group of actions (``hold``, ``removed``); alone, it prints its help and exits 2."""
    group = actions.add_parser(name, help=summary, description=description)

    def usage(_args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return 2

    group.set_defaults(func=usage)
    return group.add_subparsers(dest=f"{name}_action", metavar="ACTION")


def _right(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="username or email address of the person")
    parser.add_argument(
        "--verified-by",
        required=True,
        type=one_line,
        metavar="TEXT",
        help="how you verified the person's identity (recorded with the request)",
    )
    parser.add_argument(
        "--law", choices=LAWS, help="the law the request falls under (default: privacy.default_law)"
    )


def _choice_args(parser: argparse.ArgumentParser, purpose: str) -> None:
    _right(parser)
    parser.add_argument("purpose", metavar="PURPOSE", help=purpose)
    parser.add_argument(
        "--reason", required=True, metavar="TEXT", help="why, e.g. how it reached you (kept in the register)"
    )


def _register_hold(actions: SubParsers[argparse.ArgumentParser]) -> None:
    sub = _group(
        actions,
        "hold",
        summary="place, release and list legal holds",
        description="A legal hold (a court or government order, or counsel's instruction) suspends the "
        "deletion of what it covers: one person's data, or a whole data class.",
    )

    p = _action(
        sub,
        "place",
        _hold_place,
        summary="place a legal hold",
        description="Place a legal hold on a person (--user) or a data class (--class). While it is active, "
        "neither an erasure nor the retention run deletes what it covers.",
    )
    p.add_argument(
        "reference", metavar="REFERENCE", help="the order's reference (unique, e.g. a case number)"
    )
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded with the hold)")
    covers = p.add_mutually_exclusive_group(required=True)
    covers.add_argument("--user", metavar="NAME", help="the person (username or email; also after erasure)")
    covers.add_argument("--class", dest="data_class", choices=_DATA_CLASSES, help="a whole data class")

    p = _action(
        sub,
        "release",
        _hold_release,
        summary="release a legal hold",
        description="Release an active legal hold. Held erasures are carried out and what the hold kept is "
        "deleted by the next retention run, if due.",
    )
    p.add_argument("reference", metavar="REFERENCE", help="the hold's reference")

    p = _action(
        sub,
        "carry",
        _hold_carry,
        summary="carry the live database's legal holds into a restored one",
        description="After a point-in-time restore (`gateway pgbackrest restore`), before a gateway runs on the "
        "restored database (--config): place again every hold the live database (--from-config) has and it "
        "lacks, and release the ones released since, each recorded in its audit trail. Refused (exit 1, "
        "nothing changed) when the restored database's audit trail shares no record with the live one. "
        "Also names the privacy requests opened since, to open again.",
    )
    p.add_argument(
        "--from-config",
        required=True,
        type=Path,
        metavar="FILE",
        help="the live deployment's config (its storage.url is the database to read the holds from)",
    )

    p = _action(
        sub,
        "list",
        _hold_list,
        summary="list legal holds",
        description="List the active legal holds (all of them with --all), newest first.",
    )
    p.add_argument("--all", action="store_true", help="include released holds")
    p.add_argument("--json", action="store_true", help="print JSON")


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway privacy …`` to the ``gateway`` command's sub-commands."""
    actions = command_group(
        sub,
        "privacy",
        help="data-subject requests, rights and legal holds",
        description="Carry out a person's privacy rights (export, rectification, restriction, closure, "
        "erasure, objection, consent withdrawal), read and update the request register, and manage legal "
        "holds.",
    )

    p = _action(
        actions,
        "requests",
        _requests,
        summary="list the request register",
        description="List data-subject requests, newest first (at most 200).",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--open", action="store_true", help="only open requests (received, verified, on hold)")
    which.add_argument("--overdue", action="store_true", help="only open requests past their due date")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _action(
        actions, "show", _show, summary="show one request", description="Show one request and its dates."
    )
    p.add_argument("ref", metavar="REF", help="the request's reference (PR-…)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _action(
        actions,
        "verify",
        _verify,
        summary="record that a requester's identity was verified",
        description="Record how the requester's identity was verified (with you as the verifier).",
    )
    p.add_argument("ref", metavar="REF", help="the request's reference (PR-…)")
    p.add_argument("--by", required=True, metavar="TEXT", help="how the identity was verified")

    p = _action(
        actions,
        "reject",
        _reject,
        summary="reject an open request",
        description="Close an open request as refused; the reason is what the person is told.",
    )
    p.add_argument("ref", metavar="REF", help="the request's reference (PR-…)")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why, in words the person can read")

    p = _action(
        actions,
        "export",
        _export,
        summary="export everything held about a person (JSON)",
        description="Export the person's data (the export.schema.json document) to --out FILE (a new file "
        "readable by you only) or to standard output. Recorded as an access request.",
    )
    _right(p)
    p.add_argument("--out", type=Path, metavar="FILE", help="write to this file instead of standard output")
    p.add_argument("--force", action="store_true", help="replace --out FILE if it exists")

    p = _action(
        actions,
        "rectify",
        _rectify,
        summary="correct a person's email or name",
        description="Correct the email address and/or display name (refused for accounts whose identity "
        "provider owns them).",
    )
    _right(p)
    p.add_argument("--email", metavar="E", help="the corrected email address")
    p.add_argument("--name", metavar="N", help="the corrected display name")

    p = _action(
        actions,
        "restrict",
        _restrict,
        summary="restrict processing (or lift the restriction)",
        description="Restrict processing of a person's data: no sign-in, sessions end, the data is kept "
        "unchanged. --lift ends the restriction.",
    )
    _right(p)
    p.add_argument("--lift", action="store_true", help="lift the restriction instead")

    p = _action(
        actions,
        "close",
        _close,
        summary="close a registration",
        description="Close the account: no sign-in from now; its data is deleted by the retention run "
        "after privacy.retention.registration unless reopened.",
    )
    _right(p)

    p = _action(
        actions,
        "erase",
        _erase,
        summary="erase a person now",
        description="Erase the person now: the account, its factors and sessions go, audit records no "
        "longer name them, what was removed is sealed for investigation. A legal hold suspends it (the "
        "account is restricted meanwhile). Asks to type the username unless --yes.",
    )
    _right(p)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = _action(
        actions,
        "object",
        _object,
        summary="record a person's objection to a purpose",
        description="Record an objection the person sent in (email, phone, letter) to a legitimate-interest "
        "purpose of privacy.purposes (geolocation, policy_analytics): as if they objected on their account "
        "page, it is no longer processed for them. Recorded as a completed objection request.",
    )
    _choice_args(p, "the objectable purpose (a name in privacy.purposes)")

    p = _action(
        actions,
        "withdraw",
        _withdraw,
        summary="record a person's consent withdrawal",
        description="Record the withdrawal of a consent the person sent in (email, phone, letter) for a "
        "consent-based purpose of privacy.purposes: as if they withdrew it on their account page, it is no "
        "longer processed for them. Recorded as a completed consent-withdrawal request.",
    )
    _choice_args(p, "the consent-based purpose (a name in privacy.purposes)")

    _register_hold(actions)
    _register_removed(actions)
