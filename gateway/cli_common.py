"""What the ``gateway`` sub-command modules share: exit codes and command groups with a usage fallback."""

from __future__ import annotations

import argparse
import sys

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "SubParsers", "command_group"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

SubParsers = argparse._SubParsersAction


def command_group(
    sub: SubParsers[argparse.ArgumentParser], name: str, *, help: str, description: str
) -> SubParsers[argparse.ArgumentParser]:
    """Add ``gateway NAME ACTION …``; ``gateway NAME`` alone prints its help and exits with 2.

    Returns:
        The group's sub-parsers, to add the actions to (each sets ``func``).
    """
    group = sub.add_parser(name, help=help, description=description)

    def usage(_args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return EXIT_USAGE

    group.set_defaults(func=usage)
    return group.add_subparsers(dest=f"{name}_action", metavar="ACTION")
