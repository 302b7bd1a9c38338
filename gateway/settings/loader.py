"""Config file → frozen, validated :class:`~gateway.settings.schema.Settings`.

The loader works in four passes, and each pass reports every problem it finds (not just the first),
naming the key path and the line, so an operator fixes a file in one round trip:

1. **Compose.** PyYAML's safe composer builds the node tree; the loader builds the Python values itself
   so every value keeps its line. It refuses what a security config must not contain: duplicate keys
   (PyYAML silently keeps the last one), aliases (billion-laughs bombs), and any tag other than the
   standard scalars, mappings and sequences. ``${env:NAME}`` and ``${file:PATH}`` references are
   resolved here; the values they produce are never printed in an error.
2. **Shape.** Each value is checked against the schema's types, field by field, so that all type errors,
   unknown keys (with a "did you mean") and missing keys are reported together. A plain YAML scalar in a
   place that wants a string is taken as written (``min_version: 1.3`` is ``"1.3"``, ``client_id: 0123``
   stays ``"0123"``), which sidesteps YAML 1.1's octal/boolean/float surprises.
3. **Convert.** ``msgspec.convert`` builds the frozen structs; relative paths are made absolute against
   the config file's directory, so the same file works from any working directory.
4. **Meaning.** Semantic checks: URLs, hostnames, ports, CIDRs, unique names, reserved identity headers,
   readable TLS files, sane timeouts.

Every problem becomes one line of the :class:`~gateway.errors.ConfigError` report, sorted by line::

    gateway.yaml:14: routes[1] (name: wiki).mfa: expected one of none, required, webauthn or a mapping
    {require, max_age}; got "sometimes"
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_origin
from urllib.parse import urlsplit

import msgspec
import yaml
from yaml.constructor import SafeConstructor

from gateway.errors import ConfigError
from gateway.settings.schema import (
    ActiveHealthCheck,
    ByteSize,
    Duration,
    IdentityProvider,
    LoggingSettings,
    LogSink,
    Route,
    Settings,
    ThreatSettings,
    TlsSettings,
)

__all__ = ["load_settings", "parse_byte_size", "parse_duration", "parse_settings", "resolve_paths"]

# A key path inside the document: ("routes", 1, "mfa") renders as routes[1].mfa.
_Path = tuple[str | int, ...]

_TAG: Final = "tag:yaml.org,2002:"
# Implicit timestamps are read as text: nothing in the config is a date, and "2024-01-01" in a string
# field must stay the string the operator wrote.
_SCALAR_TAGS: Final = frozenset(_TAG + name for name in ("str", "int", "float", "bool", "null", "timestamp"))
_NONE_TYPE: Final = type(None)
_MAX_DEPTH: Final = 32

_DURATION_HELP: Final = "a duration such as 500ms, 30s, 15m, 12h, 7d, 1h30m or a number of seconds"
_SIZE_HELP: Final = "a size such as 64KiB, 10MiB, 1GiB, 10kB, 5MB or a number of bytes"
_EXAMPLE: Final = "see examples/gateway.example.yaml"

_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_UNITS: Final = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_SIZE: Final = re.compile(r"(\d+)\s*([A-Za-z]+)")
_SIZE_UNITS: Final = {
    "B": 1,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}

_REFERENCE: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")
_KEY_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_DATABASE_SCHEMES: Final = ("sqlite+aiosqlite", "postgresql+asyncpg")
_REDIS_SCHEMES: Final = ("redis", "rediss", "redis+sentinel", "redis+cluster", "unix")


class _Invalid:
    """Stands in for a value that already produced a problem, so it does not produce a second one."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Final = _Invalid()


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def load_settings(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and return the settings in the YAML file at ``path``.

    Args:
        path: The config file. Relative paths inside it (``data_dir``, TLS files, ``${file:…}``
            secrets, a relative SQLite URL) resolve against the file's directory.
        environ: Where ``${env:NAME}`` looks names up; ``os.environ`` when omitted.

    Returns:
        Frozen settings, with every filesystem path absolute.

    Raises:
        ConfigError: The file is missing, unreadable or invalid. ``str(err)`` is the full report,
            one ``file:line: key.path: problem`` line per problem.
    """
    source = str(path)
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: no such file; pass the path of the gateway's YAML config ({_EXAMPLE})"
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
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    return parse_settings(text, source=source, base_dir=file.absolute().parent, environ=environ)


def parse_settings(
    text: str,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validate config text and return the settings.

    Args:
        text: The YAML document.
        source: The name errors start with, usually the file's path.
        base_dir: Where relative paths resolve; the current directory when omitted.
        environ: Where ``${env:NAME}`` looks names up; ``os.environ`` when omitted.

    Returns:
        Frozen settings, with every filesystem path absolute.

    Raises:
        ConfigError: The text is not a valid config; ``str(err)`` is the full report.
    """
    base = Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd()))
    report = _Report(source=source, base_dir=base, environ=os.environ if environ is None else environ)
    root = _compose(text, source)
    if root is None:
        raise ConfigError(f"{source}: the file is empty; it needs at least public_url ({_EXAMPLE})")
    report.data = data = report.build(root, ())
    if not isinstance(data, dict):
        line = root.start_mark.line + 1
        raise ConfigError(
            f"{source}:{line}: the top level must be a mapping of keys such as listen, public_url and"
            f" routes; got {_describe(data)}"
        )
    shaped = report.check(data, (), Settings)
    report.raise_if_any()
    try:
        settings = msgspec.convert(shaped, Settings, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        # The shape pass mirrors msgspec's rules, so this is a safety net: translate, never leak.
        report.add_validation_error(exc)
        report.raise_if_any()
        raise  # pragma: no cover - add_validation_error always records a problem
    settings = resolve_paths(settings, base)
    _check_meaning(settings, report)
    report.raise_if_any()
    return settings


def resolve_paths(settings: Settings, base_dir: Path) -> Settings:
    """Return ``settings`` with relative filesystem paths made absolute against ``base_dir``.

    Covers ``data_dir``, the TLS certificate and key, and a relative ``sqlite+aiosqlite:///`` URL.
    Idempotent: absolute paths are only normalised, so resolving twice changes nothing.

    Args:
        settings: Settings as validated.
        base_dir: The config file's directory.

    Returns:
        The same settings with absolute paths.
    """
    base = os.path.abspath(base_dir)

    def absolute(value: str) -> str:
        # An empty value stays empty so the semantic check can name it instead of silently meaning base.
        return os.path.normpath(os.path.join(base, value)) if value else value

    tls = settings.tls
    if tls is not None:
        tls = msgspec.structs.replace(tls, certificate=absolute(tls.certificate), key=absolute(tls.key))
    storage = settings.storage
    if storage.url is not None:
        storage = msgspec.structs.replace(storage, url=_absolute_sqlite_url(storage.url, absolute))
    policy = settings.policy
    if policy.file is not None:
        policy = msgspec.structs.replace(policy, file=absolute(policy.file))
    sinks = tuple(
        msgspec.structs.replace(
            sink,
            path=absolute(sink.path) if sink.path is not None else None,
            ca_file=absolute(sink.ca_file) if sink.ca_file is not None else None,
        )
        for sink in settings.logging.sinks
    )
    return msgspec.structs.replace(
        settings,
        data_dir=absolute(settings.data_dir),
        tls=tls,
        storage=storage,
        policy=policy,
        logging=msgspec.structs.replace(settings.logging, sinks=sinks),
        threat=msgspec.structs.replace(
            settings.threat,
            block_lists=tuple(absolute(f) for f in settings.threat.block_lists),
            geoip_database=(
                absolute(settings.threat.geoip_database)
                if settings.threat.geoip_database is not None
                else None
            ),
        ),
    )


def parse_duration(value: object) -> Duration:
    """Read a duration: a number of seconds, or text such as ``500ms``, ``30s``, ``15m``, ``1h30m``, ``7d``.

    Args:
        value: An int or float (seconds) or a string with units, largest unit first.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: ``value`` is not a duration (the message says what is expected).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"expected {_DURATION_HELP}")
        return Duration(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {_DURATION_HELP}")
    text = value.strip()
    total, pos, last_rank = 0.0, 0, len(_DURATION_UNITS)
    ranks = {unit: rank for rank, unit in enumerate(reversed(_DURATION_UNITS))}
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        # Units must go from largest to smallest, each once: "30m1h" is more likely a typo than intent.
        if match is None or ranks[match[2]] >= last_rank:
            raise ValueError(f"expected {_DURATION_HELP}")
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        last_rank, pos = ranks[match[2]], match.end()
    if not text:
        raise ValueError(f"expected {_DURATION_HELP}")
    return Duration(total)


def parse_byte_size(value: object) -> ByteSize:
    """Read a size: a number of bytes, or text such as ``64KiB``, ``10MiB``, ``1GiB``, ``10kB``, ``5MB``.

    Args:
        value: A whole number of bytes, or a string of a whole number and a unit (``B``, ``kB``, ``MB``,
            ``GB``, ``TB`` are powers of 1000; ``KiB``, ``MiB``, ``GiB``, ``TiB`` powers of 1024).

    Returns:
        The size in bytes.

    Raises:
        ValueError: ``value`` is not a size (the message says what is expected).
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return ByteSize(value)
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is not None and match[2] in _SIZE_UNITS:
            return ByteSize(int(match[1]) * _SIZE_UNITS[match[2]])
    raise ValueError(f"expected {_SIZE_HELP}")


# --------------------------------------------------------------------------------------------------
# Composition: YAML nodes → plain values, with lines, secrets resolved
# --------------------------------------------------------------------------------------------------


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


def _compose(text: str, source: str) -> yaml.Node | None:
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


@dataclass(slots=True)
class _Meta:
    """What the loader remembers about one value: its line, and whether it carries a secret."""

    line: int
    # The scalar as written, for plain (unquoted) scalars: used where the schema wants a string.
    plain: str | None = None
    # The ${…} references the value was built from; shown instead of the value in every error.
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class _Problem:
    line: int
    order: int
    path: _Path
    message: str


class _Report:
    """The state of one load: values' lines, the problems found so far, and the secret resolver."""

    def __init__(self, *, source: str, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.environ = environ
        self.meta: dict[_Path, _Meta] = {}
        self.problems: list[_Problem] = []
        self.data: object = None
        self._constructor = SafeConstructor()

    # -- reporting ---------------------------------------------------------------------------------

    def line(self, path: _Path) -> int:
        """The line of ``path``, or of its nearest ancestor written in the file (for defaults)."""
        while path and path not in self.meta:
            path = path[:-1]
        meta = self.meta.get(path)
        return meta.line if meta is not None else 0

    def where(self, path: _Path) -> str:
        """Render a key path, naming list items by their ``name`` key: ``routes[1] (name: wiki).mfa``."""
        out, node = "", self.data
        for depth, segment in enumerate(path):
            if isinstance(segment, int):
                out += f"[{segment}]"
                node = node[segment] if isinstance(node, list) and segment < len(node) else None
                name = node.get("name") if isinstance(node, dict) else None
                name_path = (*path[: depth + 1], "name")
                if isinstance(name, str) and name and not self._is_secret(name_path):
                    out += f" (name: {name if _SLUG.fullmatch(name) else _quote(name)})"
            else:
                out += (
                    (("." if out else "") + segment)
                    if _KEY_WORD.fullmatch(segment)
                    else f"[{_quote(segment)}]"
                )
                node = node.get(segment) if isinstance(node, dict) else None
        return out

    def show(self, path: _Path, value: object) -> str:
        """Describe a value found in the file for an error message, hiding anything from a secret."""
        meta = self.meta.get(path)
        if meta is not None and meta.secret is not None:
            return f"the value of {meta.secret} (not shown)"
        return _describe(value)

    def bad(self, path: _Path, problem: str, hint: str = "") -> None:
        """Record a problem with the value at ``path``; withhold its detail if it came from a secret."""
        meta = self.meta.get(path)
        if meta is not None and meta.secret is not None:
            problem = f"the value of {meta.secret} (not shown) is invalid"
        self.add(path, f"{problem}; {hint}" if hint else problem)

    def add(self, path: _Path, message: str, *, line: int | None = None) -> None:
        """Record one problem at ``path``."""
        line = self.line(path) if line is None else line
        self.problems.append(_Problem(line=line, order=len(self.problems), path=path, message=message))

    def raise_if_any(self) -> None:
        """Raise one ConfigError holding every problem, sorted by line."""
        if self.problems:
            ordered = sorted(self.problems, key=lambda p: (p.line, p.order))
            # Rendered only now: route names in paths come from the whole document, built by then.
            raise ConfigError("\n".join(dict.fromkeys(self._render(problem) for problem in ordered)))

    def _render(self, problem: _Problem) -> str:
        prefix = f"{self.source}:{problem.line}:" if problem.line else f"{self.source}:"
        where = self.where(problem.path)
        return f"{prefix} {where}: {problem.message}" if where else f"{prefix} {problem.message}"

    def add_validation_error(self, exc: msgspec.ValidationError) -> None:
        """Translate a msgspec error (``… - at `$.routes[0].mfa```) into a problem line."""
        message, path = _split_validation_error(str(exc))
        if self._is_secret(path):
            message = "invalid value (not shown: it comes from a secret reference)"
        self.add(path, message[:1].lower() + message[1:].replace("`", ""))

    def _is_secret(self, path: _Path) -> bool:
        meta = self.meta.get(path)
        return meta is not None and meta.secret is not None

    # -- pass 1: compose ---------------------------------------------------------------------------

    def build(self, node: yaml.Node, path: _Path, *, line: int | None = None) -> object:
        """Turn a node into plain values, recording lines; problems become ``_INVALID`` values."""
        self.meta[path] = _Meta(line=node.start_mark.line + 1 if line is None else line)
        if len(path) > _MAX_DEPTH:
            self.add(path, f"nested more than {_MAX_DEPTH} levels deep; the config needs at most 5")
            return _INVALID
        if isinstance(node, yaml.MappingNode):
            return self._build_mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                return self._refuse_tag(node, path)
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            return self._build_scalar(node, path)
        return self._refuse_tag(node, path)  # pragma: no cover - the composer makes only these three

    def _build_mapping(self, node: yaml.MappingNode, path: _Path) -> object:
        if node.tag != _TAG + "map":
            return self._refuse_tag(node, path)
        result: dict[str, object] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.add(path, "keys must be plain words, not lists or mappings", line=key_line)
                continue
            if key_node.tag == _TAG + "merge":
                self.add(path, "merge keys (<<) are not allowed; write the keys out", line=key_line)
                continue
            key = key_node.value
            if key in first_line:
                # PyYAML would keep the last value silently; in a security config that hides mistakes.
                self.add(
                    path, f"duplicate key {_quote(key)} (first at line {first_line[key]})", line=key_line
                )
                continue
            first_line[key] = key_line
            result[key] = self.build(value_node, (*path, key), line=key_line)
        return result

    def _build_scalar(self, node: yaml.ScalarNode, path: _Path) -> object:
        if node.tag not in _SCALAR_TAGS:
            return self._refuse_tag(node, path)
        meta = self.meta[path]
        if node.style is None:
            meta.plain = node.value
        if node.tag == _TAG + "str":
            return self._interpolate(node.value, path)
        if node.tag == _TAG + "timestamp":
            return node.value
        return self._constructor.construct_object(node)

    def _refuse_tag(self, node: yaml.Node, path: _Path) -> _Invalid:
        tag = "!!" + node.tag.removeprefix(_TAG) if node.tag.startswith(_TAG) else node.tag
        self.add(path, f"YAML tag {tag} is not allowed; use plain strings, numbers, lists and mappings")
        return _INVALID

    def _interpolate(self, text: str, path: _Path) -> object:
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
                self.add(path, "unterminated ${ in a string; write $${ for a literal ${")
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
            self.meta[path].secret = ", ".join(references)
        return _INVALID if failed else "".join(out)

    def _resolve_reference(self, body: str, path: _Path) -> str | None:
        kind, _, arg = body.partition(":")
        if kind == "env":
            if not _ENV_NAME.fullmatch(arg):
                self.add(path, f"${{env:{arg}}} is not a valid environment variable name")
                return None
            value = self.environ.get(arg)
            if value is None:
                self.add(path, f"environment variable {arg} is not set; set it or change the reference")
            return value
        if kind == "file":
            return self._read_secret_file(arg, path)
        self.add(
            path,
            f"unknown reference ${{{body}}}; use ${{env:NAME}} or ${{file:PATH}}"
            " (write $${ for a literal ${)",
        )
        return None

    def _read_secret_file(self, name: str, path: _Path) -> str | None:
        if not name:
            self.add(path, "${file:} needs a path, e.g. ${file:/run/secrets/client_secret}")
            return None
        file = Path(os.path.normpath(self.base_dir / name))
        try:
            content = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            self.add(path, f"secret file {file} is not UTF-8 text")
            return None
        except OSError as exc:
            self.add(path, f"cannot read secret file {file} ({exc.strerror or type(exc).__name__})")
            return None
        # Files written by editors and `echo` end with a newline that is not part of the secret.
        return content.removesuffix("\n").removesuffix("\r")

    # -- pass 2: shape -----------------------------------------------------------------------------

    def check(self, value: object, path: _Path, tp: Any) -> object:
        """Check ``value`` against the schema type ``tp``; return it coerced for ``msgspec.convert``."""
        if value is _INVALID:
            return value
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            return self._check_struct(value, path, tp)
        if _is_union(tp):
            return self._check_union(value, path, tp)
        origin = get_origin(tp)
        if origin is tuple:
            return self._check_tuple(value, path, tp)
        if origin is dict:
            if not isinstance(value, dict):
                return self._mismatch(value, path, tp)
            value_type = get_args(tp)[1]
            return {key: self.check(item, (*path, key), value_type) for key, item in value.items()}
        meta = self.meta.get(path)
        coerced = _coerce_leaf(value, meta.plain if meta is not None else None, tp)
        if coerced is _INVALID:
            self._mismatch(value, path, tp)
        return coerced

    def _mismatch(self, value: object, path: _Path, tp: Any) -> _Invalid:
        self.add(path, f"expected {_expected(tp)}; got {self.show(path, value)}")
        return _INVALID

    def _check_struct(self, value: object, path: _Path, tp: type[msgspec.Struct]) -> object:
        if not isinstance(value, dict):
            return self._mismatch(value, path, tp)
        fields = {field.encode_name: field for field in msgspec.structs.fields(tp)}
        out: dict[str, object] = {}
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                self.add(path, _unknown_key(key, list(fields)), line=self.line((*path, key)))
            else:
                out[key] = self.check(item, (*path, key), field.type)
        for name, field in fields.items():
            if field.required and name not in value:
                self.add(path, f"missing required key {_quote(name)} ({_expected(field.type)})")
        return out

    def _check_union(self, value: object, path: _Path, tp: Any) -> object:
        arms = get_args(tp)
        if value is None and _NONE_TYPE in arms:
            return None
        others = [arm for arm in arms if arm is not _NONE_TYPE]
        structs = [arm for arm in others if isinstance(arm, type) and issubclass(arm, msgspec.Struct)]
        # A mapping can only mean the struct arm: check inside it, so the error names the inner key.
        if len(others) == 1 or (isinstance(value, dict) and len(structs) == 1):
            return self.check(value, path, structs[0] if isinstance(value, dict) and structs else others[0])
        for arm in others:
            mark = len(self.problems)
            result = self.check(value, path, arm)
            if len(self.problems) == mark:
                return result
            del self.problems[mark:]
        return self._mismatch(value, path, tp)

    def _check_tuple(self, value: object, path: _Path, tp: Any) -> object:
        if not isinstance(value, list):
            return self._mismatch(value, path, tp)
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return [self.check(item, (*path, index), args[0]) for index, item in enumerate(value)]
        if len(value) != len(args):
            self.add(path, f"expected {_expected(tp)}; got a list of {len(value)}")
            return _INVALID
        return [
            self.check(item, (*path, index), arg)
            for index, (item, arg) in enumerate(zip(value, args, strict=True))
        ]


# --------------------------------------------------------------------------------------------------
# Shape helpers: type descriptions for humans, leaf coercion, msgspec error translation
# --------------------------------------------------------------------------------------------------


def _dec_hook(tp: type, obj: object) -> object:
    if tp is Duration:
        return parse_duration(obj)
    if tp is ByteSize:
        return parse_byte_size(obj)
    raise NotImplementedError(f"no decoder for {tp!r}")


def _is_union(tp: Any) -> bool:
    origin = get_origin(tp)
    return origin is types.UnionType or repr(origin) == "typing.Union"


def _coerce_leaf(value: object, plain: str | None, tp: Any) -> object:
    """Return ``value`` as type ``tp`` wants it, or ``_INVALID``. Mirrors msgspec's strict rules."""
    if tp is Duration or tp is ByteSize:
        parse = parse_duration if tp is Duration else parse_byte_size
        try:
            return parse(value)
        except ValueError:
            return _INVALID
    literal = get_args(tp) if get_origin(tp) is Literal else None
    wants_text = tp is str or (literal is not None and all(isinstance(arg, str) for arg in literal))
    if wants_text and plain is not None and isinstance(value, (bool, int, float)):
        value = plain  # the scalar as written, not YAML 1.1's reading of it
    if literal is not None:
        return value if any(type(value) is type(arg) and value == arg for arg in literal) else _INVALID
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, bool, float, _NONE_TYPE):
        return value if type(value) is tp else _INVALID
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    try:
        return msgspec.convert(value, tp, dec_hook=_dec_hook)
    except msgspec.ValidationError:
        return _INVALID


def _expected(tp: Any) -> str:
    """Describe a schema type for a human: ``one of none, required, webauthn or a mapping {…}``."""
    named = {
        Duration: _DURATION_HELP,
        ByteSize: _SIZE_HELP,
        str: "a string",
        int: "a whole number",
        float: "a number",
        bool: "true or false",
        _NONE_TYPE: "null",
    }
    if tp in named:
        return named[tp]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        keys = [field.encode_name for field in msgspec.structs.fields(tp)]
        return "a mapping {" + ", ".join(keys[:6]) + (", …}" if len(keys) > 6 else "}")
    args = get_args(tp)
    if _is_union(tp):
        return " or ".join(_expected(arg) for arg in args)
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict:
        return f"a mapping of names to {_plural(args[1])}"
    return getattr(tp, "__name__", str(tp))  # pragma: no cover - every schema type is named above


def _plural(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "mappings"
    names = {str: "strings", int: "whole numbers", float: "numbers", Duration: "durations", ByteSize: "sizes"}
    return names.get(tp, "values")


def _describe(value: object) -> str:
    """Describe a value found in the file: strings quoted and shortened, containers by kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quote(value if len(value) <= 200 else value[:197] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__  # pragma: no cover - the composer makes only the types above


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key {_quote(key)}; did you mean {_quote(close[0])}?"
    return f"unknown key {_quote(key)}; valid keys here: {', '.join(valid)}"


_AT: Final = re.compile(r"^(?P<message>.*) - at `(?P<where>[^`]*)`(?: in `(?P<inside>[^`]*)`)?$", re.DOTALL)
_SEGMENT: Final = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _split_validation_error(text: str) -> tuple[str, _Path]:
    """Split msgspec's ``Expected `int`, got `str` - at `$.routes[0].name``` into message and path."""
    match = _AT.match(text)
    if match is None:
        return text, ()
    where = match["inside"] or match["where"]
    path: list[str | int] = []
    for segment in _SEGMENT.finditer(where.removeprefix("$")):
        if segment[1] is not None:
            path.append(segment[1])
        elif segment[2] == "...":
            break  # a dict value: msgspec does not say which key, so stop at the mapping
        else:
            path.append(int(segment[2]))
    return match["message"], tuple(path)


# --------------------------------------------------------------------------------------------------
# Pass 4: meaning
# --------------------------------------------------------------------------------------------------


def _check_meaning(settings: Settings, report: _Report) -> None:
    problem = _url_problem(settings.public_url, allow_path=False)
    if problem:
        report.bad(
            ("public_url",), problem, "expected an absolute http(s) URL such as https://auth.example.com"
        )
    problem = _listen_problem(settings.listen)
    if problem:
        report.bad(("listen",), problem, "expected host:port such as 127.0.0.1:8080 or [::1]:8080")
    for index, proxy in enumerate(settings.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            report.bad(
                ("trusted_proxies", index),
                f"{_quote(proxy)} is not an IP address or network",
                "expected an IP address or CIDR network such as 10.0.0.0/8",
            )
    if not settings.data_dir:
        report.add(
            ("data_dir",), "must not be empty; set a directory the gateway may write, e.g. /var/lib/gateway"
        )
    elif os.path.exists(settings.data_dir) and not os.path.isdir(settings.data_dir):
        report.add(("data_dir",), f"{settings.data_dir} exists and is not a directory")
    _check_stores(settings, report)
    if settings.tls is not None:
        _check_tls(settings.tls, report)
    _check_numbers(settings, report)
    _check_authorization(settings, report)
    _check_identity_providers(settings.identity_providers, report)
    _check_routes(settings.routes, report)
    _check_logging(settings.logging, report)
    _check_threat(settings.threat, report)


def _check_threat(threat: ThreatSettings, report: _Report) -> None:
    rules = (
        "brute_force",
        "spraying",
        "mfa_failures",
        "reconnaissance",
        "session_hijack",
        "impossible_travel",
    )
    for name in rules:
        rule = getattr(threat, name)
        at: _Path = ("threat", name)
        _require_positive(
            [
                ((*at, "count"), rule.count),
                ((*at, "window"), rule.window),
                ((*at, "block_for"), rule.block_for),
            ],
            report,
        )
        if "webhook" in rule.responses and threat.webhook_url is None:
            report.add((*at, "responses"), "has 'webhook' but threat.webhook_url is not set")
    _require_positive(
        [
            (("threat", "block_list_poll"), threat.block_list_poll),
            (("threat", "webhook_queue"), threat.webhook_queue),
            (("threat", "webhook_timeout"), threat.webhook_timeout),
            (("threat", "impossible_travel", "max_speed_kmh"), threat.impossible_travel.max_speed_kmh),
        ],
        report,
    )
    if threat.webhook_url is not None:
        problem = _url_problem(threat.webhook_url, allow_path=True)
        if problem:
            report.bad(("threat", "webhook_url"), problem, "expected an absolute http(s) URL")
    for index, file in enumerate(threat.block_lists):
        if not os.path.isfile(file):
            report.add(
                ("threat", "block_lists", index),
                f"file not found: {file}; relative paths start at the config's directory",
            )
    if threat.geoip_database is not None and not os.path.isfile(threat.geoip_database):
        report.add(
            ("threat", "geoip_database"),
            f"file not found: {threat.geoip_database}; relative paths start at the config's directory",
        )


def _check_stores(settings: Settings, report: _Report) -> None:
    # Only the scheme is ever printed: these URLs routinely embed a password.
    url = settings.storage.url
    if url is not None and url.partition("://")[0] not in _DATABASE_SCHEMES:
        report.bad(
            ("storage", "url"),
            f"unsupported database URL scheme {_quote(url.partition('://')[0])}; use sqlite+aiosqlite:///path"
            " or postgresql+asyncpg://user@host/db",
        )
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", settings.state.namespace):
        report.add(("state", "namespace"), "use 1-32 letters, digits, '_', '.', ':' or '-', e.g. prod-gw:")
    url = settings.state.redis_url
    if url is not None and url.partition("://")[0] not in _REDIS_SCHEMES:
        report.bad(
            ("state", "redis_url"),
            f"unsupported Redis URL scheme {_quote(url.partition('://')[0])}; use one of "
            + ", ".join(f"{scheme}://" for scheme in _REDIS_SCHEMES)
            + " or null for the embedded state in data_dir",
        )
    _check_embedded_state(settings, report)


def _check_embedded_state(settings: Settings, report: _Report) -> None:
    if settings.state.embedded == "file":
        return
    path = ("state", "embedded")
    if settings.state.redis_url is not None:
        report.add(path, "applies only without state.redis_url; remove one of them")
    # Memory state lives inside one process: another worker, or the admin listener (its own process),
    # would not know this worker's sessions and would refuse them (or accept revoked ones).
    if settings.server.workers > 1:
        report.add(
            path,
            "memory keeps sessions and counters inside one process, so several workers would not share"
            " them; use file (the default) or server.workers: 1",
        )
    if settings.admin.listen is not None:
        report.add(
            path,
            "memory keeps sessions inside the gateway process, so the admin listener (its own process)"
            " could not see them; use file (the default) or admin.listen: null",
        )


def _check_tls(tls: TlsSettings, report: _Report) -> None:
    for key in ("certificate", "key"):
        path = ("tls", key)
        file = getattr(tls, key)
        try:
            with open(file, "rb"):
                pass
        except FileNotFoundError:
            report.add(
                path,
                f"file not found: {report.show(path, file)}; relative paths start at the config's directory",
            )
        except OSError as exc:
            report.add(path, f"cannot read {report.show(path, file)} ({exc.strerror or type(exc).__name__})")


def _check_numbers(settings: Settings, report: _Report) -> None:
    positive: list[tuple[_Path, float]] = [
        (("session", "idle_timeout"), settings.session.idle_timeout),
        (("session", "lifetime"), settings.session.lifetime),
        (("storage", "pool_size"), settings.storage.pool_size),
        (("server", "workers"), settings.server.workers),
        (("limits", "max_header_bytes"), settings.limits.max_header_bytes),
        (("limits", "max_body_size"), settings.limits.max_body_size),
        (("limits", "max_upstream_connections"), settings.limits.max_upstream_connections),
        (("passwords", "time_cost"), settings.passwords.time_cost),
        (("passwords", "parallelism"), settings.passwords.parallelism),
        (("passwords", "max_concurrent_hashes"), settings.passwords.max_concurrent_hashes),
        (("regulation", "max_failures"), settings.regulation.max_failures),
        (("regulation", "lock_time"), settings.regulation.lock_time),
        (("mfa", "recovery_codes"), settings.mfa.recovery_codes),
        (("mfa", "reauth_max_age"), settings.mfa.reauth_max_age),
        (("policy", "cache_size"), settings.policy.cache_size),
        (("policy", "poll_interval"), settings.policy.poll_interval),
        (("policy", "max_staleness"), settings.policy.max_staleness),
        (("assertion", "ttl"), settings.assertion.ttl),
        (("admin", "reauth_max_age"), settings.admin.reauth_max_age),
        (("audit", "checkpoint_interval"), settings.audit.checkpoint_interval),
    ]
    _require_positive(positive, report)
    if settings.server.graceful_timeout < 0:
        report.add(("server", "graceful_timeout"), "must not be negative; use 0 to stop without waiting")
    if settings.session.idle_timeout > settings.session.lifetime:
        report.add(
            ("session", "idle_timeout"),
            f"is longer than session.lifetime ({settings.session.lifetime:g}s), so it would never apply;"
            " make it shorter",
        )
    if settings.passwords.memory_kib < 19456:
        report.add(
            ("passwords", "memory_kib"),
            f"{settings.passwords.memory_kib} is below OWASP's minimum for argon2id; use at least 19456 (19 MiB)",
        )
    if settings.passwords.min_length < 8:
        report.add(("passwords", "min_length"), "must be at least 8 (NIST SP 800-63B)")
    if not 0 <= settings.regulation.free_attempts < settings.regulation.max_failures:
        report.add(("regulation", "free_attempts"), "must be at least 0 and below regulation.max_failures")
    if settings.regulation.max_failures > 100:
        report.add(("regulation", "max_failures"), "must not exceed 100 (NIST SP 800-63B §5.2.2)")
    cookie = settings.session.cookie_name
    if not _TOKEN.fullmatch(cookie):
        report.add(("session", "cookie_name"), f"{_quote(cookie)} is not a valid cookie name")


def _check_authorization(settings: Settings, report: _Report) -> None:
    if settings.assertion.ttl > 300:
        report.add(
            ("assertion", "ttl"), "must be at most 5m: an assertion is a bearer token upstreams accept"
        )
    if settings.assertion.grace < settings.assertion.ttl or settings.assertion.publish_ahead < 0:
        report.add(
            ("assertion", "grace"),
            "must be at least assertion.ttl (tokens signed by a replaced key must still verify),"
            " and publish_ahead must not be negative",
        )
    if settings.policy.file is not None and not os.path.isfile(settings.policy.file):
        report.add(
            ("policy", "file"),
            f"file not found: {settings.policy.file}; relative paths start at the config's directory",
        )
    if settings.admin.listen is not None:
        problem = _listen_problem(settings.admin.listen)
        if problem:
            report.bad(("admin", "listen"), problem, "expected host:port such as 127.0.0.1:9090, or null")
        elif settings.admin.listen == settings.listen:
            report.add(("admin", "listen"), "must differ from listen: the admin plane has its own listener")


def _require_positive(values: list[tuple[_Path, float]], report: _Report) -> None:
    for path, value in values:
        if value <= 0:
            report.add(path, f"must be greater than 0; got {value:g}")


# Asymmetric JWS algorithms an ID token may be signed with. Never "none", never HS*: an HMAC key would
# be the client secret, or (the key-confusion attack) the provider's public key read as a secret.
_ID_TOKEN_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)


def _check_identity_providers(providers: tuple[IdentityProvider, ...], report: _Report) -> None:
    seen: dict[str, int] = {}
    domains: dict[str, str] = {}
    for index, idp in enumerate(providers):
        at: _Path = ("identity_providers", index)
        if not _SLUG.fullmatch(idp.name):
            report.bad((*at, "name"), f"{_quote(idp.name)} is not a valid name", _NAME_RULE)
        elif idp.name in seen:
            report.add((*at, "name"), f"duplicate identity provider name (first at line {seen[idp.name]})")
        else:
            seen[idp.name] = report.line((*at, "name"))
        problem = _url_problem(idp.issuer, allow_path=True)
        host = urlsplit(idp.issuer).hostname
        if problem is None and urlsplit(idp.issuer).scheme != "https" and host not in _LOCAL_HOSTS:
            problem = "must use https (http is only allowed for localhost)"
        if problem:
            report.bad((*at, "issuer"), problem, "expected the issuer URL such as https://idp.example.com")
        if not idp.client_id:
            report.add((*at, "client_id"), "must not be empty; use the client id registered at the provider")
        if "openid" not in idp.scopes:
            report.add((*at, "scopes"), 'must include "openid"; without it the provider returns no ID token')
        _check_idp_security(idp, at, report)
        for d_index, domain in enumerate(idp.email_domains):
            name = domain.strip().lower().rstrip(".")
            path = (*at, "email_domains", d_index)
            if "*" in name or _host_problem(name):
                report.add(path, f"{_quote(domain)} is not a domain name such as example.com")
            elif name in domains:
                report.add(path, f"{_quote(domain)} already routes to identity provider {domains[name]}")
            else:
                domains[name] = idp.name


def _check_idp_security(idp: IdentityProvider, at: _Path, report: _Report) -> None:
    if not idp.allowed_algorithms:
        report.add((*at, "allowed_algorithms"), "must name at least one algorithm, e.g. [RS256]")
    for a_index, alg in enumerate(idp.allowed_algorithms):
        if alg not in _ID_TOKEN_ALGORITHMS:
            report.add(
                (*at, "allowed_algorithms", a_index),
                f"{_quote(alg)} is not allowed; use asymmetric algorithms only: "
                + ", ".join(sorted(_ID_TOKEN_ALGORITHMS)),
            )
    method = idp.auth_method
    if method == "none" and idp.client_secret is not None:
        report.add((*at, "token_endpoint_auth"), "is none, but a client_secret is set; remove one of them")
    if method != "none" and idp.client_secret is None:
        report.add((*at, "client_secret"), f"is required for token_endpoint_auth {method}")
    if idp.trust_mfa and not (idp.mfa_amr or idp.mfa_acr):
        report.add((*at, "trust_mfa"), "needs mfa_amr or mfa_acr values that prove the provider's MFA")
    if idp.link_by_email and idp.provisioning != "jit":
        report.add(
            (*at, "link_by_email"),
            "only applies to provisioning: jit (pre-provisioned accounts are always found by verified email)",
        )
    _check_idp_limits(idp, at, report)


def _check_idp_limits(idp: IdentityProvider, at: _Path, report: _Report) -> None:
    if not 0 <= idp.clock_skew <= 300:
        report.add((*at, "clock_skew"), "must be between 0 and 5m")
    if not 0 < idp.timeout <= 60:
        report.add((*at, "timeout"), "must be greater than 0 and at most 1m")
    if idp.jwks_cooldown < 0:
        report.add((*at, "jwks_cooldown"), "must not be negative")
    if not idp.groups_claim:
        report.add((*at, "groups_claim"), "must not be empty")
    for group, roles in idp.role_map.items():
        for role in (roles,) if isinstance(roles, str) else roles:
            if not role or any(c.isspace() or c == "," for c in role):
                report.add((*at, "role_map", group), f"invalid role name {_quote(role)}: no spaces or commas")
    for key in idp.extra_params:
        if key in _RESERVED_AUTH_PARAMS:
            report.add(
                (*at, "extra_params", key),
                f"{_quote(key)} is set by the gateway itself and cannot be changed",
            )


# Authorization request parameters the flow's security rests on; extra_params cannot override them.
_RESERVED_AUTH_PARAMS: Final = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "response_mode",
        "request",
        "request_uri",
    }
)


def _check_routes(routes: tuple[Route, ...], report: _Report) -> None:
    names: dict[str, int] = {}
    targets: dict[tuple[str, str], tuple[str, int]] = {}
    for index, route in enumerate(routes):
        at: _Path = ("routes", index)
        if not _SLUG.fullmatch(route.name):
            report.bad((*at, "name"), f"{_quote(route.name)} is not a valid name", _NAME_RULE)
        elif route.name in names:
            report.add(
                (*at, "name"),
                f"duplicate route name (first at line {names[route.name]}); names must be unique",
            )
        else:
            names[route.name] = report.line((*at, "name"))
        _check_route(route, at, report)
        # Same host and path prefix twice: only one could ever match, and which one would be an accident.
        target = (route.host.lower(), route.path.rstrip("/") or "/")
        if target in targets:
            first, line = targets[target]
            report.add(
                (*at, "path"),
                f"this host and path are already served by route {_quote(first)} (line {line});"
                " give each route its own host or path",
            )
        else:
            targets[target] = (route.name, report.line(at))


def _check_route(route: Route, at: _Path, report: _Report) -> None:
    problem = _host_problem(route.host)
    if problem:
        report.bad(
            (*at, "host"),
            f"{_quote(route.host)} {problem}",
            "expected a hostname such as wiki.example.com or *.example.com",
        )
    problem = _route_path_problem(route.path)
    if problem:
        report.bad((*at, "path"), f"{_quote(route.path)} {problem}", "expected a path prefix such as /admin")
    if not route.upstreams:
        report.add((*at, "upstreams"), "list at least one upstream URL, e.g. [http://10.0.0.5:8080]")
    for index, upstream in enumerate(route.upstreams):
        problem = _url_problem(upstream, allow_path=True)
        if problem:
            report.bad((*at, "upstreams", index), problem, "expected a URL such as http://10.0.0.5:8080")
    for index, public in enumerate(route.public_paths):
        if not public.startswith("/"):
            report.bad(
                (*at, "public_paths", index), f"{_quote(public)} does not start with /", "e.g. /static/*"
            )
    _check_headers(route, at, report)
    _require_positive(
        [((*at, "timeouts", key), getattr(route.timeouts, key)) for key in ("connect", "response")],
        report,
    )
    policy = route.mfa_policy
    if policy.max_age is not None and policy.max_age <= 0:
        report.add((*at, "mfa", "max_age"), f"must be greater than 0; got {policy.max_age:g}")
    if route.max_body_size is not None and route.max_body_size <= 0:
        report.add((*at, "max_body_size"), f"must be greater than 0; got {route.max_body_size}")
    if route.health_check is not None:
        _check_health(route.health_check, (*at, "health_check"), report)
    passive = route.passive_health_check
    _require_positive(
        [
            ((*at, "passive_health_check", "consecutive_failures"), passive.consecutive_failures),
            ((*at, "passive_health_check", "ejection_time"), passive.ejection_time),
        ],
        report,
    )


def _check_headers(route: Route, at: _Path, report: _Report) -> None:
    for key in ("request_headers", "response_headers"):
        headers: dict[str, str] = getattr(route, key)
        for name, value in headers.items():
            _check_header((*at, key, name), name, value, report)


def _check_header(path: _Path, name: str, value: str, report: _Report) -> None:
    if not _TOKEN.fullmatch(name):
        report.add(path, f"{_quote(name)} is not a valid header name")
    elif name.lower().replace("_", "-").startswith("x-gateway-"):
        # Invariant 3: upstreams trust X-Gateway-* as the gateway's word on identity; no config may forge it.
        report.add(path, f"{name} is reserved: only the gateway sets X-Gateway-* identity headers; remove it")
    if any(char in value for char in "\r\n\0"):
        report.add(path, "header value must not contain line breaks or NUL (header injection)")


def _check_health(check: ActiveHealthCheck, at: _Path, report: _Report) -> None:
    if not check.path.startswith("/"):
        report.bad((*at, "path"), f"{_quote(check.path)} does not start with /", "e.g. /healthz")
    _require_positive(
        [
            ((*at, "interval"), check.interval),
            ((*at, "timeout"), check.timeout),
            ((*at, "healthy_threshold"), check.healthy_threshold),
            ((*at, "unhealthy_threshold"), check.unhealthy_threshold),
        ],
        report,
    )
    if 0 < check.interval <= check.timeout:
        report.add(
            (*at, "interval"),
            f"must be longer than timeout ({check.timeout:g}s), or checks would overlap;"
            f" got {check.interval:g}s",
        )
    low, high = check.expected_status
    if not 100 <= low <= high <= 599:
        report.add(
            (*at, "expected_status"),
            f"expected [low, high] HTTP statuses with 100 <= low <= high <= 599; got [{low}, {high}]",
        )


_NAME_RULE: Final = (
    "names must match [a-z0-9][a-z0-9_-]* (lowercase letters, digits, - and _), e.g. wiki;"
    " they appear in URLs, logs and policies"
)


# Which keys each sink type reads: a key meant for another type is an error, not silently ignored.
_SINK_KEYS: Final = {
    "stdout": frozenset(),
    "file": frozenset({"path", "max_bytes", "backups"}),
    "syslog": frozenset({"address", "ca_file", "app_name", "facility"}),
    "http": frozenset(
        {"url", "profile", "headers", "token", "index", "labels", "batch_size", "flush_interval"}
    ),
}
_SINK_COMMON: Final = frozenset({"type", "name", "queue_size", "retries", "timeout"})
_SINK_REQUIRED: Final = {"file": "path", "syslog": "address", "http": "url"}
_SYSLOG_SCHEMES: Final = ("udp", "tcp", "tls")


def _check_logging(logging: LoggingSettings, report: _Report) -> None:
    _require_positive(
        [
            (("logging", "queue_size"), logging.queue_size),
            (("logging", "flush_timeout"), logging.flush_timeout),
        ],
        report,
    )
    names: dict[str, int] = {}
    for index, sink in enumerate(logging.sinks):
        at: _Path = ("logging", "sinks", index)
        name = sink.name or f"{sink.type}-{index}"
        if name in names:
            report.add((*at, "name"), f"{_quote(name)} is already the name of sinks[{names[name]}]")
        names[name] = index
        _check_sink(sink, at, report)


def _check_sink_keys(sink: LogSink, at: _Path, report: _Report) -> None:
    written: object = report.data
    for key in at:
        # Absent from the document (the default sinks): nothing written, nothing to check.
        if isinstance(written, dict):
            written = written.get(key)
        elif isinstance(written, list) and isinstance(key, int) and key < len(written):
            written = written[key]
        else:
            return
    allowed = _SINK_KEYS[sink.type] | _SINK_COMMON
    for key in written if isinstance(written, dict) else ():
        if key not in allowed:
            report.add((*at, key), f"does not apply to a {sink.type} sink", line=report.line((*at, key)))


def _check_sink(sink: LogSink, at: _Path, report: _Report) -> None:
    _check_sink_keys(sink, at, report)
    required = _SINK_REQUIRED.get(sink.type)
    if required is not None and not getattr(sink, required):
        report.add(at, f"a {sink.type} sink needs {_quote(required)}")
    positive: list[tuple[_Path, float]] = [
        ((*at, "max_bytes"), sink.max_bytes),
        ((*at, "batch_size"), sink.batch_size),
        ((*at, "flush_interval"), sink.flush_interval),
        ((*at, "timeout"), sink.timeout),
        ((*at, "retries"), sink.retries),
    ]
    if sink.queue_size is not None:
        positive.append(((*at, "queue_size"), sink.queue_size))
    _require_positive(positive, report)
    if sink.backups < 0:
        report.add((*at, "backups"), "must not be negative; use 0 to truncate instead of keeping old files")
    if sink.type == "syslog" and sink.address:
        problem = _syslog_address_problem(sink.address)
        if problem:
            report.bad(
                (*at, "address"), problem, "expected udp://host:port, tcp://host:port or tls://host:port"
            )
        if sink.ca_file is not None and not os.path.isfile(sink.ca_file):
            report.add((*at, "ca_file"), f"{sink.ca_file} is not a readable file")
    if sink.type == "http" and sink.url:
        problem = _url_problem(sink.url, allow_path=True)
        if problem:
            report.bad((*at, "url"), problem, "expected the collector's endpoint, e.g. https://es:9200/_bulk")
    for header, value in sink.headers.items():
        if not _TOKEN.fullmatch(header) or any(c in value for c in "\r\n\0"):
            report.add((*at, "headers", header), "is not a valid HTTP header name and value")


def _syslog_address_problem(address: str) -> str | None:
    scheme, sep, _ = address.partition("://")
    if not sep or scheme not in _SYSLOG_SCHEMES:
        return f"scheme must be udp, tcp or tls, not {_quote(scheme) if sep else 'missing'}"
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        return "is not a valid address (bad port or brackets)"
    if not parts.hostname:
        return "has no host"
    if port is None or port == 0:
        return "needs a port 1-65535, e.g. tcp://logs.example.com:514"
    if parts.path not in ("", "/") or parts.query or parts.username is not None:
        return "must be just scheme://host:port"
    return None


def _url_problem(url: str, *, allow_path: bool) -> str | None:
    """Why ``url`` is not an absolute http(s) URL with a host, or None. Never echoes the whole URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL (bad port or brackets)"
    if parts.scheme not in ("http", "https"):
        return (
            f"scheme must be http or https, not {_quote(parts.scheme)}"
            if parts.scheme
            else "is not an absolute URL (it needs http:// or https://)"
        )
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in logs; the value is deliberately not echoed here.
        return "must not contain user:password@; pass credentials another way"
    if port == 0:
        return "port must be 1-65535"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must not have a query (?…) or fragment (#…)"
    if not allow_path and parts.path not in ("", "/"):
        return f"must not have a path (got {_quote(parts.path)}); the gateway's pages live under /.gateway/"
    return None


def _listen_problem(listen: str) -> str | None:
    if listen.startswith("["):
        host, _, rest = listen[1:].partition("]")
        if not rest.startswith(":"):
            return f"got {_quote(listen)}"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{_quote(host)} is not an IPv6 address"
        port = rest[1:]
    else:
        host, sep, port = listen.rpartition(":")
        if not sep or not host:
            return f"got {_quote(listen)}"
        if ":" in host:
            return f"got {_quote(listen)}; write IPv6 addresses in brackets"
        if _host_problem(host):
            return f"{_quote(host)} is not a hostname or IP address"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port must be 1-65535, got {_quote(port)}"
    return None


def _host_problem(host: str) -> str | None:
    if "://" in host:
        return "has a scheme; write only the hostname"
    if ":" in host or "/" in host:
        return "has a port or path; write only the hostname"
    name = host.lower()
    if name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253:
        return "is not a valid hostname"
    for label in name.split("."):
        if label == "*":
            return "uses * other than as the whole leftmost label"
        if not _LABEL.fullmatch(label):
            return "is not a valid hostname (letters, digits and - between dots; IDNs in punycode)"
    return None


def _route_path_problem(path: str) -> str | None:
    # The router matches canonical paths; a prefix that is not canonical could never match, or would
    # match differently than it reads.
    if not path.startswith("/"):
        return "does not start with /"
    if "//" in path or ".." in path:
        return "contains // or .."
    for char in "%?#":
        if char in path:
            return f"contains {_quote(char)}; write the plain, decoded path prefix"
    return None


def _absolute_sqlite_url(url: str, absolute: Callable[[str], str]) -> str:
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):
        return url
    file, mark, query = url[len(prefix) :].partition("?")
    # "sqlite+aiosqlite:////abs" is already absolute; ":memory:" and "" are in-memory databases.
    if not file or file.startswith("/") or file == ":memory:":
        return url
    return f"{prefix}{absolute(file)}{mark}{query}"
