"""The ``notify`` section: SMTP server, sender and templates, checked with the line they are on."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings


def _errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(textwrap.dedent(text))
    return str(info.value)


def test_defaults_need_no_mail_server() -> None:
    notify = parse_settings("public_url: https://auth.example.com\n").notify
    assert (notify.smtp, notify.organisation, notify.templates) == (None, "", {})


def test_a_full_section(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here\n")
    settings = parse_settings(
        textwrap.dedent(f"""\
        public_url: https://auth.example.com
        notify:
          organisation: Example Ltd
          smtp:
            host: smtp.example.com
            security: tls
            username: gateway
            password: ${{env:SMTP_PASSWORD}}
            sender: security@example.com
            timeout: 10s
            ca_file: {ca}
          templates:
            incident: {{subject: "Notice: $title", body: "Hello $name\\n$summary\\n$$5"}}
        """),
        environ={"SMTP_PASSWORD": "s3cret-Pass"},
    )
    smtp = settings.notify.smtp
    assert smtp is not None
    assert (smtp.effective_port, smtp.password, float(smtp.timeout)) == (465, "s3cret-Pass", 10.0)
    assert settings.notify.templates["incident"].subject == "Notice: $title"


def test_default_ports() -> None:
    for security, port in (("starttls", 587), ("tls", 465), ("none", 25)):
        smtp = parse_settings(
            "public_url: https://auth.example.com\n"
            f"notify:\n  smtp: {{host: localhost, security: {security}, sender: a@example.com}}\n"
        ).notify.smtp
        assert smtp is not None
        assert smtp.effective_port == port


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.3.4.5"])
def test_plain_smtp_is_allowed_on_loopback(host: str) -> None:
    smtp = parse_settings(
        f"public_url: https://auth.example.com\nnotify:\n  smtp: {{host: '{host}', security: none, sender: a@example.com}}\n"
    ).notify.smtp
    assert smtp is not None
    assert (smtp.host, smtp.security) == (host, "none")


def test_bad_values_are_reported_with_their_lines() -> None:
    report = _errors("""\
        public_url: https://auth.example.com
        notify:
          smtp:
            host: mail.example.com
            security: none
            port: 70000
            username: gateway
            sender: "security at example.com"
            timeout: 0s
            ca_file: /nonexistent/ca.pem
          templates:
            incident: {subject: "Notice $titel", body: "Hello $name"}
            Bad Name: {subject: x, body: y}
            money: {subject: "Pay $5", body: " "}
        """)
    assert "<config>:5: notify.smtp.security: none sends mail (and the password) unencrypted" in report
    assert 'not "mail.example.com": use starttls (port 587) or tls (port 465)' in report
    assert "<config>:6: notify.smtp.port: must be 1-65535; got 70000" in report
    assert "notify.smtp.password: is required when the other of username and password is set" in report
    assert '<config>:8: notify.smtp.sender: "security at example.com" is not an email address' in report
    assert "<config>:9: notify.smtp.timeout: must be greater than 0" in report
    assert "<config>:10: notify.smtp.ca_file: is set but security is none" in report
    assert (
        "<config>:12: notify.templates.incident.subject: unknown placeholder $titel; templates can use $name"
        in report
    )
    assert '<config>:13: notify.templates["Bad Name"]: is not a valid template name' in report
    assert (
        "<config>:14: notify.templates.money.subject: has a $ that starts no placeholder; write $$" in report
    )
    assert "<config>:14: notify.templates.money.body: must not be empty" in report


def test_unreadable_ca_file_and_bad_host() -> None:
    report = _errors("""\
        public_url: https://auth.example.com
        notify:
          smtp: {host: "smtp://mail.example.com", sender: a@example.com, ca_file: /nonexistent/ca.pem}
        """)
    assert 'notify.smtp.host: "smtp://mail.example.com" has a scheme; write only the hostname' in report
    assert 'notify.smtp.ca_file: "/nonexistent/ca.pem" is not a readable file' in report


def test_a_secret_password_is_never_shown() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(
            "public_url: https://auth.example.com\n"
            "notify:\n  smtp:\n    host: mail.example.com\n    sender: ${env:SENDER}\n    password: ${env:PW}\n",
            environ={"PW": "hunter2-secret", "SENDER": "not an address"},
        )
    text = str(info.value)
    assert "hunter2-secret" not in text
    assert "not an address" not in text
    assert "notify.smtp.sender: the value of ${env:SENDER} (not shown) is invalid" in text
    assert "notify.smtp.username: is required when the other of username and password is set" in text
