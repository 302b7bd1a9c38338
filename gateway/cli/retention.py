"""``gateway retention …``: what the retention rules would delete and when, and the purge now.

    gateway retention plan [--at ISO-DATE] [--json]
    gateway retention run [--force] [--json]

``plan`` lists per data class (``privacy.retention``) how many items are due now (or at ``--at``, to
look ahead), the oldest one's due date, the next ones and when they fall due, and what an active legal
hold keeps, naming the hold. It changes nothing.

``run`` purges what is due now, as the gateways' workers do once per ``retention.interval``: it claims
the period's run first, so a period the gateways already purged is not purged again unless ``--force``
(recorded as ``<period>/manual-<n>``). It prints each class as it is done and a summary.

Exit codes: 0 done (or nothing to do), 1 a class could not be purged (the store failed; the rest ran),
2 invalid input or configuration. Every action takes ``--config FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.cli.harness import EXIT_FAILURE, EXIT_OK, SubParsers, UserError, command_group, config_arg
from gateway.cli.privacy_services import PrivacyContext, privacy_runner, when

if TYPE_CHECKING:
    from gateway.privacy.retention import ClassPlan, ClassRun, Plan

__all__ = ["parse_at", "register"]


def parse_at(text: str) -> datetime:
    """``--at``: an ISO 8601 date or date and time; without a zone it is UTC.

    Raises:
        UserError: Not an ISO 8601 date, or outside the years a plan looks at (1970 to 8999).
    """
    from gateway.audit.query import parse_time

    try:
        at = parse_time(text)  # the audit filter's reading: UTC unless it says, the calendar's edges refused
    except ValueError as exc:
        raise UserError(f"--at: {exc}") from None
    from gateway.privacy.retention import plan_moment_problem

    problem = plan_moment_problem(at)
    if problem is not None:
        raise UserError(f"--at {text[:40]!r}: {problem}")
    return at


def _held(held: dict[str, int]) -> str:
    return ", ".join(f"{ref} ({n})" for ref, n in sorted(held.items())) or "-"


def _plan_text(plan: Plan) -> str:
    lines = [f"retention plan at {when(plan.at)}"]
    for c in plan.classes:
        lines += _class_plan_lines(c)
    if plan.resumable:
        lines.append(
            f"held erasures whose hold was released, carried out by the run: {', '.join(plan.resumable)}"
        )
    return "\n".join(lines)


def _kept(keep: timedelta) -> str:
    """How long a class is kept, in the unit that reads: "180 days", "a day", "36 hours", "10 minutes",
    "a second" (an attack run's one-second retention was told as "kept 1.15741e-05 days")."""
    from gateway.clock import span_words

    seconds = keep.total_seconds()
    if seconds < 0.5:
        return "0 seconds"
    if seconds >= _DAY and seconds % _DAY == 0:
        days = int(seconds // _DAY)
        return "a day" if days == 1 else f"{days} days"
    if seconds >= _DAY and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} hours"
    if seconds >= _DAY:
        return f"{seconds / _DAY:.1f} days"
    return span_words(seconds)


_DAY = 86400


def _class_plan_lines(c: ClassPlan) -> list[str]:
    from gateway.privacy.retention import VERBS
    from gateway.privacy.retention_rules import NEXT_SHOWN

    s = c.survey
    head = f"{c.data_class} (kept {_kept(c.keep)}; {VERBS[c.data_class]} when due)"
    if c.error is not None:
        return [head, f"  error: {c.error}"]
    lines = [
        head,
        f"  due now: {len(s.due)}" + (f" (oldest due {when(s.oldest_due)})" if s.oldest_due else ""),
    ]
    lines += [f"    {when(item.due_at)}  {item.label}" for item in s.due[:NEXT_SHOWN]]
    if len(s.due) > NEXT_SHOWN:
        lines.append(f"    ... and {len(s.due) - NEXT_SHOWN} more")
    if s.held:
        lines.append(f"  kept by legal holds: {_held(s.held)}")
    if s.upcoming:
        lines.append(f"  next ({s.later} not due yet):")
        lines += [f"    {when(item.due_at)}  {item.label}" for item in s.upcoming]
    else:
        lines.append("  next: nothing else")
    return lines


async def _plan(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    at = parse_at(args.at) if args.at is not None else ctx.retention.clock.now()
    plan = await ctx.retention.plan(at)
    print(json.dumps(plan.to_json(), indent=2) if args.json else _plan_text(plan))
    return EXIT_OK


def _progress_line(result: ClassRun) -> str:
    from gateway.privacy.retention import VERBS

    if result.error is not None:
        return f"{result.data_class}: failed: {result.error}"
    line = f"{result.data_class}: {result.done} {VERBS[result.data_class]}"
    if result.parts:
        line += " (" + ", ".join(f"{kind.replace('_', ' ')}: {n}" for kind, n in result.parts.items()) + ")"
    return line + (f"; kept by legal holds: {_held(result.held)}" if result.held else "")


async def _run(args: argparse.Namespace, ctx: PrivacyContext) -> int:
    def progress(result: ClassRun) -> None:
        if not args.json:
            print(_progress_line(result), flush=True)

    report = await ctx.retention.run(
        ctx.retention.clock.now(), ctx.actor, force=args.force, progress=progress
    )
    if report is None:
        print(
            "this period's retention run was done already (by a gateway or another command); "
            "--force runs it again",
            file=sys.stderr,
        )
        return EXIT_OK
    summary: dict[str, Any] = report.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"held erasures carried out: {report.resumed}"
            + (f" (failed: {report.resume_error})" if report.resume_error else "")
        )
        print(f"run {report.period} recorded ({'ok' if report.ok else 'with failures'})")
    return EXIT_OK if report.ok else EXIT_FAILURE


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway retention …`` to the ``gateway`` command's sub-commands."""
    actions = command_group(
        sub,
        "retention",
        help="what the retention rules delete, and when",
        description="List what the privacy.retention rules would delete and when (plan), or purge what "
        "is due now (run). Legal holds keep what they cover.",
    )
    p = actions.add_parser(
        "plan",
        help="list what would be deleted and when",
        description="Per data class: how many items are due now (or at --at), the oldest one's due date, "
        "the next ones and when they fall due, and what legal holds keep. Changes nothing.",
    )
    config_arg(p)
    p.add_argument("--at", metavar="ISO-DATE", help="plan at this moment instead of now (UTC unless it says)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=privacy_runner(_plan))

    p = actions.add_parser(
        "run",
        help="purge what is due now",
        description="Purge what is due now, class by class, as the gateways do once per "
        "retention.interval. A period already purged is skipped unless --force.",
    )
    config_arg(p)
    p.add_argument("--force", action="store_true", help="run even if this period's run was done")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    p.set_defaults(func=privacy_runner(_run))
