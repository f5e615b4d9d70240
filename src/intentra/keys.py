"""X25519 key pairs and their files (docs/protocol.md section 9).

A key file holds the base64 of the 32 raw key bytes and a newline. Private key
files are created with mode 0600 and never overwritten. Keys compare in constant
time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import stat
import warnings
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from intentra.constants import KEY_LEN
from intentra.errors import KeyFileError, KeyFormatError

__all__ = ["PrivateKey", "PublicKey"]


def _decode(text: str, what: str,
            error: type[KeyFileError | KeyFormatError] = KeyFormatError) -> bytes:
    if not isinstance(text, str):
        raise error(f"{what} is base64 text (as intentra keygen prints it), "
                    f"got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"{what} is not valid base64") from exc
    if len(raw) != KEY_LEN:
        raise error(f"{what} must decode to {KEY_LEN} bytes, got {len(raw)}")
    return raw


def _read(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} file {os.fspath(path)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {what} file {os.fspath(path)!r}: {exc}") from exc


class PublicKey:
    """An X25519 public key: a peer's identity."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_LEN:
            raise KeyFormatError(f"a public key is {KEY_LEN} raw bytes; for base64 text use "
                                 "PublicKey.from_base64()")
        self._raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        """Parse the base64 form (as printed by ``intentra keygen``).

        Raises:
            KeyFormatError: the text is not base64 of 32 bytes.
        """
        return cls(_decode(text, "public key"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Read a public key file."""
        return cls(_decode(_read(path, "public key"), f"public key file {os.fspath(path)!r}",
                           KeyFileError))

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def to_bytes(self) -> bytes:
        return self._raw

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key as base64 and a newline."""
        Path(path).write_text(self.to_base64() + "\n", encoding="ascii")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()!r})"


class PrivateKey:
    """An X25519 private key: this endpoint's identity. Never printed."""

    __slots__ = ("_public", "_raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_LEN:
            raise KeyFormatError(f"a private key is {KEY_LEN} raw bytes; for base64 text use "
                                 "PrivateKey.from_base64()")
        self._raw = bytes(raw)
        pub = X25519PrivateKey.from_private_bytes(self._raw).public_key()
        self._public = PublicKey(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def generate(cls) -> PrivateKey:
        """A new random key from the operating system's generator."""
        key = X25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @classmethod
    def from_base64(cls, text: str) -> PrivateKey:
        """Parse the base64 form (a key file's content).

        Raises:
            KeyFormatError: the text is not base64 of 32 bytes.
        """
        return cls(_decode(text, "private key"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivateKey:
        """Read a private key file; warns if others may read it.

        Raises:
            KeyFileError: missing, unreadable or malformed file.
        """
        text = _read(path, "private key")
        try:
            mode = os.stat(path).st_mode
        except OSError:  # pragma: no cover - it was just read
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(
                f"private key file {os.fspath(path)!r} is accessible by other users "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {os.fspath(path)}",
                stacklevel=2,
            )
        return cls(_decode(text, f"private key file {os.fspath(path)!r}", KeyFileError))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Create the key file with mode 0600; refuses to overwrite.

        Raises:
            KeyFileError: the file exists or cannot be created.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise KeyFileError(
                f"{os.fspath(path)!r} already exists; refusing to overwrite a key file"
            ) from exc
        except OSError as exc:
            raise KeyFileError(f"cannot create key file {os.fspath(path)!r}: {exc}") from exc
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(fd, 0o600)  # the umask may have narrowed it; never widened
            f.write(self.to_base64() + "\n")

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def to_bytes(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PrivateKey(public={self._public.to_base64()!r})"
