"""Rendering a notification: placeholders filled safely, headers one line, the body as written."""

from __future__ import annotations

import string
import textwrap
from datetime import UTC, datetime
from email.headerregistry import Address

import pytest

from gateway.notify import BadMessage, Incident, Recipient, compose, preview, render
from gateway.notify.message import values_for
from gateway.settings.loader import parse_settings
from gateway.settings.schema import DEFAULT_TEMPLATES, TEMPLATE_PLACEHOLDERS, MailTemplate, Settings

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
INCIDENT = Incident(
    id="inc-42",
    title="Password database exposure",
    summary="A backup of sign-in records was readable for two hours.\nNo passwords were in it.",
    what_to_do="Change your password and review your sessions.",
)


def _settings(extra: str = "") -> Settings:
    return parse_settings(
        textwrap.dedent("""\
        public_url: https://auth.example.com
        privacy:
          contact: {name: Grievance Officer, email: privacy@example.com}
        notify:
          organisation: Example Ltd
          smtp: {host: mail.example.com, sender: security@example.com, sender_name: Example Security}
        """)
        + extra
    )


def test_default_templates_use_only_known_placeholders() -> None:
    for template in DEFAULT_TEMPLATES.values():
        for text in (template.subject, template.body):
            assert string.Template(text).is_valid()
            assert set(string.Template(text).get_identifiers()) <= set(TEMPLATE_PLACEHOLDERS)


def test_compose_fills_every_placeholder() -> None:
    message = compose(_settings(), Recipient("alice", "alice@example.org", "Alice Ng"), INCIDENT, now=NOW)
    email = message.email
    assert email["From"] == "Example Security <security@example.com>"
    assert email["To"] == "Alice Ng <alice@example.org>"
    assert email["Subject"] == "Security notice from Example Ltd: Password database exposure"
    assert email["Date"] == "Mon, 01 Mar 2027 12:00:00 +0000"
    assert email["Message-ID"].endswith("@example.com>")
    assert email["Auto-Submitted"] == "auto-generated"
    assert email.get_content_type() == "text/plain"
    assert email.get_content_charset() == "utf-8"
    body = email.get_content()
    assert body.startswith("Hello Alice Ng,\n")
    assert "account (alice)" in body
    assert "two hours.\nNo passwords were in it.\n" in body
    assert "contact Grievance Officer <privacy@example.com>." in body
    assert "reference inc-42." in body
    assert "$" not in body
    assert (message.username, message.incident, message.template) == ("alice", "inc-42", "incident")


def test_values_are_text_never_templates_or_format_strings() -> None:
    tricky = Incident(id="i1", title="$username {0.__class__} %s", summary="${contact}", what_to_do="$$")
    email = compose(_settings(), Recipient("bob", "bob@example.org"), tricky, now=NOW).email
    assert email["Subject"] == "Security notice from Example Ltd: $username {0.__class__} %s"
    body = email.get_content()
    assert "${contact}" in body
    assert "\n$$\n" in body
    assert body.startswith("Hello bob,\n")  # no display name: the username


@pytest.mark.parametrize(
    "title",
    ["Exposure\r\nBcc: attacker@evil.example", "Exposure\nBcc: attacker@evil.example", "a\rb", "a\x00b"],
)
def test_line_break_in_a_subject_value_is_refused(title: str) -> None:
    incident = Incident(id="i1", title=title, summary="s", what_to_do="w")
    with pytest.raises(BadMessage, match=r"\$title contains a line break"):
        compose(_settings(), Recipient("bob", "bob@example.org"), incident, now=NOW)


def test_display_name_with_a_line_break_is_replaced_by_the_username() -> None:
    evil = Recipient("mallory", "mallory@example.org", "Mallory\r\nBcc: everyone@example.org")
    email = compose(_settings(), evil, INCIDENT, now=NOW).email
    assert email["To"] == "mallory <mallory@example.org>"
    assert "Bcc" not in email
    assert "Bcc" not in email.as_string()
    assert email.get_content().startswith("Hello mallory,\n")


def test_a_display_name_that_reads_as_an_address_list_is_not_put_in_the_to_header() -> None:
    """A re-attack run: Python folded this long To header without the quotes around the name, and a
    mail client read three recipients (Reply-All reached the attacker). The body keeps the name."""
    from email import policy
    from email.parser import BytesParser

    name = "Bob. Note: reply, attacker@evil.example, thanks a lot for reading this long name"
    email = compose(_settings(), Recipient("bob", "bob@example.org", name), INCIDENT, now=NOW).email
    parsed = BytesParser(policy=policy.default).parsebytes(email.as_bytes())
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@example.org"]
    assert parsed["To"] == "bob <bob@example.org>"
    assert email.get_content().startswith(f"Hello {name},\n")
    # Initials keep the name: a full stop is quoted and kept whole.
    kept = compose(_settings(), Recipient("js", "js@example.org", "J. Smith"), INCIDENT, now=NOW).email
    assert kept["To"] == '"J. Smith" <js@example.org>'


def test_a_display_name_hiding_an_address_list_in_an_encoded_word_is_not_put_in_the_to_header() -> None:
    """A re-attack run: the name "=?utf-8?b?<base64 of 'Bob <attacker@evil.example>, Bob'>?=" showed
    as one encoded word in the preview, and the wire header read as two addresses."""
    import base64
    from email import policy
    from email.parser import BytesParser

    hidden = base64.b64encode(b"Bob <attacker@evil.example>, Bob").decode()
    name = f"=?utf-8?b?{hidden}?="
    email = compose(_settings(), Recipient("bob", "bob@example.org", name), INCIDENT, now=NOW).email
    parsed = BytesParser(policy=policy.default).parsebytes(email.as_bytes())
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@example.org"]
    assert b"attacker" not in email.as_bytes().split(b"\n\n", 1)[0]


@pytest.mark.parametrize("breaker", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_a_display_name_with_any_line_breaker_still_gets_its_notice(breaker: str) -> None:
    """A re-attack run: a display name with U+2028, used in the subject ($name), stopped a whole round
    of notices with a 500 (the email package refused the header). The person is told, by username."""
    recipient = Recipient("dan", "dan@example.org", f"Dan{breaker}Bcc: x@evil.example")
    assert values_for(_settings(), recipient, INCIDENT)["name"] == "dan"
    email = compose(_settings(), recipient, INCIDENT, now=NOW).email
    assert email["To"] == "dan <dan@example.org>"
    assert email.get_content().startswith("Hello dan,\n")


def test_render_itself_refuses_a_header_value_with_a_control_character() -> None:
    # email.headerregistry.Address refuses CR and LF itself; render refuses the other controls too.
    template = MailTemplate(subject="Hi $name", body="x")
    with pytest.raises(BadMessage, match="display name contains a line break or another control character"):
        render(
            template,
            {"name": "x"},
            sender=Address("S", "s", "example.com"),
            to=Address("Eve\x00Bcc: x@example.org", "eve", "example.org"),
            now=NOW,
        )


@pytest.mark.parametrize(
    "address",
    [
        "no-at-sign",
        "a b@example.org",
        "a@b",
        '"q"@example.org',
        "a@example.org\r\nBcc: x@y.org",
        "é@example.org",
    ],
)
def test_bad_recipient_addresses_are_refused(address: str) -> None:
    with pytest.raises(BadMessage, match="recipient's address"):
        compose(_settings(), Recipient("bob", address), INCIDENT, now=NOW)


def test_body_control_characters_are_removed_and_line_endings_made_one() -> None:
    incident = Incident(id="i1", title="t", summary="one\r\ntwo\rthree\x1b[31m\x07", what_to_do="w")
    body = compose(_settings(), Recipient("bob", "bob@example.org"), incident, now=NOW).email.get_content()
    assert "one\ntwo\nthree[31m\n" in body


def test_unicode_survives_in_subject_name_and_body() -> None:
    incident = Incident(id="i1", title="Fuite de données", summary="Überprüfung — 検査", what_to_do="w")
    message = compose(_settings(), Recipient("zoe", "zoe@example.org", "Zoë Ångström"), incident, now=NOW)
    wire = message.email.as_bytes()
    assert wire.isascii()  # RFC 2047 headers and quoted-printable body: nothing 8-bit on the wire
    assert message.email["Subject"] == "Security notice from Example Ltd: Fuite de données"
    assert "Überprüfung — 検査" in message.email.get_content()


def test_named_template_and_unknown_template() -> None:
    settings = _settings(
        "  templates:\n    reset: {subject: 'Reset for $username', body: 'Hello $name, see $incident.'}\n"
    )
    shown = preview(settings, Recipient("carol", "carol@example.org"), INCIDENT, now=NOW, template="reset")
    assert (shown.subject, shown.body, shown.to) == (
        "Reset for carol",
        "Hello carol, see inc-42.\n",
        "carol <carol@example.org>",
    )
    # The built-in incident template stays available beside the configured ones.
    assert preview(settings, Recipient("carol", "carol@example.org"), INCIDENT, now=NOW).subject.startswith(
        "Security notice"
    )
    with pytest.raises(BadMessage, match="no notification template 'nope'; templates: incident, reset"):
        compose(settings, Recipient("carol", "carol@example.org"), INCIDENT, now=NOW, template="nope")


def test_contact_and_organisation_fall_back() -> None:
    settings = parse_settings(
        "public_url: https://auth.example.com\n"
        "notify:\n  smtp: {host: mail.example.com, sender: security@example.com}\n"
    )
    body = compose(settings, Recipient("bob", "bob@example.org"), INCIDENT, now=NOW).email.get_content()
    assert "contact security@example.com." in body
    assert "incident at auth.example.com that" in body


def test_a_preview_needs_no_mail_server_but_sending_does() -> None:
    # The console and `incident case notify --preview` offer previews before notify.smtp is set up.
    settings = parse_settings("public_url: https://auth.example.com\nnotify:\n  organisation: Example Ltd\n")
    shown = preview(settings, Recipient("bob", "bob@example.org", "Bob"), INCIDENT, now=NOW)
    assert shown.sender == "(notify.smtp is not configured: no sender yet)"
    assert (shown.to, shown.subject) == (
        "Bob <bob@example.org>",
        "Security notice from Example Ltd: Password database exposure",
    )
    assert shown.body.startswith("Hello Bob,\n")
    with pytest.raises(BadMessage, match=r"notify\.smtp is not configured"):
        compose(settings, Recipient("bob", "bob@example.org"), INCIDENT, now=NOW)


def test_a_name_that_folds_into_another_header_for_a_utf8_server_is_left_out() -> None:
    """A re-attack run: a long non-ASCII name starting with a full stop passed, and folded for a mail
    server that takes UTF-8 headers (aiosmtplib then uses policy.SMTPUTF8) it lost its quotes: the To
    header no longer parsed, while the preview looked fine."""
    from email import policy
    from email.parser import BytesParser

    name = ".!+_'%" + "é" * 80 + " x"
    email = compose(_settings(), Recipient("bob", "bob@corp.example", name), INCIDENT, now=NOW).email
    for sent_as in (policy.SMTP, policy.SMTPUTF8):
        parsed = BytesParser(policy=policy.default).parsebytes(email.as_bytes(policy=sent_as))
        assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@corp.example"]
    assert email.get_content().startswith(f"Hello {name},\n")
