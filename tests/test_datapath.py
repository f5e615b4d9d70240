"""The batched datapath (Linux UDP GSO/GRO) and its fallback, over real sockets on loopback.

No mocks: GSO sends go through the kernel to raw receiving sockets, GRO
receives come from raw senders using ``sendmsg`` with ``UDP_SEGMENT``, and
the end-to-end tests run two Transports on 127.0.0.1. The failures are real
too: ``SO_NO_CHECK`` makes the kernel refuse GSO sends (EINVAL), a Unix
socket refuses the UDP options. The grouping rule is property-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import platform
import random
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiohelp import run, step, wait_until
from intentra import EndpointConfig, Intent, Message, PrivateKey, Transport
from intentra.aio.datapath import (
    ENV_VAR,
    MAX_GSO_BYTES,
    MAX_SEGMENTS,
    RECEIVE_CAP,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    Datapath,
    plan_sends,
    requested_mode,
    split_segments,
)
from intentra.constants import MAX_PACKET_SIZE
from intentra.events import Address

SO_NO_CHECK = getattr(socket, "SO_NO_CHECK", 11)  # Linux: no UDP checksum, so no GSO


def _kernel() -> tuple[int, int]:
    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (ValueError, IndexError):
        return 0, 0


def _no_gso_reason() -> str | None:
    """Why this machine cannot run the GSO/GRO tests, or None if it can."""
    if sys.platform != "linux":
        return f"UDP GSO/GRO are Linux socket options; this is {sys.platform}"
    if _kernel() < (5, 0):
        return f"kernel {platform.release()} predates UDP_GRO (Linux 5.0)"
    return None


NO_GSO = _no_gso_reason()
needs_gso = pytest.mark.skipif(NO_GSO is not None, reason=NO_GSO or "")


def _v6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


FAMILIES = [pytest.param("127.0.0.1", id="ipv4"),
            pytest.param("::1", id="ipv6", marks=pytest.mark.skipif(
                not _v6_loopback(), reason="no IPv6 loopback here"))]


@pytest.fixture
def udp() -> Iterator[Any]:
    """``udp(host)``: a bound UDP socket closed after the test."""
    made: list[socket.socket] = []

    def make(host: str = "127.0.0.1", blocking: bool = False) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        made.append(s)
        s.bind((host, 0))
        s.setblocking(blocking)
        return s

    yield make
    for s in made:
        s.close()


def drain(sock: socket.socket, expect: int, timeout: float = 2.0) -> list[bytes]:
    """Read plain datagrams until ``expect`` came (and a little longer for extras)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(70000))
        except BlockingIOError:
            if len(got) >= expect:
                time.sleep(0.02)  # loopback delivers on send: anything extra is here by now
                with contextlib.suppress(BlockingIOError):
                    while True:
                        got.append(sock.recv(70000))
                break
            time.sleep(0.001)
    return got


def gso_sendmsg(sock: socket.socket, datagrams: list[bytes], addr: Address) -> None:
    """A raw GSO send (not the module under test): one sendmsg with UDP_SEGMENT."""
    segment = len(datagrams[0])
    sock.sendmsg([b"".join(datagrams)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))],
                 0, addr)


def numbered(count: int, size: int, last: int | None = None, seed: int = 0,
             conn_id: int = 7) -> list[bytes]:
    """``count`` datagrams of ``size`` bytes (the last ``last``), each distinct.

    Bytes 4..8 are ``conn_id``, where an intentra header has it (runs keep to one).
    """
    rng = random.Random(seed)
    out = [i.to_bytes(4, "big") + conn_id.to_bytes(4, "big") + rng.randbytes(size - 8)
           for i in range(count)]
    if last is not None:
        out[-1] = out[-1][:last]
    return out


# ------------------------------------------------------------------ (a) detection

@pytest.mark.parametrize("host", FAMILIES)
def test_detection_finds_gso_and_gro_on_linux_loopback(udp: Any, host: str) -> None:
    if NO_GSO is not None:
        pytest.skip(NO_GSO)
    sock = udp(host)
    path = Datapath(sock, "auto")
    assert (path.gso, path.gro, path.name) == (True, True, "gso+gro")
    assert sock.getsockopt(SOL_UDP, UDP_GRO) == 1  # really switched on in the kernel
    forced = Datapath(udp(host), "gso")
    assert forced.name == "gso+gro"
    plain_sock = udp(host)
    plain = Datapath(plain_sock, "plain")
    assert plain.name == "plain"
    assert plain_sock.getsockopt(SOL_UDP, UDP_GRO) == 0  # plain leaves the socket alone


def test_a_socket_refusing_the_udp_options_is_plain_in_auto_and_an_error_when_forced() -> None:
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no AF_UNIX datagram sockets here")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        assert Datapath(a, "auto").name == "plain"
        with pytest.raises(OSError, match="refuses UDP_SEGMENT") as info:
            Datapath(b, "gso")
        assert info.value.errno == errno.ENOPROTOOPT


def test_mode_comes_from_the_keyword_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert requested_mode(None) == "auto"
    monkeypatch.setenv(ENV_VAR, " Plain ")
    assert requested_mode(None) == "plain"
    assert requested_mode("gso") == "gso"  # the keyword wins
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match="INTENTRA_DATAPATH='fast'"):
        requested_mode(None)
    with pytest.raises(ValueError, match="datapath='turbo'"):
        requested_mode("turbo")


def test_transport_reports_its_path_and_honours_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        monkeypatch.setenv(ENV_VAR, "plain")
        t = await Transport.bind("127.0.0.1:0", PrivateKey.generate())
        try:
            assert t.datapath == "plain"
            assert 'intentra_datapath_info{path="plain"} 1.0' in t.metrics_text()
        finally:
            await t.close()
        monkeypatch.setenv(ENV_VAR, "nonsense")
        with pytest.raises(ValueError, match=ENV_VAR):
            await Transport.bind("127.0.0.1:0", PrivateKey.generate())
        if NO_GSO is None:
            t = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), datapath="auto")
            try:
                assert t.datapath == "gso+gro"  # the keyword beats the environment
                assert 'intentra_datapath_info{path="gso+gro"} 1.0' in t.metrics_text()
            finally:
                await t.close()
    run(body())


# ------------------------------------------------------------------- (b) GSO send

@needs_gso
@pytest.mark.parametrize("host", FAMILIES)
def test_one_gso_send_arrives_as_separate_datagrams_in_order(udp: Any, host: str) -> None:
    receiver = udp(host)  # no GRO: the kernel segments the GSO packet on delivery
    sender = Datapath(udp(host), "gso")
    addr = receiver.getsockname()
    datagrams = numbered(40, 1200, last=333)
    assert sender.send([(d, addr) for d in datagrams]) == 0
    assert (sender.send_calls, sender.gso_sends) == (1, 1)
    got = drain(receiver, len(datagrams))
    assert got == datagrams  # sizes, contents and order


@needs_gso
def test_runs_follow_the_core_order_across_addresses(udp: Any) -> None:
    r1, r2 = udp(), udp()
    a1, a2 = r1.getsockname(), r2.getsockname()
    sender = Datapath(udp(), "gso")
    d = numbered(200, 900, seed=1)
    out = ([(x, a1) for x in d[:70]]             # 64 + 6: the segment limit splits it
           + [(d[70], a2), (d[71], a2)]          # a run of two to another address
           + [(x, a1) for x in d[72:80]]         # back to the first
           + [(d[80][:50], a1)]                  # a short last closes that run
           + [(x, a1) for x in d[81:90]])        # ... so these start a new one
    other = numbered(3, 900, seed=2, conn_id=8)  # another session to the same address
    out += [(other[0], a1), (other[1], a1), (d[90], a1)]
    assert [len(p) for p, _, _ in plan_sends(out)] == [64, 6, 2, 9, 9, 2, 1]
    assert sender.send(out) == 0
    assert sender.send_calls == 7
    assert drain(r1, 91) == [x for x, a in out if a == a1]
    assert drain(r2, 2) == [d[70], d[71]]


@needs_gso
def test_a_send_error_that_is_not_about_gso_counts_every_datagram_and_keeps_gso(udp: Any) -> None:
    sender = Datapath(udp(), "gso")
    # Broadcast without SO_BROADCAST: the kernel refuses with EACCES before sending.
    out: list[tuple[bytes, Address]] = [(x, ("255.255.255.255", 9)) for x in numbered(5, 100)]
    assert sender.send(out) == 5
    assert sender.gso


# ---------------------------------------------------------------- (c) GRO receive

@needs_gso
@pytest.mark.parametrize("host", FAMILIES)
def test_a_coalesced_buffer_is_split_by_segment_size_short_last_included(
        udp: Any, host: str) -> None:
    receiver = udp(host)
    receiver.setsockopt(SOL_UDP, UDP_GRO, 1)
    sender = udp(host)
    datagrams = numbered(7, 1000, last=301, seed=2)
    gso_sendmsg(sender, datagrams, receiver.getsockname())
    buffer = bytearray(b"\xee" * 70000)  # stale bytes beyond the data must never leak out
    size, ancdata, _flags, _addr = receiver.recvmsg_into([buffer], socket.CMSG_SPACE(4))
    assert size == 6 * 1000 + 301  # one coalesced buffer: GRO on loopback, from a GSO sender
    [(level, kind, data)] = ancdata
    assert (level, kind) == (SOL_UDP, UDP_GRO)
    segment = struct.unpack("=i", data)[0]
    assert segment == 1000
    assert split_segments(memoryview(buffer), size, segment) == datagrams
    # Lengths that are whole multiples, and one segment: no empty tail, no split.
    assert split_segments(memoryview(buffer), 3000, 1000) == datagrams[:3]
    assert split_segments(memoryview(buffer), 1000, 0) == datagrams[:1]


@needs_gso
@pytest.mark.parametrize("host", FAMILIES)
def test_gro_receive_returns_each_datagram_with_its_sender(udp: Any, host: str) -> None:
    path = Datapath(udp(host), "gso")
    sender = udp(host)
    to = path._sock.getsockname()
    first = numbered(5, 1200, last=17, seed=3)
    second = numbered(3, 64, seed=4)
    gso_sendmsg(sender, first, to)
    gso_sendmsg(sender, second, to)
    sender.sendto(b"lone", to)  # not coalesced: no UDP_GRO cmsg
    batch = path.receive(512)
    assert [d for d, _ in batch] == [*first, *second, b"lone"]
    assert {a[:2] for _, a in batch} == {sender.getsockname()[:2]}
    assert path.gro_coalesced == 2
    assert path.receive_calls == 4  # three buffers, then the one that would block


@needs_gso
def test_oversize_segments_reach_the_core_one_by_one_and_oversize(udp: Any) -> None:
    """The core's size check sees every coalesced datagram, each still too large."""
    path = Datapath(udp(), "gso")
    sender = udp()
    gso_sendmsg(sender, numbered(3, 3000, seed=5), path._sock.getsockname())
    batch = path.receive(512)
    assert [len(d) for d, _ in batch] == [RECEIVE_CAP] * 3
    assert RECEIVE_CAP > MAX_PACKET_SIZE

    async def body() -> None:
        t = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), datapath="gso")
        try:
            stats = t.endpoint.stats
            gso_sendmsg(sender, numbered(3, 3000, seed=6), t.local_address)
            gso_sendmsg(sender, numbered(4, 100, last=60, seed=7), t.local_address)  # junk
            await wait_until(lambda: stats.packets_received == 7, what="7 datagrams counted")
            assert stats.packets_dropped_malformed == 7
        finally:
            await t.close()
    run(body())


# ------------------------------------------------------------- (d) end to end

async def _exchange(datapath: str, n_reliable: int, n_realtime: int,
                    break_gso: bool = False) -> tuple[Transport, Transport]:
    # The flood outruns the default per-session token bucket (500 packets of burst):
    # lift it, so that a loss could only be the datapath's.
    config = EndpointConfig(rate_limit_pps=1e6, rate_limit_burst=1e5)
    server = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), datapath=datapath,
                                  config=config)
    client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), datapath=datapath,
                                  config=config)
    try:
        if break_gso:  # the kernel now refuses GSO sends from the client (EINVAL)
            client._sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        cpeer = await step(client.connect(server.local_address, server.public_key))
        await wait_until(lambda: len(server.peers) == 1, what="the server's session")
        speer = server.peers[0]
        rng = random.Random(8)

        def msg(kind: int, i: int) -> bytes:
            return bytes([kind]) + i.to_bytes(4, "big") + rng.randbytes(rng.randint(0, 400))

        up = [msg(0, i) for i in range(n_reliable)]
        down = [msg(0, i) for i in range(n_reliable // 2)]
        live = [msg(1, i) for i in range(n_realtime)]
        got_server: list[Message] = []
        got_client: list[Message] = []

        async def consume(t: Transport, into: list[Message]) -> None:
            async for m in t:
                into.append(m)

        consumers = [asyncio.create_task(consume(server, got_server)),
                     asyncio.create_task(consume(client, got_client))]

        async def send_up() -> None:
            for i, data in enumerate(up):
                await cpeer.send(data, Intent.RELIABLE)
                if i < len(live):
                    cpeer.send_nowait(live[i], Intent.REALTIME)
                if i % 50 == 49:
                    await asyncio.sleep(0)  # a flush: bursts of a few dozen datagrams

        async def send_down() -> None:
            for i, data in enumerate(down):
                await speer.send(data, Intent.RELIABLE)
                if i % 50 == 49:
                    await asyncio.sleep(0)

        await step(asyncio.gather(send_up(), send_down()), 15)
        stats = client.endpoint.stats

        def shed() -> int:
            # v2: REALTIME the congestion controller could not send in time is
            # dropped at the sender and counted (docs/protocol.md section 8).
            return (stats.messages_dropped_congestion + stats.messages_dropped_deadline
                    + stats.messages_dropped_queue_full)

        await wait_until(lambda: len(got_server) + shed() >= len(up) + len(live)
                         and len(got_client) >= len(down), timeout=10, what="every message")
        await asyncio.sleep(0.05)  # a duplicate would show up now
        by_intent = {intent: [m.data for m in got_server if m.intent is intent]
                     for intent in Intent}
        assert by_intent[Intent.RELIABLE] == up
        realtime = by_intent[Intent.REALTIME]
        # Every one delivered or counted as shed at the sender; in order, once.
        assert len(realtime) + shed() == len(live)
        assert realtime == [m for m in live if m in set(realtime)]
        assert len(realtime) >= 0.5 * len(live)
        assert [m.data for m in got_client] == down
        assert all(m.peer is speer for m in got_server)
        assert server.endpoint.stats.packets_dropped_rate_limit == 0
        for c in consumers:
            c.cancel()
        return server, client
    finally:
        await server.close()
        await client.close()


@pytest.mark.parametrize("datapath", [
    pytest.param("gso", marks=needs_gso), "plain"])
def test_thousands_of_reliable_and_realtime_messages_in_order(datapath: str) -> None:
    server, client = run(_exchange(datapath, 3000, 3000))
    assert server.datapath == client.datapath == ("gso+gro" if datapath == "gso" else "plain")
    assert client.send_errors == server.send_errors == 0
    cpath, spath = client._datapath, server._datapath
    if datapath == "gso":
        assert cpath.gso_sends > 0 and spath.gro_coalesced > 0
        # Messages of random sizes pack into datagrams of varied sizes, and a run
        # ends at the first shorter one: batching is partial here, not absent.
        assert cpath.send_calls < client.endpoint.stats.packets_sent
    else:
        assert cpath.gso_sends == 0 and spath.gro_coalesced == 0
        assert cpath.send_calls == client.endpoint.stats.packets_sent


# --------------------------------------------------------------- (e) fallback

@needs_gso
def test_gso_refused_by_the_kernel_falls_back_to_sendto_without_loss(udp: Any) -> None:
    receiver = udp()
    sock = udp()
    sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    sender = Datapath(sock, "gso")
    addr = receiver.getsockname()
    datagrams = numbered(10, 500, last=99, seed=9)
    assert sender.send([(d, addr) for d in datagrams]) == 0
    assert (sender.gso, sender.name, sender.gso_sends) == (False, "gro", 0)
    assert sender.send_calls == 1 + 10  # the refused GSO send, then one by one
    assert drain(receiver, 10) == datagrams
    assert sender.send([(d, addr) for d in datagrams]) == 0  # stays on sendto
    assert sender.send_calls == 21
    assert drain(receiver, 10) == datagrams


@needs_gso
def test_a_transport_whose_gso_sends_fail_keeps_delivering() -> None:
    server, client = run(_exchange("gso", 600, 600, break_gso=True))
    assert client.datapath == "gro"  # GSO turned itself off on the first refusal
    assert server.datapath == "gso+gro"
    assert client.send_errors == 0
    assert client._datapath.gro_coalesced > 0  # the server's GSO sends still coalesce
    assert server._datapath.gro_coalesced == 0  # nothing the client sent was a GSO batch


# ------------------------------------------------------------ grouping rule

datagram_sizes = st.one_of(st.integers(1, 40), st.sampled_from([1, 100, 1200, 1200, 1200, 2048]))
core_outputs = st.lists(
    st.tuples(datagram_sizes, st.sampled_from([("10.0.0.1", 1), ("10.0.0.2", 1),
                                               ("::1", 1, 0, 0)]),
              st.sampled_from([1, 1, 1, 2])),  # conn_id: mostly one session
    max_size=300)


@settings(max_examples=300, deadline=None)
@given(core_outputs, st.integers(1, 70), st.integers(1, MAX_GSO_BYTES + 5000))
def test_plan_sends_keeps_order_and_obeys_the_size_rule_and_limits(
        spec: list[tuple[int, Address, int]], max_segments: int, max_bytes: int) -> None:
    out = [((bytes(4) + conn.to_bytes(4, "big") + bytes([i % 251]) * size)[:size], addr)
           for i, (size, addr, conn) in enumerate(spec)]
    runs = plan_sends(out, max_segments, max_bytes)
    # Nothing lost, duplicated or reordered (so each address's order holds too).
    assert [(d, a) for parts, _, a in runs for d in parts] == out
    for parts, segment, _addr in runs:
        assert parts and segment == len(parts[0])
        assert len(parts) <= max_segments
        assert len(parts) == 1 or sum(map(len, parts)) <= max_bytes
        assert all(len(d) == segment for d in parts[:-1])  # all but the last equal
        assert len(parts[-1]) <= segment                    # the last not larger
        assert len({d[4:8] for d in parts}) == 1            # one connection
    # Greedy: a run ends only when the next datagram could not have joined it.
    for (parts, segment, addr), (nxt, _, nxt_addr) in itertools.pairwise(runs):
        could_join = (nxt_addr == addr and nxt[0][4:8] == parts[0][4:8]
                      and len(parts[-1]) == segment
                      and len(nxt[0]) <= segment and len(parts) < max_segments
                      and sum(map(len, parts)) + len(nxt[0]) <= max_bytes)
        assert not could_join


def test_plan_sends_defaults_fit_the_kernel_limits() -> None:
    addr = ("127.0.0.1", 9)
    runs = plan_sends([(bytes(1200), addr)] * 200)
    assert [len(p) for p, _, _ in runs] == [54, 54, 54, 38]  # 54 x 1200 <= 65000 < 55 x 1200
    runs = plan_sends([(bytes(100), addr)] * 200)
    assert [len(p) for p, _, _ in runs] == [MAX_SEGMENTS] * 3 + [8]
    assert plan_sends([]) == []
