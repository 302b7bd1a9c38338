"""The request path made canonical, once, before routing (invariant 1: authorize what you forward).

Every proxy bypass in this family has the same shape: the gateway checks one spelling of a path while
the upstream serves another (Envoy CVE-2019-9901 ``/info/../private``, Istio/Envoy CVE-2021-29492
``//admin`` and ``%2F``, the Tomcat/Shiro ``/public/..;/admin``, heimdall's ``%2f``, IIS ``%c0%af``).
So the gateway computes a single canonical spelling here, and that string is what routing, the casbin
policy and the upstream all see. Anything that has no single meaning is refused with
:class:`~gateway.errors.BadPath` (HTTP 400) rather than guessed at.

The canonical form is RFC 3986 syntax-based normalisation (section 6.2.2) made strict:

* percent-escapes of unreserved characters are decoded once; all others are kept, hex upper-cased;
* raw characters that are not legal in a path (including non-ASCII UTF-8) are percent-encoded, so the
  result is pure ASCII;
* ``.`` and ``..`` segments are removed, runs of ``/`` are merged;
* ``;`` path parameters are kept and reported through ``has_path_params``.

``canonicalize`` is idempotent: feeding its output back in gives the same result.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gateway.errors import BadPath

__all__ = ["CanonicalPath", "canonicalize", "fold_case", "refuse_unless_canonical"]


@dataclass(frozen=True, slots=True)
class CanonicalPath:
    """A request path in its one canonical spelling.

    Attributes:
        path: The normalised, percent-encoded ASCII path. Routing, policy and the upstream all see it.
        has_path_params: True if any segment carries a ``;`` parameter. The caller rejects the request
            unless the route allows them, because servlet containers strip parameters before routing
            (``/admin;x`` is ``/admin`` to Tomcat) while a policy rule sees a different string.
    """

    path: str
    has_path_params: bool


# The common case: a clean ASCII path made only of unreserved characters, sub-delims other than ';',
# ':' and '@', with no empty, '.' or '..' segment. Such a path is already canonical, so it is returned
# as is without running the full algorithm. Anything else (a '%', a ';', '//', a dot segment, any byte
# outside the class) falls through to the slow path. The character class excludes '/', so the pattern
# is linear: no backtracking blow-up on hostile input.
_FAST_PATH = re.compile(rb"(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9\-._~!$&'()*+,=:@]+)+/?|/")

# '%' not followed by two hex digits. Servers disagree on what a broken escape means (kept literally,
# dropped, or IIS '%u002e' read as '.'), so there is no single meaning to authorize.
_MALFORMED_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")

# Raw bytes that are refused outright; the reason for each is in _RAW_REASONS.
_FORBIDDEN_RAW = re.compile(rb"[\x00-\x20\x7f\\#?]")

# Escapes that are refused outright (the input has no malformed escape by the time this runs, so every
# '%' starts a real escape and this scan cannot be misaligned).
_FORBIDDEN_ESCAPE = re.compile(rb"%(?:2[Ff]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])")

# One token to rewrite: an escape, or a raw byte that is not legal as-is in a canonical path.
# The legal set is RFC 3986 pchar (unreserved, sub-delims, ':' and '@') plus the '/' separator.
_REWRITE = re.compile(rb"%[0-9A-Fa-f]{2}|[^A-Za-z0-9\-._~!$&'()*+,;=:@/]")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# A '.' or '..' name followed by a parameter ';' or by an encoded ';', '?' or '#'. Tomcat, Jetty and
# Spring strip ';' parameters before resolving dot segments, and upstreams that decode first (Shiro
# CVE-2020-13933) or re-parse the decoded path as a URL turn '%3B', '%3F', '%23' into delimiters, so all
# of these become '.' or '..' after this module has checked them.
_DOT_NAME_WITH_DELIMITER = re.compile(r"\.\.?(?:;|%3B|%3F|%23)")

_RAW_REASONS: dict[int, str] = {
    # A backslash is a path separator to Windows/IIS and to some frameworks and a plain character to
    # others, so '/public\..\admin' could be authorized as one path and served as another.
    ord("\\"): "The address contains a backslash (\\), which is not allowed.",
    # A raw '#' starts the fragment, which clients never send; if one arrives the server and the
    # upstream may disagree about where the path ends.
    ord("#"): "The address contains a raw '#' character, which is not allowed.",
    # The server splits the query off at the first '?', so a '?' left in the path means the server and
    # the upstream could disagree about where the path ends (heimdall CVE-2026-32811, oauth2-proxy
    # GHSA-7rh7-c77v-6434 matched rules against path plus query).
    ord("?"): "The address contains an unexpected '?' character.",
    # Raw spaces are illegal in a request line; servers that tolerate them trim or split differently
    # (Spring CVE-2016-5007 trimmed ' admin' to 'admin' after the security check).
    ord(" "): "The address contains a space, which is not allowed.",
}

_CONTROL_REASON = "The address contains a control character, which is not allowed."

_ESCAPE_REASONS: dict[str, str] = {
    # An encoded slash is a separator to upstreams that decode before routing and part of a name to
    # those that do not: '/admin%2Fsecret' can dodge a rule on '/admin/*' and still reach it
    # (Envoy CVE-2021-29492, heimdall CVE-2026-42272, Spring CVE-2016-9879). Matched case-insensitively
    # on purpose: heimdall's bypass was '%2f' slipping past a check for '%2F'.
    "2F": "The address contains an encoded slash (%2F), which is not allowed.",
    # An encoded backslash becomes a separator on Windows upstreams after decoding.
    "5C": "The address contains an encoded backslash (%5C), which is not allowed.",
}


def canonicalize(raw_path: bytes) -> CanonicalPath:
    """Return the one canonical spelling of a request path, or refuse it.

    Args:
        raw_path: The ASGI ``scope["raw_path"]``: the path bytes exactly as on the request line, with the
            query string already split off by the server.

    Returns:
        The canonical path and whether it carries ``;`` path parameters.

    Raises:
        BadPath: The path is malformed or has more than one plausible meaning: it does not start with
            ``/``, has a broken or forbidden escape, a control character, a backslash, invalid or
            overlong UTF-8, a ``.``/``..`` segment with parameters, or climbs above the root.
    """
    if _FAST_PATH.fullmatch(raw_path) is not None:
        return CanonicalPath(raw_path.decode("ascii"), False)
    return _canonicalize_slow(raw_path)


def refuse_unless_canonical(raw_path: bytes) -> None:
    """Refuse a path its router would read as another: for a listener that routes on the path as sent.

    The admin listener's router merges ``//`` and its server decodes ``%2F`` before routing, so
    ``/api/privacy/holds/H1%2F/release`` released the hold ``H1`` (an attack run): a reference that
    cannot exist named one that does. There every path must already be canonical, but for the
    spelling of escapes: what :func:`canonicalize` refuses, and a path it would change by merging
    slashes or removing ``.``/``..`` segments, raises.

    Raises:
        BadPath: As :func:`canonicalize`, or the path has an empty, ``.`` or ``..`` segment.
    """
    if _FAST_PATH.fullmatch(raw_path) is not None:
        return
    canonical = _canonicalize_slow(raw_path).path
    if _REWRITE.sub(_rewrite_token, raw_path).decode("ascii") != canonical:
        raise BadPath(
            "The address has an empty, '.' or '..' segment ('//', '/./', '/../'), which is not allowed."
        )


def _canonicalize_slow(raw_path: bytes) -> CanonicalPath:
    """Run the full normalisation; see :func:`canonicalize`."""
    # Only origin-form is a path. '*' (OPTIONS), absolute-form ('http://host/x') and authority-form
    # ('host:443') name a target the route table never saw, and a relative path has no defined base.
    if not raw_path.startswith(b"/"):
        raise BadPath("The address must be a path starting with '/'.")
    _reject_ambiguous_bytes(raw_path)
    path = _REWRITE.sub(_rewrite_token, raw_path).decode("ascii")
    return _remove_dot_segments(path)


def _reject_ambiguous_bytes(raw_path: bytes) -> None:
    """Raise BadPath for any byte or escape that has no single meaning."""
    if _MALFORMED_ESCAPE.search(raw_path) is not None:
        raise BadPath("The address contains a malformed percent-escape.")
    raw = _FORBIDDEN_RAW.search(raw_path)
    if raw is not None:
        # NUL and other control characters truncate or split the path in C-based upstreams and log
        # pipelines (Envoy CVE-2019-9900 let a NUL end a header early).
        raise BadPath(_RAW_REASONS.get(raw[0][0], _CONTROL_REASON))
    escape = _FORBIDDEN_ESCAPE.search(raw_path)
    if escape is not None:
        # Encoded control characters (%00 above all) do the same damage once an upstream decodes them.
        raise BadPath(_ESCAPE_REASONS.get(escape[0][1:].decode("ascii").upper(), _CONTROL_REASON))
    # Decode every escape exactly once and require strict UTF-8. Python's decoder refuses overlong
    # forms ('%C0%AF' for '/', '%C0%AE' for '.', the IIS 2000 "unicode" traversal), surrogates
    # ('%ED%A0%80') and code points above U+10FFFF: lax decoders upstream turn those into separators
    # or dots that this module never saw.
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath("The address is not valid UTF-8.") from None


def _rewrite_token(match: re.Match[bytes]) -> bytes:
    """Decode an unreserved escape, upper-case any other escape, percent-encode an illegal raw byte."""
    token = match[0]
    if len(token) == 3:
        value = int(token[1:], 16)
        if value in _UNRESERVED:
            # RFC 3986 2.3: '%2e' and '.' are the same URI, so policy must see '.' (and then remove the
            # dot segment) or '/a/%2e%2e/admin' would dodge a rule on '/admin'.
            return bytes((value,))
        return b"%%%02X" % value
    # Raw non-ASCII and characters illegal in a path ('"', '<', '`', '{', '|', '^', ...) are encoded
    # so the canonical path is plain ASCII with one spelling per character. Full-width look-alikes
    # (U+FF0E full stop, U+FF0F solidus, U+2215 division slash) stay escaped data, never '.' or '/'.
    return b"%%%02X" % token[0]


def _remove_dot_segments(path: str) -> CanonicalPath:
    """Merge slashes, resolve ``.``/``..`` segments and detect path parameters.

    ``path`` already starts with ``/`` and has its unreserved escapes decoded, so ``%2e%2e`` is ``..``
    here. Any ``;`` in it is a raw parameter delimiter: an encoded ``%3B`` stays encoded and is data.
    """
    stack: list[str] = []
    trailing_slash = False
    for segment in path.split("/")[1:]:
        if segment in ("", "."):
            # '//' runs are merged (Istio/Envoy CVE-2021-29492: '//admin' dodged a rule on '/admin' and
            # was merged by the upstream) and '.' is a no-op segment.
            trailing_slash = True
        elif segment == "..":
            if not stack:
                # RFC 3986 says to clamp at the root, but no link a browser follows climbs above it: this
                # is a traversal probe, and clamping would hide it from the access log.
                raise BadPath("The address tries to go above the root ('..').")
            stack.pop()
            trailing_slash = True
        else:
            if segment[0] == "." and _DOT_NAME_WITH_DELIMITER.match(segment) is not None:
                # '/public/..;/admin' is '/admin' to the upstream while it looks like a child of
                # '/public' to a prefix rule (the Tomcat/Spring '..;' bypass, Shiro CVE-2020-1957).
                # No real link has a '.' or '..' segment with parameters.
                raise BadPath("The address contains a '.' or '..' segment with parameters.")
            stack.append(segment)
            trailing_slash = False
    if not stack:
        return CanonicalPath("/", False)
    canonical = "/" + "/".join(stack) + ("/" if trailing_slash else "")
    # Computed on what remains, so a parameter inside a removed segment does not count and the result is
    # the same when the canonical path is fed back in.
    return CanonicalPath(canonical, ";" in canonical)


def without_path_params(path: str) -> str:
    """``path`` as Tomcat, Jetty and Spring read it: each segment's ``;`` parameters cut off, and the
    empty segments that leaves merged (``/admin;x/secret`` and ``/admin/;x/secret`` are
    ``/admin/secret``, ``/a/b;.css`` is ``/a/b``, ``/a/;x`` is ``/a/``)."""
    segments = [segment.partition(";")[0] for segment in path.split("/")[1:]]
    names = [segment for segment in segments if segment]
    bare = "/" + "/".join(names)
    return bare + "/" if names and not segments[-1] else bare


# Windows' other spellings of one file: a segment ending in a dot or a space (IIS drops them: /admin.
# and /admin%20 are /admin), an NTFS stream (/secret.txt::$DATA, /admin:$i30:$INDEX_ALLOCATION) and an
# 8.3 short name (/ADMINI~1).
_WINDOWS_SPELLING = re.compile(r"(?:\.|%20)(?:/|$)|:(?::|\$)|~[0-9]")
_ESCAPED_RUN = re.compile(r"(?:%[0-9a-f]{2})+")


def fold_case(canon: CanonicalPath) -> CanonicalPath:
    """The canonical path of a route whose app reads paths without regard to case
    (``routes[].case_insensitive_paths``): lower-cased, so router, policy and app agree that
    ``/ADMIN`` is ``/admin`` (percent-escapes keep their meaning: hex digits are case-insensitive).

    Raises:
        BadPath: a segment ends in a dot or a space, which such servers ignore.
    """
    path = canon.path.lower()
    # Checked as IIS reads it, the escapes of ':' and '$' decoded (canonicalisation keeps them: they
    # are not unreserved; a re-attack run passed /admin%3a$i30%3a$index_allocation that way).
    if _WINDOWS_SPELLING.search(path.replace("%3a", ":").replace("%24", "$")) is not None:
        raise BadPath(
            "The path has a spelling this application reads as another path (a segment ending in a dot or "
            "a space, an NTFS stream name, a short 8.3 name); send the plain path."
        )
    if "%" in path:
        for run in _ESCAPED_RUN.findall(path):
            if _folds_to_ascii(unquote_to_bytes(run).decode("utf-8", "replace")):
                raise BadPath(
                    "The path has a letter this application may read as a plain ASCII one (the Kelvin "
                    "sign as k, a dotted or dotless i as i, a full-width letter); send the plain path."
                )
    return CanonicalPath(path, canon.has_path_params)


def _folds_to_ascii(text: str) -> bool:
    """Whether a non-ASCII character in ``text`` becomes ASCII under a case mapping or compatibility
    normalisation, as Java's equalsIgnoreCase, .NET's invariant culture and IIS may apply them."""
    for char in text:
        if char.isascii():
            continue
        for mapped in (char.lower(), char.upper(), char.casefold(), unicodedata.normalize("NFKC", char)):
            if any(c.isascii() for c in mapped):
                return True
    return False
