"""Policy rules in casbin's CSV format: parse them strictly, write them back, match HTTP methods.

A policy is two kinds of lines (the model is ``policies/model.conf``)::

    p, <subject>, <route or *>, <path pattern>, <METHOD|METHOD or *>, <allow|deny>
    g, <member>, <role>

Lines starting with ``#`` and blank lines are ignored; a ``#`` anywhere else is part of a field, exactly
as casbin reads the file, so trailing comments are rejected (they would land in the ``eft`` field).
Fields are split the way casbin's adapters split them: on commas outside ``[...]`` and ``(...)``.

Parsing is stricter than casbin, on purpose: casbin accepts a malformed line and then silently never
matches it (or fails at the first request), which is how a typo turns into an outage or a hole. Every
problem raises :class:`PolicyError` naming the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from casbin.util import key_match2

from gateway.names import hidden_character

__all__ = [
    "METHOD_SPEC",
    "SUBTREE",
    "PolicyError",
    "PolicyRules",
    "Rule",
    "method_match",
    "parse_policy",
    "path_match",
    "subtree_root",
]

# `*`, or uppercase method names joined by `|` (GET|HEAD). No regex: membership is exact.
METHOD_SPEC = re.compile(r"\*|[A-Z]+(?:\|[A-Z]+)*")
_P_FIELDS = ("sub", "dom", "obj", "act", "eft")
_G_FIELDS = ("member", "role")
_EFFECTS = ("allow", "deny")
_REGEX_META = frozenset(".^$*+?{}[]\\|()")
# A pattern ending in this covers a subtree: the path it hangs from and everything below it.
SUBTREE = "/*"

Ptype = Literal["p", "g"]


class PolicyError(ValueError):
    """A policy text that cannot be loaded; ``line`` is 1-based (``None`` when not from a text)."""

    def __init__(self, message: str, *, line: int | None = None, source: str = "<policy>") -> None:
        where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(where + message)
        self.line = line
        self.source = source
        self.detail = message


def method_match(method: str, spec: str) -> bool:
    """Whether an HTTP method is allowed by a rule's method spec (casbin's ``methodMatch``).

    Args:
        method: the request method, as received (``GET``).
        spec: ``*`` or ``|``-separated methods (``GET|HEAD``).

    Returns:
        True for ``*`` or exact membership; ``get`` does not match ``GET`` (methods are case-sensitive).
    """
    return spec == "*" or method in spec.split("|")


def subtree_root(pattern: str) -> str | None:
    """The pattern of the path a trailing ``/*`` hangs from (``/admin`` for ``/admin/*``), else ``None``.

    ``/*`` alone has no root of its own to add: ``/`` already matches it.
    """
    if len(pattern) > len(SUBTREE) and pattern.endswith(SUBTREE):
        return pattern[: -len(SUBTREE)]
    return None


def path_match(path: str, pattern: str) -> bool:
    """Whether a canonical path matches a rule's path pattern (casbin's ``pathMatch``).

    casbin's ``keyMatch2`` (``:name`` is one segment, ``/*`` is ``/.*``, the rest a regex), plus one
    rule: a trailing ``/*`` also matches the path it hangs from, so ``/admin/*`` matches ``/admin``,
    ``/admin/`` and ``/admin/x`` but never ``/administrator`` (segment boundaries, as a route's ``path``
    prefix). Under plain keyMatch2 ``/admin/*`` left ``/admin`` itself out, so a deny meant for an area
    let its entrance through to the app (and ``?x=1`` or ``/%61dmin`` are the same canonical path).

    Args:
        path: the canonical request path.
        pattern: the rule's ``obj`` field.

    Returns:
        True when the rule's path applies to the request.
    """
    if key_match2(path, pattern):
        return True
    root = subtree_root(pattern)
    return root is not None and key_match2(path, root)


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy line: ``ptype`` ``"p"`` (sub, dom, obj, act, eft) or ``"g"`` (member, role).

    ``line`` is where it came from (for messages); it does not take part in equality, so the same rule
    on two lines compares equal.
    """

    ptype: Ptype
    fields: tuple[str, ...]
    line: int | None = field(default=None, compare=False)

    @classmethod
    def allow(cls, sub: str, dom: str, obj: str, act: str) -> Rule:
        return cls("p", (sub, dom, obj, act, "allow"))

    @classmethod
    def deny(cls, sub: str, dom: str, obj: str, act: str) -> Rule:
        return cls("p", (sub, dom, obj, act, "deny"))

    @classmethod
    def link(cls, member: str, role: str) -> Rule:
        return cls("g", (member, role))

    @property
    def sub(self) -> str:
        return self.fields[0]

    @property
    def dom(self) -> str:
        return self.fields[1]

    @property
    def obj(self) -> str:
        return self.fields[2]

    @property
    def act(self) -> str:
        return self.fields[3]

    @property
    def eft(self) -> str:
        return self.fields[4]

    @property
    def member(self) -> str:
        return self.fields[0]

    @property
    def role(self) -> str:
        return self.fields[1]

    @property
    def is_deny(self) -> bool:
        return self.ptype == "p" and self.fields[4] == "deny"

    def to_csv(self) -> str:
        """The rule as one casbin CSV line (no newline)."""
        return ", ".join((self.ptype, *self.fields))

    def __str__(self) -> str:
        return self.to_csv()


@dataclass(frozen=True, slots=True)
class PolicyRules:
    """A whole policy: ``policies`` (p rules) and ``links`` (g rules), each in file order."""

    policies: tuple[Rule, ...] = ()
    links: tuple[Rule, ...] = ()

    @classmethod
    def from_rules(cls, rules: Iterable[Rule]) -> PolicyRules:
        """Split rules into p and g, keeping their order; each rule is checked like a parsed line."""
        policies: list[Rule] = []
        links: list[Rule] = []
        for rule in rules:
            _check(rule.ptype, rule.fields, line=rule.line, source="<rules>")
            # The rule must survive a trip through CSV (no stray commas or line breaks in a field).
            if _split(rule.to_csv(), line_no=rule.line or 0, source="<rules>")[1:] != list(rule.fields):
                raise PolicyError(f"rule {rule.fields!r} cannot be written as one CSV line", line=rule.line)
            (policies if rule.ptype == "p" else links).append(rule)
        return cls(tuple(policies), tuple(links))

    def with_rules(self, *rules: Rule) -> PolicyRules:
        """A copy with ``rules`` appended."""
        return PolicyRules.from_rules((*self, *rules))

    def to_csv(self) -> str:
        """casbin CSV, p rules then g rules, each in their order here; ``parse_policy`` reads it back."""
        return "".join(rule.to_csv() + "\n" for rule in self)

    def __iter__(self) -> Iterator[Rule]:
        yield from self.policies
        yield from self.links

    def __len__(self) -> int:
        return len(self.policies) + len(self.links)


def parse_policy(text: str, *, source: str = "<policy>") -> PolicyRules:
    """Parse casbin CSV policy text.

    Args:
        text: the policy (``\\n`` or ``\\r\\n`` line ends).
        source: a name for messages (``policies/policy.csv``).

    Returns:
        The rules, with their line numbers.

    Raises:
        PolicyError: the first malformed line: unknown rule type, wrong field count, empty field,
            effect other than allow/deny, bad method spec, path pattern not starting with ``/``.
    """
    policies: list[Rule] = []
    links: list[Rule] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = _split(line, line_no=number, source=source)
        ptype, fields = tokens[0], tuple(tokens[1:])
        if ptype not in ("p", "g"):
            raise PolicyError(
                f"unknown rule type {ptype!r}: a line starts with 'p' (permission) or 'g' (role grant)",
                line=number,
                source=source,
            )
        _check(ptype, fields, line=number, source=source)
        rule = Rule("p" if ptype == "p" else "g", fields, number)
        (policies if ptype == "p" else links).append(rule)
    return PolicyRules(tuple(policies), tuple(links))


def _split(line: str, *, line_no: int, source: str) -> list[str]:
    """Split on commas outside brackets and parentheses, as casbin's ``load_policy_line`` does."""
    depth = 0
    tokens = [""]
    for char in line:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
            if depth < 0:
                raise PolicyError(f"unbalanced {char!r}", line=line_no, source=source)
        elif char == "," and depth == 0:
            tokens.append("")
            continue
        tokens[-1] += char
    if depth != 0:
        raise PolicyError("unclosed '[' or '('", line=line_no, source=source)
    return [token.strip() for token in tokens]


def _check(ptype: str, fields: tuple[str, ...], *, line: int | None, source: str) -> None:
    names = _P_FIELDS if ptype == "p" else _G_FIELDS if ptype == "g" else None
    if names is None:
        raise PolicyError(f"unknown rule type {ptype!r}", line=line, source=source)
    if len(fields) != len(names):
        raise PolicyError(
            f"a {ptype} rule has {len(names)} fields ({', '.join(names)}), this one has {len(fields)}",
            line=line,
            source=source,
        )
    for name, value in zip(names, fields, strict=True):
        if not value or value != value.strip() or "\n" in value or "\r" in value:
            raise PolicyError(
                f"field {name!r} is empty, padded with spaces or spans lines", line=line, source=source
            )
        hidden = hidden_character(value)
        if hidden is not None:
            # A zero-width space or a right-to-left override makes "admin\u200b" read as "admin" in
            # every table that shows it, and a NUL ends it early in some: a look-alike the policy would
            # hold apart from the real one (a fuzzing run stored both).
            raise PolicyError(
                f"field {name!r} holds a character a reader cannot see (U+{ord(hidden):04X})",
                line=line,
                source=source,
            )
    if ptype == "g":
        return
    obj, act, eft = fields[2:]
    if eft not in _EFFECTS:
        hint = " (comments go on their own line)" if "#" in eft else ""
        raise PolicyError(f"effect must be 'allow' or 'deny', not {eft!r}{hint}", line=line, source=source)
    if METHOD_SPEC.fullmatch(act) is None:
        raise PolicyError(
            f"method spec {act!r}: use '*' or uppercase methods joined by '|' (GET|HEAD)",
            line=line,
            source=source,
        )
    if not obj.startswith("/"):
        raise PolicyError(
            f"path pattern {obj!r} must start with '/' (use '/*' for every path)", line=line, source=source
        )
    if not _REGEX_META.isdisjoint(obj):
        try:
            # keyMatch2 hands the rest of the pattern to re; a broken regex would fail every request.
            # pathMatch may also compile the subtree's root on its own: that regex must compile too.
            key_match2("/", obj)
            key_match2("/", subtree_root(obj) or obj)
        except (re.error, Warning) as exc:
            raise PolicyError(
                f"path pattern {obj!r} is not a valid keyMatch2 pattern ({exc}); outside ':name' and a "
                "final '/*', keyMatch2 reads it as a regular expression",
                line=line,
                source=source,
            ) from exc
