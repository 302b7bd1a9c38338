"""Pass 4 of the loader: what the settings mean, subsystem by subsystem (one module each).

The walker has made every value the right type; a check says whether it makes sense: URLs, hostnames,
ports, CIDRs, unique names, reserved identity headers, readable files, sane timeouts, and values against
each other. A check records every problem it finds in the report and never raises.

A new key's check goes in its subsystem's module; a new check function goes in :data:`CHECKS`.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.settings.checks import (
    admin,
    assertion,
    audit,
    backup,
    identity,
    identity_headers,
    lockdown,
    logging,
    mfa,
    notify,
    passwords,
    pgbackrest,
    policy,
    privacy,
    regulation,
    routes,
    server,
    sessions,
    storage,
    threat,
    tls,
    tokens,
    tracing,
    upstream_tls,
)
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["CHECKS", "Check", "run_checks"]

Check = Callable[[Settings, Report], None]

# The order the checks run in. Problems are reported sorted by line, and problems on one line in the
# order they were found: this order keeps that the same as it has always been, which is why a few
# subsystems appear twice (their range checks with the others', their cross-field checks later).
CHECKS: tuple[Check, ...] = (
    server.check_addresses,
    storage.check_stores,
    tls.check_tls,
    # Numbers that must be positive.
    sessions.check_durations,
    storage.check_pool,
    server.check_capacity,
    server.check_connections,
    passwords.check_costs,
    regulation.check_counts,
    mfa.check_mfa,
    policy.check_cache,
    assertion.check_ttl,
    admin.check_reauth,
    audit.check_checkpoints,
    # Numbers against their floors and each other.
    server.check_shutdown,
    sessions.check_idle_within_lifetime,
    passwords.check_strength,
    regulation.check_allowance,
    sessions.check_cookie,
    sessions.check_insecure_cookies,
    # Authorization and the admin plane.
    assertion.check_key_rotation,
    policy.check_file,
    admin.check_listen,
    # Identity providers, routes, log sinks and threat rules.
    identity.check_providers,
    identity_headers.check_identity_headers,
    routes.check_routes,
    upstream_tls.check_upstream_tls,
    logging.check_logging,
    tracing.check_tracing,
    threat.check_threat,
    lockdown.check_lockdown,
    privacy.check_privacy,
    backup.check_backup,
    pgbackrest.check_pgbackrest,
    notify.check_notify,
    tokens.check_tokens,
)


def run_checks(settings: Settings, report: Report) -> None:
    """Run every check in :data:`CHECKS` order, recording problems in ``report``."""
    for check in CHECKS:
        check(settings, report)
