"""Checks for ``notify``: the SMTP server, the sender address and the notification templates.

The address and header rules live here because the notifier applies the same rules to every
recipient at send time (``gateway.notify`` imports them): one rule, so a sender the config accepted is
never refused later, and a recipient is held to what a sender is. Whether a host is loopback is the
settings' one test (:func:`gateway.settings.store_tls.is_loopback`), as for the stores and tracing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from typing import Final

from gateway.settings.checks.values import NAME_RULE, host_problem
from gateway.settings.report import KeyPath, Report, quote
from gateway.settings.schema import TEMPLATE_PLACEHOLDERS, Settings
from gateway.settings.store_tls import is_loopback

__all__ = ["address_problem", "check_notify", "header_problem"]

_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")
# RFC 5321 dot-atom local part and a DNS domain of at least two labels, ASCII only: no quoted local
# parts, comments, IP literals or SMTPUTF8. Strict on purpose: an address is written into a header and
# an SMTP command, and whatever this admits must be harmless in both.
_LOCAL: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]"
)
# C0 controls and DEL: CR and LF would start a new header (injection), the rest have no business there.
# Control characters, and every other character Python's line splitting breaks a line at (NEL, the
# Unicode line and paragraph separators): the email package refuses a header holding one (a re-attack
# run's display name with U+2028 stopped a whole round of notices with a 500).
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a plain ``local@domain.tld`` email address, or None."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "is not an email address (local@domain)"
    if len(address) > 254 or len(local) > 64:
        return "is too long for an email address"
    if not _LOCAL.fullmatch(local):
        return "has characters an email address's local part cannot have (plain ASCII, no spaces or quotes)"
    if not _DOMAIN.fullmatch(domain):
        return "has no valid domain after @ (letters, digits and - between dots; IDNs in punycode)"
    return None


def header_problem(value: str) -> str | None:
    """Why ``value`` cannot go into a mail header (a line break would start a header of its own), or None."""
    if _CONTROL.search(value):
        return "contains a line break or another control character"
    return None


def check_notify(settings: Settings, report: Report) -> None:
    """The SMTP server is reachable as written and never in the clear off this machine; the sender is an
    address; every template has a subject and body and refers only to placeholders the notifier fills."""
    notify = settings.notify
    if header_problem(notify.organisation):
        report.add(("notify", "organisation"), "must be one line (it goes into the subject)")
    if notify.smtp is not None:
        _check_smtp(settings, report)
    for name, template in notify.templates.items():
        at: KeyPath = ("notify", "templates", name)
        if not _NAME.fullmatch(name):
            report.bad(at, "is not a valid template name", NAME_RULE)
            continue
        _check_text((*at, "subject"), template.subject, report, one_line=True)
        _check_text((*at, "body"), template.body, report, one_line=False)


def _check_smtp(settings: Settings, report: Report) -> None:
    smtp = settings.notify.smtp
    assert smtp is not None
    at: KeyPath = ("notify", "smtp")
    host = smtp.host.strip("[]")
    if not _is_ip(host) and (problem := host_problem(host)):
        report.add((*at, "host"), f"{report.show((*at, 'host'), smtp.host)} {problem}")
    if smtp.port is not None and not 1 <= smtp.port <= 65535:
        report.add((*at, "port"), f"must be 1-65535; got {smtp.port}")
    if smtp.security == "none" and not is_loopback(host):
        report.add(
            (*at, "security"),
            f"none sends mail (and the password) unencrypted; it is allowed only to a loopback host, not "
            f"{quote(smtp.host)}: use starttls (port 587) or tls (port 465)",
        )
    if (smtp.username is None) != (smtp.password is None):
        missing = "password" if smtp.password is None else "username"
        report.add((*at, missing), "is required when the other of username and password is set")
    if smtp.username is not None and header_problem(smtp.username):
        report.add((*at, "username"), "must be one line")
    if problem := address_problem(smtp.sender):
        report.bad(
            (*at, "sender"),
            f"{report.show((*at, 'sender'), smtp.sender)} {problem}",
            "e.g. security@example.com",
        )
    if header_problem(smtp.sender_name):
        report.add((*at, "sender_name"), "must be one line (it goes into the From header)")
    if smtp.timeout <= 0:
        report.add((*at, "timeout"), f"must be greater than 0; got {smtp.timeout:g}")
    if smtp.ca_file is not None:
        if smtp.security == "none":
            report.add((*at, "ca_file"), "is set but security is none: there is no certificate to check")
        elif not os.path.isfile(smtp.ca_file) or not os.access(smtp.ca_file, os.R_OK):
            report.add(
                (*at, "ca_file"), f"{report.show((*at, 'ca_file'), smtp.ca_file)} is not a readable file"
            )


def _check_text(path: KeyPath, text: str, report: Report, *, one_line: bool) -> None:
    if not text.strip():
        report.add(path, "must not be empty")
        return
    if one_line and "\n" in text.strip("\n"):
        report.add(path, "must be one line")
    template = string.Template(text)
    if not template.is_valid():
        report.bad(path, "has a $ that starts no placeholder", "write $$ for a dollar sign")
        return
    unknown = [name for name in template.get_identifiers() if name not in TEMPLATE_PLACEHOLDERS]
    if unknown:
        report.add(
            path,
            f"unknown placeholder ${unknown[0]}; templates can use "
            + ", ".join(f"${name}" for name in TEMPLATE_PLACEHOLDERS),
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
