"""A real HTTP receiver for webhooks (a ticketing or paging tool's endpoint): keeps every JSON body it
was POSTed, in order. ``open`` can be cleared to hold every request until it is set again: a
receiver that is down but still accepts connections."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["WebhookReceiver", "webhook_receiver"]


class WebhookReceiver:
    """Answers each POST with 204 once ``open`` is set (it is, at first)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.open = threading.Event()
        self.open.set()
        events, gate = self.events, self.open

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                gate.wait(120)
                events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.open.set()  # a held request ends, so the server can stop
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A receiver for the block, stopped afterwards (also when the block fails)."""
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()
