"""The sign-ins' password hashes alone: R argon2id verifications per second, outside any gateway.

Run as its own process by ``loadtests.guard`` beside browsing, as the floor of the sign-in measurement::

    python -m loadtests.hashload --rate 10 --duration 10

Each verification is what the gateway's sign-in spends on the password (the gateway's own
:class:`~gateway.identity.passwords.PasswordHasher` with the default settings the benchmark gateways run:
argon2id m=19 MiB, t=2, in a nice +10 thread, at most ``max_concurrent_hashes`` at once). Nothing else of a
sign-in happens: no HTTP, no database, no session. Browsing p99 beside this load is what the hashing CPU
alone costs the machine's other processes, so "with sign-ins / with the hashes alone" is the gateway's
own share of the sign-ins' interference (see ``loadtests/README.md``).

Prints ``ready`` once started, then one JSON object in the shape of ``loadtests.signins``'s: attempted,
ok, failed, achieved rate and verification latency p50/p99 (ms, from each one's scheduled start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.identity.passwords import PasswordHasher
from gateway.settings.schema import PasswordSettings
from loadtests.signins import READY, open_loop

__all__ = ["main", "run"]

_PASSWORD = "hash-load password"


async def run(rate: float, duration: float, *, announce: bool = False) -> dict[str, Any]:
    """Schedule ``rate`` verifications per second for ``duration`` seconds; return the summary.

    With ``announce``, prints ``ready`` once the stored hash is made (that hash is set-up, not load).
    """
    hasher = PasswordHasher(PasswordSettings())
    stored = await hasher.hash(_PASSWORD)
    if announce:
        print(READY, flush=True)

    async def attempt() -> bool:
        return await hasher.verify(stored, _PASSWORD)

    return await open_loop(rate, duration, attempt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.hashload", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help="verifications per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    result = asyncio.run(run(args.rate, args.duration, announce=True))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
