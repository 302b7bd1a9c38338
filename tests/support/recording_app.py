"""An app that records what reached it and answers every method with its page, a cookie and CORS
headers, as an app with one handler for all methods does: for tests of what the gateway passes on and
what of the answer it relays (CORS preflights, where the echo app's answer is not relayed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["PAGE", "Recorded", "RecordingApp", "recording_app"]

PAGE = b"SECRET PAGE of the app"


@dataclass(frozen=True)
class Recorded:
    """One request as the app got it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class RecordingApp:
    url: str
    seen: list[Recorded] = field(default_factory=list)

    def last(self, path: str) -> Recorded:
        """The latest request for ``path``."""
        return next(item for item in reversed(self.seen) if item.path == path)


@contextmanager
def recording_app() -> Iterator[RecordingApp]:
    """Serve the app on a free loopback port in a thread; shut it down afterwards."""
    seen: list[Recorded] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(200)
            self.send_header("Access-Control-Allow-Origin", "https://spa.example.com")
            self.send_header("Access-Control-Allow-Methods", "GET, PUT")
            self.send_header("Access-Control-Max-Age", "600")
            self.send_header("Vary", "Origin")
            self.send_header("Set-Cookie", "appsess=APP-COOKIE; Path=/")
            self.send_header("X-App-Internal", "build 1234")
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        do_GET = do_OPTIONS = do_PUT = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RecordingApp(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
