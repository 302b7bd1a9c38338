"""Checks for where the gateway answers and how much it takes: public_url, listen, trusted_proxies,
``server`` and ``limits``."""

from __future__ import annotations

import ipaddress

from gateway.settings.checks.values import listen_problem, require_at_most, require_positive, url_problem
from gateway.settings.report import Report, quote
from gateway.settings.schema import Settings

__all__ = [
    "MIN_BACKLOG",
    "MIN_HEADER_TIMEOUT",
    "check_addresses",
    "check_capacity",
    "check_connections",
    "check_shutdown",
]

#: granian refuses a smaller listen backlog.
MIN_BACKLOG = 128
#: Shorter than this, a client on a slow link could not send a request head at all.
MIN_HEADER_TIMEOUT = 0.1
#: More worker processes than any host this runs on has cores for.
MAX_WORKERS = 256


def check_addresses(settings: Settings, report: Report) -> None:
    """public_url, listen and trusted_proxies are what they claim to be."""
    problem = url_problem(settings.public_url, allow_path=False)
    if problem:
        report.bad(
            ("public_url",), problem, "expected an absolute http(s) URL such as https://auth.example.com"
        )
    problem = listen_problem(settings.listen)
    if problem:
        report.bad(("listen",), problem, "expected host:port such as 127.0.0.1:8080 or [::1]:8080")
    for index, proxy in enumerate(settings.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            report.bad(
                ("trusted_proxies", index),
                f"{quote(proxy)} is not an IP address or network",
                "expected an IP address or CIDR network such as 10.0.0.0/8",
            )


def check_capacity(settings: Settings, report: Report) -> None:
    """Workers and request limits are positive, and within what the server and the host can take (a
    fuzzing run made the server fail at start with each of them past it)."""
    server, limits = settings.server, settings.limits
    require_positive(
        [
            (("server", "workers"), server.workers),
            (("server", "max_connections"), server.max_connections),
            (("limits", "max_header_bytes"), limits.max_header_bytes),
            (("limits", "max_body_size"), limits.max_body_size),
            (("limits", "max_upstream_connections"), limits.max_upstream_connections),
            (("limits", "body_timeout"), limits.body_timeout),
        ],
        report,
    )
    require_at_most(
        [
            (("server", "workers"), server.workers, MAX_WORKERS, "a process per core is plenty"),
            (("server", "max_connections"), server.max_connections, 1_000_000, "per worker"),
            (("limits", "max_header_bytes"), limits.max_header_bytes, 1 << 20, "1 MiB of request head"),
            (
                ("limits", "max_upstream_connections"),
                limits.max_upstream_connections,
                1_000_000,
                "per worker",
            ),
        ],
        report,
    )


def check_connections(settings: Settings, report: Report) -> None:
    """The listen backlog is one granian takes (at least 128); the header wait is at least 100 ms."""
    if settings.server.backlog < MIN_BACKLOG:
        report.add(
            ("server", "backlog"),
            f"must be at least {MIN_BACKLOG} (the server's minimum); got {settings.server.backlog}",
        )
    if settings.server.header_timeout < MIN_HEADER_TIMEOUT:
        report.add(
            ("server", "header_timeout"),
            f"must be at least {MIN_HEADER_TIMEOUT:g}s; got {settings.server.header_timeout:g}s",
        )
    require_at_most(
        [
            (("server", "backlog"), settings.server.backlog, 65535, "the kernel's largest"),
            (("server", "header_timeout"), settings.server.header_timeout, 3600, "an hour to send a head"),
        ],
        report,
    )


def check_shutdown(settings: Settings, report: Report) -> None:
    """The graceful shutdown wait is not negative (0 means stop at once)."""
    if settings.server.graceful_timeout < 0:
        report.add(("server", "graceful_timeout"), "must not be negative; use 0 to stop without waiting")
