"""The console's Incidents and blocks, driven in Chromium: block an address by hand, watch a real password
spray (from another loopback address: the console refuses blocked addresses too) raise an incident that
blocks the sprayer, read the events that raised it, lift it, unblock."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import expect

from tests.e2e.conftest import no_horizontal_scroll, shot
from tests.e2e.console_site import Console, ConsoleAdmin, admin_page, console
from tests.integration.http_client import post_form
from tests.support.wait import wait_until

__all__ = ["admin_page", "console"]

BLOCKED = "203.0.113.7"
SPRAYER = "127.0.0.2"
# The default spraying rule: failed sign-ins for 10 different accounts from one address within 10 min.
SPRAYED = [f"nobody{n}" for n in range(10)]


def _sprayer(console: Console) -> httpx.Client:
    """The attacker: another loopback address than the admin's browser (127.0.0.1), so the block the
    spray earns does not shut the admin out of the console, which refuses blocked addresses too."""
    return httpx.Client(
        base_url=f"http://127.0.0.1:{console.port}",
        headers={"Host": f"auth.localhost:{console.port}"},
        transport=httpx.HTTPTransport(local_address=SPRAYER),
        follow_redirects=False,
        timeout=30.0,
    )


def _spray(console: Console) -> None:
    """An attacker tries one password on many accounts, as a browser would (the sign-in form)."""
    with _sprayer(console) as client:
        for name in SPRAYED:
            if client.get("/.gateway/login").status_code == 403:
                break  # blocked already: the rule fired
            post_form(client, "/.gateway/login", {"username": name, "password": "Winter2026!", "rd": ""})


def test_block_an_address_see_an_attack_raise_an_incident_lift_it_and_unblock(
    console: Console, admin_page: Callable[[str], ConsoleAdmin]
) -> None:
    admin = admin_page("boss")
    page = admin.page
    page.click("nav.console-nav >> text=Incidents")
    expect(page.locator("h1")).to_have_text("Incidents and blocks")
    expect(page.locator("#incidents .empty")).to_contain_text("No incidents")
    expect(page.locator("#blocks .empty")).to_contain_text("No address is blocked")

    # The admin's own address is refused, in place, with what to do instead.
    page.fill("#block-address", "127.0.0.1")
    page.fill("#block-reason", "oops")
    page.click("#block-form button[type=submit]")
    expect(page.locator("#block-form + .result .alert")).to_contain_text("the address you are using now")

    # A block by hand: listed with its expiry, reason and who made it.
    page.fill("#block-address", BLOCKED)
    page.select_option("#block-expires", "6h")
    page.fill("#block-reason", "port scan from this host")
    page.click("#block-form button[type=submit]")
    row = page.locator(f"#blocks tr[data-address='{BLOCKED}/32']")
    expect(row).to_contain_text("port scan from this host")
    expect(row).to_contain_text("user:boss")
    expect(row).to_contain_text("UTC")
    expect(row).to_contain_text(" h)")  # "(in 6.0 h)"
    expect(page.locator("[data-testid=block-count]")).to_have_text("1")

    # A real attack: a password spray from the loopback. The rule blocks the address on the data plane.
    _spray(console)

    def spray_listed() -> bool:
        page.reload()
        return page.locator("#incidents tr[data-rule=spraying]").count() == 1

    wait_until(spray_listed, what="the spraying incident listed")
    with _sprayer(console) as sprayer:
        assert sprayer.get("/.gateway/login").status_code == 403  # blocked on the data plane
    incident = page.locator("#incidents tr[data-rule=spraying]")
    expect(incident).to_contain_text(SPRAYER)
    expect(incident.locator(".badge.warn")).to_have_text("open")
    expect(page.locator(f"#blocks tr[data-address='{SPRAYER}/32']")).to_contain_text("system:threat")
    expect(page.locator("[data-testid=open-count]")).to_have_text("2")  # the spray and the manual block
    shot(page, "console-incidents")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "console-incidents-390")
    assert no_horizontal_scroll(page)
    page.set_viewport_size({"width": 1280, "height": 900})

    # The detail: the failed sign-ins that raised it, what was done, the lift form.
    incident.locator("a").first.click()
    expect(page.locator("h1")).to_contain_text("Incident inc-")
    raised = page.locator("table.raised tbody tr")
    expect(raised).to_have_count(len(SPRAYED))
    expect(raised.first).to_contain_text("signin.password")
    expect(raised.first).to_contain_text("failure")
    expect(page.locator("table.related")).to_contain_text("threat.spraying")
    expect(page.locator("table.actions-done")).to_contain_text("block_ip")
    expect(page.locator(".lift")).to_contain_text(f"unblock {SPRAYER}/32")
    shot(page, "console-incident")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "console-incident-390")
    assert no_horizontal_scroll(page)
    page.set_viewport_size({"width": 1280, "height": 900})

    # Lifting is destructive: confirmed, with a reason; the sprayer's address is admitted again.
    page.once("dialog", lambda dialog: dialog.accept())
    page.fill("#lift-reason", "our own load test")
    page.click("#lift-form button[type=submit]")
    expect(page.locator("[data-testid=state]")).to_contain_text("lifted by user:boss")
    expect(page.locator("table.related")).to_contain_text("admin.incident.lift")
    expect(page.locator("table.actions-done .badge.ok")).to_have_text("lifted")

    with _sprayer(console) as sprayer:
        wait_until(
            lambda: sprayer.get("/.gateway/login").status_code == 200, what="the sprayer admitted again"
        )
    page.click("text=← Incidents and blocks")
    expect(page.locator(f"#blocks tr[data-address='{SPRAYER}/32']")).to_have_count(0)
    expect(page.locator("#incidents tr[data-rule=spraying] .badge.ok")).to_have_text("lifted")

    # Unblocking by hand: confirmed, with a reason; the row goes.
    row = page.locator(f"#blocks tr[data-address='{BLOCKED}/32']")
    row.locator("input[name=reason]").fill("scan is over")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button", has_text="Unblock").click()
    expect(page.locator(f"#blocks tr[data-address='{BLOCKED}/32']")).to_have_count(0)
    expect(page.locator("#blocks .empty")).to_be_visible()
    # The admin's address was never blocked: the gateway's account page answers the admin.
    gateway = admin.context.new_page()
    answer = gateway.goto(console.gateway_url("/.gateway/account"))
    assert answer is not None
    assert answer.status == 200
    expect(gateway.locator("h1")).to_have_text("boss")
    gateway.close()
