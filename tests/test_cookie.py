"""Stateless handshake cookies (docs/protocol.md section 5), recomputed here with hmac/hashlib.

cookie   = HMAC-SHA256(secret_n, ip || port)[:16]
secret_n = HMAC-SHA256(master, "intentra cookie" || n), n = floor(unix_time / 120) as 8 bytes
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentra.core.cookie import CookieJar, address_bytes

ROTATION = 120.0  # COOKIE_ROTATION (docs/protocol.md section 2)
MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))
T = 1000 * ROTATION + 5.0  # epoch n = 1000, 5 s into it

V4 = ("192.0.2.1", 4433)
V4_BYTES = bytes([192, 0, 2, 1, 0x11, 0x51])
V6 = ("2001:db8::1", 443, 0, 0)
V6_BYTES = bytes.fromhex("20010db8000000000000000000000001" "01bb")


def ref_cookie(master: bytes, n: int, ip_port: bytes) -> bytes:
    secret = hmac.new(master, b"intentra cookie" + n.to_bytes(8, "big"), hashlib.sha256).digest()
    return hmac.new(secret, ip_port, hashlib.sha256).digest()[:16]


ADDRESSES = [
    pytest.param(V4, V4_BYTES, id="v4"),
    pytest.param(("10.0.0.255", 0), bytes([10, 0, 0, 255, 0, 0]), id="v4-port0"),
    pytest.param(("255.255.255.255", 65535), b"\xff" * 6, id="v4-max"),
    pytest.param(V6, V6_BYTES, id="v6-4tuple"),
    pytest.param(("::1", 8080), bytes(15) + b"\x01" + b"\x1f\x90", id="v6-loopback"),
    pytest.param(("::ffff:192.0.2.1", 1), bytes(10) + b"\xff\xff\xc0\x00\x02\x01\x00\x01",
                 id="v6-mapped-v4"),
]


@pytest.mark.parametrize(("addr", "expected"), ADDRESSES)
def test_address_bytes(addr: tuple[Any, ...], expected: bytes) -> None:
    assert address_bytes(addr) == expected


@pytest.mark.parametrize("addr", [
    pytest.param(("localhost", 80), id="hostname"),
    pytest.param(("/tmp/intentra.sock",), id="unix-path-tuple"),
    pytest.param(("", 80), id="empty-host"),
    pytest.param(("192.0.2.300", 80), id="bad-v4"),
    pytest.param(("192.0.2.1",), id="no-port"),
    pytest.param(("192.0.2.1", 65536), id="port-too-big"),
    pytest.param(("192.0.2.1", -1), id="port-negative"),
    pytest.param(("192.0.2.1", "http"), id="port-not-number"),
    pytest.param((None, 80), id="host-none"),
    pytest.param((), id="empty-tuple"),
])
def test_address_bytes_non_ip(addr: tuple[Any, ...]) -> None:
    assert address_bytes(addr) is None


@pytest.mark.parametrize(("ip_port"), [V4_BYTES, V6_BYTES])
@pytest.mark.parametrize("unix_time", [T, 0.0, 119.999, 120.0, 1_700_000_000.25])
def test_make_matches_formula(ip_port: bytes, unix_time: float) -> None:
    jar = CookieJar(MASTER, ROTATION)
    n = int(unix_time // 120)
    cookie = jar.make(ip_port, unix_time)
    assert len(cookie) == 16
    assert cookie == ref_cookie(MASTER, n, ip_port)


def test_make_depends_on_master_and_address() -> None:
    jar = CookieJar(MASTER, ROTATION)
    c = jar.make(V4_BYTES, T)
    assert c != CookieJar(OTHER_MASTER, ROTATION).make(V4_BYTES, T)
    assert c != jar.make(V6_BYTES, T)
    assert c != jar.make(V4_BYTES[:4] + b"\x11\x52", T)
    assert c != jar.make(V4_BYTES, T + ROTATION)


VERIFY = [
    # (epoch of the cookie, verification time, accepted)
    pytest.param(1000, T, True, id="current"),
    pytest.param(999, T, True, id="previous"),
    pytest.param(998, T, False, id="two-old"),
    pytest.param(1001, T, False, id="future"),
    pytest.param(1000, 1001 * ROTATION, True, id="rotated-once-start"),
    pytest.param(1000, 1002 * ROTATION - 0.001, True, id="rotated-once-end"),
    pytest.param(1000, 1002 * ROTATION, False, id="rotated-twice"),
    pytest.param(1000, 1000 * ROTATION, True, id="epoch-start"),
    pytest.param(1000, 1000 * ROTATION - 0.001, False, id="before-its-epoch"),
]


@pytest.mark.parametrize("ip_port", [V4_BYTES, V6_BYTES])
@pytest.mark.parametrize(("n", "now", "ok"), VERIFY)
def test_verify_rotation(ip_port: bytes, n: int, now: float, ok: bool) -> None:
    jar = CookieJar(MASTER, ROTATION)
    assert jar.verify(ref_cookie(MASTER, n, ip_port), ip_port, now) is ok


def test_cookie_made_now_survives_one_rotation_only() -> None:
    jar = CookieJar(MASTER, ROTATION)
    cookie = jar.make(V4_BYTES, T)
    assert jar.verify(cookie, V4_BYTES, T)
    assert jar.verify(cookie, V4_BYTES, T + ROTATION)
    assert not jar.verify(cookie, V4_BYTES, T + 2 * ROTATION)
    # a second jar with the same master (another worker on the port) agrees
    assert CookieJar(MASTER, ROTATION).verify(cookie, V4_BYTES, T + ROTATION)


REFUSED = [
    pytest.param(V4_BYTES[:4] + b"\x11\x52", id="v4-other-port"),
    pytest.param(bytes([192, 0, 2, 2]) + V4_BYTES[4:], id="v4-other-ip"),
    pytest.param(V6_BYTES[:16] + b"\x01\xbc", id="v6-other-port"),
    pytest.param(V6_BYTES[:15] + b"\x02" + V6_BYTES[16:], id="v6-other-ip"),
    pytest.param(b"", id="empty-address"),
]


@pytest.mark.parametrize("cookie_for", [V4_BYTES, V6_BYTES])
@pytest.mark.parametrize("other", REFUSED)
def test_verify_refuses_other_address(cookie_for: bytes, other: bytes) -> None:
    jar = CookieJar(MASTER, ROTATION)
    for n in (1000, 999):
        cookie = ref_cookie(MASTER, n, cookie_for)
        assert jar.verify(cookie, cookie_for, T)
        assert not jar.verify(cookie, other, T)


@pytest.mark.parametrize("n", [1000, 999])
def test_verify_refuses_cookie_of_other_master(n: int) -> None:
    jar = CookieJar(MASTER, ROTATION)
    assert not jar.verify(ref_cookie(OTHER_MASTER, n, V4_BYTES), V4_BYTES, T)
    assert not jar.verify(CookieJar(OTHER_MASTER, ROTATION).make(V4_BYTES, T), V4_BYTES, T)


@pytest.mark.parametrize("cookie", [
    pytest.param(bytes(16), id="zero"),
    pytest.param(b"", id="empty"),
    pytest.param(ref_cookie(MASTER, 1000, V4_BYTES)[:15], id="truncated"),
    pytest.param(ref_cookie(MASTER, 1000, V4_BYTES) + b"\x00", id="longer"),
    pytest.param(bytes([ref_cookie(MASTER, 1000, V4_BYTES)[0] ^ 1])
                 + ref_cookie(MASTER, 1000, V4_BYTES)[1:], id="one-bit-flipped"),
])
def test_verify_refuses_bad_cookie_bytes(cookie: bytes) -> None:
    assert not CookieJar(MASTER, ROTATION).verify(cookie, V4_BYTES, T)


def test_master_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32"):
        CookieJar(bytes(31), ROTATION)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, 10_000), min_size=1, max_size=20), st.binary(min_size=6,
                                                                           max_size=18))
def test_verify_over_many_epochs(epochs: list[int], ip_port: bytes) -> None:
    """The secret cache never changes answers, whatever order epochs are visited in."""
    jar = CookieJar(MASTER, ROTATION)
    for n in epochs:
        now = n * ROTATION + 1.0
        assert jar.make(ip_port, now) == ref_cookie(MASTER, n, ip_port)
        assert jar.verify(ref_cookie(MASTER, n - 1, ip_port), ip_port, now)
        assert not jar.verify(ref_cookie(MASTER, n - 2, ip_port), ip_port, now)
