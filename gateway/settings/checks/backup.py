"""Checks for ``backup``: where backups go, their further targets and how many are kept."""

from __future__ import annotations

import re
from typing import Final

from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["RCLONE_TARGET", "check_backup"]

# ``rclone:<remote>:<path>``: the remote's name as rclone allows it (letters, digits, ``_ - . +`` and
# spaces inside), the path may be empty (the remote's root).
RCLONE_TARGET: Final = re.compile(
    r"rclone:(?P<remote>[A-Za-z0-9_.+-](?:[A-Za-z0-9_. +-]*[A-Za-z0-9_.+-])?):(?P<path>.*)"
)


def check_backup(settings: Settings, report: Report) -> None:
    """Retention counts are sane, the interval is positive and every target is a directory or rclone remote."""
    b = settings.backup
    if b.keep_daily < 1:
        # Zero daily backups would let a prune delete the backup just made.
        report.add(("backup", "keep_daily"), f"must be at least 1; got {b.keep_daily}")
    if b.keep_weekly < 0:
        report.add(("backup", "keep_weekly"), f"must be 0 or more; got {b.keep_weekly}")
    if b.interval <= 0:
        report.add(("backup", "interval"), f"must be greater than 0; got {b.interval:g}")
    if b.grace < 0:
        report.add(("backup", "grace"), f"must be 0 or more; got {b.grace:g}")
    if not 1 <= b.full_on <= 7:
        report.add(
            ("backup", "full_on"), f"must be an ISO weekday, 1 (Monday) to 7 (Sunday); got {b.full_on}"
        )
    if b.directory is not None and not b.directory.strip():
        report.add(("backup", "directory"), "must not be empty; leave it out for <data_dir>/backups")
    for i, target in enumerate(b.targets):
        path = ("backup", "targets", i)
        if target.startswith("rclone:"):
            if RCLONE_TARGET.fullmatch(target) is None:
                report.add(
                    path, "an rclone target is written rclone:<remote>:<path>, e.g. rclone:offsite:gateway"
                )
        elif not target.strip():
            report.add(path, "must be a directory or rclone:<remote>:<path>")
