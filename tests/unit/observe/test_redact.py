"""Redaction of query strings, paths and audit details: what must never reach a log, in one table."""

from __future__ import annotations

import pytest

from gateway.observe.redact import (
    REDACTED,
    is_secret_name,
    looks_secret,
    redact_details,
    redact_path,
    redact_query,
    redact_words,
)

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLWJ5dGVz"

SECRET_NAMES = [
    "token", "TOKEN", "access_token", "access-token", "accessToken", "AccessToken", "id_token", "idToken",
    "refresh_token", "code", "state", "password", "Password", "passwd", "pwd", "new-password", "secret",
    "client_secret", "clientSecret", "key", "api_key", "api-key", "apiKey", "APIKEY", "x-api-key",
    "signature", "X-Amz-Signature", "sig", "auth", "auth_token", "authToken", "session", "session_id",
    "sessionId", "SESSIONID", "sid", "otp", "otp_code", "totp", "nonce", "SAMLResponse", "RelayState",
    "jwt", "csrf_token", "_csrf_token", "private_key", "code_verifier", "ticket", "pin",
    # An attack run found these logged verbatim (and a name encoded twice).
    "pw", "passcode", "mfa", "recovery", "recovery_code", "authcode", "accesskey", "refresh", "mfaCode",
    # One more: a secret word cut up by the camel split.
    "pAsS", "PaSs",
]  # fmt: skip
PLAIN_NAMES = ["q", "page", "sort", "lang", "redirect_uri", "rd", "user", "email", "id", "monkey", "keyword"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_recognised_in_every_spelling(name: str) -> None:
    assert is_secret_name(name)
    assert redact_query(f"{name}=hunter2&page=1") == f"{name}={REDACTED}&page=1"


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_ordinary_names_with_ordinary_values_stay_readable(name: str) -> None:
    assert not is_secret_name(name)
    assert redact_query(f"{name}=hello-world") == f"{name}=hello-world"


SECRET_VALUES = [
    JWT,
    JWT.replace(".", "%2E"),  # percent-encoded dots are decoded before judging
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "xoxb-123456789012-abcdefghijkl",
    "AKIAIOSFODNN7EXAMPLE",
    "8f14e45fceea167a5a36dedd4bea2543",  # hex digest
    "dGhpcyBpcyBhIHJhbmRvbSBrZXkgMTIzNDU2Nzg5MA==",  # base64 key material
    "Zm9vYmFyYmF6cXV4UVVVWFhZWnp6",  # random base64 without digits
    "%2Fcallback%3Fcode%3Dabc%26x%3D1",  # a nested query carrying a code
    "1//0gabcdefghijklmnopq",  # a Google refresh token
]
PLAIN_VALUES = [
    "the-quick-brown-fox-jumps-over-the-lazy-dog",
    "https://example.com/docs/page",
    "hello",
    "2024-01-01",
    "created_at",
    "/docs/getting-started",
    "en-US",
    "42",
    "alice@example.com",
]


@pytest.mark.parametrize("value", SECRET_VALUES)
def test_secret_looking_values_are_redacted_whatever_the_name(value: str) -> None:
    assert redact_query(f"next={value}&page=2") == f"next={REDACTED}&page=2"


@pytest.mark.parametrize("value", PLAIN_VALUES)
def test_plain_values_stay(value: str) -> None:
    assert redact_query(f"v={value}") == f"v={value}"


def test_a_name_encoded_twice_is_read_as_an_app_decoding_twice_reads_it() -> None:
    """An attack run: ``t%256Fken`` (``token`` to an app that decodes twice) kept its value in the log."""
    for name in ("t%256Fken", "t%25256Fken", "%2561ccess_token"):
        assert redact_query(f"{name}=s3cr3t&page=1") == f"{name}={REDACTED}&page=1"


def test_bare_parameters_and_empty_queries() -> None:
    assert redact_query("") == ""
    assert redact_query(JWT) == REDACTED
    assert redact_query("debug&token") == "debug&token"  # a name alone carries no value
    assert redact_query("token=") == f"token={REDACTED}"


def test_a_token_sent_as_a_parameter_name_is_redacted() -> None:
    """An attack run: ``?<token>=1`` wrote the token to the access log in clear, encoded or not."""
    token = "gwt_VbFjL7ZJ8rfmYDQ9hwx9VXCT0uViDRHeDqi-msmDH38"
    encoded = "".join(f"%{b:02X}" for b in token.encode())
    for query in (f"{token}=1", f"{encoded}=1", f"page=2&{token}=x"):
        assert "VbFjL7ZJ8rfmYDQ9hwx9" not in redact_query(query)
        assert encoded not in redact_query(query)
    assert redact_query("page=2&sort=name") == "page=2&sort=name"


def test_long_queries_are_cut() -> None:
    assert len(redact_query("a=" + "x" * 10_000, limit=100)) == 101


def test_paths_keep_ordinary_segments_and_lose_tokens() -> None:
    assert redact_path("/api/v1/users/alice") == "/api/v1/users/alice"
    assert redact_path(f"/magic/{JWT}/confirm") == f"/magic/{REDACTED}/confirm"


def test_path_parameters_are_judged_by_name_and_value() -> None:
    """An attack run: `/pub/q;token=hunter-semicolon` reached every sink as it was."""
    assert redact_path("/pub/q;token=hunter-semicolon") == f"/pub/q;token={REDACTED}"
    assert redact_path("/a;jsessionid=abc/b;v=2") == f"/a;jsessionid={REDACTED}/b;v=2"
    assert redact_path("/pub/a;b;v=1.2") == "/pub/a;b;v=1.2"


@pytest.mark.parametrize(
    "query",
    [
        # A nested query encoded twice: the value is decoded as often as a name is.
        "next=%252Fcb%253Ftoken%253Dhunter-nested",
        # A password in a URL's userinfo.
        "redirect=https://u:hunter-userinfo@x.test/",
        # JSON in a value, judged by its keys.
        'data={"password":"hunter-json"}',
        "data=%7B%22clientSecret%22%3A%20%22hunter-json%22%7D",
    ],
)
def test_secrets_inside_values_are_found_as_an_attack_run_hid_them(query: str) -> None:
    name = query.partition("=")[0]
    assert redact_query(query) == f"{name}={REDACTED}"


def test_urls_and_json_without_secrets_stay() -> None:
    for query in (
        "redirect=https://u@x.test/a:b@c",
        'data={"name":"x","page":2}',
        "next=%252Fcb%253Fpage%253D2",
    ):
        assert redact_query(query) == query


def test_an_invitation_token_is_redacted_whatever_it_looks_like() -> None:
    # A real token_urlsafe(32) draw that the value test alone reads as a slug (six separators).
    slug_like = "Y9arNpV-gCTnM3_Lr_zF9vP-MDjfIO_-WBypi9rzhGA"
    assert not looks_secret(slug_like)
    assert redact_path(f"/.gateway/invite/{slug_like}") == f"/.gateway/invite/{REDACTED}"
    assert redact_path("/.gateway/invite/") == "/.gateway/invite/"


def test_looks_secret_ignores_words() -> None:
    assert not looks_secret("Internationalization")
    assert not looks_secret("the-quick-brown-fox-jumps-over")
    assert looks_secret(JWT)


def test_details_redact_secret_keys_and_values_recursively() -> None:
    details = {
        "method": "totp",
        "code": "123456",
        "nested": {"password": "pw", "ok": [1, "x", JWT], "Client-Secret": "s"},
        "redirect": "/cb?state=abc&x=1",
        "count": 3,
    }
    assert redact_details(details) == {
        "method": "totp",
        "code": REDACTED,
        "nested": {"password": REDACTED, "ok": [1, "x", REDACTED], "Client-Secret": REDACTED},
        "redirect": f"/cb?state={REDACTED}&x=1",
        "count": 3,
    }


def test_the_gateways_own_tokens_are_redacted_and_their_public_ids_stay_readable() -> None:
    """An attack run: the full `gwt_` token was caught only by the entropy test, and the public id a
    SIEM needs to tell which token was refused was redacted under the detail name "token"."""
    token = "gwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA"
    assert looks_secret(token)
    assert looks_secret("gwt_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")  # low entropy, still a token
    assert redact_details({"token": "gwt_Ab3dE9xQ", "route": "api"}) == {
        "token": "gwt_Ab3dE9xQ",
        "route": "api",
    }
    assert redact_details({"token": token}) == {"token": REDACTED}
    assert redact_details({"token": "gwt_Ab3dE9xQ-and-more"}) == {"token": REDACTED}
    assert redact_words(f"bot/1.0 {token} (ci)") == f"bot/1.0 {REDACTED} (ci)"


def test_a_digest_under_a_name_that_says_so_stays_readable() -> None:
    """A re-attack run: config.reloaded's sha256 reached the sinks as [REDACTED], so a SIEM could not
    tie a reload to the reviewed file. A digest named as one stays; the same value under another name,
    or a non-digest under that name, is judged as before."""
    digest = "9f2c5e0b1a7d4c3e8f6a2b9d0c1e4f7a3b8d5c2e9f0a1b6c7d4e3f2a1b0c9d8e"
    out = redact_details({"sha256": digest, "fields_sha256": digest, "other": digest, "sha256x": digest})
    assert out == {"sha256": digest, "fields_sha256": digest, "other": REDACTED, "sha256x": REDACTED}
    assert redact_details({"sha256": "gwt_" + "A1b2" * 10}) == {"sha256": REDACTED}
