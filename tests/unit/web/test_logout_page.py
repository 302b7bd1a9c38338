"""The sign-out page: a question only when someone is signed in, with a way to stay; its return address
checked where it enters (a first-day run was asked "Sign out?" while signed out, with no way back)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.web.worker import control_app, signed_in

HTML = {"Accept": "text/html"}


async def test_signed_out_there_is_nothing_to_confirm(tmp_path: Path) -> None:
    async with control_app(tmp_path) as (_services, client):
        page = await client.get("/.gateway/logout", headers=HTML)
        assert page.status_code == 200
        assert "You are signed out" in page.text
        assert "Sign out?" not in page.text
        assert 'href="/.gateway/login"' in page.text


async def test_signed_in_the_question_has_a_way_back_and_only_a_safe_rd(tmp_path: Path) -> None:
    async with control_app(tmp_path) as (services, client):
        user = await services.identity.accounts.create(username="ann", password=None, actor="test")
        await signed_in(services, client, user)
        page = await client.get("/.gateway/logout", params={"rd": "/wiki/page"}, headers=HTML)
        assert "Sign out?" in page.text
        assert "Stay signed in" in page.text
        assert 'name="rd" value="/wiki/page"' in page.text
        evil = await client.get("/.gateway/logout", params={"rd": "https://evil.test/"}, headers=HTML)
        assert "evil.test" not in evil.text
