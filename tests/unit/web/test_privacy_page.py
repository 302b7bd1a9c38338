"""The public privacy page and its JSON twin, in process: a worker's real services (SQLite file, embedded
fast state) behind the control app and Litestar's client.

What the page must say comes from ``privacy.*`` in the configuration: the contact (or that there is
none), the purposes with their basis and what a person can do about each, the rights and where each
is exercised, the retention periods. The real-gateway walk (tests/integration/test_security_headers.py)
checks its headers and that every other page links to it.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.services import WorkerServices
from gateway.web.privacy_page import ACCOUNT_PRIVACY, NO_CONTACT, PRIVACY_PATH
from tests.unit.web.worker import BASE_URL, control_app

HTML = {"Accept": "text/html"}

CONTACT = {
    "name": "Priya Raman",
    "email": "privacy@example.com",
    "address": ["Example Infra Pvt Ltd", "12 MG Road", "Bengaluru 560001, India"],
    "response_time": "15d",
}
NEWSLETTER = {
    "name": "newsletter",
    "title": "Product newsletter",
    "notice": "We send you the monthly product news.\n\nYou can stop it at any time.",
    "version": 2,
    "basis": "consent",
}
ACCOUNT = {
    "name": "account",
    "title": "Your account",
    "notice": "Your username and email, to sign you in.",
    "basis": "contract",
}


class Control:
    """The control app of one started worker, and its services."""

    def __init__(self, client: httpx.AsyncClient, services: WorkerServices) -> None:
        self.client = client
        self.services = services

    async def get(self, path: str, *, cookie: str | None = None, **headers: str) -> httpx.Response:
        if cookie is not None:
            headers["Cookie"] = f"gateway_session={cookie}"
        response: httpx.Response = await self.client.get(path, headers=headers)
        return response

    async def session(self, username: str, *, two_factor: bool = True) -> str:
        """A session of a new account ``username`` (two-factor, or password only with no factor)."""
        user = await self.services.identity.accounts.create(
            username=username, password=None, actor="cli:test"
        )
        now = self.services.identity.clock.time()
        factors = [FactorUse(Factor.PASSWORD, now)]
        if two_factor:
            factors.append(FactorUse(Factor.TOTP, now))
        session_id, _ = await self.services.identity.sessions.create(
            user_id=user.id,
            username=user.username,
            level=AuthLevel.TWO_FACTOR if two_factor else AuthLevel.ONE_FACTOR,
            factors=tuple(factors),
            roles=(),
            ip="127.0.0.1",
            user_agent="test",
            host=BASE_URL,
        )
        return session_id


StartControl = Callable[..., AbstractAsyncContextManager[Control]]


@pytest.fixture
def control(tmp_path: Path) -> StartControl:
    """Start a worker with these ``privacy`` settings (and ``session`` ones) and serve its control app."""

    @asynccontextmanager
    async def started(privacy: dict[str, Any] | None = None, **overrides: Any) -> AsyncIterator[Control]:
        if privacy is not None:
            overrides["privacy"] = privacy
        async with control_app(tmp_path, **overrides) as (services, client):
            yield Control(client, services)

    return started


def visible(markup: str) -> str:
    """Visible text, one space between words: inline tags vanish, other tags separate words."""
    inline_gone = re.sub(r"</?(?:a|strong)\b[^>]*>", "", markup)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline_gone)).split())


def text_of(page: httpx.Response) -> str:
    """The page's visible text."""
    return visible(page.text)


async def test_the_page_names_the_contact_and_explains_purposes_rights_and_retention(
    control: StartControl,
) -> None:
    privacy = {
        "contact": CONTACT,
        "purposes": [NEWSLETTER, ACCOUNT, {**_DEFAULT_GEO}],
        "retention": {"registration": "90d", "removed_content": "180d"},
    }
    async with control(privacy, session={"insecure_cookies": True, "lifetime": "8h"}) as gw:
        page = await gw.get(PRIVACY_PATH, **HTML)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    text = text_of(page)
    # The contact card: name, a mailto link, every address line, the promised answer time.
    assert "Priya Raman" in text
    assert '<a href="mailto:privacy@example.com">privacy@example.com</a>' in page.text
    for line in CONTACT["address"]:
        assert line in text
    assert "You get an answer within 15 days." in text
    assert NO_CONTACT not in text
    # The purposes, each with its notice (paragraphs kept), basis in words and the person's choice.
    rows = _rows(page, "Purposes")
    assert [row[0] for row in rows] == ["Product newsletter", "Your account", "Sign-in location checks"]
    assert "We send you the monthly product news." in rows[0][1]
    assert "You can stop it at any time." in rows[0][1]
    assert "Basis: Your consent, asked when you sign in." in rows[0][1]
    assert rows[0][2] == "You can withdraw your consent at any time."
    assert "Basis: Needed to give you the account" in rows[1][1]
    assert rows[1][2] == "Needed; it cannot be turned off."
    assert "Basis: A legitimate interest of the operator" in rows[2][1]
    assert rows[2][2] == "You can object; it then stops for you."
    assert page.text.count("<p>We send you") == 1  # one paragraph element per paragraph
    # The rights, each with where it is exercised.
    rights = _rights(page)
    assert list(rights) == RIGHTS
    for name, (_, how) in rights.items():
        if name == "grievance":
            assert how == "How: write to the privacy contact."
        else:
            assert how == "How: on your privacy page when signed in, or write to the privacy contact.", name
    assert rights["erasure"][0] == "Have your data erased (erasure)"
    assert "Data Protection Board of India" in text
    assert "supervisory authority" in text
    assert page.text.count(f'href="{ACCOUNT_PRIVACY}"') == 6
    # Retention: the configured periods in days, and the session lifetime.
    kept = dict(_rows(page, "Retention periods"))
    assert kept["Your account after you close it (then erased)"] == "90 days"
    assert kept["Your sessions (with their address and browser)"] == "until you sign out, at most 8 hours"
    assert any(k.startswith("What an erasure removed") and v == "180 days" for k, v in kept.items())
    assert any(
        k.startswith("Names and addresses in security records") and v == "400 days" for k, v in kept.items()
    )
    assert any(k.startswith("Your privacy requests") and v == "1095 days" for k, v in kept.items())
    # The incident records are kept the rule's 400 days after closing (detections expire sooner).
    assert kept["Security incidents, after each is closed (the security record of each stays)"] == "400 days"
    # Like every gateway page, it links the privacy notice in its footer.
    assert '<a href="/.gateway/privacy">Privacy</a>' in page.text


_DEFAULT_GEO = {
    "name": "geolocation",
    "title": "Sign-in location checks",
    "notice": "Where you sign in from, roughly.",
    "basis": "legitimate_interest",
    "objectable": True,
}


def _rows(page: httpx.Response, label: str) -> list[list[str]]:
    """The body rows of the table ``aria-label=label``, as visible text per cell."""
    table = re.search(rf'<table class="list" aria-label="{label}">(.*?)</table>', page.text, re.S)
    assert table, f"no table {label!r} in {page.text}"
    body = table.group(1).split("<tbody>", 1)[1]
    return [
        [visible(cell) for cell in re.findall(r"<td>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


RIGHTS = ["access", "rectification", "erasure", "restriction", "objection", "consent_withdrawal", "grievance"]


def _rights(page: httpx.Response) -> dict[str, tuple[str, str]]:
    """Each right's section on the page: its title, and the line that says how to exercise it."""
    found = {}
    for name, body in re.findall(r'<section id="right-([a-z_]+)"[^>]*>(.*?)</section>', page.text, re.S):
        title = re.search(r"<h3[^>]*>(.*?)</h3>", body, re.S)
        how = re.search(r'<p class="muted">(How:.*?)</p>', body, re.S)
        assert title, body
        assert how, body
        found[name] = (visible(title.group(1)), visible(how.group(1)))
    return found


async def test_without_a_contact_the_page_says_so_instead_of_empty_fields(control: StartControl) -> None:
    async with control() as gw:
        page = await gw.get(PRIVACY_PATH, **HTML)
        facts = (await gw.get("/.gateway/api/privacy")).json()
    assert page.status_code == 200, page.text
    text = text_of(page)
    assert NO_CONTACT in text
    assert "mailto:" not in page.text
    assert "Email:" not in text
    assert "You get an answer within" not in text
    # Where no portal page does it and no contact takes it, the page says who to ask.
    rights = _rights(page)
    assert rights["grievance"][1] == "How: ask your administrator."
    assert rights["restriction"][1] == "How: on your privacy page when signed in."
    # The defaults: the gateway's own two objectable purposes.
    assert [row[0] for row in _rows(page, "Purposes")] == [
        "Sign-in location checks",
        "Access pattern sample for policy reviews",
    ]
    assert facts["contact"] is None
    assert facts["retention"]["incidents"] == 400 * 86400  # the incident records' rule
    assert facts["retention"]["registration"] == 180 * 86400
    assert {r["name"]: r["by_contact"] for r in facts["rights"]} == dict.fromkeys(RIGHTS, False)


async def test_the_json_twin_gives_the_same_facts_in_seconds(control: StartControl) -> None:
    privacy = {
        "contact": CONTACT,
        "purposes": [NEWSLETTER, ACCOUNT],
        "retention": {"registration": "90d", "audit_events": "30d", "incidents": "7d"},
    }
    async with control(privacy) as gw:
        resp = await gw.get("/.gateway/api/privacy", Accept="application/json")
        schema = (await gw.get("/.gateway/api/schema/openapi.json")).json()
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    facts = resp.json()
    assert facts["contact"] == {
        "name": "Priya Raman",
        "email": "privacy@example.com",
        "address": CONTACT["address"],
        "response_time": 15 * 86400,
    }
    assert facts["purposes"] == [
        {
            "name": "newsletter",
            "title": "Product newsletter",
            "notice": NEWSLETTER["notice"],
            "version": 2,
            "basis": "consent",
            "basis_text": "Your consent, asked when you sign in.",
            "objectable": False,
            "withdrawable": True,
        },
        {
            "name": "account",
            "title": "Your account",
            "notice": ACCOUNT["notice"],
            "version": 1,
            "basis": "contract",
            "basis_text": "Needed to give you the account and the access you signed up for.",
            "objectable": False,
            "withdrawable": False,
        },
    ]
    assert facts["retention"] == {
        "registration": 90 * 86400,
        "removed_content": 180 * 86400,
        "audit_events": 30 * 86400,
        "incidents": 7 * 86400,
        "privacy_requests": 3 * 365 * 86400,
    }
    rights = {r["name"]: r for r in facts["rights"]}
    assert rights["grievance"]["portal"] is None
    assert rights["erasure"]["portal"] == ACCOUNT_PRIVACY
    assert all(r["by_contact"] for r in facts["rights"])
    # Documented for scripts with the rest of the JSON API.
    assert "/.gateway/api/privacy" in schema["paths"]


async def test_configured_text_is_shown_as_text_never_as_markup(control: StartControl) -> None:
    hostile = '<script>alert("x")</script>'
    privacy = {
        "contact": {**CONTACT, "name": f"Officer {hostile}", "address": [f"Street {hostile}"]},
        "purposes": [{**NEWSLETTER, "title": f"Title {hostile}", "notice": f"Notice {hostile}"}],
    }
    async with control(privacy) as gw:
        page = await gw.get(PRIVACY_PATH, **HTML)
    assert page.status_code == 200, page.text
    assert "<script>alert" not in page.text
    assert page.text.count("&lt;script&gt;alert(") == 4
    assert f"Officer {hostile}" in text_of(page)


async def test_a_signed_in_person_is_sent_to_their_own_privacy_page(control: StartControl) -> None:
    async with control({"contact": CONTACT}) as gw:
        signed_out = await gw.get(PRIVACY_PATH, **HTML)
        cookie = await gw.session("asha")
        signed_in = await gw.get(PRIVACY_PATH, cookie=cookie, **HTML)
        # A sign-in with a step still to do (here: enroll a second factor) may read it too: it is public.
        pending = await gw.get(PRIVACY_PATH, cookie=await gw.session("ravi", two_factor=False), **HTML)
    assert signed_out.status_code == 200
    assert 'href="/.gateway/login?rd=/.gateway/account/privacy"' in signed_out.text
    assert "You are signed in" not in text_of(signed_out)
    assert signed_in.status_code == 200
    assert "You are signed in as asha." in text_of(signed_in)
    assert f'<a href="{ACCOUNT_PRIVACY}">your privacy page</a>' in signed_in.text
    assert "/.gateway/login?rd=" not in signed_in.text
    assert pending.status_code == 200, pending.text
    assert "You are signed in as ravi." in text_of(pending)


async def test_the_page_is_served_while_the_session_store_is_down(control: StartControl) -> None:
    # The contact must be reachable especially when something is wrong: the session is only a nicety.
    async with control({"contact": CONTACT}) as gw:
        cookie = await gw.session("asha")
        await gw.services.fast.close()
        account = await gw.get("/.gateway/account", cookie=cookie, **HTML)
        page = await gw.get(PRIVACY_PATH, cookie=cookie, **HTML)
    assert account.status_code == 503, account.text  # the store is really down for the pages that need it
    assert page.status_code == 200, page.text
    assert "Priya Raman" in text_of(page)
    assert "You are signed in" not in text_of(page)
