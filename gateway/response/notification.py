"""Telling the people an incident affected: one templated email each (``gateway.notify``), previewed
first, each message audited (``notify.sent`` / ``notify.failed``) and listed in the incident's timeline.

Affected people without an email address on their account cannot be told this way: they are named
in the result (and the timeline), so the team reaches them otherwise.

Each message names its recipient alone: the incident's title and summary name who it was first
detected for ("brute force: dave"), and an incident can affect several people (detections from one
address join one case), so everyone else affected reads as "another account" in it. An attack run
had erin's notice say "brute force: dave" and describe dave's failed sign-ins.

The same goes for another person's addresses: a detection's summary can name the address the person it
was first raised for signed in from before ("signed in 16,087 km from the previous sign-in
(198.51.100.10)", often their home), and a later detection from the same attacker address joins the
case with the first summary. So in a case that affects several people, every IP address in the text
but the case's own (the addresses it is about, which each person may be told) reads as "another
address" (an attack run's preview told alice bob's previous address).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Final

from gateway.audit.trail import AuditLog
from gateway.errors import BadRequest, GatewayError
from gateway.identity.accounts import AccountService
from gateway.notify.audit import recorder
from gateway.notify.message import Incident, Preview, Recipient, as_previewed, compose, preview
from gateway.notify.smtp import Delivery, send_all
from gateway.privacy.mentions import Mentions
from gateway.response.cases import Cases, CaseView, canonical_address
from gateway.settings.schema import Settings

__all__ = ["DEFAULT_WHAT_TO_DO", "NoticeChanged", "Notified", "notify_affected"]

# What another affected person's name reads as in a recipient's message.
_SOMEONE_ELSE: Final = "another account"
# What an address of the text that is not the case's own reads as, when the case affects several people.
_ANOTHER_ADDRESS: Final = "another address"
# Candidates for an IP address in a text (checked by canonical_address): digits and dots, or hex and colons.
_ADDRESS_LIKE: Final = re.compile(
    r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f.]{0,4}){2,})(?![\w.:])"
)
# A display name shorter than this is looked for only as written, case and all: "Li" or "Wu" is a
# whole name, and "an" or "of" in any case would be words. One letter is not looked for.
_SHORTEST_NAME: Final = 3
DEFAULT_WHAT_TO_DO: Final = (
    "Sign in again and choose a new password if you are asked to. If you did not expect this message's "
    "activity on your account, tell the security contact below."
)


class NoticeChanged(GatewayError):
    """The messages to send are not the ones previewed (409; nothing was sent)."""

    status = 409
    reason = "notice-changed"
    title = "The notices changed since the preview"


@dataclass(slots=True)
class Notified:
    """What a notification round did (or, previewed, would do). ``digest`` names what each message
    says to whom (not its date): a send can be bound to the preview the team read."""

    digest: str = ""
    previews: list[Preview] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    without_address: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _digest(messages: list[Preview]) -> str:
    """SHA-256 of the messages as rendered: sender, recipient, subject and body (not the date or the
    Message-ID). The rendered text, not what went into it: a re-attack run changed the recipient's own
    display name ($name) and the template behind the same name between the preview and the send."""
    parts = [[m.sender, m.to, m.subject, m.body] for m in messages]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


class _OwnAddresses:
    """Every IP address of a text but ``own`` (the case's, canonical) replaced by :data:`_ANOTHER_ADDRESS`."""

    def __init__(self, own: tuple[str, ...]) -> None:
        self._own = frozenset(own)

    def text(self, value: str) -> str:
        def replace(found: re.Match[str]) -> str:
            address = canonical_address(found.group(0))
            return found.group(0) if address is None or address in self._own else _ANOTHER_ADDRESS

        return _ADDRESS_LIKE.sub(replace, value)


class _AsWritten:
    """Short display names (``Li``, ``Wu``) found as whole words written exactly so, replaced by
    :data:`_SOMEONE_ELSE`: a re-attack run's notice kept another affected person's two-letter name."""

    def __init__(self, names: list[str]) -> None:
        alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)") if names else None

    def text(self, value: str) -> str:
        return value if self._pattern is None else self._pattern.sub(_SOMEONE_ELSE, value)


async def _recipients(
    case: CaseView, accounts: AccountService, result: Notified
) -> tuple[list[Recipient], dict[str, set[str]], dict[str, set[str]]]:
    """Who gets a message; every name each affected account goes by (as the incident lists it, its
    username, email and display name), by username; and the display names too short to look for in
    any case (:data:`_SHORTEST_NAME`), by username."""
    found = []
    names: dict[str, set[str]] = {}
    short: dict[str, set[str]] = {}
    told: set[str] = set()
    for listed in case.affected_users:
        user = await accounts.find(listed)
        if user is None:
            result.missing.append(listed)
            names[listed] = {listed}
            continue
        display = user.display_name.strip()
        if 1 < len(display) < _SHORTEST_NAME:
            short.setdefault(user.username, set()).add(display)
            display = ""
        names.setdefault(user.username, set()).update(
            n for n in (listed, user.username, user.email, display) if n
        )
        if user.username in told:
            continue  # one person under several spellings (a re-attack run mailed one 65 times)
        told.add(user.username)
        if not user.email:
            result.without_address.append(listed)
        else:
            found.append(Recipient(username=user.username, address=user.email, name=user.display_name))
    return found, names, short


async def notify_affected(
    case: CaseView,
    *,
    settings: Settings,
    accounts: AccountService,
    cases: Cases,
    audit: AuditLog,
    actor: str,
    template: str = "incident",
    what_to_do: str = DEFAULT_WHAT_TO_DO,
    send: bool,
    previewed: str | None = None,
) -> Notified:
    """Preview (``send`` false) or send the incident's notification to every affected person.

    Args:
        previewed: The :attr:`Notified.digest` of the preview the sender read: the messages are sent
            only if they still say that. Another affected person's display name is left out of each
            message, and its owner can change it between the preview and the send (an attack run
            set one to a phrase of the record's text, which then went missing from everyone's notice).

    Raises:
        NoticeChanged: ``previewed`` is not what the messages say now; nothing was sent.
        BadRequest: no affected people; a template or value the notifier refuses.
        MailUnavailable: the SMTP server cannot be reached or refused the login (nothing was sent).
    """
    if not case.affected_users:
        raise BadRequest(f"Incident {case.id} names no affected user; add them first.")
    result = Notified()
    now = cases.clock.now()
    people, names, short = await _recipients(case, accounts, result)
    addresses = _OwnAddresses(case.addresses)

    def about(recipient: Recipient) -> Incident:
        # Every name of everyone else affected: as listed, username, email and display name (a
        # re-attack run found one listed by email, and one by the display name in the title).
        # Only what the recipient is known by for sure: a display name is chosen by its owner, and
        # one set to another affected person's username kept that name in the notice (a re-attack run).
        mine = {recipient.username, recipient.address}
        others = Mentions(
            [n for who, known in names.items() if who != recipient.username for n in known if n not in mine],
            _SOMEONE_ELSE,
        )
        as_written = _AsWritten(
            [n for who, known in short.items() if who != recipient.username for n in known if n not in mine]
        )
        title = as_written.text(others.text(case.title))
        summary = as_written.text(others.text(case.summary or case.title))
        if len(names) > 1:
            title, summary = addresses.text(title), addresses.text(summary)
        return Incident(id=case.id, title=title, summary=summary, what_to_do=what_to_do)

    written = [(r, about(r)) for r in people]
    if not send:
        result.previews = [preview(settings, r, said, now=now, template=template) for r, said in written]
        result.digest = _digest(result.previews)
        return result
    messages = [compose(settings, r, said, now=now, template=template) for r, said in written]
    result.digest = _digest([as_previewed(m) for m in messages])
    if previewed is not None and not hmac.compare_digest(previewed, result.digest):
        raise NoticeChanged(
            "The messages would not say what the preview said (the record, the people it names, a "
            "name or the template changed since): preview them again. Nothing was sent."
        )
    result.deliveries = await send_all(settings, messages, on_result=recorder(audit, actor=actor))
    sent = [d.message.username for d in result.deliveries if d.ok]
    failed = {d.message.username: d.detail for d in result.deliveries if not d.ok}
    await cases.record(
        case.id,
        "notification",
        actor,
        f"Notified {len(sent)} of {len(case.affected_users)} affected people by email ({template})"
        + (f"; not sent: {', '.join(sorted(failed))}" if failed else "")
        + (f"; no email address: {', '.join(result.without_address)}" if result.without_address else ""),
        {"sent": sent, "failed": failed, "without_address": result.without_address, "template": template},
    )
    return result
