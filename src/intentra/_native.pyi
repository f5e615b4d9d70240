"""Type stubs of the C extension intentra._native (src/intentra/_native.c)."""

from collections.abc import Sequence
from typing import Any, Final

OPENSSL_VERSION: Final[str]

class AESGCM:
    """AES-256-GCM on OpenSSL EVP; the part of cryptography's AESGCM core/aead.py uses."""

    def __init__(self, key: bytes) -> None: ...
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes: ...
    def decrypt(self, nonce: bytes, data: bytes | memoryview,
                associated_data: bytes | memoryview) -> bytes: ...
    def seal_packet(self, b0: int, b1: int, conn_id: int, pn: int, ack: int,
                    plaintext: bytes) -> bytes: ...

class Receiver:
    """docs/protocol.md section 6 for one Endpoint, on the endpoint's own objects."""

    def __init__(self, endpoint: Any, message_received: type, realtime: object) -> None: ...
    def receive(self, batch: Sequence[tuple[bytes, Any]], now: float) -> None: ...

class Reader:
    """recvmmsg on a non-blocking UDP socket; GRO buffers cut into their datagrams."""

    calls: int
    coalesced: int
    def __init__(self, fd: int, gro: bool) -> None: ...
    def read(self, limit: int) -> list[tuple[bytes, Any]]: ...

def aead_opens() -> int: ...

class Packer:
    """The X = 0 DATA packet being filled during a flush (core/packing.py's Packer)."""

    size: int
    prio: int
    count: int
    first: int
    sent: int
    taken: int
    def __init__(self, reliable: bool = False) -> None: ...
    def take(self, q: Any, level: int, now: float, deadline: float, limit: int,
             small: int) -> int: ...
    def take_reliable(self, olane: Any, window: Any, now: float, rto: float, room: int,
                      single: bool, small: int, limit: int) -> tuple[int, int]: ...
    def plaintext(self) -> bytes: ...
