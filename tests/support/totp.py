"""TOTP codes from the reference peer (Debian's oathtool) for integration tests."""

from __future__ import annotations

import subprocess
import time

STEP = 30.0
# Time a request takes to reach the gateway on a loaded CI machine, with room to spare.
_IN_FLIGHT = 4.0


def oathtool(secret: str, at: float) -> str:
    """The TOTP code oathtool computes for this base32 secret at this Unix time."""
    result = subprocess.run(
        ["oathtool", "--totp", "-b", secret, "-N", f"@{int(at)}"], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def previous_step_code(secret: str) -> str:
    """The previous time step's code, computed so that the gateway still sees it as one step old.

    The gateway accepts one step of drift, so the previous step's code confirms an enrolment and
    leaves the current step's code unused for the test's next sign-in. Computed in the last seconds of
    a step, the request could reach the gateway in the next step, two steps later, and be refused (a
    CI run did): wait for the next step to begin first.
    """
    clear_of_step_end(_IN_FLIGHT)
    return oathtool(secret, time.time() - STEP)


def clear_of_step_end(seconds: float) -> None:
    """Return once at least ``seconds`` of the current time step are left (waiting for the next one).

    A test whose gateway wants a second factor within seconds of the password calls this before
    signing in, so :func:`previous_step_code` never has to wait between the two.
    """
    left = STEP - time.time() % STEP
    if left < seconds:
        time.sleep(left + 0.05)
