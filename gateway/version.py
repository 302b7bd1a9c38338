"""The installed gateway's version: one answer for the replica registry, tracing and backup manifests."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_version"]


def package_version() -> str:
    """The installed gateway's version, or ``dev`` when running from a source tree that is not installed."""
    try:
        return metadata.version("gateway")
    except metadata.PackageNotFoundError:
        return "dev"
