"""What a POST asks the application to run it as: the ``_method`` parameter of method overriding.

Laravel, Symfony (``http_method_override``) and Rails (Rack::MethodOverride) run a POST as the method
its ``_method`` parameter names, read from the query string (Laravel, Symfony), from a form body,
url-encoded or multipart (all three), and from a JSON body (Laravel, whose request reads JSON input as
its form parameters). The authorize stage holds each such method to the policy as well as POST; this
module finds them. The query string is read before the request goes on; a body is read as it streams
to the application (:class:`BodyScan`), and the proxy holds its last chunk back until the scan is
decided, so an application never has a whole body the policy has not seen.

Keys are compared the way the most lenient of those readers compares them, and wider: percent-decoded,
in any case, cut at a NUL byte and with leading spaces dropped, and with ``.``, `` `` and ``[`` read as
``_`` (PHP names variables so: ``.method`` and `` _method`` are ``$_POST["_method"]``). A body this
module cannot read (a malformed multipart body, more than :data:`FIELD_LIMIT` fields, a JSON body over
:data:`JSON_LIMIT` that may name the key, a compressed body) asks for :data:`UNREADABLE`, which only a
policy that allows every method lets through.
"""

from __future__ import annotations

import re
from typing import Final, Protocol
from urllib.parse import unquote_to_bytes

import msgspec

from gateway.pipeline.headers import normalize_name

__all__ = ["FIELD_LIMIT", "JSON_LIMIT", "UNREADABLE", "BodyScan", "body_scan", "method_overrides"]

# Not a method any policy names: a rule for every method (``*``) allows it, a list of methods does not.
UNREADABLE: Final = "(UNREADABLE)"
# A JSON body up to this size is decoded whole at its end (msgspec, in C); a longer one is only searched
# for the key's spellings (a regular expression, in C) and asks for UNREADABLE where one appears.
JSON_LIMIT: Final = 1024 * 1024
# A method name is short: a longer value is kept cut (no policy names it) rather than read on.
_VALUE_LIMIT: Final = 256
# A form field's name longer than this is nobody's: the pair is decided from what arrived.
_PAIR_LIMIT: Final = 64 * 1024
# Fields (url-encoded pairs read one by one, multipart parts) a body may have before it counts as
# unreadable: what the body costs the event loop stays bounded (a 15 MB form of a million pairs took
# 2 s). PHP reads 1,000 by default (max_input_vars), Rack 4,096 parts.
FIELD_LIMIT: Final = 10_000
_HEADERS_LIMIT: Final = 16 * 1024
_PHP_KEY: Final = bytes.maketrans(b". [", b"___")
_FORM_SEPARATOR: Final = re.compile(rb"[&;]")
# "_method" with any letter written as a JSON \u escape.
_JSON_KEY: Final = re.compile(
    rb"(?:_|\\u005[fF])(?:m|\\u006[dD])(?:e|\\u0065)(?:t|\\u0074)(?:h|\\u0068)(?:o|\\u006[fF])(?:d|\\u0064)"
)
_JSON_KEY_LONGEST: Final = 7 * 6
_BOUNDARY: Final = re.compile(rb'boundary=(?:"([^"]*)"(?=$|[;,])|([^;,"]*))')
_BOUNDARY_ANY_CASE: Final = re.compile(rb"(?i)boundary\s*=")
# RFC 2046's boundary characters, without the space it allows (PHP and Rack read spaces differently).
_TOKEN: Final = re.compile(rb"[0-9A-Za-z'()+_,\-./:=?]+")
# A part's names: every name= and name*= parameter, in double or single quotes or bare, wherever a
# header line has one (PHP takes "Content-Disposition:name=x"), and Rack's Content-ID.
_PART_NAME: Final = re.compile(
    rb"""(?im)(?:^|[;\s:])name\*?\s*=\s*(?:"((?:[^"\\\r\n]|\\.)*)"|'([^'\r\n]*)'|([^;\s]*))"""
)
_CONTENT_ID: Final = re.compile(rb"(?im)^content-id:[ \t]*([^\r\n]*)")
_HEADERS_END: Final = re.compile(rb"\n\r?\n")


def is_override_key(key: bytes) -> bool:
    """Whether a parameter's name (as sent, percent-encoded or not) is ``_method`` to some reader."""
    if b"%" in key or b"+" in key:
        key = unquote_to_bytes(key.replace(b"+", b" "))
    # PHP: the name is a C string (cut at NUL), leading spaces are dropped, and ".", " " and an
    # unclosed "[" become "_" (a re-attack run got DELETE through Laravel's reading of ".method").
    # A leading space read as "_" too: wider than PHP, never narrower. Rack drops leading "[" and
    # "]" and trailing "]" ("[_method]", a re-attack run with Rack::MethodOverride).
    key = key.partition(b"\0")[0].lower()
    return (
        b"_method"
        in (
            key.translate(_PHP_KEY),
            key.lstrip(b" ").translate(_PHP_KEY),
            key.lstrip(b"[]").rstrip(b"]"),
        )
        or key.strip() in _HEADER_NAMED_KEYS
    )


# ASP.NET MVC's GetHttpMethodOverride reads the override header's name as a form field and a query
# parameter of a POST too (a re-attack run's reading).
_HEADER_NAMED_KEYS: Final = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})


def override_value(value: bytes) -> str:
    """The method a percent-encoded ``_method`` value names, as the frameworks read it (upper case)."""
    text = unquote_to_bytes(value[: _VALUE_LIMIT * 3].replace(b"+", b" ")).decode("latin-1")
    return text[:_VALUE_LIMIT].strip().upper()


def method_overrides(query: bytes) -> frozenset[str]:
    """The methods a POST's ``_method`` query parameters ask the app to run it as, POST itself left out."""
    asked = {override_value(value) for key, _, value in _pairs(query.split(b"&")) if is_override_key(key)}
    asked.discard("POST")
    return frozenset(asked)


def _pairs(parts: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
    return [part.partition(b"=") for part in parts]


class BodyScan(Protocol):
    """Reads a request body as it streams past, for the methods it asks the application to run it as."""

    def feed(self, data: bytes) -> None:
        """The next piece of the body."""
        ...

    def finish(self) -> frozenset[str]:
        """The body has ended: the methods it named (POST left out)."""
        ...


def body_scan(headers: list[tuple[bytes, bytes]]) -> BodyScan | None:
    """A scan for a POST body with these (lower-case) headers, or None if no reader takes its type as
    parameters.

    Which readers: wider than any framework's test, since each reads the header its own way (a
    re-attack run with real PHP and Rack): a form wherever ``x-www-form-urlencoded`` appears or there
    is no type (Rack reads a POST without one as a form), multipart wherever ``multipart/`` appears,
    JSON wherever ``json`` does (Laravel looks for ``/json`` anywhere in the header), in every
    ``Content-Type`` header, also one spelled ``Content_Type`` (PHP's built-in server reads it as the
    type).
    """
    types = [value for name, value in headers if normalize_name(name) == b"content-type"]
    scans: list[BodyScan] = []
    if not any(value.strip() for value in types):
        scans.append(_FormScan())
    for value in types:
        lowered = value.lower()
        if b"x-www-form-urlencoded" in lowered:
            scans.append(_FormScan())
        if b"multipart/" in lowered:
            scans.append(_MultipartScan(value))  # the boundary as sent: it is case-sensitive
        if b"json" in lowered:
            scans.append(_JsonScan())
    if not scans:
        return None
    codings = [value for name, value in headers if normalize_name(name) == b"content-encoding"]
    if any(value.strip().lower() not in (b"", b"identity") for value in codings):
        # A compressed form is no form to PHP or Rack, but a server in front of the app may inflate
        # it (Apache's DEFLATE input filter): what it holds cannot be read here.
        return _Unreadable()
    return _Both(scans) if len(scans) > 1 else scans[0]


class _Unreadable:
    """A body whose parameters cannot be read here: it names an unknown method."""

    def feed(self, data: bytes) -> None:
        pass

    def finish(self) -> frozenset[str]:
        return frozenset({UNREADABLE})


class _Both:
    """Several ``Content-Type`` headers: each reader may believe another one."""

    def __init__(self, scans: list[BodyScan]) -> None:
        self._scans = scans

    def feed(self, data: bytes) -> None:
        for scan in self._scans:
            scan.feed(data)

    def finish(self) -> frozenset[str]:
        return frozenset().union(*(scan.finish() for scan in self._scans))


class _FormScan:
    """``application/x-www-form-urlencoded``: ``&``- (and, for old Rack, ``;``-) separated pairs.

    A piece with neither ``%`` nor the letters of "method" in any case cannot hold the key (PHP's
    folding makes no letters), so it is passed over in C; the pairs of the others are read one by one,
    up to :data:`FIELD_LIMIT`.
    """

    def __init__(self) -> None:
        self._carry = b""  # the pair the last piece ended inside
        self._skipping = False  # inside a long pair already decided
        self._fields = 0
        self._asked: set[str] = set()

    def feed(self, data: bytes) -> None:
        if self._fields > FIELD_LIMIT:
            return
        if self._skipping:
            cut = _FORM_SEPARATOR.search(data)
            if cut is None:
                return
            data, self._skipping = data[cut.end() :], False
        data = self._carry + data
        if b"%" not in data and b"method" not in data.lower():
            self._carry = data[max(data.rfind(b"&"), data.rfind(b";")) + 1 :]
        else:
            parts = _FORM_SEPARATOR.split(data)
            self._carry = parts.pop()
            if not self._count(len(parts)):
                return
            self._note(parts)
        if len(self._carry) > _PAIR_LIMIT:
            # A long value (its key decides now) or a name that long, which no form has: refused
            # unless the policy allows every method.
            key, equals, value = self._carry.partition(b"=")
            if not equals:
                self._asked.add(UNREADABLE)
            elif is_override_key(key):
                self._asked.add(override_value(value))
            self._carry, self._skipping = b"", True

    def _count(self, fields: int) -> bool:
        """Count fields read one by one; False (and UNREADABLE) past the limit."""
        self._fields += fields
        if self._fields > FIELD_LIMIT:
            self._asked.add(UNREADABLE)
            self._carry = b""
            return False
        return True

    def _note(self, parts: list[bytes]) -> None:
        for key, _, value in _pairs(parts):
            if is_override_key(key):
                self._asked.add(override_value(value))

    def finish(self) -> frozenset[str]:
        if self._carry:
            self._note([self._carry])
        self._asked.discard("POST")
        return frozenset(self._asked)


class _JsonScan:
    """A JSON body: its top-level ``_method`` member when it is a string (Laravel's reading)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._named = False  # over JSON_LIMIT: whether the key's spelling appeared
        self._tail = b""

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._size <= JSON_LIMIT:
            self._parts.append(data)
            return
        if self._parts:
            data, self._parts = b"".join(self._parts) + data, []
        if not self._named:
            window = self._tail + data
            self._named = _may_name_key(window)
            self._tail = window[-_JSON_KEY_LONGEST:]

    def finish(self) -> frozenset[str]:
        if self._size > JSON_LIMIT:
            return frozenset({UNREADABLE}) if self._named else frozenset()
        body = b"".join(self._parts)
        try:
            document = msgspec.json.decode(body)
        except msgspec.DecodeError:
            # Not JSON to msgspec; PHP's reader might differ on the edge, so only a body that cannot
            # name the key passes.
            return frozenset({UNREADABLE}) if _may_name_key(body) else frozenset()
        value = document.get("_method") if isinstance(document, dict) else None
        if not isinstance(value, str):
            return frozenset()  # Symfony ignores a value that is not a string
        method = value[:_VALUE_LIMIT].strip().upper()
        return frozenset() if method == "POST" else frozenset({method})


def _may_name_key(data: bytes) -> bool:
    """Whether ``data`` holds "_method" with any character as a JSON escape. Those escapes all start
    ``\\u005``, ``\\u006`` or ``\\u007``, which no encoder writes for plain ASCII: without one, only
    the literal spelling can name the key. ``bytes`` search runs in C at memory speed, where the
    expression reads 80 MB/s; it runs only where an escape appears."""
    if b"\\u005" not in data and b"\\u006" not in data and b"\\u007" not in data:
        return b"_method" in data
    return _JSON_KEY.search(data) is not None


class _MultipartScan:
    """``multipart/form-data``: the value of every part whose name is ``_method`` to some reader.

    PHP and Rack find parts differently (a re-attack run with both: PHP skips a line that is not
    exactly a delimiter, so a closing delimiter early in the body ends nothing; Rack strips a line's
    spaces, and ends a part at a delimiter in the middle of a line). So every occurrence of
    ``--<boundary>``, anywhere, starts a part here, and the scan reads to the body's end: what follows
    each occurrence's line, up to a blank line, is a part's head, and a head that names the part
    ``_method`` gives its content up to the next occurrence as the value. A part's content is skipped
    with ``bytes.find`` (C), so a large upload costs little. A boundary that PHP and Rack could read
    differently (given twice, with spaces, quoted oddly) makes the body unreadable.
    """

    def __init__(self, content_type: bytes) -> None:
        self._asked: set[str] = set()
        self._buffer = b""
        self._pos = 0  # where the parser is in the buffer (moved, not sliced: one copy per piece)
        self._state = "seek"  # seek an occurrence | line: the rest of its line | headers | value
        self._value = b""  # a part being read, from the start of its heads
        self._starts: list[int] = []  # where in it each value that names a method starts
        self._parts = 0
        self._ended = False  # the body has ended: a head still open is as long as it will get
        boundary = _boundary(content_type)
        if boundary is None:
            self._unreadable()
        self._delimiter = b"--" + (boundary or b"")

    def _unreadable(self) -> bool:
        self._asked.add(UNREADABLE)
        self._state = "done"
        return False

    def feed(self, data: bytes) -> None:
        if self._state == "done":
            return
        self._buffer = self._buffer[self._pos :] + data
        self._pos = 0
        while self._step():
            pass

    def _step(self) -> bool:
        """One move of the parser; False when it needs more of the body."""
        if self._state in ("seek", "value"):
            return self._to_occurrence()
        if self._state == "line":
            return self._to_line_end()
        return self._read_heads()

    def _to_occurrence(self) -> bool:
        """To the next ``--<boundary>``, reading the value on the way in state "value"."""
        buffer, pos, reading = self._buffer, self._pos, self._state == "value"
        at = buffer.find(self._delimiter, pos)
        if at < 0:
            rest = max(pos, len(buffer) - len(self._delimiter) + 1)
            if reading:
                # Each value is read to _VALUE_LIMIT: longer is no method, and is kept cut.
                kept = max(self._starts) + _VALUE_LIMIT * 4
                self._value = (self._value + buffer[pos:rest])[:kept]
            self._pos = rest
            return False
        if reading:
            value = self._value + buffer[pos:at]
            for start in self._starts:
                self._note_value(value[start:])
        self._pos, self._state = at + len(self._delimiter), "line"
        return True

    def _to_line_end(self) -> bool:
        """Past the rest of an occurrence's line: a part's heads start after it."""
        buffer, pos = self._buffer, self._pos
        end = buffer.find(b"\n", pos)
        if end < 0:
            return len(buffer) - pos > _HEADERS_LIMIT and self._unreadable()
        self._parts += 1
        if self._parts > FIELD_LIMIT:
            return self._unreadable()
        self._pos, self._state = end + 1, "headers"
        return True

    def _read_heads(self) -> bool:
        """PHP ends a part's headers at the first blank line (CRLF or a bare LF), Rack only at CRLF
        CRLF: a part may have two heads, and each that names it _method gives a value from its end."""
        buffer, pos = self._buffer, self._pos
        ends = self._head_ends(buffer, pos)
        if ends is None:
            return False
        if not ends:
            # No head ends within _HEADERS_LIMIT, or the body ended inside one (the closing
            # delimiter's line, an epilogue): unreadable if it may name the part _method.
            if not self._ended or _names_override(buffer[pos:]):
                return self._unreadable()
            self._state = "done"
            return False
        starts = [end - pos for head, end in ends if _names_override(buffer[pos:head])]
        if starts:
            self._value, self._starts, self._state = b"", starts, "value"
        else:
            self._state = "seek"  # not a part to read: the next occurrence may even be in this head
        return True

    def _head_ends(self, buffer: bytes, pos: int) -> list[tuple[int, int]] | None:
        """Where the heads that start at ``pos`` end, as (end of the head, start of the content), PHP's
        and Rack's; None while the body has not said yet (a head is at most _HEADERS_LIMIT long)."""
        if buffer.startswith(b"\n", pos) or buffer.startswith(b"\r\n", pos):
            php: tuple[int, int] | None = (pos, buffer.index(b"\n", pos) + 1)
        else:
            found = _HEADERS_END.search(buffer, pos, pos + _HEADERS_LIMIT)
            php = None if found is None else (found.start(), found.end())
        at = buffer.find(b"\r\n\r\n", pos, pos + _HEADERS_LIMIT)
        rack = None if at < 0 else (at, at + 4)
        complete = self._ended or len(buffer) - pos > _HEADERS_LIMIT
        if (php is None or rack is None) and not complete:
            return None
        return [end for end in (php, rack) if end is not None]

    def _note_value(self, value: bytes) -> None:
        # The content ends before the delimiter's line break: "\r\n" or a bare "\n".
        method = value.removesuffix(b"\n").removesuffix(b"\r")[:_VALUE_LIMIT].decode("latin-1")
        self._asked.add(method.strip().upper())

    def finish(self) -> frozenset[str]:
        self._ended = True
        if self._state != "done":
            while self._step():
                pass
        rest = self._buffer[self._pos :]
        if self._state == "value":
            for start in self._starts:
                self._note_value((self._value + rest)[start:])  # no closing delimiter: what came
        elif self._state == "line" and _names_override(rest):
            self._asked.add(UNREADABLE)  # a delimiter's line that never ended
        self._asked.discard("POST")
        return frozenset(self._asked)


def _boundary(content_type: bytes) -> bytes | None:
    """The boundary, if PHP and Rack can only read the same one: PHP takes the first case-sensitive
    ``boundary`` in the header, Rack the last ``boundary=`` in any case, so there must be one
    ``boundary=`` in any case, where the first ``boundary`` is; and a plain token, quoted or not (PHP
    and Rack both read spaces into it)."""
    given = [found.start() for found in _BOUNDARY_ANY_CASE.finditer(content_type)]
    if len(given) != 1 or given[0] != content_type.find(b"boundary"):
        return None
    found = _BOUNDARY.match(content_type, given[0])
    if found is None:
        return None
    boundary = found.group(1) if found.group(1) is not None else found.group(2)
    if not boundary or len(boundary) > 200 or not _TOKEN.fullmatch(boundary):
        return None
    return boundary


def _names_override(head: bytes) -> bool:
    """Whether a part's headers name it ``_method``, as written or with its lines joined: PHP joins a
    line without a colon (or starting with white space) to the one before it with nothing between,
    so ``name="_met`` and ``hod"`` on two lines are ``_method`` (a test against real PHP found it).
    PHP's folding makes no letters: without the letters of "method" or a ``%``, nothing can."""
    joined = head.replace(b"\r", b"").replace(b"\n", b"")
    if b"%" not in joined and b"method" not in joined.lower():
        return False
    return any(map(is_override_key, _names(head))) or any(map(is_override_key, _names(joined)))


def _names(head: bytes) -> list[bytes]:
    """Every name a part's headers may give it: quoted (with and without its backslash escapes) or
    bare, and an RFC 2231 ``name*=charset''value`` with its charset dropped."""
    names: list[bytes] = [value.strip().strip(b"<>") for value in _CONTENT_ID.findall(head)]
    for quoted, single, bare in _PART_NAME.findall(head):
        name = quoted or single or bare
        names.append(name)
        names.append(re.sub(rb"\\(.)", rb"\1", name))
        if b"''" in name:
            names.append(name.partition(b"''")[2])
    return names
