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


# A re-attack run: secrets behind a secret-looking name or in a URL's userinfo, in every place a value
# is logged, written so that the first version of these rules missed them.
FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0"
CHROME_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"


@pytest.mark.parametrize(
    "query",
    [
        # JSON escapes in the key: the app decodes "pass\u0077ord" to "password".
        'data={"pass\\u0077ord":"hunter2"}',
        "data=%7B%22pass%5Cu0077ord%22%3A%22hunter2%22%7D",
        'data={"p\\u0061ss":"hunter2"}',
        # JSON inside a JSON string, once and twice.
        'data={"x":"{\\"password\\":\\"hunter2\\"}"}',
        'data={"x":"{\\"y\\":\\"{\\\\\\"token\\\\\\":\\\\\\"hunter2\\\\\\"}\\"}"}',
        # JavaScript-style objects, Ruby-style hashes.
        "data={'password':'hunter2'}",
        "data={password:hunter2}",
        "data={password: hunter2, user: bob}",
        'data={"password"=>"hunter2"}',
        # A URL's password without a scheme, and with several @.
        "next=//admin:hunter2@db.internal/",
        "next=%2F%2Fadmin%3Ahunter2%40db.internal%2F",
        "next=https://a@b:hunter2@db.internal/",
    ],
)
def test_secret_names_and_passwords_inside_a_query_value_redact_it(query: str) -> None:
    name = query.partition("=")[0]
    assert redact_query(query) == f"{name}={REDACTED}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/fetch/https://admin:hunter2@db.internal/", f"/fetch/https://admin:{REDACTED}@db.internal/"),
        ("/fetch//admin:hunter2@db.internal/x", f"/fetch//admin:{REDACTED}@db.internal/x"),
        ("/x;a=1,token=hunter2", f"/x;a=1,token={REDACTED}"),
        ("/x;password:hunter2", f"/x;password:{REDACTED}"),
        ("/x;password:hunter2/next", f"/x;password:{REDACTED}/next"),
        ("/x,api_key=hunter2/y", f"/x,api_key={REDACTED}/y"),
        # Encoded: the app reads /x;token=… and {"password": …}.
        ("/x%3Btoken=hunter2", f"/x%3Btoken={REDACTED}"),
        ("/a/x%3Bt%6Fken%3Dhunter2/b", f"/a/{REDACTED}/b"),
        ("/api/%7B%22pass%5Cu0077ord%22%3A%22hunter2%22%7D/ok", f"/api/{REDACTED}/ok"),
        ("/fetch/https:%2F%2Fadmin:hunter2%40db.internal/", f"/fetch/{REDACTED}/"),
    ],
)
def test_secret_names_and_passwords_inside_a_path_are_redacted(path: str, expected: str) -> None:
    assert redact_path(path) == expected


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("password=hunter2", f"password={REDACTED}"),
        ("login failed: password: hunter2", f"login failed: password: {REDACTED}"),
        ("https://admin:hunter2@db.internal/", f"https://admin:{REDACTED}@db.internal/"),
        ("//admin:hunter2@db.internal", f"//admin:{REDACTED}@db.internal"),
        ('{"password":"hunter2","user":"bob"}', f'{{"password":"{REDACTED}","user":"bob"}}'),
        ("{'token': 'hunter2'}", f"{{'token': '{REDACTED}'}}"),
        ('{"secret": {"value": "hunter2"}}', f'{{"secret": {REDACTED}'),
        ('{"pass\\u0077ord":"hunter2"}', REDACTED),
        ('{"x":"{\\"password\\":\\"hunter2\\"}"}', REDACTED),
        ("password%3Dhunter2", REDACTED),
    ],
)
def test_secret_names_and_passwords_inside_detail_strings_are_redacted(detail: str, expected: str) -> None:
    assert redact_details({"detail": detail, "n": [detail]}) == {"detail": expected, "n": [expected]}


def test_a_detail_key_that_decodes_to_a_secret_name_is_redacted() -> None:
    assert redact_details({"t%6Fken": "hunter2", "pass%2577ord": "hunter2"}) == {
        "t%6Fken": REDACTED,
        "pass%2577ord": REDACTED,
    }


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("curl/8 Authorization: Bearer hunter2", f"curl/8 Authorization: Bearer {REDACTED}"),
        ("curl/8 (X-Api-Key: hunter2)", f"curl/8 (X-Api-Key: {REDACTED})"),
        ("bot/1 token=hunter2 lang=en", f"bot/1 token={REDACTED} lang=en"),
        (
            "git/2 https://x-access-token:hunter2@github.com/o/r",
            f"git/2 https://x-access-token:{REDACTED}@github.com/o/r",
        ),
        ('bot/1 {"pass\\u0077ord": "hunter2"}', REDACTED),
        ("bot/1 password%3Dhunter2", REDACTED),
    ],
)
def test_secret_names_and_passwords_inside_the_user_agent_are_redacted(
    user_agent: str, expected: str
) -> None:
    assert redact_words(user_agent) == expected


@pytest.mark.parametrize(
    "text",
    [
        # An attacker's own "[REDACTED]" in front of a secret shields nothing.
        "password=[REDACTED]hunter2",
        "password=[REDACTED]@hunter2",
        "//u:[REDACTED]@evil:hunter2@host/",
        # A name encoded more often than any app decodes (``token`` after nine rounds).
        "t%" + "25" * 8 + "6Fken=hunter2",
    ],
)
def test_redaction_cannot_be_dodged_with_its_own_marker_or_endless_encoding(text: str) -> None:
    for redacted in (redact_words(text), redact_details(text), redact_path("/" + text)):
        assert isinstance(redacted, str)
        assert "hunter2" not in redacted


@pytest.mark.parametrize(
    "text",
    [
        "curl/8 Authorization: Bearer hunter2",
        'x {"password":"hunter2","a":"b"} //u:hunter2@h/x token=hunter2&y=1 %7B%22token%22%3A1%7D',
        "/x;a=1,token=hunter2/https://admin:hunter2@db/",
    ],
)
def test_redacting_twice_changes_nothing(text: str) -> None:
    assert redact_words(redact_words(text)) == redact_words(text)
    assert redact_details(redact_details(text)) == redact_details(text)
    assert redact_path(redact_path(text)) == redact_path(text)


@pytest.mark.parametrize(
    "text",
    [
        FIREFOX_UA,
        CHROME_UA,
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "https://x.test/a:b@c",
        "https://u@x.test/a:b@c",
        "mailto:alice@example.com",
        "zipcode=123",
        "meeting at 10:30, 2024-01-01T10:30:00Z",
        "name=alice&page=2",
        '{"name":"x","page":2}',
        "signature algorithm 'none' is not allowed",
        "100% done",
    ],
)
def test_plain_text_with_colons_and_equals_stays_readable(text: str) -> None:
    assert redact_words(text) == text
    assert redact_details({"detail": text}) == {"detail": text}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/users/42",
        "/wiki/Special:Search",
        "/v1/projects/p:getIamPolicy",
        "/t/10:30",
        "/files/My%20Report%202024.pdf",
        "/fetch/https://x.test/a:b@c",
        "/a;v=1.2/b;lang=en",
    ],
)
def test_plain_paths_with_colons_and_equals_stay_readable(path: str) -> None:
    assert redact_path(path) == path


@pytest.mark.parametrize(
    "query",
    ["page=2&sort=name", "redirect_uri=https://app.test/cb", "t=10:30", "zipcode=123", "u=mailto:a@b.test"],
)
def test_plain_queries_with_colons_stay_readable(query: str) -> None:
    assert redact_query(query) == query


def test_a_password_holding_a_secret_name_is_redacted_once() -> None:
    assert redact_words("x //u:token=hunter2@db/p y") == f"x //u:{REDACTED} y"
    assert redact_details("x //token:hunter2@db/p token=hunter2 end") == (
        f"x //token:{REDACTED}@db/p token={REDACTED} end"
    )


@pytest.mark.parametrize("query", ["q=is:issue%20state:open", "q=code:python", "q=key:value%20lang:en"])
def test_search_syntax_inside_a_value_stays_readable(query: str) -> None:
    """`state`, `code` and `key` are secret as a parameter's name, not as words of a search query."""
    assert redact_query(query) == query
