"""Passes 2 and 3 of the loader: the composed values, checked against the schema and built into settings.

The walker follows the schema's types field by field, so that all type errors, unknown keys (with a
"did you mean") and missing keys are reported together, each at its own key path. A plain YAML scalar
in a place that wants a string is taken as written (``min_version: 1.3`` is ``"1.3"``,
``client_id: 0123`` stays ``"0123"``), which sidesteps YAML 1.1's octal/boolean/float surprises. Then
``msgspec.convert`` builds the frozen structs from what the walk returned.

Nothing here knows about a particular key: a new key needs only its type in the schema.
"""

from __future__ import annotations

import difflib
import math
import re
import types
from typing import Any, Final, Literal, get_args, get_origin

import msgspec

from gateway.settings.report import INVALID, Invalid, KeyPath, Report, quote
from gateway.settings.schema import ByteSize, Duration, Settings
from gateway.settings.units import DURATION_HELP, SIZE_HELP, parse_byte_size, parse_duration

__all__ = ["build_settings", "walk"]

_NONE_TYPE: Final = type(None)
#: The largest whole number a setting may hold (a signed 32-bit integer's).
MAX_INT: Final = 2**31 - 1


def walk(report: Report, value: object, path: KeyPath, tp: Any) -> object:
    """Check ``value`` against the schema type ``tp``; return it coerced for ``msgspec.convert``.

    Every mismatch is recorded in ``report`` at its key path and the value becomes ``INVALID``.
    """
    return _Walker(report).check(value, path, tp)


def build_settings(report: Report, shaped: object) -> Settings:
    """Build the frozen settings from what :func:`walk` returned for the whole document.

    Raises:
        ConfigError: msgspec refused what the walk accepted (the walk mirrors msgspec's rules, so this
            is a safety net); the error is translated to a key path, never leaked as is.
    """
    try:
        return msgspec.convert(shaped, Settings, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        message, path = _split_validation_error(str(exc))
        if report.is_secret(path):
            message = "invalid value (not shown: it comes from a secret reference)"
        report.add(path, message[:1].lower() + message[1:].replace("`", ""))
        raise report.error() from exc


class _Walker:
    def __init__(self, report: Report) -> None:
        self.report = report

    def check(self, value: object, path: KeyPath, tp: Any) -> object:
        if value is INVALID:
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
        if tp is Duration or tp is ByteSize:
            parse = parse_duration if tp is Duration else parse_byte_size
            try:
                return parse(value)
            except ValueError as exc:
                # The parser's words: what is expected, and the bound when it is one past it.
                self.report.add(path, f"{exc}; got {self.report.show(path, value)}")
                return INVALID
        meta = self.report.meta.get(path)
        coerced = _coerce_leaf(value, meta.plain if meta is not None else None, tp)
        if coerced is INVALID:
            self._mismatch(value, path, tp)
        elif tp is int and isinstance(coerced, int) and abs(coerced) > MAX_INT:
            # No setting counts that far, and past it a number overflows what it is handed to (granian,
            # argon2, the database: a fuzzing run crashed each with 10**30).
            self.report.add(
                path, f"expected a whole number up to {MAX_INT}; got {self.report.show(path, value)}"
            )
            return INVALID
        elif tp is float and isinstance(coerced, float) and not math.isfinite(coerced):
            self.report.add(path, f"expected a finite number; got {self.report.show(path, value)}")
            return INVALID
        return coerced

    def _mismatch(self, value: object, path: KeyPath, tp: Any) -> Invalid:
        self.report.add(path, f"expected {_expected(tp)}; got {self.report.show(path, value)}")
        return INVALID

    def _check_struct(self, value: object, path: KeyPath, tp: type[msgspec.Struct]) -> object:
        if not isinstance(value, dict):
            return self._mismatch(value, path, tp)
        fields = {field.encode_name: field for field in msgspec.structs.fields(tp)}
        out: dict[str, object] = {}
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                self.report.add(path, _unknown_key(key, list(fields)), line=self.report.line((*path, key)))
            else:
                out[key] = self.check(item, (*path, key), field.type)
        for name, field in fields.items():
            if field.required and name not in value:
                self.report.add(path, f"missing required key {quote(name)} ({_expected(field.type)})")
        return out

    def _check_union(self, value: object, path: KeyPath, tp: Any) -> object:
        arms = get_args(tp)
        if value is None and _NONE_TYPE in arms:
            return None
        others = [arm for arm in arms if arm is not _NONE_TYPE]
        structs = [arm for arm in others if isinstance(arm, type) and issubclass(arm, msgspec.Struct)]
        # A mapping can only mean the struct arm: check inside it, so the error names the inner key.
        if len(others) == 1 or (isinstance(value, dict) and len(structs) == 1):
            return self.check(value, path, structs[0] if isinstance(value, dict) and structs else others[0])
        problems = self.report.problems
        for arm in others:
            # Try each arm; an arm that records a problem did not fit, and its problems are taken back.
            mark = len(problems)
            result = self.check(value, path, arm)
            if len(problems) == mark:
                return result
            del problems[mark:]
        return self._mismatch(value, path, tp)

    def _check_tuple(self, value: object, path: KeyPath, tp: Any) -> object:
        if not isinstance(value, list):
            return self._mismatch(value, path, tp)
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return [self.check(item, (*path, index), args[0]) for index, item in enumerate(value)]
        if len(value) != len(args):
            self.report.add(path, f"expected {_expected(tp)}; got a list of {len(value)}")
            return INVALID
        return [
            self.check(item, (*path, index), arg)
            for index, (item, arg) in enumerate(zip(value, args, strict=True))
        ]


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
    """Return ``value`` as type ``tp`` wants it, or ``INVALID``. Mirrors msgspec's strict rules."""
    literal = get_args(tp) if get_origin(tp) is Literal else None
    wants_text = tp is str or (literal is not None and all(isinstance(arg, str) for arg in literal))
    if wants_text and plain is not None and isinstance(value, (bool, int, float)):
        value = plain  # the scalar as written, not YAML 1.1's reading of it
    if literal is not None:
        return value if any(type(value) is type(arg) and value == arg for arg in literal) else INVALID
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, bool, float, _NONE_TYPE):
        return value if type(value) is tp else INVALID
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else INVALID
    try:
        return msgspec.convert(value, tp, dec_hook=_dec_hook)
    except msgspec.ValidationError:
        return INVALID


def _expected(tp: Any) -> str:
    """Describe a schema type for a human: ``one of none, required, webauthn or a mapping {…}``."""
    named = {
        Duration: DURATION_HELP,
        ByteSize: SIZE_HELP,
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


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key {quote(key)}; did you mean {quote(close[0])}?"
    return f"unknown key {quote(key)}; valid keys here: {', '.join(valid)}"


_AT: Final = re.compile(r"^(?P<message>.*) - at `(?P<where>[^`]*)`(?: in `(?P<inside>[^`]*)`)?$", re.DOTALL)
_SEGMENT: Final = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _split_validation_error(text: str) -> tuple[str, KeyPath]:
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
