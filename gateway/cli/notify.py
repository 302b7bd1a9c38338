"""``gateway notify …``: try the notification settings before an incident needs them.

    gateway notify test --to ADDRESS [--template NAME] [--name NAME] [--dry-run]

``test`` renders the template (``incident`` unless ``--template``) for a made-up test incident,
addressed to ADDRESS, and sends it through ``notify.smtp`` over the connection the incident workflow
would use (TLS, login). It prints what happened: sent, with the server's reply and the Message-ID;
refused, with the server's reply; or why the server could not be used (host and port, never the
password). A sent or refused message is recorded in the audit trail (``notify.sent`` /
``notify.failed``, incident ``test``). ``--dry-run`` prints the message instead and sends nothing.

Exit codes: 0 sent (or printed), 1 not sent (refused, server unreachable, login refused), 2 invalid
input or configuration (no ``notify.smtp``, a bad address, an unknown template). Takes ``--config FILE``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from gateway.cli.harness import (
    EXIT_OK,
    Failed,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    load_config,
    open_store,
    operator,
    run,
)

if TYPE_CHECKING:
    from gateway.notify import Delivery, Message
    from gateway.settings.schema import Settings

__all__ = ["register"]

# The made-up incident of a test message: says plainly that nothing happened.
TEST_INCIDENT_ID = "test"
TEST_TITLE = "test message"
TEST_SUMMARY = (
    "This is a test of the gateway's incident notifications, sent by an operator with "
    "`gateway notify test`. Nothing has happened to your account."
)
TEST_WHAT_TO_DO = "Nothing. If you did not expect this message, tell the contact below."


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway notify test``."""
    actions = command_group(
        sub,
        "notify",
        help="try the incident notification email settings",
        description="Incident notifications by email (notify.smtp, notify.templates).",
    )
    test = actions.add_parser(
        "test",
        help="send one rendered test notification",
        description="Render a notification template for a test incident and send it to one address "
        "through notify.smtp; say what happened.",
    )
    config_arg(test)
    test.add_argument("--to", required=True, metavar="ADDRESS", help="where the test message goes")
    test.add_argument(
        "--template", default="incident", metavar="NAME", help="template to render (default: incident)"
    )
    test.add_argument(
        "--name", default="", metavar="NAME", help="the display name to greet (default: the address)"
    )
    test.add_argument("--dry-run", action="store_true", help="print the message; send nothing")
    test.set_defaults(func=_test)


def _test(args: argparse.Namespace) -> int:
    from gateway.clock import SYSTEM_CLOCK
    from gateway.notify import BadMessage, Incident, Recipient, compose
    from gateway.settings.checks.notify import address_problem

    settings = load_config(args)
    if settings.notify.smtp is None:
        raise UserError(
            f"{args.config} has no notify.smtp: set the mail server first (README, Notifications)"
        )
    to: str = args.to
    if problem := address_problem(to):
        raise UserError(f"--to {to[:80]!r} {problem}")
    recipient = Recipient(username=to, address=to, name=args.name)
    incident = Incident(
        id=TEST_INCIDENT_ID, title=TEST_TITLE, summary=TEST_SUMMARY, what_to_do=TEST_WHAT_TO_DO
    )
    try:
        message = compose(settings, recipient, incident, now=SYSTEM_CLOCK.now(), template=args.template)
    except BadMessage as exc:
        raise UserError(exc.detail) from None
    if args.dry_run:
        print(message.email.as_string(), end="")
        return EXIT_OK
    delivery = run(_send(settings, message))
    smtp = settings.notify.smtp
    where = f"{smtp.host}:{smtp.effective_port} ({smtp.security})"
    if not delivery.ok:
        raise Failed(f"{delivery.outcome}: {to} via {where}: {delivery.detail}")
    print(f"sent to {to} via {where}: {delivery.detail}")
    print(f"Message-ID: {message.message_id}")
    return EXIT_OK


async def _send(settings: Settings, message: Message) -> Delivery:
    from gateway.notify import MailUnavailable, record_delivery, send_all

    try:
        [delivery] = await send_all(settings, [message])
    except MailUnavailable as exc:
        raise Failed(f"not sent: {exc.detail}") from None
    async with open_store(settings, keyring=True) as store:
        await record_delivery(store.audit(), delivery, actor=operator())
    return delivery
