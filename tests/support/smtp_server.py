"""A real SMTP server for the notification tests: aiosmtpd on a loopback port, in a thread of its own.

It keeps what it received (envelope and the raw message, parsed back), refuses the recipients it is
told to with a 550, and can speak STARTTLS or implicit TLS and require AUTH (PLAIN and LOGIN) with one
username and password. Always used as a context manager, so the server stops when the test ends, also
when it fails.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.integration.harness import free_port

__all__ = ["Received", "SmtpServer", "smtp_server"]


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the server got it: envelope, the login used, and the message parsed back."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    login: str | None
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class SmtpServer:
    """What a test reads and steers: the port, received messages, recipients to refuse, auth attempts."""

    port: int
    refuse: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    auth_attempts: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, login)

    # -- aiosmtpd's handler hooks --

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # What the authenticator accepted (its AuthResult's auth_data).
        auth_data: object = session.auth_data
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None
        content = envelope.original_content or b""
        self.received.append(
            Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), login, bytes(content))
        )
        return "250 2.0.0 queued as test"


def _authenticator(
    server_state: SmtpServer, username: str, password: str
) -> Any:  # aiosmtpd's AuthenticatorType is a loose callable
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        server_state.auth_attempts.append((mechanism, auth_data.login.decode()))
        ok = auth_data.login.decode() == username and auth_data.password.decode() == password
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    return authenticate


@contextmanager
def smtp_server(
    *,
    cert: Path | None = None,
    key: Path | None = None,
    implicit_tls: bool = False,
    username: str | None = None,
    password: str | None = None,
    mechanism: str | None = None,
) -> Iterator[SmtpServer]:
    """Run a server on 127.0.0.1 until the block ends.

    With ``cert``/``key``: STARTTLS offered and required before MAIL (or, ``implicit_tls``, TLS from
    the first byte). With ``username``/``password``: AUTH PLAIN/LOGIN required, only over TLS;
    ``mechanism`` offers only that one of the two.
    """
    state = SmtpServer(port=free_port())
    context: ssl.SSLContext | None = None
    if cert is not None and key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    kwargs: dict[str, Any] = {}
    if username is not None and password is not None:
        kwargs.update(
            authenticator=_authenticator(state, username, password),
            auth_required=True,
            auth_require_tls=True,
            auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if mechanism not in (None, m)],
        )
    if context is not None and not implicit_tls:
        kwargs.update(tls_context=context, require_starttls=True)
    controller = Controller(
        state,
        hostname="127.0.0.1",
        port=state.port,
        ssl_context=context if implicit_tls else None,
        server_hostname="localhost" if implicit_tls else None,
        **kwargs,
    )
    controller.start()
    try:
        yield state
    finally:
        controller.stop()
