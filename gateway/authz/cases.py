"""Policy test cases: expected decisions, written next to a policy and run against it before it goes live.

A case names every principal a request speaks for, the route, method and path, and the expected
verdict (``allow`` or ``deny``), optionally the reason that must decide it and a name::

    cases:
      - name: staff read the wiki
        principals: [user:erin, authenticated, group:staff]
        route: wiki
        method: GET
        path: /
        expect: allow
        reason: policy-allow        # optional: policy-allow, policy-deny, no-matching-rule, no-policy, bad-path

The same cases come as YAML (a list, or a mapping with the one key ``cases``) or as CSV with a header
row. ``gateway policy test`` reads them from a file; the admin console's draft test sends the text
with the draft. Both parse and run them here, so a case means the same thing in CI and in the console.

Paths are made canonical before the policy is asked, exactly as the gateway does; the canonicaliser
belongs to the data plane (a floor above this one), so callers hand it in.

Errors::

    BadRequest (gateway.errors)
    └── CasesInvalid     the text is not valid cases; the message names the line (and the case)
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.authz.index import PolicyIndex
from gateway.errors import BadPath, BadRequest

__all__ = [
    "BAD_PATH",
    "Canonicalize",
    "Case",
    "CaseResult",
    "CasesInvalid",
    "Outcome",
    "decide",
    "failures",
    "parse_cases",
    "run_cases",
]

#: The reason of a case whose path the gateway refuses with 400 before asking the policy.
BAD_PATH: Final = "bad-path"
_EXPECT: Final = ("allow", "deny")
_CASE_KEYS: Final = frozenset({"name", "principals", "route", "method", "path", "expect", "reason"})
_REQUIRED_KEYS: Final = ("principals", "route", "method", "path", "expect")
# A policy from a file or a draft has no stored version: its index is built with this one.
_UNSTORED_VERSION: Final = 0

#: The data plane's canonicaliser: raw path bytes → canonical path; raises BadPath for a path it refuses.
Canonicalize = Callable[[bytes], str]


class CasesInvalid(BadRequest):
    """The test cases cannot be read; the message names the line (and the case) to fix."""

    reason = "policy-cases-invalid"
    title = "Test cases not valid"


@dataclass(frozen=True, slots=True)
class Case:
    """One expected decision; ``where`` says where it was written (``tests.yaml:12 (case 3)``)."""

    where: str
    name: str
    principals: frozenset[str]
    route: str
    method: str
    path: str
    expect: Literal["allow", "deny"]
    reason: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the gateway would decide: ``path`` is the canonical path the policy was asked about."""

    allowed: bool
    reason: str
    explanation: str
    path: str


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    outcome: Outcome

    @property
    def got(self) -> Literal["allow", "deny"]:
        return "allow" if self.outcome.allowed else "deny"

    @property
    def passed(self) -> bool:
        return self.got == self.case.expect and self.case.reason in (None, self.outcome.reason)

    @property
    def expected(self) -> str:
        """The expectation as people read it: ``deny [no-matching-rule]``."""
        return self.case.expect + (f" [{self.case.reason}]" if self.case.reason else "")


# -- reading cases -----------------------------------------------------------------------------------


def parse_cases(text: str, *, source: str, fmt: Literal["yaml", "csv"] = "yaml") -> list[Case]:
    """The cases in ``text`` (YAML or CSV, see the module docstring); at least one.

    Args:
        text: The cases.
        source: How errors and results name the text (a file name, ``cases``).
        fmt: ``yaml`` or ``csv``.

    Raises:
        CasesInvalid: the text is not valid cases, or holds none.
    """
    cases = _csv_cases(text, source) if fmt == "csv" else _yaml_cases(text, source)
    if not cases:
        raise CasesInvalid(f"{source}: no test cases")
    return cases


def _principals(value: object, where: str) -> frozenset[str]:
    if isinstance(value, str):
        names = [name for name in re.split(r"[\s,]+", value) if name]
    elif isinstance(value, list) and all(isinstance(name, str) for name in value):
        names = [name.strip() for name in value if name.strip()]
    else:
        raise CasesInvalid(f"{where}: 'principals' must be a list or a space/comma separated string")
    return frozenset(names)


def _case(raw: Mapping[str, Any], where: str) -> Case:
    if unknown := sorted(set(raw) - _CASE_KEYS):
        raise CasesInvalid(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    if missing := [key for key in _REQUIRED_KEYS if raw.get(key) in (None, "")]:
        raise CasesInvalid(f"{where}: missing {', '.join(map(repr, missing))}")
    for key in ("route", "method", "path", "expect"):
        if not isinstance(raw[key], str):
            raise CasesInvalid(f"{where}: {key!r} must be a string")
    expect = raw["expect"].strip().lower()
    if expect not in _EXPECT:
        raise CasesInvalid(f"{where}: 'expect' must be allow or deny, not {raw['expect']!r}")
    reason = raw.get("reason")
    if reason in ("", None):
        reason = None
    elif not isinstance(reason, str):
        raise CasesInvalid(f"{where}: 'reason' must be a string")
    name = raw.get("name") or ""
    return Case(
        where=where,
        name=str(name),
        principals=_principals(raw["principals"], where),
        route=raw["route"].strip(),
        method=raw["method"].strip(),
        path=raw["path"].strip(),
        expect="allow" if expect == "allow" else "deny",
        reason=reason.strip() if reason is not None else None,
    )


def _yaml_cases(text: str, source: str) -> list[Case]:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or exc
        raise CasesInvalid(f"{where}: not valid YAML: {problem}") from None
    node: Any = root
    if isinstance(data, dict) and set(data) == {"cases"} and isinstance(root, yaml.MappingNode):
        data = data["cases"]
        node = next(value for key, value in root.value if key.value == "cases")
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise CasesInvalid(f"{source}: expected a list of cases (or a mapping with one key, 'cases')")
    # The composed nodes carry the line of each case; the loaded list has one item per node.
    nodes: list[Any] = node.value
    cases = []
    for number, (item, item_node) in enumerate(zip(data, nodes, strict=True), start=1):
        where = f"{source}:{item_node.start_mark.line + 1} (case {number})"
        if not isinstance(item, dict):
            raise CasesInvalid(f"{where}: a case is a mapping of principals, route, method, path, expect")
        cases.append(_case(item, where))
    return cases


def _csv_cases(text: str, source: str) -> list[Case]:
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    try:
        return _read_csv_cases(reader, source)
    except csv.Error as exc:
        # A field over the csv module's limit (131,072 characters), a NUL, a quote left open: the text
        # is not CSV we can read (a 500 before: a fuzzing run).
        raise CasesInvalid(f"{source}:{reader.line_num + 1}: not readable as CSV ({exc})") from None


def _read_csv_cases(reader: csv.DictReader[str], source: str) -> list[Case]:
    header = [name.strip() for name in reader.fieldnames or []]
    if missing := [key for key in _REQUIRED_KEYS if key not in header]:
        raise CasesInvalid(f"{source}:1: the header row lacks column(s) {', '.join(missing)}")
    cases = []
    for row in reader:
        where = f"{source}:{reader.line_num}"
        if None in row:
            raise CasesInvalid(f"{where}: more fields than columns in the header")
        cleaned = {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}
        if not any(cleaned.values()):
            continue
        cases.append(_case(cleaned, where))
    return cases


# -- deciding like the gateway -----------------------------------------------------------------------


def decide(
    index: PolicyIndex,
    principals: frozenset[str],
    route: str,
    method: str,
    path: str,
    *,
    canonicalize: Canonicalize,
) -> Outcome:
    """Decide one request as the gateway would: the query is dropped, the path made canonical first."""
    raw = path.split("?", 1)[0].encode("utf-8", "surrogateescape")
    try:
        canonical = canonicalize(raw)
    except BadPath as exc:
        return Outcome(False, BAD_PATH, f"the gateway refuses this path with 400: {exc.detail}", path)
    decision = index.decide_request(principals, route, method, canonical)
    explanation = decision.explain()
    if index.version == _UNSTORED_VERSION:
        # A file or a draft has no version; "policy version 0" would read as "nothing stored".
        explanation = explanation.removesuffix(f"; policy version {_UNSTORED_VERSION}")
    return Outcome(decision.allowed, str(decision.reason), explanation, canonical)


def run_cases(index: PolicyIndex, cases: Iterable[Case], *, canonicalize: Canonicalize) -> list[CaseResult]:
    """Decide every case with ``index``; each result says whether it passed."""
    return [
        CaseResult(
            case,
            decide(index, case.principals, case.route, case.method, case.path, canonicalize=canonicalize),
        )
        for case in cases
    ]


def failures(results: Sequence[CaseResult]) -> list[CaseResult]:
    """The results that did not pass, in their order."""
    return [result for result in results if not result.passed]
