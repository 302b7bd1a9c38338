"""The console's Policies API in process (:mod:`tests.unit.admin.console_app`): the draft checks,
saving against a version, two-person approval."""

from __future__ import annotations

import pytest

from gateway.authz.sample import DecisionSample
from tests.unit.admin.console_app import POLICY, Start

CASES = """\
- name: docs for everyone signed in
  principals: [user:zoe, authenticated]
  route: app
  method: GET
  path: /docs/a
  expect: allow
- name: nothing else
  principals: [user:zoe, authenticated]
  route: app
  method: GET
  path: /private
  expect: deny
"""


async def test_validate_lists_findings_with_their_lines_and_a_malformed_line_is_one(console: Start) -> None:
    site = await console()
    boss = await site.session("boss")
    broken = POLICY + "p, admin, app, /x\n"
    body = (await site.call(boss, "POST", "/api/policy/draft/validate", json={"policy": broken})).json()
    assert body["ok"] is False
    assert body["findings"] == [
        {
            "severity": "error",
            "code": "malformed",
            "message": body["findings"][0]["message"],
            "line": 5,
            "rule": None,
        }
    ]
    suspicious = POLICY + "p, authenticated, app, /admin*, GET, deny\n"
    body = (await site.call(boss, "POST", "/api/policy/draft/validate", json={"policy": suspicious})).json()
    assert any(f["line"] == 5 for f in body["findings"]), body
    clean = (await site.call(boss, "POST", "/api/policy/draft/validate", json={"policy": POLICY})).json()
    assert clean == {**clean, "ok": True, "errors": 0, "rules": 2, "links": 2}


async def test_diff_and_test_cases_against_the_draft(console: Start) -> None:
    site = await console()
    boss = await site.session("boss")
    draft = POLICY.replace("/docs/*", "/handbook/*")
    diff = (await site.call(boss, "POST", "/api/policy/draft/diff", json={"policy": draft})).json()
    assert diff["live_version"] == 1
    assert (diff["added"], diff["removed"], diff["same"]) == (1, 1, False)
    assert "+p, authenticated, app, /handbook/*, GET, allow" in diff["diff"]

    run = await site.call(boss, "POST", "/api/policy/draft/test", json={"policy": draft, "cases": CASES})
    result = run.json()
    assert (result["total"], result["passed"], result["failed"]) == (2, 1, 1)
    failed = result["cases"][0]
    assert failed["passed"] is False
    assert failed["where"] == "cases:1 (case 1)"
    assert failed["expected"] == "allow"
    assert failed["got"] == "deny"

    bad = await site.call(
        boss, "POST", "/api/policy/draft/test", json={"policy": draft, "cases": "- route: app\n"}
    )
    assert bad.status_code == 400
    assert "cases:1 (case 1): missing 'principals'" in bad.json()["message"]
    malformed = await site.call(boss, "POST", "/api/policy/draft/diff", json={"policy": "p, x\n"})
    assert malformed.status_code == 400
    assert "draft:1" in malformed.json()["message"]


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/api/policy/draft/validate", {}),
        ("/api/policy/draft/diff", {}),
        ("/api/policy/draft/test", {"cases": "- route: app\n"}),
        ("/api/policy/draft/whatif", {"hours": 1}),
        ("/api/policy/proposals", {"reason": "tidy"}),
    ],
)
async def test_a_draft_that_is_not_text_is_a_400_and_changes_nothing(
    console: Start, path: str, extra: dict[str, object]
) -> None:
    # A JSON object, list or number where the CSV goes: a 500 while the admin app's policy
    # dependency shared the body field's name (Litestar read the error as the dependency's).
    site = await console(approvals=2)
    boss = await site.session("boss")
    before = await site.services.policy.store.current()
    for wrong in ({"p": "x"}, ["p, x"], 7):
        answer = await site.call(boss, "POST", path, json={"policy": wrong, **extra})
        assert answer.status_code == 400, (wrong, answer.text)
        assert "policy: Expected `str`" in answer.json()["message"]
    assert (await site.services.policy.store.current()).version == before.version
    assert (await site.call(boss, "GET", "/api/policy/proposals")).json()["proposals"] == []


async def test_what_if_replays_the_sample_and_counts_flips_per_route(console: Start) -> None:
    site = await console()
    boss = await site.session("boss")
    # What the data plane counts as it decides, flushed to the table the what-if reads (for an
    # existing account: a flush drops the counts of one erased meanwhile).
    await site.services.identity.accounts.create(username="zoe", password=None, actor="test")
    sample = DecisionSample(site.services.db, clock=site.services.identity.clock)
    zoe = frozenset({"user:zoe", "authenticated"})
    for _ in range(7):
        sample.note(zoe, "app", "GET", "/docs/a")
    for _ in range(2):
        sample.note(zoe, "app", "GET", "/handbook/a")
    await sample.flush()
    draft = POLICY.replace("/docs/*", "/handbook/*")
    body = (
        await site.call(boss, "POST", "/api/policy/draft/whatif", json={"policy": draft, "hours": 1})
    ).json()
    assert (body["requests"], body["to_deny"], body["to_allow"]) == (9, 7, 2)
    assert body["routes"] == [{"route": "app", "requests": 9, "to_deny": 7, "to_allow": 2}]
    assert [(f["path"], f["direction"]) for f in body["flips"]] == [
        ("/docs/a", "to-deny"),
        ("/handbook/a", "to-allow"),
    ]
    too_long = await site.call(boss, "POST", "/api/policy/draft/whatif", json={"policy": draft, "hours": 169})
    assert too_long.status_code == 400


async def test_a_stale_editor_is_refused_and_destructive_changes_need_a_recent_factor(console: Start) -> None:
    site = await console()
    boss = await site.session("boss")
    draft = POLICY + "p, authenticated, app, /news/*, GET, allow\n"
    stale = await site.call(
        boss, "PUT", "/api/policy", json={"csv": draft, "reason": "news", "expected_version": 0}
    )
    assert stale.status_code == 409, stale.text
    assert (await site.services.policy.store.version()) == 1
    # Ten minutes since the second factor: fresh enough to read, not to replace or restore the policy.
    tired = await site.session("boss", factor_age=600)
    assert (await site.call(tired, "GET", "/api/policy")).status_code == 200
    refused = await site.call(
        tired, "PUT", "/api/policy", json={"csv": draft, "reason": "news", "expected_version": 1}
    )
    assert refused.status_code == 403
    assert refused.json()["error"] == "step-up-required"
    saved = await site.call(
        boss, "PUT", "/api/policy", json={"csv": draft, "reason": "news", "expected_version": 1}
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["version"] == 2
    kinds = await site.audit_kinds()
    assert ("admin.policy.replace", "user:boss", "failure") in kinds
    assert ("admin.policy.replace", "user:boss", "success") in kinds


async def test_two_admins_one_proposes_the_other_approves(console: Start) -> None:
    site = await console(approvals=2)
    boss, second = await site.session("boss"), await site.session("second")
    draft = POLICY + "p, authenticated, app, /news/*, GET, allow\n"
    direct = await site.call(boss, "PUT", "/api/policy", json={"csv": draft, "reason": "news"})
    assert direct.status_code == 403
    assert direct.json()["error"] == "policy-approval-required"
    assert "/api/policy/proposals" in direct.json()["message"]
    restore = await site.call(boss, "POST", "/api/policy/restore/1", json={"reason": "again"})
    assert restore.json()["error"] == "policy-approval-required"
    add = await site.call(
        boss, "POST", "/api/policy/roles", json={"member": "user:x", "role": "admin", "reason": "sneak"}
    )
    assert add.status_code == 403

    made = await site.call(boss, "POST", "/api/policy/proposals", json={"policy": draft, "reason": "news"})
    assert made.status_code == 201, made.text
    proposal = made.json()
    assert (proposal["status"], proposal["proposer"], proposal["base_version"]) == ("pending", "user:boss", 1)
    listed = (await site.call(second, "GET", "/api/policy/proposals", params={"open": "true"})).json()
    assert listed["approvals"] == 2
    assert [p["id"] for p in listed["proposals"]] == [proposal["id"]]

    own = await site.call(
        boss, "POST", f"/api/policy/proposals/{proposal['id']}/approve", json={"reason": "mine"}
    )
    assert own.status_code == 403
    assert own.json()["error"] == "proposal-self-approval"
    tired = await site.session("second", factor_age=600)
    late = await site.call(
        tired, "POST", f"/api/policy/proposals/{proposal['id']}/approve", json={"reason": "ok"}
    )
    assert late.json()["error"] == "step-up-required"
    assert (await site.services.policy.store.version()) == 1

    approved = await site.call(
        second, "POST", f"/api/policy/proposals/{proposal['id']}/approve", json={"reason": "ok"}
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["version"] == 2
    assert approved.json()["proposal"]["status"] == "applied"
    stored = await site.services.policy.store.current()
    assert "p, authenticated, app, /news/*, GET, allow" in stored.csv
    again = await site.call(
        second, "POST", f"/api/policy/proposals/{proposal['id']}/approve", json={"reason": "x"}
    )
    assert again.status_code == 409
    missing = await site.call(second, "POST", "/api/policy/proposals/999/reject", json={"reason": "x"})
    assert missing.status_code == 404
    kinds = await site.audit_kinds()
    assert ("admin.policy.propose", "user:boss", "success") in kinds
    assert ("admin.policy.approve", "user:boss", "failure") in kinds
    assert ("admin.policy.approve", "user:second", "success") in kinds


async def test_a_proposal_is_rejected_or_withdrawn(console: Start) -> None:
    site = await console(approvals=2)
    boss, second = await site.session("boss"), await site.session("second")
    draft = POLICY + "p, authenticated, app, /news/*, GET, allow\n"
    first = (
        await site.call(boss, "POST", "/api/policy/proposals", json={"policy": draft, "reason": "a"})
    ).json()
    done = await site.call(
        second, "POST", f"/api/policy/proposals/{first['id']}/reject", json={"reason": "no"}
    )
    assert done.json()["proposal"]["status"] == "rejected"
    other = (
        await site.call(boss, "POST", "/api/policy/proposals", json={"policy": draft, "reason": "b"})
    ).json()
    mine = await site.call(
        boss, "POST", f"/api/policy/proposals/{other['id']}/reject", json={"reason": "oops"}
    )
    assert mine.json()["proposal"]["status"] == "withdrawn"
    nothing = await site.call(
        boss, "POST", "/api/policy/proposals", json={"policy": POLICY, "reason": "same"}
    )
    assert nothing.status_code == 400
    unknown = await site.call(
        boss, "POST", "/api/policy/proposals", json={"policy": draft, "reason": "x", "force": True}
    )
    assert unknown.status_code == 400
