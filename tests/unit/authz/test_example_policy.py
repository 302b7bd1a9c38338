"""The shipped policies/policy.csv, request by request, against the index and against casbin."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.authz.decision import Reason
from gateway.authz.index import MAX_HIERARCHY_LEVEL, PolicyIndex
from gateway.authz.model import casbin_enforcer
from gateway.authz.rules import PolicyRules, Rule, parse_policy

POLICY_FILE = Path(__file__).resolve().parents[3] / "policies" / "policy.csv"
RULES = parse_policy(POLICY_FILE.read_text(encoding="utf-8"), source="policies/policy.csv")
INDEX = PolicyIndex.build(RULES, 1)

SIGNED_IN = "authenticated"
ALICE = {"user:alice", SIGNED_IN, "group:corp:staff"}  # sre
BOB = {"user:bob", SIGNED_IN, "group:corp:staff"}  # finance-admin
CAROL = {"user:carol", SIGNED_IN, "group:corp:staff"}  # wiki-admin
DANA = {"user:dana", SIGNED_IN, "group:corp:staff"}  # hr-staff
ROOT = {"user:root", SIGNED_IN}  # admin
ENG = {"user:erin", SIGNED_IN, "group:corp:staff", "group:corp:eng"}
FIN = {"user:fred", SIGNED_IN, "group:corp:staff", "group:corp:finance"}
CONTRACTOR = {"user:cody", SIGNED_IN, "group:corp:contractors"}
STAFF = {"user:sam", SIGNED_IN, "group:corp:staff"}
GUEST = {"user:guest", SIGNED_IN}
LOCAL_ADMIN = {"user:ops", SIGNED_IN, "admin"}  # a local account carrying the admin role itself

CASES = [
    # echo: everyone signed in, any method, any path
    (GUEST, "echo", "GET", "/", True),
    (GUEST, "echo", "DELETE", "/any/path", True),
    (CONTRACTOR, "echo", "POST", "/admin/x", False),  # the contractor deny covers every route
    (CONTRACTOR, "echo", "GET", "/admin", False),  # ... and the admin area's own path
    (CONTRACTOR, "echo", "GET", "/admin/", False),
    (CONTRACTOR, "echo", "GET", "/administrator", True),  # segment boundaries: not an admin area
    (CONTRACTOR, "echo", "GET", "/adm", True),
    (GUEST, "echo", "GET", "/admin", True),
    ({"user:guest"}, "echo", "GET", "/", False),  # without `authenticated` nothing allows it
    # wiki
    (STAFF, "wiki", "GET", "/", True),
    (STAFF, "wiki", "GET", "/pages/home", True),
    (STAFF, "wiki", "POST", "/pages/home/edit", False),
    (STAFF, "wiki", "GET", "/api/pages/home", True),
    (STAFF, "wiki", "GET", "/api/pages/", False),  # :page needs a non-empty segment
    (CAROL, "wiki", "POST", "/pages/home/edit", True),  # wiki-admin includes wiki-editor
    (CAROL, "wiki", "DELETE", "/api/pages/home", True),
    (CAROL, "wiki", "GET", "/admin/users", True),
    (CAROL, "wiki", "GET", "/admin", True),
    (CAROL | {"group:corp:contractors"}, "wiki", "GET", "/admin", False),  # the contractor deny wins
    (STAFF, "wiki", "GET", "/admin/users", False),
    (ENG, "wiki", "POST", "/pages/engineering/runbooks", True),
    (STAFF, "wiki", "POST", "/pages/engineering/runbooks", False),
    (GUEST, "wiki", "GET", "/pages/home", False),
    # grafana
    (ENG, "grafana", "GET", "/d/abc123/service-overview", True),
    (ENG, "grafana", "GET", "/d/abc123", True),  # "/d/:uid/*" covers the dashboard itself too
    (ENG, "grafana", "GET", "/d/", False),  # ... but needs a uid
    (ENG, "grafana", "GET", "/d", False),
    (ENG, "grafana", "POST", "/api/dashboards/db", False),
    (ALICE, "grafana", "POST", "/api/dashboards/db", True),  # sre includes engineer
    (ALICE, "grafana", "GET", "/d/abc/x", True),
    (ALICE, "grafana", "PUT", "/api/datasources/proxy/3/api/v1/query", True),
    (ALICE, "grafana", "GET", "/admin/users", True),
    (ALICE, "grafana", "POST", "/admin/users", False),
    (STAFF, "grafana", "GET", "/d/abc/x", False),
    # finance
    (FIN, "finance", "GET", "/reports/2024/q1", True),
    (FIN, "finance", "GET", "/api/invoices/17", True),
    (FIN, "finance", "PUT", "/api/invoices/17", False),
    (FIN, "finance", "GET", "/admin/settings", False),  # no rule grants it: default deny
    (BOB, "finance", "GET", "/reports/2024/q1", True),  # finance-admin includes finance-viewer
    (BOB, "finance", "DELETE", "/api/invoices/17", True),
    (BOB, "finance", "POST", "/api/invoices", True),
    (BOB, "finance", "GET", "/admin/settings", True),  # an employee, yet not locked out: see policy.csv
    (ALICE, "finance", "GET", "/reports/2024/q1", False),
    (CONTRACTOR | {"group:corp:finance"}, "finance", "GET", "/reports/x", True),
    (CONTRACTOR | {"finance-admin"}, "finance", "GET", "/admin/settings", False),  # deny wins
    # hr
    (STAFF, "hr", "GET", "/me", True),
    (STAFF, "hr", "POST", "/me/address", True),
    (STAFF, "hr", "POST", "/me", False),  # "/me/:part/*": below /me only
    (STAFF, "hr", "POST", "/me/", False),
    (STAFF, "hr", "GET", "/people/42", True),
    (CONTRACTOR, "hr", "GET", "/me", True),
    (CONTRACTOR, "hr", "GET", "/people/42", False),  # contractors: no colleague directory
    (CONTRACTOR | {"hr-staff"}, "hr", "GET", "/people", False),  # the deny covers /people itself
    (DANA, "hr", "GET", "/people", True),
    (DANA, "hr", "DELETE", "/people/42", True),
    (STAFF, "hr", "DELETE", "/people/42", False),
    # admins everywhere, by grant or by carrying the role
    (ROOT, "finance", "DELETE", "/admin/everything", True),
    (ROOT, "some-new-app", "PATCH", "/x", True),
    (LOCAL_ADMIN, "hr", "GET", "/people/1", True),
    # unknown routes and odd input
    (STAFF, "unknown", "GET", "/", False),
    (STAFF, "wiki", "get", "/", False),
]


def _casbin(principals: frozenset[str], route: str, method: str, path: str) -> bool:
    subject = "synthetic:request"
    linked = RULES.with_rules(*(Rule.link(subject, principal) for principal in sorted(principals)))
    enforcer = casbin_enforcer(linked, max_hierarchy_level=MAX_HIERARCHY_LEVEL + 1)
    return bool(enforcer.enforce(subject, route, path, method))


@pytest.mark.parametrize(("principals", "route", "method", "path", "expected"), CASES)
def test_example_policy(principals: set[str], route: str, method: str, path: str, expected: bool) -> None:
    request = (frozenset(principals), route, method, path)
    decision = INDEX.decide(*request)
    assert decision.allowed is expected, decision.explain()
    assert _casbin(*request) is expected


def test_single_principals_match_casbin_too() -> None:
    enforcer = casbin_enforcer(RULES)
    subjects = sorted({rule.sub for rule in RULES.policies} | {link.member for link in RULES.links})
    for subject in subjects:
        for route, method, path, _ in ((c[1], c[2], c[3], c[4]) for c in CASES):
            ours = INDEX.decide(frozenset({subject}), route, method, path).allowed
            assert ours == enforcer.enforce(subject, route, path, method), (subject, route, method, path)


def test_the_contractor_deny_is_the_reason() -> None:
    decision = INDEX.decide(frozenset(CONTRACTOR | {"finance-admin"}), "finance", "GET", "/admin/settings")
    assert decision.reason is Reason.POLICY_DENY
    assert decision.rule is not None
    assert decision.rule.to_csv() == "p, contractor, *, /admin/*, *, deny"
    assert decision.principal == "contractor"


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/x", "/admin/x/y"])
@pytest.mark.parametrize("route", ["echo", "wiki", "grafana", "finance", "hr", "an-app-added-later"])
def test_contractors_are_never_in_an_admin_area(route: str, path: str) -> None:
    # The policy's promise, on every route (the deny's domain is "*"), even holding each area's grant.
    principals = frozenset(CONTRACTOR | {"wiki-admin", "sre", "finance-admin", "hr-staff"})
    decision = INDEX.decide(principals, route, "GET", path)
    assert not decision.allowed
    assert decision.reason is Reason.POLICY_DENY
    assert _casbin(principals, route, "GET", path) is False


def test_policy_round_trips() -> None:
    assert parse_policy(RULES.to_csv()) == RULES
    assert isinstance(RULES, PolicyRules)
