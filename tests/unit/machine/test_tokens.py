"""The token format: gwt_ + 32 random bytes, its public id, and its SHA-256."""

from __future__ import annotations

import hashlib

from gateway.machine.tokens import hash_token, is_gateway_token, is_token_id, new_token, prefix_of


def test_a_new_token_has_the_format_its_id_and_its_hash() -> None:
    made = new_token()
    assert made.token.startswith("gwt_")
    assert len(made.token) == 4 + 43  # 32 bytes, unpadded base64url
    assert is_gateway_token(made.token)
    assert made.prefix == made.token[:12]
    assert is_token_id(made.prefix)
    assert made.token_hash == hashlib.sha256(made.token.encode()).hexdigest()
    assert hash_token(made.token) == made.token_hash


def test_tokens_are_unique_and_never_in_their_repr() -> None:
    tokens = {new_token().token for _ in range(200)}
    assert len(tokens) == 200
    made = new_token()
    assert made.token not in repr(made)
    assert made.prefix in repr(made)


def test_shapes_that_are_not_tokens_or_ids() -> None:
    token = new_token().token
    for bad in (
        "",
        "gwt_",
        token[:-1],
        token + "A",
        "GWT_" + token[4:],
        "xyz_" + token[4:],
        token[:-1] + "=",
    ):
        assert not is_gateway_token(bad), bad
    for bad in ("gwt_1234567", "gwt_123456789", "1234567890ab", "gwt_1234567!"):
        assert not is_token_id(bad), bad
    assert prefix_of(token) == token[:12]
