"""``gateway notify test`` as an operator runs it: a real subprocess, a real SMTP server (aiosmtpd).

Checked: the message arrives as the dry run printed it, the audit trail gets one notify.sent (no body,
no password); a refused address is exit 1 with the server's reply and a notify.failed; a wrong password
is exit 1 naming host and port, not the password; bad input is exit 2 with nothing sent.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from tests.integration.harness import run_cli
from tests.support.certs import self_signed
from tests.support.smtp_server import smtp_server

PASSWORD = "s3cret-smtp-Pass"


def _config(tmp_path: Path, port: int, cert: Path) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "public_url: https://auth.example.com\n"
        f"data_dir: {tmp_path / 'data'}\n"
        "notify:\n"
        "  organisation: Example Ltd\n"
        "  smtp:\n"
        "    host: localhost\n"
        f"    port: {port}\n"
        "    username: gateway\n"
        "    password: ${env:SMTP_PASSWORD}\n"
        "    sender: security@example.com\n"
        f"    ca_file: {cert}\n"
    )
    return config


def _audit(tmp_path: Path) -> list[tuple[str, str, str, dict[str, object]]]:
    with closing(sqlite3.connect(tmp_path / "data" / "gateway.db")) as conn:
        return [
            (kind, subject, outcome, json.loads(details))
            for kind, subject, outcome, details in conn.execute(
                "SELECT kind, subject, outcome, details FROM audit_events "
                "WHERE kind LIKE 'notify.%' ORDER BY seq"
            )
        ]


def test_notify_test_sends_refuses_and_fails_clearly(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with smtp_server(cert=cert, key=key, username="gateway", password=PASSWORD) as server:
        server.refuse.add("nobody@example.org")
        c = ("--config", str(_config(tmp_path, server.port, cert)))
        env = {"SMTP_PASSWORD": PASSWORD}

        dry = run_cli(
            "notify", "test", *c, "--to", "ops@example.org", "--name", "Ops Team", "--dry-run", env=env
        )
        assert dry.returncode == 0, dry.stderr
        assert "Subject: Security notice from Example Ltd: test message" in dry.stdout
        assert "To: Ops Team <ops@example.org>" in dry.stdout
        assert server.received == []

        sent = run_cli("notify", "test", *c, "--to", "ops@example.org", "--name", "Ops Team", env=env)
        assert sent.returncode == 0, sent.stderr
        assert (
            f"sent to ops@example.org via localhost:{server.port} (starttls): 2.0.0 queued as test"
            in sent.stdout
        )
        [got] = server.received
        assert got.rcpt_tos == ("ops@example.org",)
        assert got.login == "gateway"
        assert got.message["Subject"] == "Security notice from Example Ltd: test message"
        assert "Nothing has happened to your account." in got.message.get_content()
        assert f"Message-ID: {got.message['Message-ID']}" in sent.stdout

        refused = run_cli("notify", "test", *c, "--to", "nobody@example.org", env=env)
        assert refused.returncode == 1
        assert "refused: nobody@example.org" in refused.stderr
        assert "550 5.1.1 <nobody@example.org>: no such mailbox" in refused.stderr

        wrong = run_cli("notify", "test", *c, "--to", "ops@example.org", env={"SMTP_PASSWORD": "wrong-one"})
        assert wrong.returncode == 1
        assert (
            f"not sent: the SMTP server localhost:{server.port} refused the login of 'gateway'"
            in wrong.stderr
        )
        assert "wrong-one" not in wrong.stderr + wrong.stdout

        for bad, message in (
            (("--to", "not-an-address"), "error: --to 'not-an-address' is not an email address"),
            (("--to", "ops@example.org", "--template", "nope"), "no notification template 'nope'"),
        ):
            result = run_cli("notify", "test", *c, *bad, env=env)
            assert result.returncode == 2
            assert message in result.stderr
            assert "Traceback" not in result.stderr
        assert len(server.received) == 1

    records = _audit(tmp_path)
    assert [(kind, outcome) for kind, _, outcome, _ in records] == [
        ("notify.sent", "success"),
        ("notify.failed", "failure"),
    ]
    assert records[0][3]["incident"] == "test"
    assert records[0][3]["template"] == "incident"
    assert records[0][3]["message_id"] == got.message["Message-ID"]
    assert "550 5.1.1" in str(records[1][3]["reply"])
    everything = json.dumps(records)
    assert PASSWORD not in everything
    assert "Nothing has happened" not in everything


def test_notify_test_without_smtp_settings(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: https://auth.example.com\ndata_dir: {tmp_path / 'data'}\n")
    result = run_cli("notify", "test", "--config", str(config), "--to", "ops@example.org")
    assert result.returncode == 2
    assert "has no notify.smtp" in result.stderr
