"""Worker processes never outlive their master, and always hear SIGTERM.

granian forks its workers from the master. Three ways a worker used to keep running with no master
(seen as orphaned workers after test runs, deaf to SIGTERM):

1. **Double stop request before serving.** granian's worker handler calls ``WorkerSignal.set()`` on
   every SIGTERM/SIGINT. Before the worker serves, a second ``set()`` blocks forever in granian's
   native code while holding the GIL (``tests/unit/test_workers.py`` reproduces it in a plain event
   loop): the worker freezes and every later signal is queued behind it. A master that sends its one
   SIGTERM while the worker is still starting, then anything else (a second master signal, the
   operator, the death signal below) was enough. :func:`_set_loop_signals_once` hands ``set()`` on
   once; a stop already under way needs nothing more.
2. **SIGTERM while the app is being built.** Until granian installs its loop handlers the forked worker
   runs the master's handlers, which set a flag in the worker's copy of the master and return: the
   stop was lost. Now the worker exits at once in that phase (it has accepted no connection yet).
3. **A master killed with SIGKILL** left its workers serving. Now each worker asks Linux for SIGTERM
   when its master dies (``PR_SET_PDEATHSIG``), and a watchdog thread ends the worker if its graceful
   stop does not finish within ``server.graceful_timeout``, the bound the master enforces while it
   lives.

The master calls :func:`guard_workers` before granian forks; each worker calls :func:`become_worker`
first thing in its app factory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Final

from gateway.lifetime import die_with

__all__ = ["GRACE_ENV", "MASTER_ENV", "become_worker", "die_with", "guard_workers"]

logger = logging.getLogger("gateway")

# Set by the master before it forks: the pid a worker must not outlive, and how long its graceful
# stop may take (server.graceful_timeout) before it ends itself when no master is left to do it.
MASTER_ENV: Final = "GATEWAY_WORKER_MASTER"
GRACE_ENV: Final = "GATEWAY_WORKER_GRACE"
# How often a worker checks that its master is still there (the backstop behind PR_SET_PDEATHSIG).
_MASTER_CHECK: Final = 1.0
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def _stop_while_starting(_signum: int, _frame: FrameType | None) -> None:
    # Until granian installs its own handlers the worker has not accepted a connection: nothing to
    # drain, so stopping at once is the graceful stop. os._exit, not SystemExit: an exception raised
    # in a signal handler that interrupts a finalizer or weakref callback is printed and ignored, and
    # the worker would start anyway.
    os._exit(0)


def guard_workers(grace: float) -> None:
    """In the master, before workers are forked: make every worker stop with this process.

    Args:
        grace: Seconds a worker's graceful stop may take once its master is gone (then it exits).
    """
    master = os.getpid()
    os.environ[MASTER_ENV] = str(master)
    os.environ[GRACE_ENV] = repr(float(grace))

    def in_child() -> None:
        # Runs in the child right after fork, before any of granian's start-up code, so no stop
        # request can reach the master's inherited handlers.
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _stop_while_starting)
        die_with(master)

    os.register_at_fork(after_in_child=in_child)


def become_worker() -> None:
    """In a worker, first thing: stop on SIGTERM at any point, and never outlive the master.

    Does nothing in a process not forked by a guarded master (a test building the app directly).
    """
    master_text = os.environ.get(MASTER_ENV)
    if master_text is None:
        return
    master = int(master_text)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _stop_while_starting)
    die_with(master)
    _install_signal_once()
    grace = float(os.environ.get(GRACE_ENV, "30"))
    threading.Thread(target=_watch_master, args=(master, grace), name="master-watch", daemon=True).start()


def _install_signal_once() -> None:
    # granian's worker imports set_loop_signals from this module when it starts serving (after the
    # app factory returns), so replacing the attribute here is what its worker calls.
    import granian._signals

    granian._signals.set_loop_signals = _set_loop_signals_once


def _set_loop_signals_once(loop: Any) -> Any:
    """granian's ``set_loop_signals``, except that the stop signal is handed on once only."""
    from granian._granian import WorkerSignal

    event = WorkerSignal()
    fired = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal fired
        if fired:
            # Already stopping. A second WorkerSignal.set() before the server took the first one
            # blocks forever while holding the GIL: the worker would never stop.
            return
        fired = True
        event.set()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum, None)
    return event


def _watch_master(master: int, grace: float) -> None:
    while os.getppid() == master:
        time.sleep(_MASTER_CHECK)
    logger.warning("worker %d: master %d is gone; stopping", os.getpid(), master)
    with contextlib.suppress(ProcessLookupError):
        os.kill(os.getpid(), signal.SIGTERM)  # in case PR_SET_PDEATHSIG is unavailable
    time.sleep(grace + 5.0)
    logger.error("worker %d: graceful stop did not finish in %gs; exiting", os.getpid(), grace)
    os._exit(1)
