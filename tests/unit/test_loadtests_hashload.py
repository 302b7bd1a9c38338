"""loadtests.hashload: the sign-in phase's floor makes the gateway's own argon2id verifications, at a rate."""

from __future__ import annotations

import json

import pytest

from loadtests import hashload
from loadtests.signins import READY


def test_prints_ready_then_every_verification_at_the_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert hashload.main(["--rate", "20", "--duration", "0.25"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == READY
    result = json.loads(lines[-1])
    assert result["attempted"] == 5
    assert result["ok"] == 5
    assert result["failed"] == 0
    # Each is a real argon2id verification with the default (OWASP-minimum) cost: milliseconds, not µs.
    assert result["p50_ms"] > 1.0


@pytest.mark.parametrize("args", [["--rate", "0"], ["--duration", "-1"]])
def test_refuses_a_rate_or_duration_that_is_not_positive(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        hashload.main(args)
    assert exc.value.code == 2
    assert "must be positive" in capsys.readouterr().err
