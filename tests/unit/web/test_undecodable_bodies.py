"""Bodies Litestar's parsers cannot decode as text are a 400 on the sign-in and portal forms, in
process (a worker's real services behind the control app).

A fuzzing run: a multipart part with a byte that is not UTF-8, or a charset Python does not know,
failed in the CSRF middleware, before any handler, so every form answered 500 to anyone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.services import WorkerServices
from tests.unit.web.worker import control_app

PARTS = {
    "not UTF-8": b'Content-Disposition: form-data; name="username"\r\n\r\n\xff\xfe',
    "unknown charset": (
        b'Content-Disposition: form-data; name="username"\r\n'
        b"Content-Type: text/plain; charset=bogus-charset\r\n\r\nalice"
    ),
}


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    async with control_app(tmp_path, threat={"enabled": False}) as started:
        yield started


@pytest.mark.parametrize("part", list(PARTS))
@pytest.mark.parametrize("path", ["/.gateway/login", "/.gateway/logout", "/.gateway/account/password"])
async def test_a_form_part_that_is_not_text_is_a_400(
    worker: tuple[WorkerServices, httpx.AsyncClient], path: str, part: str
) -> None:
    _, client = worker
    body = b"--XX\r\n" + PARTS[part] + b"\r\n--XX--\r\n"
    answer = await client.post(
        path,
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=XX", "Accept": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    assert "not valid UTF-8 text" in answer.json()["message"]


async def test_the_control_a_readable_multipart_form_reaches_the_csrf_check(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    _, client = worker
    body = b'--XX\r\nContent-Disposition: form-data; name="username"\r\n\r\nalice\r\n--XX--\r\n'
    answer = await client.post(
        "/.gateway/login",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=XX", "Accept": "application/json"},
    )
    assert answer.status_code == 403, answer.text  # no CSRF token: refused as before, not a 500
