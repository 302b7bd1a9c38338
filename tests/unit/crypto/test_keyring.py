"""The AES-256-GCM keyring: round trips, tampering, context binding, rotation and the file's guard rails."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.crypto.keyring import KEY_BYTES, NONCE_BYTES, Keyring, KeyringError
from gateway.errors import GatewayError

AAD = b"totp:42"
# One fixed in-memory keyring for the property tests (hypothesis and function-scoped fixtures don't mix).
FIXED = Keyring({"kfixed01": bytes(range(KEY_BYTES))}, "kfixed01")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


@pytest.fixture
def keyring(path: Path) -> Keyring:
    return Keyring.create(path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(path: Path, doc: object, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    os.chmod(path, mode)


def _doc(**keys: bytes) -> dict[str, object]:
    return {
        "active": next(iter(keys)),
        "keys": {kid: base64.b64encode(key).decode() for kid, key in keys.items()},
        "algorithm": "AES-256-GCM",
    }


def _flip(token: str, index: int) -> str:
    """Flip one bit of the decoded body at ``index`` and re-encode the token."""
    version, kid, body = token.split(".")
    blob = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    blob[index] ^= 0x01
    return f"{version}.{kid}.{base64.urlsafe_b64encode(bytes(blob)).rstrip(b'=').decode()}"


# -- round trips --------------------------------------------------------------------------------------


def test_round_trip_and_token_shape(keyring: Keyring) -> None:
    token = keyring.encrypt(b"JBSWY3DPEHPK3PXP", aad=AAD)
    version, kid, body = token.split(".")
    assert (version, kid) == ("v1", keyring.active_id)
    assert "=" not in body
    assert "+" not in body
    assert "/" not in body
    assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == NONCE_BYTES + 16 + 16
    assert keyring.decrypt(token, aad=AAD) == b"JBSWY3DPEHPK3PXP"


def test_every_encryption_uses_a_fresh_nonce(keyring: Keyring) -> None:
    tokens = {keyring.encrypt(b"same secret", aad=AAD) for _ in range(200)}
    nonces = {t.split(".")[2][:16] for t in tokens}
    assert len(tokens) == len(nonces) == 200


@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=256))
def test_round_trip_property(plaintext: bytes, aad: bytes) -> None:
    assert FIXED.decrypt(FIXED.encrypt(plaintext, aad=aad), aad=aad) == plaintext


@given(plaintext=st.binary(min_size=1, max_size=256), data=st.data())
def test_any_single_bit_flip_is_refused(plaintext: bytes, data: st.DataObject) -> None:
    token = FIXED.encrypt(plaintext, aad=AAD)
    index = data.draw(st.integers(min_value=0, max_value=NONCE_BYTES + len(plaintext) + 16 - 1))
    with pytest.raises(KeyringError):
        FIXED.decrypt(_flip(token, index), aad=AAD)


# -- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_tampering_is_refused(keyring: Keyring, where: str) -> None:
    token = keyring.encrypt(b"seed", aad=AAD)
    index = {"nonce": 0, "ciphertext": NONCE_BYTES, "tag": -1}[where]
    with pytest.raises(KeyringError, match="does not authenticate"):
        keyring.decrypt(_flip(token, index), aad=AAD)


def test_wrong_aad_is_refused(keyring: Keyring) -> None:
    token = keyring.encrypt(b"seed of user 42", aad=b"totp:42")
    # The row copied to user 43 does not decrypt there.
    with pytest.raises(KeyringError):
        keyring.decrypt(token, aad=b"totp:43")
    with pytest.raises(KeyringError):
        keyring.decrypt(token, aad=b"")


def test_the_header_is_authenticated(path: Path) -> None:
    key = os.urandom(KEY_BYTES)
    # The same key under two ids: re-labelling a token must still fail.
    keyring = Keyring({"kaaaaaaa": key, "kbbbbbbb": key}, "kaaaaaaa")
    token = keyring.encrypt(b"seed", aad=AAD)
    with pytest.raises(KeyringError):
        keyring.decrypt(token.replace("kaaaaaaa", "kbbbbbbb"), aad=AAD)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1",
        "v1.kfixed01",
        "v2.kfixed01.AAAA",
        "v1.kfixed01.AAAA",  # too short for nonce and tag
        "v1.kfixed01.not*base64",
        "v1.kunknown.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.kfixed01.AAAA.extra",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(KeyringError):
        FIXED.decrypt(token, aad=AAD)


def test_keyring_error_is_a_gateway_error() -> None:
    assert issubclass(KeyringError, GatewayError)
    assert KeyringError("x").status == 500


# -- files --------------------------------------------------------------------------------------------


def test_create_writes_a_0600_file_quickstart_can_read(path: Path, keyring: Keyring) -> None:
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    doc = json.loads(path.read_text())
    assert doc["algorithm"] == "AES-256-GCM"
    assert doc["active"] == keyring.active_id
    assert len(base64.b64decode(doc["keys"][keyring.active_id])) == KEY_BYTES
    assert keyring.active_id.startswith("k")
    assert len(keyring.active_id) == 9
    token = keyring.encrypt(b"x", aad=AAD)
    assert Keyring.load(path).decrypt(token, aad=AAD) == b"x"
    # No temporary files left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["keyring.json"]


def test_create_refuses_to_overwrite(path: Path, keyring: Keyring) -> None:
    before = path.read_bytes()
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(path)
    assert path.read_bytes() == before


def test_loads_the_format_gateway_quickstart_writes(tmp_path: Path) -> None:
    from gateway.cli.quickstart import _write_keyring

    path = tmp_path / "keyring.json"
    _write_keyring(path)
    keyring = Keyring.load(path)
    assert keyring.active_id == json.loads(path.read_text())["active"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_a_keyring_readable_by_others_is_refused(path: Path, mode: int) -> None:
    _write(path, _doc(k1=os.urandom(32)), mode)
    with pytest.raises(KeyringError, match=r"group or others can read it; run `chmod 600"):
        Keyring.load(path)


def test_0400_is_accepted(path: Path) -> None:
    _write(path, _doc(k1=os.urandom(32)), 0o400)
    assert Keyring.load(path).active_id == "k1"


@pytest.mark.parametrize("size", [0, 16, 24, 31, 33, 64])
def test_keys_must_be_exactly_32_bytes(path: Path, size: int) -> None:
    _write(path, _doc(k1=os.urandom(size)))
    with pytest.raises(KeyringError, match=f"is {size} bytes; AES-256 needs exactly 32"):
        Keyring.load(path)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("not json", "not valid JSON"),
        ([], "must be a JSON object"),
        ({"active": "k1", "keys": {"k1": "AA=="}, "algorithm": "AES-128-CBC"}, "algorithm"),
        ({"active": "k1", "keys": {}, "algorithm": "AES-256-GCM"}, "non-empty"),
        (
            {
                "active": "k2",
                "keys": {"k1": base64.b64encode(b"x" * 32).decode()},
                "algorithm": "AES-256-GCM",
            },
            "active key",
        ),
        ({"active": "k1", "keys": {"k1": "***"}, "algorithm": "AES-256-GCM"}, "not valid base64"),
        (
            {
                "active": "k.1",
                "keys": {"k.1": base64.b64encode(b"x" * 32).decode()},
                "algorithm": "AES-256-GCM",
            },
            "key id",
        ),
    ],
)
def test_malformed_files_are_refused_without_echoing_keys(path: Path, doc: object, fragment: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match=fragment) as info:
        Keyring.load(path)
    assert base64.b64encode(b"x" * 32).decode() not in str(info.value)


def test_repr_shows_no_key_material() -> None:
    key = bytes(range(32))
    text = repr(Keyring({"k1": key}, "k1"))
    assert "k1" in text
    assert base64.b64encode(key).decode() not in text
    assert key.hex() not in text


def test_load_or_create(path: Path) -> None:
    with pytest.raises(
        KeyringError, match=r"run `gateway keys init --config FILE` and share the file with every replica"
    ):
        Keyring.load_or_create(path, allow_create=False)
    assert not path.exists()
    created = Keyring.load_or_create(path, allow_create=True)
    assert _mode(path) == 0o600
    # Existing: loaded, in both modes, never replaced.
    assert Keyring.load_or_create(path, allow_create=True).active_id == created.active_id
    assert Keyring.load_or_create(path, allow_create=False).active_id == created.active_id


def test_workers_creating_at_once_share_one_keyring(path: Path) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        results.append(Keyring.load_or_create(path, allow_create=True).active_id)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert set(results) == {json.loads(path.read_text())["active"]}


# -- rotation -----------------------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_and_uses_the_new_key(path: Path, keyring: Keyring) -> None:
    old_kid = keyring.active_id
    old_token = keyring.encrypt(b"old secret", aad=AAD)
    new_kid = keyring.rotate(path)
    assert new_kid != old_kid
    assert keyring.active_id == new_kid
    assert keyring.key_ids == {old_kid, new_kid}
    new_token = keyring.encrypt(b"new secret", aad=AAD)
    assert new_token.split(".")[1] == new_kid
    assert keyring.decrypt(old_token, aad=AAD) == b"old secret"
    # Another replica loading the rewritten file reads both.
    reloaded = Keyring.load(path)
    assert reloaded.active_id == new_kid
    assert reloaded.decrypt(old_token, aad=AAD) == b"old secret"
    assert reloaded.decrypt(new_token, aad=AAD) == b"new secret"
    assert _mode(path) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_stale_keyring_rotating_does_not_drop_keys_added_meanwhile(path: Path, keyring: Keyring) -> None:
    other = Keyring.load(path)
    first = other.rotate(path)
    token = other.encrypt(b"under the first rotation", aad=AAD)
    second = keyring.rotate(path)  # this instance never saw `first`
    reloaded = Keyring.load(path)
    assert reloaded.key_ids >= {first, second}
    assert reloaded.decrypt(token, aad=AAD) == b"under the first rotation"


def test_rotation_refuses_a_conflicting_file(path: Path, keyring: Keyring) -> None:
    doc = json.loads(path.read_text())
    doc["keys"][keyring.active_id] = base64.b64encode(os.urandom(32)).decode()
    _write(path, doc)
    with pytest.raises(KeyringError, match="differs"):
        keyring.rotate(path)


def test_derive_gives_independent_stable_subkeys(keyring: Keyring, path: Path) -> None:
    csrf = keyring.derive(b"gateway csrf v1")
    assert len(csrf) == 32
    assert csrf == Keyring.load(path).derive(b"gateway csrf v1")
    assert csrf != keyring.derive(b"another purpose")
    keyring.rotate(path)
    assert keyring.derive(b"gateway csrf v1") != csrf


# -- keys added by another process -------------------------------------------------------------------


def test_a_process_started_before_a_rotation_reads_what_later_processes_write(
    path: Path, keyring: Keyring
) -> None:
    """`gateway keys rotate` while gateways run: a worker started after it (or the CLI itself)
    encrypts, keys audit records and makes CSRF tokens under the new key; the running one reads them
    and from then on encrypts under the new key too."""
    running = Keyring.load(path)
    old_kid = running.active_id
    new_kid = Keyring.load(path).rotate(path)
    restarted = Keyring.load(path)
    token = restarted.encrypt(b"seed enrolled on the restarted worker", aad=AAD)
    assert running.decrypt(token, aad=AAD) == b"seed enrolled on the restarted worker"
    assert running.active_id == new_kid
    assert running.key_ids == {old_kid, new_kid}
    assert running.encrypt(b"x", aad=AAD).split(".")[1] == new_kid
    assert running.derive(b"gateway csrf v1", kid=new_kid) == restarted.derive(b"gateway csrf v1")


def test_a_key_added_after_the_last_read_is_found_by_derive_too(path: Path, keyring: Keyring) -> None:
    running = Keyring.load(path)
    new_kid = Keyring.load(path).rotate(path)
    assert running.derive(b"audit chain", kid=new_kid) == Keyring.load(path).derive(
        b"audit chain", kid=new_kid
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_unknown_key_ids_read_the_file_at_most_once_a_second(
    path: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.crypto.keyring as module

    clock = _Clock()
    monkeypatch.setattr(module, "time", clock)
    reads: list[Path] = []
    load = Keyring.load.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Keyring], file: Path) -> Keyring:
        reads.append(file)
        return load(cls, file)  # type: ignore[no-any-return]

    running = Keyring.load(path)
    monkeypatch.setattr(Keyring, "load", classmethod(counting))
    forged = "v1.knowhere1." + "A" * 40
    for _ in range(100):
        with pytest.raises(KeyringError, match="unknown key id"):
            running.decrypt(forged, aad=AAD)
    assert len(reads) == 1
    # A rotation within that second is found after it, not before.
    Keyring.load(path).rotate(path)
    token = Keyring.load(path).encrypt(b"new", aad=AAD)
    reads.clear()
    with pytest.raises(KeyringError):
        running.decrypt(token, aad=AAD)
    assert reads == []
    clock.now += 1.01
    assert running.decrypt(token, aad=AAD) == b"new"
    assert len(reads) == 1
    # Ids that cannot be key ids (path tricks, dots, overlong) never read the file.
    clock.now += 5
    reads.clear()
    for kid in ("../../etc/passwd", "a" * 65, ""):
        with pytest.raises(KeyringError):
            running.derive(b"x", kid=kid)
    assert reads == []


def test_a_file_that_changed_a_known_key_is_not_merged(path: Path, keyring: Keyring) -> None:
    running = Keyring.load(path)
    old_kid = running.active_id
    old_token = running.encrypt(b"old", aad=AAD)
    other = Keyring.load(path)
    new_kid = other.rotate(path)
    token = other.encrypt(b"new", aad=AAD)
    doc = json.loads(path.read_text())
    doc["keys"][old_kid] = base64.b64encode(os.urandom(KEY_BYTES)).decode()  # someone replaced a key
    _write(path, doc)
    with pytest.raises(KeyringError, match="unknown key id"):
        running.decrypt(token, aad=AAD)
    assert running.active_id == old_kid
    assert running.key_ids == {old_kid}
    assert running.decrypt(old_token, aad=AAD) == b"old"
    assert new_kid not in running.key_ids


def test_a_keyring_built_from_key_material_reads_no_file(path: Path, keyring: Keyring) -> None:
    doc = json.loads(path.read_text())
    in_memory = Keyring({kid: base64.b64decode(key) for kid, key in doc["keys"].items()}, doc["active"])
    Keyring.load(path).rotate(path)
    token = Keyring.load(path).encrypt(b"new", aad=AAD)
    with pytest.raises(KeyringError, match="unknown key id"):
        in_memory.decrypt(token, aad=AAD)


def test_a_staged_key_decrypts_everywhere_before_anyone_encrypts_under_it(
    path: Path, keyring: Keyring
) -> None:
    """The two-step rotation for replicas with their own copy of the file: stage, distribute, activate."""
    old_kid = keyring.active_id
    operator = Keyring.load(path)
    staged = operator.rotate(path, activate=False)
    assert operator.active_id == old_kid
    assert operator.key_ids == {old_kid, staged}
    assert operator.encrypt(b"x", aad=AAD).split(".")[1] == old_kid  # staged: encrypts nothing yet
    replica_copy = Keyring.load(path)  # what each replica holds after the new file reached it
    assert replica_copy.active_id == old_kid
    operator.activate(path, staged)
    token = Keyring.load(path).encrypt(b"under the activated key", aad=AAD)
    assert token.split(".")[1] == staged
    assert replica_copy.decrypt(token, aad=AAD) == b"under the activated key"
    with pytest.raises(KeyringError, match="no key 'kunknown'"):
        operator.activate(path, "kunknown")
    assert Keyring.load(path).active_id == staged  # a refused activation changes nothing
