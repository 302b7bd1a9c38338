"""Pass 1 of the loader: the config file's text → plain Python values, each remembering its line.

PyYAML's safe composer builds the node tree; the values are built here so every value keeps its line.
What a security config must not contain is refused: duplicate keys (PyYAML silently keeps the last one),
aliases (billion-laughs bombs), merge keys, and any tag other than the standard scalars, mappings and
sequences. ``${env:NAME}`` and ``${file:PATH}`` references are resolved here; the values they produce
are marked as secrets, so no later message prints them.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import yaml
from yaml.constructor import SafeConstructor

from gateway.errors import ConfigError
from gateway.settings.report import INVALID, Invalid, KeyPath, Meta, Report, describe, quote

__all__ = ["EXAMPLE", "compose", "read_document"]

# Words a user of the installed package can act on: the examples/ directory is not in the wheel.
EXAMPLE: Final = "`gateway quickstart --data-dir DIR` writes a working one; every key is in the README's Configuration reference"

_TAG: Final = "tag:yaml.org,2002:"
# Implicit timestamps are read as text: nothing in the config is a date, and "2024-01-01" in a string
# field must stay the string the operator wrote.
_SCALAR_TAGS: Final = frozenset(_TAG + name for name in ("str", "int", "float", "bool", "null", "timestamp"))
_MAX_DEPTH: Final = 32

_REFERENCE: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# What the loader reads at most: a config file (hand-written, includes nothing) and one ${file:} secret.
_MAX_DOCUMENT: Final = 16 * 2**20
_MAX_SECRET: Final = 2**20


class NotARegularFile(OSError):
    """A path that names a pipe, a device or a socket, or a file past the loader's size limit: read, it
    would block for ever (a FIFO with no writer) or without end (``/dev/zero``: 5.5 GB in 10 s in a
    fuzzing run)."""


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (a link to one is followed), at most ``limit`` of them.

    Raises:
        NotARegularFile: Not a regular file, or larger than ``limit`` bytes.
        OSError: It cannot be opened or read.
    """
    # O_NONBLOCK: opening a FIFO for reading with no writer would otherwise wait for one.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if not stat.S_ISREG(mode):
            raise NotARegularFile("not a regular file (a pipe, device or socket)")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise NotARegularFile(f"larger than {limit // 2**20} MiB")
    return data


def read_document(path: str | Path) -> str:
    """The text of the config file at ``path``.

    Raises:
        ConfigError: The file is missing, unreadable, not a regular file, too large or not UTF-8, said
            so an operator knows what to fix.
    """
    source = str(path)
    try:
        raw = read_regular_file(Path(path), _MAX_DOCUMENT)
    except NotARegularFile as exc:
        raise ConfigError(f"{source}: {exc}; pass the path of the gateway's YAML config") from None
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: no such file; pass the path of the gateway's YAML config ({EXAMPLE})"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(
            f"{source}: permission denied; the gateway's user must be able to read it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the file ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (invalid byte at offset {exc.start})") from None


def compose(text: str, report: Report, *, base_dir: Path, environ: Mapping[str, str]) -> dict[str, object]:
    """Build the document in ``text`` as plain values; it also becomes ``report.data``.

    Problems inside the document (a duplicate key, an unset variable, a refused tag) are recorded in
    ``report`` and the value becomes :data:`~gateway.settings.report.INVALID`, so later passes skip it.

    Args:
        text: The YAML document.
        report: Where lines, secrets and problems are recorded.
        base_dir: Where relative ``${file:…}`` paths resolve.
        environ: Where ``${env:NAME}`` looks names up.

    Returns:
        The top-level mapping.

    Raises:
        ConfigError: The text is not YAML at all, is empty, or its top level is not a mapping.
    """
    source = report.source
    root = _compose_node(text, source)
    if root is None:
        raise ConfigError(f"{source}: the file is empty; it needs at least public_url ({EXAMPLE})")
    report.data = data = _Builder(report, base_dir=base_dir, environ=environ).build(root, ())
    if not isinstance(data, dict):
        line = root.start_mark.line + 1
        raise ConfigError(
            f"{source}:{line}: the top level must be a mapping of keys such as listen, public_url and"
            f" routes; got {describe(data)}"
        )
    return data


class _AliasRefused(yaml.YAMLError):
    """An alias was found; carries its line."""

    def __init__(self, line: int) -> None:
        super().__init__(f"alias at line {line}")
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops at the first alias, before the composer expands it."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Refusing every alias is simpler and safer than bounding their expansion (billion laughs), and a
        # config file gains nothing from them that it cannot say by repeating the value.
        if self.check_event(yaml.AliasEvent):
            event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
            raise _AliasRefused(event.start_mark.line + 1 if event.start_mark is not None else 0)
        return super().compose_node(parent, index)


def _compose_node(text: str, source: str) -> yaml.Node | None:
    loader: _Loader | None = None
    try:
        # The reader already rejects control characters here, so construction belongs inside the try.
        loader = _Loader(text)
        return loader.get_single_node()
    except _AliasRefused as exc:
        raise ConfigError(
            f"{source}:{exc.line}: aliases (*name) are not allowed; repeat the value instead"
        ) from None
    except yaml.MarkedYAMLError as exc:
        # Only the problem and context, never the snippet: the line could hold a secret.
        line = f"{exc.problem_mark.line + 1}:" if exc.problem_mark is not None else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{source}:{line} invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    except RecursionError:
        # PyYAML composes recursively; a deeply nested document must be a clean error, not a crash.
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


class _Builder:
    """Turns YAML nodes into plain values, recording each value's line (and secret) in the report."""

    def __init__(self, report: Report, *, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.report = report
        self.base_dir = base_dir
        self.environ = environ
        self._constructor = SafeConstructor()

    def build(self, node: yaml.Node, path: KeyPath, *, line: int | None = None) -> object:
        """Turn a node into plain values, recording lines; problems become ``INVALID`` values."""
        self.report.meta[path] = Meta(line=node.start_mark.line + 1 if line is None else line)
        if len(path) > _MAX_DEPTH:
            self.report.add(path, f"nested more than {_MAX_DEPTH} levels deep; the config needs at most 5")
            return INVALID
        if isinstance(node, yaml.MappingNode):
            return self._build_mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                return self._refuse_tag(node, path)
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            return self._build_scalar(node, path)
        return self._refuse_tag(node, path)  # pragma: no cover - the composer makes only these three

    def _build_mapping(self, node: yaml.MappingNode, path: KeyPath) -> object:
        if node.tag != _TAG + "map":
            return self._refuse_tag(node, path)
        result: dict[str, object] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.report.add(path, "keys must be plain words, not lists or mappings", line=key_line)
                continue
            if key_node.tag == _TAG + "merge":
                self.report.add(path, "merge keys (<<) are not allowed; write the keys out", line=key_line)
                continue
            key = key_node.value
            if key in first_line:
                # PyYAML would keep the last value silently; in a security config that hides mistakes.
                self.report.add(
                    path, f"duplicate key {quote(key)} (first at line {first_line[key]})", line=key_line
                )
                continue
            first_line[key] = key_line
            result[key] = self.build(value_node, (*path, key), line=key_line)
        return result

    def _build_scalar(self, node: yaml.ScalarNode, path: KeyPath) -> object:
        if node.tag not in _SCALAR_TAGS:
            return self._refuse_tag(node, path)
        meta = self.report.meta[path]
        if node.style is None:
            meta.plain = node.value
        if node.tag == _TAG + "str":
            return self._interpolate(node.value, path)
        if node.tag == _TAG + "timestamp":
            return node.value
        return self._constructor.construct_object(node)

    def _refuse_tag(self, node: yaml.Node, path: KeyPath) -> Invalid:
        tag = "!!" + node.tag.removeprefix(_TAG) if node.tag.startswith(_TAG) else node.tag
        self.report.add(
            path, f"YAML tag {tag} is not allowed; use plain strings, numbers, lists and mappings"
        )
        return INVALID

    def _interpolate(self, text: str, path: KeyPath) -> object:
        """Resolve ``${env:NAME}`` and ``${file:PATH}``; ``$${`` is a literal ``${``."""
        if "${" not in text:
            return text
        out: list[str] = []
        references: list[str] = []
        failed, pos = False, 0
        for match in _REFERENCE.finditer(text):
            out.append(text[pos : match.start()])
            pos = match.end()
            if match[0] == "$${":
                out.append("${")
                continue
            body = match[1]
            if body is None:
                self.report.add(path, "unterminated ${ in a string; write $${ for a literal ${")
                failed = True
                continue
            references.append(f"${{{body}}}")
            value = self._resolve_reference(body, path)
            if value is None:
                failed = True
            else:
                out.append(value)
        out.append(text[pos:])
        if references:
            self.report.meta[path].secret = ", ".join(references)
        return INVALID if failed else "".join(out)

    def _resolve_reference(self, body: str, path: KeyPath) -> str | None:
        kind, _, arg = body.partition(":")
        if kind == "env":
            if not _ENV_NAME.fullmatch(arg):
                self.report.add(path, f"${{env:{arg}}} is not a valid environment variable name")
                return None
            value = self.environ.get(arg)
            if value is None:
                self.report.add(
                    path, f"environment variable {arg} is not set; set it or change the reference"
                )
            return value
        if kind == "file":
            return self._read_secret_file(arg, path)
        # Not quoted: what follows "${" may be the rest of a literal secret (a password with "${" in it).
        self.report.add(
            path,
            "holds an unknown reference ${…}; use ${env:NAME} or ${file:PATH} (write $${ for a literal ${)",
        )
        return None

    def _read_secret_file(self, name: str, path: KeyPath) -> str | None:
        if not name:
            self.report.add(path, "${file:} needs a path, e.g. ${file:/run/secrets/client_secret}")
            return None
        file = Path(os.path.normpath(self.base_dir / name))
        try:
            content = read_regular_file(file, _MAX_SECRET).decode("utf-8")
        except NotARegularFile as exc:
            self.report.add(path, f"secret file {file} is {exc}")
            return None
        except UnicodeDecodeError:
            self.report.add(path, f"secret file {file} is not UTF-8 text")
            return None
        except OSError as exc:
            self.report.add(path, f"cannot read secret file {file} ({exc.strerror or type(exc).__name__})")
            return None
        # Files written by editors and `echo` end with a newline that is not part of the secret.
        return content.removesuffix("\n").removesuffix("\r")
