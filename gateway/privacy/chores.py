"""The privacy work a running gateway does by itself: overdue requests reported to the sinks, and the
retention run once per ``privacy.retention.interval``.

Every worker runs the loops; what they do is claimed in the database (an overdue request is marked
as reported in the same transaction that finds it, a retention run claims its period's row), so N
workers and M replicas report each once and purge once per period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable
from typing import Final

from gateway.privacy.retention import Retention
from gateway.privacy.service import Privacy
from gateway.settings.schema import PrivacySettings

__all__ = ["run_chores"]

logger = logging.getLogger("gateway.privacy")

# The first retention attempt waits this long after start (or one interval, if shorter): a process
# that is restarted, or a test gateway that lives a minute, does not purge on its way up.
FIRST_RUN_DELAY: Final = 300.0
# At most this spread after a period starts, so the workers do not all look for the claim at once.
JITTER: Final = 60.0


async def run_chores(
    privacy: Privacy, settings: Callable[[], PrivacySettings], retention: Retention | None = None
) -> None:
    """The overdue check every ``privacy.overdue_check`` and, given ``retention``, the retention run at
    the start of every period (settings read each time: a reload applies), until cancelled."""
    async with asyncio.TaskGroup() as group:
        group.create_task(_report_overdue(privacy, settings))
        if retention is not None:
            group.create_task(_purge(retention))


async def _report_overdue(privacy: Privacy, settings: Callable[[], PrivacySettings]) -> None:
    while True:
        await asyncio.sleep(float(settings().overdue_check))
        try:
            reported = await privacy.report_overdue()
        except Exception:
            # A store outage must not end the loop: the next round finds the same requests.
            logger.exception("privacy: the overdue check failed; it runs again in one interval")
        else:
            if reported:
                logger.warning("privacy: %d request(s) are overdue; reported to the sinks", reported)


def _until_next_period(retention: Retention) -> float:
    interval = max(1.0, retention.interval())
    now = retention.clock.time()
    return interval - now % interval + random.uniform(0.0, min(JITTER, interval / 10))  # noqa: S311


async def _purge(retention: Retention) -> None:
    runner = f"{socket.gethostname()}:{os.getpid()}"
    delay = min(FIRST_RUN_DELAY, retention.interval())
    while True:
        await asyncio.sleep(delay)
        try:
            # None: another worker or replica claimed this period's run.
            report = await retention.run(retention.clock.now(), runner)
        except Exception:
            # Whatever was left is due again at the next period: every purge is idempotent.
            logger.exception("privacy: the retention run failed; the next period's run retries it")
        else:
            if report is not None:
                done = {c.data_class: c.done for c in report.classes}
                log = logger.info if report.ok else logger.error
                log("privacy: retention run %s: %s", report.period, done)
        delay = _until_next_period(retention)
