"""Listen addresses as the config writes them (``host:port``, IPv6 in brackets)."""

from __future__ import annotations

import errno
import socket
import sys

__all__ = ["CLAIMED", "IN_USE", "bind_problem", "claim_port", "parse_listen"]

IN_USE = "the address is already in use"
#: What a refused :func:`claim_port` means, with the port to fill in.
CLAIMED = "another gateway on this machine is starting or serving on port %d. Stop it or choose another port."


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets) into its parts."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def bind_problem(listen: str) -> str | None:
    """Why a server could not listen on ``listen`` now, or None when it can (checked by binding and
    closing a socket before anything starts).

    granian binds with ``SO_REUSEPORT``, which lets a second server share a port another one with the
    same option holds: two gateways would then split the port's connections between them, each with its
    own users and policy (a first-day run found it). This probe does not set it, so it fails there.
    """
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return IN_USE
            return f"cannot listen there ({exc.strerror})"
    return None


def claim_port(port: int) -> socket.socket | None:
    """Claim ``port`` for this process's life, or return None when another gateway on this machine holds
    the claim (Linux; elsewhere every claim succeeds and :func:`bind_problem` alone decides).

    :func:`bind_problem` probes, then granian binds: two gateways started within a second or two both
    passed the probe and shared the port (a re-attack run). The claim is an abstract Unix socket named
    after the port, which the kernel lets one process bind and releases when the holder exits (no file
    to clean up; one per network namespace, as ports are). Keep the returned socket open while serving.
    """
    if not sys.platform.startswith("linux"):
        return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # nothing to claim with: always granted
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(f"\0access-gateway-port-{port}")
    except OSError:
        sock.close()
        return None
    return sock
