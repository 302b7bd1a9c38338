"""``gateway audit …``: read, verify, checkpoint and export the tamper-evident audit trail.

    gateway audit list   --config CFG [--kind K] [--actor A] [--subject S] [--outcome O]
                         [--since ISO] [--until ISO] [--limit N] [--json]
    gateway audit verify --config CFG [--checkpoint FILE]
    gateway audit checkpoint --config CFG
    gateway audit export --config CFG --since ISO --until ISO -o BUNDLE(.zip|dir)
    gateway audit verify-bundle BUNDLE [--config CFG] [--require-seal]

``verify`` walks the whole hash chain with the keyring and holds it against signed checkpoints (the
gateway's own ``<data_dir>/audit-checkpoints/checkpoints.jsonl`` and every ``--checkpoint`` file, e.g.
a file sink's log): a modified, deleted, inserted or reordered record breaks the chain; a record
appended or rewritten with database access only does not carry the chain key's MAC; a truncated
tail or a chain rewritten with fresh hashes no longer reaches a checkpoint. It names the first bad
record, what is wrong and what to do, and counts the records whose personal fields were erased (each
backed by a ``privacy.audit_erased`` record on the chain).

``export`` seals the bundle's claims (window, anchor, heads, record count, file sums) with a key from the
keyring when there is one; its window ends at the export time at the latest (a later ``--until`` is
clamped to it, and the output says so). ``verify-bundle`` prints the window it vouches for and whether
the seal authenticates it (with ``--config``), or says it is not authenticated (no keyring, or no seal:
bundles exported before seals or without the keyring, and bundles whose seal was removed, look the
same). ``--require-seal`` makes an unauthenticated window a failure; a sealed window ending after its
export time, or a seal under a key marked compromised that speaks for a time or head after the mark,
fails.

Exit codes: 0 verified / done, 1 the trail or bundle does not verify, or the database or keyring is
unusable, 2 invalid input (bad time, unreadable checkpoint file or bundle, bad configuration). User
errors are one message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.arguments import whole_number
from gateway.cli.harness import (
    EXIT_FAILURE,
    EXIT_OK,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    load_config,
    load_keyring,
    open_store,
    run,
)

if TYPE_CHECKING:
    from gateway.audit.bundle import BundleVerdict
    from gateway.audit.chain import ChainRecord, ChainReport
    from gateway.crypto.keyring import Keyring
    from gateway.settings.schema import Settings
    from gateway.store.db import Database

# Heavy imports (SQLAlchemy, cryptography, the settings loader) happen when an action runs, not when
# the parser is built: `gateway --help` must not pay for them.

__all__ = ["register"]


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%fZ")


def _time(text: str) -> datetime:
    """argparse type: ISO 8601, UTC when no offset is given (a date alone means its midnight)."""
    from gateway.audit.query import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _checkpoint_file(settings: Settings) -> Path:
    from gateway.audit.checkpoint import local_checkpoint_file

    return local_checkpoint_file(settings.data_dir)


def _keyring_if_present(settings: Settings) -> Keyring | None:
    """The keyring, or ``None`` if there is no keyring file (a trail that was never keyed)."""
    from gateway.crypto.keyring import keyring_path

    return load_keyring(settings, may_create=False) if keyring_path(settings).exists() else None


def _on_db(settings: Settings, action: Callable[[Database], Awaitable[int]]) -> int:
    """Run ``action`` on the database: the audit commands need neither the fast state nor sessions."""

    async def work() -> int:
        async with open_store(settings) as store:
            return await action(store.db)

    return run(work())


def _gather_checkpoints(
    settings: Settings, given: list[Path] | None
) -> tuple[list[Path], list[dict[str, Any]]]:
    """The local checkpoint file (if any) and every given one, each file once (by where it really is),
    and their checkpoints, each once: a checkpoint anywhere that the chain no longer reaches is evidence,
    and an attacker who can edit one copy rarely controls the SIEM's. (A first-day run's
    ``--checkpoint`` naming the local file counted its two checkpoints as four.)"""
    default = _checkpoint_file(settings)
    sources: list[Path] = []
    seen: set[Path] = set()
    for path in ([default] if default.exists() else []) + list(given or []):
        where = path.resolve()
        if where not in seen:
            seen.add(where)
            sources.append(path)
    checkpoints: list[dict[str, Any]] = []
    known: set[str] = set()
    for path in sources:
        for doc in _read_checkpoints(path):
            key = json.dumps(doc, sort_keys=True)
            if key not in known:
                known.add(key)
                checkpoints.append(doc)
    return sources, checkpoints


def _read_checkpoints(path: Path) -> list[dict[str, Any]]:
    from gateway.audit.checkpoint import load_checkpoints

    try:
        return load_checkpoints(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None


# -- actions ---------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    from gateway.audit.query import AuditFilter, find_records

    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UserError("--since must be before --until")
    settings = load_config(args)

    async def show(db: Database) -> int:
        where = AuditFilter(
            kind=args.kind or None,
            actor=args.actor,
            subject=args.subject,
            outcome=args.outcome,
            since=args.since,
            until=args.until,
        )
        rows = await find_records(db, where, limit=args.limit)
        if args.json:
            for record in rows:
                print(json.dumps(record.to_json(), ensure_ascii=False))
            return EXIT_OK
        if not rows:
            print("no audit records match")
            return EXIT_OK
        table = [
            ("SEQ", "ID", "TIME (UTC)", "KIND", "ACTOR", "SUBJECT", "IP", "OUTCOME", "DETAILS"),
            *(
                (str(r.seq), str(r.id), _when(r.at), r.kind, r.actor, r.subject, r.ip, r.outcome, r.details)
                for r in rows
            ),
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
        for row in table:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            print("  ".join([*cells, row[-1]]).rstrip())
        return EXIT_OK

    return _on_db(settings, show)


def _verify(args: argparse.Namespace) -> int:
    from gateway.audit.checkpoint import verify_trail

    settings = load_config(args)
    sources, checkpoints = _gather_checkpoints(settings, args.checkpoint)
    keyring = _keyring_if_present(settings)

    async def check(db: Database) -> int:
        verdict = await verify_trail(db, checkpoints, keyring=keyring)
        report = verdict.report
        if verdict.problem is not None:
            print(f"audit trail FAILED verification: {verdict.problem}")
            print(f"({report.records} record(s) verified before the problem)")
            return EXIT_FAILURE
        if report.unchecked:
            from gateway.crypto.keyring import keyring_path

            print(
                f"audit trail NOT verified: {report.unchecked} keyed record(s) cannot be checked without "
                f"the keyring (none at {keyring_path(settings)}); run this where the gateways' keyring is"
            )
            return EXIT_FAILURE
        _print_verified(report, checkpoints, sources)
        return EXIT_OK

    return _on_db(settings, check)


def _print_verified(report: ChainReport, checkpoints: list[dict[str, Any]], sources: list[Path]) -> None:
    from gateway.audit.checkpoint import latest_checkpoint

    print(f"audit trail OK: {report.records} record(s) verified")
    if report.first is not None and report.last is not None:
        print(f"  first: {_when(report.first.at)} (seq {report.first.seq}, id {report.first.id})")
        print(f"  last:  {_when(report.last.at)} (seq {report.last.seq}, id {report.last.id})")
    print(f"  head hash: {report.head_hash}")
    if report.legacy:
        print(
            f"  legacy: {report.legacy} record(s) from before the chain was keyed (SHA-256 only, chain "
            "version 1); only checkpoints protect them against a rewrite"
        )
    if report.keyed_from is not None and report.last is not None:
        print(
            f"  keyed: seq {report.keyed_from}..{report.last.seq}, HMAC under the chain key of keyring "
            f"key(s) {', '.join(sorted(report.key_ids))}"
        )
    if report.erasable_from is not None:
        print(
            f"  erasable: from seq {report.erasable_from} on (chain version 3); {report.erased} record(s) "
            f"with erased personal fields, backed by {report.erasures} erasure record(s)"
        )
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        print(
            f"  checkpoints: {len(checkpoints)} reached and signatures valid (from "
            f"{', '.join(map(str, sources))}); latest seq {latest['head_seq']} at {latest['at']}"
        )
    else:
        print(
            "  checkpoints: none given, so a truncated tail cannot be detected; pass --checkpoint "
            "FILE (checkpoints from your log sinks)"
        )


def _checkpoint(args: argparse.Namespace) -> int:
    from gateway.audit.checkpoint import Checkpointer

    settings = load_config(args)
    keyring = load_keyring(settings)
    directory = _checkpoint_file(settings).parent

    async def sign(db: Database) -> int:
        doc = await Checkpointer(db, keyring, directory=directory).checkpoint()
        print(json.dumps(doc, sort_keys=True))
        print(f"appended to {directory / 'checkpoints.jsonl'}", file=sys.stderr)
        return EXIT_OK

    return _on_db(settings, sign)


def _export(args: argparse.Namespace) -> int:
    from gateway.audit.bundle import BundleError, export_bundle
    from gateway.clock import SYSTEM_CLOCK

    if args.since >= args.until:
        raise UserError("--since must be before --until")
    if args.since >= SYSTEM_CLOCK.now():
        raise UserError("--since must be before now: the window ends at the export time at the latest")
    settings = load_config(args)
    _sources, checkpoints = _gather_checkpoints(settings, args.checkpoint)
    keyring = _keyring_if_present(settings)

    async def export(db: Database) -> int:
        try:
            summary = await export_bundle(
                db,
                since=args.since,
                until=args.until,
                checkpoints=checkpoints,
                out=args.output,
                now=SYSTEM_CLOCK.now(),
                keyring=keyring,
            )
        except BundleError as exc:
            raise UserError(str(exc)) from None
        span = _span(summary.first, summary.last)
        print(
            f"wrote {summary.path}: {summary.records} record(s){span}, {summary.checkpoints} checkpoint(s); "
            f"check it with `gateway audit verify-bundle {summary.path} --config …`"
        )
        print(f"  window: {_when(args.since)} .. {_when(summary.until)} (until exclusive)")
        if summary.clamped:
            print(
                f"  --until {_when(args.until)} is later than the export time: the window ends at the export "
                "time (records written after the export are not in the bundle; export again later for them)"
            )
        if summary.sealed_by is not None:
            print(
                f"  sealed with keyring key {summary.sealed_by}: its window, ends and record count are signed"
            )
        else:
            print(
                "  NOT sealed (no keyring here): verify-bundle will say its window is not authenticated",
                file=sys.stderr,
            )
        if summary.problem is not None:
            print(f"warning: the exported records do not verify: {summary.problem}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK

    return _on_db(settings, export)


def _span(first: ChainRecord | None, last: ChainRecord | None) -> str:
    if first is None or last is None:
        return ""
    return f" (seq {first.seq}..{last.seq}, {_when(first.at)} .. {_when(last.at)})"


def _verify_bundle(args: argparse.Namespace) -> int:
    from gateway.audit.bundle import BundleError, verify_bundle

    keyring = load_keyring(load_config(args), may_create=False) if args.config is not None else None
    try:
        verdict = verify_bundle(args.bundle, keyring=keyring, require_seal=args.require_seal)
    except BundleError as exc:
        raise UserError(str(exc)) from None
    if verdict.problem is not None:
        print(f"bundle FAILED verification: {verdict.problem}")
        return EXIT_FAILURE
    print(f"bundle OK: {verdict.records} record(s){_span(verdict.first, verdict.last)}, manifest matches")
    _print_window(verdict)
    if verdict.last is not None:
        print(f"  head hash: {verdict.last.record_hash}")
    signatures = (
        "signatures valid" if verdict.signatures_checked else "signatures NOT checked (pass --config)"
    )
    print(f"  checkpoints inside the range: {verdict.checkpoints_checked} match; {signatures}")
    if verdict.unchecked:
        print(
            f"  keyed records: {verdict.unchecked} linked correctly, their MACs NOT checked (pass --config "
            "where the gateways' keyring is)"
        )
    if verdict.erased:
        print(f"  erased: {verdict.erased} record(s) with erased personal fields")
    if verdict.erasures_unchecked:
        print(
            f"  erasures: {verdict.erasures_unchecked} erased or erasure record(s) whose counterpart lies "
            "outside the range: their backing NOT checked (`gateway audit verify` checks the whole chain)"
        )
    return EXIT_OK


def _print_window(verdict: BundleVerdict) -> None:
    """The window the verdict vouches for, and whether the seal authenticates it."""
    window = verdict.window
    if window is None:  # pragma: no cover - a verdict without a problem has read its window
        return
    records = (
        f"records seq {window.anchor_seq + 1}..{window.last_seq}"
        if window.last_seq > window.anchor_seq
        else "no records"
    )
    print(
        f"  window: {_when(window.since)} .. {_when(window.until)} (until exclusive): {records} after the "
        f"anchor seq {window.anchor_seq}; chain head at export seq {window.export_head_seq}"
    )
    if verdict.window_authenticated:
        print(
            f"  window authenticated: sealed at export with keyring key {verdict.sealed_by} (seal valid): these "
            "ends, the record count and the file sums are as exported"
        )
    elif verdict.seal == "unchecked":
        print(
            f"  window NOT authenticated: sealed with keyring key {verdict.sealed_by}, but the seal was not "
            "checked (pass --config where the gateways' keyring is)"
        )
    else:
        print(
            "  window NOT authenticated: the bundle carries no seal (exported before bundles were sealed or "
            "without the keyring, or its seal was removed): records cut from either end of the range, or a "
            "moved window, would not show; --require-seal refuses such a bundle"
        )


# -- parser ----------------------------------------------------------------------------------------


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway audit …`` to the ``gateway`` command's sub-commands.

    Args:
        sub: The sub-parsers action of the top-level parser. Every action sets ``func`` to a callable
            taking the parsed arguments and returning an exit code.
    """
    actions = command_group(
        sub,
        "audit",
        help="read, verify and export the tamper-evident audit trail",
        description="The audit trail is a hash chain of security events. Verify it against signed "
        "checkpoints, list records, and export evidence bundles that verify offline.",
    )

    def action(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=summary, description=description, allow_abbrev=False)

    p = action("list", "show audit records, newest first", "Show audit records, newest first.")
    config_arg(p)
    p.add_argument(
        "--kind", metavar="KIND", help="only this kind, e.g. signin.password, or a prefix: 'admin.*'"
    )
    p.add_argument("--actor", metavar="ACTOR", help="only what this actor did, e.g. user:alice")
    p.add_argument("--subject", metavar="SUBJECT", help="only records about this subject, e.g. alice")
    p.add_argument("--outcome", metavar="OUTCOME", help="only this outcome, e.g. failure")
    p.add_argument(
        "--since", type=_time, metavar="ISO", help="only records at or after this time (UTC if no offset)"
    )
    p.add_argument(
        "--until", type=_time, metavar="ISO", help="only records before this time (UTC if no offset)"
    )
    p.add_argument(
        "--limit",
        type=whole_number(1, 10_000),
        default=50,
        metavar="N",
        help="at most N records (default 50)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_list)

    p = action(
        "verify",
        "check the hash chain and that it reaches every checkpoint",
        "Walk the whole audit chain and check every record's hash (the keyed records' HMAC, with the "
        "keyring) and link, then check the chain still reaches each signed checkpoint "
        "(<data_dir>/audit-checkpoints/checkpoints.jsonl and every --checkpoint file). Names the first "
        "bad record. Exit 1 on any problem.",
    )
    config_arg(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        metavar="FILE",
        help="more checkpoints to hold the chain against: one JSON object, JSON lines, or a file "
        "sink's log (repeatable)",
    )
    p.set_defaults(func=_verify)

    p = action(
        "checkpoint",
        "sign a checkpoint of the chain head now",
        "Verify the chain, sign its head (HMAC-SHA256, key from the keyring), print it and append it to "
        "<data_dir>/audit-checkpoints/checkpoints.jsonl. Gateways do this every audit.checkpoint_interval.",
    )
    config_arg(p)
    p.set_defaults(func=_checkpoint)

    p = action(
        "export",
        "write an evidence bundle for a time range",
        "Write the records with SINCE <= time < UNTIL, the hash-chain proof, the checkpoints, a manifest "
        "of SHA-256 sums and a README as a zip file (-o NAME.zip) or a new directory.",
    )
    config_arg(p)
    p.add_argument("--since", type=_time, required=True, metavar="ISO", help="start (UTC if no offset)")
    p.add_argument(
        "--until",
        type=_time,
        required=True,
        metavar="ISO",
        help="end, exclusive (UTC if no offset); a time after now is clamped to the export time",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="BUNDLE", help="NAME.zip or a directory"
    )
    p.add_argument(
        "--checkpoint", type=Path, action="append", metavar="FILE", help="more checkpoints to include"
    )
    p.set_defaults(func=_export)

    p = action(
        "verify-bundle",
        "check an evidence bundle offline",
        "Check a bundle made by `gateway audit export`: manifest, every record hash, the chain links "
        "from the anchor, the checkpoints against the range and its window (with --config also the keyed "
        "records' MACs, the checkpoints' signatures and the seal that authenticates the window). Prints "
        "the window it vouches for and whether it is authenticated.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="the zip file or directory")
    config_arg(
        p,
        required=False,
        help_suffix="; needed to check keyed records' MACs, checkpoint signatures and the bundle's seal",
    )
    p.add_argument(
        "--require-seal",
        action="store_true",
        help="fail unless the bundle's seal verifies (needs --config): a bundle without one (exported "
        "before seals or without the keyring, or its seal removed) has an unauthenticated window",
    )
    p.set_defaults(func=_verify_bundle)
