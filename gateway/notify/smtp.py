"""Sending notifications over SMTP with aiosmtplib: one connection for a batch, one result per person.

aiosmtplib rather than stdlib ``smtplib`` in a thread: it is asyncio-native (the incident workflow runs
on the event loop, and a slow mail server must not hold a thread per batch), it does STARTTLS and
implicit TLS with our own ``SSLContext``, and it reports a refused recipient as an exception carrying
the server's code and text, so a refusal can be told from a broken connection.

What can happen, and what the caller sees:

* the server cannot be reached, TLS fails (certificate, no STARTTLS offered) or the login is refused
  at the start: :class:`MailUnavailable`, naming host and port (never the password); nothing is sent.
* a recipient, the sender or the message is refused by the server: that person's :class:`Delivery` is
  ``refused`` with the server's reply; the others go on over the same connection.
* the connection breaks in the middle: that person's delivery is ``failed``; the next message opens a
  new connection once, and if that fails every remaining one is ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import aiosmtplib

from gateway.errors import ServiceUnavailable
from gateway.notify.message import Message
from gateway.settings.schema import Settings, SmtpSettings

__all__ = ["Delivery", "MailUnavailable", "OnResult", "Outcome", "send_all"]

logger = logging.getLogger(__name__)


class MailUnavailable(ServiceUnavailable):
    """The mail server cannot be used: not configured, unreachable, TLS failed or the login refused."""

    reason = "notify-unavailable"
    title = "Mail server unavailable"


class Outcome(StrEnum):
    SENT = "sent"
    # The server answered no (its reply is the detail): retrying unchanged will not help.
    REFUSED = "refused"
    # No answer: the connection broke or timed out; the message may or may not have arrived.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened to one message: its outcome and the server's reply or the reason."""

    message: Message
    outcome: Outcome
    detail: str

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SENT


# Called with each delivery as soon as it is known (e.g. to record it in the audit trail).
OnResult = Callable[[Delivery], Awaitable[None]]


async def send_all(
    settings: Settings, messages: Sequence[Message], *, on_result: OnResult | None = None
) -> list[Delivery]:
    """Send every message, over one connection where possible; one :class:`Delivery` per message, in order.

    Raises:
        MailUnavailable: ``notify.smtp`` is not set, or the first connection (connect, TLS, login)
            fails; nothing was sent.
    """
    smtp = settings.notify.smtp
    if smtp is None:
        raise MailUnavailable("notify.smtp is not configured", reason="notify-not-configured")
    helo = urlsplit(settings.public_url).hostname or "localhost"
    client: aiosmtplib.SMTP | None = await _connect(smtp, helo) if messages else None
    lost: str | None = None
    deliveries: list[Delivery] = []
    try:
        for message in messages:
            if client is None and lost is None:
                try:
                    client = await _connect(smtp, helo)
                except MailUnavailable as exc:
                    lost = exc.detail
            if client is None:
                delivery = Delivery(message, Outcome.FAILED, f"not sent: {lost}")
            else:
                delivery = await _send_one(client, smtp, message)
                if delivery.outcome is Outcome.FAILED:
                    # The connection's state is unknown after a failure: never reuse it.
                    await _close(client)
                    client = None
            logger.info(
                "notification %s for %s (incident %s): %s",
                delivery.outcome,
                message.username,
                message.incident,
                delivery.detail,
            )
            deliveries.append(delivery)
            if on_result is not None:
                await on_result(delivery)
    finally:
        if client is not None:
            await _close(client)
    return deliveries


async def _connect(smtp: SmtpSettings, helo: str) -> aiosmtplib.SMTP:
    """An open, logged-in connection; :class:`MailUnavailable` naming host and port otherwise."""
    where = f"{smtp.host}:{smtp.effective_port}"
    client = aiosmtplib.SMTP(
        hostname=smtp.host,
        port=smtp.effective_port,
        local_hostname=helo,
        timeout=smtp.timeout,
        use_tls=smtp.security == "tls",
        # True: upgrade or fail (never fall back to plain text); False: never upgrade.
        start_tls=smtp.security == "starttls",
        tls_context=_tls_context(smtp) if smtp.security != "none" else None,
    )
    try:
        await client.connect()
        if smtp.username is not None and smtp.password is not None:
            await client.login(smtp.username, smtp.password)
    except aiosmtplib.SMTPAuthenticationError as exc:
        await _close(client)
        raise MailUnavailable(
            f"the SMTP server {where} refused the login of {smtp.username!r} "
            f"({exc.code} {exc.message}); check notify.smtp.username and password"
        ) from None
    except aiosmtplib.SMTPNotSupported as exc:
        await _close(client)
        raise MailUnavailable(
            f"the SMTP server {where} cannot do what notify.smtp asks: {exc.message}"
        ) from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        await _close(client)
        # aiosmtplib wraps a TLS failure of the connect in its own error: find it in the chain.
        tls = _tls_error(exc)
        if tls is not None:
            hint = (
                "; for a private CA set notify.smtp.ca_file"
                if isinstance(tls, ssl.SSLCertVerificationError)
                else ""
            )
            raise MailUnavailable(
                f"TLS with the SMTP server {where} failed: {tls.reason or tls}{hint}"
            ) from None
        raise MailUnavailable(f"cannot use the SMTP server {where}: {_reason(exc)}") from None
    return client


async def _send_one(client: aiosmtplib.SMTP, smtp: SmtpSettings, message: Message) -> Delivery:
    try:
        _errors, reply = await client.send_message(
            message.email, sender=smtp.sender, recipients=[message.address]
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0]
        return Delivery(message, Outcome.REFUSED, f"recipient refused: {refused.code} {refused.message}")
    except aiosmtplib.SMTPSenderRefused as exc:
        return Delivery(message, Outcome.REFUSED, f"sender refused: {exc.code} {exc.message}")
    except aiosmtplib.SMTPDataError as exc:
        return Delivery(message, Outcome.REFUSED, f"message refused: {exc.code} {exc.message}")
    except aiosmtplib.SMTPResponseException as exc:
        return Delivery(message, Outcome.REFUSED, f"refused: {exc.code} {exc.message}")
    except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
        return Delivery(message, Outcome.FAILED, f"not sent: {_reason(exc)}")
    return Delivery(message, Outcome.SENT, reply)


def _tls_context(smtp: SmtpSettings) -> ssl.SSLContext:
    # With ca_file only that CA is trusted (a private CA); hostname checking stays on either way.
    context = ssl.create_default_context(cafile=smtp.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _close(client: aiosmtplib.SMTP) -> None:
    """QUIT politely when the connection still works; a broken one is just closed."""
    try:
        if client.is_connected:
            await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


def _tls_error(exc: BaseException | None) -> ssl.SSLError | None:
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return f"timed out ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc) or type(exc).__name__
    return text
