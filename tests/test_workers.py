"""Worker processes on one port: conn_id classes and the kernel's steering.

``intentra serve --workers N`` binds N sockets with SO_REUSEPORT and attaches a
classic BPF program that sends each datagram to socket ``conn_id % N`` (the
hash for conn_id 0, i.e. a HELLO). These tests run that program in the real
kernel with real sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from intentra.core.endpoint import Endpoint
from intentra.workers import reuseport_sockets, steering_program


def drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    got = []
    while True:
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            return got


def header(conn_id: int) -> bytes:
    return bytes(4) + struct.pack("!I", conn_id) + bytes(8)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_kernel_steers_each_datagram_to_worker_conn_id_mod_n(count: int) -> None:
    socks, steered = reuseport_sockets("127.0.0.1", 0, count)
    try:
        if not steered:
            pytest.skip("this kernel refuses SO_ATTACH_REUSEPORT_CBPF")
        port = socks[0].getsockname()[1]
        ids = [1, 2, 3, 4, 5, 6, 7, 8, 0xFFFFFFFF, 0x80000001, 123456789]
        # Many source ports: the 4-tuple hash alone would scatter them.
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        for n, conn_id in enumerate(ids * 3):
            senders[n % len(senders)].sendto(header(conn_id), ("127.0.0.1", port))
        time.sleep(0.05)
        for index, sock in enumerate(socks):
            got = [struct.unpack("!I", d[4:8])[0] for d in drain(sock)]
            assert sorted(got) == sorted(c for c in ids * 3 if c % count == index)
        for s in senders:
            s.close()
    finally:
        for s in socks:
            s.close()


def test_hello_conn_id_zero_falls_back_to_the_address_hash() -> None:
    socks, steered = reuseport_sockets("127.0.0.1", 0, 4)
    try:
        if not steered:
            pytest.skip("this kernel refuses SO_ATTACH_REUSEPORT_CBPF")
        port = socks[0].getsockname()[1]
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
        for _ in range(3):
            for s in senders:
                s.sendto(header(0), ("127.0.0.1", port))
        time.sleep(0.05)
        per_socket = [len(drain(s)) for s in socks]
        assert sum(per_socket) == 48
        assert all(n % 3 == 0 for n in per_socket), "one source address, one worker"
        assert sum(1 for n in per_socket if n) >= 2, "16 sources spread over the workers"
        for s in senders:
            s.close()
    finally:
        for s in socks:
            s.close()


def test_steering_program_shape() -> None:
    program = steering_program(5)
    assert program[0] == (0x80, 0, 0, 0)          # load the length
    assert program[1] == (0x35, 0, 4, 8)          # under 8 bytes: the kernel's hash
    assert program[2] == (0x20, 0, 0, 4)          # load conn_id
    assert program[4] == (0x94, 0, 0, 5)          # modulo the worker count
    assert program[-1] == (0x06, 0, 0, 0xFFFFFFFF)  # out of range: the kernel's hash


@pytest.mark.parametrize(("index", "count"), [(0, 2), (1, 2), (2, 3), (7, 8)])
def test_endpoint_picks_conn_ids_of_its_class(index: int, count: int) -> None:
    endpoint = Endpoint(os.urandom(32), os.urandom, conn_id_class=(index, count))
    ids = {endpoint.connect(("127.0.0.1", 9), 0.0) for _ in range(200)}
    assert len(ids) == 200
    assert all(c % count == index and 0 < c <= 0xFFFFFFFF for c in ids)


def test_conn_id_class_draws_again_past_the_top_multiple() -> None:
    # 0xFFFFFFFF is a multiple of 3: class 2 would overflow 32 bits there.
    draws = iter([b"\xff\xff\xff\xff", b"\x00\x00\x00\x09"] + [b"\x00"] * 1000)
    endpoint = Endpoint(os.urandom(32), lambda n: next(draws) if n == 4 else os.urandom(n),
                        conn_id_class=(2, 3))
    assert endpoint._new_conn_id() == 11


@pytest.mark.parametrize("bad", [(1, 1), (-1, 2), (2, 2), (0, 0), (0, 257)])
def test_conn_id_class_is_checked(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="conn_id_class"):
        Endpoint(os.urandom(32), os.urandom, conn_id_class=bad)
