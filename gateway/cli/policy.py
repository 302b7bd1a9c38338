"""``gateway policy …``: check, test, store, inspect and roll back the access policy.

    gateway policy validate FILE
    gateway policy test FILE --cases CASES
    gateway policy explain (--file FILE | --config CFG) --principal P… --route R --method M --path PATH
    gateway policy diff A B                      two files
    gateway policy diff FILE --config CFG        the stored policy against a file
    gateway policy import FILE --config CFG --reason TEXT [--force]
    gateway policy export --config CFG [--version N] [-o FILE]
    gateway policy history --config CFG [--limit N]
    gateway policy restore N --config CFG --reason TEXT [--force]

``validate``, ``test``, ``explain --file`` and ``diff A B`` work on files alone: they need no
configuration and no database, so they run in CI next to the policy's source. The others work on the
stored policy through the configured database; a change is versioned, audited and broadcast to the
running gateways at once (through Redis or the node's shared state file; a gateway on
``state.embedded: memory`` finds it by polling within ``policy.poll_interval``).

``explain`` and ``test`` canonicalise the path first, exactly as the gateway does before it asks the
policy, so their answer is the gateway's answer.

Exit codes: 0 done (``diff``: no difference), 1 findings or failures (validation errors, failing test
cases, a rejected change; ``diff``: the policies differ; the database unreachable), 2 invalid input
(unreadable or malformed file, unknown version, bad arguments or configuration). User errors are one
message on stderr naming the file and line, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.cli.arguments import whole_number
from gateway.cli.harness import (
    EXIT_FAILURE,
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
    user_errors,
)
from gateway.cli.terminal import one_line
from gateway.reasons import reason_problem
from gateway.store.ids import MAX_ID, BadId, parse_id

if TYPE_CHECKING:
    from gateway.authz.cases import Case
    from gateway.authz.index import PolicyIndex
    from gateway.authz.rules import PolicyRules
    from gateway.authz.store import PolicyStore
    from gateway.authz.validate import Finding
    from gateway.settings.schema import Settings

# Heavy imports (SQLAlchemy, casbin, the settings loader) happen when an action runs, not when the
# parser is built: `gateway --help` must not pay for them.

__all__ = ["register"]

# Stored versions start at 1; an index built from a file carries this one.
_FILE_VERSION: Final = 0


@dataclass(slots=True)
class _Context:
    store: PolicyStore
    settings: Settings
    actor: str


# -- wiring ----------------------------------------------------------------------------------------------


def _user_errors(*, stored: bool) -> tuple[type[Exception], ...]:
    from gateway.authz.rules import PolicyError

    if not stored:
        # The offline commands never import the store (and with it SQLAlchemy and redis): a second
        # saved on every `gateway policy validate` in an editor hook or CI.
        return (PolicyError,)
    from gateway.authz.store import RuleExists, RuleNotFound, UnknownVersion

    return (PolicyError, RuleExists, RuleNotFound, UnknownVersion)


def _offline(action: Action) -> Action:
    def command(args: argparse.Namespace) -> int:
        with user_errors(*_user_errors(stored=False)):
            return action(args)

    return command


async def _with_context(settings: Settings, action: Callable[[_Context], Awaitable[int]]) -> int:
    from gateway.authz.store import PolicyStore
    from gateway.clock import SYSTEM_CLOCK

    # The fast state carries the change to the running gateways at once (the broadcast); the keyring
    # keys the change's audit record.
    async with open_store(settings, fast=True, keyring=True) as store:
        policies = PolicyStore(store.db, store.fast, store.audit(), SYSTEM_CLOCK)
        return await action(_Context(store=policies, settings=settings, actor=operator()))


def _online(action: Callable[[argparse.Namespace, _Context], Awaitable[int]]) -> Action:
    def command(args: argparse.Namespace) -> int:
        errors = _user_errors(stored=True)
        settings = load_config(args)
        return run(_with_context(settings, lambda ctx: action(args, ctx)), errors=errors)

    return command


# -- reading files ---------------------------------------------------------------------------------------


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _read_policy(path: Path) -> PolicyRules:
    from gateway.authz.rules import parse_policy

    return parse_policy(_read_text(path, "policy file"), source=str(path))


def _finding_text(finding: Finding, source: object) -> str:
    where = f"{source}:{finding.line}" if finding.line is not None else f"{source}"
    return f"{where}: {finding.severity} [{finding.code}] {finding.message}"


async def _stored_change(change: Awaitable[int], source: object) -> int:
    """Run a change; a rejection lists its findings (naming ``source`` and the line) and exits 1."""
    from gateway.authz.store import PolicyRejected

    try:
        return await change
    except PolicyRejected as exc:
        errors = [f for f in exc.findings if f.severity == "error"]
        print(
            f"error: {source}: {_plural(len(errors), 'error')}; nothing was stored "
            "(--force stores it anyway)",
            file=sys.stderr,
        )
        for finding in exc.findings:
            print(f"  {_finding_text(finding, source)}", file=sys.stderr)
        raise Failed from None


# -- test cases ------------------------------------------------------------------------------------------


def _load_cases(path: Path) -> list[Case]:
    from gateway.authz.cases import CasesInvalid, parse_cases

    text = _read_text(path, "cases file")
    try:
        return parse_cases(text, source=str(path), fmt="csv" if path.suffix.lower() == ".csv" else "yaml")
    except CasesInvalid as exc:
        raise UserError(exc.detail) from None


def _canonical(raw: bytes) -> str:
    from gateway.pipeline.canonical import canonicalize

    return canonicalize(raw).path


# -- formatting ------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # One line per row whatever a cell holds (a stored reason with a line break forged a row).
    rows = [[one_line(cell) for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _unified(a: str, b: str, a_name: str, b_name: str) -> str:
    return "".join(
        difflib.unified_diff(
            a.splitlines(keepends=True), b.splitlines(keepends=True), fromfile=a_name, tofile=b_name
        )
    )


# -- offline actions -------------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from gateway.authz.rules import PolicyError
    from gateway.authz.validate import validate

    path: Path = args.file
    try:
        rules = _read_policy(path)
    except PolicyError as exc:
        # A malformed line is this command's finding, not a usage error.
        where = f"{exc.source}:{exc.line}" if exc.line is not None else exc.source
        print(f"{where}: error: {exc.detail}")
        print(f"{path}: malformed; fix this line first (nothing else was checked)")
        return EXIT_FAILURE
    findings = validate(rules)
    for finding in findings:
        print(_finding_text(finding, path))
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    summary = (
        f"{path}: {_plural(len(rules.policies), 'rule')}, {_plural(len(rules.links), 'role grant')}; "
        f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    )
    print(summary if findings else f"{summary}: OK")
    return EXIT_FAILURE if errors else EXIT_OK


def _test(args: argparse.Namespace) -> int:
    from gateway.authz.cases import failures, run_cases
    from gateway.authz.index import PolicyIndex

    rules = _read_policy(args.file)
    cases = _load_cases(args.cases)
    index = PolicyIndex.build(rules, version=_FILE_VERSION)
    failed = failures(run_cases(index, cases, canonicalize=_canonical))
    rows = [
        [
            result.case.where + (f" {result.case.name}" if result.case.name else ""),
            " ".join(sorted(result.case.principals)),
            f"{result.case.method} {result.case.route} {result.case.path}",
            result.expected,
            f"{result.got} [{result.outcome.reason}]",
            result.outcome.explanation,
        ]
        for result in failed
    ]
    if rows:
        print(_table(["CASE", "PRINCIPALS", "REQUEST", "EXPECTED", "GOT", "WHY"], rows))
    passed = len(cases) - len(rows)
    print(
        f"{_plural(len(cases), 'case')}: {passed} passed, {len(rows)} failed "
        f"({args.cases} against {args.file})"
    )
    return EXIT_FAILURE if rows else EXIT_OK


def _print_explanation(
    index: PolicyIndex, principals: frozenset[str], route: str, method: str, path: str
) -> None:
    from gateway.authz.cases import decide

    outcome = decide(index, principals, route, method, path, canonicalize=_canonical)
    shown = outcome.path if outcome.path == path else f"{outcome.path} (canonical form of {path})"
    print(f"request:    {method} {shown} on route {route!r}")
    for principal in sorted(principals):
        roles = sorted(index.roles_of(principal) - {principal})
        print(f"principal:  {principal}" + (f" (roles: {', '.join(roles)})" if roles else ""))
    print(f"decision:   {outcome.explanation}")


def _explain_file(args: argparse.Namespace) -> int:
    from gateway.authz.index import PolicyIndex

    index = PolicyIndex.build(_read_policy(args.file), version=_FILE_VERSION)
    _print_explanation(index, frozenset(args.principal), args.route, args.method, args.path)
    return EXIT_OK


def _diff_files(args: argparse.Namespace) -> int:
    a, b = _read_policy(args.a), _read_policy(args.b)
    text = _unified(a.to_csv(), b.to_csv(), str(args.a), str(args.b))
    return _print_diff(text, f"{args.a} and {args.b}")


def _print_diff(text: str, what: str) -> int:
    if not text:
        print(f"no difference between {what}")
        return EXIT_OK
    sys.stdout.write(text)
    return EXIT_FAILURE


# -- actions on the stored policy ------------------------------------------------------------------------


def _no_broadcast_note(ctx: _Context) -> None:
    from gateway.store.fast import shares_state

    # Redis and the node's shared state file carry the broadcast to every running gateway; only a
    # gateway on state.embedded: memory cannot hear it from this process.
    if not shares_state(ctx.settings):
        print(
            "note: state.embedded is memory, so the running gateway learns of the change by polling "
            f"(within policy.poll_interval, {ctx.settings.policy.poll_interval:g}s).",
            file=sys.stderr,
        )


async def _import(args: argparse.Namespace, ctx: _Context) -> int:
    rules = _read_policy(args.file)
    before = await ctx.store.version()
    version = await _stored_change(
        ctx.store.replace(rules, actor=ctx.actor, reason=args.reason, force=args.force), args.file
    )
    if version == before:
        print(f"{args.file}: same as the stored policy; version {version} stays current")
        return EXIT_OK
    info = await ctx.store.describe(version)
    print(
        f"imported {args.file} as version {version} "
        f"(+{info.added} -{info.removed}, {_plural(info.lines, 'line')})"
    )
    _no_broadcast_note(ctx)
    return EXIT_OK


async def _export(args: argparse.Namespace, ctx: _Context) -> int:
    stored = await (ctx.store.get(args.version) if args.version is not None else ctx.store.current())
    if stored.version == 0:
        print("note: no policy is stored (every non-public request is denied)", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(stored.csv)
    else:
        try:
            args.output.write_text(stored.csv, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{args.output}: cannot write: {exc.strerror or exc}") from None
        print(f"wrote version {stored.version} to {args.output}", file=sys.stderr)
    return EXIT_OK


async def _diff_stored(args: argparse.Namespace, ctx: _Context) -> int:
    rules = _read_policy(args.a)
    stored = await ctx.store.current()
    text = _unified(stored.csv, rules.to_csv(), f"stored version {stored.version}", str(args.a))
    return _print_diff(text, f"stored version {stored.version} and {args.a}")


async def _explain_stored(args: argparse.Namespace, ctx: _Context) -> int:
    from gateway.authz.index import PolicyIndex

    stored = await ctx.store.current()
    index = PolicyIndex.build(stored.rules, version=stored.version)
    _print_explanation(index, frozenset(args.principal), args.route, args.method, args.path)
    return EXIT_OK


async def _history(args: argparse.Namespace, ctx: _Context) -> int:
    entries = await ctx.store.history(args.limit)
    if not entries:
        print("no policy stored yet")
        return EXIT_OK
    rows = [
        [
            str(e.version),
            e.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            e.actor,
            f"+{e.added} -{e.removed}",
            str(e.lines),
            e.reason + (f" (restored from {e.restored_from})" if e.restored_from is not None else ""),
        ]
        for e in entries
    ]
    print(_table(["VERSION", "CREATED", "ACTOR", "CHANGE", "LINES", "REASON"], rows))
    return EXIT_OK


async def _restore(args: argparse.Namespace, ctx: _Context) -> int:
    before = await ctx.store.version()
    version = await _stored_change(
        ctx.store.restore(args.version, actor=ctx.actor, reason=args.reason, force=args.force),
        f"version {args.version}",
    )
    if version == before:
        print(f"version {version} already has the policy of version {args.version}; nothing changed")
        return EXIT_OK
    info = await ctx.store.describe(version)
    print(f"restored version {args.version} as version {version} (+{info.added} -{info.removed})")
    _no_broadcast_note(ctx)
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    if args.b is not None:
        return _offline(_diff_files)(args)
    return _online(_diff_stored)(args)


def _explain(args: argparse.Namespace) -> int:
    if args.file is not None:
        return _offline(_explain_file)(args)
    return _online(_explain_stored)(args)


# -- the parser ------------------------------------------------------------------------------------------


def _version_number(text: str) -> int:
    # The same check as the admin API: a number beyond the id column's range reached the database,
    # whose refusal read as "store unavailable".
    try:
        return parse_id(text, what="version")
    except BadId:
        raise argparse.ArgumentTypeError(
            f"not a version number: {text!r} (versions start at 1 and end at {MAX_ID})"
        ) from None


def _reason(text: str) -> str:
    problem = reason_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text.strip()


def _reason_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        required=True,
        type=_reason,
        metavar="TEXT",
        help="why, one line (kept in the history and the audit trail)",
    )


def _force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true", help="store the policy even when validation reports errors"
    )


def _request_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--principal",
        "-p",
        action="append",
        required=True,
        metavar="P",
        help="a principal the request speaks for: user:NAME, group:NAME, a role, authenticated "
        "(repeat for each; a signed-in session has at least user:NAME and authenticated)",
    )
    parser.add_argument("--route", "-r", required=True, metavar="R", help="the route name")
    parser.add_argument("--method", "-m", required=True, metavar="M", help="the HTTP method (GET, POST, …)")
    parser.add_argument(
        "--path", required=True, metavar="PATH", help="the request path (canonicalised like the gateway does)"
    )


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway policy …`` to the ``gateway`` command's sub-commands.

    Args:
        sub: The sub-parsers action of the top-level parser. Every action sets ``func`` to a callable
            taking the parsed arguments and returning an exit code.
    """
    actions = command_group(
        sub,
        "policy",
        help="validate, test, store, explain and roll back the access policy",
        description="Work with the casbin access policy: check and test files offline, import them into "
        "the database as a new version, explain decisions, and restore earlier versions.",
    )

    def action(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=summary, description=description, allow_abbrev=False)

    p = action(
        "validate",
        "check a policy file",
        "Parse a policy file and check it (unknown roles, unreachable rules, shadowed allows, …) and "
        "explain path patterns that cover less or more than they seem to: a trailing '/*' is the path "
        "and everything below it ('/admin/*' covers '/admin', never '/administrator'), while "
        "'/admin*', '/admin/', '/admin/.*' or a deny on plain '/admin' are not the admin area. "
        "Prints each finding with its line. Exit 1 if there are errors. Needs no configuration.",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the policy (casbin CSV)")
    p.set_defaults(func=_offline(_validate))

    p = action(
        "test",
        "run expected decisions against a policy file",
        "Decide every case of CASES with the policy in FILE and compare with the expected answer. "
        "CASES is YAML (a list of mappings, or {cases: [...]}) or CSV with a header row; each case has "
        "principals (a list, or names separated by spaces or commas), route, method, path, expect "
        "(allow or deny) and optionally reason (policy-allow, policy-deny, no-matching-rule, no-policy, "
        "bad-path) and name. Exit 1 if any case fails. Needs no configuration.",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the policy (casbin CSV)")
    p.add_argument(
        "--cases", required=True, type=Path, metavar="CASES", help="the test cases (.yaml or .csv)"
    )
    p.set_defaults(func=_offline(_test))

    p = action(
        "explain",
        "show which rule allows or denies a request",
        "Decide one request with the stored policy (--config) or a file (--file) and print the deciding "
        "rule with its line, the roles each principal reaches, and the policy version.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--file", "-f", type=Path, metavar="FILE", help="decide with this policy file")
    config_arg(p, help_suffix="; decides with the stored policy")
    _request_args(p)
    p.set_defaults(func=_explain)

    p = action(
        "diff",
        "compare the stored policy with a file, or two files",
        "Show a unified diff of the rules: `diff FILE --config CFG` compares the stored policy with "
        "FILE, `diff A B` two files. Exit 0 when they are the same, 1 when they differ.",
    )
    p.add_argument("a", type=Path, metavar="FILE", help="a policy file")
    p.add_argument("b", type=Path, nargs="?", metavar="FILE2", help="a second policy file")
    config_arg(p)
    p.set_defaults(func=_diff)

    p = action(
        "import",
        "store a policy file as the new version",
        "Parse and validate FILE and store it as a new version of the policy (a no-op when it equals "
        "the stored one). Running gateways switch to it at once.",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the policy (casbin CSV)")
    config_arg(p)
    _reason_arg(p)
    _force_arg(p)
    p.set_defaults(func=_online(_import))

    p = action(
        "export",
        "print the stored policy",
        "Write the stored policy (the current version, or --version N) as casbin CSV.",
    )
    config_arg(p)
    p.add_argument("--version", type=_version_number, metavar="N", help="an earlier version")
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=_online(_export))

    p = action(
        "history",
        "list the stored versions",
        "List the latest versions of the policy: when, by whom, why, and how many rules changed.",
    )
    config_arg(p)
    p.add_argument(
        "--limit",
        type=whole_number(1, 10_000),
        default=20,
        metavar="N",
        help="at most N versions (default 20)",
    )
    p.set_defaults(func=_online(_history))

    p = action(
        "restore",
        "make an earlier version current again",
        "Store a new version whose policy is that of version N. History is never rewritten: the "
        "restore is itself a version, and can be undone the same way.",
    )
    p.add_argument("version", type=_version_number, metavar="N", help="the version to bring back")
    config_arg(p)
    _reason_arg(p)
    _force_arg(p)
    p.set_defaults(func=_online(_restore))
