"""``--leaked-since`` and ``--drop-unsettled``: how every command that marks a leaked keyring key takes the
leak's time, and the override of the account ledger's refusal.

``gateway keys rotate|activate|mark-compromised`` and ``gateway incident case rotate-keys`` add the
option and check it here, so a time one of them takes the other takes too, and each refuses a time
that cannot be read, or one in the future, before anything is rotated or marked (exit 2). The leak's
time moves what the mark still vouches for (:func:`gateway.crypto.lifecycle.mark_compromised`).
"""

from __future__ import annotations

import argparse
from datetime import datetime

from gateway.cli.harness import UserError

__all__ = ["add_drop_unsettled_arg", "add_leak_arg", "check_leak", "leak_time_arg"]

# Heavy imports (the clock, the key lifecycle, the audit query) happen when a command runs, not when
# the parser is built: `gateway --help` must not pay for them.


def leak_time_arg(text: str) -> datetime:
    """argparse type: ISO 8601, UTC when no offset is given (a date alone means its midnight)."""
    from gateway.audit.query import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_leak_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--leaked-since ISO`` (``args.leaked_since``: an aware UTC time, or None)."""
    p.add_argument(
        "--leaked-since",
        type=leak_time_arg,
        metavar="ISO",
        help="the earliest the key could have leaked (UTC if no offset), when known: the backups made since "
        "are not vouched for either, as what the leaked key signed cannot be told from the gateway's own",
    )


def add_drop_unsettled_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--drop-unsettled`` (``args.drop_unsettled``): mark even though this node's account ledger
    holds changes the database lacks (:func:`gateway.crypto.lifecycle.refuse_unsettled`)."""
    p.add_argument(
        "--drop-unsettled",
        action="store_true",
        help="mark the key even though this node's account ledger holds changes the database lacks (a "
        "restored database no gateway has started on yet, or changes a gateway could not make): they are "
        "given up, and recorded as keys.ledger_unsettled_dropped. Start a gateway on a restored database first",
    )


def check_leak(leaked_since: datetime | None, *, compromised: bool, signing_only: bool) -> None:
    """``--leaked-since``: only with a mark of a keyring key, and not in the future.

    Args:
        leaked_since: The parsed option; None: not given (nothing to check).
        compromised: The command marks a keyring key compromised.
        signing_only: Only the signing key is rotated (no keyring key is marked).

    Raises:
        UserError: Any of these is not so (exit 2, before anything changes).
    """
    if leaked_since is None:
        return
    if not compromised:
        raise UserError("--leaked-since says when the keys leaked: give it with --compromised")
    if signing_only:
        raise UserError(
            "--leaked-since narrows what a leaked keyring key vouches for: rotate --keyring, or both (without "
            "--signing)"
        )
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.lifecycle import LeakTimeRefused, leak_time

    try:
        # Here too, not only where the rotation checks it: `keys activate` makes the key active first.
        leak_time(leaked_since, SYSTEM_CLOCK)
    except LeakTimeRefused as exc:
        raise UserError(f"--leaked-since: {exc.detail}") from None
