"""A process that must not outlive the one that started it: a gateway's worker its master, a drill's
node the drill, the quick start's gateway the quick start.

Linux sends ``PR_SET_PDEATHSIG``'s signal when the parent exits, also by SIGKILL, which no ``finally``
of the parent's can cover.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import Final

__all__ = ["die_with"]

_PR_SET_PDEATHSIG: Final = 1


def die_with(parent: int) -> None:
    """Ask Linux for SIGTERM when ``parent`` exits; exit now if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        # The parent died before the request above took effect: nobody would ever stop us.
        os._exit(0)
