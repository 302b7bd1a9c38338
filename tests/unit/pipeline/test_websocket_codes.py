"""Close codes passed between a client and an app as a close frame may carry them (RFC 6455 §7.4)."""

from __future__ import annotations

import pytest

from gateway.pipeline.websocket import _sendable


@pytest.mark.parametrize(
    ("code", "sent"),
    [
        (None, 1000),
        (1005, 1000),  # "no status": a re-attack run saw it sent on to the app
        (1000, 1000),
        (1001, 1001),
        (1008, 1008),
        (3000, 3000),
        (4000, 4000),
        (1004, 1011),
        (1006, 1011),
        (1015, 1011),
        (2999, 1011),
        (5000, 1011),  # an app's 5000 reached the client as a dropped connection
        (65535, 1011),
    ],
)
def test_a_code_no_peer_may_send_is_mapped(code: int | None, sent: int) -> None:
    assert _sendable(code) == sent
