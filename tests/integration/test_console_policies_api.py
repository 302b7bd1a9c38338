"""The console's Policies API over real HTTP: a real gateway with its admin listener (the fixtures of
``test_admin_api``): who may ask about a draft, what it answers, and a stale editor's save refused."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_admin_api import POLICY, Site, api, assert_error, boss, carol, current, site

__all__ = ["boss", "carol", "site"]

NEWS = "p, authenticated, app, /news/*, GET, allow\n"
CASES = "principals,route,method,path,expect\nuser:zoe authenticated,app,GET,/news/x,allow\n"
DRAFT_CALLS = [
    ("POST", "/api/policy/draft/validate", {"policy": POLICY}),
    ("POST", "/api/policy/draft/diff", {"policy": POLICY}),
    ("POST", "/api/policy/draft/test", {"policy": POLICY, "cases": CASES, "format": "csv"}),
    ("POST", "/api/policy/draft/whatif", {"policy": POLICY, "hours": 1}),
    ("POST", "/api/policy/proposals", {"policy": POLICY + NEWS, "reason": "r"}),
    ("POST", "/api/policy/proposals/1/approve", {"reason": "r"}),
]


@pytest.mark.parametrize(("method", "path", "body"), DRAFT_CALLS)
def test_without_a_session_401_and_a_non_admin_403(
    site: Site, carol: httpx.Client, method: str, path: str, body: dict[str, object]
) -> None:
    assert_error(api(site, None, method, path, json=body), 401, "authentication-required")
    assert_error(api(site, carol, method, path, json=body), 403, "admin-role-required")
    assert_error(api(site, None, "GET", "/api/policy/proposals"), 401, "authentication-required")


@pytest.mark.peer
def test_cross_origin_and_non_json_requests_are_refused(site: Site, boss: httpx.Client) -> None:
    for method, path, body in DRAFT_CALLS:
        refused = api(site, boss, method, path, json=body, headers={"Origin": "http://evil.example"})
        assert_error(refused, 403, "cross-origin-refused")
        form = api(site, boss, method, path, data={"policy": POLICY})
        assert_error(form, 415, "unsupported-media-type")
    assert api(site, boss, "GET", "/api/policy/proposals").json()["proposals"] == []


@pytest.mark.peer
def test_a_draft_is_validated_diffed_tested_and_replayed_and_nothing_is_stored(
    site: Site, boss: httpx.Client
) -> None:
    before = current(site, boss)
    broken = api(
        site, boss, "POST", "/api/policy/draft/validate", json={"policy": before["csv"] + "p, x, app\n"}
    )
    assert broken.status_code == 200, broken.text
    finding = broken.json()["findings"][0]
    assert (finding["code"], finding["line"]) == ("malformed", before["csv"].count("\n") + 1)

    draft = before["csv"] + NEWS
    ok = api(site, boss, "POST", "/api/policy/draft/validate", json={"policy": draft}).json()
    assert ok["ok"] is True
    diff = api(site, boss, "POST", "/api/policy/draft/diff", json={"policy": draft}).json()
    assert (diff["added"], diff["removed"], diff["live_version"]) == (1, 0, before["version"])
    tested = api(
        site, boss, "POST", "/api/policy/draft/test", json={"policy": draft, "cases": CASES, "format": "csv"}
    ).json()
    assert (tested["passed"], tested["failed"]) == (1, 0)
    replay = api(site, boss, "POST", "/api/policy/draft/whatif", json={"policy": draft, "hours": 24})
    assert replay.status_code == 200, replay.text
    assert replay.json()["live_version"] == before["version"]
    assert_error(
        api(site, boss, "POST", "/api/policy/draft/whatif", json={"policy": draft, "hours": 0}),
        400,
        "bad-request",
    )
    bad_cases = api(site, boss, "POST", "/api/policy/draft/test", json={"policy": draft, "cases": "- x\n"})
    assert "cases:1 (case 1)" in assert_error(bad_cases, 400, "policy-cases-invalid")["message"]
    unknown = api(site, boss, "POST", "/api/policy/draft/diff", json={"policy": draft, "force": True})
    assert_error(unknown, 400, "bad-request")
    assert current(site, boss)["version"] == before["version"]


@pytest.mark.peer
def test_a_save_from_a_stale_editor_is_409_and_audited(site: Site, boss: httpx.Client) -> None:
    before = current(site, boss)
    draft = before["csv"] + "p, authenticated, app, /stale/*, GET, allow\n"
    body = {"csv": draft, "reason": "from an old tab", "expected_version": before["version"] - 1}
    assert_error(api(site, boss, "PUT", "/api/policy", json=body), 409, "policy-conflict")
    assert current(site, boss)["version"] == before["version"]
    rows = site.audit("admin.policy.replace")
    assert rows[-1]["outcome"] == "failure"
    saved = api(site, boss, "PUT", "/api/policy", json={**body, "expected_version": before["version"]})
    assert saved.status_code == 200, saved.text
    assert saved.json()["version"] == before["version"] + 1
    assert site.audit("admin.policy.replace")[-1]["outcome"] == "success"
    # Proposals work with one approver too (a review by choice); the author cannot approve them.
    made = api(
        site, boss, "POST", "/api/policy/proposals", json={"policy": POLICY, "reason": "back to the start"}
    )
    assert made.status_code == 201, made.text
    own = api(
        site, boss, "POST", f"/api/policy/proposals/{made.json()['id']}/approve", json={"reason": "mine"}
    )
    assert_error(own, 403, "proposal-self-approval")
    assert [r["outcome"] for r in site.audit("admin.policy.approve")][-1:] == ["failure"]
