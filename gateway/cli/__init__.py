"""The ``gateway`` command: one module per command group over one harness (``harness.py``)."""

from gateway.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
