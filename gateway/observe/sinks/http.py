"""HTTP batch delivery: plain NDJSON, Elasticsearch ``_bulk``, Loki push API, Splunk HEC.

One POST per batch. 2xx is delivered; 408, 429 and 5xx (and connection errors) are retried with
back-off; any other status is a refusal (a malformed batch or bad credentials) and the batch is dropped
rather than retried forever. Redirects are not followed: the token must only go where it was configured.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from gateway.observe.sinks.base import Delivery, PermanentError, Sink, terminal_safe

if TYPE_CHECKING:
    from gateway.observe.access import Entry

__all__ = ["HttpSink", "encode_batch"]

_NDJSON: Final = "application/x-ndjson"
_RETRYABLE: Final = frozenset({408, 425, 429})


def encode_batch(
    batch: list[Entry], *, profile: str, index: str, labels: Mapping[str, str], hostname: str
) -> tuple[bytes, str]:
    """The request body and content type for ``batch`` in the collector's ``profile``."""
    if profile == "elasticsearch":
        action = json.dumps({"create": {"_index": index}}).encode()
        return terminal_safe(b"".join(action + b"\n" + entry.json() + b"\n" for entry in batch)), _NDJSON
    if profile == "loki":
        streams: dict[str, list[list[str]]] = {}
        for entry in batch:
            streams.setdefault(entry.stream, []).append(
                [str(round(entry.at * 1e6) * 1000), entry.json().decode()]
            )
        body: dict[str, object] = {
            "streams": [
                {"stream": {"app": "gateway"} | dict(labels) | {"stream": stream}, "values": values}
                for stream, values in streams.items()
            ]
        }
        return json.dumps(body).encode(), "application/json"
    if profile == "splunk":
        events = (
            json.dumps(
                {
                    "time": round(entry.at, 3),
                    "host": hostname,
                    "source": "gateway",
                    "sourcetype": f"gateway:{entry.stream}",
                    "event": entry.document(),
                }
            ).encode()
            for entry in batch
        )
        return b"\n".join(events), "application/json"
    # Loki's and Splunk's bodies above are ASCII (json.dumps escapes every non-ASCII character).
    return terminal_safe(b"".join(entry.json() + b"\n" for entry in batch)), _NDJSON


class HttpSink(Sink):
    """POSTs batches to ``url`` in one of the profiles."""

    def __init__(
        self,
        name: str,
        delivery: Delivery,
        *,
        url: str,
        profile: str,
        headers: Mapping[str, str],
        token: str | None,
        index: str,
        labels: Mapping[str, str],
        timeout: float,
    ) -> None:
        super().__init__(name, delivery)
        self._url = url
        self._profile = profile
        self._index = index
        self._labels = dict(labels)
        self._hostname = socket.gethostname()
        self._headers: dict[str, str] = {}
        if token is not None:
            scheme = "Splunk" if profile == "splunk" else "Bearer"
            self._headers["Authorization"] = f"{scheme} {token}"
        self._headers.update(headers)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar())

    async def send(self, batch: list[Entry]) -> None:
        assert self._session is not None
        body, content_type = encode_batch(
            batch, profile=self._profile, index=self._index, labels=self._labels, hostname=self._hostname
        )
        headers = {"Content-Type": content_type, **self._headers}
        async with self._session.post(self._url, data=body, headers=headers, allow_redirects=False) as resp:
            if resp.status >= 500 or resp.status in _RETRYABLE:
                raise ConnectionError(f"collector answered {resp.status}")
            if not 200 <= resp.status < 300:
                raise PermanentError(f"collector refused the batch with {resp.status}")
            if self._profile == "elasticsearch":
                await self._check_bulk(resp)

    async def _check_bulk(self, resp: aiohttp.ClientResponse) -> None:
        # _bulk answers 200 even when items failed (mapping conflicts): those will not succeed on retry.
        try:
            result: Any = await resp.json(content_type=None)
        except (ValueError, aiohttp.ClientError):
            return
        if isinstance(result, dict) and result.get("errors"):
            raise PermanentError("elasticsearch rejected items of the batch")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
