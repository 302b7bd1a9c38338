"""An httpx client on an ASGI app, run on the test's own event loop (as a real worker runs it).

Litestar's test client runs the app on a loop in another thread and blocks the test's loop while a
request runs. The app here is one of a started gateway process's (its services and their background
tasks live on the test's loop): a background write caught half-way by that block (a replica
heartbeat, say) held SQLite's write lock through the whole request, and the request's own write failed
5 s later as "database is locked" (a CI run). The apps here need no lifespan events.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["asgi_client"]


def asgi_client(app: Any, base_url: str) -> httpx.AsyncClient:
    """A client for ``app`` (an ASGI app; httpx types it more narrowly than Litestar's) at ``base_url``;
    use it as ``async with``. The peer address the app sees is ``testclient``, as Litestar's gave."""
    transport = httpx.ASGITransport(app=app, client=("testclient", 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url, follow_redirects=True)
