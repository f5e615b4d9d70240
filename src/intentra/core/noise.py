"""The Noise_XX_25519_AESGCM_SHA256 handshake of SPEC section 5, on ``noiseprotocol``.

Owns: building and consuming the three Noise messages, and Split().
Never: reads randomness (ephemeral keys are passed in), touches the network,
or leaves a handshake changed by a message that failed to authenticate.

``noiseprotocol`` mutates its handshake state while it reads, even when the
read then fails. A forged RESPONSE or FINISH must not break a live handshake
(SPEC section 4 step 5, applied to HS), so on failure the state is rebuilt
from its inputs: the Noise state after our last write is a pure function of
(static key, ephemeral key, prologue, messages so far), which we keep.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

from noise.backends.default.keypairs import KeyPair25519
from noise.connection import Keypair, NoiseConnection

from intentra.constants import KEY_LEN, NOISE_PROTOCOL_NAME, PROLOGUE

# Ephemeral keys come from the endpoint's injected random source (os.urandom
# in production, a seeded one in tests), so setting them is the design here.
warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set",
                        module="noise")


class InitiatorResult(NamedTuple):
    remote_static: bytes
    peer_payload: bytes
    msg3: bytes
    send_key: bytes
    receive_key: bytes


class ResponderResult(NamedTuple):
    remote_static: bytes
    peer_payload: bytes
    send_key: bytes
    receive_key: bytes


@functools.lru_cache(maxsize=4)
def _static_keypair(static: bytes) -> Any:
    """The static key pair object, derived once per key instead of once per handshake.

    Deriving it costs a scalar multiplication (about 40 us, 8% of a responder's
    handshake); an endpoint keeps its static key for its lifetime anyway.
    """
    return KeyPair25519.from_private_bytes(static)


def _new(initiator: bool, static: bytes, ephemeral: bytes, prologue: bytes) -> Any:
    conn = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.noise_protocol.keypairs["s"] = _static_keypair(bytes(static))
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


def _split(conn: Any) -> tuple[bytes, bytes]:
    """The raw Split() keys as (send_key, receive_key) for this side."""
    proto = conn.noise_protocol
    send = bytes(proto.cipher_state_encrypt.k)
    recv = bytes(proto.cipher_state_decrypt.k)
    if len(send) != KEY_LEN or len(recv) != KEY_LEN:  # pragma: no cover - library contract
        raise RuntimeError("noiseprotocol returned keys of an unexpected size")
    return send, recv


class InitiatorHandshake:
    """The initiator's side: msg 1 at creation, then RESPONSE in, FINISH out."""

    __slots__ = ("_conn", "_ephemeral", "_payload", "_prologue", "_static", "msg1")

    def __init__(self, static: bytes, ephemeral: bytes, prologue: bytes = PROLOGUE,
                 payload: bytes = b"") -> None:
        self._static = static
        self._ephemeral = ephemeral
        self._prologue = prologue
        self._payload = payload
        self._conn, self.msg1 = self._start()

    def _start(self) -> tuple[Any, bytes]:
        conn = _new(True, self._static, self._ephemeral, self._prologue)
        return conn, bytes(conn.write_message(self._payload))

    def consume_response(self, msg2: bytes, payload: bytes = b"") -> InitiatorResult | None:
        """Read msg 2 and write msg 3 carrying ``payload``.

        Returns:
            The peer's static key and payload, msg 3 and the Split() keys; or
            None when msg 2 does not authenticate (the handshake is then
            exactly as before).
        """
        conn = self._conn
        try:
            state = conn.noise_protocol.handshake_state
            peer_payload = bytes(conn.read_message(bytes(msg2)))
            remote_static = bytes(state.rs.public_bytes)
            msg3 = bytes(conn.write_message(payload))
        except Exception:
            self._conn, _ = self._start()
            return None
        send, recv = _split(conn)
        return InitiatorResult(remote_static, peer_payload, msg3, send, recv)


class ResponderHandshake:
    """The responder's side: msg 1 in and msg 2 out at creation, then FINISH in."""

    __slots__ = ("_conn", "_ephemeral", "_msg1", "_payload", "_prologue", "_static",
                 "msg2", "peer_payload")

    def __init__(self, conn: Any, static: bytes, ephemeral: bytes, prologue: bytes,
                 payload: bytes, msg1: bytes, msg2: bytes, peer_payload: bytes) -> None:
        self._conn = conn
        self._static = static
        self._ephemeral = ephemeral
        self._prologue = prologue
        self._payload = payload
        self._msg1 = msg1
        self.msg2 = msg2
        self.peer_payload = peer_payload

    @classmethod
    def create(cls, static: bytes, ephemeral: bytes, msg1: bytes,
               prologue: bytes = PROLOGUE, payload: bytes = b"") -> ResponderHandshake | None:
        """Read msg 1 and write msg 2 carrying ``payload``; None if msg 1 is unusable."""
        try:
            conn = _new(False, static, ephemeral, prologue)
            peer_payload = bytes(conn.read_message(bytes(msg1)))
            msg2 = bytes(conn.write_message(payload))
        except Exception:
            return None
        return cls(conn, static, ephemeral, prologue, payload, bytes(msg1), msg2, peer_payload)

    def consume_finish(self, msg3: bytes) -> ResponderResult | None:
        """Read msg 3.

        Returns:
            The peer's static key and payload and the Split() keys; or None when
            msg 3 does not authenticate (the handshake is then exactly as before).
        """
        conn = self._conn
        try:
            state = conn.noise_protocol.handshake_state
            peer_payload = bytes(conn.read_message(bytes(msg3)))
            remote_static = bytes(state.rs.public_bytes)
        except Exception:
            rebuilt = ResponderHandshake.create(self._static, self._ephemeral, self._msg1,
                                                self._prologue, self._payload)
            if rebuilt is not None:
                self._conn = rebuilt._conn
            return None
        send, recv = _split(conn)
        return ResponderResult(remote_static, peer_payload, send, recv)
