"""Keep secrets out of the access log: query strings, paths and audit details pass through here.

Two independent tests, either one redacts:

* **The name looks secret.** ``token``, ``access_token``, ``X-Amz-Signature``, ``apiKey``, ``client-secret``,
  ``SAMLResponse``, ``code``, ``state``, ``otp``… in any case and in snake, kebab, dotted or camel spelling.
  OAuth's ``code`` and ``state`` are included: a code is a bearer credential until redeemed, and the
  state binds it to the browser.
* **The value looks secret**, whatever its name: a JWT/JWS/JWE, a well-known token prefix (``ghp_``,
  ``sk_live_``, ``xoxb-``, ``AKIA…``), or a long random-looking string. A value that carries a nested
  query (``next=/cb?token=…``) is redacted when anything inside it would be.

The same name test also applies *inside* text: wherever a secret-looking name is followed by ``=``, ``=>``
or ``:`` (quoted or not, spaces allowed) the value after it, up to a delimiter, is replaced
(``password=…``, ``{"token": …}``, ``{pw:…}``, ``;password:…``, ``Authorization: Bearer …``), and so is
the password of a URL's userinfo after ``//`` (``//user:…@``, with or without a scheme). Query values,
path segments, audit detail strings and the User-Agent are also read as an app would decode them
(percent-encoding, JSON ``\\uXXXX`` and backslash escapes, repeated): a secret that only the decoded text
shows redacts the whole value, segment or string. The request path and User-Agent are redacted on every
access log line, so this work only starts when the text holds ``=``, ``:``, ``%`` or a backslash.

False positives cost a little detail in a log line; a false negative leaks a credential into a SIEM that
many people read, so the rules lean towards redacting.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote, unquote_plus

__all__ = [
    "REDACTED",
    "is_secret_name",
    "looks_secret",
    "redact_details",
    "redact_path",
    "redact_query",
    "redact_words",
]

REDACTED: Final = "[REDACTED]"

# Whole words of a parameter name (after splitting camelCase and on _ - . [ ] space).
_SECRET_WORDS: Final = frozenset(
    {
        "token", "tokens", "jwt", "bearer", "password", "passwd", "pwd", "pass", "passphrase", "secret",
        "secrets", "key", "apikey", "signature", "sig", "auth", "authorization", "session", "sessionid",
        "sid", "otp", "totp", "hotp", "pin", "code", "state", "nonce", "cookie", "credential",
        "credentials", "csrf", "xsrf", "assertion", "ticket", "saml", "samlresponse", "samlrequest",
        "verifier", "hmac", "privatekey", "salt",
        # An attack run logged these verbatim: short password names, one-time and recovery codes,
        # refresh tokens by their short name.
        "pw", "passcode", "mfa", "recovery", "authcode", "refresh", "accesskey",
    }
)  # fmt: skip
# Substrings of the name with separators removed: catch run-together spellings (accesstoken, apikey).
_SECRET_PARTS: Final = (
    "token", "secret", "passw", "passwd", "apikey", "signature", "credential", "sessionid", "authorization",
    "privatekey", "samlresponse", "samlrequest", "jwt", "cookie", "otpcode", "passcode", "authcode",
    "accesskey", "recoverycode", "mfacode",
)  # fmt: skip
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS: Final = re.compile(r"[^A-Za-z0-9]+")

# JWS (3 parts) and JWE (5 parts): base64url JSON headers always start "eyJ".
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_.-]*")
_KNOWN_PREFIX: Final = re.compile(
    r"(?:gh[pousr]_|github_pat_|glpat-|sk_live_|sk_test_|rk_live_|pk_live_|xox[abposr]-|AKIA|ASIA|AIza"
    r"|ya29\.|1//0|hf_|gwt_)[A-Za-z0-9_\-.]{10,}"
)
# The public id of one of the gateway's own API tokens (``gwt_`` and 8 characters, see
# gateway.machine.tokens): it names the token in lists and the audit trail, and is no credential.
_TOKEN_ID: Final = re.compile(r"gwt_[A-Za-z0-9_-]{8}")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
# Paths of the gateway's own pages whose rest is a credential (gateway/identity/invitations.py).
_CREDENTIAL_PATHS: Final = ("/.gateway/invite/",)
# The password of a URL's userinfo (``https://user:password@host/``, RFC 3986), also scheme-relative
# (``//user:password@host``): group 2. As a browser parses it, the user name ends at the first ``:`` and
# the password at the last ``@`` before the path (``//a@b:pw@x@host``: the password is ``pw@x``).
_USERINFO_PASSWORD: Final = re.compile(r"(//[^/?#\s:]*:)([^/?#\s]+)@")
# ``=``, ``=>`` or ``:`` after a name: ``password=``, ``"token": ``, ``{pw:``, ``Authorization: ``. The
# separators are found first (``str.find``: a User-Agent's ``rv:109.0`` costs one look back), then the
# name is read backwards from each, on the reversed text: the whole word of name characters before it
# (its last 64), past blanks and a closing quote. ``a=1,token=…`` finds both names; ``10:30`` has the
# name ``10``, no secret.
_NAME_BEFORE: Final = re.compile(r"\s*[\"']?([\w.\[\]-]{1,64})")
# The value after a secret name: a quoted string (its inside is replaced, the quotes stay), an object or
# array (replaced to the end: its closing bracket cannot be found by a regex), or a run up to a blank,
# ``&``, ``;``, a quote or a closing bracket. An HTTP auth scheme stays readable
# (``Authorization: Bearer [REDACTED]``). The group that matched is the part replaced; a value already
# ``[REDACTED]`` (and nothing more) is replaced by itself, so redacting twice changes nothing.
_VALUE_HEAD: Final = r"\s*(?:(?i:bearer|basic|digest|negotiate|token)[ \t]+)?"
_QUOTED: Final = r"\"(?P<double>[^\"]*)\"?|'(?P<single>[^']*)'?"
_DONE: Final = re.escape(REDACTED)
_VALUE: Final = re.compile(
    rf"{_VALUE_HEAD}(?:{_QUOTED}|(?P<bare>{_DONE}(?=[\s&;\"'}}\])>]|\Z)|[\[{{].*|[^\s&;\"'}}\])>]+))",
    re.DOTALL,
)
# In a path a value also ends at ``/`` (the next segment).
_PATH_VALUE: Final = re.compile(
    rf"{_VALUE_HEAD}(?:{_QUOTED}|(?P<bare>{_DONE}(?=[\s&;\"'}}\])>/]|\Z)|[\[{{][^/]*|[^\s&;\"'}}\])>/]+))"
)
# A JSON escape: ``\u0077``, ``\"`` (undone once per decoding round).
_ESCAPE: Final = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|(.))", re.DOTALL)
_ESCAPED: Final = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
# Decoding rounds: each percent-encoding and each level of JSON inside a JSON string takes one.
_DECODE_ROUNDS: Final = 6
_TOKENISH: Final = re.compile(r"[A-Za-z0-9+/=_\-.~]{20,}")
_MIN_ENTROPY_BITS: Final = 3.0


def _words(name: str) -> list[str]:
    spaced = _CAMEL.sub("_", name)
    return [word for word in _SEPARATORS.split(spaced.lower()) if word]


def is_secret_name(name: str) -> bool:
    """Whether a parameter or field named ``name`` must never have its value logged.

    Args:
        name: The name as sent, e.g. ``access_token``, ``X-Amz-Signature`` or ``idToken``.

    Returns:
        True when a word of the name, or the name run together, looks like a credential.
    """
    words = _words(name)
    if any(word in _SECRET_WORDS for word in words):
        return True
    compact = "".join(words)
    # Run together, the name may be a secret word that the camel split cut up (``pAsS``: an attack run).
    return compact in _SECRET_WORDS or any(part in compact for part in _SECRET_PARTS)


def _entropy(text: str) -> float:
    counts = Counter(text)
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in counts.values())


def looks_secret(value: str) -> bool:
    """Whether ``value`` (already decoded) looks like a token or key, whatever it is called.

    Args:
        value: A parameter value, path segment or detail string.

    Returns:
        True for JWTs, well-known token formats and long random-looking strings (20+ token characters
        mixing letters and digits with high character entropy). Words, dates and slugs stay visible.
    """
    if _JWT.search(value) or _KNOWN_PREFIX.search(value):
        return True
    for match in _TOKENISH.finditer(value):
        text = match.group()
        letters = sum(c.isalpha() for c in text)
        digits = sum(c.isdigit() for c in text)
        entropy = _entropy(text)
        if letters and digits and digits * 10 >= len(text) and entropy >= _MIN_ENTROPY_BITS:
            return True
        # Base64 of random bytes: many distinct characters, whatever the digit count.
        # Slugs (the-quick-brown-fox) are as varied, but split into words by separators.
        separators = sum(c in "-._~" for c in text)
        if len(text) >= 24 and entropy >= 4.2 and separators * 8 <= len(text):
            return True
        # Random upper+lower mixes without digits (base64 of few bytes) are caught by mixed case.
        if not digits and _mixed_case_random(text, entropy):
            return True
    return False


def _mixed_case_random(text: str, entropy: float) -> bool:
    upper = sum(c.isupper() for c in text)
    lower = sum(c.islower() for c in text)
    # Real words have few capitals; random base64 has about as many upper as lower case letters.
    return upper * 4 >= len(text) and lower * 4 >= len(text) and entropy >= 3.5


def redact_query(query: str, *, limit: int = 4096) -> str:
    """Return the raw query string with secret-looking parameters replaced by ``[REDACTED]``.

    Names stay as written, so an analyst still sees *that* a token was sent, unless a name looks like
    a token itself. A bare parameter without ``=`` is judged by its value. The result is cut at ``limit`` characters.

    Args:
        query: The query string without the ``?``, as received (percent-encoded).
        limit: Longest result kept; a longer one ends with ``…``.

    Returns:
        The redacted query string.
    """
    if not query:
        return ""
    out: list[str] = []
    for pair in query.split("&"):
        raw_name, sep, value = pair.partition("=")
        name = _decoded(raw_name)
        if not sep:
            out.append(REDACTED if _value_is_secret(name) else pair)
        elif looks_secret(name):
            # A token sent as the name (``?<token>=1``: an attack run found it in the log).
            out.append(f"{REDACTED}={REDACTED}")
        elif is_secret_name(name) or _value_is_secret(_decoded(value)):
            out.append(f"{raw_name}={REDACTED}")
        else:
            out.append(pair)
    result = "&".join(out)
    return result if len(result) <= limit else result[:limit] + "…"


def _decoded(name: str, rounds: int = 3) -> str:
    """A parameter name percent-decoded until it stops changing (apps that decode twice read
    ``t%256Fken`` as ``token``: an attack run's spelling kept its value in the log)."""
    for _ in range(rounds):
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return name


def _value_is_secret(value: str) -> bool:
    if looks_secret(value):
        return True
    # A secret name or a URL's password inside the value, as written or as an app decodes it:
    # ``data={"password": …}``, ``{pw:…}``, ``{"pass\u0077ord": …}``, ``next=//user:…@host`` (attack runs).
    if _scrubbed(value, _VALUE, None) != value:
        return True
    # A URL or query inside a value (next=/cb?code=…): redact it whole if anything inside is secret.
    _, mark, nested = value.partition("?")
    inner = nested if mark else value
    if "=" in inner:
        return redact_query(inner) != inner
    return False


def _scrubbed(text: str, value: re.Pattern[str], unit: str | None) -> str:
    """``text`` with the values of secret names and the passwords of URLs replaced where they stand.

    A secret that only shows once ``text`` is decoded as an app may decode it (percent-encoding, JSON
    escapes) cannot be cut out of the raw text: it redacts the whole ``unit`` it is in (each part of
    ``text`` split on ``unit``; all of it when ``unit`` is None).
    """
    text = _in_place(text, value)
    if "%" in text or "\\" in text:
        if unit is None:
            return REDACTED if _hides_secret(text) else text
        text = unit.join(
            REDACTED if ("%" in part or "\\" in part) and _hides_secret(part) else part
            for part in text.split(unit)
        )
    return text


def _in_place(text: str, value: re.Pattern[str]) -> str:
    """``text`` with URL passwords and the values after secret names (``value`` finds their end) replaced."""
    spans: list[tuple[int, int]] = []
    colons: set[int] = set()
    if "@" in text and "//" in text:
        for found in _USERINFO_PASSWORD.finditer(text):
            spans.append(found.span(2))
            colons.add(found.end(1) - 1)  # the user name is no secret name (``//token:…@``: the password is)
    if "=" in text or ":" in text:
        _pair_spans(text, value, spans, colons)
    if not spans:
        return text
    parts: list[str] = []
    copied = 0
    for start, end in sorted(spans):
        if start >= copied:
            parts += (text[copied:start], REDACTED)
        # Overlapping spans (a password that holds ``token=…``) share one marker.
        copied = max(copied, end)
    parts.append(text[copied:])
    return "".join(parts)


def _pair_spans(text: str, value: re.Pattern[str], spans: list[tuple[int, int]], colons: set[int]) -> None:
    """Add to ``spans`` the value after each secret-looking name and ``=``/``=>``/``:`` in ``text``."""
    covered = 0
    backwards = text[::-1]
    size = len(text)
    equals, colon = text.find("="), text.find(":")
    while equals >= 0 or colon >= 0:
        if colon < 0 or 0 <= equals < colon:
            at, equals = equals, text.find("=", equals + 1)
            after = at + 2 if text.startswith(">", at + 1) else at + 1
        else:
            at, colon = colon, text.find(":", colon + 1)
            after = at + 1
        if at < covered or at in colons:
            continue  # inside a value already found, or a URL's user name
        name = _NAME_BEFORE.match(backwards, size - at)
        if name is None or not _is_secret_word(name[1][::-1]):
            continue  # an ordinary name (``rv:``, ``page=``, ``https:``) or none (``10:30``, ``==``)
        found = value.match(text, after)
        if found is None or found.lastgroup is None:
            continue
        start, end = found.span(found.lastgroup)
        if start < end:
            spans.append((start, end))
            covered = end


# Secret as a parameter's name (OAuth's ``code`` and ``state``, ``key``), but inside free text the
# words of search syntax (``is:issue state:open``, ``code:python``, ``key:value``): not scanned there.
_PLAIN_IN_TEXT: Final = frozenset({"state", "code", "key"})


@functools.lru_cache(maxsize=1024)
def _is_secret_word(name: str) -> bool:
    """``is_secret_name`` remembered: the names met in User-Agents and paths (``rv``, ``https``) recur.
    Names here are at most 64 characters (``_NAME_BEFORE``), so the cache stays small."""
    return name.lower() not in _PLAIN_IN_TEXT and is_secret_name(name)


def _hides_secret(text: str) -> bool:
    """Whether ``text``, decoded as an app may decode it, holds a secret that its raw form hides (its
    secrets in plain sight are already ``[REDACTED]``). Text that is still not decoded after
    ``_DECODE_ROUNDS`` rounds is taken to hide one: nothing but an attack encodes so often."""
    decoded = _normalised(text)
    if decoded is None:
        return True
    if decoded == text:
        return False
    return looks_secret(decoded) or _in_place(decoded, _VALUE) != decoded


def _normalised(text: str) -> str | None:
    """``text`` percent-decoded and with JSON escapes undone (``\\u0077`` is ``w``, ``\\"`` is ``"``),
    repeatedly: JSON inside a JSON string (``"{\\"password\\": …}"``) needs a round per level.
    None when it still changes after ``_DECODE_ROUNDS`` rounds."""
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(text) if "%" in text else text
        if "\\" in decoded:
            decoded = _ESCAPE.sub(_unescaped, decoded)
        if decoded == text:
            return text
        text = decoded
    return None


def _unescaped(match: re.Match[str]) -> str:
    code, char = match.groups()
    return chr(int(code, 16)) if code else _ESCAPED.get(char, char)


def redact_path(path: str) -> str:
    """Return ``path`` with segments that look like tokens (a JWT in a magic link) replaced.

    Path segments have no names, so the value test applies to each, and ids such as UUIDs stay
    readable unless they look random enough to be keys. Inside a segment a secret name with ``=`` or
    ``:`` (``;password:…``, ``;a=1,token=…``) and a URL's password (``/fetch/https://user:…@host/``)
    are redacted where they stand; one that only shows percent-decoded (``/x%3Btoken=…``) redacts its
    segment. The gateway's own credential paths (an invitation link's token) are redacted whatever
    their token looks like: the value test is a heuristic, and a random token with many ``-``/``_``
    can read as a slug.
    """
    if path.startswith(_CREDENTIAL_PATHS):
        for prefix in _CREDENTIAL_PATHS:
            if path.startswith(prefix) and len(path) > len(prefix):
                return prefix + REDACTED
    # On every access log line: the plain path (/api/v1/users/42) costs four substring tests.
    if "=" in path or ":" in path or "%" in path or "\\" in path:
        path = _scrubbed(path, _PATH_VALUE, "/")
    if ";" in path:
        path = _redact_path_parameters(path)
    if not looks_secret(path):
        return path
    return "/".join(REDACTED if looks_secret(segment) else segment for segment in path.split("/"))


def _redact_path_parameters(path: str) -> str:
    """Path parameters (``/app;jsessionid=…``, ``/x;token=…``: RFC 3986 §3.3) judged as query
    parameters are, by name and by value: an attack run's ``;token=`` value stayed in the log."""
    segments = []
    for segment in path.split("/"):
        head, *params = segment.split(";")
        if params:
            segment = ";".join([head, *(redact_query(param) for param in params)])
        segments.append(segment)
    return "/".join(segments)


def redact_details(value: object) -> object:
    """Return a JSON-like value with secret-named keys and secret-looking strings redacted (recursively).

    A string is judged as a whole (a token), as a query when it holds ``=`` and ``&``, and by the
    secret names and URL passwords inside it (``"password=…"``, ``"https://user:…@host"``,
    ``'{"token": …}'``), which are replaced where they stand.

    Args:
        value: Decoded JSON: dicts, lists, strings, numbers, booleans, None.

    Returns:
        A copy safe to log.
    """
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED
            if _is_secret_key(str(key)) and not _is_token_id(item)
            else item
            if _is_digest(str(key), item)
            else redact_details(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_details(item) for item in value]
    if isinstance(value, str):
        if looks_secret(value):
            return REDACTED
        if "=" in value and "&" in value:
            value = redact_query(value)
        return _scrubbed(value, _VALUE, None)
    return value


def _is_secret_key(key: str) -> bool:
    """``is_secret_name``, also for a key that is a secret name once decoded (``t%6Fken``)."""
    if is_secret_name(key):
        return True
    if "%" not in key and "\\" not in key:
        return False
    decoded = _normalised(key)
    return decoded is None or is_secret_name(decoded)


def redact_words(text: str) -> str:
    """Return ``text`` (a User-Agent, free text) with each blank-separated word that looks secret
    replaced: an attack run put an API token in its User-Agent and found it in the access log.

    The value after a secret name (``Authorization: Bearer …``, ``token=…``) and a URL's password are
    replaced too; one that only shows decoded (percent-encoding, JSON escapes) redacts all of ``text``.
    """
    # On every access log line (once per distinct User-Agent): a browser's costs four substring tests,
    # Firefox's (``rv:109.0``) one scan for names.
    if "=" in text or ":" in text or "%" in text or "\\" in text:
        text = _scrubbed(text, _VALUE, None)
    if not looks_secret(text):
        return text
    return " ".join(REDACTED if looks_secret(word) else word for word in text.split(" "))


def _is_digest(key: str, value: object) -> bool:
    """Whether ``value`` is a SHA-256 digest under a name that says so (``sha256``, ``fields_sha256``):
    random-looking, but what ties a record to a reviewed file (``config.reloaded``), not a secret; an
    attack run found the sinks' copy redacted, so a SIEM could not match a reload to a review."""
    return (
        (key == "sha256" or key.endswith("_sha256"))
        and isinstance(value, str)
        and _SHA256_HEX.fullmatch(value) is not None
    )


def _is_token_id(value: object) -> bool:
    """Whether ``value`` is a token's public id: under a secret-looking name (``"token"``) it stays
    readable, so a SIEM can tell which token was used or refused."""
    return isinstance(value, str) and _TOKEN_ID.fullmatch(value) is not None
