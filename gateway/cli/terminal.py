"""What the CLI prints cannot drive the operator's terminal.

Incident evidence, audit details and account fields hold text a client chose (a User-Agent, a Host).
A control character in it, printed as is, is a terminal command: U+009B (an 8-bit CSI) or ESC starts an
escape sequence that can clear the screen, move the cursor or retitle the window (an attack run put
one into `gateway incident show` through a User-Agent). The CLI's standard output and error therefore
show every C0 and C1 control character but newline and tab, DEL, the Unicode line and paragraph
separators and the bidirectional overrides and isolates as a visible escape (``\\x1b``, ``\\u009b``,
``\\u202e``). JSON output is unaffected: ``json.dumps``
escapes them already.
"""

from __future__ import annotations

from typing import Any, Final, TextIO

__all__ = ["EscapingStream", "escape_controls", "one_line"]

_TABLE: Final[dict[int, str]] = {
    **{c: f"\\x{c:02x}" for c in range(0x20) if chr(c) not in "\n\t"},
    0x7F: "\\x7f",
    **{c: f"\\u{c:04x}" for c in range(0x80, 0xA0)},
    0x2028: "\\u2028",
    0x2029: "\\u2029",
    # The bidirectional overrides and isolates: a right-to-left override makes a printed row read as
    # another (an attack run's "CI job \u202egnp.exe" showed as "CI job exe.png").
    **{c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}


def escape_controls(text: str) -> str:
    """``text`` with its control characters (see the module docstring) written as escapes."""
    return text.translate(_TABLE)


_LINE_BREAKS: Final[dict[int, str]] = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def one_line(text: str) -> str:
    """``text`` for one cell of a line of output: its line breaks and tabs written as escapes, so that
    a value someone else chose (a reason stored by the admin API, a note) cannot add lines of its own
    to a table (an attack run printed a fake "incident lifted by" line in `gateway incident list`)."""
    return text.translate(_LINE_BREAKS)


class EscapingStream:
    """A text stream that writes through :func:`escape_controls`; everything else is the wrapped one's."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(escape_controls(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
