"""The CLI's output cannot drive the operator's terminal (gateway.cli.terminal): an attack run put an
8-bit CSI into `gateway incident show` through a User-Agent, and the terminal obeyed it."""

from __future__ import annotations

import io
import sys

import pytest

from gateway.cli.app import main
from gateway.cli.terminal import EscapingStream, escape_controls, one_line


def test_control_characters_are_shown_as_escapes_and_text_is_kept() -> None:
    hostile = "Mozilla \x9b2J\x1b[31mRED\x07\x7f \u2028 \x85 done\r"
    assert escape_controls(hostile) == "Mozilla \\u009b2J\\x1b[31mRED\\x07\\x7f \\u2028 \\u0085 done\\x0d"
    assert escape_controls("line one\n\tcafé © 東京 😀\n") == "line one\n\tcafé © 東京 😀\n"
    # A re-attack run: a right-to-left override printed "CI job gnp.exe" as "CI job exe.png".
    assert escape_controls("CI job \u202egnp.exe \u2066x\u2069") == "CI job \\u202egnp.exe \\u2066x\\u2069"
    assert escape_controls("עברית and العربية") == "עברית and العربية"  # right-to-left text stays


def test_the_stream_escapes_what_is_written_and_passes_the_rest() -> None:
    inner = io.StringIO()
    stream = EscapingStream(inner)
    assert stream.write("a\x1bb\n") == len("a\x1bb\n")
    stream.flush()
    assert inner.getvalue() == "a\\x1bb\n"
    assert stream.getvalue() == inner.getvalue()


def test_every_command_writes_through_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["incident", "--help"])
    print("evidence: Mozilla \x9b2J")
    print("to stderr \x1b]0;owned\x07", file=sys.stderr)
    out, err = capsys.readouterr()
    assert "\x9b" not in out
    assert "evidence: Mozilla \\u009b2J" in out
    assert "\x1b" not in err
    assert "to stderr \\x1b]0;owned\\x07" in err


def test_one_line_keeps_a_stored_value_on_its_line() -> None:
    # A reason stored before reasons were checked (or by hand in the database) cannot add a line.
    forged = "x\nFAKE LINE: incident lifted by boss2\r\tend"
    assert one_line(forged) == "x\\nFAKE LINE: incident lifted by boss2\\r\\tend"
    assert "\n" not in one_line(forged)
