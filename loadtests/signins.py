"""Open-loop sign-in load: R password sign-ins per second through the gateway's HTML form.

Run as its own process by ``loadtests.guard`` (browsing p99 with and without sign-ins running)::

    python -m loadtests.signins http://127.0.0.1:PORT --user bench --password-env PW --rate 10 --duration 10

Each sign-in is what a browser does: ``GET /.gateway/login`` (CSRF cookie), then the form ``POST`` with
the password (argon2id on the gateway, off its event loop). Prints ``ready`` once started (the guard
starts browsing then, so this interpreter's start-up, ~0.3 s of CPU, stays out of the measured window),
then one JSON object: attempted, ok, failed, achieved rate and sign-in latency p50/p99 (ms, from each
sign-in's scheduled start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from loadtests.pyclient import percentile

__all__ = ["READY", "main", "open_loop", "run"]

CSRF_COOKIE = "gateway_csrf"
SESSION_COOKIE = "gateway_session"
#: The first line of the output: imports done, sign-ins start now.
READY = "ready"


async def _sign_in(session: aiohttp.ClientSession, base: str, user: str, password: str) -> bool:
    async with session.get(f"{base}/.gateway/login", headers={"Accept": "text/html"}) as page:
        await page.read()
        morsel = page.cookies.get(CSRF_COOKIE)
    if morsel is None:
        return False
    form = {"username": user, "password": password, "rd": "", "_csrf_token": morsel.value}
    headers = {"Accept": "text/html", "Cookie": f"{CSRF_COOKIE}={morsel.value}"}
    async with session.post(
        f"{base}/.gateway/login", data=form, headers=headers, allow_redirects=False
    ) as resp:
        await resp.read()
        return resp.status in (302, 303) and SESSION_COOKIE in resp.cookies


async def open_loop(rate: float, duration: float, attempt: Callable[[], Awaitable[bool]]) -> dict[str, Any]:
    """Start ``attempt`` ``rate`` times per second for ``duration`` seconds, whatever the answers' pace
    (open loop); return attempted, ok, failed, the achieved rate and the successes' latency p50/p99 (ms,
    from each one's scheduled start)."""
    latencies: list[int] = []
    failed = 0

    async def one(scheduled: int) -> None:
        nonlocal failed
        if await attempt():
            latencies.append(time.perf_counter_ns() - scheduled)
        else:
            failed += 1

    start = time.perf_counter_ns()
    interval = int(1e9 / rate)
    tasks = []
    for i in range(max(1, int(rate * duration))):
        scheduled = start + i * interval
        delay = (scheduled - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = (time.perf_counter_ns() - start) / 1e9
    lat = sorted(latencies)
    return {
        "attempted": len(tasks),
        "ok": len(lat),
        "failed": failed,
        "rate": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 0.5),
        "p99_ms": percentile(lat, 0.99),
    }


async def run(base: str, user: str, password: str, rate: float, duration: float) -> dict[str, Any]:
    """Schedule ``rate`` sign-ins per second for ``duration`` seconds; return the summary."""
    connector = aiohttp.TCPConnector(limit=64, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def attempt() -> bool:
            try:
                return await _sign_in(session, base, user, password)
            except (aiohttp.ClientError, TimeoutError):
                return False

        return await open_loop(rate, duration, attempt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.signins", description=__doc__.split("\n")[0])
    parser.add_argument("base", help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-env", required=True, metavar="VAR", help="environment variable with it")
    parser.add_argument("--rate", type=float, default=10.0, help="sign-ins per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    args = parser.parse_args(argv)
    password = os.environ[args.password_env]
    print(READY, flush=True)
    result = asyncio.run(run(args.base.rstrip("/"), args.user, password, args.rate, args.duration))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
