"""Why a starting worker used to go deaf, and that the worker's own signal handling does not.

Each case runs in a fresh interpreter: the failure mode is a process that never returns (its main
thread stuck in native code holding the GIL), which only a separate process can show and survive.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A hang guard: a healthy run takes well under a second.
BOUND = 20.0

_TWO_STOPS = """
    import asyncio, os, signal, sys
    import uvloop
    from granian import _signals
    from gateway import workers

    install = workers._set_loop_signals_once if sys.argv[1] == "once" else _signals.set_loop_signals
    loop = uvloop.new_event_loop()
    stop = install(loop)

    async def main() -> None:
        # Two stop requests before the worker serves: the master's SIGTERM, then its death signal.
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.2)  # the scenario: two separate deliveries, each handled alone
        print("still answering", flush=True)

    loop.run_until_complete(main())
"""


def _run(variant: str) -> subprocess.CompletedProcess[str] | None:
    """Run the script; None if it had to be killed because it never finished."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_TWO_STOPS), variant],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=BOUND if variant == "once" else 5.0)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGTERM would be swallowed by the very bug this shows
        proc.communicate()
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_granians_handler_freezes_on_a_second_stop_before_serving() -> None:
    # The cause, kept as a test: if granian fixes it, this fails and the workaround can go.
    assert _run("granian") is None


def test_the_workers_handler_hands_the_stop_on_once_and_keeps_answering() -> None:
    result = _run("once")
    assert result is not None, "the worker's handler froze"
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "still answering"
