"""Peers of one "machine" of tests/test_bus_netns.py, run inside its network namespace.

``python busnet_peers.py 'JSON'`` with ``{"bind": HOST, "hub": "HOST:PORT", "key": B64,
"peers": N, "messages": K}``: N peers connect to the hub, print one JSON line with
their public keys, wait for a line ``{"expected": E}`` on stdin, send K RELIABLE and
K REALTIME messages each (``R k`` / ``T k``), receive until each peer has E RELIABLE
messages (or 20 s pass), and print one JSON line: per peer, per origin key, the
RELIABLE ``k`` in arrival order, and the REALTIME count.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from intentra import Intent, PrivateKey, PublicKey, Transport
from intentra.envelope import unwrap


async def main(args: dict[str, object]) -> None:
    key = PublicKey.from_base64(str(args["key"]))
    count, messages = int(str(args["peers"])), int(str(args["messages"]))
    transports = [await Transport.bind(f"{args['bind']}:0", PrivateKey.generate())
                  for _ in range(count)]
    peers = [await t.connect(str(args["hub"]), key) for t in transports]
    print(json.dumps({"keys": [t.public_key.to_base64() for t in transports]}), flush=True)
    loop = asyncio.get_running_loop()
    expected = int(json.loads(await loop.run_in_executor(None, sys.stdin.readline))["expected"])
    reliable: list[dict[str, list[int]]] = [{} for _ in range(count)]
    realtime = [0] * count

    async def receive(i: int) -> None:
        async for msg in transports[i]:
            origin, data = unwrap(msg.data)
            _, k = data.split(b" ")
            if msg.intent is Intent.RELIABLE:
                reliable[i].setdefault(origin.to_base64(), []).append(int(k))
            else:
                realtime[i] += 1

    tasks = [asyncio.create_task(receive(i)) for i in range(count)]
    for k in range(messages):
        for peer in peers:
            peer.send_nowait(b"R %d" % k, Intent.RELIABLE)
            peer.send_nowait(b"T %d" % k, Intent.REALTIME)
        await asyncio.sleep(0.02)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and \
            sum(len(v) for per in reliable for v in per.values()) < expected * count:
        await asyncio.sleep(0.05)
    print(json.dumps({"reliable": reliable, "realtime": realtime}), flush=True)
    for task in tasks:
        task.cancel()
    for t in transports:
        await t.close(flush_timeout=0.5)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
