"""One notification as an email: the template filled in for one person, ready to send or to look at.

Filling in is ``string.Template.safe_substitute``: a value is inserted as it is and never read as a
template or a format string, so a title like ``{0.__class__}`` or ``$password`` stays text. Values end
up in two places with different rules:

* **headers** (Subject, the To display name): one line. A line break would start a header of its own
  (header injection: a ``Bcc:`` added by whoever chose a display name), so :func:`render` refuses any
  header value with a control character; :func:`compose` uses the username instead of a display name
  that has one, so a person with a malicious display name is still told.
* **the body**: any text. Line endings are made ``\\n`` and other control characters removed; the body
  is UTF-8, quoted-printable, so no line is too long for SMTP and no byte is 8-bit on the wire.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid
from typing import Final
from urllib.parse import urlsplit

from gateway.errors import BadRequest
from gateway.settings.checks.notify import address_problem, header_problem
from gateway.settings.schema import DEFAULT_TEMPLATES, TEMPLATE_PLACEHOLDERS, MailTemplate, Settings

__all__ = [
    "BadMessage",
    "Incident",
    "Message",
    "Preview",
    "Recipient",
    "as_previewed",
    "compose",
    "preview",
    "render",
    "template_named",
    "values_for",
]

# Control characters a body may not carry: all C0 but tab and line feed, and DEL.
_BODY_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# RFC 5322 specials but the full stop (initials: "J. Smith" is quoted and kept whole when folded).
_ADDRESS_SPECIALS: Final = frozenset('()<>[]:;@\\,"')
# A preview without notify.smtp has no sender: a reserved name (RFC 2606 .invalid) fills the From
# header it is rendered with, and the preview says so instead of showing it.
_NO_SENDER: Final = Address(username="sender", domain="notify-smtp-not-configured.invalid")
_NO_SENDER_TEXT: Final = "(notify.smtp is not configured: no sender yet)"


class BadMessage(BadRequest):
    """A notification cannot be made from these values (an address, a header value, a template name)."""

    reason = "notify-bad-message"
    title = "Notification cannot be composed"


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who is told: the account's username, the address the mail goes to, and the name to greet."""

    username: str
    address: str
    # The display name; empty: the username.
    name: str = ""


@dataclass(frozen=True, slots=True)
class Incident:
    """What the person is told about: the incident's id and the operator's words for it."""

    id: str
    title: str
    summary: str
    what_to_do: str


@dataclass(frozen=True, slots=True)
class Message:
    """A rendered notification and what the audit record says about it (never its body)."""

    email: EmailMessage
    username: str
    address: str
    template: str
    incident: str

    @property
    def message_id(self) -> str:
        return str(self.email["Message-ID"])


@dataclass(frozen=True, slots=True)
class Preview:
    """What a notification would say, without sending it."""

    sender: str
    to: str
    subject: str
    body: str


def template_named(settings: Settings, name: str) -> MailTemplate:
    """The template ``name``: from ``notify.templates``, else built in; an unknown name is a :class:`BadMessage`."""
    template = settings.notify.templates.get(name) or DEFAULT_TEMPLATES.get(name)
    if template is None:
        known = sorted({*DEFAULT_TEMPLATES, *settings.notify.templates})
        raise BadMessage(f"no notification template {name!r}; templates: {', '.join(known)}")
    return template


def values_for(settings: Settings, recipient: Recipient, incident: Incident) -> dict[str, str]:
    """Every placeholder's value for this person and incident.

    ``$contact`` is the privacy contact (the grievance officer) when one is configured, else the
    sender; ``$organisation`` is ``notify.organisation``, else the host of ``public_url``. A display
    name that cannot go into a header is replaced by the username (see the module docstring).
    """
    name = recipient.name.strip()
    if not name or header_problem(name):
        name = recipient.username
    values = {
        "name": name,
        "username": recipient.username,
        "incident": incident.id,
        "title": incident.title,
        "summary": incident.summary,
        "what_to_do": incident.what_to_do,
        "contact": _contact(settings),
        "organisation": settings.notify.organisation or urlsplit(settings.public_url).hostname or "",
    }
    assert set(values) == set(TEMPLATE_PLACEHOLDERS)
    return values


def render(
    template: MailTemplate,
    values: Mapping[str, str],
    *,
    sender: Address,
    to: Address,
    now: datetime,
) -> EmailMessage:
    """The template filled in as a plain-text UTF-8 email with From, To, Subject, Date and Message-ID.

    Raises:
        BadMessage: a header value (the subject after filling in, a display name, an address) has a
            line break or control character, or an address is not a plain email address.
    """
    for role, address in (("sender", sender), ("recipient", to)):
        if problem := address_problem(address.addr_spec):
            raise BadMessage(f"the {role}'s address {problem}")
        if problem := header_problem(address.display_name):
            raise BadMessage(f"the {role}'s display name {problem}")
    for name in string.Template(template.subject).get_identifiers():
        if problem := header_problem(values.get(name, "")):
            raise BadMessage(f"${name} {problem}; it cannot go into the subject")
    subject = string.Template(template.subject).safe_substitute(values).strip()
    if problem := header_problem(subject):
        raise BadMessage(f"the subject {problem}")
    body_values = {key: _body_text(value) for key, value in values.items()}
    body = _body_text(string.Template(template.body).safe_substitute(body_values))
    email = EmailMessage()
    try:
        email["From"] = sender
        email["To"] = to
        email["Subject"] = subject
    except ValueError as exc:  # the email package's own refusal of a header: one person's, not a 500
        raise BadMessage(f"a header cannot be written: {exc}") from None
    # One recipient, the one meant, however the header reads back on the wire (what a reply goes to).
    if not _one_recipient_on_the_wire(email, to.addr_spec):
        raise BadMessage("the recipient's header reads as another address list; nothing was sent")
    email["Date"] = format_datetime(now)
    email["Message-ID"] = make_msgid(domain=sender.domain)
    # RFC 3834: sent by a program, so out-of-office responders do not answer it.
    email["Auto-Submitted"] = "auto-generated"
    email.set_content(body, charset="utf-8", cte="quoted-printable")
    return email


def compose(
    settings: Settings, recipient: Recipient, incident: Incident, *, now: datetime, template: str = "incident"
) -> Message:
    """The notification for one person, from the configured sender with the named template.

    Raises:
        BadMessage: as :func:`render`, or the template does not exist.
    """
    smtp = settings.notify.smtp
    if smtp is None:
        raise BadMessage("notify.smtp is not configured: there is no sender to write from")
    sender = _address(smtp.sender_name, smtp.sender, "sender")
    return _message(settings, recipient, incident, now=now, template=template, sender=sender)


def preview(
    settings: Settings, recipient: Recipient, incident: Incident, *, now: datetime, template: str = "incident"
) -> Preview:
    """What :func:`compose` would send, as text: nothing is sent. Works without ``notify.smtp`` (the
    team reviews the wording before a mail server is set up); ``sender`` then says there is none."""
    smtp = settings.notify.smtp
    sender = _NO_SENDER if smtp is None else _address(smtp.sender_name, smtp.sender, "sender")
    shown = as_previewed(_message(settings, recipient, incident, now=now, template=template, sender=sender))
    return shown if smtp is not None else replace(shown, sender=_NO_SENDER_TEXT)


def as_previewed(message: Message) -> Preview:
    """What a preview shows of ``message``: sender, recipient, subject and body."""
    email = message.email
    return Preview(
        sender=str(email["From"]),
        to=str(email["To"]),
        subject=str(email["Subject"]),
        body=email.get_content(),
    )


def _message(
    settings: Settings,
    recipient: Recipient,
    incident: Incident,
    *,
    now: datetime,
    template: str,
    sender: Address,
) -> Message:
    values = values_for(settings, recipient, incident)

    def rendered(name: str) -> EmailMessage:
        return render(
            template_named(settings, template),
            values,
            sender=sender,
            to=_address(name, recipient.address, "recipient"),
            now=now,
        )

    try:
        email = rendered(_header_name(values["name"], recipient.username))
    except BadMessage:
        email = rendered(recipient.username)  # the name is what would not read back; else this raises too
    return Message(
        email=email,
        username=recipient.username,
        address=recipient.address,
        template=template,
        incident=incident.id,
    )


def _one_recipient_on_the_wire(email: EmailMessage, address: str) -> bool:
    """Whether the To header, as sent (folded for a plain and for a UTF-8 mail server), reads back as
    ``address`` alone: a long non-ASCII name with a full stop lost its quotes when folded for a UTF-8
    server and the header no longer parsed (a re-attack run), where the preview looked fine."""
    for policy in (email_policy.SMTP, email_policy.SMTPUTF8):
        try:
            parsed = BytesParser(policy=email_policy.default).parsebytes(email.as_bytes(policy=policy))
            if [a.addr_spec for a in parsed["To"].addresses] != [address]:
                return False
        except (ValueError, TypeError, AttributeError, IndexError):
            return False
    return True


def _header_name(name: str, username: str) -> str:
    """The recipient's name as the To header shows it: the username when the display name holds a
    character with a meaning in an address list, an encoded word (``=?utf-8?b?…?=``, which the email
    package decodes and writes back unquoted) or a line break. Python folded a long To header without
    the quotes around such a name, and ``x, attacker@evil.example`` read as more recipients (a
    re-attack run's Reply-All; another's hid it in base64); ``$name`` in the body stays as the person
    wrote it."""
    unsafe = "=?" in name or header_problem(name) or any(char in _ADDRESS_SPECIALS for char in name)
    return username if unsafe else name


def _address(name: str, address: str, role: str) -> Address:
    if problem := address_problem(address):
        raise BadMessage(f"the {role}'s address {problem}")
    local, _, domain = address.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def _contact(settings: Settings) -> str:
    contact = settings.privacy.contact
    if contact.email and contact.name:
        return f"{contact.name} <{contact.email}>"
    if contact.email or contact.name:
        return contact.email or contact.name
    smtp = settings.notify.smtp
    return smtp.sender if smtp is not None else ""


def _body_text(text: str) -> str:
    return _BODY_CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
