"""Adversarial: a forger who knows a live conn_id floods the session (issue 9 item 4).

The conn_id is in clear in every header, so anyone who saw one packet (or guessed)
can aim well-formed forgeries at the session, from anywhere, at any rate. Before
the fix they took tokens from the session's only bucket, before AEAD: at 100,000
forged packets/s the genuine packets were refused with them and the session
died. The rule now (docs/security.md, "Forged floods"): the bucket before
cryptography bounds the AEAD opens a session can cost, with separate
allowances for packets that authenticate and for opens that fail (one for the
session's own address, one for every other), so forgeries spend only theirs.
"""

from __future__ import annotations

import random
from typing import Final

import pytest

from corelink import Link
from intentra.constants import Intent, PacketType
from intentra.core.wire import pack_header
from intentra.events import Address

FORGER: Final[Address] = ("198.51.100.99", 31337)
RATE: Final = 100_000          # forged packets per second
DURATION: Final = 15.0         # seconds of flood, fake clock
TICK: Final = 0.001            # the forger's batches, one per millisecond
APP_HZ: Final = 50             # each direction's application rate, per intent


def forged_data(rng: random.Random, conn_id: int, pn_hint: int) -> bytes:
    """A DATA packet that passes every check of SPEC section 3 and a replay pre-check."""
    intent = rng.choice([Intent.RELIABLE, Intent.REALTIME])
    plen = rng.randint(7, 200)
    header = pack_header(PacketType.DATA, intent, rng.randrange(8), 0, plen, conn_id,
                         (pn_hint + rng.randint(1, 64)) & 0xFFFFFFFF, rng.getrandbits(32))
    return header + rng.randbytes(plen + 16)


@pytest.mark.serial
def test_100000_forged_packets_a_second_do_not_starve_or_close_a_session() -> None:
    link = Link(41)
    a, b = link.add("a"), link.add("b")
    cid_a, cid_b = link.establish(a, b)
    link.advance(0.2)
    rng = random.Random("flood")
    ea, eb = a.endpoint, b.endpoint
    per_tick = int(RATE * TICK)
    sent_rel: list[bytes] = []
    sent_rt: list[bytes] = []
    start = link.now
    next_msg = start
    i = 0
    t = start
    forged = 0
    while t < start + DURATION:
        t += TICK
        link.run(t)
        if link.now >= next_msg and cid_a in ea.sessions:
            for intent, log in ((Intent.RELIABLE, sent_rel), (Intent.REALTIME, sent_rt)):
                data = b"%s-%d" % (intent.name.encode(), i)
                link.send(a, cid_a, data, intent)
                log.append(data)
            i += 1
            next_msg += 1.0 / APP_HZ
            link.pump(a)
        session = eb.sessions.get(cid_b)
        if session is None:
            break
        hint = session.replay.highest
        eb.receive_datagrams([(forged_data(rng, cid_b, hint), FORGER)
                              for _ in range(per_tick)], link.now)
        forged += per_tick
        link.pump(b)
    link.advance(2.0)
    assert forged >= RATE * DURATION * 0.99
    assert cid_b in eb.sessions and cid_a in ea.sessions, "the flood closed the session"
    got_rel = b.payloads(Intent.RELIABLE)
    got_rt = set(b.payloads(Intent.REALTIME))
    rt_share = sum(1 for m in sent_rt if m in got_rt) / len(sent_rt)
    rel_share = len(got_rel) / len(sent_rel)
    print(f"forged flood: RELIABLE {rel_share:.1%}, REALTIME {rt_share:.1%} delivered, "
          f"{eb.stats.packets_dropped_crypto} AEAD failures")
    assert got_rel == sent_rel[:len(got_rel)], "RELIABLE out of order or duplicated"
    assert rel_share >= 0.99, f"only {rel_share:.1%} of RELIABLE delivered"
    assert rt_share >= 0.99, f"only {rt_share:.1%} of REALTIME delivered"
    # The opens the flood bought are bounded by the failed-open allowance.
    cfg = eb.config
    assert eb.stats.packets_dropped_crypto <= (cfg.failed_open_burst
                                               + cfg.failed_open_pps * (DURATION + 3))
    assert eb.sessions[cid_b].strikes == 0
