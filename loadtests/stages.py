"""Each pipeline stage's share of the signed-in hot path, in Python bytecode instructions per request.

::

    python -m loadtests.stages [--requests 300] [--json PATH] [--pass-through]

Drives the data plane in-process exactly as :mod:`loadtests.inprocess` does (one worker's services,
``GET /__echo/bytes/256`` with a session cookie, an upstream in the same event loop) and counts every
bytecode instruction the interpreter executes on this thread while the measured requests run
(``sys.settrace`` with ``f_trace_opcodes``). Each instruction goes to the stage whose function is the
nearest caller of the frame that executed it (an ``await`` chain is a chain of callers): the stages
are the functions :class:`gateway.pipeline.app.DataPlane` calls per request. Work outside every
stage is the event loop and the callbacks it runs (the upstream connection's protocol, timers).

The count is deterministic: the same code gives the same numbers on a busy or an idle machine, so a
change to one stage shows up in that stage's line alone. It counts Python instructions, not machine
instructions: work done in C (hashing, signing, JSON encoding, socket calls) is one instruction
each. ``loadtests.inprocess --instructions`` gives the machine-instruction total per request;
``loadtests/README.md`` lists both. Threads (the access log's file writer) are not traced.

Exit codes: 0 done; 1 a request was not answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from loadtests.inprocess import SLOWABLE

__all__ = ["STAGE_NAMES", "VARIANTS", "count_stages", "main"]

# Stage names in the order the pipeline runs them, and the function that is each stage.
_STAGES: tuple[tuple[str, str, str], ...] = (
    ("receive", "gateway.pipeline.receive", "receive_request"),
    ("canonicalize", "gateway.pipeline.canonical", "canonicalize"),
    ("route", "gateway.pipeline.route", "route_request"),
    ("identify", "gateway.pipeline.identify", "identify"),
    ("mfa", "gateway.pipeline.mfa", "require_mfa"),
    ("authorize", "gateway.pipeline.authorize", "authorize"),
    ("upstream headers", "gateway.pipeline.entries", "_Http.finish"),
    ("proxy", "gateway.pipeline.proxy", "forward_http"),
    ("observe (access log, metrics)", "gateway.pipeline.app", "DataPlane._observe"),
    ("pipeline (the stage sequence)", "gateway.pipeline.app", "DataPlane._run"),
)
# The stages a request runs itself, in order: what the stage guard gates (the rest is shared work).
STAGE_NAMES = tuple(name for name, _, _ in _STAGES)
_OUTSIDE_UPSTREAM = "proxy: upstream connection callbacks"
_OUTSIDE_LOOP = "event loop (asyncio)"
_OUTSIDE_GATEWAY = "gateway background tasks"
_DRIVER = "benchmark driver and its upstream (not the gateway)"
_PASS_THROUGH = "pass-through (loadtests/bare_proxy.py)"
_OUTSIDE = "other"


def _stage_codes() -> dict[CodeType, str]:
    import importlib

    codes: dict[CodeType, str] = {}
    for name, module_name, qualname in _STAGES:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
        codes[target.__code__] = name
    return codes


def _outside(filename: str) -> str:
    """Where an instruction outside every stage belongs, by the file of the code running it."""
    if "/gateway/upstream/" in filename:
        return _OUTSIDE_UPSTREAM
    if filename.endswith("/loadtests/bare_proxy.py"):
        return _PASS_THROUGH
    if "/loadtests/" in filename:
        return _DRIVER
    if "/gateway/" in filename:
        return _OUTSIDE_GATEWAY
    if "/asyncio/" in filename:
        return _OUTSIDE_LOOP
    return _OUTSIDE


#: The qualified names of the harness's clock (loadtests.inprocess.CountedTime), never counted.
_HARNESS_CLOCK = "CountedTime."


class _Tally:
    """The trace function: counts each executed instruction under its stage."""

    def __init__(self, codes: dict[CodeType, str]) -> None:
        self.codes = codes
        self.counts: Counter[str] = Counter()
        # (stage, function) -> instructions: what --detail lists.
        self.functions: Counter[tuple[str, str]] = Counter()

    def per_request(self, requests: int) -> dict[str, Any]:
        """The counts divided by ``requests``: by stage (``stages``) and by stage and function."""
        return {
            "stages": {name: n / requests for name, n in self.counts.items()},
            "functions": {
                f"{stage} | {function}": n / requests for (stage, function), n in self.functions.items()
            },
        }

    def stage_of(self, frame: FrameType) -> str:
        walk: FrameType | None = frame
        while walk is not None:
            stage = self.codes.get(walk.f_code)
            if stage is not None:
                return stage
            walk = walk.f_back
        return _outside(frame.f_code.co_filename)

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if event != "call" or frame.f_code.co_qualname.startswith(_HARNESS_CLOCK):
            return None  # the harness's counted clock stands in for time.time (C): not the gateway's work
        stage = self.stage_of(frame)
        counts, functions = self.counts, self.functions
        code = frame.f_code
        where = (stage, f"{Path(code.co_filename).name}:{code.co_qualname}")
        frame.f_trace_opcodes = True

        def local(frame: FrameType, event: str, arg: object) -> Any:
            if event == "opcode":
                counts[stage] += 1
                functions[where] += 1
            return local

        return local


# The per-request features whose cost ``--variant`` shows, as changes to the benchmark's configuration
# (access log to a file, in-process state, tracing off, a session cookie).
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "access-log-off": {"access_log": False},
    "tracing-1pct": {"tracing": 0.01},
    "tracing-all": {"tracing": 1.0},
    "embedded-file-state": {"state": {"embedded": "file"}},
    # A route that takes API tokens as well as sessions, browsed with a session cookie: the price of
    # looking for a token on every request of such a route.
    "bearer-route": {"route_auth": ("session", "bearer")},
    # The same route browsed with a service account's API token instead of a cookie.
    "bearer-request": {"credential": "bearer"},
    # A session of a person who opted out of policy analytics (consent): no decision sample.
    "consent-optout": {"credential": "session-optout"},
    # A route that lets CORS preflights through, browsed with a session cookie (GET): the price of
    # asking whether each request is one.
    "cors-preflight-route": {"route_options": {"cors_preflight": True}},
}


async def _run(
    requests: int, warmup: int, variant: str = "baseline", slow_stage: str | None = None
) -> dict[str, Any]:
    from loadtests.inprocess import CountedTime, credential_header, drive, signed_in_plane, slow_down

    if slow_stage is not None:
        slow_down(slow_stage)
    options = dict(VARIANTS[variant])
    tally = _Tally(_stage_codes())
    header = credential_header(options.get("credential", "session"))
    # The clock and the short waits move per reading, as for the instruction count: with the wall clock
    # the tracer's slowness, and other load, decided how often a request found its session's one-second
    # cache expired or its token to verify again (a CI run beside the suite read the API-token request
    # at -46 bytecodes against -136 quiet, and a CORS route at +15 against +5).
    # The block puts the real clock back: count_stages runs in the test suite's own process too.
    with CountedTime() as counted:
        async with signed_in_plane(options.pop("tracing", None), **options) as (plane, cookie):
            counted.install()
            try:
                failed = await drive(plane, cookie, warmup, header=header)
                sys.settrace(tally)
                try:
                    failed += await drive(plane, cookie, requests, header=header)
                finally:
                    sys.settrace(None)
            finally:
                counted.release()
    if failed:
        raise RuntimeError(f"{failed} requests were not answered 200")
    return tally.per_request(requests)


async def _run_pass_through(requests: int, warmup: int) -> dict[str, Any]:
    """The same request through the pass-through on the gateway's client (``loadtests.bare_proxy``,
    ``BARE_PROXY_CLIENT=http1``), the same in-loop upstream and driver: what ``gateway_vs_bare_http1``
    compares the gateway with, in bytecodes."""
    import importlib
    import os

    from loadtests.inprocess import Upstream, drive

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", 0)
    # The module reads its upstream and client when imported.
    os.environ["BARE_PROXY_UPSTREAM"] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    os.environ["BARE_PROXY_CLIENT"] = "http1"
    bare = importlib.import_module("loadtests.bare_proxy")
    tally = _Tally({})
    try:
        failed = await drive(bare.app, b"gateway_session=unused", warmup)
        sys.settrace(tally)
        try:
            failed += await drive(bare.app, b"gateway_session=unused", requests)
        finally:
            sys.settrace(None)
    finally:
        if bare._http1 is not None:
            await bare._http1.close()
        server.close()
    if failed:
        raise RuntimeError(f"{failed} requests were not answered 200")
    return tally.per_request(requests)


def count_stages(
    requests: int = 300, warmup: int = 200, *, variant: str = "baseline", slow_stage: str | None = None
) -> dict[str, dict[str, float]]:
    """Bytecode instructions per request by stage (``stages``) and by stage and function
    (``functions``, keys ``"<stage> | <file>:<function>"``); the driver's own loop included.

    ``variant`` is one of :data:`VARIANTS`; ``slow_stage`` makes one stage do its work twice
    (:func:`loadtests.inprocess.slow_down`). Call once per process: the slowdown stays."""
    return asyncio.run(_run(requests, warmup, variant, slow_stage))


def _table(per_stage: dict[str, float]) -> str:
    total = sum(per_stage.values())
    order = [
        *STAGE_NAMES,
        _PASS_THROUGH,
        _OUTSIDE_UPSTREAM,
        _OUTSIDE_GATEWAY,
        _OUTSIDE_LOOP,
        _OUTSIDE,
        _DRIVER,
    ]
    lines = ["| stage | bytecodes per request | share |", "|---|---:|---:|"]
    for name in order:
        if name in per_stage:
            lines.append(f"| {name} | {per_stage[name]:,.0f} | {per_stage[name] / total:.1%} |")
    lines.append(f"| **total** | **{total:,.0f}** | 100% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.stages", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests (default 300)")
    parser.add_argument("--json", type=Path, help="also write the counts here as JSON")
    parser.add_argument(
        "--detail", type=int, default=0, metavar="N", help="also list the N costliest functions"
    )
    parser.add_argument(
        "--variant", choices=tuple(VARIANTS), default="baseline", help="a feature switched (default baseline)"
    )
    parser.add_argument("--slow-stage", choices=SLOWABLE, help="run this stage twice per request")
    parser.add_argument(
        "--pass-through",
        action="store_true",
        help="count the pass-through on the gateway's client (loadtests/bare_proxy.py) instead of the gateway",
    )
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    import logging

    logging.basicConfig(level=logging.WARNING)
    try:
        if args.pass_through:
            per_stage = asyncio.run(_run_pass_through(args.requests, 200))
        else:
            per_stage = count_stages(args.requests, variant=args.variant, slow_stage=args.slow_stage)
    except RuntimeError as exc:
        print(f"stages: {exc}", file=sys.stderr)
        return 1
    print(_table(per_stage["stages"]))
    if args.detail:
        print("\n| stage | function | bytecodes per request |\n|---|---|---:|")
        costliest = sorted(per_stage["functions"].items(), key=lambda item: -item[1])[: args.detail]
        for key, n in costliest:
            stage, function = key.split(" | ", 1)
            print(f"| {stage} | `{function}` | {n:,.0f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(per_stage, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
