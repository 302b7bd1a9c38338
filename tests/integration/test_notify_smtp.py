"""Notifications sent to a real SMTP server (aiosmtpd on loopback), plain, STARTTLS and implicit TLS.

Checked at the server: every message arrives with exactly the headers and body that were rendered;
login with PLAIN or LOGIN over TLS trusted through ``ca_file``; a wrong password, a server that is not
there and an untrusted certificate are errors naming host and port and never the password; a refused
recipient among several is reported with the server's reply while the others are delivered over the
same connection; a header injection in a display name or a subject value never reaches the wire.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.notify import (
    BadMessage,
    Delivery,
    Incident,
    MailUnavailable,
    Message,
    Outcome,
    Recipient,
    compose,
    send_all,
)
from gateway.settings.loader import parse_settings
from gateway.settings.schema import Settings
from tests.integration.harness import free_port
from tests.support.certs import self_signed
from tests.support.smtp_server import SmtpServer, smtp_server

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
PASSWORD = "Tr0ub4dor&3-smtp"
INCIDENT = Incident(
    id="inc-7",
    title="Session tokens exposed",
    summary="Session tokens were written to a log for an hour.\nThey have been revoked.",
    what_to_do="Sign in again; check your recent activity.",
)


def _settings(smtp: str, tmp_path: Path) -> Settings:
    return parse_settings(
        textwrap.dedent("""\
        public_url: https://auth.example.com
        notify:
          organisation: Example Ltd
          smtp:
        """)
        + textwrap.indent(textwrap.dedent(smtp), "    "),
        base_dir=tmp_path,
        environ={"SMTP_PASSWORD": PASSWORD, "WRONG_PASSWORD": "not-the-password"},
    )


def _messages(settings: Settings, *people: tuple[str, str]) -> list[Message]:
    return [
        compose(settings, Recipient(username, address, username.title()), INCIDENT, now=NOW)
        for username, address in people
    ]


def _assert_received_as_rendered(server: SmtpServer, messages: list[Message]) -> None:
    assert len(server.received) == len(messages)
    for got, sent in zip(server.received, messages, strict=True):
        assert got.mail_from == "security@example.com"
        assert got.rcpt_tos == (sent.address,)
        parsed = got.message
        for header in ("From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "Content-Type"):
            assert parsed[header] == sent.email[header], header
        # SMTP carries lines ending CRLF; the text is the same.
        assert parsed.get_content().replace("\r\n", "\n") == sent.email.get_content()
        assert "Bcc" not in parsed
        # Nothing more than what was rendered (the server adds no header in the message itself).
        assert sorted(parsed.keys()) == sorted(sent.email.keys())


async def test_plain_on_loopback(tmp_path: Path) -> None:
    with smtp_server() as server:
        settings = _settings(
            f"""\
            host: 127.0.0.1
            port: {server.port}
            security: none
            sender: security@example.com
            """,
            tmp_path,
        )
        messages = _messages(settings, ("alice", "alice@example.org"), ("bob", "bob@example.org"))
        seen: list[Delivery] = []

        async def on_result(delivery: Delivery) -> None:
            seen.append(delivery)

        deliveries = await send_all(settings, messages, on_result=on_result)
        assert [d.outcome for d in deliveries] == [Outcome.SENT, Outcome.SENT]
        assert [d.detail for d in deliveries] == ["2.0.0 queued as test"] * 2
        assert seen == deliveries
        _assert_received_as_rendered(server, messages)
        assert server.received[0].login is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_starttls_with_private_ca_and_login(tmp_path: Path, mechanism: str) -> None:
    cert, key = self_signed(tmp_path, ips=["127.0.0.1"])
    with smtp_server(
        cert=cert, key=key, username="gateway", password=PASSWORD, mechanism=mechanism
    ) as server:
        settings = _settings(
            f"""\
            host: localhost
            port: {server.port}
            security: starttls
            username: gateway
            password: ${{env:SMTP_PASSWORD}}
            sender: security@example.com
            ca_file: {cert}
            """,
            tmp_path,
        )
        messages = _messages(settings, ("carol", "carol@example.org"))
        deliveries = await send_all(settings, messages)
        assert [d.outcome for d in deliveries] == [Outcome.SENT]
        _assert_received_as_rendered(server, messages)
        assert server.received[0].login == "gateway"
        assert server.auth_attempts == [(mechanism, "gateway")]


async def test_implicit_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, ips=["127.0.0.1"])
    with smtp_server(cert=cert, key=key, implicit_tls=True) as server:
        settings = _settings(
            f"""\
            host: localhost
            port: {server.port}
            security: tls
            sender: security@example.com
            ca_file: {cert}
            """,
            tmp_path,
        )
        messages = _messages(settings, ("dave", "dave@example.org"))
        assert [d.outcome for d in await send_all(settings, messages)] == [Outcome.SENT]
        _assert_received_as_rendered(server, messages)


async def test_wrong_password_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, ips=["127.0.0.1"])
    with smtp_server(cert=cert, key=key, username="gateway", password=PASSWORD) as server:
        settings = _settings(
            f"""\
            host: localhost
            port: {server.port}
            username: gateway
            password: ${{env:WRONG_PASSWORD}}
            sender: security@example.com
            ca_file: {cert}
            """,
            tmp_path,
        )
        with pytest.raises(MailUnavailable) as info:
            await send_all(settings, _messages(settings, ("erin", "erin@example.org")))
        detail = info.value.detail
        assert f"the SMTP server localhost:{server.port} refused the login of 'gateway' (535" in detail
        assert "not-the-password" not in detail
        assert PASSWORD not in detail
        assert server.received == []


async def test_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, ips=["127.0.0.1"])
    (tmp_path / "other").mkdir()
    other_ca, _ = self_signed(tmp_path / "other")
    with smtp_server(cert=cert, key=key) as server:
        settings = _settings(
            f"""\
            host: localhost
            port: {server.port}
            sender: security@example.com
            ca_file: {other_ca}
            """,
            tmp_path,
        )
        with pytest.raises(MailUnavailable) as info:
            await send_all(settings, _messages(settings, ("erin", "erin@example.org")))
        assert f"TLS with the SMTP server localhost:{server.port} failed" in info.value.detail
        assert "notify.smtp.ca_file" in info.value.detail
        assert server.received == []


async def test_starttls_required_but_not_offered(tmp_path: Path) -> None:
    with smtp_server() as server:
        settings = _settings(
            f"""\
            host: localhost
            port: {server.port}
            security: starttls
            sender: security@example.com
            """,
            tmp_path,
        )
        with pytest.raises(MailUnavailable, match=f"localhost:{server.port}.*STARTTLS"):
            await send_all(settings, _messages(settings, ("erin", "erin@example.org")))
        assert server.received == []


async def test_unreachable_server_names_host_and_port(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = _settings(
        f"""\
        host: 127.0.0.1
        port: {port}
        security: none
        username: gateway
        password: ${{env:SMTP_PASSWORD}}
        sender: security@example.com
        timeout: 5s
        """,
        tmp_path,
    )
    with pytest.raises(MailUnavailable) as info:
        await send_all(settings, _messages(settings, ("erin", "erin@example.org")))
    assert f"cannot use the SMTP server 127.0.0.1:{port}" in info.value.detail
    assert PASSWORD not in info.value.detail


async def test_a_refused_recipient_does_not_stop_the_others(tmp_path: Path) -> None:
    with smtp_server() as server:
        server.refuse.add("ghost@example.org")
        settings = _settings(
            f"""\
            host: 127.0.0.1
            port: {server.port}
            security: none
            sender: security@example.com
            """,
            tmp_path,
        )
        messages = _messages(
            settings,
            ("alice", "alice@example.org"),
            ("ghost", "ghost@example.org"),
            ("bob", "bob@example.org"),
        )
        deliveries = await send_all(settings, messages)
        assert [d.outcome for d in deliveries] == [Outcome.SENT, Outcome.REFUSED, Outcome.SENT]
        assert deliveries[1].detail == "recipient refused: 550 5.1.1 <ghost@example.org>: no such mailbox"
        assert [d.message.username for d in deliveries] == ["alice", "ghost", "bob"]
        _assert_received_as_rendered(server, [messages[0], messages[2]])


async def test_header_injection_never_reaches_the_server(tmp_path: Path) -> None:
    with smtp_server() as server:
        settings = _settings(
            f"""\
            host: 127.0.0.1
            port: {server.port}
            security: none
            sender: security@example.com
            """,
            tmp_path,
        )
        # A display name with a line break: neutralised (the username greets), the mail still goes.
        evil = Recipient("mallory", "mallory@example.org", "Mallory\r\nBcc: everyone@example.org")
        message = compose(settings, evil, INCIDENT, now=NOW)
        # A line break in a subject placeholder: refused before anything is sent.
        injected = Incident(id="i", title="x\r\nBcc: everyone@example.org", summary="s", what_to_do="w")
        with pytest.raises(BadMessage, match=r"\$title contains a line break"):
            compose(settings, Recipient("bob", "bob@example.org"), injected, now=NOW)
        assert [d.outcome for d in await send_all(settings, [message])] == [Outcome.SENT]
        [got] = server.received
        assert got.rcpt_tos == ("mallory@example.org",)
        assert b"Bcc" not in got.raw
        assert got.message["To"] == "mallory <mallory@example.org>"
        _assert_received_as_rendered(server, [message])
