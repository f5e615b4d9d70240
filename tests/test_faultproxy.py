"""UdpProxy over real UDP sockets on 127.0.0.1: a plain echo server behind the proxy.

Everything (echo server, clients, proxy) runs in one event loop per test, under
``asyncio.run`` with an overall timeout. Clients send in small bursts and yield
between them, so the loopback socket buffers never overflow and every datagram
the proxy forwards is seen by the receiver. Timing assertions use generous bounds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from intentra.testing import Faults, UdpProxy, faultproxy, parse_duration

Address = tuple[str, int]
TEST_TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        await asyncio.wait_for(coro, TEST_TIMEOUT)

    asyncio.run(guarded())


class Endpoint:
    """A non-blocking UDP socket on the running loop that records what it receives
    (and, as an echo server, sends each datagram back to its source)."""

    def __init__(self, echo: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.address: Address = self.sock.getsockname()
        self.echo = echo
        self.got: list[bytes] = []
        self.times: list[float] = []
        self.sources: set[Address] = set()
        self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            self.got.append(data)
            self.times.append(self.loop.time())
            self.sources.add(source)
            if self.echo:
                self.sock.sendto(data, source)

    def has(self, n: int) -> Callable[[], bool]:
        """A predicate: at least ``n`` datagrams received."""
        return lambda: len(self.got) >= n

    def send(self, data: bytes, to: Address) -> None:
        self.sock.sendto(data, to)

    async def send_all(self, payloads: list[bytes], to: Address, burst: int = 50) -> None:
        for i in range(0, len(payloads), burst):
            for data in payloads[i:i + burst]:
                self.sock.sendto(data, to)
            await asyncio.sleep(0.001)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def payloads(n: int, size: int = 32) -> list[bytes]:
    """Datagram i is its 4-byte sequence number repeated to ``size`` bytes."""
    return [(i.to_bytes(4, "big") * (size // 4 + 1))[:size] for i in range(n)]


def seq(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


async def echo_through(proxy_kwargs: dict[str, Any], datagrams: list[bytes],
                       settle: float = 0.0) -> tuple[UdpProxy, Endpoint, Endpoint]:
    """Send ``datagrams`` from one client through a proxy to an echo server and
    wait until every forwarded datagram's echo has come back (or been dropped)."""
    server = Endpoint(echo=True)
    client = Endpoint()
    proxy = await UdpProxy.start(server.address, **proxy_kwargs)
    try:
        await client.send_all(datagrams, proxy.address)
        fwd, bwd = proxy.counts["forward"], proxy.counts["backward"]

        def done() -> bool:
            return (fwd["received"] == len(datagrams)
                    and proxy.held("forward") == 0 and proxy.held("backward") == 0
                    and bwd["received"] == fwd["sent"]
                    and len(client.got) == bwd["sent"])

        await wait_until(done)
        if settle:
            await asyncio.sleep(settle)
    finally:
        await proxy.close()
        server.close()
        client.close()
    return proxy, server, client


# ---------------------------------------------------------------- pass-through


def test_no_faults_passes_every_datagram_unchanged_and_in_order() -> None:
    async def main() -> None:
        sizes = [0, 1, 7, 100, 1200, 1472, 9000, 65507]
        datagrams = [bytes((i + j) % 256 for j in range(size))
                     for i, size in enumerate(sizes)] + payloads(400)
        proxy, server, client = await echo_through({}, datagrams, settle=0.02)
        assert server.got == datagrams
        assert client.got == datagrams
        n = len(datagrams)
        for direction in ("forward", "backward"):
            c = proxy.counts[direction]
            assert c["received"] == c["sent"] == n
            assert all(c[k] == 0 for k in c if k not in ("received", "sent"))
        # The target saw the proxy's upstream socket, not the client.
        assert len(server.sources) == 1
        assert client.address not in server.sources
        assert client.sources == {proxy.address}

    run(main())


def test_async_context_manager_and_close_are_idempotent() -> None:
    async def main() -> None:
        server = Endpoint(echo=True)
        client = Endpoint()
        async with await UdpProxy.start(server.address) as proxy:
            client.send(b"ping", proxy.address)
            await wait_until(lambda: client.got == [b"ping"])
            assert proxy.clients == 1
        assert proxy.clients == 0
        await proxy.close()  # again: no error
        # The listen port is free again.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(proxy.address)
        probe.close()
        server.close()
        client.close()

    run(main())


# ---------------------------------------------------------------- faults


def test_loss_drops_close_to_the_probability_and_counts_match_the_receiver() -> None:
    async def main() -> None:
        n = 2000
        datagrams = payloads(n)
        proxy, server, client = await echo_through(
            {"forward": Faults(loss=0.3), "seed": 1}, datagrams, settle=0.02)
        fwd, bwd = proxy.counts["forward"], proxy.counts["backward"]
        assert fwd["received"] == n
        assert 0.25 * n < fwd["dropped"] < 0.35 * n
        assert fwd["sent"] == n - fwd["dropped"] == len(server.got)
        assert bwd["received"] == bwd["sent"] == len(client.got) == fwd["sent"]
        assert bwd["dropped"] == 0
        # Lost, not altered: what arrives is a subset of what was sent, once each.
        assert len(set(client.got)) == len(client.got)
        assert set(client.got) <= set(datagrams)
        # Order is preserved without delay faults.
        assert [seq(d) for d in client.got] == sorted(seq(d) for d in client.got)

    run(main())


def test_same_seed_gives_the_same_faults() -> None:
    faults = Faults(loss=0.2, dup=0.1, corrupt=0.1)
    datagrams = payloads(500)
    results: list[Counter[bytes]] = []

    async def main(seed: int) -> None:
        proxy, server, _ = await echo_through({"forward": faults, "seed": seed}, datagrams)
        assert proxy.counts["forward"]["dropped"] > 0
        assert proxy.counts["forward"]["duplicated"] > 0
        assert proxy.counts["forward"]["corrupted"] > 0
        results.append(Counter(server.got))

    run(main(7))
    run(main(7))
    run(main(8))
    assert results[0] == results[1]
    assert results[0] != results[2]


def test_decisions_are_drawn_even_for_dropped_datagrams() -> None:
    # With loss 0 or 0.5, the corruption decisions for the same datagrams are the
    # same: every datagram costs a fixed number of draws whatever its fate.
    datagrams = payloads(300)
    corrupted: list[set[int]] = []

    async def main(loss: float) -> None:
        proxy, server, _ = await echo_through(
            {"forward": Faults(loss=loss, corrupt=0.3), "seed": 3}, datagrams)
        originals = set(datagrams)
        corrupted.append({i for i, d in enumerate(datagrams) if d not in server.got})
        assert proxy.counts["forward"]["corrupted"] == sum(d not in originals
                                                          for d in server.got)

    run(main(0.0))
    run(main(0.5))
    # Under loss 0.5 a datagram is missing if lost or corrupted; all those
    # corrupted without loss are missing there too.
    assert corrupted[0] <= corrupted[1]


def test_dup_produces_duplicates() -> None:
    async def main() -> None:
        n = 500
        datagrams = payloads(n)
        proxy, _server, client = await echo_through(
            {"forward": Faults(dup=0.2)}, datagrams, settle=0.02)
        dups = proxy.counts["forward"]["duplicated"]
        assert 0.1 * n < dups < 0.3 * n
        assert proxy.counts["forward"]["sent"] == n + dups
        assert len(client.got) == n + dups
        copies = Counter(client.got)
        assert set(copies) == set(datagrams)
        assert sum(1 for c in copies.values() if c == 2) == dups
        assert max(copies.values()) == 2

    run(main())


def test_jitter_reorders_and_delivers_everything() -> None:
    async def main() -> None:
        n = 200
        datagrams = payloads(n)
        proxy, _, client = await echo_through(
            {"forward": Faults(jitter=0.03)}, datagrams)
        assert sorted(client.got) == sorted(datagrams)
        order = [seq(d) for d in client.got]
        assert order != sorted(order)
        assert proxy.counts["forward"]["delayed"] == n
        assert proxy.counts["backward"]["delayed"] == 0

    run(main())


def test_reorder_holds_datagrams_back() -> None:
    async def main() -> None:
        n = 300
        datagrams = payloads(n)
        proxy, _, client = await echo_through(
            {"forward": Faults(reorder=0.2)}, datagrams)
        assert sorted(client.got) == sorted(datagrams)
        order = [seq(d) for d in client.got]
        assert order != sorted(order)
        reordered = proxy.counts["forward"]["reordered"]
        assert 0.1 * n < reordered < 0.3 * n
        # A held datagram goes out after the next one: at least one inversion
        # per reordered datagram that had a successor in the same burst.
        inversions = sum(1 for a, b in itertools.pairwise(order) if a > b)
        assert inversions > reordered // 2

    run(main())


def test_reorder_releases_a_lone_datagram_after_the_hold_limit() -> None:
    async def main() -> None:
        server = Endpoint(echo=True)
        client = Endpoint()
        async with await UdpProxy.start(server.address,
                                        forward=Faults(reorder=1.0)) as proxy:
            t0 = asyncio.get_running_loop().time()
            client.send(b"alone", proxy.address)
            await wait_until(lambda: client.got == [b"alone"], timeout=3.0)
            assert client.times[0] - t0 >= faultproxy.REORDER_MAX_HOLD * 0.9
            assert proxy.counts["forward"]["reordered"] == 1
        server.close()
        client.close()

    run(main())


def test_truncate_shortens_datagrams() -> None:
    async def main() -> None:
        n = 200
        datagrams = payloads(n, size=64)
        proxy, server, client = await echo_through(
            {"forward": Faults(truncate=1.0)}, datagrams)
        assert proxy.counts["forward"]["truncated"] == n
        assert len(client.got) == n
        assert all(len(d) < 64 for d in client.got)
        assert len({len(d) for d in client.got}) > 10  # random lengths, 0 allowed
        # Each arrives in order and is a prefix of its original.
        for sent, got in zip(datagrams, server.got, strict=True):
            assert sent.startswith(got)

    run(main())


def test_corrupt_flips_exactly_one_bit() -> None:
    async def main() -> None:
        n = 200
        datagrams = payloads(n, size=32)
        proxy, server, _ = await echo_through(
            {"forward": Faults(corrupt=1.0)}, datagrams)
        assert proxy.counts["forward"]["corrupted"] == n
        assert len(server.got) == n
        flipped_bits = set()
        for sent, got in zip(datagrams, server.got, strict=True):
            assert len(got) == len(sent)
            diff = int.from_bytes(sent, "big") ^ int.from_bytes(got, "big")
            assert diff.bit_count() == 1
            flipped_bits.add(diff.bit_length())
        assert len(flipped_bits) > 20  # the bit is random

    run(main())


def test_delay_adds_at_least_the_delay_each_way() -> None:
    async def main() -> None:
        server = Endpoint(echo=True)
        client = Endpoint()
        loop = asyncio.get_running_loop()
        async with await UdpProxy.start(server.address, forward=Faults(delay=0.03),
                                        backward=Faults(delay=0.02)) as proxy:
            for i in range(5):
                t0 = loop.time()
                client.send(b"ping%d" % i, proxy.address)
                await wait_until(client.has(i + 1), timeout=3.0)
                rtt = client.times[i] - t0
                assert 0.05 - 0.002 <= rtt < 2.0
            assert proxy.counts["forward"]["delayed"] == 5
            assert proxy.counts["backward"]["delayed"] == 5
        server.close()
        client.close()

    run(main())


def test_delay_without_jitter_keeps_the_order() -> None:
    async def main() -> None:
        datagrams = payloads(300)
        proxy, _, client = await echo_through(
            {"forward": Faults(delay=0.02), "backward": Faults(delay=0.01)}, datagrams)
        assert client.got == datagrams
        assert proxy.counts["forward"]["delayed"] == proxy.counts["backward"]["delayed"] == 300

    run(main())


def test_blackhole_drops_for_the_period_then_resumes() -> None:
    async def main() -> None:
        server = Endpoint(echo=True)
        client = Endpoint()
        loop = asyncio.get_running_loop()
        async with await UdpProxy.start(server.address) as proxy:
            client.send(b"before", proxy.address)
            await wait_until(lambda: len(client.got) == 1)
            proxy.blackhole("forward", 0.4)
            start = loop.time()
            for i in range(5):
                client.send(b"during%d" % i, proxy.address)
            await wait_until(lambda: proxy.counts["forward"]["blackholed"] == 5)
            # Keep probing until the period is over; the probes sent late in the
            # period may or may not pass, but once it is over everything does.
            await asyncio.sleep(max(0.0, start + 0.45 - loop.time()))
            assert client.got == [b"before"]
            client.send(b"after", proxy.address)
            await wait_until(lambda: client.got[-1] == b"after")
            assert proxy.counts["forward"]["blackholed"] == 5
            assert proxy.counts["forward"]["received"] == 7
            assert proxy.counts["forward"]["sent"] == 2

            # Backward: the request passes, the reply is swallowed.
            proxy.blackhole("backward", 5.0)
            client.send(b"lost reply", proxy.address)
            await wait_until(lambda: proxy.counts["backward"]["blackholed"] == 1)
            assert server.got[-1] == b"lost reply"
            assert client.got[-1] == b"after"
            proxy.blackhole("backward", 0)  # ends it
            client.send(b"again", proxy.address)
            await wait_until(lambda: client.got[-1] == b"again")
        server.close()
        client.close()

    run(main())


def test_set_faults_changes_a_direction_at_runtime() -> None:
    async def main() -> None:
        server = Endpoint(echo=True)
        client = Endpoint()
        async with await UdpProxy.start(server.address) as proxy:
            proxy.set_faults("backward", Faults(loss=1.0))
            assert proxy.faults("backward") == Faults(loss=1.0)
            await client.send_all(payloads(20), proxy.address)
            await wait_until(lambda: proxy.counts["backward"]["dropped"] == 20)
            assert client.got == []
            proxy.set_faults("backward", Faults())
            client.send(b"x", proxy.address)
            await wait_until(lambda: client.got == [b"x"])
        server.close()
        client.close()

    run(main())


def test_two_clients_get_their_own_replies_through_distinct_upstream_sockets() -> None:
    async def main() -> None:
        server = Endpoint(echo=True)
        a, b = Endpoint(), Endpoint()
        async with await UdpProxy.start(server.address) as proxy:
            for i in range(20):
                a.send(b"A%d" % i, proxy.address)
                b.send(b"B%d" % i, proxy.address)
            await wait_until(lambda: len(a.got) == 20 and len(b.got) == 20)
            assert a.got == [b"A%d" % i for i in range(20)]
            assert b.got == [b"B%d" % i for i in range(20)]
            assert proxy.clients == 2
            assert len(server.sources) == 2  # as through a NAT: two sources
            # The same client from a new source port is a new source too.
            c = Endpoint()
            c.send(b"C", proxy.address)
            await wait_until(lambda: c.got == [b"C"])
            assert len(server.sources) == 3
            c.close()
        server.close()
        a.close()
        b.close()

    run(main())


def test_idle_client_mappings_expire() -> None:
    async def main() -> None:
        server = Endpoint(echo=True)
        client = Endpoint()
        async with await UdpProxy.start(server.address, idle_timeout=0.1) as proxy:
            client.send(b"one", proxy.address)
            await wait_until(lambda: len(client.got) == 1)
            await wait_until(lambda: proxy.clients == 0, timeout=3.0)
            client.send(b"two", proxy.address)
            await wait_until(lambda: len(client.got) == 2)
            assert len(server.sources) == 2  # a new upstream port, like a NAT rebinding
        server.close()
        client.close()

    run(main())


def test_held_datagrams_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faultproxy, "MAX_HELD", 20)

    async def main() -> None:
        server = Endpoint(echo=True)
        client = Endpoint()
        async with await UdpProxy.start(server.address, forward=Faults(delay=0.5)) as proxy:
            await client.send_all(payloads(30), proxy.address)
            await wait_until(lambda: proxy.counts["forward"]["received"] == 30)
            assert proxy.held("forward") == 20
            assert proxy.counts["forward"]["dropped"] == 10
            await wait_until(lambda: len(client.got) == 20, timeout=3.0)
            assert client.got == payloads(20)
        server.close()
        client.close()

    run(main())


def test_report_is_a_readable_summary() -> None:
    async def main() -> None:
        proxy, _, _ = await echo_through(
            {"forward": Faults(loss=0.5, delay=0.001), "seed": 2}, payloads(100))
        text = proxy.report()
        lines = text.splitlines()
        assert len(lines) >= 10
        assert f"{proxy.address[0]}:{proxy.address[1]}" in lines[0]
        for key in faultproxy.COUNTERS:
            assert any(line.split()[:1] == [key] for line in lines), key
        received = next(line for line in lines if line.split()[0] == "received")
        assert received.split()[1:] == ["100", str(proxy.counts["backward"]["received"])]
        assert "loss=50%" in text
        assert "delay=1ms" in text

    run(main())


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs", [
    {"loss": -0.1}, {"loss": 1.5}, {"dup": math.nan}, {"reorder": 2},
    {"truncate": -1}, {"corrupt": 1.0001}, {"delay": -0.001}, {"jitter": math.inf},
    {"delay": math.nan},
])
def test_faults_validation(kwargs: dict[str, float]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"Faults.{name}"):
        Faults(**kwargs)


def test_faults_rejects_non_numbers_and_accepts_bounds() -> None:
    with pytest.raises(TypeError):
        Faults(loss="0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Faults(dup=True)
    Faults(loss=0, dup=1, reorder=1.0, delay=0, jitter=10, truncate=1, corrupt=0)
    assert Faults().describe() == "none"
    assert Faults(loss=0.2, jitter=0.03).describe() == "loss=20% jitter=30ms"


def test_invalid_direction_and_arguments() -> None:
    async def main() -> None:
        server = Endpoint(echo=True)
        async with await UdpProxy.start(server.address) as proxy:
            with pytest.raises(ValueError, match="direction"):
                proxy.blackhole("sideways", 1.0)
            with pytest.raises(ValueError, match="direction"):
                proxy.set_faults("up", Faults())
            with pytest.raises(ValueError):
                proxy.blackhole("forward", -1.0)
            with pytest.raises(TypeError):
                proxy.set_faults("forward", None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="idle_timeout"):
            await UdpProxy.start(server.address, idle_timeout=0)
        server.close()

    run(main())


@pytest.mark.parametrize(("text", "seconds"), [
    ("20ms", 0.02), ("1.5s", 1.5), ("500us", 0.0005), ("0.02", 0.02), ("0", 0.0),
    (" 30ms ", 0.03),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ms", "-5ms", "20 min", "1e"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_rebind_gives_each_client_a_new_source_port() -> None:
    async def body() -> None:
        seen: list[tuple[str, int]] = []
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target.bind(("127.0.0.1", 0))
        target.settimeout(2.0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        try:
            async with await UdpProxy.start(target.getsockname()) as proxy:
                for round_ in range(2):
                    client.sendto(b"x%d" % round_, proxy.address)
                    data, addr = await asyncio.to_thread(target.recvfrom, 100)
                    assert data == b"x%d" % round_
                    seen.append(addr)
                    if round_ == 0:
                        assert proxy.rebind() == 1
                        assert proxy.clients == 0
        finally:
            client.close()
            target.close()
        assert seen[0] != seen[1]

    asyncio.run(asyncio.wait_for(body(), 10))
