"""Scale: one worker's memory and hot-path cost with 100,000 live sessions and 100,000 policy lines.

::

    python -m loadtests.scale [--sessions 100000] [--policy-lines 100000] [--state redis|memory]
                              [--requests 20000] [--json PATH]

Drives the data plane in-process (:mod:`loadtests.inprocess`: one worker's services, the same
``GET /__echo/bytes/256`` through cookie → session → RBAC → identity headers → proxy → access log) in
two configurations, each in a process of its own (a process's resident set never shrinks, so one
process per configuration):

- ``small``: the benchmark's setup, a one-line policy and one session;
- ``large``: ``--policy-lines`` generated rules (:mod:`loadtests.policygen`: role hierarchy, groups,
  deny rules, patterns) plus the route's allow line, and ``--sessions`` live sessions of the policy's
  users, each with one of its roles. The measured requests go round the sessions (a new session for
  every request until all were used), so the session cache (10,000 entries) and the decision cache
  mostly miss: the worst case, where every request reads its session from the shared state and asks
  the policy index.

For each it prints the resident set (VmRSS) after start, after the sessions were created and after
the requests, and the CPU time per request (process time; compare the two configurations of the same
run, this machine's speed varies between minutes). With ``--state redis`` (the several-replica
deployment) the sessions live in Redis and the worker's memory is its caches and the policy; with
``--state memory`` they live in the worker (the in-process store of one-process deployments).

Exit codes: 0 done; 1 a configuration's process failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["main"]

_REDIS = "redis://127.0.0.1:6379/15"
_COOKIE = "gateway_session"
# Sessions browsing at once in the hot-path measurement (within the session cache's 10,000).
_WORKING_SET = 1_000


def _rss_mib() -> float:
    """This process's resident set in MiB (after a full collection, so garbage does not count)."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _policy_text(lines: int) -> tuple[str, list[str], list[str]]:
    """The policy file's text, the users (bare names) and roles sessions are given."""
    if lines <= 1:
        return "p, authenticated, *, /*, *, allow\n", ["bench"], []
    from gateway.authz.rules import PolicyRules
    from gateway.authz.validate import Severity, validate
    from loadtests.policygen import generate_policy

    generated = generate_policy(lines - 1, seed=7)
    # The generator also writes rules the gateway refuses to load (casbin's pitfalls, for the
    # differential tests): leave those out, a few hundred of 100,000.
    refused = {
        f.rule for f in validate(generated.rules) if f.severity is Severity.ERROR and f.rule is not None
    }
    # A deny on every app ("*") can shut the measured route for everyone (one of 100,000 generated
    # lines denies "authenticated" all of "/*"): the requests must reach the upstream.
    kept = PolicyRules.from_rules(
        rule for rule in generated.rules if rule not in refused and not (rule.is_deny and rule.dom == "*")
    )
    text = "p, authenticated, echo, /*, *, allow\n" + kept.to_csv()
    users = [user.removeprefix("user:") for user in generated.users]
    return text, users, list(generated.roles)


async def _sessions(services: Any, count: int, users: list[str], roles: list[str]) -> list[bytes]:
    """Create ``count`` sessions (users and roles drawn from the policy); return their cookies."""
    from gateway.identity.levels import AuthLevel, Factor, FactorUse

    rng = random.Random(11)
    cookies: list[bytes] = []
    now = time.time()
    for i in range(count):
        user = users[i % len(users)]
        session_id, _ = await services.identity.sessions.create(
            user_id=1 + i % len(users),
            username=user,
            level=AuthLevel.ONE_FACTOR,
            factors=[FactorUse(Factor.PASSWORD, now)],
            roles=[rng.choice(roles)] if roles else [],
            ip="127.0.0.1",
            user_agent="scale",
            host="127.0.0.1",
        )
        cookies.append(f"{_COOKIE}={session_id}".encode())
    return cookies


async def _measure(policy_lines: int, sessions: int, requests: int, state: str) -> dict[str, Any]:
    from gateway.root.apps import worker_app
    from loadtests.inprocess import Upstream, drive, lifespan, worker_config

    text, users, roles = _policy_text(policy_lines)
    store: dict[str, Any] = {"embedded": "memory"}
    if state == "redis":
        store = {"redis_url": _REDIS, "namespace": f"scale{time.time_ns()}:"}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    result: dict[str, Any] = {"policy_lines": policy_lines, "sessions": sessions, "state": state}
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        result["rss_before_start_mib"] = _rss_mib()
        plane = worker_app(worker_config(Path(tmp), port, policy_text=text, state=store))
        started = time.perf_counter()
        await lifespan(plane, "startup")
        result["start_s"] = time.perf_counter() - started
        try:
            result["rss_started_mib"] = _rss_mib()
            started = time.perf_counter()
            cookies = await _sessions(plane.running.services, sessions, users, roles)
            result["create_sessions_s"] = time.perf_counter() - started
            result["rss_sessions_mib"] = _rss_mib()
            tally: Counter[int] = Counter()
            # Every session's first request (no cached session, decision or assertion for it yet).
            cpu = time.process_time()
            await drive(plane, cookies, len(cookies), tally)
            result["first_cpu_us_per_request"] = (time.process_time() - cpu) / len(cookies) * 1e6
            result["rss_after_first_mib"] = _rss_mib()
            # Then the hot path: requests of the most recently active sessions, as browsing is.
            recent = cookies[-_WORKING_SET:]
            await drive(plane, recent, min(2_000, requests), tally)
            cpu = time.process_time()
            await drive(plane, recent, requests, tally)
            result["cpu_us_per_request"] = (time.process_time() - cpu) / requests * 1e6
            result["rss_after_requests_mib"] = _rss_mib()
            result["answers"] = {str(status): n for status, n in sorted(tally.items())}
        finally:
            await lifespan(plane, "shutdown")
            server.close()
            if state == "redis":
                result["redis_keys"] = _forget(store["namespace"])
    return result


def _forget(namespace: str) -> int:
    """Delete this run's keys from Redis; return how many there were."""
    import redis

    client = redis.Redis.from_url(_REDIS)
    deleted = 0
    try:
        for keys in _batches(client.scan_iter(match=f"{namespace}*", count=1000), 1000):
            deleted += client.delete(*keys)
    finally:
        client.close()
    return deleted


def _batches(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _one(args: argparse.Namespace, name: str, policy_lines: int, sessions: int) -> dict[str, Any]:
    """Run one configuration in a process of its own; return what it measured."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.scale",
            "--child",
            "--policy-lines",
            str(policy_lines),
            "--sessions",
            str(sessions),
            "--requests",
            str(args.requests),
            "--state",
            args.state,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} configuration failed:\n{proc.stderr[-3000:]}")
    return {"name": name, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| configuration | RSS started | RSS with sessions | RSS after requests | CPU/request | answers |"
    lines = [head, "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        answers = ", ".join(f"{n} x {status}" for status, n in row["answers"].items())
        lines.append(
            f"| {row['name']} ({row['policy_lines']:,} lines, {row['sessions']:,} sessions, {row['state']})"
            f" | {row['rss_started_mib']:.0f} MiB | {row['rss_sessions_mib']:.0f} MiB"
            f" | {row['rss_after_requests_mib']:.0f} MiB | {row['cpu_us_per_request']:.0f} µs | {answers} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="live sessions (default 100000)")
    parser.add_argument("--policy-lines", type=int, default=100_000, help="policy lines (default 100000)")
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests (default 20000)")
    parser.add_argument(
        "--state",
        choices=("redis", "memory"),
        default="redis",
        help=f"where sessions live: redis ({_REDIS}, a fresh namespace) or in the worker (default redis)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.sessions, args.policy_lines, args.requests) < 1:
        parser.error("--sessions, --policy-lines and --requests must be at least 1")
    if args.child:
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(asyncio.run(_measure(args.policy_lines, args.sessions, args.requests, args.state))))
        return 0
    rows = []
    for name, lines, sessions in (("small", 1, 1), ("large", args.policy_lines, args.sessions)):
        print(f"scale: measuring {name} ({lines:,} policy lines, {sessions:,} sessions) …", file=sys.stderr)
        try:
            rows.append(_one(args, name, lines, sessions))
        except RuntimeError as exc:
            print(f"scale: {exc}", file=sys.stderr)
            return 1
    print(_table(rows))
    ratio = rows[1]["cpu_us_per_request"] / rows[0]["cpu_us_per_request"]
    print(f"\nCPU per request, large / small: {ratio:.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "cpu_ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
