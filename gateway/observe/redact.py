"""Keep secrets out of the access log: query strings, paths and audit details pass through here.

Two independent tests, either one redacts:

* **The name looks secret.** ``token``, ``access_token``, ``X-Amz-Signature``, ``apiKey``, ``client-secret``,
  ``SAMLResponse``, ``code``, ``state``, ``otp``… in any case and in snake, kebab, dotted or camel spelling.
  OAuth's ``code`` and ``state`` are included: a code is a bearer credential until redeemed, and the
  state binds it to the browser.
* **The value looks secret**, whatever its name: a JWT/JWS/JWE, a well-known token prefix (``ghp_``,
  ``sk_live_``, ``xoxb-``, ``AKIA…``), or a long random-looking string. A value that carries a nested
  query (``next=/cb?token=…``) is redacted when anything inside it would be.

False positives cost a little detail in a log line; a false negative leaks a credential into a SIEM that
many people read, so the rules lean towards redacting.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_plus

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
# A URL with a password in it (``https://user:password@host/``, RFC 3986's userinfo).
_USERINFO_PASSWORD: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]*:[^/?#@\s]*@")
# The keys of a JSON object written into a value.
_JSON_KEY: Final = re.compile(r'"([^"\\]{1,64})"\s*:')
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
    if looks_secret(value) or _USERINFO_PASSWORD.search(value):
        return True
    # JSON inside a value (``data={"password": …}``: an attack run) is judged by its keys.
    if any(is_secret_name(key) for key in _JSON_KEY.findall(value)):
        return True
    # A URL or query inside a value (next=/cb?code=…): redact it whole if anything inside is secret.
    _, mark, nested = value.partition("?")
    inner = nested if mark else value
    if "=" in inner:
        return redact_query(inner) != inner
    return False


def redact_path(path: str) -> str:
    """Return ``path`` with segments that look like tokens (a JWT in a magic link) replaced.

    Only the value test applies: path segments have no names, and ids such as UUIDs stay readable
    unless they look random enough to be keys. The gateway's own credential paths (an invitation
    link's token) are redacted whatever their token looks like: the value test is a heuristic, and a
    random token with many ``-``/``_`` can read as a slug.
    """
    for prefix in _CREDENTIAL_PATHS:
        if path.startswith(prefix) and len(path) > len(prefix):
            return prefix + REDACTED
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

    Args:
        value: Decoded JSON: dicts, lists, strings, numbers, booleans, None.

    Returns:
        A copy safe to log.
    """
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED
            if is_secret_name(str(key)) and not _is_token_id(item)
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
        return redact_query(value) if "=" in value and "&" in value else value
    return value


def redact_words(text: str) -> str:
    """Return ``text`` (a User-Agent, free text) with each blank-separated word that looks secret
    replaced: an attack run put an API token in its User-Agent and found it in the access log."""
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
