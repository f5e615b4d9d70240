"""Key pairs and key files (docs/protocol.md section 7): intentra.keys.PrivateKey and PublicKey."""

from __future__ import annotations

import base64
import os
import stat
import warnings
from pathlib import Path

import pytest

from intentra import KeyFileError, PrivateKey, PublicKey

# RFC 7748 section 6.1: Alice's X25519 private key and the public key it yields.
RFC7748_PRIVATE = bytes.fromhex(
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_PUBLIC = bytes.fromhex(
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="ascii")
    path.chmod(mode)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ generation


def test_generate_gives_distinct_32_byte_keys() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    assert len(a.to_bytes()) == 32
    assert len(a.public_key.to_bytes()) == 32
    assert a != b
    assert a.public_key != b.public_key


def test_public_key_derivation_matches_rfc7748() -> None:
    key = PrivateKey(RFC7748_PRIVATE)
    assert key.public_key.to_bytes() == RFC7748_PUBLIC
    assert key.public_key == PublicKey(RFC7748_PUBLIC)
    assert PrivateKey.from_base64(_b64(RFC7748_PRIVATE)).public_key.to_bytes() == RFC7748_PUBLIC


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(33)])
def test_raw_keys_of_wrong_length_are_refused(raw: bytes) -> None:
    with pytest.raises(KeyFileError):
        PrivateKey(raw)
    with pytest.raises(KeyFileError):
        PublicKey(raw)


# ------------------------------------------------------------------ key files


def test_private_key_save_load_round_trip(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "id.key"
    key.save(path)
    # docs/protocol.md 7: the base64 of the 32 raw bytes and a newline
    assert path.read_text(encoding="ascii") == _b64(key.to_bytes()) + "\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0600 file must load without a warning
        loaded = PrivateKey.load(path)
    assert loaded == key
    assert loaded.to_bytes() == key.to_bytes()
    assert loaded.public_key == key.public_key
    # str paths work as well as Path objects
    assert PrivateKey.load(str(path)) == key


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_saved_private_key_file_is_mode_0600_whatever_the_umask(tmp_path: Path,
                                                                umask: int) -> None:
    path = tmp_path / "id.key"
    old = os.umask(umask)
    try:
        PrivateKey.generate().save(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    first = PrivateKey.generate()
    first.save(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="exists"):
        PrivateKey.generate().save(path)
    assert path.read_bytes() == before
    assert PrivateKey.load(path) == first
    # any existing file, not only a key file
    other = tmp_path / "notes.txt"
    other.write_text("keep me\n")
    with pytest.raises(KeyFileError):
        first.save(other)
    assert other.read_text() == "keep me\n"


def test_save_into_missing_directory_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot create"):
        PrivateKey.generate().save(tmp_path / "no" / "such" / "dir" / "id.key")


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError, match="does not exist") as info:
        PrivateKey.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(KeyFileError, match="does not exist"):
        PublicKey.load(path)


@pytest.mark.parametrize("text", ["not base64 at all!\n", "QUJD*RUY=\n", "%%%%\n"])
def test_load_bad_base64(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "bad.key", text)
    with pytest.raises(KeyFileError, match="not valid base64") as info:
        PrivateKey.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(KeyFileError, match="not valid base64"):
        PublicKey.load(path)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_load_wrong_length(tmp_path: Path, length: int) -> None:
    path = _write(tmp_path / "short.key", _b64(bytes(range(length))) + "\n")
    expected = f"must decode to 32 bytes, got {length}"
    with pytest.raises(KeyFileError, match=expected) as info:
        PrivateKey.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(KeyFileError, match=expected):
        PublicKey.load(path)


def test_load_binary_garbage_is_a_key_file_error(tmp_path: Path) -> None:
    path = tmp_path / "bin.key"
    path.write_bytes(b"\xff\xfe\x00\x80" * 8)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        PrivateKey.load(path)


def test_load_of_group_or_world_readable_file_warns(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = _write(tmp_path / "open.key", key.to_base64() + "\n", 0o644)
    with pytest.warns(UserWarning, match="chmod 600") as record:
        loaded = PrivateKey.load(path)
    assert loaded == key  # a warning, not a refusal
    assert any("0644" in str(w.message) for w in record)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700 | 0o007])
def test_load_warns_for_any_group_or_other_bit(tmp_path: Path, mode: int) -> None:
    key = PrivateKey.generate()
    path = _write(tmp_path / "open.key", key.to_base64() + "\n", mode)
    with pytest.warns(UserWarning):
        PrivateKey.load(path)


def test_load_of_owner_only_file_does_not_warn(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = _write(tmp_path / "ok.key", key.to_base64() + "\n", 0o400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PrivateKey.load(path) == key


def test_load_accepts_file_without_trailing_newline(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = _write(tmp_path / "k.key", key.to_base64())
    assert PrivateKey.load(path) == key


def test_public_key_file_round_trip(tmp_path: Path) -> None:
    pub = PrivateKey.generate().public_key
    path = tmp_path / "id.pub"
    pub.save(path)
    assert path.read_text(encoding="ascii") == pub.to_base64() + "\n"
    assert PublicKey.load(path) == pub


# ------------------------------------------------------------------ base64 form


def test_public_key_base64_round_trip() -> None:
    pub = PrivateKey.generate().public_key
    text = pub.to_base64()
    assert base64.b64decode(text) == pub.to_bytes()
    again = PublicKey.from_base64(text)
    assert again == pub
    assert again.to_base64() == text
    # surrounding whitespace (a pasted line) is tolerated
    assert PublicKey.from_base64("  " + text + "\n") == pub
    assert PublicKey.from_base64(_b64(RFC7748_PUBLIC)).to_bytes() == RFC7748_PUBLIC


def test_private_key_base64_round_trip() -> None:
    key = PrivateKey.generate()
    assert PrivateKey.from_base64(key.to_base64()) == key


@pytest.mark.parametrize("text", ["", "abc", "!!!!", _b64(bytes(31)), _b64(bytes(33))])
def test_from_base64_rejects_bad_text(text: str) -> None:
    with pytest.raises(KeyFileError):
        PublicKey.from_base64(text)
    with pytest.raises(KeyFileError):
        PrivateKey.from_base64(text)


# ------------------------------------------------------------------ equality, hash, repr


def test_public_key_equality_and_hash() -> None:
    raw = PrivateKey.generate().public_key.to_bytes()
    a, b = PublicKey(raw), PublicKey(bytes(raw))
    assert a == b
    assert not a != b  # noqa: SIM202 - exercises __ne__ through __eq__
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1
    # differing in the first byte, in the last byte, or entirely
    first = PublicKey(bytes([raw[0] ^ 1]) + raw[1:])
    last = PublicKey(raw[:-1] + bytes([raw[-1] ^ 0x80]))
    for other in (first, last, PrivateKey.generate().public_key):
        assert a != other
        assert not a == other  # noqa: SIM201
    assert len({a, first, last}) == 3
    # never equal to other types, in particular not to its own raw bytes
    assert a != raw
    assert a != a.to_base64()
    assert a != None  # noqa: E711


def test_private_key_equality() -> None:
    key = PrivateKey.generate()
    assert key == PrivateKey(key.to_bytes())
    assert key != PrivateKey.generate()
    assert key != key.to_bytes()
    assert key != key.public_key


def test_private_key_repr_and_str_do_not_reveal_the_secret() -> None:
    key = PrivateKey.generate()
    secret = key.to_base64()
    for text in (repr(key), str(key), f"{key!r}", f"{key}"):
        assert secret not in text
        assert secret[:12] not in text
        assert key.to_bytes().hex() not in text
    assert key.public_key.to_base64() in repr(key)


def test_public_key_repr_shows_the_key() -> None:
    pub = PrivateKey.generate().public_key
    assert pub.to_base64() in repr(pub)
