"""The Noise_XX_25519_AESGCM_SHA256 handshake of docs/protocol.md section 7, on ``noiseprotocol``.

Owns: building and consuming the three Noise messages, and Split().
Never: reads randomness (ephemeral keys are passed in), touches the network,
or leaves a handshake changed by a message that failed to authenticate.

``noiseprotocol`` mutates its handshake state while it reads, even when the
read then fails, and a read that succeeds may still bring a key we refuse. A
forged or wrong-key RESPONSE or FINISH must not cost the genuine one its place
(docs/protocol.md section 4-6 step 5, applied to HS; docs/security.md "Handshake blocking"),
so every read happens on a *fork*: a fresh ``NoiseConnection`` given the state
saved after our last write (chaining key, handshake hash, cipher key and nonce,
remaining patterns, remote keys). The saved state is never touched, so a failed
or refused attempt leaves the handshake exactly as before, able to take the
genuine message. A fork costs no Diffie-Hellman: the key pair objects are built
once per handshake.

The responder also checks a FINISH with AES-GCM opens against saved states
before forking (``could_be_genuine``): a forger, who lacks the keys of the ee
exchange, is refused for the price of a forged DATA packet.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

from noise.backends.default.keypairs import KeyPair25519
from noise.connection import NoiseConnection

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
    handshake_hash: bytes = b""


class ResponderResult(NamedTuple):
    remote_static: bytes
    peer_payload: bytes
    send_key: bytes
    receive_key: bytes
    handshake_hash: bytes = b""


@functools.lru_cache(maxsize=4)
def _static_keypair(static: bytes) -> Any:
    """The static key pair object, derived once per key instead of once per handshake.

    Deriving it costs a scalar multiplication (about 40 us, 8% of a responder's
    handshake); an endpoint keeps its static key for its lifetime anyway.
    """
    return KeyPair25519.from_private_bytes(static)


def _new(initiator: bool, static: Any, ephemeral: Any, prologue: bytes) -> Any:
    """A started connection holding the given key pair objects (no scalar multiplication)."""
    conn = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    keypairs = conn.noise_protocol.keypairs
    keypairs["s"] = static
    keypairs["e"] = ephemeral
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


class _Saved(NamedTuple):
    """The Noise state after our last write: all a fork needs to go on from there."""

    h: bytes
    ck: bytes
    k: Any
    n: Any
    patterns: tuple[Any, ...]
    re: Any
    rs: Any


def _save(conn: Any) -> _Saved:
    state = conn.noise_protocol.handshake_state
    sym = state.symmetric_state
    cs = sym.cipher_state
    return _Saved(sym.h, sym.ck, cs.k, cs.n, tuple(state.message_patterns), state.re,
                  state.rs)


def _fork(initiator: bool, static: Any, ephemeral: Any, prologue: bytes,
          saved: _Saved) -> Any:
    """A fresh connection in the saved state, ready to read; the saved state stays as it is."""
    conn = _new(initiator, static, ephemeral, prologue)
    state = conn.noise_protocol.handshake_state
    sym = state.symmetric_state
    sym.h = saved.h
    sym.ck = saved.ck
    cs = sym.cipher_state
    cs.initialize_key(saved.k)
    cs.n = saved.n
    state.message_patterns = list(saved.patterns)
    state.re = saved.re
    state.rs = saved.rs
    conn._next_fn = conn.read_message  # we wrote last; a read comes next
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

    __slots__ = ("_conn", "_ephemeral", "_payload", "_prologue", "_saved", "_static", "msg1")

    def __init__(self, static: bytes, ephemeral: bytes, prologue: bytes = PROLOGUE,
                 payload: bytes = b"") -> None:
        self._static = _static_keypair(bytes(static))
        self._ephemeral = KeyPair25519.from_private_bytes(bytes(ephemeral))
        self._prologue = prologue
        self._payload = payload
        conn = _new(True, self._static, self._ephemeral, prologue)
        self.msg1 = bytes(conn.write_message(payload))
        self._saved = _save(conn)
        self._conn: Any = conn  # read the first RESPONSE on it; later ones on forks

    def consume_response(self, msg2: bytes, payload: bytes = b"") -> InitiatorResult | None:
        """Read msg 2 and write msg 3 carrying ``payload``, on a fork.

        Returns:
            The peer's static key and payload, msg 3 and the Split() keys; or
            None when msg 2 does not authenticate. Either way this handshake is
            exactly as before: a result whose key the caller refuses, or a
            failure, leaves it ready for another RESPONSE.
        """
        conn = self._conn
        if conn is None:
            conn = _fork(True, self._static, self._ephemeral, self._prologue, self._saved)
        else:
            self._conn = None  # a read changes it, whatever the outcome: forks from now on
        try:
            state = conn.noise_protocol.handshake_state
            peer_payload = bytes(conn.read_message(bytes(msg2)))
            remote_static = bytes(state.rs.public_bytes)
            msg3 = bytes(conn.write_message(payload))
        except Exception:
            return None
        send, recv = _split(conn)
        return InitiatorResult(remote_static, peer_payload, msg3, send, recv,
                               bytes(conn.noise_protocol.handshake_hash))


class ResponderHandshake:
    """The responder's side: msg 1 in and msg 2 out at creation, then FINISH in."""

    __slots__ = ("_ephemeral", "_hs_cipher", "_payload", "_prologue", "_saved", "_stage",
                 "_static", "msg2", "peer_payload")

    def __init__(self, conn: Any, static: Any, ephemeral: Any, prologue: bytes,
                 payload: bytes, msg2: bytes, peer_payload: bytes) -> None:
        self._static = static
        self._ephemeral = ephemeral
        self._prologue = prologue
        self._payload = payload
        self._saved = _save(conn)
        self._hs_cipher = conn.noise_protocol.handshake_state.symmetric_state.cipher_state.cipher
        # (head of msg 3, the fork that read it up to the payload): see could_be_genuine
        self._stage: tuple[bytes, Any] | None = None
        self.msg2 = msg2
        self.peer_payload = peer_payload

    @classmethod
    def create(cls, static: bytes, ephemeral: bytes, msg1: bytes,
               prologue: bytes = PROLOGUE, payload: bytes = b"") -> ResponderHandshake | None:
        """Read msg 1 and write msg 2 carrying ``payload``; None if msg 1 is unusable."""
        try:
            static_kp = _static_keypair(bytes(static))
            ephemeral_kp = KeyPair25519.from_private_bytes(bytes(ephemeral))
            conn = _new(False, static_kp, ephemeral_kp, prologue)
            peer_payload = bytes(conn.read_message(bytes(msg1)))
            msg2 = bytes(conn.write_message(payload))
        except Exception:
            return None
        return cls(conn, static_kp, ephemeral_kp, prologue, payload, msg2, peer_payload)

    def could_be_genuine(self, msg3: bytes) -> bool:
        """Whether msg 3 can authenticate, checked with AES-GCM opens only.

        First its encrypted static key is opened against the saved state: only
        someone holding the ee secret passes, so a forgery fails here, with no
        Noise state built and no DH done. For the static key that passed, the
        state after ``se`` (one DH) is computed once and kept, and the payload's
        tag is opened against it: copies of the genuine FINISH with a damaged
        tail cost one more AES-GCM open each, not a DH.
        """
        saved = self._saved
        head = bytes(msg3[:KEY_LEN + 16])
        try:
            self._hs_cipher.decrypt(saved.k, saved.n, saved.h, head)
        except Exception:
            return False
        stage = self._stage
        if stage is None or stage[0] != head:
            conn = _fork(False, self._static, self._ephemeral, self._prologue, saved)
            state = conn.noise_protocol.handshake_state
            sym = state.symmetric_state
            proto = conn.noise_protocol
            try:
                # msg 3's tokens s and se, as the library's read_message does them
                rs = proto.keypair_class.from_public_bytes(sym.decrypt_and_hash(head))
                sym.mix_key(proto.dh_fn.dh(self._ephemeral.private, rs.public))
            except Exception:
                return False
            state.rs = rs
            stage = self._stage = (head, conn)
        sym = stage[1].noise_protocol.handshake_state.symmetric_state
        cs = sym.cipher_state
        try:
            cs.cipher.decrypt(cs.k, cs.n, sym.h, bytes(msg3[KEY_LEN + 16:]))
        except Exception:
            return False
        return True

    def consume_finish(self, msg3: bytes) -> ResponderResult | None:
        """Read msg 3, on a fork.

        Returns:
            The peer's static key and payload and the Split() keys; or None when
            msg 3 does not authenticate (the handshake is then exactly as before).
        """
        stage = self._stage
        if stage is not None and stage[0] == bytes(msg3[:KEY_LEN + 16]):
            # could_be_genuine read this msg 3 up to its payload (one DH): finish
            # that fork rather than read it all again. Used up either way.
            self._stage = None
            conn = stage[1]
            state = conn.noise_protocol.handshake_state
            try:
                peer_payload = bytes(state.symmetric_state.decrypt_and_hash(
                    bytes(msg3[KEY_LEN + 16:])))
            except Exception:
                return None
            state.message_patterns.clear()
            state.symmetric_state.split()  # the transport keys, and the handshake hash
            conn.handshake_finished = True
            remote_static = bytes(state.rs.public_bytes)
        else:
            conn = _fork(False, self._static, self._ephemeral, self._prologue, self._saved)
            try:
                state = conn.noise_protocol.handshake_state
                peer_payload = bytes(conn.read_message(bytes(msg3)))
                remote_static = bytes(state.rs.public_bytes)
            except Exception:
                return None
        send, recv = _split(conn)
        return ResponderResult(remote_static, peer_payload, send, recv,
                               bytes(conn.noise_protocol.handshake_hash))
