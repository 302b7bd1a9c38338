"""A small HTTP load client in Python, run as its own process by ``loadtests.measure``.

Two modes, both over a fixed number of keep-alive connections (one ``aiohttp`` pool):

- closed loop (default): every connection sends its next request as soon as the previous answer is read;
  this measures maximum throughput. It is the fallback when ``wrk`` is not installed (its ceiling is far
  lower than wrk's, so compare only runs made with the same client).
- fixed rate (``--rate R``): requests are *scheduled* at R per second, independent of how fast answers come
  back (open loop), and each latency is measured from the request's scheduled start, so a stall is not
  hidden by the client waiting politely (no coordinated omission). This is the "added latency at a fixed
  moderate rate" measurement of the quality bars.

Timers are ``time.perf_counter_ns``. The result is one JSON object on stdout::

    {"requests": …, "non_2xx": …, "errors": …, "duration_s": …, "rps": …,
     "p50_ms": …, "p90_ms": …, "p99_ms": …, "max_ms": …, "mode": "closed" | "rate", "target_rate": …}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["main", "percentile", "run"]


def percentile(sorted_ns: list[int], q: float) -> float:
    """The q-quantile (0..1, nearest rank) of sorted nanosecond samples, in milliseconds."""
    if not sorted_ns:
        return float("nan")
    rank = min(len(sorted_ns) - 1, max(0, math.ceil(q * len(sorted_ns)) - 1))
    return sorted_ns[rank] / 1e6


class _Stats:
    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.non_2xx = 0
        self.statuses: dict[int, int] = {}  # every non-2xx status and how often (for error messages)
        self.errors = 0


async def _one(session: aiohttp.ClientSession, url: str, start_ns: int, stats: _Stats) -> None:
    try:
        async with session.get(url) as resp:
            await resp.read()
            if not 200 <= resp.status < 300:
                stats.non_2xx += 1
                stats.statuses[resp.status] = stats.statuses.get(resp.status, 0) + 1
    except (aiohttp.ClientError, TimeoutError):
        stats.errors += 1
        return
    stats.latencies.append(time.perf_counter_ns() - start_ns)


async def _closed(
    session: aiohttp.ClientSession, url: str, connections: int, end_ns: int, stats: _Stats
) -> None:
    async def worker() -> None:
        while time.perf_counter_ns() < end_ns:
            await _one(session, url, time.perf_counter_ns(), stats)

    await asyncio.gather(*(worker() for _ in range(connections)))


async def _paced(
    session: aiohttp.ClientSession, url: str, rate: float, start_ns: int, end_ns: int, stats: _Stats
) -> None:
    interval_ns = int(1e9 / rate)
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while True:
        scheduled = start_ns + i * interval_ns
        if scheduled >= end_ns:
            break
        delay = (scheduled - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        # The event loop's timers are millisecond-grained and may wake a little early: a request sent
        # before its slot is timed from when it was really sent (never from a future instant).
        task = asyncio.create_task(_one(session, url, min(scheduled, time.perf_counter_ns()), stats))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.gather(*tasks)


async def run(
    url: str,
    connections: int,
    duration: float,
    rate: float = 0.0,
    headers: dict[str, str] | None = None,
    samples: list[int] | None = None,
) -> dict[str, Any]:
    """Run one measurement and return the summary (see the module docstring).

    ``headers`` go on every request (e.g. the session ``Cookie`` of the signed-in hot path);
    ``samples``, when given, receives every latency in nanoseconds (for plots).
    """
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=10)
    stats = _Stats()
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers=headers,
    ) as session:
        start_ns = time.perf_counter_ns()
        end_ns = start_ns + int(duration * 1e9)
        if rate > 0:
            await _paced(session, url, rate, start_ns, end_ns, stats)
        else:
            await _closed(session, url, connections, end_ns, stats)
        elapsed = (time.perf_counter_ns() - start_ns) / 1e9
    lat = sorted(stats.latencies)
    if samples is not None:
        samples.extend(lat)
    return {
        "mode": "rate" if rate > 0 else "closed",
        "target_rate": rate or None,
        "requests": len(lat),
        "non_2xx": stats.non_2xx,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "errors": stats.errors,
        "duration_s": elapsed,
        "rps": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 0.50),
        "p90_ms": percentile(lat, 0.90),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": lat[-1] / 1e6 if lat else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.pyclient", description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (open loop); 0 = closed loop")
    parser.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="add a header (repeatable)"
    )
    parser.add_argument("--samples", type=Path, help="also write every latency (ns, sorted) as JSON here")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    raw: list[int] | None = [] if args.samples else None
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    result = runner(run(args.url, args.connections, args.duration, args.rate, headers, raw))
    if args.samples and raw is not None:
        args.samples.write_text(json.dumps(raw))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
