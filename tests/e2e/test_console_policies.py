"""The console's Policies section, driven in Chromium: a draft taken through validate → diff → test →
what-if → save, an older version restored from the history; and, on a gateway with two-person
approval, a proposal its author cannot approve that another admin makes live."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.conftest import no_horizontal_scroll, shot
from tests.e2e.console_site import (
    POLICY,
    Console,
    ConsoleAdmin,
    admin_page,
    console,
    run_console,
    sign_in_admin,
)

__all__ = ["admin_page", "console"]

NEWS = "p, authenticated, app, /news/*, GET, allow\n"
CASES = """\
cases:
  - name: the news are for everyone signed in
    principals: [user:zoe, authenticated]
    route: app
    method: GET
    path: /news/today
    expect: allow
  - name: the rest of the app is not
    principals: [user:zoe, authenticated]
    route: app
    method: GET
    path: /payroll
    expect: deny
"""


def test_a_draft_is_validated_diffed_tested_replayed_saved_and_an_old_version_restored(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    admin = admin_page("boss")
    page = admin.page
    # Some traffic for the what-if to replay (the data plane samples what it decides), in a tab of its
    # own: the console's tab is watched for requests to other origins.
    app = admin.context.new_page()
    app.goto(f"http://app.localhost:{console.port}/docs/readme")
    app.goto(f"http://app.localhost:{console.port}/payroll")  # allowed by the admin rule only
    app.close()
    page.goto(console.url("/policies"))
    expect(page.locator("h1")).to_have_text("Policies")
    expect(page.locator("nav.console-nav a[aria-current=page]")).to_have_text("Policies")
    expect(page.locator(".policy-summary .big")).to_have_text("v1")
    rules = page.locator("table.policy-rules tbody tr")
    expect(rules).to_have_count(2)
    expect(rules.first).to_contain_text("/docs/*")
    expect(page.locator("table.policy-links")).to_contain_text("user:second")

    # A broken draft first: the findings name the line.
    page.fill("#draft", POLICY + "p, admin, app, /x\n")
    page.click("#validate-form button")
    validated = page.locator("#validate-form + .result")
    expect(validated.locator(".alert")).to_contain_text("1 error")
    expect(validated.locator("table.findings")).to_contain_text("malformed")
    expect(validated.locator("button.line-link")).to_have_text("line 5")
    validated.locator("button.line-link").click()
    assert page.evaluate("document.activeElement.id") == "draft"
    shot(page, "console-policies-findings")

    # The fixed draft: valid, a one-line diff, the test cases pass, the replay runs.
    page.fill("#draft", POLICY + NEWS)
    page.click("#validate-form button")
    expect(validated.locator(".alert.ok")).to_contain_text("no")
    page.click("#diff-form button")
    diffed = page.locator("#diff-form + .result")
    expect(diffed.locator("pre.diff .add")).to_contain_text(NEWS.strip())
    expect(diffed).to_contain_text("Against version 1")
    page.fill("#cases", CASES)
    page.click("#test-form button")
    tested = page.locator("#test-form + .result")
    expect(tested.locator(".alert.ok")).to_have_text("All 2 cases pass.")
    expect(tested.locator("table.cases tbody tr")).to_have_count(2)
    page.click("#whatif-form button")
    replayed = page.locator("#whatif-form + .result")
    expect(replayed.locator(".alert")).to_contain_text("24 hours")
    shot(page, "console-policies-editor")

    # The replay of real traffic: without the admin rule, the admin's own /payroll request (sampled
    # by the data plane, flushed every 10 s) would be denied, and /docs/readme would not change.
    page.fill("#draft", POLICY.replace("p, admin, app, /*, *, allow\n", ""))
    flips = replayed.locator("table.flips")
    for _ in range(20):
        page.click("#whatif-form button")
        expect(replayed.locator(".alert")).to_be_visible()
        # The browser's own /favicon.ico may be flushed in an earlier batch than /payroll: wait for
        # the request this test made, not for the first flip.
        if flips.count() and "/payroll" in flips.inner_text():
            break
        page.wait_for_timeout(1000)  # the sample is flushed every 10 s: ask again
    expect(flips).to_contain_text("/payroll")
    expect(flips).not_to_contain_text("/docs/readme")
    expect(replayed.locator(".alert.warn")).to_contain_text("allowed today would be denied")
    shot(page, "console-policies-whatif")
    page.fill("#draft", POLICY + NEWS)

    # A failing case is shown as such.
    page.fill(
        "#cases", CASES.replace("path: /payroll\n    expect: deny", "path: /payroll\n    expect: allow")
    )
    page.click("#test-form button")
    expect(tested.locator(".alert")).to_contain_text("1 of 2 cases fail")
    expect(tested.locator("tr.failed")).to_contain_text("/payroll")

    page.fill("#save-reason", "news for everyone signed in")
    page.click("#save-form button")
    expect(page.locator(".policy-summary .big")).to_have_text("v2")
    expect(page.locator("table.policy-rules")).to_contain_text("/news/*")
    history = page.locator("table.policy-history tbody tr")
    expect(history.first).to_contain_text("user:boss")
    expect(history.first).to_contain_text("news for everyone signed in")
    shot(page, "console-policies")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "console-policies-390")
    assert no_horizontal_scroll(page)
    page.set_viewport_size({"width": 1280, "height": 900})

    # Back to version 1 from the history.
    history.last.locator("a").click()
    expect(page.locator("h1")).to_have_text("Policy version 1")
    page.goto(console.url("/policies/versions/2"))
    expect(page.locator("pre.diff .add")).to_contain_text(NEWS.strip())
    page.goto(console.url("/policies/versions/1"))
    page.fill("#restore-reason", "the news page is not ready")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#restore-form button")
    expect(page.locator("h1")).to_have_text("Policies")
    expect(page.locator(".policy-summary .big")).to_have_text("v3")
    expect(page.locator("table.policy-rules")).not_to_contain_text("/news/*")
    expect(page.locator("table.policy-history tbody tr").first).to_contain_text("restored v1")
    page.goto(console.url("/policies/versions/3"))
    shot(page, "console-policy-version")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "console-policy-version-390")
    assert no_horizontal_scroll(page)


@pytest.fixture(scope="module")
def approvals_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with run_console(tmp_path_factory.mktemp("console-approvals"), approvals=2) as site:
        yield site


def test_a_proposal_goes_live_when_another_admin_approves_it(
    browser: Browser, approvals_console: Console
) -> None:
    site = approvals_console
    boss = sign_in_admin(browser, site, "boss")
    second = None
    try:
        page = boss.page
        page.goto(site.url("/policies"))
        expect(page.locator(".policy-summary")).to_contain_text("two-person approval")
        expect(page.locator("section.proposals .empty")).to_be_visible()
        page.fill("#draft", POLICY + NEWS)
        page.fill("#save-reason", "news for everyone signed in")
        page.click("#save-form button")
        proposal = page.locator("article.proposal")
        expect(proposal).to_have_count(1)
        expect(proposal).to_contain_text("user:boss")
        expect(proposal.locator("pre.diff .add")).to_contain_text(NEWS.strip())
        # Nobody approves their own change: no Approve button for its author, the page says why (and
        # the API refuses it anyway), and nothing changes.
        expect(proposal.locator(".approve-form")).to_have_count(0)
        expect(proposal.locator(".own-proposal")).to_contain_text("another admin must approve")
        expect(proposal.locator(".reject-form button")).to_have_text("Withdraw")
        refused = page.evaluate(
            """id => fetch(`/api/policy/proposals/${id}/approve`, {method: 'POST',
                 headers: {'Content-Type': 'application/json', Accept: 'application/json'},
                 body: JSON.stringify({reason: 'looks right to me'})}).then(async r => [r.status, await r.json()])""",
            (proposal.get_attribute("id") or "").removeprefix("proposal-"),
        )
        assert (refused[0], refused[1]["error"]) == (403, "proposal-self-approval"), refused
        page.reload()
        expect(page.locator(".policy-summary .big")).to_have_text("v1")
        shot(page, "console-policies-proposal")

        second = sign_in_admin(browser, site, "second")
        other = second.page
        other.goto(site.url("/policies"))
        mine = other.locator("article.proposal")
        expect(mine).to_contain_text("news for everyone signed in")
        mine.locator(".approve-form input[name=reason]").fill("checked the diff and the what-if")
        mine.locator(".approve-form button").click()
        expect(other.locator(".policy-summary .big")).to_have_text("v2")
        expect(other.locator("table.policy-rules")).to_contain_text("/news/*")
        expect(other.locator("section.proposals .empty")).to_be_visible()
        expect(other.locator("table.policy-history tbody tr").first).to_contain_text("user:second")

        # A change that makes someone an admin says whom, and the approval names them back.
        page.goto(site.url("/policies"))
        page.fill("#draft", POLICY + NEWS + "g, user:newhire, admin\n")
        page.fill("#save-reason", "newhire runs the console from Monday")
        page.click("#save-form button")
        expect(page.locator("article.proposal .new-admins")).to_have_text("user:newhire")
        other.goto(site.url("/policies"))
        hiring = other.locator("article.proposal")
        expect(hiring.locator(".new-admins .badge")).to_have_text("user:newhire")
        expect(hiring.locator(".approve-form button")).to_have_text(
            "Approve, make these admins, and make live"
        )
        shot(other, "console-policies-new-admins")
        hiring.locator(".approve-form input[name=reason]").fill("hired, ticket 7")
        hiring.locator(".approve-form button").click()
        expect(other.locator(".policy-summary .big")).to_have_text("v3")
        other.set_viewport_size({"width": 390, "height": 844})
        assert no_horizontal_scroll(other)
    finally:
        for admin in (boss, second):
            if admin is not None:
                admin.context.close()
    boss.assert_clean()
    if second is not None:
        second.assert_clean()
