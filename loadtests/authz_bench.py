"""Authorization benchmark: casbin's enforcer vs the compiled policy index, on generated policies.

For each policy size (default 1,000 / 10,000 / 100,000 lines, from ``loadtests.policygen``)::

    python -m loadtests.authz_bench [--sizes 1000,10000,100000] [--requests 20000] [--quick] [--json PATH]

it measures, per request, with ``time.perf_counter_ns``:

- ``casbin``: ``casbin.Enforcer.enforce`` on the whole policy, single-principal requests. casbin scans
  every rule, so it gets a *sample* of requests (``--casbin-requests``, fewer for larger policies);
  with 20-odd samples, its p99 is close to its maximum;
- ``index_miss``: ``PolicyIndex.decide`` called directly (no decision cache), after one warm-up pass
  (memoised role closures, regex cache), on principal-*set* requests (user, groups, ``authenticated``,
  sometimes a role), which is what the gateway asks;
- ``index_hit``: ``Authorizer.decide`` with every request already in the decision cache;
- ``build``: ``PolicyIndex.build`` time.

Prints a table and writes JSON (default ``loadtests/results/authz.json``). Exit codes: 0 ok; 2 bad
usage; 3 (full runs only) the goal was missed: index miss p99 under 100 µs at the largest size.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.authz.cache import Authorizer
from gateway.authz.index import PolicyIndex
from gateway.authz.model import casbin_enforcer
from loadtests.policygen import generate_policy, generate_requests

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "loadtests" / "results" / "authz.json"
DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (300, 1_000)
GOAL_MISS_P99_US = 100.0
# casbin's time grows with the policy: this many rule-evaluations' worth of samples per size.
CASBIN_BUDGET = 2_000_000

T = TypeVar("T")


def _percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    rank = max(1, math.ceil(q * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1000


def _summary(samples_ns: list[int]) -> dict[str, Any]:
    ordered = sorted(samples_ns)
    return {
        "samples": len(ordered),
        "p50_us": round(_percentile(ordered, 0.50), 2),
        "p99_us": round(_percentile(ordered, 0.99), 2),
        "max_us": round(ordered[-1] / 1000, 2),
    }


def _timed(call: Callable[[T], object], items: Sequence[T]) -> list[int]:
    clock = time.perf_counter_ns
    out: list[int] = []
    gc.collect()
    for item in items:
        start = clock()
        call(item)
        out.append(clock() - start)
    return out


def measure(lines: int, *, requests: int, casbin_requests: int | None, seed: int) -> dict[str, Any]:
    """All the numbers for one policy size."""
    generated = generate_policy(lines, seed=seed)
    rules = generated.rules

    start = time.perf_counter_ns()
    index = PolicyIndex.build(rules, 1)
    build_ms = (time.perf_counter_ns() - start) / 1e6

    set_requests = generate_requests(generated, requests, seed=seed + 1, principal_sets=True)
    for request in set_requests:  # warm-up: role closures memoised, regexes compiled
        index.decide(request.principals, request.route, request.method, request.path)
    miss = _timed(lambda r: index.decide(r.principals, r.route, r.method, r.path), set_requests)

    authorizer = Authorizer(index, max_entries=max(1, 2 * requests))
    for request in set_requests:
        authorizer.decide(request.principals, request.route, request.method, request.path)
    hit = _timed(lambda r: authorizer.decide(r.principals, r.route, r.method, r.path), set_requests)
    assert authorizer.cache.hits >= len(set_requests)

    start = time.perf_counter_ns()
    enforcer = casbin_enforcer(rules)
    casbin_build_ms = (time.perf_counter_ns() - start) / 1e6
    n_casbin = casbin_requests or max(20, min(1_000, CASBIN_BUDGET // max(1, len(rules.policies))))
    single = [
        (next(iter(r.principals)), r.route, r.path, r.method)
        for r in generate_requests(generated, n_casbin, seed=seed + 2)
    ]
    enforcer.enforce(*single[0])
    casbin = _timed(lambda r: enforcer.enforce(*r), single)

    result: dict[str, Any] = {
        "lines": len(rules),
        "p_rules": len(rules.policies),
        "g_rules": len(rules.links),
        "trie_patterns": index.stats.trie_patterns,
        "fallback_patterns": index.stats.fallback_patterns,
        "build_ms": round(build_ms, 1),
        "casbin_build_ms": round(casbin_build_ms, 1),
        "casbin": _summary(casbin),
        "index_miss": _summary(miss),
        "index_hit": _summary(hit),
    }
    result["speedup_p50_miss"] = round(
        result["casbin"]["p50_us"] / max(result["index_miss"]["p50_us"], 0.01), 1
    )
    return result


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'lines':>8} {'build ms':>9} {'casbin p50/p99 µs (n)':>27} {'miss p50/p99 µs':>17} "
        f"{'hit p50/p99 µs':>16} {'speedup':>8}"
    )
    out = [head, "-" * len(head)]
    for row in rows:
        c, m, h = row["casbin"], row["index_miss"], row["index_hit"]
        out.append(
            f"{row['lines']:>8} {row['build_ms']:>9.1f} "
            f"{c['p50_us']:>11.0f} /{c['p99_us']:>9.0f} ({c['samples']:>4}) "
            f"{m['p50_us']:>8.1f} /{m['p99_us']:>7.1f} {h['p50_us']:>7.2f} /{h['p99_us']:>7.2f} "
            f"{row['speedup_p50_miss']:>8.0f}"
        )
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.authz_bench",
        description="casbin.Enforcer vs the compiled policy index (miss and cache hit) on generated policies.",
    )
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="policy sizes in lines")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per size for the index")
    parser.add_argument(
        "--casbin-requests",
        type=int,
        default=None,
        help="casbin samples per size (default: fewer for larger)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help=f"smoke run: sizes {QUICK_SIZES}, few requests")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        sizes: tuple[int, ...] = QUICK_SIZES
        requests, casbin_requests = 2_000, args.casbin_requests or 30
    else:
        try:
            sizes = tuple(int(size) for size in args.sizes.split(","))
        except ValueError:
            print(f"--sizes: not a list of integers: {args.sizes!r}", file=sys.stderr)
            return 2
        requests, casbin_requests = args.requests, args.casbin_requests
    if not sizes or min(sizes) < 10 or requests < 1:
        print("--sizes must be at least 10 lines and --requests at least 1", file=sys.stderr)
        return 2

    rows = []
    for lines in sizes:
        print(f"measuring {lines} lines …", file=sys.stderr, flush=True)
        rows.append(measure(lines, requests=requests, casbin_requests=casbin_requests, seed=args.seed))
    largest = rows[-1]
    met = largest["index_miss"]["p99_us"] < GOAL_MISS_P99_US
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "quick": args.quick,
        "requests": requests,
        "sizes": rows,
        "goal": {"index_miss_p99_us_below": GOAL_MISS_P99_US, "at_lines": largest["lines"], "met": met},
    }
    print(_table(rows))
    print(
        "casbin: single-principal requests on the whole policy (sampled); index: principal sets "
        f"({requests} requests). Goal miss p99 < {GOAL_MISS_P99_US:.0f} µs at {largest['lines']} lines: "
        + ("met" if met else "MISSED")
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0 if met or args.quick else 3


if __name__ == "__main__":
    sys.exit(main())
