"""aioquic baselines for ``intentra bench`` (optional extra: ``pip install 'intentra[bench]'``).

QUIC is what a Python user would otherwise pick for encrypted, authenticated
UDP: REALTIME maps to DATAGRAM frames (RFC 9221), RELIABLE to one stream, and
its handshake (TLS 1.3) to ours. Messages are the same ``size`` bytes with the
same timestamp and sequence head as the intentra roles. On the stream, messages
are length-free fixed-size records, so the receiver cuts them by ``size``.

Two private attributes of aioquic are read for backpressure, since aioquic
queues without bound otherwise: ``QuicConnection._datagrams_pending`` and the
stream sender's ``_buffer``. Both are checked with ``getattr`` defaults.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from intentra.bench.proto import Json, reply
from intentra.bench.roles import (
    STAMP,
    Counter,
    commands,
    counting_server,
    cpu_seconds,
    payload,
    rss_kib,
    run_async,
)

ALPN = ["intentra-bench"]
PENDING_DATAGRAMS = 256
"""Most DATAGRAM frames the blaster leaves queued inside aioquic."""
STREAM_BUFFER = 1 << 20
"""Most unacknowledged stream bytes the blaster leaves queued inside aioquic."""


def _certificate(directory: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _configuration(client: bool) -> QuicConfiguration:
    config = QuicConfiguration(is_client=client, alpn_protocols=ALPN,
                               max_datagram_frame_size=65536, idle_timeout=60.0)
    if client:
        config.verify_mode = ssl.CERT_NONE
    return config


def quic_server(args: Json) -> None:
    size = int(args.get("size", 128))
    counter = Counter()
    handshakes = [0]

    class Server(QuicConnectionProtocol):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self._partial = bytearray()

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, DatagramFrameReceived):
                counter.see(self, event.data, time.monotonic_ns())
            elif isinstance(event, StreamDataReceived):
                data = self._partial
                data += event.data
                now = time.monotonic_ns()
                whole = len(data) - len(data) % size
                for offset in range(0, whole, size):
                    counter.see(self, memoryview(data)[offset:offset + size], now)
                del data[:whole]
            elif isinstance(event, HandshakeCompleted):
                handshakes[0] += 1

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            config = _configuration(client=False)
            config.load_cert_chain(*_certificate(Path(tmp)))
            host, port = args.get("bind", "127.0.0.1:0").rsplit(":", 1)
            server = await serve(host, int(port), configuration=config, create_protocol=Server)
            transport = server._transport  # aioquic keeps it private; we need port 0's pick
            if transport is None:
                raise RuntimeError("aioquic server has no transport")
            sock = transport.get_extra_info("socket")
            reply(ready=True, port=sock.getsockname()[1], key="", rss_kib=rss_kib())

            def reset_handshakes() -> None:
                handshakes[0] = 0

            def extra(stats: Json) -> None:
                stats["handshakes"] = handshakes[0]

            await commands(counting_server(counter, reset_handshakes, extra))
            server.close()

    run_async(main)


def quic_client(args: Json) -> None:
    """One QUIC connection blasting DATAGRAM frames or one stream, or a handshake loop."""
    host, port = args["target"].rsplit(":", 1)
    size = int(args.get("size", 128))

    async def blast(duration: float, intent: str) -> Json:
        config = _configuration(client=True)
        async with connect(host, int(port), configuration=config) as client:
            quic = client._quic
            buf = payload(size)
            seq = 0
            sent = 0
            cpu0 = cpu_seconds()
            start = time.monotonic()
            stream_id = quic.get_next_available_stream_id()
            while time.monotonic() - start < duration:
                if intent == "realtime":
                    pending = getattr(quic, "_datagrams_pending", ())
                    if len(pending) < PENDING_DATAGRAMS:
                        for _ in range(64):
                            STAMP.pack_into(buf, 0, time.monotonic_ns(), seq)
                            seq += 1
                            quic.send_datagram_frame(bytes(buf))
                        sent += 64
                else:
                    stream = quic._streams.get(stream_id)
                    queued = len(getattr(getattr(stream, "sender", None), "_buffer", b""))
                    if queued < STREAM_BUFFER:
                        chunk = bytearray()
                        for _ in range(64):
                            STAMP.pack_into(buf, 0, time.monotonic_ns(), seq)
                            seq += 1
                            chunk += buf
                        quic.send_stream_data(stream_id, bytes(chunk))
                        sent += 64
                client.transmit()
                await asyncio.sleep(0)
            seconds = time.monotonic() - start
            await asyncio.sleep(0.2)  # let the last frames land before closing
            return {"sent": sent, "dropped": 0, "seconds": seconds, "cpu": cpu_seconds() - cpu0}

    async def bulk(duration: float) -> Json:
        """``size``-byte messages on one stream, one after the other, for ``duration``;
        the counterpart of the intentra generator's ``bulk`` (the same bytes moved)."""
        config = _configuration(client=True)
        async with connect(host, int(port), configuration=config) as client:
            quic = client._quic
            buf = payload(size)
            seq = sent = 0
            cpu0 = cpu_seconds()
            start = time.monotonic()
            stream_id = quic.get_next_available_stream_id()
            while time.monotonic() - start < duration:
                stream = quic._streams.get(stream_id)
                queued = len(getattr(getattr(stream, "sender", None), "_buffer", b""))
                if queued < max(STREAM_BUFFER, size):
                    STAMP.pack_into(buf, 0, time.monotonic_ns(), seq)
                    seq += 1
                    quic.send_stream_data(stream_id, bytes(buf))
                    sent += 1
                client.transmit()
                await asyncio.sleep(0.0005 if queued >= STREAM_BUFFER else 0)
            seconds = time.monotonic() - start
            await asyncio.sleep(0.2)
            return {"sent": sent, "dropped": 0, "seconds": seconds, "cpu": cpu_seconds() - cpu0}

    async def handshakes(duration: float, concurrency: int) -> Json:
        done = failed = 0
        cpu0 = cpu_seconds()
        start = time.monotonic()

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() - start < duration:
                try:
                    async with connect(host, int(port), configuration=_configuration(True),
                                       wait_connected=True) as client:
                        client.close()
                    done += 1
                except (ConnectionError, TimeoutError, OSError):
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"handshakes": done, "failed": failed, "seconds": time.monotonic() - start,
                "cpu": cpu_seconds() - cpu0}

    async def main() -> None:
        reply(ready=True, connect_seconds=0.0, rss_kib=rss_kib())

        async def handle(command: Json) -> bool:
            cmd = command["cmd"]
            if cmd == "quit":
                return False
            if cmd == "blast":
                reply(**await blast(float(command["duration"]), command.get("intent", "realtime")))
            elif cmd == "bulk":
                reply(**await bulk(float(command["duration"])))
            elif cmd == "handshakes":
                reply(**await handshakes(float(command["duration"]),
                                         int(command.get("concurrency", 8))))
            else:
                reply(error=f"unknown command {cmd!r}")
            return True

        await commands(handle)

    run_async(main)


ROLES = {"quic-server": quic_server, "quic-client": quic_client}
