"""The console's Audit, Keys and Settings pages, driven in Chromium: filter the trail, verify the chain,
export evidence that ``gateway audit verify-bundle`` accepts, rotate the signing key, see the settings
with their secrets masked; at 1280 px and at 390 px without horizontal scrolling."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import expect

from tests.e2e.conftest import phone_shot, shot
from tests.e2e.console_site import UPSTREAM_KEY, WEBHOOK_SECRET, Console, ConsoleAdmin, admin_page, console
from tests.integration.harness import run_cli

__all__ = ["admin_page", "console"]


def test_the_audit_page_filters_verifies_and_exports(
    console: Console, admin_page: Callable[[str], ConsoleAdmin], tmp_path: Path
) -> None:
    admin = admin_page("boss")
    page = admin.page
    page.click("nav.console-nav >> text=Audit")
    expect(page.locator("h1")).to_have_text("Audit")
    rows = page.locator("table.audit-list tbody tr")
    expect(rows.first).to_be_visible()

    # Filter: the sign-in events of boss.
    page.fill("#f-actor", "user:boss")
    page.fill("#f-kind", "signin.*")
    page.click("form.audit-filter button[type=submit]")
    expect(page).to_have_url(re.compile(r"actor=user%3Aboss"))
    expect(rows.first).to_be_visible()
    for text in rows.locator("td:nth-child(3)").all_inner_texts():
        assert text.startswith("signin."), text
    for text in rows.locator("td:nth-child(4)").all_inner_texts():
        assert text == "user:boss", text
    # Each record with its chain position, its hashes one click away.
    expect(rows.first.locator("td").first).to_have_text(re.compile(r"^#\d+$"))
    rows.first.locator("details.record summary").click()
    expect(rows.first.locator("dd.hash").first).to_be_visible()
    shot(page, "console-audit")
    phone_shot(page, "console-audit-390")

    # Nothing matches: the empty state says what to do.
    page.fill("#f-kind", "no.such.event")
    page.click("form.audit-filter button[type=submit]")
    expect(page.locator("p.empty")).to_contain_text("No record matches")
    page.click("text=Clear")

    # The period: the same kind of field as the export's (date and time, UTC), kept after filtering.
    for field in ("#f-since", "#f-until", "#export-since", "#export-until"):
        assert page.get_attribute(field, "type") == "datetime-local", field
    now = datetime.now(UTC).replace(microsecond=0)
    since = (now - timedelta(hours=1)).replace(second=7).strftime("%Y-%m-%dT%H:%M:%S")
    page.fill("#f-actor", "user:boss")
    page.fill("#f-since", since)
    page.fill("#f-until", (now + timedelta(hours=1)).replace(second=7).strftime("%Y-%m-%dT%H:%M:%S"))
    page.click("form.audit-filter button[type=submit]")
    expect(page).to_have_url(re.compile("since=" + re.escape(since.replace(":", "%3A"))))
    expect(rows.first).to_be_visible()
    expect(page.locator("#f-since")).to_have_value(since)
    shot(page, "console-audit-period")
    # A period that has not begun: nothing.
    page.fill("#f-since", (now + timedelta(hours=1)).replace(second=7).strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("#f-until", (now + timedelta(hours=2)).replace(second=7).strftime("%Y-%m-%dT%H:%M:%S"))
    page.click("form.audit-filter button[type=submit]")
    expect(page.locator("p.empty")).to_contain_text("No record matches")
    # A date alone in the address (as the API takes it) fills the field with its midnight.
    page.goto(console.url("/audit?since=2020-01-01"))
    expect(page.locator("#f-since")).to_have_value(re.compile(r"^2020-01-01T00:00(:00)?$"))
    expect(rows.first).to_be_visible()
    page.click("text=Clear")

    # Verify the chain from the page.
    page.click("#verify-form button")
    result = page.locator("#verify-result")
    expect(result).to_contain_text("verified")
    expect(result.locator(".alert.ok")).to_be_visible()
    expect(result).to_contain_text("Head hash")
    shot(page, "console-audit-verified")

    # Export evidence for a period: a download arrives, and it is a bundle the CLI verifies.
    now = datetime.now(UTC)
    page.fill("#export-since", (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("#export-until", (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("#export-reason", "incident 7 evidence")
    with page.expect_download() as download_info:
        page.click("#export-form button")
    download = download_info.value
    assert download.suggested_filename.startswith("audit-evidence-")
    bundle = tmp_path / download.suggested_filename
    download.save_as(bundle)
    expect(page.locator("#export-result")).to_contain_text("Downloaded")
    checked = run_cli("audit", "verify-bundle", str(bundle), "--config", str(console.gw.config_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "bundle OK" in checked.stdout

    # Both actions are in the trail the page shows.
    page.goto(console.url("/audit?kind=admin.audit.*"))
    kinds = page.locator("table.audit-list tbody td:nth-child(3)").all_inner_texts()
    assert {"admin.audit.verify", "admin.audit.export"} <= set(kinds)


def test_the_keys_page_rotates_the_signing_key(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    # Each test signs in a new admin: an admin enrols their authenticator app once.
    admin = admin_page("second")
    page = admin.page
    page.goto(console.url("/keys"))
    expect(page.locator("h1")).to_have_text("Keys")
    active = page.locator("table.keys-list tr.key-active code.kid")
    expect(active).to_have_count(1)
    old = active.inner_text()
    shot(page, "console-keys")
    phone_shot(page, "console-keys-390")

    page.select_option("#rotate-which", "signing")
    page.fill("#rotate-reason", "quarterly rotation")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#rotate-form button")
    expect(page.locator("#rotate-result")).to_contain_text("signs now")
    # The table shows the new key active and the old one retiring, without a reload.
    expect(page.locator("table.keys-list tr.key-active code.kid")).not_to_have_text(old)
    new = page.locator("table.keys-list tr.key-active code.kid").inner_text()
    expect(page.locator("table.keys-list tr.key-retiring code.kid")).to_have_text(old)
    shot(page, "console-keys-rotated")
    # And after a reload, from the server.
    page.reload()
    expect(page.locator("table.keys-list tr.key-active code.kid")).to_have_text(new)

    # The keys leaked: the new key signs at once and every earlier one is gone from the table.
    page.select_option("#rotate-which", "signing")
    page.fill("#rotate-reason", "private key found in a public repository")
    page.check("#rotate-compromised")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#rotate-form button")
    expect(page.locator("#rotate-result")).to_contain_text("every earlier key is deleted")
    expect(page.locator("table.keys-list tbody tr")).to_have_count(1)
    expect(page.locator("table.keys-list tr.key-active code.kid")).not_to_have_text(new)
    shot(page, "console-keys-compromised")


def test_the_keys_page_stages_a_keyring_key_then_activates_it(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    console.add_user("ringer", "--role", "admin")
    page = admin_page("ringer").page
    page.goto(console.url("/keys"))
    active = page.locator("ul.keyring-keys li", has=page.locator(".badge.ok")).locator("code").inner_text()
    page.select_option("#rotate-which", "keyring")
    page.fill("#rotate-reason", "yearly, staged for the replicas")
    page.check("#rotate-stage")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#rotate-form button")
    expect(page.locator("#rotate-result")).to_contain_text("is staged in the keyring file")
    staged = page.locator("#rotate-result").inner_text().split("New keyring key ")[1].split(" ")[0]
    # The keyring still encrypts under the same key; the staged one is listed, decrypt only.
    expect(page.locator("ul.keyring-keys li", has=page.locator(".badge.ok")).locator("code")).to_have_text(
        active
    )
    page.reload()
    page.select_option("#activate-kid", staged)
    page.fill("#activate-reason", "every replica has the file")
    shot(page, "console-keys-staged")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#activate-form button")
    expect(page.locator("#activate-result")).to_contain_text(f"Keyring key {staged} is active")
    expect(page.locator("ul.keyring-keys li", has=page.locator(".badge.ok")).locator("code")).to_have_text(
        staged
    )
    shot(page, "console-keys-activated")


def test_the_settings_page_masks_secrets(console: Console, admin_page: Callable[[str], ConsoleAdmin]) -> None:
    console.add_user("keeper", "--role", "admin")
    admin = admin_page("keeper")
    page = admin.page
    page.goto(console.url("/settings"))
    expect(page.locator("h1")).to_have_text("Settings")
    expect(page.locator(".settings-source")).to_contain_text("values masked")
    webhook = page.locator("#settings-threat tr", has_text="webhook_url")
    expect(webhook).to_contain_text("hooks.example.com")
    expect(webhook.locator(".badge")).to_have_text("masked")
    expect(page.locator("#settings-routes tr", has_text="X-Upstream-Key")).to_contain_text("[masked]")
    html = page.content()
    assert WEBHOOK_SECRET not in html
    assert UPSTREAM_KEY not in html
    body = page.evaluate("fetch('/api/settings').then(r => r.text())")
    assert WEBHOOK_SECRET not in body
    assert UPSTREAM_KEY not in body
    shot(page, "console-settings")
    phone_shot(page, "console-settings-390")
