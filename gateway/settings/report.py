"""The problems one config load has found, and how each is rendered: ``file:line: key.path: problem``.

Every pass of the loader (compose, walk, checks) records into one :class:`Report` instead of raising, so
an operator sees every problem in one round trip. The report also remembers each value's line and
whether it came from a secret reference, so a message can name the line and never show the secret.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

from gateway.errors import ConfigError

__all__ = ["INVALID", "SLUG", "Invalid", "KeyPath", "Meta", "Problem", "Report", "describe", "quote"]

# A key path inside the document: ("routes", 1, "mfa") renders as routes[1].mfa.
KeyPath = tuple[str | int, ...]

# Names of routes, identity providers and the like; a list item is named by its name in a key path.
SLUG: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")
_KEY_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class Invalid:
    """Stands in for a value that already produced a problem, so it does not produce a second one."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Final = Invalid()


@dataclass(slots=True)
class Meta:
    """What the loader remembers about one value: its line, and whether it carries a secret."""

    line: int
    # The scalar as written, for plain (unquoted) scalars: used where the schema wants a string.
    plain: str | None = None
    # The ${…} references the value was built from; shown instead of the value in every error.
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem; ``order`` keeps problems on the same line in the order they were found."""

    line: int
    order: int
    path: KeyPath
    message: str


class Report:
    """The state of one load: values' lines, the composed document, and the problems found so far."""

    def __init__(self, *, source: str) -> None:
        self.source = source
        self.meta: dict[KeyPath, Meta] = {}
        self.problems: list[Problem] = []
        # The document as composed (plain values): names list items in paths; checks that care what
        # was written rather than defaulted read it.
        self.data: object = None

    def line(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor written in the file (for defaults)."""
        while path and path not in self.meta:
            path = path[:-1]
        meta = self.meta.get(path)
        return meta.line if meta is not None else 0

    def where(self, path: KeyPath) -> str:
        """Render a key path, naming list items by their ``name`` key: ``routes[1] (name: wiki).mfa``."""
        out, node = "", self.data
        for depth, segment in enumerate(path):
            if isinstance(segment, int):
                out += f"[{segment}]"
                node = node[segment] if isinstance(node, list) and segment < len(node) else None
                name = node.get("name") if isinstance(node, dict) else None
                name_path = (*path[: depth + 1], "name")
                if isinstance(name, str) and name and not self.is_secret(name_path):
                    out += f" (name: {name if SLUG.fullmatch(name) else quote(name)})"
            else:
                out += (
                    (("." if out else "") + segment)
                    if _KEY_WORD.fullmatch(segment)
                    else f"[{quote(segment)}]"
                )
                node = node.get(segment) if isinstance(node, dict) else None
        return out

    def show(self, path: KeyPath, value: object) -> str:
        """Describe a value found in the file for an error message, hiding anything from a secret."""
        meta = self.meta.get(path)
        if meta is not None and meta.secret is not None:
            return f"the value of {meta.secret} (not shown)"
        return describe(value)

    def bad(self, path: KeyPath, problem: str, hint: str = "") -> None:
        """Record a problem with the value at ``path``; withhold its detail if it came from a secret."""
        meta = self.meta.get(path)
        if meta is not None and meta.secret is not None:
            problem = f"the value of {meta.secret} (not shown) is invalid"
        self.add(path, f"{problem}; {hint}" if hint else problem)

    def add(self, path: KeyPath, message: str, *, line: int | None = None) -> None:
        """Record one problem at ``path``."""
        line = self.line(path) if line is None else line
        self.problems.append(Problem(line=line, order=len(self.problems), path=path, message=message))

    def is_secret(self, path: KeyPath) -> bool:
        """Whether the value at ``path`` came from a ``${…}`` reference."""
        meta = self.meta.get(path)
        return meta is not None and meta.secret is not None

    def raise_if_any(self) -> None:
        """Raise one ConfigError holding every problem, sorted by line."""
        if self.problems:
            raise self.error()

    def error(self) -> ConfigError:
        """One ConfigError holding every problem recorded so far, sorted by line."""
        ordered = sorted(self.problems, key=lambda p: (p.line, p.order))
        # Rendered only now: route names in paths come from the whole document, built by then.
        return ConfigError("\n".join(dict.fromkeys(self._render(problem) for problem in ordered)))

    def _render(self, problem: Problem) -> str:
        prefix = f"{self.source}:{problem.line}:" if problem.line else f"{self.source}:"
        where = self.where(problem.path)
        return f"{prefix} {where}: {problem.message}" if where else f"{prefix} {problem.message}"


def describe(value: object) -> str:
    """Describe a value found in the file: strings quoted and shortened, containers by kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__  # pragma: no cover - the composer makes only the types above


def quote(text: str) -> str:
    """``text`` in double quotes, escaped as JSON, so blanks and control characters are visible; past
    200 characters shortened (a 50 MB value made a 50 MB error line: a fuzzing run)."""
    return json.dumps(text if len(text) <= 200 else text[:197] + "...", ensure_ascii=False)
