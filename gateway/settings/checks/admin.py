"""Checks for ``admin``: the admin API's own listener, how fresh an admin's second factor must be, and the
console's proposal, sample and invitation lifetimes."""

from __future__ import annotations

import ipaddress
import socket

from gateway.settings.checks.values import listen_problem, require_positive
from gateway.settings.listen import parse_listen
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_listen", "check_reauth"]


def check_reauth(settings: Settings, report: Report) -> None:
    """The re-authentication ages, the proposal and invitation lifetimes and the sample retention are
    positive, and a destructive action never accepts an older factor than any admin action."""
    admin = settings.admin
    require_positive(
        [
            (("admin", "reauth_max_age"), admin.reauth_max_age),
            (("admin", "destructive_reauth_max_age"), admin.destructive_reauth_max_age),
            (("admin", "proposal_ttl"), admin.proposal_ttl),
            (("admin", "sample_retention"), admin.sample_retention),
            (("admin", "invitation_ttl"), admin.invitation_ttl),
        ],
        report,
    )
    if admin.destructive_reauth_max_age > admin.reauth_max_age:
        report.add(
            ("admin", "destructive_reauth_max_age"),
            "must not exceed admin.reauth_max_age: destructive actions need the fresher factor",
        )


def check_listen(settings: Settings, report: Report) -> None:
    """The admin listener, when enabled, is an address of its own (never the data plane's)."""
    if settings.admin.listen is not None:
        problem = listen_problem(settings.admin.listen)
        if problem:
            report.bad(("admin", "listen"), problem, "expected host:port such as 127.0.0.1:9090, or null")
        elif listen_problem(settings.listen) is None and _overlap(settings.admin.listen, settings.listen):
            report.add(
                ("admin", "listen"),
                f"must not overlap listen ({settings.listen}): the admin plane has its own listener, and a "
                "wildcard address (0.0.0.0, [::]) on the same port takes every address's connections",
            )


def _overlap(first: str, second: str) -> bool:
    """Whether two listen addresses would take one port's connections: the same port, and the same
    address or a wildcard on either side (a re-attack run: ``0.0.0.0:P`` beside ``127.0.0.1:P``
    started, and every connection to 127.0.0.1 reached the admin console)."""
    host_a, port_a = parse_listen(first)
    host_b, port_b = parse_listen(second)
    if port_a != port_b:
        return False
    a, b = _address(host_a), _address(host_b)
    wildcards = {"0.0.0.0", "::", ""}  # noqa: S104 - comparing, not binding
    return a == b or a in wildcards or b in wildcards


def _address(host: str) -> str:
    """The address a listen host binds, in one spelling: IPv4 shorthand (``127.1``, ``0``) and IPv6
    forms (``::0``, ``::ffff:127.0.0.1``) as the kernel reads them, ``localhost`` as 127.0.0.1 (a
    re-attack run got each past a comparison of the text)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.inet_aton(name))
        except OSError:
            return name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
