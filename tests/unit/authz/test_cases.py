"""Policy test cases: parsed from YAML or CSV with line-numbered errors, decided as the gateway decides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.authz.cases import BAD_PATH, CasesInvalid, decide, failures, parse_cases, run_cases
from gateway.authz.index import PolicyIndex
from gateway.authz.rules import parse_policy
from gateway.pipeline.canonical import canonicalize

ROOT = Path(__file__).resolve().parents[3]

POLICY = """\
p, authenticated, app, /docs/*, GET, allow
p, staff, app, /docs/secret/*, *, deny
g, group:staff, staff
"""

CASES = """\
cases:
  - name: docs for everyone
    principals: [user:a, authenticated]
    route: app
    method: GET
    path: /docs/../docs/readme
    expect: allow
  - principals: user:a authenticated group:staff
    route: app
    method: GET
    path: /docs/secret/x
    expect: deny
    reason: policy-deny
"""


def _canonical(raw: bytes) -> str:
    return canonicalize(raw).path


def _index(text: str = POLICY) -> PolicyIndex:
    return PolicyIndex.build(parse_policy(text, source="draft"), version=0)


def test_yaml_cases_pass_and_name_their_lines() -> None:
    cases = parse_cases(CASES, source="cases")
    assert [c.where for c in cases] == ["cases:2 (case 1)", "cases:8 (case 2)"]
    assert cases[1].principals == frozenset({"user:a", "authenticated", "group:staff"})
    results = run_cases(_index(), cases, canonicalize=_canonical)
    assert [r.passed for r in results] == [True, True]
    # The path was made canonical before the policy was asked, as the gateway does.
    assert results[0].outcome.path == "/docs/readme"
    # A draft has no version: the explanation does not claim "policy version 0".
    assert "version" not in results[0].outcome.explanation
    assert "line 1" in results[0].outcome.explanation


def test_a_failing_case_says_what_was_expected_and_why_it_got_otherwise() -> None:
    cases = parse_cases(CASES, source="cases")
    draft = POLICY.replace("p, staff, app, /docs/secret/*, *, deny\n", "")
    failed = failures(run_cases(_index(draft), cases, canonicalize=_canonical))
    assert len(failed) == 1
    assert failed[0].expected == "deny [policy-deny]"
    assert failed[0].got == "allow"
    assert failed[0].outcome.reason == "policy-allow"


def test_csv_cases_and_a_refused_path() -> None:
    text = (
        "principals,route,method,path,expect,reason\nuser:a authenticated,app,GET,/docs/%2F,deny,bad-path\n"
    )
    (result,) = run_cases(_index(), parse_cases(text, source="c.csv", fmt="csv"), canonicalize=_canonical)
    assert result.outcome.reason == BAD_PATH
    assert result.passed


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        ("cases: [1", "yaml", "cases:1: not valid YAML"),
        ("a: b", "yaml", "expected a list of cases"),
        (
            "- principals: [a]\n  route: r\n  method: GET\n  path: /\n  expect: maybe\n",
            "yaml",
            "cases:1 (case 1)",
        ),
        ("- principals: [a]\n  route: r\n", "yaml", "missing 'method', 'path', 'expect'"),
        (
            "- {principals: [a], route: r, method: GET, path: /, expect: allow, colour: red}",
            "yaml",
            "'colour'",
        ),
        ("principals,route\n", "csv", "cases:1: the header row lacks column(s) method, path, expect"),
        ("[]", "yaml", "cases: no test cases"),
        # Past the csv module's field limit, in a row or in the header (a 500 before: a fuzzing run).
        (
            "principals,route,method,path,expect\n" + "x" * 131_073 + ",app,GET,/,allow\n",
            "csv",
            "cases:2: not readable as CSV (field larger than field limit",
        ),
        ("x" * 131_073 + ",route\n", "csv", "cases:1: not readable as CSV"),
    ],
)
def test_invalid_cases_name_what_to_fix(text: str, fmt: str, message: str) -> None:
    with pytest.raises(CasesInvalid) as caught:
        parse_cases(text, source="cases", fmt="csv" if fmt == "csv" else "yaml")
    assert message in caught.value.detail
    assert caught.value.status == 400


def test_the_shipped_policy_passes_its_shipped_cases() -> None:
    rules = parse_policy((ROOT / "policies" / "policy.csv").read_text(), source="policy.csv")
    cases = parse_cases((ROOT / "policies" / "tests.yaml").read_text(), source="tests.yaml")
    index = PolicyIndex.build(rules, version=0)
    assert failures(run_cases(index, cases, canonicalize=_canonical)) == []
    one = decide(index, frozenset({"user:zoe"}), "echo", "GET", "/", canonicalize=_canonical)
    assert not one.allowed
