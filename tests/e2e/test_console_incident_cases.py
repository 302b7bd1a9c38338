"""The console's Response section driven in Chromium: an incident record opened by hand and walked through
the five phases, and the lockdown switched on and off from its page.

The admin opens a record naming an affected person, assigns it, seals the evidence by entering
containment, adds a passkey, shuts the app's route (a fresh browser gets the maintenance page from the
data plane), confirms with the passkey (changes during a lockdown need one), resets the person's second
factors with a reason, sees the recovery checks fail while the lockdown is on (and closing refused with
the same list), opens the doors again, previews the notification and sends it (a real SMTP server
receives it), writes the root cause, downloads the report and closes the record. The pages are
photographed at 1280 and 390 px into ``docs/screenshots/`` and must not scroll sideways at phone width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.conftest import add_virtual_authenticator, no_horizontal_scroll, shot
from tests.e2e.console_site import Console, ConsoleAdmin, admin_page, run_console
from tests.support.smtp_server import SmtpServer, smtp_server

__all__ = ["admin_page"]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def mail() -> Iterator[SmtpServer]:
    """The mail server the console's gateway sends the notifications through (aiosmtpd)."""
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, mail: SmtpServer) -> Iterator[Console]:
    """The console site with a mail server configured (``notify.smtp``)."""
    notify = {
        "organisation": "Example Ltd",
        "smtp": {
            "host": "127.0.0.1",
            "port": mail.port,
            "security": "none",
            "sender": "security@example.com",
        },
    }
    with run_console(tmp_path_factory.mktemp("console-response"), extra={"notify": notify}) as site:
        yield site


def _photograph(page: Page, name: str) -> None:
    """The page at 1280 and at 390 px (no sideways scrolling there) into docs/screenshots/."""
    DOCS.mkdir(exist_ok=True)
    for width, height, suffix in ((1280, 900, ""), (390, 844, "-390")):
        page.set_viewport_size({"width": width, "height": height})
        shot(page, name + suffix)
        page.screenshot(path=str(DOCS / f"{name}{suffix}.png"), full_page=True)
        if width == 390:
            assert no_horizontal_scroll(page), name
    page.set_viewport_size({"width": 1280, "height": 900})


TITLES = {
    "containment": "Containment",
    "eradication": "Eradication",
    "recovery": "Recovery",
    "post_incident": "Post-incident",
    "closed": "closed",
}


def _move(page: Page, phase: str, *, refused: bool = False) -> None:
    """Move the record with the phase form; unless refused, wait for the page showing the new phase."""
    page.select_option("#phase-to", phase)
    page.fill("#phase-note", f"to {phase}")
    page.click("#phase-form button[type=submit]")
    if not refused:
        # Containment seals the evidence (the chain verified over the window) before the page comes
        # back: seconds on a loaded 2-core machine, past the default 5 s wait (a full run).
        expect(page.locator("[data-testid=phase]")).to_have_text(TITLES[phase], timeout=30_000)


def _run_checks(page: Page) -> None:
    page.click("#checks-form button[type=submit]")
    # The checks verify the whole audit chain, as sealing does: seconds on a loaded 2-core machine
    # (a full run waited past the default 5 s).
    expect(page.locator("#checks-result ul.checklist li")).to_have_count(6, timeout=30_000)


def test_a_record_through_the_phases_and_the_lockdown_switched_from_the_console(
    browser: Browser, console: Console, mail: SmtpServer, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    console.add_user("victim", "--email", "victim@example.org")
    admin = admin_page("boss")
    page = admin.page
    page.click("nav.console-nav >> text=Response")
    expect(page.locator("h1")).to_have_text("Incident records")
    expect(page.locator("#cases .empty")).to_contain_text("No incident record yet")

    # Open a record by hand: the page of the new record follows.
    page.fill("#open-title", "victim's passkey phished")
    page.select_option("#open-severity", "high")
    page.fill("#open-users", "victim\n")
    page.fill("#open-summary", "A look-alike sign-in page was mailed to the finance team.")
    page.click("#open-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Incident inc-")
    case_id = page.locator("h1").inner_text().removeprefix("Incident ").strip()
    expect(page.locator("[data-testid=phase]")).to_have_text("Detection and analysis")
    expect(page.locator("[data-testid=affected]")).to_have_text("victim")

    # Analysis: an owner and a note, each on the timeline.
    page.fill("#assign-owner", "boss")
    page.click("#assign-form button[type=submit]")
    expect(page.locator("[data-testid=owner]")).to_have_text("boss")
    page.fill("#note-text", "the look-alike domain was registered yesterday")
    page.click("#note-form button[type=submit]")
    expect(page.locator("ol.case-timeline li.kind-note")).to_contain_text("registered yesterday")

    # Containment seals the evidence: its hash and the policy version in force are shown.
    _move(page, "containment")
    expect(page.locator("[data-testid=phase]")).to_have_text("Containment")
    sealed = page.locator("table.evidence-list tbody tr")
    expect(sealed).to_have_count(1)
    digest = sealed.locator("code.hash").inner_text()
    assert len(digest) == 64
    assert all(c in "0123456789abcdef" for c in digest)
    expect(sealed.locator("[data-testid=sealed-policy]")).to_have_text("1")

    # A passkey for the lockdown: while one is on, an admin's changes need a passkey used within
    # lockdown.max_factor_age (an attack run switched it off with a phished password and code).
    # Adding it is no use of it: the lockdown's first change still asks for it.
    add_virtual_authenticator(admin.context, page)
    page.goto(console.gateway_url("/.gateway/account/enroll"))
    page.fill("#passkey-name", "Laptop")
    page.click("button[data-webauthn=register]")
    expect(page.locator("table[aria-label='Second factors']")).to_contain_text("Laptop")

    # Lockdown: the app's route shut for everyone (nobody is in a break-glass group here).
    page.goto(console.url(f"/incident-cases/{case_id}"))
    page.click("a[href='/lockdown']")
    expect(page.locator("h1")).to_have_text("Lockdown")
    expect(page.locator("[data-testid=lockdown-state]")).to_have_text("Off")
    page.select_option("#lockdown-routes", ["app"])
    page.fill("#lockdown-on-reason", f"{case_id}: containment")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#lockdown-on-form button[type=submit]")
    expect(page.locator("[data-testid=lockdown-state]")).to_have_text("On")
    expect(page.locator("[data-testid=lockdown-scope]")).to_have_text("app")
    expect(page.locator("#state")).to_contain_text("user:boss")
    visitor = browser.new_context()
    try:
        outside = visitor.new_page()
        answer = outside.goto(f"http://app.localhost:{console.port}/docs/welcome")
        assert answer is not None
        assert answer.status == 503
        expect(outside.locator("body")).to_contain_text("maintenance", ignore_case=True)
    finally:
        visitor.close()
    _photograph(page, "console-lockdown")

    # Eradication: the affected person's second factors reset, with a reason. The lockdown is on and
    # the session used no passkey yet: the console sends the admin to use it, and back.
    record = console.url(f"/incident-cases/{case_id}")
    page.goto(record)
    _move(page, "eradication", refused=True)
    expect(page.locator("#phase-result .alert")).to_contain_text(
        "A lockdown is on: admin changes need a passkey"
    )
    page.locator("#phase-result .alert a", has_text="Confirm with your passkey").click()
    expect(page.locator(".lead")).to_contain_text("needs your passkey or security key")
    page.click("button[data-webauthn=authenticate]")
    page.wait_for_url(record)
    expect(page.locator("[data-testid=phase]")).to_have_text("Containment")
    _move(page, "eradication")
    expect(page.locator("[data-testid=phase]")).to_have_text("Eradication")
    page.select_option("#act-action", "reset-mfa")
    page.fill("#act-reason", "the passkey may be in the attacker's hands")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#act-form button[type=submit]")
    expect(page.locator("ol.case-timeline li.kind-action")).to_contain_text("reset-mfa: 1 account(s)")

    # Recovery: the checks fail while the lockdown is on, and closing is refused with the same list.
    _move(page, "recovery")
    _run_checks(page)
    expect(page.locator("#checks-result li[data-check=lockdown] .badge")).to_have_text("failed")
    expect(page.locator("#checks-result li[data-check=readiness] .badge")).to_have_text("ok")
    expect(page.locator("#checks-result li[data-check=policy_version]")).to_contain_text("version 1 is live")
    _move(page, "post_incident")
    _move(page, "closed", refused=True)
    refusal = page.locator("#phase-result")
    expect(refusal.locator(".alert")).to_contain_text(
        "stays open: the recovery checks did not pass (lockdown)", timeout=30_000
    )
    expect(refusal.locator("li[data-check=lockdown]")).to_contain_text("on: lift it first")
    expect(page.locator("[data-testid=phase]")).to_have_text("Post-incident")

    page.goto(console.url("/lockdown"))
    page.fill("#lockdown-off-reason", f"{case_id}: recovered")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#lockdown-off-form button[type=submit]")
    expect(page.locator("[data-testid=lockdown-state]")).to_have_text("Off")

    # Post-incident: every check passes, the people are previewed, the lessons written, the report taken.
    page.goto(console.url(f"/incident-cases/{case_id}"))
    _run_checks(page)
    expect(page.locator("#checks-result .alert.ok")).to_have_text("Every check passes: the record may close.")
    page.fill("#notify-todo", "Enrol a new passkey when you next sign in.")
    page.click("#notify-preview-form button[type=submit]")
    preview = page.locator("#notify-result article.mail-preview")
    expect(preview).to_have_count(1)
    expect(preview).to_contain_text("To: victim <victim@example.org>")
    expect(preview).to_contain_text("Enrol a new passkey when you next sign in.")
    assert mail.received == []
    # What is sent is what the preview showed: a text changed after it is refused until previewed again.
    page.fill("#notify-todo", "Something the preview did not show.")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#notify-send-form button[type=submit]")
    expect(page.locator("#notify-result")).to_contain_text("preview them again")
    assert mail.received == []
    page.fill("#notify-todo", "Enrol a new passkey when you next sign in.")
    page.click("#notify-preview-form button[type=submit]")
    expect(page.locator("#notify-result")).not_to_contain_text("preview them again")  # the new preview
    expect(preview).to_have_count(1)
    # Sending is destructive (confirmed, a recent factor): the message previewed reaches the server.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#notify-send-form button[type=submit]")
    expect(page.locator("#notify-result pre.deliveries")).to_contain_text("victim <victim@example.org>: sent")
    [received] = mail.received
    assert received.rcpt_tos == ("victim@example.org",)
    assert "Enrol a new passkey when you next sign in." in received.message.get_content()
    page.fill("#root-cause", "a look-alike domain and a password typed into it")
    page.fill("#lessons", "passkeys only for finance")
    page.click("#lessons-form button[type=submit]")
    expect(page.locator("dl.facts")).to_contain_text("passkeys only for finance")
    with page.expect_download() as download:
        page.click("#report-form button[type=submit]")
    report = Path(download.value.path()).read_text()
    assert download.value.suggested_filename == f"post-incident-{case_id}.md"
    assert f"# Post-incident report: victim's passkey phished ({case_id})" in report
    assert "passkeys only for finance" in report
    _run_checks(page)
    _photograph(page, "console-incident-case")

    _move(page, "closed")
    expect(page.locator("[data-testid=phase]")).to_have_text("closed")
    expect(page.locator("#phase-form")).to_have_count(0)
    page.click("text=← Incident records")
    row = page.locator(f"#cases tr[data-case='{case_id}']")
    expect(row).to_have_attribute("data-phase", "closed")
    expect(row).to_contain_text("boss")
    expect(row.locator(".badge.sev-high")).to_have_text("high")
    _photograph(page, "console-incident-cases")
