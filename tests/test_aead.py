"""Per-direction AEAD, nonce layout, Noise Rekey and key updates (docs/protocol.md section 4).

Expected ciphertexts and keys are computed here with cryptography's AESGCM
directly (and Rekey cross-checked against the noiseprotocol package), never with
intentra.core.aead.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.backends.default.ciphers import AESGCMCipher

from intentra.core.aead import ReceiveKeys, SendKeys, nonce, rekey

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
CONN = 0x0A0B0C0D
PACKETS, AGE, MIN_INTERVAL = 2**24, 120.0, 10.0  # docs/protocol.md section 2


def ref_nonce(conn_id: int, pn: int) -> bytes:
    return conn_id.to_bytes(4, "big") + pn.to_bytes(8, "big")


def ref_rekey(key: bytes) -> bytes:
    """Noise Rekey: AES-256-GCM(key, nonce 4 zero bytes || 8 x 0xFF, aad "", 32 zeros)[:32]."""
    return AESGCM(key).encrypt(bytes(4) + b"\xff" * 8, bytes(32), b"")[:32]


def header(pn: int, phase: int, payload_len: int = 5) -> bytes:
    """A DATA REALTIME header (version 2, A = 1) for conn CONN, built by hand
    (docs/protocol.md section 3)."""
    return (bytes([0x20, 0x40 | 0x02 | phase]) + payload_len.to_bytes(2, "big")
            + CONN.to_bytes(4, "big") + (pn & 0xFFFFFFFF).to_bytes(4, "big") + bytes(4))


def seal(keys: SendKeys, pn: int, plaintext: bytes = b"hello") -> tuple[bytes, bytes]:
    h = header(pn, keys.phase, len(plaintext))
    return h, keys.seal(CONN, pn, h, plaintext)


# --- primitives --------------------------------------------------------------------------


def test_rekey_is_noise_rekey() -> None:
    assert rekey(KEY) == ref_rekey(KEY)
    assert rekey(OTHER_KEY) == ref_rekey(OTHER_KEY)
    assert len(rekey(KEY)) == 32
    assert rekey(KEY) != KEY
    assert rekey(rekey(KEY)) == ref_rekey(ref_rekey(KEY))


def test_rekey_matches_noiseprotocol_package() -> None:
    for key in (KEY, OTHER_KEY, bytes(32)):
        cipher = AESGCMCipher()
        cipher.initialize(key)  # the package's rekey encrypts with the initialised key
        assert rekey(key) == cipher.rekey(key)


@pytest.mark.parametrize(("conn_id", "pn"), [
    (0, 1), (CONN, 1), (0xFFFFFFFF, 2**62 - 1), (1, 2**32), (0x01020304, 0x05060708090A0B0C)])
def test_nonce_layout(conn_id: int, pn: int) -> None:
    assert nonce(conn_id, pn) == ref_nonce(conn_id, pn)
    assert len(nonce(conn_id, pn)) == 12


@pytest.mark.parametrize("pn", [1, 2, 0xFFFFFFFF, 2**32 + 5, 2**62 - 1])
def test_seal_is_aes_gcm_with_spec_nonce_and_header_aad(pn: int) -> None:
    keys = SendKeys(KEY, now=0.0)
    h, body = seal(keys, pn, b"payload!")
    assert len(body) == len(b"payload!") + 16
    assert AESGCM(KEY).decrypt(ref_nonce(CONN, pn), body, h) == b"payload!"
    assert body == AESGCM(KEY).encrypt(ref_nonce(CONN, pn), b"payload!", h)


def test_seal_open_round_trip() -> None:
    s, r = SendKeys(KEY, now=0.0), ReceiveKeys(KEY)
    for pn in (1, 2, 3, 1000, 2**40):
        h, body = seal(s, pn, b"m%d" % pn)
        assert r.open(CONN, pn, 0, h, body) == (b"m%d" % pn, False)
        assert r.open(CONN, pn, 0, memoryview(h), memoryview(body)) == (b"m%d" % pn, False)
    assert s.packets_under_key == 5


TAMPER = [
    pytest.param("pn", id="other-pn"),
    pytest.param("conn", id="other-conn"),
    pytest.param("header", id="header-byte"),
    pytest.param("body", id="body-byte"),
    pytest.param("tag", id="tag-byte"),
    pytest.param("key", id="other-key"),
    pytest.param("short", id="truncated"),
]


@pytest.mark.parametrize("what", TAMPER)
def test_open_rejects_tampering(what: str) -> None:
    s = SendKeys(KEY, now=0.0)
    h, body = seal(s, 7, b"secret")
    r = ReceiveKeys(OTHER_KEY if what == "key" else KEY)
    pn, conn = 7, CONN
    if what == "pn":
        pn = 8
    elif what == "conn":
        conn = CONN + 1
    elif what == "header":
        h = h[:15] + bytes([h[15] ^ 1])
    elif what == "body":
        body = bytes([body[0] ^ 0x80]) + body[1:]
    elif what == "tag":
        body = body[:-1] + bytes([body[-1] ^ 1])
    elif what == "short":
        body = body[:-1]
    assert r.open(conn, pn, 0, h, body) is None
    assert r.phase == 0


# --- key update ---------------------------------------------------------------------------


def test_update_uses_rekeyed_key_and_flips_phase() -> None:
    s = SendKeys(KEY, now=0.0)
    seal(s, 1)
    s.update(now=50.0)
    assert s.phase == 1
    assert s.packets_under_key == 0
    h, body = seal(s, 2)
    assert AESGCM(ref_rekey(KEY)).decrypt(ref_nonce(CONN, 2), body, h) == b"hello"
    with pytest.raises(InvalidTag):
        AESGCM(KEY).decrypt(ref_nonce(CONN, 2), body, h)
    s.update(now=70.0)
    assert s.phase == 0
    h, body = seal(s, 3)
    assert AESGCM(ref_rekey(ref_rekey(KEY))).decrypt(ref_nonce(CONN, 3), body, h) == b"hello"


def test_receiver_follows_key_update_only_on_commit() -> None:
    s, r = SendKeys(KEY, now=0.0), ReceiveKeys(KEY)
    for pn in (1, 2, 3):
        h, body = seal(s, pn)
        assert r.open(CONN, pn, 0, h, body) == (b"hello", False)
    s.update(now=50.0)
    h4, b4 = seal(s, 4)
    assert r.open(CONN, 4, 1, h4, b4) == (b"hello", True)
    # open() changes nothing: the phase did not move, and it says "moves" again
    assert r.phase == 0
    assert r.open(CONN, 4, 1, h4, b4) == (b"hello", True)
    r.commit_update(4, now=50.1, prev_lifetime=0.75)
    assert r.phase == 1
    assert r.first_pn_current == 4
    assert r.open(CONN, 4, 1, h4, b4) == (b"hello", False)
    h5, b5 = seal(s, 5)
    assert r.open(CONN, 5, 1, h5, b5) == (b"hello", False)
    # the receiver's next key is now Rekey(Rekey(KEY)): a second update works
    s.update(now=70.0)
    h9, b9 = seal(s, 9)
    assert r.open(CONN, 9, 0, h9, b9) == (b"hello", True)
    r.commit_update(9, now=70.0, prev_lifetime=0.75)
    assert r.phase == 0
    assert r.first_pn_current == 9


def test_late_old_phase_packet_uses_previous_key_until_expiry() -> None:
    s, r = SendKeys(KEY, now=0.0), ReceiveKeys(KEY)
    h1, b1 = seal(s, 1)
    h2, b2 = seal(s, 2)  # delayed in the network
    h3, b3 = seal(s, 3)
    assert r.open(CONN, 1, 0, h1, b1) is not None
    s.update(now=50.0)
    h4, b4 = seal(s, 4)
    assert r.open(CONN, 4, 1, h4, b4) == (b"hello", True)
    r.commit_update(4, now=50.0, prev_lifetime=0.75)
    # phase 0 now means "previous" for pn below 4
    assert r.open(CONN, 2, 0, h2, b2) == (b"hello", False)
    assert r.open(CONN, 3, 0, h3, b3) == (b"hello", False)
    assert r.phase == 1
    # not yet expired
    r.expire_previous(50.7)
    assert r.open(CONN, 3, 0, h3, b3) == (b"hello", False)
    r.expire_previous(50.75)
    assert r.open(CONN, 2, 0, h2, b2) is None
    assert r.open(CONN, 3, 0, h3, b3) is None
    assert r.phase == 1
    # current traffic still fine
    h5, b5 = seal(s, 5)
    assert r.open(CONN, 5, 1, h5, b5) == (b"hello", False)


def test_old_phase_packet_at_or_above_first_pn_current_is_not_previous() -> None:
    """A phase-0 packet with pn >= first_pn_current must be a next-key packet, not an old one."""
    old = SendKeys(KEY, now=0.0)
    s, r = SendKeys(KEY, now=0.0), ReceiveKeys(KEY)
    s.update(now=50.0)
    h4, b4 = seal(s, 4)
    assert r.open(CONN, 4, 1, h4, b4) is not None
    r.commit_update(4, now=50.0, prev_lifetime=10.0)
    # sealed under the old key with a pn at/after the update: not accepted
    for pn in (4, 5, 100):
        h, body = seal(old, pn)
        assert r.open(CONN, pn, 0, h, body) is None
    assert r.phase == 1


Forge = Callable[[bytes, bytes], tuple[bytes, bytes]]

FORGED = [
    pytest.param(lambda h, b: (h, b[:-1] + bytes([b[-1] ^ 1])), id="bad-tag"),
    pytest.param(lambda h, b: (h, bytes(len(b))), id="zeros"),
    pytest.param(lambda h, b: (h[:2] + bytes([h[2] ^ 1]) + h[3:], b), id="header-changed"),
]


@pytest.mark.parametrize("forge", FORGED)
def test_forged_other_phase_packet_does_not_move(forge: Forge) -> None:
    s, r = SendKeys(KEY, now=0.0), ReceiveKeys(KEY)
    h1, b1 = seal(s, 1)
    s.update(now=50.0)
    h2, b2 = seal(s, 2)
    fh, fb = forge(h2, b2)
    assert r.open(CONN, 2, 1, fh, fb) is None
    assert r.phase == 0
    assert r.first_pn_current == 0
    # current key untouched, and the genuine packet still moves the phase
    assert r.open(CONN, 1, 0, h1, b1) == (b"hello", False)
    assert r.open(CONN, 2, 1, h2, b2) == (b"hello", True)


def test_packet_under_a_key_two_updates_ahead_does_not_open() -> None:
    s, r = SendKeys(KEY, now=0.0), ReceiveKeys(KEY)
    s.update(now=50.0)
    s.update(now=70.0)  # phase 0 again, key Rekey(Rekey(KEY))
    h, body = seal(s, 3)
    assert r.open(CONN, 3, 0, h, body) is None
    assert r.open(CONN, 3, 1, h, body) is None


# --- when to update ----------------------------------------------------------------------

DUE = [
    # (packets sealed, now, expected) with a fresh SendKeys made at t=0, thresholds 3 / 120 s
    pytest.param(0, 0.0, False, id="fresh"),
    pytest.param(2, 0.0, False, id="below-packets"),
    pytest.param(3, 0.0, True, id="at-packets"),
    pytest.param(4, 0.0, True, id="above-packets"),
    pytest.param(0, 119.5, False, id="below-age"),
    pytest.param(0, 120.0, True, id="at-age"),
    pytest.param(3, 1.0, True, id="no-min-interval-before-first-update"),
]


@pytest.mark.parametrize(("sealed", "now", "due"), DUE)
def test_due(sealed: int, now: float, due: bool) -> None:
    s = SendKeys(KEY, now=0.0)
    for pn in range(1, sealed + 1):
        seal(s, pn)
    assert s.due(now, 3, 120.0, MIN_INTERVAL) is due


DUE_AFTER_UPDATE = [
    # update at t=50; (packets sealed after it, now, max_age, expected)
    pytest.param(3, 55.0, 120.0, False, id="packets-but-min-interval"),
    pytest.param(3, 59.9, 120.0, False, id="packets-just-inside-min-interval"),
    pytest.param(3, 60.0, 120.0, True, id="packets-at-min-interval"),
    pytest.param(2, 60.0, 120.0, False, id="min-interval-over-nothing-due"),
    pytest.param(0, 55.0, 1.0, False, id="age-but-min-interval"),
    pytest.param(0, 60.0, 1.0, True, id="age-at-min-interval"),
    pytest.param(0, 169.9, 120.0, False, id="age-below"),
    pytest.param(0, 170.0, 120.0, True, id="age-from-update"),
]


@pytest.mark.parametrize(("sealed", "now", "max_age", "due"), DUE_AFTER_UPDATE)
def test_due_after_update(sealed: int, now: float, max_age: float, due: bool) -> None:
    s = SendKeys(KEY, now=0.0)
    for pn in range(1, 6):
        seal(s, pn)
    s.update(now=50.0)
    for pn in range(6, 6 + sealed):
        seal(s, pn)
    assert s.due(now, 3, max_age, MIN_INTERVAL) is due


def test_due_with_spec_defaults() -> None:
    s = SendKeys(KEY, now=1000.0)
    assert not s.due(1000.0 + AGE - 0.5, PACKETS, AGE, MIN_INTERVAL)
    assert s.due(1000.0 + AGE, PACKETS, AGE, MIN_INTERVAL)
    s.update(now=1000.0 + AGE)
    assert not s.due(1000.0 + AGE + 1.0, PACKETS, AGE, MIN_INTERVAL)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**62 - 1), st.binary(max_size=64)),
                min_size=1, max_size=8), st.booleans())
def test_round_trip_property(packets: list[tuple[int, bytes]], update: bool) -> None:
    s, r = SendKeys(KEY, now=0.0), ReceiveKeys(KEY)
    if update:
        s.update(now=1.0)
    for pn, pt in packets:
        h, body = seal(s, pn, pt)
        key = ref_rekey(KEY) if update else KEY
        assert AESGCM(key).decrypt(ref_nonce(CONN, pn), body, h) == pt
        assert r.open(CONN, pn, s.phase, h, body) == (pt, update)
