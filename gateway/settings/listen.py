"""Listen addresses as the config writes them (``host:port``, IPv6 in brackets)."""

from __future__ import annotations

__all__ = ["parse_listen"]


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets) into its parts."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)
