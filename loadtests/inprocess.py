"""The data plane driven in-process: deterministic cost per request, for before/after comparisons.

The side-by-side benchmark (``loadtests.measure``) measures throughput on the shared machine, whose
noise is a factor of two between minutes. This driver removes the network client, the ASGI server and
the other processes: it starts one worker's services (:func:`gateway.root.apps.worker_app`: embedded storage,
the access log to a file), signs a session in directly through the session store, and calls the
:class:`~gateway.pipeline.app.DataPlane` with the same request the benchmark sends (``GET
/__echo/bytes/256`` with the session cookie), one after another. The upstream is a tiny HTTP/1.1 server
in the same event loop that answers 256 bytes, so the proxy stage and the gateway's upstream client run
for real. Every request runs cookie → session → MFA check → RBAC → identity headers + assertion →
proxy → access log and metrics, the signed-in hot path.

Two ways to read it::

    python -m loadtests.inprocess --requests 20000          # CPU µs per request (process time)
    python -m loadtests.inprocess --instructions            # instructions per request (callgrind)
    python -m loadtests.inprocess --instructions --tracing 0.01   # the same with tracing on, 1% sampled

``--instructions`` runs this module twice under ``valgrind --tool=callgrind`` with ``--requests`` and
twice as many, and divides the difference in instructions by the difference in requests: start-up cost
cancels, and the count does not depend on what else the machine is doing (CPU time on the shared
2-core machine varied from 97 to 163 µs per request between identical runs). ``PYTHONHASHSEED`` is
fixed, periodic work is kept dormant, the gateway's clock and the access log's batching wait move per
reading rather than with the wall (:class:`CountedTime`) and the access log writes on the loop
(:func:`_writes_on_loop`), so how long the run took (callgrind stretches it 50 times, other load more)
does not change what it does.

``--tracing RATIO`` turns tracing on with that sample ratio; the spans go to a collector stub in the
same event loop, so encoding and sending the sampled ones (on the exporter's thread) is counted too.

``--slow-stage STAGE`` runs one stage of :mod:`gateway.pipeline.app` twice per request (the first
answer discarded): the deliberate 2x slowdown that shows the CI guard (``loadtests.guard
--instructions``) catches a regression of one stage.

Exit codes: 0 done; 1 a request was not answered 200 (the measurement would be meaningless).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CREDENTIALS",
    "SLOWABLE",
    "Collector",
    "CountedTime",
    "Upstream",
    "api_token",
    "credential_header",
    "drive",
    "instructions_per_request",
    "lifespan",
    "main",
    "sign_in",
    "signed_in_plane",
    "slow_down",
    "worker_config",
]

_BODY = b"x" * 256
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 256\r\n\r\n" + _BODY
)
_PATH = b"/__echo/bytes/256"
_COOKIE = "gateway_session"  # session.insecure_cookies: no "__Host-" prefix


class Upstream(asyncio.Protocol):
    """Answers every request head (GET, no body) with the same 256 bytes, keeping the connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            assert self.transport is not None
            self.transport.write(_RESPONSE)


class Collector(asyncio.Protocol):
    """Takes OTLP/HTTP exports (head, then Content-Length bytes of body) and answers each with a 200."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            match = re.search(rb"(?i)content-length:\s*(\d+)", self.buffer[:end])
            size = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + size:
                return
            self.buffer = self.buffer[end + 4 + size :]
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


def worker_config(
    tmp: Path,
    upstream_port: int,
    tracing: dict[str, Any] | None = None,
    *,
    policy_text: str = "p, authenticated, *, /*, *, allow\n",
    state: dict[str, Any] | None = None,
    access_log: bool = True,
    route_auth: Sequence[str] = ("session",),
    route_options: dict[str, Any] | None = None,
) -> Path:
    """The benchmark worker's configuration file in ``tmp``: one route to the upstream on
    ``upstream_port``, the policy ``policy_text``, in-process fast state unless ``state`` says otherwise,
    the access log to a file unless ``access_log`` is False, the route taking ``route_auth`` and any
    further ``route_options`` (a route setting whose cost is measured)."""
    policy = tmp / "policy.csv"
    policy.write_text(policy_text)
    config: dict[str, Any] = {
        "public_url": "http://127.0.0.1:8080",
        "listen": "127.0.0.1:8080",
        "data_dir": str(tmp / "data"),
        "admin": {"listen": None},
        # Work that runs per second of wall time, not per request, stays out of the count: callgrind
        # stretches a run 50x, and a machine busy with other work stretches it further.
        "policy": {"file": str(policy), "poll_interval": "1h", "max_staleness": "2h"},
        "lockdown": {"refresh_interval": "1h"},
        "session": {"insecure_cookies": True},
        # In-process fast state: the shared file's feed is polled ten times a second, and under
        # callgrind (50x slower) that polling would be most of what is counted.
        "state": state if state is not None else {"embedded": "memory"},
        "logging": {"sinks": [{"type": "file", "path": str(tmp / "access.log")}] if access_log else []},
        "routes": [
            {
                "name": "echo",
                "host": "127.0.0.1",
                "path": "/",
                "upstreams": [f"http://127.0.0.1:{upstream_port}"],
                "mfa": "none",
                "auth": list(route_auth),
                **(route_options or {}),
            }
        ],
    }
    if tracing is not None:
        config["tracing"] = tracing
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def lifespan(plane: Any, kind: str) -> None:
    """Send one lifespan message to the data plane and wait for its answer."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    answers: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    await inbox.put({"type": f"lifespan.{kind}"})

    async def send(message: MutableMapping[str, Any]) -> None:
        await answers.put(message)

    task = asyncio.ensure_future(plane({"type": "lifespan"}, inbox.get, send))
    answer = await answers.get()
    if not answer["type"].endswith(".complete"):
        raise RuntimeError(f"lifespan {kind} failed: {answer}")
    if kind == "shutdown":
        await task
    else:
        task.cancel()


async def sign_in(services: Any, *, optout: Sequence[str] = ()) -> str:
    from gateway.identity.levels import AuthLevel, Factor, FactorUse

    session_id, _ = await services.identity.sessions.create(
        user_id=1,
        username="bench",
        level=AuthLevel.ONE_FACTOR,
        factors=[FactorUse(Factor.PASSWORD, time.time())],
        roles=[],
        ip="127.0.0.1",
        user_agent="inprocess",
        host="127.0.0.1",
        optout=optout,
    )
    return str(session_id)


async def drive(
    plane: Any,
    cookie: bytes | Sequence[bytes],
    count: int,
    tally: Counter[int] | None = None,
    *,
    header: bytes = b"cookie",
) -> int:
    """Send ``count`` requests (with ``cookie``, or with each of several cookies in turn, in ``header``);
    return how many were not answered 200. ``tally`` counts the answers by status."""
    cookies = [cookie] if isinstance(cookie, bytes) else list(cookie)
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for i in range(count):
        # A new scope per request, as the ASGI server builds one.
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": _PATH.decode(),
            "raw_path": _PATH,
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1:8080"),
                (b"user-agent", b"wrk"),
                (b"accept", b"application/json"),
                (header, cookies[i % len(cookies)]),
            ],
            "client": ("127.0.0.1", 50_000),
            "server": ("127.0.0.1", 8080),
        }
        await plane(scope, receive, send)
    if tally is not None:
        tally.update(statuses)
    return sum(1 for status in statuses if status != 200) + (count - len(statuses))


# The stages --slow-stage can double: the functions gateway.pipeline.app calls per request.
SLOWABLE = ("canonicalize", "route_request", "identify", "require_mfa", "authorize")


def slow_down(stage: str) -> None:
    """Make ``stage`` do its work twice per request (benchmark only: proves the guard notices)."""
    import inspect

    from gateway.pipeline import app

    original = getattr(app, stage)
    if inspect.iscoroutinefunction(original):

        async def twice_async(*args: Any, **kwargs: Any) -> Any:
            await original(*args, **kwargs)
            return await original(*args, **kwargs)

        setattr(app, stage, twice_async)
    else:

        def twice(*args: Any, **kwargs: Any) -> Any:
            original(*args, **kwargs)
            return original(*args, **kwargs)

        setattr(app, stage, twice)


#: How far the gateway's clock moves at each reading under :class:`CountedTime`.
CLOCK_STEP = 0.0002


class CountedTime:
    """The gateway's clock, and the short waits of the run, moved by readings instead of the wall.

    Installed for the measured requests (:meth:`install`), taken back before shut-down
    (:meth:`release`). Three things that ran per second of wall time become per request:

    * The gateway's Unix and monotonic time (every reader of :class:`gateway.clock.SystemClock`)
      move by :data:`CLOCK_STEP` per reading: about a millisecond per request, as a busy worker sees.
      What the request does with time (the session cache's one-second memory, the assertion's
      re-signing when a fifth of its lifetime is left, the bearer tokens' one-second cache) then
      depends on the code alone. With the real clock two CPU hogs beside the count added 10% (437.1 k
      -> 482.1 k per request, 2026-12-04), most of it decrypting sessions and signing assertions again.
    * A wait shorter than half a second (the file sink's 50 ms batching) ends after as many readings
      as its length in :data:`CLOCK_STEP` s. With a real wait, a run that callgrind and other load
      stretched wrote more, smaller batches per request: 0.17 more sink wake-ups per request at 5 ms a
      request, and +2.8% (439.9 k -> 452.3 k) beside three CPU hogs and a disk writer, all of it the
      interpreter running the sink's and the loop's code more often (2026-12-05). A CI run beside the
      test suite read a doubled identify stage 2.4% low; a local one read the unchanged path 5% high.
    * A wait of half a second or more (metrics sampling, readiness probes, key and policy refreshes)
      is stretched a thousandfold: periodic work stays out of the count (it was up to a fifth of it).
    * So is an ``asyncio.timeout`` of half a second or more. The listeners that re-read a shared copy
      every second whether or not a message came (the block list, the session and token caches'
      eviction channels, the signing keys' compromise marker) wait on one, not on a sleep: a run
      stretched by load re-read the block list from the database 27 times more per 1,500 requests
      beside three CPU hogs (cProfile's call counts, 2026-12-07), which the count charged to the
      requests. A request's own timeouts (the upstream's connect and read bounds) never fire here;
      stretching them changes their deadline, not the work.

    asyncio's own clock stays real otherwise: a request never waits on it (the upstream answers at
    once).
    """

    def __init__(self) -> None:
        from gateway.clock import SystemClock

        self.active = False
        self._ticks = 0  # readings of either clock: what a short wait counts
        self._waits: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        # What install() and patch_sleep() replace, for restore().
        self._real = (SystemClock.__dict__["time"], SystemClock.__dict__["monotonic"], asyncio.sleep)
        self._real_timeout = asyncio.timeout

    def install(self) -> None:
        """Count from now: after start-up, whose keys and session were made at real times (a clock
        behind them would find no signing key valid yet)."""
        from gateway.clock import SystemClock

        readings, mono_readings = itertools.count(), itertools.count()
        start, mono_start = time.time(), time.monotonic()

        def counted() -> float:
            self._tick()
            return start + next(readings) * CLOCK_STEP

        def counted_monotonic() -> float:
            self._tick()
            return mono_start + next(mono_readings) * CLOCK_STEP

        SystemClock.time = staticmethod(counted)
        SystemClock.monotonic = staticmethod(counted_monotonic)
        self.active = True

    def release(self) -> None:
        """End every short wait now and let later ones take real time: shut-down flushes the sink."""
        self.active = False
        for _, _, future in self._waits:
            if not future.done():
                future.set_result(None)
        self._waits.clear()

    def __enter__(self) -> CountedTime:
        """Route ``asyncio.sleep`` and ``asyncio.timeout`` through the counted time for the block (:meth:`patch_sleep`)."""
        self.patch_sleep()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the real clock and ``asyncio.sleep`` back (after shut-down). A caller in the test suite's
        process that left them replaced made every later gateway in that process find no signing key
        active yet: its keys were made at the real time, ahead of the counted one."""
        from gateway.clock import SystemClock

        self.release()
        SystemClock.time, SystemClock.monotonic, asyncio.sleep = self._real
        asyncio.timeout = self._real_timeout

    def wait(self, delay: float) -> asyncio.Future[None]:
        """A future done after ``delay`` seconds of counted time."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        due = self._ticks + math.ceil(delay / CLOCK_STEP)
        heapq.heappush(self._waits, (due, next(self._order), future))
        return future

    def patch_sleep(self) -> None:
        """Route ``asyncio.sleep`` through the counted time (short waits) or stretch it (long ones), and
        stretch long ``asyncio.timeout`` bounds the same way."""
        real_sleep = asyncio.sleep

        async def counted_sleep(delay: float, result: Any = None) -> Any:
            if delay >= 0.5:
                return await real_sleep(delay * 1000, result)
            if delay > 0 and self.active:
                await self.wait(delay)
                return result
            return await real_sleep(delay, result)

        asyncio.sleep = counted_sleep
        real_timeout = self._real_timeout

        def counted_timeout(delay: float | None) -> asyncio.Timeout:
            return real_timeout(delay * 1000 if delay is not None and delay >= 0.5 else delay)

        asyncio.timeout = counted_timeout

    def _tick(self) -> None:
        self._ticks += 1
        waits = self._waits
        while waits and waits[0][0] <= self._ticks:
            future = heapq.heappop(waits)[2]
            if not future.done():  # a cancelled waiter (its task ended) is dropped
                future.set_result(None)


def _writes_on_loop() -> None:
    """Keep the access log's writes on the event loop however long one takes.

    A write that takes longer than the sink's threshold (5 ms) moves the sink's writes to a thread
    for a minute; callgrind stretches a write 50-fold, so whether that happened depended on the
    machine's load. The thread mode is the exception of a disk under pressure, not the hot path.
    """
    from gateway.observe.sinks import stream

    stream.SLOW_WRITE = float("inf")  # type: ignore[misc]


#: The credential each benchmark request carries (``signed_in_plane``'s ``credential``): a session cookie,
#: a session cookie of a person who opted out of policy analytics (consent), or a service account's token.
CREDENTIALS = ("session", "session-optout", "bearer")
_BENCH_CLIENT = "bench-ci"


def credential_header(credential: str) -> bytes:
    """The request header that carries ``credential``'s value."""
    return b"authorization" if credential == "bearer" else b"cookie"


@asynccontextmanager
async def signed_in_plane(
    tracing: float | None = None, *, credential: str = "session", **options: Any
) -> AsyncIterator[tuple[Any, bytes]]:
    """The benchmark's worker (:func:`worker_config` in a temporary directory, ``options`` passed on),
    started, with its upstream in this event loop and the value of a credential (:data:`CREDENTIALS`,
    sent in :func:`credential_header`); shut down and removed when the block ends.

    ``tracing`` turns tracing on with that sample ratio, exporting to a :class:`Collector` in this loop.
    A ``bearer`` credential is an API token of a service account the policy allows on the route, which
    then takes tokens as well as sessions.
    """
    from gateway.root.apps import worker_app

    if credential not in CREDENTIALS:
        raise ValueError(f"credential must be one of {', '.join(CREDENTIALS)}")
    if credential == "bearer":
        options.setdefault("route_auth", ("session", "bearer"))
        options.setdefault(
            "policy_text", f"p, authenticated, *, /*, *, allow\np, client:{_BENCH_CLIENT}, *, /*, *, allow\n"
        )
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inprocess-")))
        server = await loop.create_server(Upstream, "127.0.0.1", 0)
        stack.callback(server.close)
        traces = None
        if tracing is not None:
            collector = await loop.create_server(Collector, "127.0.0.1", 0)
            stack.callback(collector.close)
            endpoint = f"http://127.0.0.1:{collector.sockets[0].getsockname()[1]}/v1/traces"
            traces = {"enabled": True, "endpoint": endpoint, "sample_ratio": tracing}
        plane = worker_app(worker_config(tmp, server.sockets[0].getsockname()[1], traces, **options))
        await lifespan(plane, "startup")
        stack.push_async_callback(lifespan, plane, "shutdown")
        services = plane.running.services
        if credential == "bearer":
            yield plane, f"Bearer {await api_token(services)}".encode()
        else:
            optout = ("policy_analytics",) if credential == "session-optout" else ()
            yield plane, f"{_COOKIE}={await sign_in(services, optout=optout)}".encode()


async def api_token(services: Any) -> str:
    """A new service account's API token for the benchmark route."""
    from gateway.machine.accounts import ServiceAccounts

    accounts = ServiceAccounts(
        services.db, services.identity.audit, services.fast, services.identity.clock, max_lifetime=86400.0
    )
    await accounts.create_account(_BENCH_CLIENT, actor="bench")
    _, token = await accounts.create_token(
        _BENCH_CLIENT, routes=["echo"], lifetime=3600.0, known_routes=["echo"], actor="bench"
    )
    return token


async def _run(requests: int, warmup: int, tracing: float | None, slow_stage: str | None = None) -> int:
    if slow_stage is not None:
        slow_down(slow_stage)
    _writes_on_loop()
    with CountedTime() as counted:
        async with signed_in_plane(tracing) as (plane, cookie):
            counted.install()
            try:
                failed = await drive(plane, cookie, warmup)
                started = time.process_time()
                failed += await drive(plane, cookie, requests)
                spent = time.process_time() - started
            finally:
                counted.release()  # before shut-down, which waits for the access log's last batch
    if failed:
        print(f"{failed} requests were not answered 200", file=sys.stderr)
        return 1
    print(f"{requests} requests, {spent / requests * 1e6:.1f} µs CPU per request")
    return 0


def instructions_per_request(
    requests: int, *, tracing: float | None = None, slow_stage: str | None = None
) -> float:
    """Instructions per request of the signed-in hot path: callgrind runs with ``requests`` and twice
    as many (side by side, one per core), the difference divided by ``requests``."""
    from concurrent.futures import ThreadPoolExecutor

    extra = ["--tracing", str(tracing)] if tracing is not None else []
    extra += ["--slow-stage", slow_stage] if slow_stage is not None else []
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda n: _callgrind(n, extra), (requests, 2 * requests))
    return (second - first) / requests


def _callgrind(requests: int, extra: list[str]) -> int:
    """Instructions of one run of this module with ``requests`` requests, counted by callgrind."""
    with tempfile.TemporaryDirectory(prefix="inprocess-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "loadtests.inprocess",
                "--requests",
                str(requests),
                "--warmup",
                "200",
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the run under callgrind failed: {proc.stderr[-2000:]}")
        match = re.search(r"^summary:\s*(\d+)", out.read_text(), re.MULTILINE)
        if match is None:
            raise RuntimeError("callgrind wrote no summary line")
        return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.inprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests (default 20000)")
    parser.add_argument("--warmup", type=int, default=2_000, help="requests before measuring (default 2000)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under callgrind (runs --requests and 2x; default 1000)",
    )
    parser.add_argument(
        "--tracing",
        type=float,
        metavar="RATIO",
        help="turn tracing on with this sample ratio (spans go to a collector stub in-process)",
    )
    parser.add_argument(
        "--slow-stage",
        choices=SLOWABLE,
        help="run this stage twice per request (the deliberate slowdown the CI guard must catch)",
    )
    args = parser.parse_args(argv)
    if args.instructions:
        small = args.requests if args.requests != 20_000 else 1_000
        per_request = instructions_per_request(small, tracing=args.tracing, slow_stage=args.slow_stage)
        print(f"{per_request / 1000:.1f} k instructions per request ({small} vs {2 * small})")
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(_run(args.requests, args.warmup, args.tracing, args.slow_stage))


if __name__ == "__main__":
    sys.exit(main())
