"""A receiver catches up with a sender two or more key updates ahead
(departure from docs/protocol.md 4).

docs/protocol.md 4 has the receiver hold only the current and the next key. A sender
whose packets under its next key were all lost (a black-holed direction) can
update again after KEY_UPDATE_MIN_INTERVAL, and would then never be understood
again. intentra's receiver also tries up to ``key_update_catch_up`` keys
further, but only after a silence of KEY_UPDATE_MIN_INTERVAL, so normal traffic
and forgers of a live session pay nothing extra.
"""

from __future__ import annotations

import os

import pytest

from corelink import Link
from intentra.config import EndpointConfig
from intentra.constants import Intent, PacketType
from intentra.core.aead import ReceiveKeys, SendKeys
from intentra.core.wire import pack_header

CONN = 0x01020304


def sealed(sender: SendKeys, pn: int, text: bytes = b"hi") -> tuple[bytes, bytes]:
    header = pack_header(PacketType.DATA, Intent.REALTIME, 0, sender.phase, len(text), CONN,
                         pn, 0)
    return header, sender.seal(CONN, pn, header, text)


@pytest.mark.parametrize("ahead", [2, 3, 4])
def test_receiver_opens_and_commits_a_key_several_updates_ahead(ahead: int) -> None:
    key = os.urandom(32)
    sender, receiver = SendKeys(key, 0.0), ReceiveKeys(key)
    for _ in range(ahead):
        sender.update(0.0)
    header, body = sealed(sender, 10)
    assert receiver.open(CONN, 10, header[1] & 1, header, body) is None  # the protocol alone: stuck
    opened = receiver.open(CONN, 10, header[1] & 1, header, body, catch_up=3)
    assert opened == (b"hi", ahead)
    receiver.commit_update(10, now=1.0, prev_lifetime=1.0, steps=ahead)
    assert receiver.phase == sender.phase
    # From now on the ordinary path opens the sender's packets, and its next update too.
    header, body = sealed(sender, 11)
    assert receiver.open(CONN, 11, sender.phase, header, body) == (b"hi", 0)
    sender.update(2.0)
    header, body = sealed(sender, 12)
    assert receiver.open(CONN, 12, sender.phase, header, body) == (b"hi", 1)


def test_catch_up_is_bounded() -> None:
    key = os.urandom(32)
    sender, receiver = SendKeys(key, 0.0), ReceiveKeys(key)
    for _ in range(5):  # beyond 1 + catch_up
        sender.update(0.0)
    header, body = sealed(sender, 10)
    assert receiver.open(CONN, 10, sender.phase, header, body, catch_up=3) is None


def test_after_a_jump_the_key_just_before_is_the_previous_key() -> None:
    key = os.urandom(32)
    sender, receiver = SendKeys(key, 0.0), ReceiveKeys(key)
    sender.update(0.0)
    late = sealed(sender, 5)  # under k+1, delayed
    sender.update(0.0)
    header, body = sealed(sender, 9)  # under k+2
    assert receiver.open(CONN, 9, sender.phase, header, body, catch_up=3) == (b"hi", 2)
    receiver.commit_update(9, now=1.0, prev_lifetime=1.0, steps=2)
    assert receiver.open(CONN, 5, late[0][1] & 1, *late) == (b"hi", 0)


def test_a_forgery_never_moves_the_keys_even_with_catch_up() -> None:
    key = os.urandom(32)
    receiver = ReceiveKeys(key)
    forged_header = pack_header(PacketType.DATA, Intent.REALTIME, 0, 0, 2, CONN, 3, 0)
    for phase in (0, 1):
        header = bytearray(forged_header)
        header[1] |= phase
        assert receiver.open(CONN, 3, phase, bytes(header), os.urandom(18), catch_up=8) is None
    assert receiver.phase == 0 and receiver.first_pn_current == 0


def test_a_blackholed_direction_across_several_updates_recovers() -> None:
    """End to end: a -> b black-holed while a keeps sending and updating, then healed."""
    # One update at most every 0.25 s: over the 0.8 s blackhole, 3 or 4 updates,
    # within the default catch-up (the next key and 3 beyond).
    config = EndpointConfig(key_update_packets=4, key_update_min_interval=0.25,
                            idle_timeout=30.0)
    link = Link(seed=3)
    a = link.add("a", config)
    b = link.add("b", config)
    cid_a, _ = link.establish(a, b)
    forward = link.path(a, b)
    forward.loss = 1.0
    for i in range(40):  # many packets and at least three updates while nothing arrives
        link.send(a, cid_a, b"lost-%d" % i, Intent.REALTIME)
        link.advance(0.02)
    assert a.endpoint.stats.key_updates_send >= 3
    forward.loss = 0.0
    link.advance(0.3)  # b's silence now exceeds key_update_min_interval
    for i in range(5):
        link.send(a, cid_a, b"after-%d" % i, Intent.REALTIME)
        link.advance(0.01)
    assert b.payloads(Intent.REALTIME) == [b"after-%d" % i for i in range(5)]
    assert b.endpoint.stats.key_updates_receive >= 3


def test_with_catch_up_disabled_the_same_session_stays_deaf() -> None:
    """The docs/protocol.md's behaviour, kept as a setting: it proves the scenario above is real."""
    config = EndpointConfig(key_update_packets=4, key_update_min_interval=0.25,
                            idle_timeout=30.0, key_update_catch_up=0)
    link = Link(seed=3)
    a = link.add("a", config)
    b = link.add("b", config)
    cid_a, _ = link.establish(a, b)
    link.path(a, b).loss = 1.0
    for i in range(40):
        link.send(a, cid_a, b"lost-%d" % i, Intent.REALTIME)
        link.advance(0.02)
    assert a.endpoint.stats.key_updates_send >= 3
    link.path(a, b).loss = 0.0
    link.advance(0.3)
    for i in range(5):
        link.send(a, cid_a, b"after-%d" % i, Intent.REALTIME)
        link.advance(0.01)
    assert b.payloads(Intent.REALTIME) == []
    assert b.endpoint.stats.packets_dropped_crypto >= 5
