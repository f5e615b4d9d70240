"""Restarts with real processes killed by SIGKILL (no CLOSE ever leaves them)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

from aiohelp import run, step, wait_until
from intentra import CloseReason, EndpointConfig, Intent, PeerEvent, PrivateKey, Transport


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "intentra", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


def test_killed_client_process_restarted_with_the_same_key_replaces_its_session(
        tmp_path: Path) -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        client_key = tmp_path / "client.key"
        PrivateKey.generate().save(client_key)
        async with await Transport.bind("127.0.0.1:0", server_key) as server:
            host, port = server.local_address
            common = ["send", "--to", f"{host}:{port}", "--key", str(client_key),
                      "--server-key", server_key.public_key.to_base64()]
            first = await spawn(*common, "--wait", "30", "before")
            try:
                msg = await step(server.receive(), 15)
                assert msg.data == b"before"
                old = msg.peer
            finally:
                await kill(first)  # SIGKILL: the server hears nothing
            assert old.close_reason is None

            second = await spawn(*common, "--wait", "0.5", "after")
            try:
                msg = await step(server.receive(), 15)
                assert msg.data == b"after"
                assert msg.peer is not old and msg.peer.public_key == old.public_key
                assert old.close_reason is CloseReason.REPLACED
                assert await step(second.wait(), 15) == 0
            finally:
                await kill(second)

    run(body(), 60)


def test_killed_responder_process_restarted_on_its_port_is_found_again(tmp_path: Path) -> None:
    async def body() -> None:
        key_file = tmp_path / "server.key"
        key = PrivateKey.generate()
        key.save(key_file)

        async def serve(port: int) -> tuple[asyncio.subprocess.Process, int]:
            proc = await spawn("serve", "--bind", f"127.0.0.1:{port}", "--key", str(key_file),
                               "--echo")
            assert proc.stdout is not None
            while True:
                line = (await step(proc.stdout.readline(), 15)).decode()
                assert line, "the server exited before announcing itself"
                if m := re.match(r"intentra serving on \S+:(\d+)", line):
                    return proc, int(m.group(1))

        server, port = await serve(0)
        # The keepalive horizon: 2 x 0.2 + 0.5 = 0.9 s of silence.
        config = EndpointConfig(keepalive_interval=0.2, max_rto=0.5, handshake_timeout=2.0)
        client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=config)
        try:
            peer = await step(client.connect(("127.0.0.1", port), key.public_key,
                                             reconnect=True))
            await peer.send(b"one", Intent.RELIABLE)
            assert (await step(client.receive())).data == b"one"
            await wait_until(lambda: client.unacked_reliable(peer) == 0)

            await kill(server)
            events: list[PeerEvent] = []
            while not events or events[-1].kind != "disconnected":
                events.append(await step(client.peer_event()))
            server, _ = await serve(port)  # a new process, same key, same port

            while events[-1].kind != "reconnected":
                events.append(await step(client.peer_event(), 20))
            assert events[-1].peer is peer and peer.connected
            await peer.send(b"two", Intent.RELIABLE)
            assert (await step(client.receive())).data == b"two"
        finally:
            await client.close()
            await kill(server)

    run(body(), 60)
