"""The account's privacy page in process: a worker's real services (SQLite file, embedded fast state)
behind the control app and Litestar's client.

What the real-gateway tests (tests/integration/test_account_privacy_http.py, the Chromium test) do not
reach: an account linked to an identity provider sees the provider's reason instead of a form that
could only fail; each purpose shows what applies to the person now and the one consent-API call that
changes it; the "done" page speaks only of requests that ended a session.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Request

from gateway.identity.models import User
from gateway.identity.oidc.models import IdentityLink
from gateway.identity.redirects import admin_origin
from gateway.privacy.register import Channel, Kind
from gateway.services import WorkerServices
from gateway.web import flows
from gateway.web.rights import CrossSiteRequest, refuse_cross_site
from tests.unit.web.worker import control_app, signed_in

HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}
PAGE = "/.gateway/account/privacy"
PURPOSES: list[dict[str, Any]] = [
    {"name": "newsletter", "title": "Product newsletter", "notice": "Monthly news.", "version": 2},
    {"name": "surveys", "title": "Surveys", "notice": "Now and then a survey.", "basis": "consent"},
    {"name": "account", "title": "Your account", "notice": "To sign you in.", "basis": "contract"},
    {
        "name": "geolocation",
        "title": "Sign-in location checks",
        "notice": "The address is looked up.",
        "basis": "legitimate_interest",
        "objectable": True,
    },
    {
        "name": "policy_analytics",
        "title": "Access pattern sample",
        "notice": "Request shapes are counted.",
        "basis": "legitimate_interest",
        "objectable": True,
    },
]


class Control:
    """One started worker's control app, and a signed-in browser on it."""

    def __init__(self, client: httpx.AsyncClient, services: WorkerServices) -> None:
        self.client = client
        self.services = services

    async def sign_in(self, username: str) -> User:
        """A new account and a two-factor session for it, with the CSRF cookie a page gives."""
        identity = self.services.identity
        user = await identity.accounts.create(username=username, password=None, actor="cli:test")
        await signed_in(self.services, self.client, user)
        await self.page()  # and the CSRF cookie, as a browser has it from the page
        return user

    async def page(self) -> httpx.Response:
        response: httpx.Response = await self.client.get(PAGE, headers=HTML)
        assert response.status_code == 200, response.text
        return response

    async def post_json(self, path: str, body: dict[str, Any]) -> httpx.Response:
        token = self.client.cookies.get("gateway_csrf") or ""
        response: httpx.Response = await self.client.post(
            path, json=body, headers={**JSON, "x-csrftoken": token}
        )
        return response


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Control]:
    privacy = {"purposes": PURPOSES, "retention": {"registration": "90d", "removed_content": "120d"}}
    async with control_app(tmp_path, privacy=privacy) as (services, client):
        yield Control(client, services)


def _rows(page: httpx.Response) -> dict[str, str]:
    """The "Your choices" table: purpose title → the row's markup."""
    section = page.text.split('id="choices"', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section, re.S)
    titled = {}
    for row in rows:
        title = re.search(r"<strong>([^<]+)</strong>", row)
        if title:
            titled[title.group(1)] = row
    return titled


def _visible(markup: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def _buttons(row: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, API path, JSON body) of each button in a row."""
    found = re.findall(r'<button[^>]*data-api="([^"]+)" data-body="([^"]+)"[^>]*>([^<]+)</button>', row)
    return [(label, api, json.loads(html.unescape(body))) for api, body, label in found]


async def test_an_account_of_an_identity_provider_sees_why_instead_of_the_form(gw: Control) -> None:
    user = await gw.sign_in("ivy")
    async with gw.services.db.session() as session:
        now = gw.services.identity.clock.now()
        session.add(IdentityLink(provider="corp-sso", subject="s-1", user_id=user.id, created_at=now))
        await session.commit()
    page = await gw.page()
    correct = page.text.split('id="correct"', 1)[1].split("</section>", 1)[0]
    assert "Your email and name come from your identity provider (corp-sso)" in _visible(correct)
    assert "/rectify" not in correct
    # The API says the same, and nothing is registered or changed.
    refused = await gw.post_json("/.gateway/api/account/rectify", {"display_name": "Ivy"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "field-owned-by-identity-provider"
    kept = await gw.services.identity.accounts.get(user.id)
    assert kept is not None
    assert kept.display_name == ""
    assert await gw.services.privacy.register.find(user_id=user.id) == []


async def test_each_purpose_shows_what_applies_now_and_the_call_that_changes_it(gw: Control) -> None:
    user = await gw.sign_in("jon")
    consents = gw.services.identity.consents
    purposes = {p.name: p for p in consents.purposes()}
    # Allowed surveys, objected to geolocation; the newsletter never answered.
    await consents.record(user.id, purposes["surveys"], "granted", "api", actor="user:jon")
    await consents.object(user.id, purposes["geolocation"], method="api", actor="user:jon")
    rows = _rows(await gw.page())
    assert list(rows) == [
        "Product newsletter",
        "Surveys",
        "Your account",
        "Sign-in location checks",
        "Access pattern sample",
    ]
    states = {title: _visible(row.split("</td>")[2]) for title, row in rows.items()}
    assert states == {
        "Product newsletter": "Not processed not answered yet",
        "Surveys": "Processed you allowed it",
        "Your account": "Processed needed to serve you",
        "Sign-in location checks": "Not processed you objected",
        "Access pattern sample": "Processed you may object",
    }
    buttons = {title: _buttons(row) for title, row in rows.items()}
    assert buttons == {
        "Product newsletter": [
            ("Allow", "/.gateway/api/consents", {"purpose": "newsletter", "decision": "granted"})
        ],
        "Surveys": [
            ("Withdraw consent", "/.gateway/api/consents", {"purpose": "surveys", "decision": "withdrawn"})
        ],
        "Your account": [],
        "Sign-in location checks": [
            ("Withdraw objection", "/.gateway/api/objections", {"purpose": "geolocation", "object": False})
        ],
        "Access pattern sample": [
            ("Object", "/.gateway/api/objections", {"purpose": "policy_analytics", "object": True})
        ],
    }
    # Every button's call is one the consent API takes: the page's script sends exactly these.
    for title, calls in buttons.items():
        for _, api, body in calls:
            answer = await gw.post_json(api, body)
            assert answer.status_code == 200, (title, answer.text)
    states = {title: _visible(row.split("</td>")[2]) for title, row in _rows(await gw.page()).items()}
    assert states["Product newsletter"] == "Processed you allowed it"
    assert states["Surveys"] == "Not processed you withdrew it"
    assert states["Sign-in location checks"] == "Processed you may object"
    assert states["Access pattern sample"] == "Not processed you objected"


async def test_a_changed_notice_asks_again(gw: Control) -> None:
    user = await gw.sign_in("kim")
    consents = gw.services.identity.consents
    newsletter = consents.purpose("newsletter")
    # An answer to the notice's previous version: it no longer counts.
    older = msgspec.structs.replace(newsletter, version=newsletter.version - 1)
    await consents.record(user.id, older, "granted", "api", actor="user:kim")
    row = _rows(await gw.page())["Product newsletter"]
    assert _visible(row.split("</td>")[2]) == "Not processed the notice changed: answer again"
    assert [label for label, _, _ in _buttons(row)] == ["Allow"]


async def test_the_done_page_speaks_only_of_requests_that_ended_a_session(gw: Control) -> None:
    privacy = gw.services.privacy
    settings = gw.services.live.current.settings.privacy
    who: dict[str, Any] = {"settings": settings, "channel": Channel.PORTAL, "verified_by": "test"}
    lee = await gw.services.identity.accounts.create(username="lee", password=None, actor="cli:test")
    exported, _ = await privacy.export(lee, actor="user:lee", **who)
    restricted = await privacy.restrict(lee, True, actor="user:lee", **who)
    may = await gw.services.identity.accounts.create(username="may", password=None, actor="cli:test")
    await privacy.holds.place("ORDER-7", reason="court order", by="admin:counsel", username="may")
    held = await privacy.erase(may, actor="user:may", **who)
    closed = await privacy.close(
        await gw.services.identity.accounts.create(username="ned", password=None, actor="cli:test"),
        actor="user:ned",
        **who,
    )

    async def done(ref: str) -> httpx.Response:
        response: httpx.Response = await gw.client.get(f"{PAGE}/done", params={"ref": ref}, headers=HTML)
        return response

    for ref in ("", "PR-", "not-a-ref", "PR-AAAAAAAAAA", exported.ref):
        assert (await done(ref)).status_code == 404, ref
    texts = {}
    for view in (restricted, held, closed):
        page = await done(view.ref)
        assert page.status_code == 200, page.text
        texts[view.kind] = _visible(page.text)
        assert view.ref in texts[view.kind]
        # Whose request it is stays out of a page anyone with the link could open.
        for name in ("lee", "may", "ned"):
            assert re.search(rf"\b{name}\b", texts[view.kind]) is None
    assert "Processing is restricted" in texts["restriction"]
    assert "Your erasure is on hold" in texts["erasure"]
    assert "Your account is closed" in texts["closure"]
    assert "deleted 90 days from now" in texts["closure"]


async def test_the_requests_api_lists_no_earlier_accounts_requests(gw: Control) -> None:
    """SQLite gives a deleted account's id to the next new one: the JSON list of one's requests
    showed the earlier owner's (with what an admin wrote about them), where the page did not."""
    identity, privacy = gw.services.identity, gw.services.privacy
    earlier = await identity.accounts.create(username="earlier", password=None, actor="cli:test")
    await privacy.register.open(
        Kind.ACCESS, settings=gw.services.live.current.settings.privacy, user_id=earlier.id,
        subject="earlier", channel=Channel.ADMIN,
    )  # fmt: skip
    await identity.accounts.delete(earlier.id, actor="cli:test")
    later = await gw.sign_in("later")
    listed = await gw.client.get("/.gateway/api/account/requests", headers=JSON)
    assert listed.status_code == 200, listed.text
    assert listed.json() == [], (later.id == earlier.id, listed.json())


@pytest.mark.parametrize("path", ["/.gateway/account/privacy/export", "/.gateway/api/account/export"])
async def test_an_export_asked_for_from_another_site_is_refused_and_records_nothing(
    gw: Control, path: str
) -> None:
    """An attack run: a link on another site made a signed-in browser export (a GET with the cookie),
    each one an access request kept three years, none of them the person's."""
    user = await gw.sign_in("dora")
    privacy = gw.services.privacy
    refused = await gw.client.get(path, headers={**JSON, "Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403, refused.text
    assert await privacy.register.find(owner=user) == []
    # The control: from the page itself (a script sending no such header is let through as well,
    # see refuse_cross_site; one export here keeps this test to one write of the register).
    done = await gw.client.get(path, headers={**JSON, "Sec-Fetch-Site": "same-origin"})
    assert done.status_code == 200, done.text
    assert len(await privacy.register.find(owner=user)) == 1


@pytest.mark.parametrize(
    ("site", "dest", "refused"),
    [
        ("cross-site", None, True),
        # A re-attack run: <img> tags on an application's page of the same site exported three times
        # and used up the person's exports for the hour.
        ("same-site", None, True),
        ("same-origin", "image", True),
        ("same-origin", "script", True),
        ("same-origin", "iframe", True),
        ("same-origin", "document", False),
        ("same-origin", "empty", False),
        ("none", "document", False),
        (None, None, False),
    ],
)
def test_only_a_request_made_on_the_gateways_own_pages_is_answered(
    site: str | None, dest: str | None, refused: bool
) -> None:
    """Scripts and older browsers send no Fetch Metadata: they are answered as before."""
    scope: Any = {"type": "http", "method": "GET", "path": "/", "headers": []}
    if site is not None:
        scope["headers"].append((b"sec-fetch-site", site.encode()))
    if dest is not None:
        scope["headers"].append((b"sec-fetch-dest", dest.encode()))
    request: Request[Any, Any, Any] = Request(scope)
    if refused:
        with pytest.raises(CrossSiteRequest):
            refuse_cross_site(request)
    else:
        refuse_cross_site(request)


@pytest.mark.parametrize(
    "rd",
    [
        "/.gateway/account/privacy/export",
        "/.gateway/account/privacy/export?format=json",
        "/.gateway/api/account/export",
        "/.gateway/api/me",
        # Spellings the control app routes to the same handlers (a re-attack run's):
        "/.gateway/%61ccount/privacy/export",
        "/%2Egateway/account/privacy/export",
        "/.gateway/account/privacy/%65xport",
        "/.gateway//account/privacy/export",
        "/.gateway/%2561ccount/privacy/export",
        "/.gateway/%61pi/me",
        "/.gateway/account/../api/me",
    ],
)
async def test_a_return_url_never_leads_to_a_download_or_the_api(gw: Control, rd: str) -> None:
    """A re-attack run: a sign-in link with rd=/.gateway/account/privacy/export downloaded the person's
    data and recorded an access request right after they signed in. After a sign-in or a step-up the
    person goes where they would without an rd; a page is still a place to return to."""
    config = gw.services.live.current
    assert flows.safe_rd(rd, config) == "/.gateway/account"
    assert flows.carried_rd(rd, config) == ""
    assert flows.safe_rd(config.public_url + rd, config) == "/.gateway/account"
    assert flows.safe_rd("/.gateway/account/privacy", config) == "/.gateway/account/privacy"


@pytest.mark.parametrize(
    ("path", "followed"),
    [
        ("/", True),
        ("/incident-cases/inc-1", True),
        ("/api/incident-cases/inc-1/report?format=md", False),
        ("/api/policy", False),
        ("/%61pi/policy", False),
        ("//api/policy", False),
    ],
)
async def test_a_return_url_on_the_console_leads_to_its_pages_never_its_api(
    tmp_path: Path, path: str, followed: bool
) -> None:
    """A re-attack run: a sign-in link with rd on the admin listener's /api/ landed an admin, right
    after signing in, on an incident report's download; the console's pages stay places to return to."""
    async with control_app(tmp_path, admin={"listen": "127.0.0.1:9091"}) as (services, _):
        config = services.live.current
        rd = admin_origin(config.public_url, "127.0.0.1:9091") + path
        assert flows.safe_rd(rd, config) == (rd if followed else "/.gateway/account")
