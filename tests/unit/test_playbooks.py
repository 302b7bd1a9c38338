"""The incident playbooks (docs/incidents/) cite only commands the CLI really has.

Every ``gateway …`` command in a fenced ``sh`` block of a playbook is checked against the parser the
``gateway`` command itself builds (``gateway.cli.app.build_parser``): its sub-command path must lead to
an action, every ``--flag`` must be an option of that action, and the whole line must parse (positional
arguments, choices such as a phase or an ``act`` action, required options, typed values). A renamed
command or flag therefore fails here instead of in the middle of an incident.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli.app import build_parser

ROOT = Path(__file__).resolve().parents[2]
INCIDENTS = ROOT / "docs" / "incidents"
PLAYBOOKS = (
    "brute-force.md",
    "spraying.md",
    "mfa-failures.md",
    "reconnaissance.md",
    "token-guessing.md",
    "session-hijack.md",
    "impossible-travel.md",
    "leaked-signing-key.md",
    "compromised-admin.md",
    "broken-audit-chain.md",
)
PHASES = ("Detection and analysis", "Containment", "Eradication", "Recovery", "Post-incident")
_FENCE = re.compile(r"^```sh[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# Shell operators end one command: a pipe into jq, a redirection, a second command on the line.
_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ">", ">>", "<", "(", ")"})


@dataclass(frozen=True, slots=True)
class Command:
    """One ``gateway …`` command of a playbook: where it is, and its arguments after ``gateway``."""

    where: str
    argv: tuple[str, ...]


def sh_blocks(text: str) -> list[str]:
    """The contents of every fenced ``sh`` block."""
    return [m.group(1) for m in _FENCE.finditer(text)]


def commands_of(text: str, name: str) -> list[Command]:
    """Every ``gateway`` command of the ``sh`` blocks of a Markdown text (continuation lines joined,
    comments dropped, one entry per shell command: ``a | b`` and ``a; b`` are two)."""
    found: list[Command] = []
    for number, block in enumerate(sh_blocks(text), 1):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            segment: list[str] = []
            for token in [*lexer, ";"]:
                if token not in _OPERATORS:
                    segment.append(token)
                    continue
                if segment and segment[0] == "gateway":
                    where = f"{name}, sh block {number}: {shlex.join(segment)}"
                    found.append(Command(where, tuple(segment[1:])))
                segment = []
    return found


def playbook_commands(path: Path) -> list[Command]:
    return commands_of(path.read_text(), path.name)


def _subparsers(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


@functools.cache
def _gateway_parser() -> argparse.ArgumentParser:
    # Built once: parsing leaves the parser as it was, and building it for each of hundreds of
    # commands is most of this module's time.
    return build_parser()


def problems(command: Command) -> list[str]:
    """What is wrong with ``command`` against the real parser (empty when it is a real command)."""
    top = _gateway_parser()
    parser = top
    path = ["gateway"]
    rest = list(command.argv)
    # Options of the top-level parser (--log-level) may come before the command.
    while rest and rest[0].startswith("-"):
        flag = rest.pop(0).split("=", 1)[0]
        if flag not in top._option_string_actions:
            return [f"{command.where}: `gateway` has no option {flag}"]
        if "=" not in flag and top._option_string_actions[flag].nargs != 0 and rest:
            rest.pop(0)
    while (sub := _subparsers(parser)) is not None:
        if not rest or rest[0] not in sub.choices:
            choices = ", ".join(sub.choices)
            got = repr(rest[0]) if rest else "nothing"
            return [f"{command.where}: `{' '.join(path)}` is followed by {got}; it has {choices}"]
        name = rest.pop(0)
        parser = sub.choices[name]
        path.append(name)
    found: list[str] = []
    if parser.get_default("func") is None:
        found.append(f"{command.where}: `{' '.join(path)}` is not a command that runs")
    for token in rest:
        flag = token.split("=", 1)[0]
        if flag.startswith("-") and len(flag) > 1 and flag not in parser._option_string_actions:
            found.append(f"{command.where}: `{' '.join(path)}` has no option {flag}")
    if not found:
        # The whole line as the gateway would parse it: positionals, choices, required options, types.
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                top.parse_args(list(command.argv))
        except SystemExit:
            message = err.getvalue().strip().splitlines()
            found.append(f"{command.where}: {message[-1] if message else 'does not parse'}")
    return found


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_each_playbook_walks_the_five_phases(name: str) -> None:
    text = (INCIDENTS / name).read_text()
    headings = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    assert [h for h in headings if h in PHASES] == list(PHASES), (name, headings)
    assert playbook_commands(INCIDENTS / name), f"{name} has no gateway command in an sh block"


@pytest.mark.parametrize("path", sorted(INCIDENTS.glob("*.md")), ids=lambda p: p.name)
def test_every_cited_command_exists_in_the_cli(path: Path) -> None:
    commands = playbook_commands(path)
    found = [p for command in commands for p in problems(command)]
    assert not found, "\n".join(found)


def test_the_playbooks_cite_many_commands() -> None:
    # A parser change that silently stopped finding commands would make the test above vacuous.
    total = sum(len(playbook_commands(p)) for p in INCIDENTS.glob("*.md"))
    assert total >= 100, total


def test_the_checker_finds_drift() -> None:
    doc = """
```sh
gateway incident case phase $ID containment --config gateway.yaml   # fine
gateway incident case shut $ID --config gateway.yaml
gateway audit list --colour red --config gateway.yaml | jq .
gateway incident case act $ID revoke-everything --config gateway.yaml
gateway keys rotate --signing \\
    --keyring --config gateway.yaml
ID=inc-3f9a1c2b; gateway incident case check $ID --json
```
"""
    commands = commands_of(doc, "example")
    assert [c.argv[:3] for c in commands] == [
        ("incident", "case", "phase"),
        ("incident", "case", "shut"),
        ("audit", "list", "--colour"),
        ("incident", "case", "act"),
        ("keys", "rotate", "--signing"),
        ("incident", "case", "check"),
    ]
    results = [problems(c) for c in commands]
    assert results[0] == []
    assert "is followed by 'shut'" in results[1][0]
    assert "has no option --colour" in results[2][0]
    assert "invalid choice: 'revoke-everything'" in results[3][0]
    assert "not allowed with argument" in results[4][0]
    assert results[5] == []


def test_the_index_links_every_playbook_and_is_linked() -> None:
    index = (INCIDENTS / "README.md").read_text()
    assert all(f"]({name})" in index for name in PLAYBOOKS)
    assert sorted(p.name for p in INCIDENTS.glob("*.md")) == sorted([*PLAYBOOKS, "README.md"])
    assert "docs/incidents/README.md" in (ROOT / "README.md").read_text()
    assert "incidents/README.md" in (ROOT / "docs" / "disaster-recovery.md").read_text()
